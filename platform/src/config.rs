//! Platform configuration: flags or `MYSIMBDP_*` environment variables (see `mysimbdp serve --help`).
//! Secrets (database passwords) come only from the environment or flags, never from defaults.

use std::path::{Path, PathBuf};

use crate::batch::BatchConfig;

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
}

/// The control plane; absent when this process runs no API.
#[derive(Clone)]
pub struct ApiConfig {
    pub listen: std::net::SocketAddr,
    /// HS256 key for tokens; from configuration only, never a default.
    pub jwt_secret: Vec<u8>,
    /// Bytes of ingestion-log answers kept for repeat requests (0: none).
    pub page_cache: usize,
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
            crate::api::auth::MIN_SECRET_BYTES
        ),
    };
    crate::api::Keys::new(&secret)?;
    Ok(secret)
}

/// Creates `dir` if needed and returns its absolute path. Paths handed to apps and stored in the
/// platform store must not depend on any process's working folder.
pub fn absolute_dir(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    dir.canonicalize()
}

impl Config {
    pub fn absolute(mut self) -> std::io::Result<Self> {
        self.tenants_dir = absolute_dir(&self.tenants_dir)?;
        self.staging_dir = absolute_dir(&self.staging_dir)?;
        self.data_dir = absolute_dir(&self.data_dir)?;
        Ok(self)
    }
}
