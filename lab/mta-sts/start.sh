#!/usr/bin/env bash
# The MTA-STS policy host of wingtip.test: https://mta-sts.wingtip.test/.well-known/mta-sts.txt
# (lab/mta-sts/wingtip.txt, mode enforce), over TLS with a certificate from the lab CA.
set -euo pipefail
while [ ! -f /certs/.done ]; do sleep 0.2; done
cat > /run/nginx-lab.conf <<'CONF'
daemon off;
worker_processes 1;
error_log stderr;
pid /run/nginx-lab.pid;
events { worker_connections 64; }
http {
  access_log /dev/stdout;
  server {
    listen 443 ssl;
    server_name mta-sts.wingtip.test;
    ssl_certificate /certs/mta-sts.wingtip.test.crt;
    ssl_certificate_key /certs/mta-sts.wingtip.test.key;
    location = /.well-known/mta-sts.txt {
      default_type text/plain;
      alias /lab/mta-sts/wingtip.txt;
    }
  }
}
CONF
echo "mta-sts: serving https://mta-sts.wingtip.test/.well-known/mta-sts.txt"
exec nginx -c /run/nginx-lab.conf
