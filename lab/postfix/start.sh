#!/usr/bin/env bash
# Starts one lab Postfix in the foreground: start.sh ROLE, where lab/postfix/ROLE.cf holds the
# role's main.cf settings (applied over common.cf with postconf) and ROLE.vmailbox its
# mailboxes (virtual, Maildir under /var/mail/vhosts). Optional: ROLE.tls_policy
# (smtp_tls_policy_maps). Logs go to the container's stdout (`docker compose logs ROLE`).
set -euo pipefail
role=$1
dir=/lab/postfix
while [ ! -f /certs/.done ]; do sleep 0.2; done
apply() { grep -Ev '^[[:space:]]*(#|$)' "$1" | while IFS= read -r line; do postconf -e "$line"; done; }
apply "$dir/common.cf"
apply "$dir/$role.cf"
cp "$dir/$role.vmailbox" /etc/postfix/vmailbox
if [ -f "$dir/$role.tls_policy" ]; then
  cp "$dir/$role.tls_policy" /etc/postfix/tls_policy
  postconf -e smtp_tls_policy_maps=texthash:/etc/postfix/tls_policy
fi
# A copy of every message for the hosted domains goes to the mail viewer (Mailpit) when one
# is configured (LAB_VIEWER=host:port; empty: no copies, as in the CI run).
if [ -n "${LAB_VIEWER:-}" ]; then
  for d in $(postconf -hx virtual_mailbox_domains | tr ',' ' '); do echo "@$d lab-copy@viewer.test"; done \
    > /etc/postfix/viewer_bcc
  echo "viewer.test smtp:[${LAB_VIEWER%:*}]:${LAB_VIEWER##*:}" > /etc/postfix/transport
  postconf -e recipient_bcc_maps=texthash:/etc/postfix/viewer_bcc transport_maps=texthash:/etc/postfix/transport
fi
# No chroot: the container is the isolation, and a chroot would need copies of resolv.conf.
postconf -F '*/*/chroot = n'
mkdir -p /var/mail/vhosts && chown 5000:5000 /var/mail/vhosts
getent group vmail >/dev/null || groupadd -g 5000 vmail
getent passwd vmail >/dev/null || useradd -u 5000 -g 5000 -d /var/mail/vhosts -s /usr/sbin/nologin vmail
postfix check
echo "postfix: $role as $(postconf -h myhostname)"
exec postfix start-fg
