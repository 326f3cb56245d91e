#!/usr/bin/env bash
# Runs the platform with the example tenants (tenants/zoo.yaml, food.yaml, bank.yaml) on a fresh
# machine: installs what is missing, starts the local services, builds in release mode, installs the
# example batch and stream apps, gives food and bank their source databases (with generators writing
# orders and transactions into them), and serves until Ctrl-C. See the README's walkthroughs.
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
"$BIN/mysimbdp" install-app --tenant food --name orders-cleaner --kind stream "$BIN/orders-cleaner"
"$BIN/mysimbdp" install-app --tenant bank --name fraud-amount --kind stream "$BIN/fraud-amount"
"$BIN/mysimbdp" install-app --tenant bank --name fraud-velocity --kind stream "$BIN/fraud-velocity"

# The source database of a CDC example (seeds 000, 001, 004): a database and a login of the tenant's
# own that may replicate, on the local server; its URL kept in .local/examples/ (0600), made once.
# Prints the URL.
source_db() { # tenant table
    local url_file=.local/examples/$1-db.url login=${1}_source
    if [ ! -s "$url_file" ]; then
        local password hostport
        password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
        hostport=$(sed -E 's#.*@([^/]+)/.*#\1#' <<<"$MYSIMBDP_TEST_PG_URL")
        psql "$MYSIMBDP_TEST_PG_URL" -q -v ON_ERROR_STOP=1 \
            -c "drop database if exists $login" -c "drop role if exists $login" \
            -c "create role $login login replication password '$password'" \
            -c "create database $login owner $login" >&2
        mkdir -p .local/examples
        (umask 077; echo "postgres://$login:$password@$hostport/$login" > "$url_file")
        # The rows that are there before the platform starts: the source's snapshot.
        "$BIN/gen-rows" "$2" "$(cat "$url_file")" 200 0 1 >&2
    fi
    cat "$url_file"
}
step "the food and bank tenants' source databases"
FOOD_DB=$(source_db food orders)
BANK_DB=$(source_db bank transactions)

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
"$BIN/mysimbdp" serve &
SERVE=$!
GENERATORS=()
# Ctrl-C reaches this shell; what it started in the background ignores SIGINT (as a script's
# background jobs do), so each is told with SIGTERM, and the platform stops as on Ctrl-C.
trap 'kill "${GENERATORS[@]}" $SERVE 2>/dev/null; wait $SERVE' INT TERM
API=http://${MYSIMBDP_API_LISTEN:-127.0.0.1:8080}
for _ in $(seq 300); do curl -fs "$API/healthz" >/dev/null && break; sleep 0.2; done
export MYSIMBDP_URL=$API
# The examples' secrets, their stream apps, and generators writing into their source databases
# (a few rows a second, until Ctrl-C).
as() { MYSIMBDP_TOKEN=$("$BIN/mysimbdp" token --role tenant --tenant "$1") "$BIN/mysimbdp" "${@:2}"; }
# Stored once: storing a secret again (even the same value) replaces the source that uses it.
as food secrets list | grep -qw food-db || as food secrets put food-db <<<"$FOOD_DB" >/dev/null
as bank secrets list | grep -qw bank-db || as bank secrets put bank-db <<<"$BANK_DB" >/dev/null
for tenant_app in food:orders-cleaner bank:fraud-amount bank:fraud-velocity; do
    t=${tenant_app%%:*} app=${tenant_app#*:}
    as "$t" instances list --app "$app" | grep -Eq 'starting|running|restarting' || as "$t" instances start "$app" >/dev/null
done
"$BIN/gen-rows" orders "$FOOD_DB" 0 2 2 & GENERATORS+=($!)
"$BIN/gen-rows" transactions "$BANK_DB" 0 5 2 & GENERATORS+=($!)
step "serving; food's orders and bank's transactions are being generated (Ctrl-C stops everything)"
wait $SERVE
