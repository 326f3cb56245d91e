//! Instances as containers through the Docker Engine API (`bollard`): Docker where there is one,
//! Podman's Docker-compatible service elsewhere.
//!
//! No registry is reachable, so the platform makes each app version's image itself, from the
//! installed app: its folder under `/app`, plus every shared library its ELF programs need, read from
//! their `PT_INTERP` and `DT_NEEDED` entries in process (the tenant's program is never run on the
//! host, as `ldd` would) and taken only from the host's system library folders, on an empty base
//! with an `/etc/passwd` naming the tenant's account. An app whose entrypoint is a script needs its
//! interpreter in the archive; a static or dynamically linked program just works.
//!
//! Images are named `localhost/mysimbdp/<tenant>/<app id>-<digest>`: the app's id is unique across
//! tenants and the digest is the image's own content, so an existing image of that name is exactly
//! the one wanted, and one tenant's name can never select another's image.
//!
//! The container gets the same boundary as the process sandbox: the tenant's uid and gid, every
//! capability dropped, `no-new-privileges`, a read-only root with private tmpfs `/work` (its home) and
//! `/tmp`, the agreement's memory (no swap beyond it), CPU and process limits. It uses the host's
//! network, because the broker and the coredms it must reach listen on the host's loopback here; both
//! check credentials of their own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

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
use super::sandbox::{paths, Account};
use crate::domain::AppId;
use crate::tenant::TenantId;

