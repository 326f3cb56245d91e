#!/usr/bin/env bash
# Writes `.sqlx/`, the query data sqlx's macros check the store's queries against when building
# offline (every build: `.cargo/config.toml`), from a scratch database migrated to `migrations/`.
# Run it after changing a query or a migration; `--check` fails if `.sqlx/` is out of date instead
# (a query whose text changed fails the offline build by itself; a migration that changes a column
# under an unchanged query is what this check is for). Needs the local services (scripts/services.sh).
# This is what sqlx's message "run `cargo sqlx prepare`" asks for, without installing sqlx-cli: the
# macros themselves write a query's data when SQLX_OFFLINE_DIR is set and they reach a database.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
. scripts/lib.sh
[ -n "${MYSIMBDP_TEST_PG_URL:-}" ] || { set -a; . .local/env; set +a; }

DB=mysimbdp_sqlx_prepare
ADMIN=$MYSIMBDP_TEST_PG_URL
PGOPTIONS="-c client_min_messages=warning" psql "$ADMIN" -qtAX -c "drop database if exists $DB with (force)" >/dev/null
psql "$ADMIN" -qtAX -c "create database $DB" >/dev/null
for m in migrations/*.sql; do
    PGOPTIONS="-c client_min_messages=warning" psql "${ADMIN%/*}/$DB" -qtAX -v ON_ERROR_STOP=1 -f "$m" >/dev/null
done

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# The macros write a query's data only when they run, so the platform crate is made to build anew.
touch platform/src/lib.rs
SQLX_OFFLINE=false SQLX_OFFLINE_DIR=$out DATABASE_URL="${ADMIN%/*}/$DB" \
    cargo check --locked -p mysimbdp --lib --quiet
touch platform/src/lib.rs # and anew again, offline, for the next build

if [ "${1:-}" = --check ]; then
    if ! diff -r "$out" .sqlx >/dev/null; then
        diff -r "$out" .sqlx | head -n 40 >&2
        echo ".sqlx/ is out of date: run scripts/sqlx-prepare.sh and commit it" >&2
        exit 1
    fi
    echo ".sqlx/ is up to date ($(ls "$out" | wc -l) queries)"
else
    rm -rf .sqlx && mkdir .sqlx && cp "$out"/*.json .sqlx/ 2>/dev/null || true
    echo "wrote .sqlx/ ($(ls .sqlx | wc -l) queries)"
fi
