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
