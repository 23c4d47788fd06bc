#!/usr/bin/env bash
# A client machine's load: COUNT messages through the balancer, one SMTP session each (swaks),
# recorded one line each in OUT: "250 <message-id>" when the relay accepted it, "FAIL
# <message-id>" otherwise; OUT.done when all are sent.
#   load.sh TAG COUNT OUT
set -u
tag=$1 count=$2 out=$3
rm -f "$out" "$out.done"
for i in $(seq 1 "$count"); do
  id="<$tag-$i@fleet.test>"
  if swaks --server 10.225.26.10 --timeout 30 --from "app@contoso.test" --to "$tag-$i@contoso.test" \
      --header "Message-Id: $id" --header "Subject: $tag $i" >/dev/null 2>&1; then
    echo "250 $id" >> "$out"
  else
    echo "FAIL $id" >> "$out"
  fi
done
touch "$out.done"
