//! The result file a batch app may leave at `MYSIMBDP_RESULT_FILE` before exiting.

use std::path::Path;

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct JobResult {
    pub records_ingested: u64,
    pub records_rejected: u64,
    pub bytes_read: u64,
    pub message: String,
}

impl JobResult {
    /// Writes atomically (temporary file, then rename) so the platform never reads half a result.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(tmp, path)
    }
}
