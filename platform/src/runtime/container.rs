//! Instances as containers through the Docker Engine API (`bollard`): Docker where there is one,
//! Podman's Docker-compatible service elsewhere.
//!
//! No registry is reachable, so the platform makes each app version's image itself, from the
//! installed app: its folder under `/app`, plus every shared library its ELF programs need (as `ldd`
//! lists them, at the same paths), on an empty base. An app whose entrypoint is a script needs its
//! interpreter in the archive; a static or dynamically linked program just works. The container gets
//! the agreement's memory limit (and no swap beyond it) and CPU share, the host's network (the
//! broker and coredms are on loopback here), the contract's environment, and `/tmp` as its home.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder, WaitContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::instance::{InstanceSpec, Started};
use super::process::{start_ticks, Ended, Exit, Stopped};

#[derive(Clone, Debug)]
pub struct Containers {
    /// `unix:///path/to/docker.sock` (Podman's service speaks the same API).
    pub socket: String,
}

fn io_err(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

impl Containers {
    fn connect(&self) -> std::io::Result<Docker> {
        Docker::connect_with_unix(&self.socket, 120, bollard::API_DEFAULT_VERSION)
            .map_err(|e| io_err(&format!("the Docker Engine API at {}", self.socket), e))
    }

    /// Makes the app version's image unless it exists; returns its name.
    async fn ensure_image(&self, docker: &Docker, spec: &InstanceSpec) -> std::io::Result<String> {
        let name = format!("localhost/{}", spec.image);
        if docker.inspect_image(&name).await.is_ok() {
            return Ok(name);
        }
        let app_dir = spec.app_dir.clone();
        let rootfs = tokio::task::spawn_blocking(move || root_filesystem(&app_dir))
            .await
            .map_err(|e| io_err("building the image", e))??;
        // Podman's compatible API ignores `tag` on import; the version is part of the name instead.
        let options = CreateImageOptionsBuilder::new().from_src("-").repo(&name).build();
        let mut progress = docker.create_image(Some(options), Some(bollard::body_full(rootfs.into())), None);
        while let Some(step) = progress.next().await {
            step.map_err(|e| io_err(&format!("importing image {name}"), e))?;
        }
        tracing::info!(image = %name, "built the app's image");
        Ok(name)
    }

    pub async fn run(
        &self,
        spec: InstanceSpec,
        cancel: &CancellationToken,
        on_start: impl FnOnce(Started) + Send,
        mut output: impl FnMut(&[u8]) + Send + 'static,
    ) -> std::io::Result<Ended> {
        let docker = self.connect()?;
        let image = self.ensure_image(&docker, &spec).await?;
        // A container of the same name is one a crashed platform left: never run an instance twice.
        self.remove(&spec.name).await;
        let env: Vec<String> = spec
            .env
            .iter()
            .map(|(k, v)| if k == "HOME" { "HOME=/tmp".to_owned() } else { format!("{k}={v}") })
            .collect();
        let memory = spec.memory.0.min(i64::MAX as u64) as i64;
        let body = ContainerCreateBody {
            image: Some(image),
            entrypoint: Some(vec![format!("/app/{}", spec.entrypoint)]),
            env: Some(env),
            working_dir: Some("/tmp".into()),
            labels: Some([("mysimbdp.instance".to_owned(), spec.name.clone())].into()),
            host_config: Some(HostConfig {
                memory: Some(memory),
                memory_swap: Some(memory),
                nano_cpus: Some((spec.cpus * 1e9) as i64),
                network_mode: Some("host".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(&spec.name).build();
        let created =
            docker.create_container(Some(options), body).await.map_err(|e| io_err("creating the container", e))?;
        let id = created.id;
        let started = Instant::now();
        if let Err(e) = docker.start_container(&id, None).await {
            self.remove(&id).await;
            return Err(io_err("starting the container", e));
        }
        let pid = docker.inspect_container(&id, None).await.ok().and_then(|i| i.state?.pid).filter(|p| *p > 0);
        let pid = pid.map(|p| p as u32);
        on_start(Started { pid, start_ticks: pid.and_then(start_ticks), container: Some(id.clone()) });

        let logs = {
            let docker = docker.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let options = LogsOptionsBuilder::new().follow(true).stdout(true).stderr(true).build();
                let mut stream = docker.logs(&id, Some(options));
                while let Some(Ok(chunk)) = stream.next().await {
                    output(&chunk.into_bytes());
                }
            })
        };
        let mut stopped = Stopped::No;
        let mut wait = docker.wait_container(&id, None::<WaitContainerOptions>);
        let status = tokio::select! {
            s = wait.next() => s,
            _ = cancel.cancelled() => {
                stopped = Stopped::Cancelled;
                let grace = spec.grace.as_secs().max(1) as i32;
                let _ = docker.stop_container(&id, Some(StopContainerOptionsBuilder::new().t(grace).build())).await;
                wait.next().await
            }
        };
        let code = match status {
            Some(Ok(r)) => r.status_code,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => {
                logs.abort();
                self.remove(&id).await;
                return Err(io_err("waiting for the container", e));
            }
            None => -1,
        };
        let elapsed = started.elapsed();
        let _ = tokio::time::timeout(Duration::from_secs(5), logs).await;
        if stopped == Stopped::No {
            let oom = docker.inspect_container(&id, None).await.ok().and_then(|i| i.state?.oom_killed);
            if oom == Some(true) {
                stopped = Stopped::OverMemory { resident: None, limit: spec.memory };
            }
        }
        self.remove(&id).await;
        // The engine reports death by a signal as 128 + the signal, as a shell does.
        let exit = if code > 128 && code < 160 { Exit::Signal((code - 128) as i32) } else { Exit::Code(code as i32) };
        Ok(Ended { exit, stopped, elapsed })
    }

    /// Removes a container (stopping it first if it runs); nothing if there is none.
    pub async fn remove(&self, id: &str) {
        let Ok(docker) = self.connect() else { return };
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match docker.remove_container(id, Some(options)).await {
            Ok(()) => tracing::debug!(container = id, "container removed"),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(e) => tracing::warn!(container = id, error = %e, "removing a container failed"),
        }
    }
}

/// The image's root file system as a tar archive: the app under `/app`, the libraries its programs
/// load, and `/tmp`.
fn root_filesystem(app_dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o1777);
    dir.set_size(0);
    tar.append_data(&mut dir, "tmp", std::io::empty())?;
    let mut libraries = BTreeSet::new();
    let mut stack = vec![app_dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let inside = Path::new("app").join(path.strip_prefix(app_dir).expect("under the app folder"));
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                tar.append_path_with_name(&path, &inside)?;
                if is_elf(&path) {
                    libraries.extend(shared_libraries(&path)?);
                }
            }
        }
    }
    for lib in libraries {
        let inside = lib.strip_prefix("/").unwrap_or(&lib).to_owned();
        // The library's content at the path the loader asks for (links followed).
        let mut header = tar::Header::new_gnu();
        let bytes = std::fs::read(&lib)?;
        header.set_size(bytes.len() as u64);
        header.set_mode(0o755);
        tar.append_data(&mut header, inside, bytes.as_slice())?;
    }
    tar.into_inner()
}

fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == *b"\x7fELF"
}

/// The libraries `ldd` says a program loads, and its loader.
fn shared_libraries(program: &Path) -> std::io::Result<Vec<PathBuf>> {
    let out = std::process::Command::new("ldd").arg(program).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.trim().split(' ').next()?,
                None => l.split(' ').next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}
