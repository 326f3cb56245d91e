//! The app registry: tenants' programs, installed as versions under `<data>/apps/<tenant>/<name>/<version>/`
//! and recorded in the store. An app is one executable, or a `.tar.gz` holding `app.yaml`
//! (`name`, `kind`, `entrypoint`, `version`) and its files. The platform never looks inside beyond that.

mod unpack;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use crate::agreement::validate_app_name;
use crate::agreement::ServiceAgreement;
use crate::domain::AppId;
use crate::store::{self, apps::App, Db};
use crate::tenant::TenantId;
use crate::units::ByteSize;

pub use unpack::unpack_tar_gz;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{what} exceeds the agreement's max_app_size of {limit}")]
    TooLarge { what: &'static str, limit: ByteSize },
    #[error("unsafe archive: {0}")]
    UnsafeArchive(String),
    #[error("not a valid .tar.gz archive: {0}")]
    BadArchive(String),
    #[error("app.yaml: {0}")]
    Manifest(String),
    #[error("invalid app: {0}")]
    Invalid(String),
    #[error("the agreement allows at most {limit} apps and all are in use")]
    TooManyApps { limit: u64 },
    #[error("{0}")]
    DiskQuota(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("platform store: {0}")]
    Store(#[from] sqlx::Error),
}

pub use crate::domain::AppKind;

/// `app.yaml` inside an archive.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub kind: AppKind,
    /// Path of the program inside the archive, run as `<entrypoint> <input-file>`.
    pub entrypoint: String,
    /// The tenant's own version label, kept for display; the platform numbers versions itself.
    pub version: String,
}

/// How an install names the app when the upload is a bare executable (archives name themselves).
pub struct InstallRequest<'a> {
    pub name: Option<&'a str>,
    pub kind: AppKind,
}

pub struct Registry {
    db: Db,
    root: PathBuf,
}