/// The repository part of an app's image names (the content digest follows).
pub fn image_repository(tenant: &TenantId, app: AppId) -> String {
    // A tenant id may end in `-`, which an image name may not; the app id alone is unique anyway.
    format!("localhost/mysimbdp/{}/{}", tenant.as_str().trim_end_matches('-'), app.0.simple())
}

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

    /// Makes the app version's image unless one of the same content exists; returns its name.
    async fn ensure_image(&self, docker: &Docker, spec: &InstanceSpec) -> std::io::Result<String> {
        let (app_dir, account) = (spec.app_dir.clone(), spec.account.clone());
        let rootfs = tokio::task::spawn_blocking(move || root_filesystem(&app_dir, &account))
            .await
            .map_err(|e| io_err("building the image", e))??;
        let digest = hex::encode(Sha256::digest(&rootfs));
        // Podman's compatible API ignores `tag` on import; the digest is part of the name instead.
        let name = format!("{}-{}", spec.image, &digest[..32]);
        if docker.inspect_image(&name).await.is_ok() {
            return Ok(name);
        }
        let options = CreateImageOptionsBuilder::new().from_src("-").repo(&name).build();
        let mut progress = docker.create_image(Some(options), Some(bollard::body_full(rootfs.into())), None);
        while let Some(step) = progress.next().await {
            step.map_err(|e| io_err(&format!("importing image {name}"), e))?;
        }
        tracing::info!(image = %name, "built the app's image");
        Ok(name)
    }

    /// Runs the instance as a container until it ends: create (limits, user, mounts, environment),
    /// start, stream its logs, wait, and remove it whatever happened. Long on purpose: the container
    /// must be removed on every path out, which one body with one cleanup keeps visible.
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
        let mut env: Vec<String> =
            spec.env.iter().filter(|(k, _)| k != "HOME").map(|(k, v)| format!("{k}={v}")).collect();
        env.push(format!("HOME={}", paths::WORK));
        let memory = spec.memory.0.min(i64::MAX as u64) as i64;
        let uid = spec.account.uid;
        // Podman takes no owner for a tmpfs: /work is open to the container's one user by its mode.
        let tmpfs: std::collections::HashMap<String, String> = [
            (paths::WORK.to_owned(), format!("rw,nosuid,nodev,size={memory},mode=1777")),
            ("/tmp".to_owned(), format!("rw,nosuid,nodev,size={memory},mode=1777")),
        ]
        .into();
        let body = ContainerCreateBody {
            image: Some(image),
            entrypoint: Some(vec![format!("{}/{}", paths::APP, spec.entrypoint)]),
            env: Some(env),
            user: Some(format!("{uid}:{uid}")),
            working_dir: Some(paths::WORK.into()),
            labels: Some([("mysimbdp.instance".to_owned(), spec.name.clone())].into()),
            host_config: Some(HostConfig {
                memory: Some(memory),
                memory_swap: Some(memory),
                nano_cpus: Some((spec.cpus * 1e9) as i64),
                pids_limit: Some(spec.pids.min(i64::MAX as u64) as i64),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                readonly_rootfs: Some(true),
                tmpfs: Some(tmpfs),
                // The broker and the coredms listen on the host's loopback (see the module doc).
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
        Ok(Ended { exit, stopped, elapsed, result: None })
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
/// load, `/etc/passwd` and `/etc/group` naming the tenant's account, and the mount points. Built the
/// same way every time (sorted, times and owners zeroed), so equal content has an equal digest.
fn root_filesystem(app_dir: &Path, account: &Account) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    for (dir, mode) in [("app", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("work", 0o755)] {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        tar.append_data(&mut h, dir, std::io::empty())?;
    }
    let (uid, name) = (account.uid, &account.name);
    let passwd = format!(
        "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n{name}:x:{uid}:{uid}:{name}:{}:/bin/sh\n",
        paths::WORK
    );
    let group = format!("root:x:0:\n{name}:x:{uid}:\n");
    for (path, text) in [("etc/passwd", passwd), ("etc/group", group)] {
        let mut h = header(tar::EntryType::Regular, 0o644, text.len() as u64);
        tar.append_data(&mut h, path, text.as_bytes())?;
    }
    let mut files = BTreeMap::new();
    collect(app_dir, app_dir, &mut files)?;
    let mut libraries = BTreeSet::new();
    for (inside, entry) in &files {
        let at = Path::new("app").join(inside);
        match entry {
            AppEntry::Dir => {
                let mut h = header(tar::EntryType::Directory, 0o755, 0);
                tar.append_data(&mut h, &at, std::io::empty())?;
            }
            AppEntry::Link(target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                tar.append_link(&mut h, &at, target)?;
            }
            AppEntry::File(mode) => {
                let bytes = std::fs::read(app_dir.join(inside))?;
                libraries.extend(shared_libraries(&bytes));
                let mut h = header(tar::EntryType::Regular, *mode, bytes.len() as u64);
                tar.append_data(&mut h, &at, bytes.as_slice())?;
            }
        }
    }
    for lib in libraries {
        let inside = lib.strip_prefix("/").unwrap_or(&lib).to_owned();
        // The library's content at the path the loader asks for (links followed).
        let bytes = std::fs::read(&lib)?;
        let mut h = header(tar::EntryType::Regular, 0o755, bytes.len() as u64);
        tar.append_data(&mut h, inside, bytes.as_slice())?;
    }
    tar.into_inner()
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

enum AppEntry {
    Dir,
    Link(PathBuf),
    /// A regular file with its mode.
    File(u32),
}

/// Every entry under `dir`, by its path inside the app, without following links.
fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, AppEntry>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = std::fs::symlink_metadata(&path)?;
        let inside = path.strip_prefix(root).expect("under the app folder").to_owned();
        if meta.is_dir() {
            out.insert(inside, AppEntry::Dir);
            collect(root, &path, out)?;
        } else if meta.file_type().is_symlink() {
            out.insert(inside, AppEntry::Link(std::fs::read_link(&path)?));
        } else if meta.is_file() {
            out.insert(inside, AppEntry::File(meta.permissions().mode() & 0o755));
        }
    }
    Ok(())
}

/// The host's folders a program's libraries may come from: the system's own, nothing a tenant or
/// another program could have placed (an ELF may name any path; only these are ever read).
fn library_dirs() -> Vec<PathBuf> {
    let multiarch = format!("{}-linux-gnu", std::env::consts::ARCH);
    ["/lib", "/usr/lib", "/lib64", "/usr/lib64"]
        .iter()
        .flat_map(|d| [Path::new(d).join(&multiarch), PathBuf::from(d)])
        .collect()
}

/// The loader and the shared libraries an ELF program needs, transitively, found in the system's
/// library folders (as the loader would look when it has no cache). Not an ELF, or one that does not
/// parse: nothing (the program will fail to start in its container and say so in its log).
fn shared_libraries(program: &[u8]) -> Vec<PathBuf> {
    let dirs = library_dirs();
    let allowed = |p: &Path| {
        let Ok(real) = p.canonicalize() else { return false };
        dirs.iter().filter_map(|d| d.canonicalize().ok()).any(|d| real.starts_with(d)) && real.is_file()
    };
    let Some((interpreter, needed)) = elf_dependencies(program) else { return Vec::new() };
    let mut found = Vec::new();
    if let Some(interp) = interpreter.map(PathBuf::from).filter(|p| p.is_absolute() && allowed(p)) {
        found.push(interp);
    }
    let mut queue: Vec<String> = needed;
    let mut seen = BTreeSet::new();
    while let Some(name) = queue.pop() {
        // A name with a slash is a path the program chose: never read from the host.
        if name.contains('/') || !seen.insert(name.clone()) {
            continue;
        }
        let Some(path) = dirs.iter().map(|d| d.join(&name)).find(|p| allowed(p)) else { continue };
        if let Ok(bytes) = std::fs::read(&path) {
            if let Some((_, more)) = elf_dependencies(&bytes) {
                queue.extend(more);
            }
        }
        found.push(path);
    }
    found
}

/// `PT_INTERP` and the `DT_NEEDED` names of an ELF file.
fn elf_dependencies(bytes: &[u8]) -> Option<(Option<String>, Vec<String>)> {
    if bytes.get(..4) != Some(b"\x7fELF") {
        return None;
    }
    let elf = goblin::elf::Elf::parse(bytes).ok()?;
    Some((elf.interpreter.map(str::to_owned), elf.libraries.iter().map(|l| (*l).to_owned()).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_programs_libraries_are_read_from_its_headers_and_only_from_system_folders() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let libs = shared_libraries(&me);
        let names: Vec<String> = libs.iter().filter_map(|p| p.file_name()?.to_str().map(str::to_owned)).collect();
        assert!(names.iter().any(|n| n.starts_with("libc.so")), "{libs:?}");
        assert!(names.iter().any(|n| n.starts_with("ld-linux")), "the loader: {libs:?}");
        let dirs = library_dirs();
        assert!(libs.iter().all(|l| dirs.iter().any(|d| l.starts_with(d))), "{libs:?}");
        // Not an ELF, or an ELF cut short: nothing, no panic.
        assert!(shared_libraries(b"#!/bin/sh\n").is_empty());
        assert!(shared_libraries(&me[..200]).is_empty());
    }

    #[test]
    fn image_names_cannot_collide_across_tenants() {
        let app = AppId::now();
        let a = image_repository(&TenantId::parse("acme-eu").unwrap(), app);
        let b = image_repository(&TenantId::parse("acme").unwrap(), app);
        assert_ne!(a, b);
        assert!(a.ends_with(&app.0.simple().to_string()) && a.contains("/acme-eu/"), "{a}");
    }
}
