#!/usr/bin/env bash
# connector-relay against Postfix, side by side on this machine, in one run.
#
#   bash bench/relay-vs-postfix.sh            # full run: N=20000 messages, C=50 sessions
#   bash bench/relay-vs-postfix.sh --quick    # N=2000, idle probe with 2000 sessions
#   N=5000 C=20 bash bench/relay-vs-postfix.sh --scenario plain --no-idle
#   bash bench/relay-vs-postfix.sh --shape per-connection --rcpts 1   # one connection a message
#   RELAY_BIN=/path/to/old/connector-relay bash bench/relay-vs-postfix.sh   # another build
#   bash bench/relay-vs-postfix.sh --scenario outage -n 2000   # smart host down, then back
#   bash bench/relay-vs-postfix.sh --scenario large --large-n 20  # 1, 10, 50 MB messages
#   bash bench/relay-vs-postfix.sh --scenario proxy -n 2000   # cost of a PROXY header per session
#   bash bench/relay-vs-postfix.sh --scenario fleet -n 5000    # two nodes behind HAProxy vs one
#
# Installs Debian's postfix if missing (it brings smtp-source and smtp-sink; the system
# instance is left unconfigured and stopped), builds the relay and the latency tool, then:
#   plain: smtp-source -> {connector-relay | private Postfix} -> smtp-sink
#   tls:   smtp-latency (STARTTLS) -> {connector-relay | Postfix} -(STARTTLS, verified)->
#          connector-relay sink --tls-cert  (smtp-source and smtp-sink cannot do STARTTLS)
# with 1 and 10 recipients per message, in two shapes: sessions reused across messages
# (smtp-source -d, smtp-latency) and one connection per message (smtp-source without -d,
# smtp-latency --per-message-connection: a TLS handshake per message), then end-of-DATA ->
# 250 latency at half of each server's measured end-to-end rate, connect -> banner from a
# trusted and an untrusted address, then an idle-sessions probe. Last, the outage scenario:
# the smart host of both is down (bench/outage.py dead-host: 421 and close, counting the
# connections), N messages are injected (reused sessions), then the sink comes back, both
# are flushed (relay admin API retry, postqueue -f) and the drain is timed. The proxy
# scenario: one connection per message, directly and through a "balancer" address with a
# PROXY protocol v2 header (relay ProxyProtocolFrom, Postfix smtpd_upstream_proxy_protocol =
# haproxy), throughput and connect -> banner, to price the header. The fleet scenario (relay
# only; installs Debian's haproxy): one node directly, one node behind HAProxy
# (send-proxy-v2), then two nodes behind it, each the load's end-to-end rate, as ratios.
# Both servers keep
# their durability: the relay fsyncs its spool before 250, Postfix its queue file (its default).
# See bench/README.md for what each figure means.
set -euo pipefail

N=${N:-20000}
C=${C:-50}
IDLE=${IDLE:-10000}
SIZE=${SIZE:-4096}
RCPTS=${RCPTS:-"1 10"}
SCENARIOS=${SCENARIOS:-"plain tls outage proxy"}
OUTAGE_WINDOW=${OUTAGE_WINDOW:-60} # s after the outage injection during which dead-host connections count
OUTAGE_RETRY=01:00:00 OUTAGE_RETRY_S=3600 # neither server retries on its own within the outage run
LARGE_SIZES=${LARGE_SIZES:-"1 10 50"} # MB per message in the large scenario, one run each
LARGE_N=${LARGE_N:-20}          # messages per size in the large scenario
LARGE_C=${LARGE_C:-4}           # sessions at a time in the large scenario
LATENCY=${LATENCY:-1}
KEEP=${KEEP:-0}
ATTRIBUTION=${ATTRIBUTION:-0}
SHAPES=${SHAPES:-"reused per-connection"}
PC_C=${PC_C:-20}                # connections at a time in the per-connection shape (issue 15's 20)
BANNER=${BANNER:-1000}          # connections per connect -> banner probe, 0 to skip
TRUSTED_SRC=127.0.0.1           # the OnPremises connector's address (the load's source)
PROXY_SRC=127.0.0.3             # the "load balancer" of the proxy scenario
BALANCER_SRC=127.0.0.4          # HAProxy's source address toward the nodes (fleet scenario)
UNTRUSTED_SRC=${UNTRUSTED_SRC:-127.0.0.2} # an anonymous client: no connector lists it
# [Relay] PreGreetingWait for the relay's config (a time span, e.g. "00:00:00.1", "00:00:00"
# = off); empty: the key is left out and the relay's default applies (builds without it).
PREGREET=${PREGREET:-}
# Postfix smtpd_peername_lookup: "no" (the relay looks up no client name either) or "yes"
# (Postfix's default: a PTR and a forward lookup before every greeting; this machine's
# resolver loses about 1 query in 100, which costs that greeting a 5 s retry).
PF_PEERNAME_LOOKUP=${PF_PEERNAME_LOOKUP:-no}

usage() {
    sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF
Options (or the environment variables in brackets):
  --quick            N=2000, IDLE=2000 and BANNER=200, for trying it
  -n N               messages per run [N, default 20000]
  -c C               concurrent sessions in the reused shape [C, default 50]
  --rcpts "1 10"     recipients per message, one run each [RCPTS]
  --scenario S       plain, tls, outage, large, proxy, fleet or a list, e.g. "plain tls"
                     [SCENARIOS, default "plain tls outage proxy"]; outage: reused
                     sessions, 1 recipient; large: plain, reused sessions, 1 recipient,
                     one run per size; proxy: plain, one connection per message, 1
                     recipient, without and with a PROXY v2 header; fleet: relay only,
                     plain, 1 recipient, each shape: one node, one behind HAProxy, two
                     behind HAProxy
  --large-sizes "1 10 50"  message sizes in MB of the large scenario [LARGE_SIZES]
  --large-n N        messages per size in the large scenario [LARGE_N, default 20]
  --large-c C        sessions at a time in the large scenario [LARGE_C, default 4]
  --outage-window S  seconds after the outage injection during which connections to the
                     dead smart host are still counted [OUTAGE_WINDOW, default 60]
  --shape S          reused, per-connection or both: sessions kept across messages, one
                     connection per message, or both (the default) [SHAPES]
  --pc-sessions K    connections at a time in the per-connection shape [PC_C, default 20]
  --banner K         connections per connect -> banner probe, 0 to skip [BANNER, default 1000]
  --pregreet SPAN    the relay's [Relay] PreGreetingWait, e.g. 00:00:00.1 or 00:00:00 (off);
                     default: key not written, the relay's default [PREGREET]
  --idle K           idle sessions for the probe, 0 to skip [IDLE, default 10000]
  --no-idle          the same as --idle 0
  --no-latency       skip the fixed-rate latency runs [LATENCY=0]
  --keep             keep the work directory (logs, configs) [KEEP=1]
  --attribution      also run the criterion benchmark of inbound attribution [ATTRIBUTION=1]
  RELAY_BIN=FILE     benchmark this connector-relay binary instead of building one
  PF_PEERNAME_LOOKUP=yes  Postfix looks up each client's name before its greeting (its
                     default; off here: the relay does not, and a lost answer costs 5 s)
  UNTRUSTED_SRC=IP   the untrusted source of the banner probe (default 127.0.0.2)
  PROFILE=dev        debug build, for a smoke run of the script (figures meaningless)
  BENCH_DIR=DIR      work directory (default var/bench; must not be tmpfs: fsync is a no-op there)
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) N=2000; IDLE=2000; BANNER=200 ;;
        -n) N=$2; shift ;;
        -c) C=$2; shift ;;
        --rcpts) RCPTS=$2; shift ;;
        --scenario) SCENARIOS=$2; shift ;;
        --shape)
            case "$2" in
                reused|per-connection) SHAPES=$2 ;;
                both) SHAPES="reused per-connection" ;;
                *) echo "--shape: reused, per-connection or both, not $2" >&2; exit 1 ;;
            esac
            shift ;;
        --pc-sessions) PC_C=$2; shift ;;
        --outage-window) OUTAGE_WINDOW=$2; shift ;;
        --large-sizes) LARGE_SIZES=$2; shift ;;
        --large-n) LARGE_N=$2; shift ;;
        --large-c) LARGE_C=$2; shift ;;
        --banner) BANNER=$2; shift ;;
        --pregreet) PREGREET=$2; shift ;;
        --idle) IDLE=$2; shift ;;
        --no-idle) IDLE=0 ;;
        --no-latency) LATENCY=0 ;;
        --keep) KEEP=1 ;;
        --attribution) ATTRIBUTION=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 1 ;;
    esac
    shift
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
WORK=${BENCH_DIR:-$REPO/var/bench}
CERTS=$REPO/certs-test
export PATH=$PATH:/usr/sbin:/sbin

