#!/usr/bin/env bash
# How fast `connector-relay whatif` replays a week of a busy gateway's trace.
#
#   bash bench/whatif.sh              # 5,000,000 rows
#   bash bench/whatif.sh -n 1000000   # fewer rows
#   bash bench/whatif.sh --keep       # keep var/bench/whatif (about 2 GB at 5M rows)
#
# 1. builds the relay and examples/trace-gen.rs (release);
# 2. trace-gen writes var/bench/whatif/{relay.toml,proposed.toml,trace.sqlite}: a config
#    with an on-premises connector and 200 partners, a proposed config that changes three
#    of them, and N rows of realistic traffic over the last 7 days (Session, Received,
#    Routed, Attempt, Delivered and Rejected rows, written by the relay's store code, the
#    verdicts by its decision code);
# 3. runs `whatif --since 8d` twice (the first may read the file from disk, the second
#    from the page cache) and prints rows/s, seconds and peak memory for each, with the
#    report's counts.
# Not a timed test: the figures are for the README's performance notes.
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS=5000000
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        -n) ROWS="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 1 ;;
    esac
done

DIR=var/bench/whatif
TARGET="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet --bin connector-relay --example trace-gen
"$TARGET/release/examples/trace-gen" --dir "$DIR" --rows "$ROWS"
SIZE=$(du -h "$DIR/trace.sqlite" | cut -f1)
echo "trace store: $SIZE"

for run in 1 2; do
    start=$(date +%s.%N)
    set +e
    /usr/bin/time -f "%M" -o "$DIR/rss" "$TARGET/release/connector-relay" whatif \
        --current "$DIR/relay.toml" --config "$DIR/proposed.toml" --since 8d --json \
        > "$DIR/impact.json"
    code=$?
    set -e
    end=$(date +%s.%N)
    if [ "$code" -ne 0 ] && [ "$code" -ne 3 ]; then
        echo "whatif failed (exit $code)" >&2
        exit "$code"
    fi
    python3 - "$DIR/impact.json" "$ROWS" "$start" "$end" "$run" "$(tail -1 "$DIR/rss")" <<'EOF'
import json, sys
impact = json.load(open(sys.argv[1]))
rows, start, end, run = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
rss_mb = int(sys.argv[6]) / 1024
secs = end - start
r = impact["Replayed"]
print(f"run {run}: {rows} trace rows ({r['Rows']} transactions, {r['Groups']} groups, "
      f"{r['Decisions']} distinct fact sets) replayed in {secs:.2f} s: "
      f"{rows / secs:,.0f} rows/s, peak RSS {rss_mb:.0f} MB "
      f"(whatif's own count: {r['Milliseconds']} ms)")
if run == "2":
    print(impact["Summary"])
EOF
done

if [ "$KEEP" -eq 0 ]; then
    rm -rf "$DIR"
fi
