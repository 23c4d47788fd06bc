#!/usr/bin/env bash
# Generates the lab's CA and every party's certificate into /certs (a Docker volume), once:
# the `certs` service runs it at the first `docker compose up`; later runs find /certs/.done
# and keep what is there (so a CA a user imported keeps working). Nothing here is committed:
# `docker compose down -v` deletes the volume, and the next start makes new keys.
#   ca.crt                 the lab CA ("Contoso Lab CA"), trusted by the relay (TrustedCaFile)
#                          and by every Postfix (smtp_tls_CAfile)
#   relay.contoso.test     the relay (Exchange Online's role): MX of contoso.test
#   mail.contoso.test      the on-premises server: server and client certificate (the relay
#                          attributes its mail to "Inbound from on-premises" by this name)
#   mail.fabrikam.test     the partner: server and client certificate
#   mx.northwind.test      internet destination with a right certificate (also mx.wingtip.test)
#   mail.evil.test         what mx.adatum.test presents: the wrong name
#   mta-sts.wingtip.test   the MTA-STS policy host of wingtip.test
set -euo pipefail
out=${1:-/certs}
[ -f "$out/.done" ] && { echo "certs: already generated in $out"; exit 0; }
mkdir -p "$out" && cd "$out"
umask 077
days=825
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
  -keyout ca.key -out ca.crt -subj "/O=connector-relay lab/CN=Contoso Lab CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
issue() { # name, SAN list (comma separated DNS:...)
  local name=$1 san=$2
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$name.key" \
    -out "$name.csr" -subj "/O=connector-relay lab/CN=$name" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=$san" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days $days \
    -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}
issue relay.contoso.test "DNS:relay.contoso.test"
issue mail.contoso.test "DNS:mail.contoso.test"
issue mail.fabrikam.test "DNS:mail.fabrikam.test"
issue mx.northwind.test "DNS:mx.northwind.test,DNS:mx.wingtip.test"
issue mail.evil.test "DNS:mail.evil.test"
issue mta-sts.wingtip.test "DNS:mta-sts.wingtip.test"
rm -f ca.srl
# Only root reads the keys (Postfix, nginx and the relay start as root in their containers);
# the certificates are public.
chmod 0644 ./*.crt && chmod 0600 ./*.key
touch .done
echo "certs: generated the lab CA and $(ls ./*.crt | wc -l) certificates in $out"
