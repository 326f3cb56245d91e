//! The tenant app contract (DESIGN.md, "Tenant app contract" and "Metrics report"), as types and
//! names that the platform, which sets the environment and reads the reports, and the tenant SDK,
//! which reads the environment and sends the reports, both use: a variable renamed or a field added
//! on one side only does not compile, instead of failing at run time in a tenant's app.
//!
//! Depends on serde, chrono and the HMAC crates only, so an app built on the SDK pulls in nothing of the platform.

pub mod env;
mod report;
pub mod signature;

pub use report::Report;
