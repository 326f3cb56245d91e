//! Command-line interface. `serve` runs the platform; `migrate`, `agreement check`, `token` and
//! `apps install` work on the platform host directly; everything else drives the REST API over HTTP
//! (`--url`, `--token` or `MYSIMBDP_URL`, `MYSIMBDP_TOKEN`).

mod client;
mod remote;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use mysimbdp::agreement::ServiceAgreement;
use mysimbdp::api::auth::{Keys, Role};
use mysimbdp::apps::{AppKind, InstallRequest, Registry};
use mysimbdp::batch::BatchConfig;
use mysimbdp::store;
use mysimbdp::tenant::TenantId;
use mysimbdp::units::{parse_duration, ByteSize};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "mysimbdp", version, about = "Multi-tenant big-data ingestion platform")]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "MYSIMBDP_LOG_JSON")]
    log_json: bool,
    #[command(flatten)]
    remote: remote::Remote,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct SecretArgs {
    /// HS256 key for API tokens (at least 32 bytes).
    #[arg(long, env = "MYSIMBDP_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// File holding the key (preferred to a value on the command line).
    #[arg(long, env = "MYSIMBDP_JWT_SECRET_FILE")]
    jwt_secret_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum RoleArg {
    Api,
    Batch,
    Stream,
    Monitor,
}

#[derive(Args, Clone)]
struct StoreArgs {
    /// The platform store (PostgreSQL).
    #[arg(long, env = "MYSIMBDP_DATABASE_URL", hide_env_values = true, required_unless_present = "database_url_file")]
    database_url: Option<String>,
    /// File holding the store's URL (preferred: the URL holds a password).
    #[arg(long, env = "MYSIMBDP_DATABASE_URL_FILE")]
    database_url_file: Option<PathBuf>,
}

impl StoreArgs {
    fn url(self) -> anyhow::Result<String> {
        mysimbdp::config::secret_from("the platform store's URL", self.database_url, self.database_url_file)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SandboxMode {
    /// Each program in its own namespaces, uid and cgroup (needs root).
    On,
    /// Programs run as the platform's own user and can read its files: development only.
    Off,
}

#[derive(Args, Clone)]
struct PathArgs {
    /// Folder of service agreements, one `<tenant>.yaml` each.
    #[arg(long, env = "MYSIMBDP_TENANTS_DIR", default_value = "tenants")]
    tenants_dir: PathBuf,
    /// Tenants' drop folders live under this one.
    #[arg(long, env = "MYSIMBDP_STAGING_DIR", default_value = "staging")]
    staging_dir: PathBuf,
    /// Platform-owned files: apps, work area, ingested and quarantined files.
    #[arg(long, env = "MYSIMBDP_DATA_DIR", default_value = ".local/data")]
    data_dir: PathBuf,
}

#[derive(Args)]
struct ServeArgs {
    /// Roles this process runs.
    #[arg(long, env = "MYSIMBDP_ROLES", value_enum, value_delimiter = ',', default_value = "api,batch,stream,monitor")]
    roles: Vec<RoleArg>,
    /// Address the API listens on (port 0: any free port, written to <data dir>/api.addr).
    #[arg(long, env = "MYSIMBDP_API_LISTEN", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    #[command(flatten)]
    secret: SecretArgs,
    /// The key tenants' secrets are sealed with: 64 hex digits (e.g. `openssl rand -hex 32`).
    #[arg(long, env = "MYSIMBDP_SECRETS_KEY", hide_env_values = true)]
    secrets_key: Option<String>,
    /// File holding the secrets key (preferred). Without a key the platform keeps no secrets.
    #[arg(long, env = "MYSIMBDP_SECRETS_KEY_FILE")]
    secrets_key_file: Option<PathBuf>,
    /// Memory for repeat answers of the ingestion log, e.g. 32MiB (0: no cache).
    #[arg(long, env = "MYSIMBDP_API_PAGE_CACHE", default_value = "32MiB", value_parser = ByteSize::parse)]
    page_cache: ByteSize,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    paths: PathArgs,
    /// Admin URL of the coredms server (postgres:// or mongodb://); used only to provision tenants,
    /// never handed to apps.
    #[arg(long, env = "MYSIMBDP_COREDMS_URL", hide_env_values = true, required_unless_present = "coredms_url_file")]
    coredms_url: Option<String>,
    /// File holding the coredms admin URL (preferred: the URL holds a password).
    #[arg(long, env = "MYSIMBDP_COREDMS_URL_FILE")]
    coredms_url_file: Option<PathBuf>,
    /// How tenants' programs run: `on`, in the sandbox (the default; needs root), or `off`.
    #[arg(long, env = "MYSIMBDP_SANDBOX", value_enum, default_value = "on")]
    sandbox: SandboxMode,
    /// The sandbox's init binary (default: `mysimbdp-sandbox` beside this binary).
    #[arg(long, env = "MYSIMBDP_SANDBOX_INIT")]
    sandbox_init: Option<PathBuf>,
    /// The connectors' program (default: `mysimbdp-connect` beside this binary).
    #[arg(long, env = "MYSIMBDP_CONNECT_BIN")]
    connect_bin: Option<PathBuf>,
    /// Tenants' uids (and gids) are allocated from this one upwards.
    #[arg(long, env = "MYSIMBDP_SANDBOX_UID_BASE", default_value_t = mysimbdp::runtime::sandbox::DEFAULT_UID_BASE)]
    sandbox_uid_base: u32,
    /// The Kafka-API broker, `host:port[,host:port...]` (readiness checks it; the stream and
    /// monitor roles need it).
    #[arg(long, env = "MYSIMBDP_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Prefix of this platform's consumer groups on the broker.
    #[arg(long, env = "MYSIMBDP_CLUSTER", default_value = "mysimbdp")]
    cluster: String,
    /// The Docker Engine API for the container runtime, e.g. unix:///run/podman/podman.sock.
    #[arg(long, env = "MYSIMBDP_CONTAINER_SOCKET")]
    container_socket: Option<String>,
    /// Apps running at once across all tenants (default: number of cores, at least 2).
    #[arg(long, env = "MYSIMBDP_BATCH_WORKERS")]
    workers: Option<usize>,
    /// How often staging folders are listed, e.g. 500ms.
    #[arg(long, env = "MYSIMBDP_RESCAN_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    rescan_interval: Duration,
    /// Bytes of an app's output kept per job, e.g. 64KiB.
    #[arg(long, env = "MYSIMBDP_LOG_LIMIT", default_value = "64KiB", value_parser = ByteSize::parse)]
    log_limit: ByteSize,
    /// Time between SIGTERM and SIGKILL for apps that must stop.
    #[arg(long, env = "MYSIMBDP_KILL_GRACE", default_value = "5s", value_parser = parse_duration)]
    kill_grace: Duration,
    /// First retry delay of a failed job (doubles each retry).
    #[arg(long, env = "MYSIMBDP_RETRY_BACKOFF", default_value = "1s", value_parser = parse_duration)]
    retry_backoff: Duration,
    /// How long finished work is kept: jobs and their files, reports, notifications, stopped
    /// instances and their logs (0s: for ever).
    #[arg(long, env = "MYSIMBDP_RETENTION", default_value = "30d", value_parser = parse_duration)]
    retention: Duration,
    /// How long a job stays with a batch manager that stops answering before another takes it over.
    #[arg(long, env = "MYSIMBDP_BATCH_LEASE", default_value = "15s", value_parser = parse_duration)]
    batch_lease: Duration,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform (API, batch and stream ingest managers, stream monitor) until SIGINT or SIGTERM.
    Serve(Box<ServeArgs>),
    /// Apply the platform store's migrations and exit.
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Service agreements.
    #[command(subcommand)]
    Agreement(AgreementCommand),
    /// Mint an API token (operators, on the platform host: needs the JWT secret).
    Token {
        #[command(flatten)]
        secret: SecretArgs,
        #[arg(long, value_enum)]
        role: RoleName,
        /// How long the token is valid, e.g. 1h, 30d.
        #[arg(long, default_value = "12h", value_parser = parse_duration)]
        ttl: Duration,
        /// Who the token is for (shown in the platform's logs).
        #[arg(long)]
        sub: Option<String>,
    },
    /// Install an app from a local file straight into the registry (on the platform host, no API).
    InstallApp {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        paths: PathArgs,
        /// App name (required for a single executable; must match app.yaml for an archive).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_enum, default_value = "batch")]
        kind: KindArg,
        path: PathBuf,
    },
    #[command(flatten)]
    Remote(remote::RemoteCommand),
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleName {
    Operator,
    Tenant,
}

#[derive(Subcommand)]
enum AgreementCommand {
    /// Validate agreement files; prints every error with file and field. Exit 1 if any is invalid.
    Check { files: Vec<PathBuf> },
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    Batch,
    Stream,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Still one thread: the secrets clap has read leave the environment (and /proc/PID/environ)
    // before anything else starts.
    mysimbdp::config::scrub_secret_environment();
    init_tracing(cli.log_json);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("MYSIMBDP_LOG").unwrap_or_else(|_| "info,sqlx=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn tenant(s: &str) -> anyhow::Result<TenantId> {
    TenantId::parse(s).map_err(anyhow::Error::msg)
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let remote = cli.remote;
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Migrate { store } => migrate(store).await,
        Command::Agreement(AgreementCommand::Check { files }) => Ok(check_agreements(files)),
        Command::Token { secret, role, ttl, sub } => token(&remote, secret, role, ttl, sub),
        Command::InstallApp { store, paths, name, kind, path } => {
            install_app(&remote, store, paths, name, kind, path).await
        }
        Command::Remote(command) => {
            let data_dir =
                std::env::var_os("MYSIMBDP_DATA_DIR").map_or_else(|| PathBuf::from(".local/data"), PathBuf::from);
            remote::run(remote, command, data_dir).await
        }
    }
}

/// `mysimbdp serve`: the configuration from flags and environment, then the platform until a signal.
async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let ServeArgs {
        roles,
        listen,
        secret,
        secrets_key,
        secrets_key_file,
        page_cache,
        store,
        paths,
        coredms_url,
        coredms_url_file,
        sandbox,
        sandbox_init,
        connect_bin,
        sandbox_uid_base,
        kafka_brokers,
        cluster,
        container_socket,
        workers,
        rescan_interval,
        log_limit,
        kill_grace,
        retry_backoff,
        batch_lease,
        retention,
    } = args;
    let defaults = BatchConfig::default();
    let api = if roles.contains(&RoleArg::Api) {
        let jwt_secret = mysimbdp::config::jwt_secret_from(secret.jwt_secret, secret.jwt_secret_file)?;
        Some(mysimbdp::config::ApiConfig {
            listen,
            jwt_secret,
            page_cache: page_cache.0 as usize,
            min_upload_rate: Default::default(),
        })
    } else {
        None
    };
    let sandbox = match sandbox {
        SandboxMode::On => {
            Some(mysimbdp::runtime::sandbox::SandboxConfig { init: sandbox_init, uid_base: sandbox_uid_base })
        }
        SandboxMode::Off => None,
    };
    let config = mysimbdp::Config {
        database_url: store.url()?,
        coredms_url: mysimbdp::config::secret_from("the coredms admin URL", coredms_url, coredms_url_file)?,
        tenants_dir: paths.tenants_dir,
        staging_dir: paths.staging_dir,
        data_dir: paths.data_dir,
        batch: BatchConfig {
            workers: workers.unwrap_or(defaults.workers),
            rescan_interval,
            log_limit: log_limit.0 as usize,
            kill_grace,
            retry_backoff,
            lease: batch_lease,
        },
        api,
        kafka_brokers,
        batch_role: roles.contains(&RoleArg::Batch),
        stream_role: roles.contains(&RoleArg::Stream),
        monitor_role: roles.contains(&RoleArg::Monitor),
        cluster,
        container_socket,
        sandbox,
        retention: (!retention.is_zero()).then_some(retention),
        connect_bin,
        secrets_key: mysimbdp::config::secrets_key_from(secrets_key, secrets_key_file)?,
    };
    mysimbdp::config::harden_process();
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    mysimbdp::run(config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

async fn migrate(store: StoreArgs) -> anyhow::Result<ExitCode> {
    let db = store::connect(&store.url()?).await?;
    store::migrate(&db).await?;
    println!("platform store is up to date");
    Ok(ExitCode::SUCCESS)
}

/// `mysimbdp agreement check`: every error of every file, and a failing exit if any.
fn check_agreements(files: Vec<PathBuf>) -> ExitCode {
    let mut ok = true;
    for file in files {
        match ServiceAgreement::load(&file) {
            Ok(a) => println!("{}: ok (tenant {})", file.display(), a.tenant),
            Err(e) => {
                ok = false;
                println!("{e}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn token(
    remote: &remote::Remote,
    secret: SecretArgs,
    role: RoleName,
    ttl: Duration,
    sub: Option<String>,
) -> anyhow::Result<ExitCode> {
    let keys = Keys::new(&mysimbdp::config::jwt_secret_from(secret.jwt_secret, secret.jwt_secret_file)?)?;
    let (role, t) = match role {
        RoleName::Operator => (Role::Operator, None),
        RoleName::Tenant => {
            let t = remote.tenant_flag().ok_or_else(|| anyhow::anyhow!("a tenant token needs --tenant"))?;
            (Role::Tenant, Some(tenant(&t)?))
        }
    };
    println!("{}", keys.mint(role, t.as_ref(), sub.as_deref(), ttl)?);
    Ok(ExitCode::SUCCESS)
}

async fn install_app(
    remote: &remote::Remote,
    store: StoreArgs,
    paths: PathArgs,
    name: Option<String>,
    kind: KindArg,
    path: PathBuf,
) -> anyhow::Result<ExitCode> {
    let t = tenant(&remote.tenant_flag().ok_or_else(|| anyhow::anyhow!("name the tenant with --tenant"))?)?;
    let agreement_file = paths.tenants_dir.join(format!("{t}.yaml"));
    let agreement = ServiceAgreement::load(&agreement_file)?;
    let db = store::connect(&store.url()?).await?;
    store::migrate(&db).await?;
    let kind = match kind {
        KindArg::Batch => AppKind::Batch,
        KindArg::Stream => AppKind::Stream,
    };
    let app = Registry::new(db, &paths.data_dir)?
        .install(&agreement, InstallRequest { name: name.as_deref(), kind }, &path)
        .await?;
    println!("installed {} version {} ({}, {} bytes) for tenant {t}", app.name, app.version, app.kind, app.size_bytes);
    Ok(ExitCode::SUCCESS)
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
}
