#!/usr/bin/env bash
# Batch ingestion benchmarks, side by side in one run (these machines are noisy: medians and ratios).
#
#   scripts/bench-batch.sh            full run: start-up cost, 1 GiB CSV x3, 2,000 small files x2 app kinds
#   scripts/bench-batch.sh --smoke    small sizes, one repetition (checks the benchmark itself works)
#   scripts/bench-batch.sh --small    only the start-up cost and the small-files part
#
# 0. Start-up cost: the same no-op app started through the platform's runner in the sandbox and out of it,
#    interleaved (tests/bin/bench-spawn.rs).
# 1. Large file: the same generated CSV (a) ingested by the tortoise-csv app run by hand, (b) dropped into
#    the platform's staging folder (rename to final state), and (c) the same documents bulk-loaded by
#    PostgreSQL's own binary COPY into a table of the same shape (the ceiling). Peak memory of the app and
#    of the platform.
# 2. Small files: 2,000 files across 4 tenants renamed into staging as fast as possible; files/s end to end
#    and latency from rename to detection and to the app's start, with a no-op app (the platform's own
#    cost) and with the real orders-jsonl app (one coredms connection per file); then the same bursts with
#    the platform restarted with --sandbox off, side by side.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
. scripts/lib.sh

SIZE_MIB=1024 REPS=3 SMALL_FILES=2000 LARGE=1 SPAWN_RUNS=500
case "${1:-}" in
    --smoke) SIZE_MIB=16 REPS=1 SMALL_FILES=100 SPAWN_RUNS=50 ;;
    --small) LARGE=0 ;;
esac
TENANTS=4

