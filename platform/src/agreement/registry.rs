//! The agreements in force. A directory watcher (notify, plus a periodic rescan for missed events)
//! reloads `tenants/*.yaml` on change. A file that fails to parse is reported with every error and the
//! last good version of that tenant's agreement stays in force; deleting a file removes the tenant.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::Watcher;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{AgreementError, FieldError, ServiceAgreement};
use crate::tenant::TenantId;

/// What is in force at one moment, and what is wrong with the files that are not.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub in_force: BTreeMap<TenantId, Arc<ServiceAgreement>>,
    /// Files that failed to load, with every error. A tenant listed here may still have an older
    /// version in force.
    pub invalid: BTreeMap<PathBuf, Vec<FieldError>>,
}

impl Snapshot {
    pub fn get(&self, tenant: &TenantId) -> Option<&Arc<ServiceAgreement>> {
        self.in_force.get(tenant)
    }

    /// The mistakes in the tenant's agreement file (`<tenant>.yaml`) as last read; none when it is
    /// valid. While there are some, the version in force (if any) is the last valid one.
    pub fn errors_of(&self, tenant: &TenantId) -> Vec<FieldError> {
        self.invalid
            .iter()
            .filter(|(file, _)| file.file_stem().and_then(|s| s.to_str()) == Some(tenant.as_str()))
            .flat_map(|(_, errors)| errors.iter().cloned())
            .collect()
    }
}

/// A handle on the agreements in force; cheap to clone, always current.
#[derive(Clone)]
pub struct Agreements {
    rx: watch::Receiver<Arc<Snapshot>>,
}

impl Agreements {
    pub fn current(&self) -> Arc<Snapshot> {
        self.rx.borrow().clone()
    }

    pub fn get(&self, tenant: &TenantId) -> Option<Arc<ServiceAgreement>> {
        self.rx.borrow().get(tenant).cloned()
    }

    /// A receiver that wakes on every change of the snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.rx.clone()
    }

    /// Loads `dir` once and keeps it loaded until `shutdown`.
    pub fn watch(dir: PathBuf, rescan: Duration, shutdown: CancellationToken) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let first = load_dir(&dir, &Snapshot::default());
        let (tx, rx) = watch::channel(Arc::new(first));
        let (event_tx, mut events) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                let _ = event_tx.send(());
            }
        })?;
        watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
        tokio::spawn(async move {
            let _watcher = watcher; // dropped, and so unwatched, when this task ends
            let mut tick = tokio::time::interval(rescan);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    Some(()) = events.recv() => {
                        // Editors write a file in several steps; let them finish before reading.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        while events.try_recv().is_ok() {}
                    }
                    _ = tick.tick() => {}
                }
                let previous = tx.borrow().clone();
                let next = load_dir(&dir, &previous);
                if !same(&previous, &next) {
                    tx.send_replace(Arc::new(next));
                }
            }
        });
        Ok(Agreements { rx })
    }
}

fn same(a: &Snapshot, b: &Snapshot) -> bool {
    a.invalid == b.invalid
        && a.in_force.len() == b.in_force.len()
        && a.in_force.iter().zip(&b.in_force).all(|((ta, aa), (tb, ab))| ta == tb && aa == ab)
}

/// Reads every `*.yaml`/`*.yml` in `dir`. Invalid files keep `previous`'s version of their tenant.
pub fn load_dir(dir: &Path, previous: &Snapshot) -> Snapshot {
    let mut next = Snapshot::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "cannot read the agreements folder; keeping what is in force");
            return previous.clone();
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
        .collect();
    paths.sort();
    for path in paths {
        match ServiceAgreement::load(&path) {
            Ok(a) => {
                if previous.get(&a.tenant).map(|p| p.as_ref()) != Some(&a) {
                    tracing::info!(tenant = %a.tenant, file = %path.display(), "service agreement in force");
                }
                next.in_force.insert(a.tenant.clone(), Arc::new(a));
            }
            Err(AgreementError { file, errors }) => {
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
                let kept = TenantId::parse(stem).ok().and_then(|t| previous.get(&t).cloned().map(|a| (t, a)));
                if previous.invalid.get(&file) != Some(&errors) {
                    let report = AgreementError { file: file.clone(), errors: errors.clone() };
                    match &kept {
                        Some(_) => {
                            tracing::error!("invalid service agreement, the previous version stays in force: {report}")
                        }
                        None => tracing::error!("invalid service agreement, tenant not in force: {report}"),
                    }
                }
                if let Some((t, a)) = kept {
                    next.in_force.insert(t, a);
                }
                next.invalid.insert(file, errors);
            }
        }
    }
    for tenant in previous.in_force.keys() {
        if !next.in_force.contains_key(tenant) {
            tracing::info!(%tenant, "service agreement removed; tenant no longer in force");
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "version: 1\ntenant: acme\nname: Acme\napps: {max_apps: 3}\n";

    #[test]
    fn an_invalid_edit_keeps_the_last_good_version() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("acme.yaml");
        std::fs::write(&file, GOOD).unwrap();
        let first = load_dir(dir.path(), &Snapshot::default());
        let acme = TenantId::parse("acme").unwrap();
        assert_eq!(first.get(&acme).unwrap().apps.max_apps, 3);

        std::fs::write(&file, "version: 1\ntenant: acme\nname: Acme\napps: {max_apps: lots}\n").unwrap();
        let second = load_dir(dir.path(), &first);
        assert_eq!(second.get(&acme).unwrap().apps.max_apps, 3, "last good version stays");
        assert_eq!(second.invalid[&file][0].field, "apps.max_apps");

        std::fs::remove_file(&file).unwrap();
        let third = load_dir(dir.path(), &second);
        assert!(third.in_force.is_empty() && third.invalid.is_empty());
    }

    #[test]
    fn an_invalid_new_file_is_not_in_force() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("new.yaml"), "version: 1\ntenant: new\n").unwrap();
        let s = load_dir(dir.path(), &Snapshot::default());
        assert!(s.in_force.is_empty());
        assert_eq!(s.invalid.len(), 1);
    }
}