say() { printf '%s\n' "$*" >&2; }
die() { say "relay-vs-postfix: $*"; exit 1; }

# ---------------------------------------------------------------- installation (idempotent)
install_postfix() {
    if [ -x /usr/sbin/postfix ] && [ -x /usr/sbin/smtp-source ] && [ -x /usr/sbin/smtp-sink ] \
        && command -v curl >/dev/null; then
        return
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    say "installing Debian's postfix (smtp-source, smtp-sink) and curl ..."
    # "No configuration": no /etc/postfix/main.cf, so the system instance cannot start and
    # nothing listens on port 25; this script only runs private instances.
    echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postfix curl >/dev/null
    if $sudo postfix status >/dev/null 2>&1; then
        say "stopping the system postfix the package started (this benchmark runs its own)"
        $sudo postfix stop >/dev/null 2>&1 || true
    fi
}

# Debian's haproxy for the fleet scenario (a private instance; the system one is stopped).
install_haproxy() {
    command -v haproxy >/dev/null && return
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    say "installing Debian's haproxy ..."
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq haproxy >/dev/null
    $sudo systemctl stop haproxy >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------- helpers
now() { date +%s.%N; }
fdiv() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.0f", a / b; else print "n/a" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0 && a + 0 > 0) printf "%.2fx", a / b; else print "n/a" }'; }

# A free loopback port below the ephemeral range (so no client socket of the load can hold
# it), not in use in any state, and not handed out before.
USED_PORTS=" "
EPHEMERAL_LOW=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() {
    local p
    while :; do
        p=$((10000 + RANDOM % (EPHEMERAL_LOW - 10000)))
        case "$USED_PORTS" in *" $p "*) continue ;; esac
        if ! ss -Htan "sport = :$p" | grep -q .; then
            USED_PORTS="$USED_PORTS$p "
            echo "$p"
            return
        fi
    done
}

wait_listening() { # port, what
    local i
    for i in $(seq 1 300); do
        ss -Hltn "sport = :$1" | grep -q . && return 0
        sleep 0.1
    done
    die "$2 is not listening on port $1 after 30 s"
}

