#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs what is missing (Debian packages), starts the
# local services (scripts/services.sh), then runs the same checks CI runs: formatting, clippy, the
# store's query data against the migrations, the benchmarks' smoke modes, the unit tests, the
# end-to-end tests against real PostgreSQL and the real broker (the lake's Parquet files read back
# with pyarrow from PyPI), and schemathesis fuzzing the API against its own OpenAPI document.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

. scripts/lib.sh
prepare

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "sqlx's offline query data (.sqlx/) matches the migrations"
scripts/sqlx-prepare.sh --check
step "benchmark smoke run (the benchmark itself works; figures from a smoke run mean nothing)"
scripts/bench-batch.sh --smoke > "$ROOT/.local/bench-smoke.log" 2>&1 || { tail -n 40 "$ROOT/.local/bench-smoke.log"; exit 1; }
tail -n 4 "$ROOT/.local/bench-smoke.log"
scripts/bench-api.sh --smoke > "$ROOT/.local/bench-api-smoke.log" 2>&1 || { tail -n 40 "$ROOT/.local/bench-api-smoke.log"; exit 1; }
grep '^median' "$ROOT/.local/bench-api-smoke.log"
scripts/bench-stream.sh --smoke > "$ROOT/.local/bench-stream-smoke.log" 2>&1 || { tail -n 40 "$ROOT/.local/bench-stream-smoke.log"; exit 1; }
grep -E 'msg/s|p50|acted' "$ROOT/.local/bench-stream-smoke.log"
scripts/bench-lake.sh --smoke > "$ROOT/.local/bench-lake-smoke.log" 2>&1 || { tail -n 40 "$ROOT/.local/bench-lake-smoke.log"; exit 1; }
grep '^median' "$ROOT/.local/bench-lake-smoke.log"
step "build (the end-to-end tests run the workspace's binaries)"
cargo build --workspace --bins --locked
step "tests"
ensure_pyarrow
# The end-to-end tests mostly wait on processes and the database; more threads than cores keeps them brief.
log=$ROOT/.local/test.log
RUST_TEST_THREADS=${RUST_TEST_THREADS:-6} cargo test --workspace --locked 2>&1 | tee "$log"
# One closing line for the whole suite (cargo prints one per test binary, the last of them doc tests).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
step "API fuzzing (schemathesis)"
BIN=$CARGO_TARGET_DIR/debug scripts/api-fuzz.sh --quick
