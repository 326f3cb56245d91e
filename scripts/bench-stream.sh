#!/usr/bin/env bash
# Benchmark of stream ingestion with one instance of the example app (tortoise-stream) under the
# platform, ~220-byte JSON readings, real broker (tansu) and coredms (PostgreSQL), all on this machine:
#   1. throughput: N messages waiting in a 4-partition topic, one instance started: messages/s from
#      the topic into coredms; beside it, in the same run, one plain librdkafka consumer reading the same
#      messages and writing nothing (what reading alone allows here), straight to the broker and through
#      the broker gateway, and the yardstick: a hand-written Python consumer (confluent-kafka, psycopg 3)
#      writing the same documents, with the ratio of the app's rate to it;
#   2. latency at 10,000 msg/s, the instance caught up: producer timestamp to the document's
#      ingested_at (the start of the transaction that wrote it), p50 / p99 / max;
#   3. reaction: a deliberately slow instance (2 ms per record); from the end of the report window that
#      completed a run of bad reports to the manager's recorded action (split into monitor and manager).
#   scripts/bench-stream.sh [--smoke]   (--smoke: small figures; checks that the benchmark works)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
. scripts/lib.sh
prepare

N=1000000 RATE=10000 SECONDS_AT_RATE=30
if [ "${1:-}" = "--smoke" ]; then N=20000 SECONDS_AT_RATE=3; fi

