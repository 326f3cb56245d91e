#!/usr/bin/env bash
# Benchmark of the parquet_lake sink: N tortoise readings (~220-byte JSON) waiting in a 3-partition
# topic of the real broker (tansu), read into Parquet files by `mysimbdp-connect parquet-lake`
# (columns inferred, dated by the message's timestamp, 100,000 rows per flush), beside a plain
# librdkafka consumer reading the same messages and writing nothing; rounds alternate, each in its own
# consumer group. The sink's time runs from its start to the moment its files hold all N rows (read
# from their names: a flush's offsets, and timed by their date folders), so it includes its start-up
# and its last flush. The plain consumer starts as the sink does (every partition assigned from the
# beginning, no group join) and is timed from its start, as the sink is (the comparison). Two more
# are printed: reading alone, each from its first message (the sink's first `taking from offset`
# log line, stamped by this script as it arrives: start-up left out of both), and the strictest, the
# plain consumer from its first message beside the sink from its start.
#   scripts/bench-lake.sh [--smoke]   (--smoke: small figures; checks that the benchmark works)
#   BASELINE=/path/to/an/older/mysimbdp-connect scripts/bench-lake.sh   (an A/B: that build's sink
#   runs in each round too, interleaved)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
. scripts/lib.sh
prepare

N=500000 ROUNDS=3
if [ "${1:-}" = "--smoke" ]; then N=20000 ROUNDS=1; fi
step "building (release)"
cargo build --release --bins --locked -p mysimbdp-connect -p test-apps
BIN=$CARGO_TARGET_DIR/release
RUN=$(date +%s | tail -c 7)
TENANT=benchlake-$RUN TOPIC=benchlake-$RUN.readings
WORK=$ROOT/.local/bench-lake
rm -rf "$WORK" && mkdir -p "$WORK"

echo "== command: scripts/bench-lake.sh ${1:-}"
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem/ {print $2}') GiB, kernel $(uname -r)"
echo "== broker: tansu 0.6.0 (memory storage) | git: $(git rev-parse --short HEAD)$(git diff --quiet || echo -dirty)"
"$BIN/stream-load" --topic "$TOPIC" --messages "$N" --partitions 3 | sed 's/^/   producer: /'

# Rows the finished files of the lake under $1 hold, by their names' offset ranges (one date, no
# dead letters: each flush of a partition is one file holding all its offsets).
rows_in() {
    find "$1" -name '*.parquet' ! -name '.*' 2>/dev/null \
        | sed -E 's/.*-o([0-9]+)-([0-9]+)-[0-9]+of[0-9]+\.parquet$/\1 \2/' | awk '{ n += $2 - $1 + 1 } END { print n + 0 }'
}

# Each line of its input, after the time it was read (bash's own clock: no process per line).
stamp() { while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done; }

lake_round() { # round [binary label]
    local dir=$WORK/lake-$1${3:-} t0 t1 tp pid bin=${2:-$BIN/mysimbdp-connect}
    mkdir -p "$dir"
    t0=$(date +%s.%N)
    env -i KAFKA_BROKERS="$MYSIMBDP_KAFKA_BROKERS" MYSIMBDP_TENANT="$TENANT" MYSIMBDP_SINK=lake \
        MYSIMBDP_INPUT_TOPICS="$TOPIC" MYSIMBDP_CONSUMER_GROUP="$TENANT.lake-$1${3:-}" MYSIMBDP_LAKE_DIR="$dir" \
        MYSIMBDP_LAKE_FLUSH_ROWS=100000 MYSIMBDP_LAKE_FLUSH_MS=2000 \
        "$bin" parquet-lake 2> >(stamp > "$WORK/lake-$1${3:-}.log") &
    pid=$!
    for _ in $(seq 6000); do
        [ "$(rows_in "$dir")" -ge "$N" ] && break
        kill -0 "$pid" 2>/dev/null || { cat "$WORK/lake-$1${3:-}.log" >&2; exit 1; }
        sleep 0.05
    done
    # When the last file was renamed into place: its date folder's time (exact, where the check's
    # loop above sees it up to ~50 ms late).
    t1=$(find "$dir" -type d -name 'date=*' -printf '%T@\n' | sort -n | tail -1)
    kill "$pid"; wait "$pid" || true
    [ "$(rows_in "$dir")" = "$N" ] || { echo "the lake holds $(rows_in "$dir") rows, not $N" >&2; exit 1; }
    tp=$(awk '/parquet-lake: .* taking from offset/ { print $1; exit }' "$WORK/lake-$1${3:-}.log")
    echo "${3:+$3 }lake sink: $N rows in $(find "$dir" -name '*.parquet' | wc -l) files, $(du -sm "$dir" | cut -f1) MiB, in $(python3 -c "
t0, t1, tp = $t0, $t1, '$tp'  # an older build (a baseline) may not log its first message
print(f'{t1 - t0:.2f}s: {round($N / (t1 - t0))} msg/s', end='')
print(f' (from its first message: {t1 - float(tp):.2f}s: {round($N / (t1 - float(tp)))} msg/s)' if tp else '')")"
}

step "$ROUNDS rounds of: the plain consumer, the lake sink (alternating which goes first)"
for i in $(seq "$ROUNDS"); do
    plain() { "$BIN/stream-load" --topic "$TOPIC" --consume "$N" --assign --group "$TENANT.plain-$i" --set fetch.wait.max.ms=10 | sed 's/^/   plain consumer: /'; }
    baseline() { [ -z "${BASELINE:-}" ] || lake_round "$i" "$BASELINE" baseline | sed 's/^/   /'; }
    if [ $((i % 2)) = 1 ]; then plain; baseline; lake_round "$i" | sed 's/^/   /'; else lake_round "$i" | sed 's/^/   /'; baseline; plain; fi
done | tee "$WORK/rounds.log"
python3 - "$WORK/rounds.log" <<'PY'
import re, statistics, sys
text = open(sys.argv[1]).read()
runs = re.findall(r"plain consumer: consumed \d+ messages in [\d.]+s: (\d+) msg/s \(from its start: [\d.]+s: (\d+) msg/s\)", text)
alone, plain = [int(a) for a, _ in runs], [int(s) for _, s in runs]
sink = r"lake sink: .* ([\d.]+)s: (\d+) msg/s \(from its first message: [\d.]+s: (\d+) msg/s\)"
lake = [int(x) for _, x, _ in re.findall(r"^   " + sink, text, re.M)]
polling = [int(x) for _, _, x in re.findall(r"^   " + sink, text, re.M)]
base = [int(x) for x in re.findall(r"^   baseline lake sink: .* [\d.]+s: (\d+) msg/s", text, re.M)]
p, l = statistics.median(plain), statistics.median(lake)
print(f"median of {len(plain)} rounds, both from their start: plain consumer {p:.0f} msg/s, lake sink {l:.0f} msg/s: {l / p:.2f} of the plain consumer's rate")
a, r = statistics.median(alone), statistics.median(polling)
print(f"reading alone, each from its first message: the plain consumer {a:.0f} msg/s, the lake sink {r:.0f} msg/s: {r / a:.2f}")
print(f"strictest: the plain consumer from its first message, the lake sink from its start: {l / a:.2f}")
if base:
    b = statistics.median(base)
    print(f"A/B: baseline lake sink {b:.0f} msg/s, this one {l:.0f} msg/s: {l / b:.2f}x")
PY
