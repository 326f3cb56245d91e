# Shared by the scripts: build tools and the build cache location.

step() { printf '\n==> %s\n' "$*" >&2; }

# Builds go to a cache outside the clone so fresh clones (CI) reuse earlier work.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mysimbdp/target}

ensure_build_tools() {
    command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup) first" >&2; exit 1; }
    local missing=()
    for p in build-essential pkg-config procps; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        step "installing Debian packages: ${missing[*]}"
        local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo apt-get update -qq
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# What every entry script does first: build tools, local services, their environment.
prepare() {
    ensure_build_tools
    scripts/services.sh up
    set -a; . .local/env; set +a
}