prepare
step "building (release)"
cargo build --release --workspace --bins --locked 2>&1 | tail -n 1
BIN=$CARGO_TARGET_DIR/release
WORK=${MYSIMBDP_BENCH_DIR:-$ROOT/.local/bench}
rm -rf "$WORK" && mkdir -p "$WORK"/{tenants,staging,data,files}
ADMIN=$MYSIMBDP_TEST_PG_URL
# Server-side COPY files must be where the server (the postgres user) can read and write them.
SCRATCH=${MYSIMBDP_PG_SCRATCH:?run scripts/services.sh up}
STORE_DB=mysimbdp_bench
STORE_URL=${ADMIN%/*}/$STORE_DB
export PGOPTIONS="-c client_min_messages=warning"
psql_admin() { psql "$ADMIN" -qtAX -v ON_ERROR_STOP=1 "$@"; }
psql_store() { psql "$STORE_URL" -qtAX -v ON_ERROR_STOP=1 "$@"; }

echo "== command: $0 $*"
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r)"
echo "== postgres: $(psql_admin -c 'show server_version')   git: $(git rev-parse --short HEAD)$(git diff --quiet || echo -dirty)"
echo "== sizes: ${SIZE_MIB} MiB CSV x ${REPS}, ${SMALL_FILES} small files over ${TENANTS} tenants"

# Fresh platform store and tenants for the run.
for t in bench $(seq -f "small-%g" 1 $TENANTS); do
    psql_admin -c "drop database if exists coredms_${t//-/_} with (force)" -c "drop role if exists coredms_${t//-/_}"
done
psql_admin -c "drop database if exists $STORE_DB with (force)" -c "create database $STORE_DB"
cat > "$WORK/tenants/bench.yaml" <<YAML
version: 1
tenant: bench
name: Benchmark tenant
batch:
  routes: [{files: "*.csv", app: tortoise-csv, timeout: 1h, memory: 2GiB}]
  formats: [csv]
  max_file_size: 4GiB
  max_files_per_hour: 1000
  max_bytes_per_day: 100GiB
  max_concurrent_jobs: 1
apps: {max_apps: 5, max_app_size: 200MiB}
YAML
for i in $(seq 1 $TENANTS); do cat > "$WORK/tenants/small-$i.yaml" <<YAML
version: 1
tenant: small-$i
name: Small files $i
batch:
  routes:
    - {files: "noop*.jsonl", app: noop, timeout: 1m, memory: 256MiB}
    - {files: "*.jsonl", app: orders-jsonl, timeout: 1m, memory: 256MiB}
  formats: [jsonl]
  max_file_size: 1MiB
  max_files_per_hour: 100000
  max_bytes_per_day: 10GiB
  max_concurrent_jobs: 4
apps: {max_apps: 5, max_app_size: 200MiB}
YAML
done

export MYSIMBDP_DATABASE_URL=$STORE_URL MYSIMBDP_TENANTS_DIR=$WORK/tenants MYSIMBDP_STAGING_DIR=$WORK/staging MYSIMBDP_DATA_DIR=$WORK/data
export MYSIMBDP_BATCH_WORKERS=${MYSIMBDP_BATCH_WORKERS:-8} MYSIMBDP_LOG=warn
"$BIN/mysimbdp" migrate >/dev/null
"$BIN/mysimbdp" install-app --tenant bench --name tortoise-csv "$BIN/tortoise-csv" >/dev/null
printf '#!/bin/sh\nexit 0\n' > "$WORK/noop.sh"
for i in $(seq 1 $TENANTS); do
    "$BIN/mysimbdp" install-app --tenant small-$i --name orders-jsonl "$BIN/orders-jsonl" >/dev/null
    "$BIN/mysimbdp" install-app --tenant small-$i --name noop "$WORK/noop.sh" >/dev/null
done
# start_platform on|off: serves with the sandbox on (the default) or off; ready once it has ingested a
# probe file (tenants provisioned, batch manager watching).
start_platform() {
    MYSIMBDP_SANDBOX=$1 "$BIN/mysimbdp" serve 2>> "$WORK/platform.log" &
    PLATFORM=$!
    until [ "$(psql_store -c "select count(*) from tenant_coredms")" = $((TENANTS + 1)) ]; do sleep 0.2; done
    printf '{"order_id": 1, "amount": 1.5, "order_status": "probe-%s"}\n' "$1" > "$WORK/staging/small-1/probe-$1.jsonl.part"
    mv "$WORK/staging/small-1/probe-$1.jsonl.part" "$WORK/staging/small-1/noop_probe-$1.jsonl"
    until [ -n "$(psql_store -c "select state from jobs where file_name = 'noop_probe-$1.jsonl' and state in ('succeeded','failed','rejected')")" ]; do
        kill -0 $PLATFORM 2>/dev/null || { tail -n 20 "$WORK/platform.log"; exit 1; }
        sleep 0.2
    done
    echo "== platform: pid $PLATFORM, workers $MYSIMBDP_BATCH_WORKERS, sandbox $1"
}
stop_platform() { kill $PLATFORM; wait $PLATFORM 2>/dev/null || true; : > "$WORK/platform.log"; }
trap 'kill $PLATFORM 2>/dev/null || true' EXIT

step "start-up cost of a no-op app, in the sandbox and out of it"
"$BIN/bench-spawn" $SPAWN_RUNS
start_platform on

coredms_url() { psql_store -c "select format('postgres://%s:%s@127.0.0.1:${MYSIMBDP_PG_PORT:-55432}/%s', username, password, database) from tenant_coredms where tenant = '$1'"; }
BENCH_URL=$(coredms_url bench)
psql_bench() { psql "${ADMIN%/*}/coredms_bench" -qtAX -v ON_ERROR_STOP=1 "$@"; }
now() { date +%s.%N; }

# ---------- 1. one large file ----------
if [ "$LARGE" = 1 ]; then
ROWS=$(( SIZE_MIB * 1048576 / 86 ))
step "generating ${REPS} CSV files of ${ROWS} rows (~${SIZE_MIB} MiB each)"
for r in $(seq 1 $REPS); do "$BIN/gen-data" tortoise $ROWS 0 $((1000 + r)) > "$WORK/files/big-$r.csv"; done
ls -l "$WORK"/files/big-*.csv | awk '{print "   " $5 " bytes  " $9}'
printf '\n%-4s %-9s %12s %10s %12s %10s %16s\n' rep variant rows seconds rows/s MB/s peak_rss_MiB
results=()
for r in $(seq 1 $REPS); do
    f=$WORK/files/big-$r.csv
    bytes=$(stat -c %s "$f")
    # (a) the app by hand, on the same file, same credentials the platform would give it
    psql_bench -c "drop table if exists readings"
    t0=$(now)
    /usr/bin/time -f "%M" -o "$WORK/time.txt" env -i PATH=/usr/bin:/bin MYSIMBDP_TENANT=bench MYSIMBDP_JOB_ID=by-hand \
        MYSIMBDP_INPUT_FILE="$f" MYSIMBDP_COREDMS_URL="$BENCH_URL" MYSIMBDP_COREDMS_DB=coredms_bench \
        MYSIMBDP_RESULT_FILE="$WORK/result.json" "$BIN/tortoise-csv" "$f" 2>/dev/null
    t1=$(now)
    rows=$(python3 -c "import json;print(json.load(open('$WORK/result.json'))['records_ingested'])")
    secs=$(python3 -c "print(round($t1 - $t0, 3))")
    rss=$(( $(cat "$WORK/time.txt") / 1024 ))
    printf '%-4s %-9s %12s %10s %12.0f %10.1f %16s\n' $r by-hand $rows $secs "$(python3 -c "print($rows/$secs)")" "$(python3 -c "print($bytes/1e6/$secs)")" $rss
    results+=("by-hand $secs $rows")
    # the ceiling: the same documents, bulk-loaded by the server with binary COPY into the same shape
    psql_bench -c "copy (select _id, doc from readings) to '$SCRATCH/docs.bin' (format binary)"
    psql_bench -c "drop table if exists rawcopy" -c "create table rawcopy (_id text primary key, doc jsonb not null, ingested_at timestamptz not null default now())"
    t0=$(now); psql_bench -c "copy rawcopy (_id, doc) from '$SCRATCH/docs.bin' (format binary)"; t1=$(now)
    secs=$(python3 -c "print(round($t1 - $t0, 3))")
    printf '%-4s %-9s %12s %10s %12.0f %10.1f %16s\n' $r raw-copy $rows $secs "$(python3 -c "print($rows/$secs)")" "$(python3 -c "print($bytes/1e6/$secs)")" -
    results+=("raw-copy $secs $rows")
    # and over two connections in parallel, as the app does for large files (two server cores)
    psql_bench -c "drop table rawcopy" -c "create table rawcopy (_id text primary key, doc jsonb not null, ingested_at timestamptz not null default now())"
    for half in 0 1; do
        psql_bench -c "copy (select _id, doc from readings where abs(hashtext(_id)) % 2 = $half) to '$SCRATCH/docs$half.bin' (format binary)"
    done
    t0=$(now)
    psql_bench -c "copy rawcopy (_id, doc) from '$SCRATCH/docs0.bin' (format binary)" &
    other=$!
    psql_bench -c "copy rawcopy (_id, doc) from '$SCRATCH/docs1.bin' (format binary)"
    wait $other # only this one: a bare `wait` would also wait for the platform
    t1=$(now)
    secs=$(python3 -c "print(round($t1 - $t0, 3))")
    printf '%-4s %-9s %12s %10s %12.0f %10.1f %16s\n' $r raw-copy2 $rows $secs "$(python3 -c "print($rows/$secs)")" "$(python3 -c "print($bytes/1e6/$secs)")" -
    results+=("raw-copy2 $secs $rows")
    psql_bench -c "drop table rawcopy"; rm -f "$SCRATCH"/docs*.bin
    # (b) through the platform: rename into staging, wait for the final state
    psql_bench -c "drop table if exists readings"
    cp "$f" "$WORK/staging/bench/big-$r.csv.part"
    t0=$(now)
    mv "$WORK/staging/bench/big-$r.csv.part" "$WORK/staging/bench/big-$r.csv"
    # Polled slowly (a poller is CPU taken from the system under test); the time comes from the job's own
    # finished_at, on the same clock as t0.
    until state=$(psql_store -c "select state from jobs where file_name = 'big-$r.csv' and state in ('succeeded','failed','rejected')") && [ -n "$state" ]; do sleep 1; done
    t1=$(psql_store -c "select extract(epoch from finished_at) from jobs where file_name = 'big-$r.csv'")
    [ "$state" = succeeded ] || { echo "platform run ended $state"; psql_store -c "select reason, detail from jobs where file_name = 'big-$r.csv'"; exit 1; }
    rows=$(psql_store -c "select records_ingested from jobs where file_name = 'big-$r.csv'")
    app_s=$(psql_store -c "select round(run_ms / 1000.0, 3) from jobs where file_name = 'big-$r.csv'")
    secs=$(python3 -c "print(round($t1 - $t0, 3))")
    hwm=$(( $(awk '/VmHWM/ {print $2}' /proc/$PLATFORM/status) / 1024 ))
    printf '%-4s %-9s %12s %10s %12.0f %10.1f %16s\n' $r platform $rows $secs "$(python3 -c "print($rows/$secs)")" "$(python3 -c "print($bytes/1e6/$secs)")" "$hwm (platform)"
    results+=("platform $secs $rows" "platform-app $app_s $rows")
    echo "     (platform: the app itself ran ${app_s}s; the rest is detection, checksum, checks and bookkeeping)"
done
python3 - "${results[@]}" <<'PY'
import statistics, sys
by = {}
for item in sys.argv[1:]:
    variant, secs, rows = item.split()
    by.setdefault(variant, []).append((float(secs), int(rows)))
med = {v: statistics.median(s for s, _ in xs) for v, xs in by.items()}
rows = by["by-hand"][0][1]
print("\nmedians: " + ", ".join(f"{v} {med[v]:.2f}s ({rows / med[v]:,.0f} rows/s)" for v in ("by-hand", "platform", "raw-copy", "raw-copy2")))
print(f"platform overhead vs by hand: {(med['platform'] / med['by-hand'] - 1) * 100:+.1f}% (rename to final state vs the app's run by hand; the app's own run inside the platform: median {med['platform-app']:.2f}s)")
print(f"app (by hand) vs raw COPY of the same documents: {med['raw-copy'] / med['by-hand'] * 100:.0f}% of one COPY's speed, {med['raw-copy2'] / med['by-hand'] * 100:.0f}% of two parallel COPYs'")
PY
fi

# ---------- 2. many small files ----------
# CPU seconds so far: the platform (itself, and the apps it has reaped) and all PostgreSQL processes.
cpu_split() {
    python3 - "$PLATFORM" <<'PY'
import os, sys
hz = os.sysconf("SC_CLK_TCK")
def fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()
p = fields(sys.argv[1])
platform, apps = (int(p[11]) + int(p[12])) / hz, (int(p[13]) + int(p[14])) / hz
# The sandbox's fork server (a child of the platform) holds the sandboxed runs' time as its children's.
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        f = fields(pid)
        if f[1] == sys.argv[1] and open(f"/proc/{pid}/comm").read().strip() == "mysimbdp-sandbo":
            apps += sum(int(x) for x in f[11:15]) / hz
    except OSError:
        pass
pg = 0.0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if open(f"/proc/{pid}/comm").read().strip() in ("postgres", "postmaster"):
            f = fields(pid)
            pg += (int(f[11]) + int(f[12])) / hz
    except OSError:
        pass
print(f"{platform} {apps} {pg}")
PY
}

# small_round PREFIX LABEL RATE: RATE files/s offered (0: as fast as possible, a burst)
small_round() {
    local prefix=$1 label=$2 rate=$3
    local before; before=$(cpu_split)
    "$BIN/gen-data" orders 20 0 7 > "$WORK/small.jsonl"
    python3 - "$WORK" "$prefix" "$SMALL_FILES" "$TENANTS" "$rate" > "$WORK/renames-$prefix.csv" <<'PY'
import os, sys, time
work, prefix, n, tenants, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
start = time.time()
body = open(os.path.join(work, "small.jsonl"), "rb").read()
for i in range(n):
    if rate > 0:
        time.sleep(max(0.0, start + i / rate - time.time()))
    t = f"small-{i % tenants + 1}"
    d = os.path.join(work, "staging", t)
    name = f"{prefix}-{i:05d}.jsonl"
    # distinct content per file (the platform recognises duplicates), written as .part then renamed
    data = body + f'{{"order_id": {i}, "amount": 1.5, "order_status": "{prefix}", "created_at": "2025-01-18T00:00:00Z"}}\n'.encode()
    with open(os.path.join(d, name + ".part"), "wb") as f:
        f.write(data)
    os.rename(os.path.join(d, name + ".part"), os.path.join(d, name))
    print(f"{t},{name},{time.time()}")
PY
    # Polled slowly: the figures come from the jobs' own timestamps, and a fast poller steals CPU.
    until [ "$(psql_store -c "select count(*) from jobs where file_name like '$prefix-%' and state in ('succeeded','failed','rejected')")" = "$SMALL_FILES" ]; do sleep 1; done
    local after; after=$(cpu_split)
    psql_store -c "copy (select tenant, file_name, state, extract(epoch from detected_at), extract(epoch from started_at), extract(epoch from finished_at) from jobs where file_name like '$prefix-%') to stdout with csv" > "$WORK/jobs-$prefix.csv"
    python3 - "$WORK/renames-$prefix.csv" "$WORK/jobs-$prefix.csv" "$label" "$before" "$after" <<'PY'
import csv, statistics, sys
renames = {(t, n): float(ts) for t, n, ts in csv.reader(open(sys.argv[1]))}
jobs = list(csv.reader(open(sys.argv[2])))
states = {}
detect, start, finish = [], [], []
for t, n, state, det, st, fin in jobs:
    states[state] = states.get(state, 0) + 1
    r = renames[(t, n)]
    detect.append((float(det) - r) * 1000)
    if st:
        start.append((float(st) - r) * 1000)
    finish.append(float(fin))
def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
span = max(finish) - min(renames.values())
write_span = max(renames.values()) - min(renames.values())
print(f"\n{sys.argv[3]}: {len(jobs)} files, outcomes {states}")
print(f"  end to end: {len(jobs) / span:.0f} files/s ({span:.2f}s from first rename to last final state; the renames themselves took {write_span:.2f}s)")
print(f"  rename -> detected (job row written): p50 {pct(detect, 50):.1f} ms, p99 {pct(detect, 99):.1f} ms, max {max(detect):.1f} ms")
print(f"  rename -> app started (includes queueing behind the worker limit): p50 {pct(start, 50):.1f} ms, p99 {pct(start, 99):.1f} ms")
b, a = [list(map(float, x.split())) for x in sys.argv[4:6]]
platform, apps, pg = (a[i] - b[i] for i in range(3))
n = len(jobs)
print(f"  CPU per file: platform {platform / n * 1000:.2f} ms, apps (and their shells) {apps / n * 1000:.2f} ms, PostgreSQL {pg / n * 1000:.2f} ms"
      f" (of {2 * span / n * 1000:.2f} ms of 2 cores' time per file)")
PY
}
step "small files"
small_round noop "burst, no-op app (platform cost only)" 0
small_round orders "burst, orders-jsonl app (one coredms connection per file)" 0
small_round noop100 "paced at 100 files/s, no-op app" 100
small_round orders100 "paced at 100 files/s, orders-jsonl app" 100
echo
echo "platform peak RSS (VmHWM): $(( $(awk '/VmHWM/ {print $2}' /proc/$PLATFORM/status) / 1024 )) MiB"

step "small files, side by side: the same bursts with the platform restarted with --sandbox off"
stop_platform
start_platform off
small_round noopoff "burst, no-op app, --sandbox off" 0
small_round ordersoff "burst, orders-jsonl app, --sandbox off" 0