step "building (release)"
cargo build --release --bins --locked -p mysimbdp -p tortoise-stream -p test-apps
BIN=$CARGO_TARGET_DIR/release
WORK=$ROOT/.local/bench-stream
rm -rf "$WORK" && mkdir -p "$WORK"/{tenants,staging,data}
ADMIN=$MYSIMBDP_TEST_PG_URL
DB=mysimbdp_bench_stream
# The broker keeps topics and group offsets while it runs: fresh tenant ids per run.
RUN=$(date +%s | tail -c 7)
FAST=bench-$RUN SLOW=slow-$RUN
PGOPTIONS="-c client_min_messages=warning" psql "$ADMIN" -qtAX -c "drop database if exists $DB with (force)" >/dev/null
psql "$ADMIN" -qtAX -c "create database $DB" >/dev/null
export MYSIMBDP_DATABASE_URL=${ADMIN%/*}/$DB MYSIMBDP_TENANTS_DIR=$WORK/tenants MYSIMBDP_STAGING_DIR=$WORK/staging
export MYSIMBDP_DATA_DIR=$WORK/data MYSIMBDP_LOG=warn MYSIMBDP_API_LISTEN=127.0.0.1:0 MYSIMBDP_CLUSTER=bench-stream-$RUN
export MYSIMBDP_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
agreement() { # tenant interval breach_reports min_rate on_breach max_instances
    cat > "$WORK/tenants/$1.yaml" <<YAML
version: 1
tenant: $1
name: Stream benchmark $1
stream:
  topics: [{name: readings, partitions: 4}]
  max_instances: $6
  restart: {policy: on-failure, max_restarts: 3, backoff: 1s}
  report_interval: $2
  thresholds: {min_processing_rate: $4, max_avg_ingestion_time: 10s, breach_reports: $3, cooldown: 5m}
  on_breach: $5
  memory: 2GiB
apps: {max_apps: 5, max_app_size: 200MiB}
YAML
}
agreement "$FAST" 5s 3 1 notify 1
agreement "$SLOW" 1s 3 1000 scale_out 2
"$BIN/mysimbdp" migrate >/dev/null
"$BIN/mysimbdp" install-app --tenant "$FAST" --name tortoise-stream --kind stream "$BIN/tortoise-stream" >/dev/null
# The slow variant: the same program with a flag, so an archive holding it and a start script (an app
# sees only its own folder, not the build's).
mkdir -p "$WORK/slow-app"
cp "$BIN/tortoise-stream" "$WORK/slow-app/"
printf '#!/bin/sh\nexec "$(dirname "$0")/tortoise-stream" --delay-per-record 2\n' > "$WORK/slow-app/run"
chmod +x "$WORK/slow-app/run"
printf 'name: tortoise-stream\nkind: stream\nentrypoint: run\nversion: slow\n' > "$WORK/slow-app/app.yaml"
tar -czf "$WORK/slow.tar.gz" -C "$WORK/slow-app" .
"$BIN/mysimbdp" install-app --tenant "$SLOW" --name tortoise-stream --kind stream "$WORK/slow.tar.gz" >/dev/null

"$BIN/mysimbdp" serve > /dev/null 2> "$WORK/platform.log" &
PLATFORM=$!
trap 'kill $PLATFORM 2>/dev/null || true; wait $PLATFORM 2>/dev/null || true;
      for t in $FAST $SLOW; do psql "$ADMIN" -qtAX -c "drop database if exists coredms_${t//-/_} with (force)" -c "drop role if exists coredms_${t//-/_}" >/dev/null 2>&1 || true; done' EXIT
URL=$(api_url "$WORK/data" "$WORK/platform.log")
coredms() { psql "${ADMIN%/*}/coredms_${1//-/_}" -qtAX -v ON_ERROR_STOP=1 -c "$2"; }
count() { coredms "$1" "select count(*) from readings" 2>/dev/null || echo 0; }
store() { psql "$MYSIMBDP_DATABASE_URL" -qtAX -v ON_ERROR_STOP=1 -c "$1"; }
start_instance() { # tenant
    local token; token=$("$BIN/mysimbdp" token --role tenant --tenant "$1" --ttl 1h)
    curl -sf -X POST -H "Authorization: Bearer $token" "$URL/v1/tenants/$1/apps/tortoise-stream/instances" > /dev/null
}
wait_count() { # tenant n timeout-seconds
    local deadline=$((SECONDS + $3))
    until [ "$(count "$1")" -ge "$2" ]; do
        [ $SECONDS -lt $deadline ] || { tail -n 20 "$WORK/platform.log" >&2; echo "only $(count "$1") of $2 documents in $3 s" >&2; exit 1; }
        sleep 0.2
    done
}
for t in $FAST $SLOW; do
    "$BIN/stream-load" --topic "$t.readings" --wait-topic 30 # the platform creates it from the agreement
done

echo "== command: scripts/bench-stream.sh ${1:-}"
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem/ {print $2}') GiB, kernel $(uname -r)"
echo "== postgres: $(store 'show server_version') | broker: tansu 0.6.0 (memory storage) | git: $(git rev-parse --short HEAD)$(git diff --quiet || echo -dirty)"

step "1. throughput: $N messages waiting, one instance"
"$BIN/stream-load" --topic "$FAST.readings" --messages "$N" | sed 's/^/   producer: /'
"$BIN/stream-load" --topic "$FAST.readings" --consume "$N" --set fetch.wait.max.ms=10 \
    | sed 's/^/   plain librdkafka consumer, the app'"'"'s fetch settings, no writes: /'
# CPU seconds used so far by a set of processes (utime + stime from /proc).
cpu() {
    local t=0 p ticks
    for p in "$@"; do
        ticks=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
        t=$((t + ticks))
    done
    echo "$t"
}
tansu=$(cat "$ROOT/.local/broker.pid")
pg_pids() { pgrep -x postgres | tr '\n' ' '; }
c_tansu=$(cpu "$tansu")
c_pg=$(cpu $(pg_pids))
c_platform=$(cpu "$PLATFORM")
t0=$(date +%s.%N)
start_instance "$FAST"
app=$(for i in $(seq 100); do p=$(store "select pid from stream_instances where tenant = '$FAST' and pid is not null"); [ -n "$p" ] && { echo "$p"; break; }; sleep 0.05; done)
# The recorded pid is the instance's sandbox init; the app is its child (once the sandbox is built).
for i in $(seq 100); do child=$(cat "/proc/$app/task/$app/children" 2>/dev/null | awk '{print $1}'); [ -n "$child" ] && break; sleep 0.05; done
app=${child:-$app}
c_app=$(cpu "$app")
wait_count "$FAST" "$N" 600
t1=$(date +%s.%N)
hz=$(getconf CLK_TCK)
echo "   CPU seconds while it ran ($(python3 -c "print(round($t1 - $t0, 1))") s of 2 cores): broker $(python3 -c "print(round(($(cpu "$tansu") - $c_tansu) / $hz, 1))"), PostgreSQL $(python3 -c "print(round(($(cpu $(pg_pids)) - $c_pg) / $hz, 1))"), the app $(python3 -c "print(round(($(cpu "$app") - $c_app) / $hz, 1))"), the platform $(python3 -c "print(round(($(cpu $PLATFORM) - $c_platform) / $hz, 1))")"
span=$(coredms "$FAST" "select extract(epoch from max(ingested_at) - min(ingested_at)) from readings")
app_rate=$(python3 -c "print(round($N / max($span, 1e-9)))")
echo "   tortoise-stream under the platform: $N documents; first to last write $(printf %.2f "$span") s: $app_rate msg/s; from the start request $(python3 -c "print(round($t1 - $t0, 2))") s: $(python3 -c "print(round($N / ($t1 - $t0)))") msg/s"
[ "$(count "$FAST")" = "$N" ] || { echo "$(count "$FAST") documents for $N messages" >&2; exit 1; }
# What the broker gateway costs a reader: the plain consumer again, straight to the broker as the
# platform's user and through the gateway as the tenant's own uid (the only way the tenant's programs
# reach the broker), alternately, each in its own new group.
uid=$(store "select uid from tenant_accounts where tenant = '$FAST'")
gateway=$(cat "$WORK/data/broker-gateway.addr")
as_tenant=$(mktemp -d) && chmod 755 "$as_tenant" && install -m 755 "$BIN/stream-load" "$as_tenant/"
rounds=3; [ "${1:-}" = "--smoke" ] && rounds=1
for i in $(seq $rounds); do
    "$BIN/stream-load" --topic "$FAST.readings" --consume "$N" --group "direct-$RUN-$i" --set fetch.wait.max.ms=10 \
        | sed 's/^/   plain consumer, direct to the broker: /'
    setpriv --reuid="$uid" --regid="$uid" --clear-groups "$as_tenant/stream-load" --brokers "$gateway" --topic "$FAST.readings" \
        --consume "$N" --group "$FAST.gateway-$i" --set fetch.wait.max.ms=10 | sed 's/^/   plain consumer, through the gateway: /'
done
rm -rf "$as_tenant"
# The yardstick, on the same messages and machine: the consumer users would write by hand.
python3 -c "import confluent_kafka, psycopg" 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check 'confluent-kafka==2.6.1' 'psycopg[binary]==3.2.3'
yard=$(python3 scripts/yardstick-consumer.py --brokers "$MYSIMBDP_KAFKA_BROKERS" --topic "$FAST.readings" \
    --group "yardstick-$RUN" --dsn "${ADMIN%/*}/coredms_${FAST//-/_}" --table readings_yardstick --messages "$N")
echo "   yardstick, Python confluent-kafka + psycopg 3 (ON CONFLICT DO NOTHING, commit after write): $yard"
yard_rate=$(echo "$yard" | sed -E 's/.*: ([0-9]+) msg\/s$/\1/')
echo "   tortoise-stream / yardstick: $(python3 -c "print(round($app_rate / $yard_rate, 2))")x"

step "2. latency at $RATE msg/s for $SECONDS_AT_RATE s, the instance caught up"
MORE=$((RATE * SECONDS_AT_RATE))
since=$(($(date +%s%3N)))
"$BIN/stream-load" --topic "$FAST.readings" --messages "$MORE" --rate "$RATE" --from "$N" | sed 's/^/   producer: /'
wait_count "$FAST" $((N + MORE)) 120
coredms "$FAST" "select format('   %s documents: p50 %s ms, p99 %s ms, max %s ms (producer timestamp to ingested_at)', count(*),
    round(percentile_cont(0.5) within group (order by l)::numeric, 1), round(percentile_cont(0.99) within group (order by l)::numeric, 1), round(max(l)::numeric, 1))
  from (select extract(epoch from ingested_at) * 1000 - (doc->'source'->>'produced_at_ms')::bigint as l
          from readings where (doc->'source'->>'produced_at_ms')::bigint >= $since) x"
store "select format('   its reports: %s, processing_rate %s msg/s (last), avg_ingestion_ms %s, lag %s, verdicts %s', count(*),
    round((array_agg(processing_rate order by id desc))[1]::numeric), round(avg(avg_ingestion_ms)::numeric, 2),
    (array_agg(lag order by id desc))[1], string_agg(distinct verdict, ',')) from metrics_reports where tenant = '$FAST'"

step "3. reaction: a slow instance (2 ms per record, ~500 msg/s) against min_processing_rate 1000"
start_instance "$SLOW"
"$BIN/stream-load" --topic "$SLOW.readings" --messages 20000 | sed 's/^/   producer: /'
deadline=$((SECONDS + 60))
until [ "$(store "select count(*) from stream_actions where tenant = '$SLOW' and outcome = 'applied'")" -ge 1 ]; do
    [ $SECONDS -lt $deadline ] || { tail -n 20 "$WORK/platform.log" >&2; echo "no action within 60 s" >&2; exit 1; }
    sleep 0.2
done
store "select format('   %s: report window ended %s; notified +%s ms (monitor), acted +%s ms (manager): %s ms in all',
        a.detail, to_char(r.window_end, 'HH24:MI:SS.MS'),
        round(extract(epoch from n.at - r.window_end) * 1000), round(extract(epoch from a.at - n.at) * 1000),
        round(extract(epoch from a.at - r.window_end) * 1000))
  from stream_actions a join notifications n on n.id = a.notification
  join lateral (select * from metrics_reports m where m.instance = n.instance and m.verdict = 'breach' and m.received_at <= n.at
                order by m.id desc limit 1) r on true
  where a.tenant = '$SLOW' and a.outcome = 'applied'"
