#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs what is missing (Debian packages), starts the
# local services (scripts/services.sh), then runs the same checks CI runs: formatting, clippy, the unit
# tests and the end-to-end tests against real PostgreSQL.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

. scripts/lib.sh
prepare

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "build (the end-to-end tests run the workspace's binaries)"
cargo build --workspace --bins --locked
step "tests"
# The end-to-end tests mostly wait on processes and the database; more threads than cores keeps them brief.
RUST_TEST_THREADS=${RUST_TEST_THREADS:-6} cargo test --workspace --locked
