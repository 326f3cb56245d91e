#!/usr/bin/env bash
# Fuzzes the control plane with schemathesis (from PyPI) against the OpenAPI document the platform
# itself serves: a scratch platform with one tenant is started on a free port, and every operation is
# called with generated valid and invalid input. Fails on any 5xx, any status code, content type or
# body that the document does not declare.
#   scripts/api-fuzz.sh [--quick]      (--quick: fewer examples per operation, as the test suite runs it)
# Needs the local services (scripts/services.sh up) and the workspace's binaries in $BIN
# (default: the debug build).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
. scripts/lib.sh
set -a; . .local/env; set +a
BIN=${BIN:-$CARGO_TARGET_DIR/debug}
EXAMPLES=50
[ "${1:-}" = "--quick" ] && EXAMPLES=15

if ! command -v schemathesis >/dev/null 2>&1; then
    step "installing schemathesis from PyPI"
    python3 -m pip install --quiet --disable-pip-version-check 'schemathesis==4.32.5'
fi

WORK=$(mktemp -d)
DB=mysimbdp_fuzz_$(date +%s)_$$
ADMIN=$MYSIMBDP_TEST_PG_URL
cleanup() {
    [ -n "${PLATFORM:-}" ] && kill "$PLATFORM" 2>/dev/null && wait "$PLATFORM" 2>/dev/null
    psql "$ADMIN" -qtAX -c "drop database if exists $DB with (force)" >/dev/null 2>&1 || true
    psql "$ADMIN" -qtAX -c "drop database if exists coredms_fuzz_${DB#mysimbdp_fuzz_} with (force)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
psql "$ADMIN" -qtAX -c "create database $DB" >/dev/null
TENANT=fuzz-${DB#mysimbdp_fuzz_}
TENANT=${TENANT//_/-}
mkdir -p "$WORK"/{tenants,staging,data}
cat > "$WORK/tenants/$TENANT.yaml" <<YAML
version: 1
tenant: $TENANT
name: Fuzzing
batch:
  routes: [{files: "*.jsonl", app: orders, timeout: 1m, memory: 512MiB}]
  formats: [jsonl]
  max_file_size: 1MiB
  max_files_per_hour: 100000
  max_bytes_per_day: 1GiB
  max_concurrent_jobs: 2
apps: {max_apps: 1000, max_app_size: 1MiB}
YAML

step "starting a scratch platform"
MYSIMBDP_DATABASE_URL=${ADMIN%/*}/$DB MYSIMBDP_TENANTS_DIR=$WORK/tenants MYSIMBDP_STAGING_DIR=$WORK/staging \
MYSIMBDP_DATA_DIR=$WORK/data MYSIMBDP_API_LISTEN=127.0.0.1:0 MYSIMBDP_LOG=warn \
    "$BIN/mysimbdp" serve 2> "$WORK/platform.log" &
PLATFORM=$!
URL=$(api_url "$WORK/data" "$WORK/platform.log")
export FUZZ_TOKEN FUZZ_TENANT=$TENANT
FUZZ_TOKEN=$("$BIN/mysimbdp" token --role operator --ttl 1h --sub schemathesis)

# Path parameters: the real tenant (random ones only ever meet 404, which is declared but dull).
cat > "$WORK/schemathesis.toml" <<TOML
headers = { Authorization = "Bearer \${FUZZ_TOKEN}" }
[generation]
max-examples = $EXAMPLES
[parameters]
"path.tenant" = "\${FUZZ_TENANT}"
TOML

step "schemathesis against $URL/openapi.json ($EXAMPLES examples per operation)"
set +e
schemathesis --config-file "$WORK/schemathesis.toml" run "$URL/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
    --workers 1 --request-timeout 20 --suppress-health-check all
rc=$?
set -e
if grep -q "panicked" "$WORK/platform.log"; then
    grep -B2 -A10 "panicked" "$WORK/platform.log" >&2
    rc=1
fi
exit $rc
