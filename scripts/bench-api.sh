#!/usr/bin/env bash
# Benchmark of the control plane: an authenticated GET of one page of 100 ingestions with 1,000,000
# jobs in the store, driven by wrk from a second process on loopback, beside GET /healthz (the
# framework's ceiling on this machine) in the same run. Also times the stats endpoints over those jobs.
#   scripts/bench-api.sh [--smoke]      (--smoke: 20,000 jobs and 3 s runs; checks the benchmark works)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
. scripts/lib.sh
prepare
ensure_debs wrk

JOBS=1000000 SECONDS_PER_RUN=20 REPS=3
if [ "${1:-}" = "--smoke" ]; then JOBS=20000 SECONDS_PER_RUN=3 REPS=1; fi

step "building (release)"
cargo build --release --bins --locked -p mysimbdp
BIN=$CARGO_TARGET_DIR/release
WORK=$ROOT/.local/bench-api
rm -rf "$WORK" && mkdir -p "$WORK"/{tenants,staging,data}
ADMIN=$MYSIMBDP_TEST_PG_URL
DB=mysimbdp_bench_api
psql_db() { psql "${ADMIN%/*}/$DB" -qtAX -v ON_ERROR_STOP=1 "$@"; }
PGOPTIONS="-c client_min_messages=warning" psql "$ADMIN" -qtAX -c "drop database if exists $DB with (force)" >/dev/null
psql "$ADMIN" -qtAX -c "create database $DB" >/dev/null
export MYSIMBDP_DATABASE_URL=${ADMIN%/*}/$DB MYSIMBDP_TENANTS_DIR=$WORK/tenants MYSIMBDP_STAGING_DIR=$WORK/staging
export MYSIMBDP_DATA_DIR=$WORK/data MYSIMBDP_LOG=warn MYSIMBDP_API_LISTEN=127.0.0.1:0
"$BIN/mysimbdp" migrate >/dev/null

# Four tenants; the one queried holds 70% of the jobs. Rows look like real ones: paths, checksum,
# counts, timings, a short detail on failures; no logs (the list never reads them).
TENANTS=(bench other-1 other-2 other-3)
for t in "${TENANTS[@]}"; do
    printf 'version: 1\ntenant: %s\nname: Benchmark %s\nbatch:\n  routes: [{files: "*.csv", app: a, timeout: 1m, memory: 1GiB}]\n  formats: [csv]\n  max_file_size: 1GiB\n  max_files_per_hour: 1000\n  max_bytes_per_day: 1TiB\n  max_concurrent_jobs: 2\napps: {max_apps: 5, max_app_size: 100MiB}\n' "$t" "$t" > "$WORK/tenants/$t.yaml"
done
step "generating $JOBS jobs"
t0=$SECONDS
psql_db <<SQL
insert into jobs (id, tenant, file_name, staging_path, work_path, state, reason, detail, size_bytes, checksum, format,
                  route_app, app_version, attempts, max_attempts, records_ingested, records_rejected, bytes_read,
                  exit_code, final_path, detected_at, admitted_at, started_at, finished_at, run_ms)
select gen_random_uuid(), t, f, '/srv/staging/' || t || '/' || f, '/srv/work/' || t || '/' || f,
       case when i % 50 = 0 then 'failed' else 'succeeded' end,
       case when i % 50 = 0 then 'app_error' end, case when i % 50 = 0 then 'exited with status 1' end,
       100000 + i % 5000, md5(i::text) || md5((i + 1)::text), 'csv', 'tortoise-csv', 1, 1, 1,
       1000 + i % 700, i % 7, 100000 + i % 5000, case when i % 50 = 0 then 1 else 0 end,
       '/srv/ingested/' || t || '/' || f, d, d + interval '3 ms', d + interval '5 ms', d + interval '900 ms', 895
from (select i, case when i % 10 < 7 then 'bench' else 'other-' || (i % 10 - 6) end as t,
             'readings-' || i || '.csv' as f, now() - (i * interval '1 second') as d
      from generate_series(1, $JOBS) i) g;
vacuum analyze jobs;  -- as autovacuum leaves an older table: visibility map set
SQL
echo "   $(psql_db -c "select count(*) from jobs") jobs ($(psql_db -c "select count(*) from jobs where tenant = 'bench'") for tenant bench), $((SECONDS - t0))s"

# Two API-only platforms on the same store, side by side: with the page cache (the default) and without.
start_api() { # name cache-size -> prints the URL
    mkdir -p "$WORK/$1"
    MYSIMBDP_DATA_DIR=$WORK/$1 MYSIMBDP_API_PAGE_CACHE=$2 "$BIN/mysimbdp" serve --roles api > /dev/null 2> "$WORK/$1.log" &
    echo $! >> "$WORK/pids"
    api_url "$WORK/$1" "$WORK/$1.log"
}
: > "$WORK/pids"
trap 'kill $(cat "$WORK/pids") 2>/dev/null || true' EXIT
URL=$(start_api cached 32MiB)
URL_NOCACHE=$(start_api uncached 0)
TOKEN=$("$BIN/mysimbdp" token --role tenant --tenant bench --ttl 1h)
PAGE="/v1/tenants/bench/ingestions?limit=100"
for u in "$URL" "$URL_NOCACHE"; do
    [ "$(curl -s -H "Authorization: Bearer $TOKEN" "$u$PAGE" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["items"]))')" = 100 ] \
        || { cat "$WORK"/*.log; echo "the page did not hold 100 jobs" >&2; exit 1; }
done
cmp <(curl -s -H "Authorization: Bearer $TOKEN" "$URL$PAGE") <(curl -s -H "Authorization: Bearer $TOKEN" "$URL_NOCACHE$PAGE") \
    || { echo "the cached and uncached answers differ" >&2; exit 1; }
echo "== command: scripts/bench-api.sh ${1:-}"
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem/ {print $2}') GiB, kernel $(uname -r)"
echo "== postgres: $(psql_db -c 'show server_version') | $(wrk --version 2>&1 | head -1 | cut -c1-40) | git: $(git rev-parse --short HEAD)$(git diff --quiet || echo -dirty)"
echo "== one page: $(curl -s -H "Authorization: Bearer $TOKEN" "$URL$PAGE" | wc -c) bytes of JSON"

# wrk: 1 thread, 32 connections (the second core is the platform's and PostgreSQL's to share).
run() { # label url rep
    local label=$1 url=$2 r=$3
    {
        wrk -t1 -c32 -d"${SECONDS_PER_RUN}s" --latency -H "Authorization: Bearer $TOKEN" "$url" > "$WORK/wrk.txt"
        python3 - "$label" "$r" "$WORK/wrk.txt" <<'PY'
import re, sys
label, rep, text = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
def pct(p):
    m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", text, re.M)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(f"{label:<12} {rep:>3} {rps:>10.0f} {pct(50):>9.2f} {pct(99):>9.2f}  {errors.group(1) if errors else 0}")
PY
    }
}
printf "\n%-12s %3s %10s %9s %9s  %s\n" endpoint rep "req/s" "p50 ms" "p99 ms" non-2xx
# Interleaved, so drift on this noisy machine hits every variant alike.
: > "$WORK/results.txt"
for r in $(seq 1 "$REPS"); do
    run healthz "$URL/healthz" "$r" | tee -a "$WORK/results.txt"
    run page-nocache "$URL_NOCACHE$PAGE" "$r" | tee -a "$WORK/results.txt"
    run page-cached "$URL$PAGE" "$r" | tee -a "$WORK/results.txt"
done
python3 - "$WORK/results.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
med = {}
for label in ("healthz", "page-nocache", "page-cached"):
    rs = [r for r in rows if r[0] == label]
    med[label] = [statistics.median(float(r[i]) for r in rs) for i in (2, 3, 4)]
    print(f"median {label}: {med[label][0]:.0f} req/s, p50 {med[label][1]:.2f} ms, p99 {med[label][2]:.2f} ms")
print(f"page of 100, no cache: {med['page-nocache'][0] / med['healthz'][0] * 100:.1f}% of the /healthz ceiling; "
      f"with the cache (the default): {med['page-cached'][0] / med['page-nocache'][0]:.1f}x the uncached rate")
PY

step "stats over the same store (time of one request each, 3 tries)"
OP=$("$BIN/mysimbdp" token --role operator --ttl 1h)
for path in "/v1/tenants/bench/stats" "/v1/stats" "/v1/tenants/bench/ingestions?status=failed&limit=100" "/v1/tenants/bench/ingestions?file=readings-500000.csv"; do
    times=$(for _ in 1 2 3; do curl -s -o /dev/null -w '%{time_total} ' -H "Authorization: Bearer $OP" "$URL_NOCACHE$path"; done)
    echo "  $path: ${times}s"
done
for pid in $(cat "$WORK/pids"); do echo "platform $pid peak RSS (VmHWM): $(( $(awk '/VmHWM/ {print $2}' /proc/$pid/status) / 1024 )) MiB"; done
