//! Platform configuration: flags or `MYSIMBDP_*` environment variables (see `mysimbdp serve --help`).
//! Secrets (database passwords) come only from the environment or flags, never from defaults.

use std::path::PathBuf;

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
