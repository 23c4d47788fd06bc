#!/usr/bin/env bash
# A private signed DNS tree on loopback for tests/dane_lab.rs (README "DANE"):
# root "." -> "test." -> good.test. / broken.test. / expired.test., signed with ldns,
# served by nsd, resolved and validated by unbound anchored at the private root.
#   good.test     MX, A and TLSA all secure
#   broken.test   the RRSIG over the TLSA RRset is corrupted   (bogus: signature crypto failed)
#   expired.test  the zone's signatures expired in 2020         (bogus: signature expired)
# Usage: setup.sh DIR NSD_PORT UNBOUND_PORT SMTP_PORT TLSA_HEX
# Starts both daemons in the foreground-less mode and writes DIR/nsd.pid, DIR/unbound.pid.
set -euo pipefail
dir=$1 nsd_port=$2 unbound_port=$3 smtp_port=$4 tlsa=$5
cd "$dir"
keys() { # zone -> sets $zsk $ksk (key file bases)
  zsk=$(ldns-keygen -a ECDSAP256SHA256 "$1")
  ksk=$(ldns-keygen -a ECDSAP256SHA256 -k "$1")
  rm -f "$zsk.ds" "$ksk.ds"
}
soa() { echo "$1 3600 IN SOA ns.test. hostmaster.test. 1 3600 600 86400 300"; }
# Children first: the parent needs their DS records.
for z in good broken expired; do
  keys "$z.test."
  {
    soa "$z.test."
    echo "$z.test. 3600 IN NS ns.test."
    echo "$z.test. 300 IN MX 10 mx.$z.test."
    echo "mx.$z.test. 300 IN A 127.0.0.1"
    echo "_$smtp_port._tcp.mx.$z.test. 300 IN TLSA 3 1 1 $tlsa"
  } > "$z.zone"
  if [ "$z" = expired ]; then
    ldns-signzone -n -i 20200101000000 -e 20200201000000 -f "$z.zone.signed" "$z.zone" "$zsk" "$ksk"
  else
    ldns-signzone -n -f "$z.zone.signed" "$z.zone" "$zsk" "$ksk"
  fi
  ldns-key2ds -n -2 "$ksk.key" > "$z.ds"
  cat "$zsk.key" "$ksk.key" > "$z.keys"
done
# broken: flip one character in the base64 signature of the TLSA RRSIG.
awk '/RRSIG[[:space:]]+TLSA/ && !done { n=split($0,f," "); s=f[n]; c=substr(s,10,1); r=(c=="A")?"B":"A"; f[n]=substr(s,1,9) r substr(s,11); line=f[1]; for(i=2;i<=n;i++) line=line " " f[i]; print line; done=1; next } { print }' \
  broken.zone.signed > broken.tmp && mv broken.tmp broken.zone.signed
keys "test."
{
  soa "test."
  echo "test. 3600 IN NS ns.test."
  echo "ns.test. 3600 IN A 127.0.0.1"
  for z in good broken expired; do echo "$z.test. 3600 IN NS ns.test."; cat "$z.ds"; done
} > test.zone
ldns-signzone -n -f test.zone.signed test.zone "$zsk" "$ksk"
ldns-key2ds -n -2 "$ksk.key" > test.ds
keys "."
{
  soa "."
  echo ". 3600 IN NS ns.test."
  echo "test. 3600 IN NS ns.test."
  echo "ns.test. 3600 IN A 127.0.0.1"
  cat test.ds
} > root.zone
ldns-signzone -n -f root.zone.signed root.zone "$zsk" "$ksk"
ldns-key2ds -n -2 "$ksk.key" > root.ds
cp "$ksk.key" root.dnskey   # the trust anchor as a DNSKEY (DnssecValidation = "Local")

cat > nsd.conf <<CONF
server:
  ip-address: 127.0.0.1@$nsd_port
  username: ""
  database: ""
  zonelistfile: "$dir/zone.list"
  xfrdfile: "$dir/xfrd.state"
  pidfile: "$dir/nsd.pid"
  logfile: "$dir/nsd.log"
  zonesdir: "$dir"
remote-control:
  control-enable: no
zone:
  name: "."
  zonefile: "root.zone.signed"
zone:
  name: "test."
  zonefile: "test.zone.signed"
CONF
for z in good broken expired; do printf 'zone:\n  name: "%s.test."\n  zonefile: "%s.zone.signed"\n' "$z" "$z" >> nsd.conf; done

cat > unbound.conf <<CONF
server:
  interface: 127.0.0.1@$unbound_port
  port: $unbound_port
  do-ip6: no
  username: ""
  chroot: ""
  directory: "$dir"
  pidfile: "$dir/unbound.pid"
  logfile: "$dir/unbound.log"
  use-syslog: no
  do-daemonize: yes
  do-not-query-localhost: no
  local-zone: "test." nodefault
  trust-anchor-file: "$dir/root.ds"
  ede: yes
  val-log-level: 2
  access-control: 127.0.0.0/8 allow
remote-control:
  control-enable: no
CONF
for z in . test. good.test. broken.test. expired.test.; do
  printf 'stub-zone:\n  name: "%s"\n  stub-addr: 127.0.0.1@%s\n' "$z" "$nsd_port" >> unbound.conf
done
nsd -c nsd.conf
unbound -c unbound.conf
