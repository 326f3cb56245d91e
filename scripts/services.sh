#!/usr/bin/env bash
# Local services for hosts without a Docker engine: installs what is missing (Debian packages) and runs
# each service on loopback with its data under .local/ (ignored by git). Idempotent; safe to run twice.
#
#   scripts/services.sh up       install if needed, start, and write .local/env
#   scripts/services.sh down     stop (data kept)
#   scripts/services.sh status
#   scripts/services.sh destroy  stop and delete all local data
#
# Services, each a <name>_up / <name>_down / <name>_status triple: PostgreSQL (platform store and
# coredms), the Kafka-API broker `tansu` (built once from crates.io into ~/.cache/mysimbdp/tools,
# 15 to 25 minutes; in-memory storage, so topics start empty at each `up`; built with its SQLite
# storage too, for the tests that restart a broker of their own and need it to keep what it had),
# and Podman's Docker-compatible API service for the stream manager's container runtime.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCAL=${MYSIMBDP_LOCAL_DIR:-$ROOT/.local}
PG_PORT=${MYSIMBDP_PG_PORT:-55432}
PG_DIR=$LOCAL/pg
BROKER_PORT=${MYSIMBDP_BROKER_PORT:-59092}
TOOLS=${MYSIMBDP_TOOLS_DIR:-$HOME/.cache/mysimbdp/tools}
TANSU_VERSION=0.6.0
TANSU_FEATURES=dynostore,libsql
SERVICES=(pg broker containers)

# PostgreSQL refuses to run as root, so as root it runs as the `postgres` user, which must be able to
# reach its data folder. A checkout under a private folder (e.g. one made by `mktemp -d`, mode 0700) is
# out of its reach; then the cluster lives under /var/lib/postgresql, one per checkout.
choose_pg_dir() {
    [ "$(id -u)" = 0 ] || return 0
    mkdir -p "$LOCAL"
    if ! runuser -u postgres -- test -x "$LOCAL" 2>/dev/null; then
        PG_DIR=/var/lib/postgresql/mysimbdp-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)
    fi
}

log() { printf '[services] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ensure_debs (Debian packages installed when missing) and the shared build cache location.
. "$ROOT/scripts/lib.sh"

pg_bin() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$dir" ] || die "PostgreSQL server binaries not found under /usr/lib/postgresql"
    echo "$dir"
}

