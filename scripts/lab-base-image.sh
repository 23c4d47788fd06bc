#!/usr/bin/env bash
# Builds the hybrid lab's Debian base image with debootstrap and imports it under a fixed
# tag, so the lab's images build with no image registry (CI, offline machines):
#   connector-relay-lab/debian:bookworm   (override: LAB_BASE_IMAGE)
# The lab's Dockerfiles take it as `--build-arg BASE_IMAGE=...`; a user's run builds on the
# public debian:bookworm-slim instead (the same minimal Debian 12). Their `apt-get install`
# steps then fetch Debian packages from the Debian mirror, as on the public image.
# Idempotent: does nothing when the tag exists (pass --force to rebuild). Needs root
# (debootstrap) and a Docker daemon; about a minute (debootstrap is most of it).
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${LAB_BASE_IMAGE:-connector-relay-lab/debian:bookworm}
if [ "${1:-}" != --force ] && docker image inspect "$tag" >/dev/null 2>&1; then
  exit 0
fi
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || bash scripts/lab-deps.sh
export PATH=$PATH:/usr/sbin:/sbin
mirror=$(awk '$1=="URIs:"{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list)

root=$(mktemp -d /var/tmp/lab-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "lab-base-image: debootstrap bookworm from $mirror" >&2
debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$mirror" >"$root.log" 2>&1 \
  || { tail -30 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
# Trim what an image does not need: downloaded .debs, apt lists (apt-get update refetches),
# documentation, man pages, locales.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
# Services must not start inside the build (there is no init); the lab starts them itself.
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d" && chmod +x "$root/usr/sbin/policy-rc.d"
tar -C "$root" --numeric-owner -c . | docker import -c 'CMD ["/bin/bash"]' - "$tag" >/dev/null
echo "lab-base-image: imported $tag" >&2