fn is_gzip(path: &Path) -> std::io::Result<bool> {
    let mut magic = [0u8; 2];
    let n = fs::File::open(path)?.read(&mut magic)?;
    Ok(n == 2 && magic == [0x1f, 0x8b])
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut fs::File::open(path)?, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

impl Registry {
    pub fn new(db: Db, data_dir: &Path) -> std::io::Result<Self> {
        let root = crate::config::private_dir(&data_dir.join("apps"))?;
        fs::create_dir_all(root.join(".incoming"))?;
        Ok(Registry { db, root })
    }

    /// Removes uploads and installs a crash cut short. Only for the serving platform at start: a
    /// one-off command must not pull files from under a running platform's uploads.
    pub fn clean_incoming(&self) -> std::io::Result<()> {
        let incoming = self.root.join(".incoming");
        fs::remove_dir_all(&incoming)?;
        fs::create_dir_all(&incoming)
    }

    /// Installs `source` (already on this machine) as the next version of the app.
    pub async fn install(
        &self,
        agreement: &ServiceAgreement,
        req: InstallRequest<'_>,
        source: &Path,
    ) -> Result<App, AppError> {
        let tenant = &agreement.tenant;
        let limit = agreement.apps.max_app_size;
        let size = fs::metadata(source)?.len();
        if size > limit.0 {
            return Err(AppError::TooLarge { what: "upload", limit });
        }
        let staging = self.root.join(".incoming").join(Uuid::new_v4().to_string());
        fs::create_dir_all(&staging)?;
        let result = self.install_from(agreement, req, source, &staging).await;
        let _ = fs::remove_dir_all(&staging);
        if let Err(e) = &result {
            tracing::warn!(%tenant, error = %e, "app install refused");
        }
        result
    }

    /// The install's steps in order: receive, unpack or take the executable, read the manifest,
    /// check the agreement's limits (apps, versions, disk), then record and move into place under
    /// the tenant's lock. Long on purpose: each step's refusal is named where it happens.
    async fn install_from(
        &self,
        agreement: &ServiceAgreement,
        req: InstallRequest<'_>,
        source: &Path,
        staging: &Path,
    ) -> Result<App, AppError> {
        let tenant = &agreement.tenant;
        let sha256 = {
            let s = source.to_owned();
            tokio::task::spawn_blocking(move || sha256_file(&s)).await.map_err(std::io::Error::other)??
        };
        let (name, kind, entrypoint) = if is_gzip(source)? {
            let (src, dst, limit) = (source.to_owned(), staging.to_owned(), agreement.apps.max_app_size);
            tokio::task::spawn_blocking(move || unpack_tar_gz(fs::File::open(&src)?, &dst, limit))
                .await
                .map_err(std::io::Error::other)??;
            let manifest = read_manifest(staging)?;
            if let Some(asked) = req.name {
                if asked != manifest.name {
                    return Err(AppError::Invalid(format!(
                        "app.yaml names the app `{}` but the upload is for `{asked}`",
                        manifest.name
                    )));
                }
            }
            (manifest.name, manifest.kind, manifest.entrypoint)
        } else {
            let name =
                req.name.ok_or_else(|| AppError::Invalid("a single-executable app needs a name".into()))?.to_owned();
            validate_app_name(&name).map_err(AppError::Invalid)?;
            fs::copy(source, staging.join(&name))?;
            fs::set_permissions(staging.join(&name), fs::Permissions::from_mode(0o755))?;
            (name.clone(), req.kind, name)
        };
        let size_bytes = fs::metadata(source)?.len() as i64;
        let used = store::jobs::disk_usage(&self.db, tenant).await?;
        crate::agreement::limits::disk(agreement.disk_quota, used, size_bytes as u64)
            .map_err(|r| AppError::DiskQuota(r.detail))?;
        if let Some(newest) = store::apps::resolve(&self.db, tenant, &name, None).await? {
            if newest.sha256 == sha256 && newest.kind == kind {
                tracing::info!(%tenant, app = %name, version = newest.version, "same content as the newest version; nothing installed");
                return Ok(newest);
            }
        }

        let mut tx = self.db.begin().await?;
        let version = store::apps::next_version(&mut tx, tenant, &name).await?;
        if version == 1 && store::apps::count_names(&mut tx, tenant).await? >= agreement.apps.max_apps as i64 {
            return Err(AppError::TooManyApps { limit: agreement.apps.max_apps });
        }
        let dir = self.root.join(tenant.as_str()).join(&name).join(version.to_string());
        if dir.exists() {
            fs::remove_dir_all(&dir)?; // left by an install that crashed before committing
        }
        fs::create_dir_all(dir.parent().expect("app dir has a parent"))?;
        // The app's own uid reads it inside the sandbox; the folders above it stay the platform's.
        fs::set_permissions(staging, fs::Permissions::from_mode(0o755))?;
        fs::rename(staging, &dir)?;
        let app = App {
            id: AppId::now(),
            tenant: tenant.clone(),
            name,
            version,
            kind,
            entrypoint,
            dir: dir.to_string_lossy().into_owned(),
            sha256,
            size_bytes,
            created_at: chrono::Utc::now(),
        };
        store::apps::insert(&mut tx, &app).await?;
        // Versions beyond `max_versions` go, oldest first, unless something uses them: a route pinned
        // to one, a job running it, an instance of it wanted running.
        let pinned: Vec<i32> = agreement
            .batch
            .iter()
            .flat_map(|b| &b.routes)
            .filter(|r| r.app == app.name)
            .filter_map(|r| r.app_version)
            .collect();
        let keep = agreement.apps.max_versions as i32;
        let pruned = store::apps::prune_versions(&mut tx, tenant, &app.name, version - keep, &pinned).await?;
        tx.commit().await?;
        for (old, dir) in &pruned {
            if let Err(e) = fs::remove_dir_all(dir) {
                tracing::warn!(%tenant, app = %app.name, version = old, error = %e, "removing an old version's folder failed");
            }
        }
        tracing::info!(%tenant, app = %app.name, version = app.version, kind = %app.kind, removed = ?pruned.iter().map(|p| p.0).collect::<Vec<_>>(), "app installed");
        Ok(app)
    }

    /// A fresh path for an upload on its way in, on the registry's file system so installing it is a
    /// rename. Leftovers of a crash are removed at the next start.
    pub fn incoming_path(&self) -> PathBuf {
        self.root.join(".incoming").join(format!("{}.upload", Uuid::new_v4()))
    }

    /// Deletes every version of an app, unless jobs are waiting for it or running it, or instances of
    /// it are wanted running. The rows go
    /// first: a crash before the folder is removed leaves a folder the next install replaces.
    pub async fn delete(&self, tenant: &TenantId, name: &str) -> Result<(), DeleteError> {
        let mut tx = self.db.begin().await?;
        store::apps::next_version(&mut tx, tenant, name).await?; // takes the app's lock
        let busy = store::apps::jobs_using(&mut tx, tenant, name).await?;
        if busy > 0 {
            return Err(DeleteError::InUse(busy));
        }
        store::apps::delete(&mut tx, tenant, name).await?;
        tx.commit().await?;
        let dir = self.root.join(tenant.as_str()).join(name);
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        tracing::info!(%tenant, app = name, "app deleted");
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("{0} jobs or stream instances are using the app (stop its instances first)")]
    InUse(i64),
    #[error("platform store: {0}")]
    Store(#[from] sqlx::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

fn read_manifest(dir: &Path) -> Result<Manifest, AppError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut text = String::new();
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(dir.join("app.yaml"))
        .and_then(|f| {
            if f.metadata()?.is_file() {
                (&f).take(1 << 20).read_to_string(&mut text)
            } else {
                Err(std::io::Error::other("not a regular file"))
            }
        });
    opened.map_err(|e| match (e.kind(), e.raw_os_error()) {
        (std::io::ErrorKind::NotFound, _) => AppError::Manifest("missing from the archive's top folder".into()),
        (_, Some(libc::ELOOP)) => AppError::Manifest("is a link; it must be a regular file".into()),
        _ => AppError::Manifest(e.to_string()),
    })?;
    let m: Manifest = serde_yaml::from_str(&text).map_err(|e| AppError::Manifest(e.to_string()))?;
    validate_app_name(&m.name).map_err(|e| AppError::Manifest(format!("name: {e}")))?;
    let entry = Path::new(&m.entrypoint);
    let inside =
        entry.components().all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir));
    if !inside {
        return Err(AppError::Manifest(format!("entrypoint: `{}` must be a path inside the archive", m.entrypoint)));
    }
    let target = dir.join(entry);
    let meta = fs::symlink_metadata(&target)
        .map_err(|_| AppError::Manifest(format!("entrypoint: `{}` is not in the archive", m.entrypoint)))?;
    if meta.file_type().is_symlink() {
        return Err(AppError::Manifest(format!(
            "entrypoint: `{}` is a link; it must be the program itself",
            m.entrypoint
        )));
    }
    if !meta.is_file() {
        return Err(AppError::Manifest(format!("entrypoint: `{}` is not a regular file", m.entrypoint)));
    }
    fs::set_permissions(&target, fs::Permissions::from_mode(meta.permissions().mode() | 0o555))?;
    Ok(m)
}
