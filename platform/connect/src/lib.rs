//! Connectors mysimbdp runs for its tenants. Each runs as a tenant's stream instance does: in the
//! tenant's sandbox, with the tenant's credentials and nothing else, supervised by the stream manager.

pub mod cdc;
pub mod documents;
pub mod lake;
pub mod process;
pub mod publish;
pub mod report;
