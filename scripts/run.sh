#!/usr/bin/env bash
# Runs the platform with the example tenants (tenants/zoo.yaml, tenants/food.yaml) on a fresh machine:
# installs what is missing, starts the local services, builds in release mode, installs the example
# batch apps and serves until Ctrl-C. Drop files into staging/<tenant>/ (see README).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

. scripts/lib.sh
prepare

step "building (release)"
cargo build --release --workspace --bins --locked
BIN=$CARGO_TARGET_DIR/release
export MYSIMBDP_TENANTS_DIR=$ROOT/tenants MYSIMBDP_STAGING_DIR=$ROOT/staging MYSIMBDP_DATA_DIR=$ROOT/.local/data

step "installing the example tenants' batch apps (a new version only if the binary changed)"
"$BIN/mysimbdp" install-app --tenant zoo --name tortoise-csv "$BIN/tortoise-csv"
"$BIN/mysimbdp" install-app --tenant food --name orders-jsonl "$BIN/orders-jsonl"

cat >&2 <<TXT

mysimbdp is starting. In another terminal, try:
  $BIN/gen-data tortoise 100000 1000 1 > staging/zoo/readings.csv.part && mv staging/zoo/readings.csv.part staging/zoo/readings.csv
  $BIN/gen-data orders 30000 500 2 > staging/food/orders-1.jsonl.part && mv staging/food/orders-1.jsonl.part staging/food/orders-1.jsonl
  set -a; . .local/env; set +a
  $BIN/mysimbdp ingestions list
  $BIN/mysimbdp stats
TXT
exec "$BIN/mysimbdp" serve