# Memory of a process tree: the sum of Pss over the root and its descendants (shared pages
# split between the processes that map them, so many Postfix processes sharing libc are not
# counted many times), in kB.
tree_pids() {
    local pid=$1 kids k
    echo "$pid"
    kids=$(cat /proc/"$pid"/task/*/children 2>/dev/null || true)
    for k in $kids; do tree_pids "$k"; done
}
# A process that exits between the listing and the read is skipped (mawk, given a file that
# no longer exists, would give up on the whole sample).
tree_pss_kb() {
    local p
    for p in $(tree_pids "$1"); do cat /proc/"$p"/smaps_rollup 2>/dev/null || true; done |
        awk '/^Pss:/ { s += $2 } END { print s + 0 }'
}
rss_kb() { awk '/^VmRSS:/ { print $2 }' /proc/"$1"/status; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' /proc/"$1"/status; }

# Samples tree_pss_kb of $1 every 200 ms into file $2 (the peak) until killed.
start_sampler() {
    ( peak=0
      while :; do
          v=$(tree_pss_kb "$1")
          [ "$v" -gt "$peak" ] && { peak=$v; echo "$peak" >"$2"; }
          sleep 0.2
      done ) &
    SAMPLER=$!
}
# Also called by cleanup before any sampler ran (set -u: an unset SAMPLER would end the
# EXIT trap there, leaving the sink and the servers running).
stop_sampler() {
    [ -n "${SAMPLER:-}" ] || return 0
    kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; SAMPLER=""
}

# ---------------------------------------------------------------- the downstream sinks
SINK_PID=""
start_sink() { # scenario [port: the outage scenario brings the sink back on the same port]
    SINK_PORT=${2:-$(free_port)}
    if [ "$1" = tls ]; then
        SINK_DIR=$WORK/sink-mail
        mkdir -p "$SINK_DIR"
        # --discard: counts in $SINK_DIR/count and stores nothing, as smtp-sink -c in the
        # plain scenario (a file per message competed for the disk with the server tested).
        "$RELAY" sink --listen "127.0.0.1:$SINK_PORT" --maildir "$SINK_DIR" --discard \
            --tls-cert "$CERTS/sink.test.crt" --tls-key "$CERTS/sink.test.key" \
            >"$WORK/sink.log" 2>&1 &
    else
        smtp-sink -c -u nobody -m 1000 "127.0.0.1:$SINK_PORT" 1024 >"$WORK/sink.count" 2>&1 &
    fi
    SINK_PID=$!
    wait_listening "$SINK_PORT" "the sink"
}
stop_sink() { [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null; wait "$SINK_PID" 2>/dev/null || true; SINK_PID=""; }
sink_count() {
    if [ "$SCENARIO" = tls ]; then
        local n
        n=$(cat "$SINK_DIR/count" 2>/dev/null) # empty while the sink rewrites it
        echo "${n:-0}"
    else
        tr '\r' '\n' <"$WORK/sink.count" | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -1 | sed 's/^$/0/'
    fi
}

# ---------------------------------------------------------------- connector-relay
RELAY_PID=""
start_relay() { # scenario [node: the fleet scenario's second node, in its own directory]
    RELAY_PORT=$(free_port)
    local d=$WORK/relay${2:-}
    RELAY_ADMIN_PORT=$(free_port)
    rm -rf "$d"; mkdir -p "$d"
    {
        echo "[Relay]"
        echo "Fqdn = \"relay.bench.test\""
        echo "Listen = [\"127.0.0.1:$RELAY_PORT\"]"
        if [ "$1" = tls ]; then
            echo "TlsCertificate = \"$CERTS/relay.contoso.test.crt\""
            echo "TlsPrivateKey = \"$CERTS/relay.contoso.test.key\""
            echo "TrustedCaFile = \"$CERTS/ca.crt\""
        fi
        echo "AcceptedDomains = [\"relay.bench.test\"]"
        echo "SpoolDir = \"$d/spool\""
        echo "DataDir = \"$d/data\""
        echo "AdminListen = \"127.0.0.1:$RELAY_ADMIN_PORT\""
        echo "AdminTokenFile = \"$d/data/admin.token\""
        echo "SrsSecretFile = \"$d/data/srs.key\""
        echo "ProtocolLogDir = \"$d/data/protocol\""
        echo "MaxInboundConnection = $((IDLE + 1000))"
        # The banner probe opens 1,000 connections from one untrusted address within
        # seconds: no connection rate limit, as Postfix's default (anvil's is 0 = off).
        echo "MaxInboundConnectionRatePerSource = 0"
        if [ -n "$PREGREET" ]; then echo "PreGreetingWait = \"$PREGREET\""; fi
        # Room for the largest message of the large scenario (the default is 25 MB).
        if [ "$1" = large ]; then echo "MaxMessageSize = \"100MB\""; fi
        # The proxy scenario's balancer: its connections carry the load source's address.
        if [ "$1" = proxy ]; then echo "ProxyProtocolFrom = [\"$PROXY_SRC\"]"; fi
        # The fleet scenario's HAProxy connects from its own address with a PROXY v2 header.
        if [ "$1" = fleet ]; then echo "ProxyProtocolFrom = [\"$BALANCER_SRC\"]"; fi
        if [ "$1" = outage ]; then
            # No retry of its own during the outage measurement (the flush starts the drain,
            # as postqueue -f does for Postfix); outbound connection limits at their defaults.
            echo "TransientFailureRetryInterval = \"$OUTAGE_RETRY\""
            echo "MaxRetryInterval = \"$OUTAGE_RETRY\""
            echo "TransientFailureRetryCount = 6"
            echo "OutboundConnectionFailureRetryInterval = \"$OUTAGE_RETRY\""
            echo "MaxPerDomainOutboundConnections = 20"
            echo "MaxOutboundConnections = 1000"
        fi
        echo
        echo "[[InboundConnector]]"
        echo "Name = \"Load source\""
        echo "ConnectorType = \"OnPremises\""
        echo "SenderIPAddresses = [\"127.0.0.1/32\"]"
        echo
        echo "[[OutboundConnector]]"
        echo "Name = \"Smart host\""
        echo "RecipientDomains = [\"example.test\"]"
        echo "UseMXRecord = false"
        echo "SmartHosts = [\"127.0.0.1:$SINK_PORT\"]"
        if [ "$1" = tls ]; then
            echo "TlsSettings = \"DomainValidation\""
            echo "TlsDomain = \"sink.test\""
        fi
    } >"$d/relay.toml"
    RELAY_KEYS_DROPPED=""
    if [ "$1" = outage ]; then
        # A build from before the per-next-hop queue scheduler refuses the keys it does not
        # know: leave those out (and say so in the report) rather than not run at all.
        local key
        "$RELAY" check --config "$d/relay.toml" >"$d/check.out" 2>&1 || true
        for key in TransientFailureRetryCount OutboundConnectionFailureRetryInterval \
            MaxPerDomainOutboundConnections MaxOutboundConnections; do
            if grep "$key" "$d/check.out" | grep -q "unknown key"; then
                sed -i "/^$key = /d" "$d/relay.toml"
                RELAY_KEYS_DROPPED="$RELAY_KEYS_DROPPED $key"
            fi
        done
        [ -z "$RELAY_KEYS_DROPPED" ] || say "  this relay build does not know:$RELAY_KEYS_DROPPED (left out)"
    fi
    "$RELAY" check --config "$d/relay.toml" >/dev/null || die "generated relay config is invalid: $d/relay.toml (--keep keeps it)"
    (cd "$d" && exec "$RELAY" run --config "$d/relay.toml" >"$d/relay.log" 2>&1) &
    RELAY_PID=$!
    wait_listening "$RELAY_PORT" "connector-relay"
    TARGET_PORT=$RELAY_PORT TARGET_PID=$RELAY_PID PROXY_PORT=$RELAY_PORT
}
stop_relay() { [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null; wait "$RELAY_PID" 2>/dev/null || true; RELAY_PID=""; }
# Queued messages may have no file in spool/msg (their write-ahead log record is their copy
# until deferred or checkpointed): ask the relay's /metrics (no token needed on loopback).
relay_queue_empty() {
    local p
    for p in ${FLEET_ADMIN_PORTS:-$RELAY_ADMIN_PORT}; do
        curl -sf "http://127.0.0.1:$p/metrics" | grep -qx 'connector_relay_queue_depth 0' || return 1
    done
}

# ---------------------------------------------------------------- private Postfix
PF=""
start_postfix() { # scenario
    PF=$WORK/postfix
    PF_PORT=$(free_port)
    postfix -c "$PF/etc" stop >/dev/null 2>&1 || true
    rm -rf "$PF"; mkdir -p "$PF/etc" "$PF/queue" "$PF/data"
    chown postfix "$PF/data"
    cat >"$PF/etc/main.cf" <<EOF
# A private Postfix instance, the relay's equivalent: accept from the load source
# (mynetworks) and relay everything to the sink (relayhost). Durability: Postfix's default
# (the queue file is fsynced before 250).
compatibility_level = 3.6
queue_directory = $PF/queue
data_directory = $PF/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.1/32
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
relayhost = [127.0.0.1]:$SINK_PORT
maillog_file = $PF/maillog
maillog_file_prefixes = $PF
smtputf8_enable = no
# The relay resolves no client address to a name; neither does Postfix here unless asked
# (PF_PEERNAME_LOOKUP=yes): a lost DNS answer would be measured as a 5 s greeting.
smtpd_peername_lookup = $PF_PEERNAME_LOOKUP
EOF
    if [ "$1" = outage ]; then
        # No retry of its own during the outage measurement: postqueue -f starts the drain.
        # (A dead destination is also skipped for minimal_backoff_time.)
        cat >>"$PF/etc/main.cf" <<EOF
minimal_backoff_time = ${OUTAGE_RETRY_S}s
maximal_backoff_time = ${OUTAGE_RETRY_S}s
queue_run_delay = ${OUTAGE_RETRY_S}s
EOF
    fi
    if [ "$1" = large ]; then
        # Room for the largest message of the large scenario (the default is 10 MB).
        echo "message_size_limit = 104857600" >>"$PF/etc/main.cf"
    fi
    if [ "$1" = tls ]; then
        cat >>"$PF/etc/main.cf" <<EOF
smtpd_tls_cert_file = $CERTS/relay.contoso.test.crt
smtpd_tls_key_file = $CERTS/relay.contoso.test.key
smtpd_tls_security_level = may
smtp_tls_security_level = secure
smtp_tls_secure_cert_match = sink.test
smtp_tls_CAfile = $CERTS/ca.crt
EOF
    fi
    # The proxy scenario: a second smtpd for the balancer (Postfix takes the header per
    # service, from every client of it; the relay per address, on its one listener).
    PF_PROXY_PORT=$PF_PORT PF_PROXY_SERVICE=""
    if [ "$1" = proxy ]; then
        PF_PROXY_PORT=$(free_port)
        PF_PROXY_SERVICE="127.0.0.1:$PF_PROXY_PORT inet n - n - - smtpd -o smtpd_upstream_proxy_protocol=haproxy"
    fi
    # Upstream's services without chroot (the Debian package's master.cf chroots, which
    # would need /etc files copied into the queue directory).
    cat >"$PF/etc/master.cf" <<EOF
127.0.0.1:$PF_PORT inet n - n - - smtpd
$PF_PROXY_SERVICE
pickup    unix  n - n 60   1 pickup
cleanup   unix  n - n -    0 cleanup
qmgr      unix  n - n 300  1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n -    - trivial-rewrite
bounce    unix  - - n -    0 bounce
defer     unix  - - n -    0 bounce
trace     unix  - - n -    0 bounce
verify    unix  - - n -    1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -    - proxymap
proxywrite unix - - n -    1 proxymap
smtp      unix  - - n -    - smtp
relay     unix  - - n -    - smtp
showq     unix  n - n -    - showq
error     unix  - - n -    - error
retry     unix  - - n -    - error
discard   unix  - - n -    - discard
anvil     unix  - - n -    1 anvil
scache    unix  - - n -    1 scache
postlog   unix-dgram n - n - 1 postlogd
EOF
    postfix -c "$PF/etc" check >"$PF/check.log" 2>&1 || { cat "$PF/check.log" >&2; die "postfix check failed"; }
    postfix -c "$PF/etc" start >"$PF/start.log" 2>&1 || { cat "$PF/start.log" >&2; die "postfix start failed"; }
    wait_listening "$PF_PORT" "Postfix"
    TARGET_PORT=$PF_PORT TARGET_PID=$(awk '{ print $1 }' "$PF/queue/pid/master.pid")
    PROXY_PORT=$PF_PROXY_PORT
}
stop_postfix() { [ -n "$PF" ] && postfix -c "$PF/etc" stop >/dev/null 2>&1 || true; }
postfix_queue_empty() {
    [ -z "$(find "$PF/queue/incoming" "$PF/queue/active" "$PF/queue/deferred" "$PF/queue/maildrop" -type f 2>/dev/null | head -1)" ]
}

# ---------------------------------------------------------------- the dead smart host
# bench/outage.py dead-host on the sink's port: accepts, answers 421, closes, and counts the
# connections in $WORK/dead.count. Both servers meet the same dead host.
DEAD_PID=""
start_dead_host() {
    rm -f "$WORK/dead.count"
    python3 "$REPO/bench/outage.py" dead-host --listen "127.0.0.1:$SINK_PORT" \
        --count-file "$WORK/dead.count" >"$WORK/dead.log" 2>&1 &
    DEAD_PID=$!
    wait_listening "$SINK_PORT" "the dead smart host"
}
stop_dead_host() {
    [ -n "$DEAD_PID" ] || return 0
    kill "$DEAD_PID" 2>/dev/null; wait "$DEAD_PID" 2>/dev/null || true; DEAD_PID=""
}
dead_count() { local n; n=$(cat "$WORK/dead.count" 2>/dev/null || true); echo "${n:-0}"; }

cleanup() {
    stop_sampler 2>/dev/null || true
    stop_dead_host
    stop_relay; stop_postfix; stop_sink; stop_fleet
    [ -n "${IDLE_PID:-}" ] && kill "$IDLE_PID" 2>/dev/null
    if [ "$KEEP" = 1 ]; then say "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}

# Waits (10 minutes at most) until the sink has n messages more than base and the target's
# queue is empty.
wait_sink() { # target, base, n
    local base=${2:-0} deadline count # base: empty from a sink that has not counted yet
    deadline=$(awk -v t="$(now)" 'BEGIN { printf "%.3f", t + 600 }')
    while :; do
        count=$(( $(sink_count) - base ))
        if [ "$count" -ge "$3" ]; then
            if [ "$1" = relay ] && relay_queue_empty; then break; fi
            if [ "$1" = postfix ] && postfix_queue_empty; then break; fi
        fi
        awk -v t="$(now)" -v d="$deadline" 'BEGIN { exit !(t > d) }' && die "$1: only $count of $3 messages reached the sink after 10 minutes"
        sleep 0.05
    done
}

# ---------------------------------------------------------------- one load run
# Globals set: INJ (msg/s until the last 250), E2E (msg/s until the sink has every message),
# PEAK (peak Pss sum, MB), TLSRES ("resumed/handshakes|banner p50|banner p99" of the TLS
# load, "-" for smtp-source).
run_load() { # target(relay|postfix), rcpts, shape(reused|per-connection)
    local target=$1 rcpts=$2 shape=$3 base t0 t1 t2 deadline count
    local sessions=$C keep=(-d) pmc=()
    if [ "$shape" = per-connection ]; then sessions=$PC_C keep=() pmc=(--per-message-connection); fi
    base=$(sink_count) # both sinks count cumulatively
    echo 0 >"$WORK/peak"
    start_sampler "$TARGET_PID" "$WORK/peak"
    t0=$(now)
    if [ "$SCENARIO" = tls ]; then
        "$LOADTOOL" --server "127.0.0.1:$TARGET_PORT" --starttls --ca "$CERTS/ca.crt" \
            --server-name relay.contoso.test -c "$sessions" -n "$N" --rcpts "$rcpts" --size "$SIZE" \
            "${pmc[@]}" >"$WORK/load.out" 2>&1 || { cat "$WORK/load.out" >&2; die "load against $target failed"; }
    else
        # Without -d, smtp-source opens a connection for every message (and QUITs it).
        smtp-source "${keep[@]}" -s "$sessions" -m "$N" -l "$SIZE" -r "$rcpts" -M load.onprem.test \
            -f load@onprem.test -t r@example.test "127.0.0.1:$TARGET_PORT" \
            >"$WORK/load.out" 2>&1 || { cat "$WORK/load.out" >&2; die "smtp-source against $target failed"; }
    fi
    t1=$(now)
    wait_sink "$target" "$base" "$N"
    t2=$(now)
    stop_sampler
    # A run shorter than one sample (Postfix: ~100 processes to read) has no peak yet:
    # take one now, while its processes still exist.
    [ "$(cat "$WORK/peak")" -gt 0 ] || tree_pss_kb "$TARGET_PID" >"$WORK/peak"
    INJ=$(awk -v n="$N" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
    E2E=$(awk -v n="$N" -v a="$t0" -v b="$t2" 'BEGIN { printf "%.0f", n / (b - a) }')
    PEAK=$(awk '{ printf "%.0f", $1 / 1024 }' "$WORK/peak")
    TLSRES=-
    if [ "$SCENARIO" = tls ]; then
        local res
        res=$(grep '^RESULT' "$WORK/load.out")
        TLSRES="$(result_kv "$res" tls_resumed)/$(( $(result_kv "$res" tls_resumed) + $(result_kv "$res" tls_full) ))|$(result_kv "$res" banner_p50_ms)|$(result_kv "$res" banner_p99_ms)"
    fi
    say "  $target, $shape, $rcpts rcpt: injection $INJ msg/s, end-to-end $E2E msg/s, peak $PEAK MB"
    [ "$TLSRES" = - ] || say "    TLS handshakes resumed|banner p50 ms|banner p99 ms: $TLSRES"
}
result_kv() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; } # RESULT line, key

# Latency at a fixed rate: half the target's end-to-end rate, for 15 s or N messages.
run_latency() { # rate, target, shape
    local rate=$1 msgs tls=() sessions=$C pmc=()
    msgs=$(awk -v r="$rate" -v n="$N" 'BEGIN { m = int(r * 15); if (m > n) m = n; if (m < 500) m = 500; print m }')
    [ "$SCENARIO" = tls ] && tls=(--starttls --ca "$CERTS/ca.crt" --server-name relay.contoso.test)
    if [ "$3" = per-connection ]; then sessions=$PC_C pmc=(--per-message-connection); fi
    "$LOADTOOL" --server "127.0.0.1:$TARGET_PORT" "${tls[@]}" -c "$sessions" -n "$msgs" --rate "$rate" \
        --size "$SIZE" "${pmc[@]}" >"$WORK/lat.out" 2>&1 || { cat "$WORK/lat.out" >&2; die "latency run failed"; }
    LAT=$(grep '^RESULT' "$WORK/lat.out")
    LAT_P50=$(result_kv "$LAT" p50_ms) LAT_P99=$(result_kv "$LAT" p99_ms)
    LAT_P999=$(result_kv "$LAT" p999_ms) LAT_RATE=$(result_kv "$LAT" rate)
    # let the queue drain before whatever comes next
    local i
    for i in $(seq 1 600); do
        if [ "$2" = relay ]; then relay_queue_empty && break; else postfix_queue_empty && break; fi
        sleep 0.1
    done
}

# ---------------------------------------------------------------- outage
# The smart host of the server under test goes down, N messages come in, the smart host comes
# back and the server is told to flush. Sets R[outage,target,*]: healthy (injection msg/s
# with the smart host up: same instance, configuration and load), inj (msg/s while down),
# conns_inj / conns (connections to the dead host until the last 250 / OUTAGE_WINDOW s
# later), held (messages queued at the end of the window), peak (MB, during the outage),
# flush (s the flush command took), drain (s from the flush to the sink's N-th message),
# drainrate (msg/s), route (the relay's admin route used by the flush).
queued_count() { # target
    if [ "$1" = relay ]; then
        curl -sf "http://127.0.0.1:$RELAY_ADMIN_PORT/metrics" | sed -n 's/^connector_relay_queue_depth //p'
    else
        find "$PF/queue/incoming" "$PF/queue/active" "$PF/queue/deferred" "$PF/queue/maildrop" -type f 2>/dev/null | wc -l
    fi
}
run_outage() { # target
    local target=$1 t0 t1 t2 tf t3 deadline base count out
    run_load "$target" 1 reused
    R[outage,$target,healthy]=$INJ

    stop_sink
    start_dead_host
    echo 0 >"$WORK/peak"
    start_sampler "$TARGET_PID" "$WORK/peak"
    t0=$(now)
    smtp-source -d -s "$C" -m "$N" -l "$SIZE" -r 1 -M load.onprem.test \
        -f load@onprem.test -t r@example.test "127.0.0.1:$TARGET_PORT" \
        >"$WORK/load.out" 2>&1 || { cat "$WORK/load.out" >&2; die "smtp-source against $target (outage) failed"; }
    t1=$(now)
    R[outage,$target,conns_inj]=$(dead_count)
    sleep "$OUTAGE_WINDOW"
    R[outage,$target,conns]=$(dead_count)
    stop_sampler
    R[outage,$target,held]=$(queued_count "$target")
    R[outage,$target,inj]=$(awk -v n="$N" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
    R[outage,$target,peak]=$(awk '{ printf "%.0f", $1 / 1024 }' "$WORK/peak")
    say "  $target, smart host down: injection ${R[outage,$target,inj]} msg/s (healthy ${R[outage,$target,healthy]}), connections to it ${R[outage,$target,conns_inj]} until the last 250, ${R[outage,$target,conns]} after $OUTAGE_WINDOW s more; ${R[outage,$target,held]} queued"

    stop_dead_host
    start_sink outage "$SINK_PORT"
    base=$(sink_count)
    t2=$(now)
    if [ "$target" = relay ]; then
        out=$WORK/flush.out
        python3 "$REPO/bench/outage.py" relay-flush --admin "127.0.0.1:$RELAY_ADMIN_PORT" \
            --token-file "$WORK/relay/data/admin.token" >"$out" 2>"$WORK/flush.err" ||
            { cat "$WORK/flush.err" >&2; die "relay flush failed"; }
        R[outage,relay,route]="$(result_kv "$(grep '^RESULT' "$out")" route)|$(result_kv "$(grep '^RESULT' "$out")" items)|$(result_kv "$(grep '^RESULT' "$out")" failed)"
    else
        postqueue -c "$PF/etc" -f || die "postqueue -f failed"
    fi
    tf=$(now)
    deadline=$(awk -v t="$t2" 'BEGIN { printf "%.3f", t + 600 }')
    while :; do
        count=$(( $(sink_count) - base ))
        [ "$count" -ge "$N" ] && break
        awk -v t="$(now)" -v d="$deadline" 'BEGIN { exit !(t > d) }' && die "$target: only $count of $N messages reached the sink 10 minutes after the flush"
        sleep 0.05
    done
    t3=$(now)
    R[outage,$target,flush]=$(awk -v a="$t2" -v b="$tf" 'BEGIN { printf "%.2f", b - a }')
    R[outage,$target,drain]=$(awk -v a="$t2" -v b="$t3" 'BEGIN { printf "%.2f", b - a }')
    R[outage,$target,drainrate]=$(awk -v n="$N" -v a="$t2" -v b="$t3" 'BEGIN { printf "%.0f", n / (b - a) }')
    say "  $target, smart host back: flush took ${R[outage,$target,flush]} s, all $N at the sink ${R[outage,$target,drain]} s after it (${R[outage,$target,drainrate]} msg/s)"
}

# ---------------------------------------------------------------- large messages
# For each size in LARGE_SIZES (MB): a fresh instance of the target (so the relay's VmHWM is
# that size's own), LARGE_N messages of that size from LARGE_C reused sessions
# (smtp-source -d -l), 1 recipient, plain SMTP to smtp-sink. Sets R[large,mb,target,*]:
# inj / e2e (MB/s of message data until the last 250 / until the sink has every message and
# the queue is empty), secs (end to end), peak (MB, Pss of the process tree), hwm (relay).
run_large() { # target
    local target=$1 mb t0 t1 t2 deadline base count
    for mb in $LARGE_SIZES; do
        if [ "$target" = relay ]; then start_relay large; else start_postfix large; fi
        base=$(sink_count)
        echo 0 >"$WORK/peak"
        start_sampler "$TARGET_PID" "$WORK/peak"
        t0=$(now)
        smtp-source -d -s "$LARGE_C" -m "$LARGE_N" -l $((mb * 1048576)) -r 1 -M load.onprem.test \
            -f load@onprem.test -t r@example.test "127.0.0.1:$TARGET_PORT" \
            >"$WORK/load.out" 2>&1 || { cat "$WORK/load.out" >&2; die "smtp-source against $target ($mb MB) failed"; }
        t1=$(now)
        deadline=$(awk -v t="$t1" 'BEGIN { printf "%.3f", t + 1200 }')
        while :; do
            count=$(( $(sink_count) - base ))
            if [ "$count" -ge "$LARGE_N" ]; then
                if [ "$target" = relay ] && relay_queue_empty; then break; fi
                if [ "$target" = postfix ] && postfix_queue_empty; then break; fi
            fi
            awk -v t="$(now)" -v d="$deadline" 'BEGIN { exit !(t > d) }' && die "$target: only $count of $LARGE_N $mb MB messages reached the sink after 20 minutes"
            sleep 0.1
        done
        t2=$(now)
        stop_sampler
        # Empty when the sampler was stopped while rewriting it; none yet for a short run.
        [ "$(cat "$WORK/peak" 2>/dev/null || true)" -gt 0 ] 2>/dev/null || tree_pss_kb "$TARGET_PID" >"$WORK/peak"
        R[large,$mb,$target,inj]=$(awk -v n="$((LARGE_N * mb))" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", n / (b - a) }')
        R[large,$mb,$target,e2e]=$(awk -v n="$((LARGE_N * mb))" -v a="$t0" -v b="$t2" 'BEGIN { printf "%.1f", n / (b - a) }')
        R[large,$mb,$target,secs]=$(awk -v a="$t0" -v b="$t2" 'BEGIN { printf "%.1f", b - a }')
        R[large,$mb,$target,peak]=$(awk '{ printf "%.0f", $1 / 1024 }' "$WORK/peak")
        if [ "$target" = relay ]; then
            R[large,$mb,relay,hwm]=$(( $(hwm_kb "$RELAY_PID") / 1024 ))
            stop_relay
        else
            stop_postfix
        fi
        say "  $target, $LARGE_N x $mb MB, $LARGE_C sessions: injection ${R[large,$mb,$target,inj]} MB/s, end-to-end ${R[large,$mb,$target,e2e]} MB/s (${R[large,$mb,$target,secs]} s), peak ${R[large,$mb,$target,peak]} MB"
    done
}

# ---------------------------------------------------------------- connect -> banner
# BANNER connections one after the other from one source address, each timed from
# connect() returning to the whole 220 greeting read, then QUIT; no mail. Sets PROBE to
# "first|p50|p99|p99.9|max" (ms).
banner_probe() { # source address [port [more smtp-latency arguments]]
    local src=$1 port=${2:-$TARGET_PORT}
    shift; [ $# -eq 0 ] || shift
    "$LOADTOOL" --server "127.0.0.1:$port" --banner-probe "$BANNER" --source "$src" "$@" \
        >"$WORK/banner.out" 2>&1 || { cat "$WORK/banner.out" >&2; die "banner probe from $src failed"; }
    local res
    res=$(grep '^RESULT' "$WORK/banner.out")
    PROBE="$(result_kv "$res" first_ms)|$(result_kv "$res" p50_ms)|$(result_kv "$res" p99_ms)|$(result_kv "$res" p999_ms)|$(result_kv "$res" max_ms)"
}

# ---------------------------------------------------------------- PROXY protocol
# The price of a PROXY protocol header per session: the same load, one connection per
# message (PC_C at a time, plain, 1 recipient), sent directly from the load source and then
# from the balancer address PROXY_SRC with a v2 header that carries the load source's
# address (so both arms are attributed alike; Postfix: its second smtpd on PROXY_PORT).
# Then connect -> banner, BANNER connections one after the other, in both arms. Sets
# R[proxy,target,arm,*] for arm direct|header: inj, e2e (msg/s), banner (p50|p99 ms).
run_proxy() { # target
    local target=$1 arm port src hdr base t0 t1 t2 res
    for arm in direct header; do
        if [ "$arm" = direct ]; then
            port=$TARGET_PORT src=$TRUSTED_SRC hdr=()
        else
            port=$PROXY_PORT src=$PROXY_SRC hdr=(--proxy-header v2 --proxy-client "$TRUSTED_SRC")
        fi
        base=$(sink_count)
        t0=$(now)
        "$LOADTOOL" --server "127.0.0.1:$port" --source "$src" "${hdr[@]}" -c "$PC_C" -n "$N" \
            --size "$SIZE" --per-message-connection >"$WORK/load.out" 2>&1 ||
            { cat "$WORK/load.out" >&2; die "proxy load ($arm) against $target failed"; }
        t1=$(now)
        wait_sink "$target" "$base" "$N"
        t2=$(now)
        R[proxy,$target,$arm,inj]=$(awk -v n="$N" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
        R[proxy,$target,$arm,e2e]=$(awk -v n="$N" -v a="$t0" -v b="$t2" 'BEGIN { printf "%.0f", n / (b - a) }')
        R[proxy,$target,$arm,banner]="-|-"
        if [ "$BANNER" -gt 0 ]; then
            banner_probe "$src" "$port" "${hdr[@]}"
            res=$(grep '^RESULT' "$WORK/banner.out")
            R[proxy,$target,$arm,banner]="$(result_kv "$res" p50_ms)|$(result_kv "$res" p99_ms)"
        fi
        say "  $target, $arm: injection ${R[proxy,$target,$arm,inj]} msg/s, end-to-end ${R[proxy,$target,$arm,e2e]} msg/s, connect->banner p50|p99 ${R[proxy,$target,$arm,banner]} ms"
    done
}

# ---------------------------------------------------------------- fleet
# Two relay nodes behind HAProxy against one. Every run: smtp-source from the OnPremises
# address to HAProxy (or a node), 1 recipient, plain; HAProxy balances connections round
# robin and starts each with a PROXY v2 header from $BALANCER_SRC, so the nodes attribute
# the load by its own address. Sets R[fleet,SHAPE,ARM,inj|e2e] for ARM direct (one node,
# no balancer), one (one node behind HAProxy), two (two nodes behind HAProxy).
HAPROXY_PID="" FLEET_PIDS=""
start_haproxy() { # node ports...
    HAPROXY_PORT=$(free_port)
    local cfg=$WORK/haproxy.cfg n=0 p
    {
        # Two descriptors per proxied connection, within this shell's open-files limit.
        printf 'global\n    maxconn %s\n' "$(( $(ulimit -n) / 2 - 100 ))"
        printf 'defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 300s\n    timeout server 300s\n'
        printf 'frontend smtp\n    bind 127.0.0.1:%s\n    default_backend relays\n' "$HAPROXY_PORT"
        printf 'backend relays\n    balance roundrobin\n    source %s\n' "$BALANCER_SRC"
        for p in "$@"; do n=$((n + 1)); printf '    server node%s 127.0.0.1:%s send-proxy-v2\n' "$n" "$p"; done
    } >"$cfg"
    haproxy -f "$cfg" -db >"$WORK/haproxy.log" 2>&1 &
    HAPROXY_PID=$!
    wait_listening "$HAPROXY_PORT" "haproxy"
}
stop_haproxy() {
    [ -n "$HAPROXY_PID" ] || return 0
    kill "$HAPROXY_PID" 2>/dev/null; wait "$HAPROXY_PID" 2>/dev/null || true; HAPROXY_PID=""
}
stop_fleet() {
    stop_haproxy
    local p
    for p in $FLEET_PIDS; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done
    FLEET_PIDS="" FLEET_ADMIN_PORTS=""
}
fleet_runs() { # arm, target port
    local shape
    TARGET_PORT=$2
    for shape in $SHAPES; do
        run_load relay 1 "$shape"
        R[fleet,$shape,$1,inj]=$INJ R[fleet,$shape,$1,e2e]=$E2E
    done
}
run_fleet() {
    install_haproxy
    start_relay fleet
    local p1=$RELAY_PORT
    FLEET_PIDS=$RELAY_PID FLEET_ADMIN_PORTS=$RELAY_ADMIN_PORT
    say "  one node, directly"
    fleet_runs direct "$p1"
    say "  one node behind HAProxy"
    start_haproxy "$p1"
    fleet_runs one "$HAPROXY_PORT"
    stop_haproxy
    start_relay fleet 2
    FLEET_PIDS="$FLEET_PIDS $RELAY_PID" FLEET_ADMIN_PORTS="$FLEET_ADMIN_PORTS $RELAY_ADMIN_PORT"
    RELAY_PID=""
    say "  two nodes behind HAProxy"
    start_haproxy "$p1" "$RELAY_PORT"
    fleet_runs two "$HAPROXY_PORT"
    stop_fleet
}

# ---------------------------------------------------------------- idle sessions
idle_probe() { # target
    local before during out
    before=$(tree_pss_kb "$TARGET_PID")
    out=$WORK/idle.out
    : >"$out"
    "$LOADTOOL" --server "127.0.0.1:$TARGET_PORT" --idle "$IDLE" --hold 5 --timeout 5 >"$out" 2>&1 &
    IDLE_PID=$!
    local i
    for i in $(seq 1 1200); do grep -q '^IDLE_READY' "$out" && break; sleep 0.1; done
    sleep 1
    during=$(tree_pss_kb "$TARGET_PID")
    wait "$IDLE_PID" || true
    IDLE_PID=""
    IDLE_OPENED=$(sed -n 's/.*idle_opened=\([0-9]*\).*/\1/p' "$out")
    IDLE_ALIVE=$(sed -n 's/.*idle_alive=\([0-9]*\).*/\1/p' "$out")
    IDLE_BEFORE=$((before / 1024)) IDLE_DURING=$((during / 1024))
}

# ================================================================== main
install_postfix
[ "$(stat -f -c %T "$(dirname "$WORK")" 2>/dev/null || echo ?)" = tmpfs ] &&
    die "BENCH_DIR is on tmpfs, where fsync costs nothing; pick a directory on a disk"
# PROFILE=dev builds in debug (target/debug): for smoke runs of the script only, the
# figures then say nothing.
PROFILE=${PROFILE:-release}
OUT=$TARGET/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
if [ -n "${RELAY_BIN:-}" ]; then
    say "building the latency tool ($PROFILE); connector-relay: $RELAY_BIN ..."
    (cd "$REPO" && cargo build --profile "$PROFILE" --quiet --example smtp-latency)
    RELAY=$RELAY_BIN
else
    say "building connector-relay and the latency tool ($PROFILE) ..."
    (cd "$REPO" && cargo build --profile "$PROFILE" --quiet --bin connector-relay --example smtp-latency)
    RELAY=$OUT/connector-relay
fi
LOADTOOL=$OUT/examples/smtp-latency
rm -rf "$WORK"; mkdir -p "$WORK"
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

PREGREET_SHOWN=${PREGREET:-"not set (the relay's default)"}
cat <<EOF
# connector-relay ($(cd "$REPO" && git describe --always --dirty 2>/dev/null)${RELAY_BIN:+, binary $RELAY_BIN}) vs Postfix $(postconf -d -h mail_version 2>/dev/null), $(date -u +%Y-%m-%dT%H:%MZ)
# machine: nproc=$(nproc), $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(awk '/MemTotal/ { printf "%.0f GB RAM", $2 / 1048576 }' /proc/meminfo), load average $(cut -d' ' -f1-3 /proc/loadavg)
# spool/queue on: $(df -h --output=source,fstype "$WORK" | tail -1 | tr -s ' ')
# N=$N messages of ~$SIZE bytes per run; shapes: $SHAPES (reused: C=$C sessions kept open across messages; per-connection: $PC_C connections at a time, one per message); outage scenario: reused only
# large scenario (if run): $LARGE_N messages of each of $LARGE_SIZES MB, $LARGE_C reused sessions, 1 recipient, plain
# relay PreGreetingWait: $PREGREET_SHOWN; Postfix smtpd_peername_lookup = $PF_PEERNAME_LOOKUP
EOF

declare -A R
# The connect -> banner probe runs in the first scenario other than outage.
FIRST_SCENARIO=$(printf '%s\n' $SCENARIOS | grep -vx -e outage -e large -e proxy -e fleet | head -1 || true) FIRST_SHAPE=${SHAPES%% *}
for SCENARIO in $SCENARIOS; do
    say "scenario $SCENARIO"
    start_sink "$SCENARIO"
    if [ "$SCENARIO" = fleet ]; then run_fleet; stop_sink; continue; fi
    for target in relay postfix; do
        if [ "$SCENARIO" = large ]; then run_large "$target"; continue; fi
        if [ "$target" = relay ]; then start_relay "$SCENARIO"; else start_postfix "$SCENARIO"; fi
        if [ "$SCENARIO" = proxy ]; then
            run_proxy "$target"
            if [ "$target" = relay ]; then stop_relay; else stop_postfix; fi
            continue
        fi
        if [ "$SCENARIO" = outage ]; then
            run_outage "$target"
            if [ "$target" = relay ]; then R[outage,relay,dropped]=$RELAY_KEYS_DROPPED; stop_relay; else stop_postfix; fi
            continue
        fi
        for shape in $SHAPES; do
            for r in $RCPTS; do
                run_load "$target" "$r" "$shape"
                R[$SCENARIO,$shape,$target,$r,inj]=$INJ R[$SCENARIO,$shape,$target,$r,e2e]=$E2E
                R[$SCENARIO,$shape,$target,$r,peak]=$PEAK R[$SCENARIO,$shape,$target,$r,tls]=$TLSRES
            done
        done
        if [ "$LATENCY" = 1 ]; then
            first=${RCPTS%% *}
            rate=$(( ${R[$SCENARIO,$FIRST_SHAPE,$target,$first,e2e]} / 2 ))
            run_latency "$rate" "$target" "$FIRST_SHAPE"
            R[$SCENARIO,$target,lat]="$rate|$LAT_RATE|$LAT_P50|$LAT_P99|$LAT_P999"
            say "  $target latency ($FIRST_SHAPE) at $rate msg/s: p50 $LAT_P50 ms, p99 $LAT_P99 ms, p99.9 $LAT_P999 ms"
        fi
        # The greeting comes before STARTTLS: one scenario is enough.
        if [ "$SCENARIO" = "$FIRST_SCENARIO" ] && [ "$BANNER" -gt 0 ]; then
            for src in trusted:$TRUSTED_SRC untrusted:$UNTRUSTED_SRC; do
                banner_probe "${src#*:}"
                R[banner,$target,${src%%:*}]=$PROBE
                say "  $target connect->banner from ${src#*:} (first|p50|p99|p99.9|max ms): $PROBE"
            done
        fi
        if [ "$SCENARIO" = plain ] && [ "$IDLE" -gt 0 ]; then
            idle_probe "$target"
            R[idle,$target]="$IDLE_OPENED|$IDLE_ALIVE|$IDLE_BEFORE|$IDLE_DURING"
            say "  $target idle: $IDLE_OPENED of $IDLE opened, $IDLE_ALIVE alive, $IDLE_BEFORE -> $IDLE_DURING MB"
        fi
        [ "$target" = relay ] && R[$SCENARIO,relay,hwm]=$(( $(hwm_kb "$RELAY_PID") / 1024 ))
        if [ "$target" = relay ]; then stop_relay; else stop_postfix; fi
    done
    stop_sink
done

# ---------------------------------------------------------------- report
echo
printf '%-6s %-14s %-6s %-22s %12s %12s %8s\n' scenario shape rcpts figure connector-relay Postfix ratio
for SCENARIO in $SCENARIOS; do
    [ "$SCENARIO" = outage ] || [ "$SCENARIO" = large ] || [ "$SCENARIO" = proxy ] || [ "$SCENARIO" = fleet ] && continue
    for shape in $SHAPES; do
        for r in $RCPTS; do
            for f in inj:"injection msg/s" e2e:"end-to-end msg/s" peak:"peak memory MB"; do
                k=${f%%:*} label=${f#*:}
                a=${R[$SCENARIO,$shape,relay,$r,$k]} b=${R[$SCENARIO,$shape,postfix,$r,$k]}
                printf '%-6s %-14s %-6s %-22s %12s %12s %8s\n' "$SCENARIO" "$shape" "$r" "$label" "$a" "$b" "$(ratio "$a" "$b")"
            done
            if [ "$SCENARIO" = tls ]; then
                for t in relay postfix; do
                    IFS='|' read -r res bp50 bp99 <<<"${R[$SCENARIO,$shape,$t,$r,tls]}"
                    printf '%-6s %-14s %-6s %-22s %s handshakes resumed; connect->banner under load p50 %s ms, p99 %s ms\n' \
                        "$SCENARIO" "$shape" "$r" "tls $t" "$res" "$bp50" "$bp99"
                done
            fi
        done
    done
    if [ "$LATENCY" = 1 ]; then
        for t in relay postfix; do
            IFS='|' read -r rate got p50 p99 p999 <<<"${R[$SCENARIO,$t,lat]}"
            printf '%-6s %-14s %-6s %-22s offered %s msg/s (achieved %s): p50 %s ms, p99 %s ms, p99.9 %s ms\n' \
                "$SCENARIO" "$FIRST_SHAPE" 1 "latency $t" "$rate" "$got" "$p50" "$p99" "$p999"
        done
    fi
    printf '%-6s %-14s %-6s %-22s %s MB (VmHWM over the whole scenario)\n' "$SCENARIO" - - "relay peak RSS" "${R[$SCENARIO,relay,hwm]}"
done
if [[ " $SCENARIOS " == *" large "* ]]; then
    for mb in $LARGE_SIZES; do
        for f in inj:"injection MB/s" e2e:"end-to-end MB/s" secs:"end-to-end s" peak:"peak memory MB"; do
            k=${f%%:*} label=${f#*:}
            a=${R[large,$mb,relay,$k]} b=${R[large,$mb,postfix,$k]}
            printf '%-6s %-14s %-6s %-22s %12s %12s %8s\n' large "$LARGE_N x $mb MB" 1 "$label" "$a" "$b" "$(ratio "$a" "$b")"
        done
        printf '%-6s %-14s %-6s %-22s %s MB (VmHWM)\n' large "$LARGE_N x $mb MB" 1 "relay peak RSS" "${R[large,$mb,relay,hwm]}"
    done
    echo "# large: per size a fresh instance of each server; smtp-source -d -s $LARGE_C -m $LARGE_N -l <size>, plain, 1 recipient, to smtp-sink -c; relay MaxMessageSize = 100MB, Postfix message_size_limit = 104857600; MB/s = MB of message data / time"
fi
if [[ " $SCENARIOS " == *" proxy "* ]]; then
    for arm in direct header; do
        for f in inj:"injection msg/s" e2e:"end-to-end msg/s"; do
            k=${f%%:*} label="${f#*:}, $arm"
            a=${R[proxy,relay,$arm,$k]} b=${R[proxy,postfix,$arm,$k]}
            printf '%-6s %-14s %-6s %-22s %12s %12s %8s\n' proxy per-connection 1 "$label" "$a" "$b" "$(ratio "$a" "$b")"
        done
    done
    for t in relay postfix; do
        IFS='|' read -r dp50 dp99 <<<"${R[proxy,$t,direct,banner]}"
        IFS='|' read -r hp50 hp99 <<<"${R[proxy,$t,header,banner]}"
        awk -v t="$t" -v d="${R[proxy,$t,direct,inj]}" -v h="${R[proxy,$t,header,inj]}" \
            -v dp50="$dp50" -v dp99="$dp99" -v hp50="$hp50" -v hp99="$hp99" 'BEGIN {
            printf "proxy  %-14s %-6s %-22s header costs %.1f%% of injection (%.0f us per session); connect->banner p50 %s -> %s ms, p99 %s -> %s ms\n",
                "per-connection", 1, "cost " t, 100 * (1 - h / d), 1e6 / h - 1e6 / d, dp50, hp50, dp99, hp99 }'
    done
    echo "# proxy: $N messages per arm, $PC_C connections at a time, one per message, plain, 1 recipient; header = PROXY v2 from $PROXY_SRC carrying $TRUSTED_SRC (relay ProxyProtocolFrom; Postfix a second smtpd with smtpd_upstream_proxy_protocol = haproxy); us per session = 1/rate(header) - 1/rate(direct), wall time per message at that concurrency"
fi
if [[ " $SCENARIOS " == *" fleet "* ]]; then
    for shape in $SHAPES; do
        for f in inj:"injection msg/s" e2e:"end-to-end msg/s"; do
            k=${f%%:*}
            d=${R[fleet,$shape,direct,$k]} o=${R[fleet,$shape,one,$k]} t=${R[fleet,$shape,two,$k]}
            printf '%-6s %-14s %-6s %-22s 1 node %s, behind HAProxy %s (%s), 2 nodes behind HAProxy %s (%s of 1 behind it)\n' \
                fleet "$shape" 1 "${f#*:}" "$d" "$o" "$(ratio "$o" "$d")" "$t" "$(ratio "$t" "$o")"
        done
    done
    echo "# fleet: connector-relay only, N=$N messages per run, 1 recipient, plain; HAProxy (send-proxy-v2, round robin by connection) from $BALANCER_SRC; both nodes on this machine ($(nproc) cores, one disk) share them, so two nodes cannot reach 2x here: the ratio is what a second node adds on the same hardware"
fi
if [[ " $SCENARIOS " == *" outage "* ]]; then
    for f in healthy:"accept msg/s, sink up" inj:"accept msg/s, sink down" pct:"down/up %" \
        conns_inj:"conns to dead, inject" conns:"conns to dead, +window" held:"queued after window" \
        peak:"peak memory MB, down" drain:"drain s after flush" drainrate:"drain msg/s"; do
        k=${f%%:*} label=${f#*:}
        if [ "$k" = pct ]; then
            a=$(awk -v a="${R[outage,relay,inj]}" -v b="${R[outage,relay,healthy]}" 'BEGIN { printf "%.0f", 100 * a / b }')
            b=$(awk -v a="${R[outage,postfix,inj]}" -v b="${R[outage,postfix,healthy]}" 'BEGIN { printf "%.0f", 100 * a / b }')
        else
            a=${R[outage,relay,$k]} b=${R[outage,postfix,$k]}
        fi
        printf '%-6s %-14s %-6s %-22s %12s %12s %8s\n' outage reused 1 "$label" "$a" "$b" "$(ratio "$a" "$b")"
    done
    IFS='|' read -r route items failed <<<"${R[outage,relay,route]}"
    if [ "$route" = queues ]; then
        flushed="POST /api/queues/<id>/retry for each of $items queues of GET /api/queues ($failed refused)"
    else
        flushed="GET /api/queues is missing in this build: POST /api/queue/<id>/retry for each of $items messages ($failed refused)"
    fi
    echo "# outage: the smart host of both is bench/outage.py dead-host (accepts, answers 421, closes; counts connections), then smtp-sink on the same port; N=$N messages, C=$C reused sessions, 1 recipient"
    echo "# outage: connections counted from the first message to the last 250 (inject) and to $OUTAGE_WINDOW s after it (+window); neither server retries on its own (relay retry intervals $OUTAGE_RETRY, Postfix minimal/maximal_backoff_time and queue_run_delay ${OUTAGE_RETRY_S}s)"
    echo "# outage: drain = from the flush to the sink's N-th message; relay flush: $flushed, ${R[outage,relay,flush]} s; Postfix: postqueue -f, ${R[outage,postfix,flush]} s"
    [ -z "${R[outage,relay,dropped]}" ] || echo "# outage: this relay build does not know${R[outage,relay,dropped]} (left out of its config)"
    awk -v ri="${R[outage,relay,inj]}" -v rh="${R[outage,relay,healthy]}" -v pi="${R[outage,postfix,inj]}" \
        -v rd="${R[outage,relay,drainrate]}" -v pd="${R[outage,postfix,drainrate]}" 'BEGIN {
        ok = "met"; no = "NOT met"
        printf "# outage goals: accept while down >= 90%% of healthy: %.0f%% (%s); >= 2x Postfix: %.2fx (%s); drain >= 2x Postfix: %.2fx (%s)\n",
            100 * ri / rh, (ri >= 0.9 * rh ? ok : no), ri / pi, (ri >= 2 * pi ? ok : no), rd / pd, (rd >= 2 * pd ? ok : no) }'
fi
if [ "$BANNER" -gt 0 ] && [ -n "$FIRST_SCENARIO" ]; then
    for src in trusted:$TRUSTED_SRC untrusted:$UNTRUSTED_SRC; do
        for t in relay postfix; do
            IFS='|' read -r first p50 p99 p999 max <<<"${R[banner,$t,${src%%:*}]}"
            printf 'banner %-14s %-6s %-22s first %s ms, p50 %s ms, p99 %s ms, p99.9 %s ms, max %s ms\n' \
                "${src%%:*}" - "$t from ${src#*:}" "$first" "$p50" "$p99" "$p999" "$max"
        done
    done
    echo "# connect->banner: $BANNER connections one after the other per line, from connect() returning to the whole 220 read, then QUIT; $TRUSTED_SRC is the relay's OnPremises connector, $UNTRUSTED_SRC no connector's (Postfix: neither runs postscreen)"
fi
if [ "$IDLE" -gt 0 ] && [[ " $SCENARIOS " == *" plain "* ]]; then
    for t in relay postfix; do
        IFS='|' read -r opened alive before during <<<"${R[idle,$t]}"
        printf 'idle   %-14s %-6s %-22s %s of %s sessions open (%s answered NOOP after 5 s); memory %s MB before, %s MB with them\n' \
            - - "$t" "$opened" "$IDLE" "$alive" "$before" "$during"
    done
    echo "# Postfix serves at most default_process_limit = 100 sessions at once; the others wait in the listen queue (no banner within 5 s = not open)"
fi
echo "# load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine makes the figures of both servers noisier)"
echo "# memory: sum of Pss over the process tree (relay: one process; Postfix: master and all its children), peak of 200 ms samples"
if [ "$ATTRIBUTION" = 1 ]; then
    echo
    echo "# inbound attribution, 10,000 connectors / 100,000 CIDRs (criterion; ns per call, absolute on this machine)"
    (cd "$REPO" && cargo bench --quiet --bench attribution -- --warm-up-time 1 --measurement-time 3 2>/dev/null) |
        awk '/^inbound_attribution\// { name = $1; sub(/.*\//, "", name) }
             / time: / && name != "" { printf "  %-16s %s %s %s %s %s %s\n", name, $2, $3, $4, $5, $6, $7; name = "" }'
fi
