#!/usr/bin/env bash
# Installs what a fresh machine lacks, idempotently: swaks (README walk-through and the
# interoperability tests), openssl, and Debian's chromium + chromium-driver (the admin web
# page is tested in a real headless Chromium driven over WebDriver), unbound, nsd and
# ldnsutils for the DNSSEC/DANE lab, haproxy for the PROXY protocol test, postgresql for the
# shared trace store's test, binutils and systemd (systemd-analyze) for the Debian package's
# test; and, through scripts/lab-deps.sh, Docker Engine, Compose and debootstrap for the
# container labs (hybrid and fleet) and the package test.
set -euo pipefail
need=()
command -v swaks >/dev/null 2>&1 || need+=(swaks)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# swaks speaks TLS through Net::SSLeay / IO::Socket::SSL (only "Recommends" in Debian).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# DANE end-to-end tests (tests/dane_lab.rs): a signed zone served by nsd, signed with
# ldns-signzone (ldnsutils), resolved by a validating unbound on loopback.
command -v unbound >/dev/null 2>&1 || need+=(unbound)
command -v nsd >/dev/null 2>&1 || need+=(nsd)
command -v ldns-signzone >/dev/null 2>&1 || need+=(ldnsutils)
# PROXY protocol behind a real load balancer (tests/proxy_protocol.rs; the test skips loudly
# without it). Debian installs it in /usr/sbin.
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
# The Debian package (scripts/build-deb.sh, tests/package.rs): objdump for its Depends, and
# systemd-analyze to verify its unit file.
command -v objdump >/dev/null 2>&1 || need+=(binutils)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
perl -MNet::SSLeay -MIO::Socket::SSL -e1 >/dev/null 2>&1 || need+=(libnet-ssleay-perl libio-socket-ssl-perl)
# The shared trace store: tests/trace_postgres.rs runs a private cluster of Debian's
# PostgreSQL (HAProxy above also serves the benchmark's fleet scenario).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  # Wait for another apt run (e.g. the benchmark installing Postfix) instead of failing.
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need[@]}" >/dev/null
fi
# The hybrid lab (docker-compose.yml, tests/lab.rs): Docker Engine, Compose and debootstrap.
bash "$(dirname "$0")/lab-deps.sh"
