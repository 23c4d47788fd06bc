#!/usr/bin/env bash
# Builds the Debian package of connector-relay from this checkout with dpkg-deb (no
# debhelper, no cargo-deb: everything it needs is in dpkg and binutils):
#
#   bash scripts/build-deb.sh                 # cargo build --release, then the package in target/debian/
#   bash scripts/build-deb.sh --binary PATH   # package an existing binary (tests/package.rs
#                                             # passes the one `cargo test` built)
#   options: --version V (default: Cargo.toml's), --out DIR, --packaging DIR (default packaging/)
#
# What goes where (README "Install on a server"):
#   /usr/bin/connector-relay                      the binary (debug info stripped)
#   /usr/lib/systemd/system/connector-relay.service
#   /etc/connector-relay/relay.toml               conffile: the shipped default, not an open relay
#   /usr/share/doc/connector-relay/examples/      the three use cases with the server's paths
#   /usr/share/man/man1/connector-relay*.1.gz     from the CLI definition (`connector-relay man`)
#   bash, zsh and fish completions                 (`connector-relay completions SHELL`)
# The maintainer scripts (packaging/debian/) create the user and the directories under
# /var/lib/connector-relay and /var/log/connector-relay. Prints the package's path.
set -euo pipefail
cd "$(dirname "$0")/.."

binary="" version="" out="" packaging=packaging
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --packaging) packaging=$2; shift 2 ;;
    *) echo "build-deb: unknown argument $1" >&2; exit 1 ;;
  esac
done
target=${CARGO_TARGET_DIR:-target}
if [ -z "$binary" ]; then
  cargo build --release --locked --bin connector-relay >&2
  binary=$target/release/connector-relay
fi
[ -x "$binary" ] || { echo "build-deb: no binary at $binary" >&2; exit 1; }
[ -n "$version" ] || version=$(awk -F'"' '/^version *=/{print $2; exit}' Cargo.toml)
[ -n "$out" ] || out=$target/debian
arch=$(dpkg --print-architecture)

root=$(mktemp -d)
chmod 0755 "$root"
trap 'rm -rf "$root"' EXIT
doc=$root/usr/share/doc/connector-relay

install_files() {
  install -d "$root/usr/bin" "$root/usr/lib/systemd/system" "$root/etc/connector-relay" \
    "$doc/examples" "$root/usr/share/man/man1" "$root/usr/share/bash-completion/completions" \
    "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d"
  # Symbols stay (readable backtraces); only the debug sections go.
  if command -v strip >/dev/null; then
    strip --strip-debug -o "$root/usr/bin/connector-relay" "$binary"
  else
    cp "$binary" "$root/usr/bin/connector-relay"
  fi
  chmod 0755 "$root/usr/bin/connector-relay"
  install -m 0644 "$packaging/connector-relay.service" "$root/usr/lib/systemd/system/"
  install -m 0644 "$packaging/relay.toml" "$root/etc/connector-relay/relay.toml"
  install -m 0644 "$packaging/copyright" "$doc/copyright"
  gzip -9n -c README.md > "$doc/README.md.gz"
  for example in gateway partner-forced-tls hybrid-lab; do
    server_example "config/$example.toml" > "$doc/examples/$example.toml"
  done
}

# A use case's example with the package's paths: certificates in /etc/connector-relay/tls
# (relay.crt, relay.key, ca.crt, ca.crl.pem), state in /var/lib/connector-relay, port 25.
server_example() {
  echo "# The package's copy of $1 (the repository's lab example) with the server's paths:"
  echo "# port 25, certificates in /etc/connector-relay/tls/, state in /var/lib/connector-relay."
  echo "# Copy it to /etc/connector-relay/relay.toml, replace the lab's names and addresses"
  echo "# (contoso.test, fabrikam.test, 127.0.0.x) with yours, then run connector-relay check."
  echo "#"
  sed -e '/^# Ports are above 1024/d' \
      -e 's|certs-test/relay\.contoso\.test\.crt|/etc/connector-relay/tls/relay.crt|' \
      -e 's|certs-test/relay\.contoso\.test\.key|/etc/connector-relay/tls/relay.key|' \
      -e 's|certs-test/ca\.crt|/etc/connector-relay/tls/ca.crt|' \
      -e 's|certs-test/ca\.crl\.pem|/etc/connector-relay/tls/ca.crl.pem|' \
      -e 's|^Listen = \["127\.0\.0\.1:2525"\]|Listen = ["0.0.0.0:25"]|' \
      -e 's|^SpoolDir = ".*"|SpoolDir = "/var/lib/connector-relay/spool"|' \
      -e 's|^DataDir = ".*"|DataDir = "/var/lib/connector-relay"\
AdminTokenFile = "/var/lib/connector-relay/admin.token"\
SrsSecretFile = "/var/lib/connector-relay/srs.key"\
ProtocolLogDir = "/var/log/connector-relay/protocol"|' "$1"
}

# Man pages and completions come from the binary's own CLI definition.
generated_files() {
  local bin=$root/usr/bin/connector-relay
  "$bin" man --out-dir "$root/usr/share/man/man1"
  gzip -9n "$root"/usr/share/man/man1/*.1
  "$bin" completions bash > "$root/usr/share/bash-completion/completions/connector-relay"
  "$bin" completions zsh > "$root/usr/share/zsh/vendor-completions/_connector-relay"
  "$bin" completions fish > "$root/usr/share/fish/vendor_completions.d/connector-relay.fish"
}

# libc6 at least as new as the newest glibc symbol version the binary uses.
depends() {
  local glibc
  glibc=$(objdump -T "$root/usr/bin/connector-relay" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
  local deps="libc6 (>= $glibc)"
  if objdump -p "$root/usr/bin/connector-relay" | grep -q 'NEEDED.*libgcc_s'; then
    deps="$deps, libgcc-s1"
  fi
  echo "$deps"
}

control_files() {
  install -d "$root/DEBIAN"
  install -m 0755 "$packaging"/debian/postinst "$packaging"/debian/prerm \
    "$packaging"/debian/postrm "$root/DEBIAN/"
  echo /etc/connector-relay/relay.toml > "$root/DEBIAN/conffiles"
  local size
  size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
  sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@SIZE@|$size|" \
    -e "s|@DEPENDS@|$(depends)|" "$packaging/debian/control.in" > "$root/DEBIAN/control"
  (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
    | xargs -0 md5sum) > "$root/DEBIAN/md5sums"
}

install_files
generated_files
control_files
mkdir -p "$out"
deb=$out/connector-relay_${version}_${arch}.deb
# Owned by root whoever builds it; gzip: quick to build and read by every dpkg.
dpkg-deb --root-owner-group -Zgzip --build "$root" "$deb" >&2
echo "$deb"
