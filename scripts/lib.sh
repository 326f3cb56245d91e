# Shared by the scripts: build tools and the build cache location.

step() { printf '\n==> %s\n' "$*" >&2; }

# Builds go to a cache outside the clone so fresh clones (CI) reuse earlier work.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mysimbdp/target}

ensure_build_tools() {
    command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup) first" >&2; exit 1; }
    ensure_debs build-essential pkg-config procps iptables
}

# Installs the Debian packages given that are missing.
ensure_debs() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        step "installing Debian packages: ${missing[*]}"
        local sudo=""
        if [ "$(id -u)" != 0 ]; then
            command -v sudo >/dev/null || { echo "need root to install: ${missing[*]}" >&2; exit 1; }
            sudo=sudo
        fi
        $sudo apt-get update -qq
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# Cargo decides whether a workspace crate is fresh from the mtimes of the files its last build read,
# by absolute path. Two checkouts sharing one cache (a developer's and CI's fresh clone) would each
# take the other's binaries as up to date, so the cache remembers which checkout used it last and a
# different one rebuilds the workspace's own crates (dependencies stay cached).
claim_build_cache() {
    local marker=$CARGO_TARGET_DIR/.mysimbdp-checkout here
    here=$(pwd -P)
    mkdir -p "$CARGO_TARGET_DIR"
    if [ -f "$marker" ] && [ "$(cat "$marker")" != "$here" ]; then
        step "build cache last used by $(cat "$marker"); rebuilding this workspace's crates"
        local pkgs=(-p mysimbdp -p mysimbdp-connect -p mysimbdp-contract -p mysimbdp-sdk -p tortoise-csv -p orders-jsonl -p orders-model -p orders-stream -p orders-cleaner -p fraud-agents -p tortoise-model -p tortoise-stream -p test-apps -p mysimbdp-e2e)
        cargo clean "${pkgs[@]}" 2>/dev/null || true
        cargo clean --release "${pkgs[@]}" 2>/dev/null || true
    fi
    echo "$here" > "$marker"
}

# A Python with pyarrow, the second Parquet reader the lake's tests read its files with (PyPI;
# installed once into the cache, about 30 seconds). Exports MYSIMBDP_TEST_PYTHON.
ensure_pyarrow() {
    local venv=$HOME/.cache/mysimbdp/pyarrow-venv
    if ! "$venv/bin/python" -c 'import pyarrow.parquet' 2>/dev/null; then
        step "installing pyarrow from PyPI into $venv (once)"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check 'pyarrow==18.1.0'
    fi
    export MYSIMBDP_TEST_PYTHON=$venv/bin/python
}

# What every entry script does first: build tools, build cache, local services, their environment.
prepare() {
    ensure_build_tools
    claim_build_cache
    scripts/services.sh up
    set -a; . .local/env; set +a
}

# Waits for a platform started with MYSIMBDP_API_LISTEN=...:0 to write where its API listens, and
# prints the URL; shows the platform's log and fails if it does not come up.
api_url() { # data-dir log-file
    local i
    for i in $(seq 150); do [ -s "$1/api.addr" ] && break; sleep 0.1; done
    [ -s "$1/api.addr" ] || { tail -n 30 "$2" >&2; echo "the platform did not start (log: $2)" >&2; exit 1; }
    echo "http://$(cat "$1/api.addr")"
}
