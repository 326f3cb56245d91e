//! Platform configuration: flags or `MYSIMBDP_*` environment variables (see `mysimbdp serve --help`).
//! Secrets (database passwords) come only from the environment or flags, never from defaults.
//! It depends on nothing else of the crate: every part takes its settings from here.

use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Config {
    /// The platform store.
    pub database_url: String,
    /// Admin URL of the coredms server; its scheme picks the backend. Never handed to apps.
    pub coredms_url: String,
    pub tenants_dir: PathBuf,
    pub staging_dir: PathBuf,
    /// Platform-owned files: installed apps, work area, ingested and quarantined files.
    pub data_dir: PathBuf,
    pub batch: BatchConfig,
    pub api: Option<ApiConfig>,
    /// The Kafka-API broker (`host:port,...`); readiness checks it when set.
    pub kafka_brokers: Option<String>,
    /// Run the batch ingest manager in this process.
    pub batch_role: bool,
    /// Run the stream ingest manager (instances and the reaction to notifications).
    pub stream_role: bool,
    /// Run the stream ingest monitor.
    pub monitor_role: bool,
    /// Names this platform's consumer groups on the broker (`<cluster>-monitor`, `<cluster>-manager`),
    /// so platforms sharing a broker do not share groups.
    pub cluster: String,
    /// The Docker Engine API (`unix:///path/docker.sock`) for the container runtime; absent: none.
    pub container_socket: Option<String>,
    /// The sandbox tenants' programs run in; absent (`--sandbox off`): they run as the platform's
    /// own user, for development on hosts where the platform cannot run as root.
    pub sandbox: Option<SandboxConfig>,
    /// How long finished work (jobs and their files, reports, notifications, stopped instances) is
    /// kept; absent: for ever.
    pub retention: Option<std::time::Duration>,
    /// Seals tenants' secrets at rest; absent: the platform keeps none (and runs no connector that
    /// needs one).
    pub secrets_key: Option<Redacted>,
    /// The connectors' program (`mysimbdp-connect`); default: beside the running `mysimbdp`.
    pub connect_bin: Option<PathBuf>,
}

/// The shortest JWT key taken: HS256 with less is guessable offline from one token.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// Apps running at once across all tenants.
    pub workers: usize,
    /// How often every tenant's folder is listed (files written in place, missed events).
    pub rescan_interval: Duration,
    /// Bytes of an app's output kept in its job's log (first half and last half).
    pub log_limit: usize,
    /// Between SIGTERM and SIGKILL when an app must stop.
    pub kill_grace: Duration,
    /// Delay before the first retry; doubled for each further one.
    pub retry_backoff: Duration,
    /// How long a job being admitted or run stays with its manager without word from it (see
    /// `leases`): how soon another manager takes over the work of one that hangs or is cut off.
    pub lease: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()).max(2),
            rescan_interval: Duration::from_millis(500),
            log_limit: 64 << 10,
            kill_grace: Duration::from_secs(5),
            retry_backoff: Duration::from_secs(1),
            lease: Duration::from_secs(15),
        }
    }
}

/// The sandbox's settings, from the platform's configuration.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// The fork server's binary (`mysimbdp-sandbox`); default: beside the running `mysimbdp`.
    pub init: Option<PathBuf>,
    /// Tenants' uids are allocated from here upwards (gid = uid).
    pub uid_base: u32,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig { init: None, uid_base: DEFAULT_UID_BASE }
    }
}

/// Far above the uids of a host's users and of the usual subordinate-uid ranges (`/etc/subuid`).
pub const DEFAULT_UID_BASE: u32 = 2_000_000_000;

/// The slowest an upload may be: on average `min_rate` bytes a second once `grace` has passed. A
/// sender trickling a byte now and then holds a connection and a file as long as a stalled one.
#[derive(Clone, Copy, Debug)]
pub struct MinRate {
    pub bytes_per_s: f64,
    pub grace: Duration,
}

impl Default for MinRate {
    fn default() -> Self {
        MinRate { bytes_per_s: 16.0 * 1024.0, grace: Duration::from_secs(30) }
    }
}

/// The control plane; absent when this process runs no API.
#[derive(Clone)]
pub struct ApiConfig {
    pub listen: std::net::SocketAddr,
    /// HS256 key for tokens; from configuration only, never a default.
    pub jwt_secret: Vec<u8>,
    /// Bytes of ingestion-log answers kept for repeat requests (0: none).
    pub page_cache: usize,
    /// The slowest an upload may be (the default: 16 KiB/s on average after 30 s).
    pub min_upload_rate: MinRate,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("listen", &self.listen)
            .field("jwt_secret", &"<redacted>")
            .field("page_cache", &self.page_cache)
            .finish()
    }
}

