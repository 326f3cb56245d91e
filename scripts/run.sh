#!/usr/bin/env bash
# Runs the platform with the example tenants (tenants/zoo.yaml, tenants/food.yaml) on a fresh machine:
# installs what is missing, starts the local services, builds in release mode, installs the example
# batch and stream apps and serves until Ctrl-C. Drop files into staging/<tenant>/ (see README).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

. scripts/lib.sh
prepare

step "building (release)"
cargo build --release --workspace --bins --locked
BIN=$CARGO_TARGET_DIR/release
export MYSIMBDP_TENANTS_DIR=$ROOT/tenants MYSIMBDP_STAGING_DIR=$ROOT/staging MYSIMBDP_DATA_DIR=$ROOT/.local/data

step "installing the example tenants' apps (a new version only if the binary changed)"
"$BIN/mysimbdp" install-app --tenant zoo --name tortoise-csv "$BIN/tortoise-csv"
"$BIN/mysimbdp" install-app --tenant zoo --name tortoise-stream --kind stream "$BIN/tortoise-stream"
"$BIN/mysimbdp" install-app --tenant food --name orders-jsonl "$BIN/orders-jsonl"
"$BIN/mysimbdp" install-app --tenant food --name orders-stream --kind stream "$BIN/orders-stream"

cat >&2 <<TXT

mysimbdp is starting; its API listens on http://${MYSIMBDP_API_LISTEN:-127.0.0.1:8080}. In another terminal, try:
  $BIN/gen-data tortoise 100000 1000 1 > staging/zoo/readings.csv.part && mv staging/zoo/readings.csv.part staging/zoo/readings.csv
  set -a; . .local/env; set +a; PATH=$BIN:\$PATH
  export MYSIMBDP_TOKEN=\$(mysimbdp token --role tenant --tenant food)   # a tenant's token
  gen-data orders 30000 500 2 > /tmp/orders-1.jsonl && mysimbdp files put /tmp/orders-1.jsonl
  mysimbdp ingestions list
  mysimbdp stats
  mysimbdp ingestions list --tenant zoo --token \$(mysimbdp token --role operator)   # an operator sees every tenant
  export MYSIMBDP_TOKEN=\$(mysimbdp token --role tenant --tenant zoo)
  mysimbdp instances start tortoise-stream && stream-load --topic zoo.readings --messages 100000
  mysimbdp instances list; mysimbdp reports; mysimbdp notifications
TXT
exec "$BIN/mysimbdp" serve
