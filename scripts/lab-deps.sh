#!/usr/bin/env bash
# Installs what the hybrid lab (docker-compose.yml, tests/lab.rs) needs on a Debian 12 host,
# idempotently: Docker Engine and Compose v1 (Debian's docker.io, docker-compose), debootstrap
# (scripts/lab-base-image.sh builds the lab's Debian base image with it, so no image registry
# is needed) and, when `docker compose` is missing, Compose v2 as a CLI plugin taken from
# Debian 13's docker-compose package (Debian 12 has no v2; the package depends only on libc6).
# It does not start a Docker daemon: where none runs, the lab test says so and skips.
# Called by scripts/install-deps.sh. Research: shared/research/containers.md.
set -euo pipefail
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
need=()
command -v docker >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need[@]}" >/dev/null
fi

# Compose v2 as a CLI plugin, from Debian 13 ("trixie"), fetched with a private apt state so
# the system's sources are not changed. Skipped when some `docker compose` already works.
plugin_dir=/usr/local/lib/docker/cli-plugins
if ! docker compose version >/dev/null 2>&1 && [ ! -x "$plugin_dir/docker-compose" ]; then
  mirror=$(awk '$1=="URIs:"{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  if [ -n "$mirror" ]; then
    a=$(mktemp -d)
    trap 'rm -rf "$a"' EXIT
    chmod 755 "$a"  # apt downloads as _apt
    mkdir -p "$a/lists/partial" "$a/cache/archives/partial" "$a/x"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" > "$a/sources.list"
    o=(-o "Dir::Etc::SourceList=$a/sources.list" -o Dir::Etc::SourceParts=/dev/null
       -o "Dir::State::Lists=$a/lists" -o "Dir::Cache=$a/cache")
    if apt-get "${o[@]}" update -qq && (cd "$a" && apt-get "${o[@]}" download docker-compose >/dev/null); then
      dpkg -x "$a"/docker-compose_*.deb "$a/x"
      $SUDO mkdir -p "$plugin_dir"
      $SUDO install -m 0755 "$a/x/usr/libexec/docker/cli-plugins/docker-compose" "$plugin_dir/docker-compose"
    else
      echo "lab-deps: could not fetch Compose v2 from trixie; the lab falls back to docker-compose v1" >&2
    fi
  fi
fi