/// The JWT secret from `MYSIMBDP_JWT_SECRET` or the file `MYSIMBDP_JWT_SECRET_FILE` names (trailing
/// newline dropped).
pub fn jwt_secret_from(value: Option<String>, file: Option<PathBuf>) -> anyhow::Result<Vec<u8>> {
    let secret = match (value, file) {
        (Some(v), _) => v.into_bytes(),
        (None, Some(path)) => {
            let mut bytes = std::fs::read(&path).map_err(|e| anyhow::anyhow!("reading the JWT secret file {}: {e}", path.display()))?;
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            bytes
        }
        (None, None) => anyhow::bail!(
            "no JWT secret: set MYSIMBDP_JWT_SECRET or MYSIMBDP_JWT_SECRET_FILE (at least {} bytes; e.g. `openssl rand -hex 32`)",
            MIN_SECRET_BYTES
        ),
    };
    anyhow::ensure!(
        secret.len() >= MIN_SECRET_BYTES,
        "the JWT secret is {} bytes; at least {MIN_SECRET_BYTES} are needed",
        secret.len()
    );
    Ok(secret)
}

/// A secret given as a value or as a file holding it (trailing newline dropped); the file is the way
/// to keep it out of the process's environment.
pub fn secret_from(what: &str, value: Option<String>, file: Option<PathBuf>) -> anyhow::Result<String> {
    match (value, file) {
        (Some(v), _) => Ok(v),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("reading {what} from {}: {e}", path.display()))?;
            Ok(text.trim_end_matches(['\n', '\r']).to_owned())
        }
        (None, None) => anyhow::bail!("{what} is not configured"),
    }
}

/// The key tenants' secrets are sealed with, as given (a value or a file; 64 hex digits, checked when
/// the platform starts); none if neither is given (the platform then keeps no secrets).
pub fn secrets_key_from(value: Option<String>, file: Option<PathBuf>) -> anyhow::Result<Option<Redacted>> {
    if value.is_none() && file.is_none() {
        return Ok(None);
    }
    Ok(Some(Redacted(secret_from("the secrets key", value, file)?)))
}

/// A secret's text, never shown by `Debug`.
#[derive(Clone)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Variables that may hold the platform's secrets.
const SECRET_VARIABLES: [&str; 4] =
    ["MYSIMBDP_DATABASE_URL", "MYSIMBDP_COREDMS_URL", "MYSIMBDP_JWT_SECRET", "MYSIMBDP_SECRETS_KEY"];

/// Removes the platform's secrets from its environment once read: from the variables the C library
/// keeps, and from the block the kernel shows in `/proc/PID/environ` (which removing a variable does
/// not touch), overwritten in place. Call while the process has one thread.
pub fn scrub_secret_environment() {
    for name in SECRET_VARIABLES {
        let key = std::ffi::CString::new(name).expect("no NUL");
        // SAFETY: getenv returns the value inside the environment block (or null); it is overwritten
        // within its own length, before any other thread exists to read it.
        unsafe {
            let value = libc::getenv(key.as_ptr());
            if !value.is_null() {
                let len = libc::strlen(value);
                std::ptr::write_bytes(value, b'x', len);
            }
            std::env::remove_var(name);
        }
    }
}

/// Makes the serving process undumpable: its memory, environment and descriptors under `/proc` are
/// then root's alone, and no process of its own uid may attach to it.
pub fn harden_process() {
    // SAFETY: plain prctl on this process.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not make the platform undumpable");
    }
}

/// Creates `dir` if needed and returns its absolute path. Paths handed to apps and stored in the
/// platform store must not depend on any process's working folder.
pub fn absolute_dir(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    dir.canonicalize()
}

/// Like `absolute_dir`, and only the platform's own user may enter it (0700): what the platform
/// keeps there is no business of tenants' programs or of other users of the host.
pub fn private_dir(dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = absolute_dir(dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

impl Config {
    pub fn absolute(mut self) -> std::io::Result<Self> {
        self.tenants_dir = absolute_dir(&self.tenants_dir)?;
        self.staging_dir = absolute_dir(&self.staging_dir)?;
        // The platform's own files (apps, claimed and finished files, logs, the sandbox's root): no other
        // user of the host enters (a run's sandbox is given only what it needs, by bind mounts).
        self.data_dir = private_dir(&self.data_dir)?;
        Ok(self)
    }
}