# PostgreSQL refuses to run as root; as root we run it as the `postgres` user the package creates.
pg_run() {
    # From `/`: the postgres user may not be allowed into the current folder.
    if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

pg_ctl_() { pg_run "$(pg_bin)/pg_ctl" -D "$PG_DIR/data" "$@"; }

pg_status() { [ -f "$PG_DIR/data/PG_VERSION" ] && pg_ctl_ status >/dev/null 2>&1; }

pg_up() {
    ensure_debs postgresql postgresql-contrib
    choose_pg_dir
    [ "$PG_DIR" = "$LOCAL/pg" ] || log "the postgres user cannot reach $LOCAL; PostgreSQL data goes to $PG_DIR"
    mkdir -p "$PG_DIR"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$PG_DIR"; chmod 0700 "$PG_DIR"; fi
    if [ ! -f "$PG_DIR/data/PG_VERSION" ]; then
        log "initialising PostgreSQL in $PG_DIR/data"
        pg_run "$(pg_bin)/initdb" -D "$PG_DIR/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 -E UTF8 >/dev/null
        pg_run mkdir -p "$PG_DIR/run"
        cat <<CONF | pg_run tee -a "$PG_DIR/data/postgresql.conf" >/dev/null
# mysimbdp local service
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DIR/run'
max_connections = 400
shared_buffers = 512MB
wal_buffers = 16MB
max_wal_size = 4GB
checkpoint_timeout = 15min
password_encryption = scram-sha-256
CONF
    fi
    if ! pg_status; then
        log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
        pg_ctl_ -l "$PG_DIR/server.log" -w -t 60 start >/dev/null
    fi
    # Tenants' `postgres_cdc` sources (and the tests' source databases) read changes through logical
    # decoding; a cluster made before that is switched over once (a restart).
    local psql_admin=("$(pg_bin)/psql" -h "$PG_DIR/run" -p "$PG_PORT" -U postgres -d postgres -qtA -v ON_ERROR_STOP=1)
    if [ "$(pg_run "${psql_admin[@]}" -c 'show wal_level')" != logical ]; then
        log "switching PostgreSQL to wal_level=logical (a restart)"
        pg_run "${psql_admin[@]}" -c 'alter system set wal_level = logical' -c 'alter system set max_replication_slots = 100' >/dev/null
        pg_ctl_ -l "$PG_DIR/server.log" -w -t 60 restart >/dev/null
    fi
    local password_file=$LOCAL/pg-password store_password_file=$LOCAL/pg-store-password
    for f in "$password_file" "$store_password_file"; do
        [ -s "$f" ] || (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$f")
    done
    local password store_password
    password=$(cat "$password_file"); store_password=$(cat "$store_password_file")
    # Two logins: `mysimbdp`, the coredms admin, used only to provision tenants' databases and logins
    # (a superuser here); `mysimbdp_store`, the platform store's owner and nothing more. A checkout whose
    # store database belonged to the admin (before the two were apart) hands it over once.
    pg_run "$(pg_bin)/psql" -h "$PG_DIR/run" -p "$PG_PORT" -U postgres -d postgres -qtA -v ON_ERROR_STOP=1 <<SQL >/dev/null
select 'create role mysimbdp superuser login' where not exists (select from pg_roles where rolname = 'mysimbdp') \gexec
alter role mysimbdp password '$password';
select 'create role mysimbdp_store login nosuperuser nocreatedb nocreaterole' where not exists (select from pg_roles where rolname = 'mysimbdp_store') \gexec
alter role mysimbdp_store password '$store_password';
select 'create database mysimbdp owner mysimbdp_store' where not exists (select from pg_database where datname = 'mysimbdp') \gexec
select 'alter database mysimbdp owner to mysimbdp_store' from pg_database d join pg_roles r on r.oid = d.datdba where d.datname = 'mysimbdp' and r.rolname <> 'mysimbdp_store' \gexec
revoke all on database mysimbdp from public;
-- Tenants' logins open their own database and nothing else (PostgreSQL lets everyone into these).
revoke connect on database postgres from public;
revoke connect on database template1 from public;
SQL
    pg_run "$(pg_bin)/psql" -h "$PG_DIR/run" -p "$PG_PORT" -U postgres -d mysimbdp -qtA -v ON_ERROR_STOP=1 <<SQL >/dev/null
select format('alter table %I.%I owner to mysimbdp_store', schemaname, tablename) from pg_tables where schemaname = 'public' and tableowner <> 'mysimbdp_store' \gexec
select format('alter sequence %I.%I owner to mysimbdp_store', schemaname, sequencename) from pg_sequences where schemaname = 'public' and sequenceowner <> 'mysimbdp_store' \gexec
SQL
    local base="postgres://mysimbdp:$password@127.0.0.1:$PG_PORT" store="postgres://mysimbdp_store:$store_password@127.0.0.1:$PG_PORT"
    # The platform reads its URLs from these files (0600): they hold passwords, and a file is not
    # inherited the way an environment variable is.
    mkdir -p "$LOCAL/secrets"
    (umask 077; echo "$store/mysimbdp" > "$LOCAL/secrets/database-url"; echo "$base/postgres" > "$LOCAL/secrets/coredms-url")
    {
        echo "MYSIMBDP_DATABASE_URL_FILE=$LOCAL/secrets/database-url"
        echo "MYSIMBDP_COREDMS_URL_FILE=$LOCAL/secrets/coredms-url"
        # For tests and benchmarks: the admin login, and the store's (tests give it a database each).
        echo "MYSIMBDP_TEST_PG_URL=$base/postgres"
        echo "MYSIMBDP_TEST_STORE_URL=$store/mysimbdp"
        # A folder the server can read and write, for server-side COPY files (benchmarks).
        echo "MYSIMBDP_PG_SCRATCH=$PG_DIR/scratch"
    } > "$LOCAL/env.pg"
    pg_run mkdir -p "$PG_DIR/scratch"
}

pg_down() { choose_pg_dir; if pg_status; then log "stopping PostgreSQL"; pg_ctl_ -m fast -w stop >/dev/null; fi; }

tansu_bin() { echo "$TOOLS/bin/tansu"; }

# A service run in the background with its pid in .local/<name>.pid.
pid_running() { [ -f "$LOCAL/$1.pid" ] && kill -0 "$(cat "$LOCAL/$1.pid")" 2>/dev/null; }

pid_stop() { # name what
    if pid_running "$1"; then
        log "stopping $2"
        kill "$(cat "$LOCAL/$1.pid")" 2>/dev/null || true
        local i
        for i in $(seq 50); do pid_running "$1" || break; sleep 0.1; done
        pid_running "$1" && kill -9 "$(cat "$LOCAL/$1.pid")" 2>/dev/null || true
    fi
    rm -f "$LOCAL/$1.pid"
}

broker_status() { pid_running broker; }

broker_up() {
    local built=$TOOLS/.tansu-$TANSU_VERSION-${TANSU_FEATURES//,/-}
    if [ ! -x "$(tansu_bin)" ] || [ ! -f "$built" ]; then
        ensure_debs build-essential pkg-config
        log "building the Kafka-API broker tansu $TANSU_VERSION ($TANSU_FEATURES) from crates.io into $TOOLS (once; 15 to 25 minutes)"
        cargo install --quiet --locked --force tansu --version "$TANSU_VERSION" --features "$TANSU_FEATURES" --root "$TOOLS" \
            || die "building tansu failed"
        touch "$built"
    fi
    if ! broker_status; then
        log "starting the Kafka-API broker (tansu) on 127.0.0.1:$BROKER_PORT"
        local url=tcp://127.0.0.1:$BROKER_PORT
        setsid nohup "$(tansu_bin)" broker --listener-url "$url" --advertised-listener-url "$url" \
            --storage-engine memory://tansu/ > "$LOCAL/broker.log" 2>&1 < /dev/null &
        echo $! > "$LOCAL/broker.pid"
        local i
        for i in $(seq 100); do
            (exec 3<>"/dev/tcp/127.0.0.1/$BROKER_PORT") 2>/dev/null && break
            broker_status || { tail -n 20 "$LOCAL/broker.log" >&2; die "tansu exited at start"; }
            sleep 0.1
        done
        (exec 3<>"/dev/tcp/127.0.0.1/$BROKER_PORT") 2>/dev/null || die "tansu does not listen on $BROKER_PORT (see $LOCAL/broker.log)"
    fi
    # The binary, for tests that run a broker of their own (see tests/support: PrivateBroker).
    printf 'MYSIMBDP_KAFKA_BROKERS=127.0.0.1:%s\nMYSIMBDP_TEST_BROKER_BIN=%s\n' "$BROKER_PORT" "$(tansu_bin)" > "$LOCAL/env.broker"
}

broker_down() { pid_stop broker "the Kafka-API broker"; }

containers_status() { pid_running podman; }

# Podman's Docker Engine API on a unix socket under .local/ (recipe in DESIGN.md: runc, cgroupfs,
# and no default ulimits, which this kind of machine refuses to raise).
containers_up() {
    ensure_debs podman runc
    local dir=$LOCAL/podman
    mkdir -p "$dir"
    printf '[containers]\ndefault_ulimits = []\n' > "$dir/containers.conf"
    if ! containers_status; then
        log "starting Podman's Docker-compatible API on $dir/podman.sock"
        rm -f "$dir/podman.sock"
        CONTAINERS_CONF=$dir/containers.conf setsid nohup podman --runtime runc --cgroup-manager=cgroupfs \
            system service --time=0 "unix://$dir/podman.sock" > "$LOCAL/podman.log" 2>&1 < /dev/null &
        echo $! > "$LOCAL/podman.pid"
        local i
        for i in $(seq 100); do
            [ -S "$dir/podman.sock" ] && break
            containers_status || { tail -n 20 "$LOCAL/podman.log" >&2; die "podman system service exited at start"; }
            sleep 0.1
        done
        [ -S "$dir/podman.sock" ] || die "podman does not listen on $dir/podman.sock (see $LOCAL/podman.log)"
    fi
    echo "MYSIMBDP_CONTAINER_SOCKET=unix://$dir/podman.sock" > "$LOCAL/env.containers"
}

containers_down() { pid_stop podman "Podman's API service"; }

# The API's token key and the key tenants' secrets are sealed with: generated once per checkout,
# kept out of git with the rest of .local/ (losing the second loses every tenant's secrets).
platform_secret() {
    local f
    for f in jwt-secret secrets-key; do
        [ -s "$LOCAL/$f" ] || (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$LOCAL/$f")
    done
    {
        echo "MYSIMBDP_JWT_SECRET_FILE=$LOCAL/jwt-secret"
        echo "MYSIMBDP_SECRETS_KEY_FILE=$LOCAL/secrets-key"
    } > "$LOCAL/env.platform"
}

write_env() {
    platform_secret
    (umask 077; cat "$LOCAL"/env.* > "$LOCAL/env")
    log "environment written to $LOCAL/env (source it, or: set -a; . $LOCAL/env; set +a)"
}

main() {
    mkdir -p "$LOCAL"
    case "${1:-up}" in
        up) for s in "${SERVICES[@]}"; do "${s}_up"; done; write_env ;;
        down) for s in "${SERVICES[@]}"; do "${s}_down"; done ;;
        status)
            local rc=0
            choose_pg_dir
            for s in "${SERVICES[@]}"; do
                if "${s}_status"; then echo "$s: running"; else echo "$s: stopped"; rc=1; fi
            done
            return $rc ;;
        destroy)
            for s in "${SERVICES[@]}"; do "${s}_down"; done
            rm -rf "$LOCAL"
            [ "$PG_DIR" = "$LOCAL/pg" ] || rm -rf "$PG_DIR" ;;
        *) die "usage: $0 up|down|status|destroy" ;;
    esac
}

main "$@"
