//! Running tenants' programs as black boxes. `process` runs one program under limits (the batch
//! runner's unit); `instance` is the stream manager's interface over two runtimes, `process` and
//! `container`.

pub mod container;
pub mod instance;
pub mod log;
pub mod process;
pub mod resident;
pub mod sandbox;
pub mod spawn;
