//! mysimbdp tenant SDK: what a tenant's Rust app needs to follow the platform's app contract.
//!
//! - [`BatchEnv`] reads the batch app's environment (`MYSIMBDP_*`).
//! - [`CoreDms`] writes documents into the tenant's coredms database idempotently by `_id`
//!   (PostgreSQL JSONB tables or MongoDB collections; the URL's scheme picks), and [`PipelinedWriter`]
//!   does it on a second thread so parsing and writing overlap.
//! - [`JobResult`] is the result file a batch app leaves for the platform.
//! - [`metrics::Report`] is the metrics report a stream app publishes, and [`run_stream`] is a stream
//!   app's whole loop (consume, wrangle, write idempotently, commit after the write, report, stop on
//!   SIGTERM); [`run_transform`] is the loop of an app that writes to the tenant's topics instead
//!   (consume, transform, produce, commit after the broker's acknowledgement).
//!
//! This crate depends on nothing of the platform: apps in other languages follow the same contract
//! by hand (see the README).

pub mod coredms;
pub mod env;
mod kafka;
pub mod metrics;
pub mod result;
pub mod resume;
pub mod stream;
mod stream_writers;
pub mod transform;

pub use coredms::{Batcher, CoreDms, Doc, PipelinedWriter, WriteStats};
pub use env::BatchEnv;
pub use result::JobResult;
pub use stream::{run_stream, Message, StreamEnv, StreamOptions, Wrangled};
pub use transform::{run_transform, Output, TransformOptions};

/// Exit status that asks the platform to run the job again later (EX_TEMPFAIL), e.g. when the
/// coredms is unreachable.
pub const EXIT_TRY_LATER: i32 = 75;

/// Where a document came from: the input file and its line, kept in the document for lineage.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Source<'a> {
    pub file: &'a str,
    pub line: u64,
}

/// Runs a batch app's body inside the contract: reads the environment, connects to the tenant's
/// coredms (exit 75, "try again later", if it is unreachable), writes the result file the body returns
/// and exits 0; an error is printed as `<app>: <cause chain>` and exits 1.
pub fn run_batch(
    app: &str,
    body: impl FnOnce(&BatchEnv, CoreDms) -> anyhow::Result<JobResult>,
) -> std::process::ExitCode {
    let outcome = (|| {
        let env = BatchEnv::from_env()?;
        let coredms = match CoreDms::connect(&env.coredms_url, &env.coredms_db) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{app}: coredms unreachable, asking to be retried later: {e:#}");
                return Ok(std::process::ExitCode::from(EXIT_TRY_LATER as u8));
            }
        };
        let result = body(&env, coredms)?;
        eprintln!("{app}: {}", result.message);
        if let Some(path) = &env.result_file {
            result.write(path)?;
        }
        Ok(std::process::ExitCode::SUCCESS)
    })();
    outcome.unwrap_or_else(|e: anyhow::Error| {
        eprintln!("{app}: {e:#}");
        std::process::ExitCode::FAILURE
    })
}
