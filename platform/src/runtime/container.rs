//! Instances as containers through the Docker Engine API (`bollard`): Docker where there is one,
//! Podman's Docker-compatible service elsewhere. Not yet built: starting an instance with this
//! runtime fails with a message saying so.

use tokio_util::sync::CancellationToken;

use super::instance::{InstanceSpec, Started};
use super::process::Ended;

#[derive(Clone, Debug)]
pub struct Containers {
    pub socket: String,
}

impl Containers {
    pub async fn run(
        &self,
        _spec: InstanceSpec,
        _cancel: &CancellationToken,
        _on_start: impl FnOnce(Started) + Send,
        _output: impl FnMut(&[u8]) + Send + 'static,
    ) -> std::io::Result<Ended> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("the container runtime ({}) is not built yet; use `runtime: process`", self.socket),
        ))
    }

    pub async fn remove(&self, _id: &str) {}
}
