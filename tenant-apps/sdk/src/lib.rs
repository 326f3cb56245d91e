//! mysimbdp tenant SDK: what a tenant's Rust app needs to follow the platform's app contract.
//!
//! - [`BatchEnv`] reads the batch app's environment (`MYSIMBDP_*`).
//! - [`CoreDms`] writes documents into the tenant's coredms database idempotently by `_id`
//!   (PostgreSQL JSONB tables or MongoDB collections; the URL's scheme picks), and [`PipelinedWriter`]
//!   does it on a second thread so parsing and writing overlap.
//! - [`JobResult`] is the result file a batch app leaves for the platform.
//! - [`metrics::Report`] is the metrics report a stream app publishes.
//!
//! This crate depends on nothing of the platform: apps in other languages follow the same contract
//! by hand (see the README).

pub mod coredms;
pub mod env;
pub mod metrics;
pub mod result;

pub use coredms::{CoreDms, Doc, PipelinedWriter, WriteStats};
pub use env::BatchEnv;
pub use result::JobResult;

/// Exit status that asks the platform to run the job again later (EX_TEMPFAIL), e.g. when the
/// coredms is unreachable.
pub const EXIT_TRY_LATER: i32 = 75;
