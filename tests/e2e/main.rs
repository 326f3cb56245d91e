//! End-to-end tests: the real platform, real PostgreSQL (store and coredms), real tenant apps run as
//! black boxes. One test binary (one link step); every test has its own database, tenants and folders,
//! so they run in parallel.

mod agreements;
mod api;
mod batch_ingest;
mod broker_isolation;
mod cdc;
mod constraints;
mod control_forgery;
mod coredms_conformance;
mod crash_recovery;
mod examples;
mod fairness;
mod faults;
mod hostile_apps;
mod hostile_files;
mod http_limits;
mod isolation;
mod lake;
mod loop_judgement;
mod misbehaving_apps;
mod names;
mod report_forgery;
mod retention;
mod sandbox;
mod secrets;
mod several_managers;
mod staging_rules;
mod stream;
mod topics;
mod waits;
