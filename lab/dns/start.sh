#!/usr/bin/env bash
# The lab's DNS server: a private DNSSEC-signed tree ("." -> "test."), signed at every start
# with fresh keys (ldns-signzone), served by nsd on 127.0.0.1:5300 inside this container,
# and resolved by unbound on the lab network (port 53), validating from the private root's
# DS record. Nothing is forwarded anywhere else: a name outside test. is NXDOMAIN. The relay
# uses unbound as its DnsServers with DnssecValidation = "Resolver" (the AD bit), so DANE
# applies where a TLSA record exists. This is the same construction as tests/dnssec_lab/.
set -euo pipefail
dir=/run/labdns
rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
while [ ! -f /certs/.done ]; do sleep 0.2; done
tlsa=$(openssl x509 -in /certs/mx.northwind.test.crt -noout -pubkey | openssl pkey -pubin -outform DER \
  | openssl dgst -sha256 -binary | od -An -tx1 | tr -d ' \n')
sed "s/@TLSA_NORTHWIND@/$tlsa/" /lab/dns/test.zone > test.zone
sign() { # zone origin, file -> file.signed, and ORIGIN.ds
  local zsk ksk
  zsk=$(ldns-keygen -a ECDSAP256SHA256 "$1")
  ksk=$(ldns-keygen -a ECDSAP256SHA256 -k "$1")
  ldns-signzone -n -o "$1" -f "$2.signed" "$2" "$zsk" "$ksk"
  ldns-key2ds -n -2 "$ksk.key" > "$2.ds"
  rm -f "$zsk".* "$ksk".*
}
sign test. test.zone
{
  echo ". 3600 IN SOA ns.test. hostmaster.test. 1 3600 600 86400 300"
  echo ". 3600 IN NS ns.test."
  echo "test. 3600 IN NS ns.test."
  echo "ns.test. 3600 IN A 10.225.25.53"
  cat test.zone.ds
} > root.zone
sign . root.zone
cat > nsd.conf <<CONF
server:
  ip-address: 127.0.0.1@5300
  username: ""
  database: ""
  zonelistfile: "$dir/zone.list"
  xfrdfile: "$dir/xfrd.state"
  pidfile: "$dir/nsd.pid"
  zonesdir: "$dir"
  verbosity: 1
remote-control:
  control-enable: no
zone:
  name: "."
  zonefile: "root.zone.signed"
zone:
  name: "test."
  zonefile: "test.zone.signed"
CONF
cat > unbound.conf <<CONF
server:
  interface: 0.0.0.0
  port: 53
  do-ip6: no
  username: ""
  chroot: ""
  directory: "$dir"
  pidfile: "$dir/unbound.pid"
  use-syslog: no
  logfile: ""
  do-daemonize: no
  do-not-query-localhost: no
  local-zone: "test." nodefault
  trust-anchor-file: "$dir/root.zone.ds"
  ede: yes
  val-log-level: 2
  access-control: 10.0.0.0/8 allow
  access-control: 172.16.0.0/12 allow
  access-control: 192.168.0.0/16 allow
  access-control: 127.0.0.0/8 allow
  cache-max-ttl: 60
remote-control:
  control-enable: no
stub-zone:
  name: "."
  stub-addr: 127.0.0.1@5300
stub-zone:
  name: "test."
  stub-addr: 127.0.0.1@5300
CONF
nsd -d -c nsd.conf &
echo "dns: zones signed; nsd on 127.0.0.1:5300, validating unbound on port 53 (TLSA of mx.northwind.test: 3 1 1 $tlsa)"
exec unbound -d -c unbound.conf
