//! The agreement's limits on files and on the disk a tenant uses, checked before any app runs or any
//! upload is kept. Each refusal names the limit and the value that broke it, and carries a stable
//! machine-readable reason.

use super::{BatchAgreement, Format, Route, ServiceAgreement};
use crate::domain::Reason;
use crate::units::ByteSize;

#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Stable, for filtering and statistics (see `Reason`).
    pub reason: Reason,
    pub detail: String,
}

fn refuse(reason: Reason, detail: String) -> Refusal {
    Refusal { reason, detail }
}

/// Checks that need only the file's name and size: route, format by extension, size.
pub fn precheck<'a>(
    agreement: &'a ServiceAgreement,
    name: &str,
    size: u64,
) -> Result<(&'a BatchAgreement, &'a Route, Format), Refusal> {
    let batch = agreement.batch.as_ref().ok_or_else(|| {
        refuse(Reason::NoBatchAgreement, format!("tenant {} has no batch section in its agreement", agreement.tenant))
    })?;
    let format = Format::from_file_name(name);
    let allowed: Vec<&str> = batch.formats.iter().map(|f| f.name()).collect();
    let format = match format {
        Some(f) if batch.formats.contains(&f) => f,
        Some(f) => {
            return Err(refuse(Reason::Format, format!("{f} files are not allowed (formats: {})", allowed.join(", "))))
        }
        None => {
            let ext = name.rsplit_once('.').map_or("(none)".to_owned(), |(_, e)| format!(".{e}"));
            return Err(refuse(
                Reason::Format,
                format!("extension {ext} is not a supported format (formats: {})", allowed.join(", ")),
            ));
        }
    };
    let route = agreement.route_for(name).ok_or_else(|| {
        let patterns: Vec<&str> = batch.routes.iter().map(|r| r.files.as_str()).collect();
        refuse(Reason::NoRoute, format!("no route matches `{name}` (routes: {})", patterns.join(", ")))
    })?;
    if size == 0 {
        return Err(refuse(Reason::EmptyFile, "the file is empty".into()));
    }
    if size > batch.max_file_size.0 {
        return Err(refuse(
            Reason::MaxFileSize,
            format!("file is {} ({size} bytes), over max_file_size {}", ByteSize(size), batch.max_file_size),
        ));
    }
    Ok((batch, route, format))
}

/// The rolling-window limits, given what was admitted already.
/// The tenant's disk quota: what its files take on the platform (`used`) plus this file.
pub fn disk(quota: ByteSize, used: i64, size: u64) -> Result<(), Refusal> {
    let after = used.max(0) as u64 + size;
    if after > quota.0 {
        return Err(refuse(
            Reason::DiskQuota,
            format!(
                "the tenant's files on the platform (uploads waiting in staging, files on their way, quarantined, app versions) take {}; this file's {} would make {}, over disk_quota {}",
                ByteSize(used.max(0) as u64),
                ByteSize(size),
                ByteSize(after),
                quota
            ),
        ));
    }
    Ok(())
}

pub fn rates(batch: &BatchAgreement, size: u64, files_last_hour: i64, bytes_last_day: i64) -> Result<(), Refusal> {
    if files_last_hour as u64 + 1 > batch.max_files_per_hour {
        return Err(refuse(
            Reason::MaxFilesPerHour,
            format!(
                "{files_last_hour} files admitted in the last hour, max_files_per_hour is {}",
                batch.max_files_per_hour
            ),
        ));
    }
    let after = bytes_last_day as u64 + size;
    if after > batch.max_bytes_per_day.0 {
        return Err(refuse(
            Reason::MaxBytesPerDay,
            format!(
                "{} admitted in the last 24h plus this file's {} is {}, over max_bytes_per_day {}",
                ByteSize(bytes_last_day as u64),
                ByteSize(size),
                ByteSize(after),
                batch.max_bytes_per_day
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn zoo() -> ServiceAgreement {
        let text = r#"
version: 1
tenant: zoo
name: Zoo
batch:
  routes: [{files: "*.csv", app: t, timeout: 1m, memory: 64MiB}]
  formats: [csv, jsonl]
  max_file_size: 1MiB
  max_files_per_hour: 2
  max_bytes_per_day: 3MiB
  max_concurrent_jobs: 1
"#;
        ServiceAgreement::from_yaml(Path::new("zoo.yaml"), text).unwrap()
    }

    #[test]
    fn each_limit_is_named_with_its_value() {
        let a = zoo();
        let cases = [
            ("x.xml", 10, Reason::Format, "extension .xml"),
            ("x.jsonl", 10, Reason::NoRoute, "no route matches `x.jsonl`"),
            ("x.csv", 0, Reason::EmptyFile, "empty"),
            ("x.csv", 2 << 20, Reason::MaxFileSize, "file is 2MiB (2097152 bytes), over max_file_size 1MiB"),
        ];
        for (name, size, reason, detail) in cases {
            let r = precheck(&a, name, size).unwrap_err();
            assert_eq!(r.reason, reason);
            assert!(r.detail.contains(detail), "{} should contain {detail}", r.detail);
        }
        assert!(precheck(&a, "x.csv", 10).is_ok());
    }

    #[test]
    fn rolling_windows() {
        let a = zoo();
        let b = a.batch.as_ref().unwrap();
        assert!(rates(b, 10, 1, 0).is_ok());
        let r = rates(b, 10, 2, 0).unwrap_err();
        assert_eq!(
            (r.reason, r.detail.as_str()),
            (Reason::MaxFilesPerHour, "2 files admitted in the last hour, max_files_per_hour is 2")
        );
        let r = rates(b, 2 << 20, 0, 2 << 20).unwrap_err();
        assert_eq!(r.reason, Reason::MaxBytesPerDay);
        assert!(r.detail.contains("over max_bytes_per_day 3MiB"), "{}", r.detail);
    }
}
