//! Running tenants' programs as black boxes. `process` runs one program to completion under limits;
//! the batch runner uses it now and the stream supervisor will share it.

pub mod log;
pub mod process;
pub mod spawn;
