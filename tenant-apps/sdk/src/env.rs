//! The batch app's environment, as the platform sets it (and nothing else is there).

use std::path::PathBuf;

use anyhow::Context;
use mysimbdp_contract::env;

#[derive(Clone, Debug)]
pub struct BatchEnv {
    pub tenant: String,
    pub job_id: String,
    pub input_file: PathBuf,
    pub coredms_url: String,
    pub coredms_db: String,
    pub result_file: Option<PathBuf>,
}

/// A contract variable, or an error that says how an app gets it.
pub(crate) fn var(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set: run this app through mysimbdp, or set it by hand"))
}

impl BatchEnv {
    /// Reads the contract's variables; the input file may also come as the first argument.
    pub fn from_env() -> anyhow::Result<Self> {
        let input =
            std::env::args().nth(1).map(PathBuf::from).map_or_else(|| var(env::INPUT_FILE).map(PathBuf::from), Ok)?;
        Ok(BatchEnv {
            tenant: var(env::TENANT)?,
            job_id: std::env::var(env::JOB_ID).unwrap_or_else(|_| "manual".into()),
            input_file: input,
            coredms_url: var(env::COREDMS_URL)?,
            coredms_db: var(env::COREDMS_DB)?,
            result_file: std::env::var_os(env::RESULT_FILE).map(PathBuf::from),
        })
    }

    /// The input file's name, for provenance fields in documents.
    pub fn input_name(&self) -> String {
        self.input_file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}
