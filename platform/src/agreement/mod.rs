//! Service agreements: the per-tenant YAML files in `tenants/` that every limit of the platform comes from.
//!
//! `ServiceAgreement::from_yaml` parses and validates a whole file and reports every error at once
//! (file, field, reason). `registry` keeps the agreements in force and hot-reloads them.

mod connectors;
mod fields;
pub mod limits;
pub mod registry;
mod sinks;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::Value;

pub use connectors::{SecretsAgreement, SnapshotMode, Source};
pub use fields::FieldError;
use fields::{duration, integer, positive_number, size, string, Errors, Section};
pub use sinks::{Column, ColumnKind, Columns, Lake, Sink, SinkKind};

use crate::tenant::TenantId;
use crate::units::ByteSize;

/// The only agreement schema version this build understands.
pub const SCHEMA_VERSION: u64 = 1;

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ServiceAgreement {
    pub version: u64,
    pub tenant: TenantId,
    pub name: String,
    /// Absent: the tenant has no batch ingestion; files in its staging folder are left alone.
    pub batch: Option<BatchAgreement>,
    /// Absent: the tenant has no stream ingestion.
    pub stream: Option<StreamAgreement>,
    pub apps: AppsAgreement,
    /// What the tenant's coredms login may take of the shared server.
    pub coredms: CoreDmsAgreement,
    /// What the tenant's files may take of the platform's disk: files being ingested, quarantined
    /// files and installed app versions.
    pub disk_quota: ByteSize,
    /// What the tenant may keep as secrets (see `crate::secrets`).
    pub secrets: SecretsAgreement,
    /// Connectors the platform runs for the tenant, each as one of its stream instances.
    pub sources: Vec<Source>,
    /// Connectors copying the tenant's topics out (a lake, the coredms), each one of its stream instances.
    pub sinks: Vec<Sink>,
}

/// The disk quota of an agreement that does not set one.
pub const DEFAULT_DISK_QUOTA: ByteSize = ByteSize(10 << 30);

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CoreDmsAgreement {
    /// Connections the tenant's login may hold at once (PostgreSQL's per-role connection limit).
    pub max_connections: u64,
    /// A statement running longer is cancelled.
    #[serde(serialize_with = "crate::units::serialize_duration")]
    pub statement_timeout: Duration,
    /// A session idle this long inside a transaction (holding its locks) is closed.
    #[serde(serialize_with = "crate::units::serialize_duration")]
    pub idle_in_transaction_timeout: Duration,
}

impl Default for CoreDmsAgreement {
    fn default() -> Self {
        CoreDmsAgreement {
            max_connections: 32,
            statement_timeout: Duration::from_secs(15 * 60),
            idle_in_transaction_timeout: Duration::from_secs(5 * 60),
        }
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BatchAgreement {
    /// First match wins.
    pub routes: Vec<Route>,
    pub formats: Vec<Format>,
    pub max_file_size: ByteSize,
    pub max_files_per_hour: u64,
    pub max_bytes_per_day: ByteSize,
    pub max_concurrent_jobs: u64,
    /// Extra attempts after the first failed one.
    pub retries: u64,
    /// A file not renamed into place is taken once unchanged for this long.
    #[serde(serialize_with = "crate::units::serialize_duration")]
    pub min_file_age: Duration,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Route {
    /// Glob on the file name (`*` and `?`).
    pub files: String,
    pub app: String,
    /// `app: name@3` pins version 3; otherwise the newest installed version runs.
    pub app_version: Option<i32>,
    #[serde(serialize_with = "crate::units::serialize_duration")]
    pub timeout: Duration,
    pub memory: ByteSize,
    /// CPU seconds the app may use (RLIMIT_CPU); absent means bounded by `timeout` only.
    #[serde(serialize_with = "crate::units::serialize_opt_duration")]
    pub cpu_time: Option<Duration>,
    /// CPUs' worth of time the app may use at once (its cgroup's quota); absent: no cap.
    pub cpus: Option<f64>,
    /// Processes and threads the app may have at once (its cgroup's `pids.max`).
    pub max_processes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Tsv,
    Jsonl,
    Json,
}

impl Format {
    pub const ALL: [Format; 4] = [Format::Csv, Format::Tsv, Format::Jsonl, Format::Json];

    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Tsv => "tsv",
            Format::Jsonl => "jsonl",
            Format::Json => "json",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == s)
    }

    /// The format a file name claims by its extension (`.ndjson` is JSON lines too).
    pub fn from_file_name(name: &str) -> Option<Format> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "ndjson" => Some(Format::Jsonl),
            other => Format::parse(other),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StreamAgreement {
    pub topics: Vec<Topic>,
    /// The topics each named app reads, without the tenant prefix (each in `topics` or written by
    /// a source); an app not named here reads every topic in `topics`.
    pub inputs: std::collections::BTreeMap<String, Vec<String>>,
    pub max_instances: u64,
    pub restart: RestartPolicy,
    #[serde(serialize_with = "crate::units::serialize_duration")]
    pub report_interval: Duration,
    pub thresholds: Thresholds,
    pub on_breach: BreachAction,
    /// The largest message a producer may write to the tenant's topics (the topics' `max.message.bytes`);
    /// the example apps also reject larger ones they meet.
    pub max_message_size: ByteSize,
    /// Memory of each instance: its cgroup's limit (a container's, or the sandbox's).
    pub memory: ByteSize,
    /// CPUs' worth of time each instance may use at once (its cgroup's quota, or the container's).
    pub cpus: f64,
    /// Processes and threads each instance may have at once.
    pub max_processes: u64,
    /// Between SIGTERM and SIGKILL when an instance is stopped.
    #[serde(serialize_with = "crate::units::serialize_duration")]
    pub stop_grace: Duration,
    /// How instances run: `process` (default) or `container` (through the Docker Engine API).
    pub runtime: RuntimeKind,
}

impl StreamAgreement {
    /// The topics app `app` reads, without the tenant prefix: its `inputs`, or every stream topic.
    pub fn inputs_of(&self, app: &str) -> Vec<&str> {
        match self.inputs.get(app) {
            Some(named) => named.iter().map(String::as_str).collect(),
            None => self.topics.iter().map(|t| t.name.as_str()).collect(),
        }
    }
}

/// A topic named for reading that the tenant neither declares nor has a source write.
pub(super) fn unknown_topic(t: &str) -> String {
    format!("topic `{t}` is neither in stream.topics nor written by one of the sources")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Process,
    Container,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Process => "process",
            RuntimeKind::Container => "container",
        }
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Topic {
    /// Without the tenant prefix; the broker topic is `<tenant>.<name>`.
    pub name: String,
    pub partitions: u64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RestartPolicy {
    pub policy: RestartMode,
    pub max_restarts: u64,
    #[serde(serialize_with = "crate::units::serialize_duration")]
    pub backoff: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    Never,
    OnFailure,
    Always,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Thresholds {
    pub min_processing_rate: f64,
    #[serde(serialize_with = "crate::units::serialize_duration")]
    pub max_avg_ingestion_time: Duration,
    pub breach_reports: u64,
    #[serde(serialize_with = "crate::units::serialize_duration")]
    pub cooldown: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreachAction {
    ScaleOut,
    Restart,
    Notify,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AppsAgreement {
    pub max_apps: u64,
    pub max_app_size: ByteSize,
    /// Versions kept of one app: installing one more removes the oldest that nothing uses.
    pub max_versions: u64,
}

/// Every error found in one agreement file.
#[derive(Debug, thiserror::Error)]
pub struct AgreementError {
    pub file: PathBuf,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for AgreementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(f, "{}: {n} error{}", self.file.display(), if n == 1 { "" } else { "s" })?;
        for e in &self.errors {
            write!(f, "\n  {}: {}", e.field, e.message)?;
        }
        Ok(())
    }
}

impl ServiceAgreement {
    /// Reads and validates `tenants/<tenant>.yaml`.
    pub fn load(path: &Path) -> Result<Self, AgreementError> {
        let text = std::fs::read_to_string(path).map_err(|e| AgreementError {
            file: path.to_owned(),
            errors: vec![FieldError { field: "(file)".into(), message: format!("cannot read: {e}") }],
        })?;
        Self::from_yaml(path, &text)
    }

    /// Parses `text`, the contents of `path`; the file stem must equal the `tenant` field.
    pub fn from_yaml(path: &Path, text: &str) -> Result<Self, AgreementError> {
        let fail = |errors: Vec<FieldError>| AgreementError { file: path.to_owned(), errors };
        let value: Value = serde_yaml::from_str(text).map_err(|e| {
            let at = e.location().map(|l| format!(" at line {}, column {}", l.line(), l.column())).unwrap_or_default();
            fail(vec![FieldError { field: "(syntax)".into(), message: format!("{e}{at}") }])
        })?;
        let mut errors = Errors::default();
        let agreement = parse(&value, &mut errors);
        if let Some(a) = &agreement {
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            if a.tenant.as_str() != stem {
                errors.push("tenant", format!("`{}` does not match the file name `{stem}`", a.tenant));
            }
        }
        match agreement {
            Some(a) if errors.0.is_empty() => Ok(a),
            _ => Err(fail(errors.0)),
        }
    }

    /// The route for a file name, if any.
    pub fn route_for(&self, file_name: &str) -> Option<&Route> {
        self.batch.as_ref()?.routes.iter().find(|r| glob_match(&r.files, file_name))
    }
}

fn parse(value: &Value, errors: &mut Errors) -> Option<ServiceAgreement> {
    let root = Section::new(
        value,
        "",
        &[
            "version",
            "tenant",
            "name",
            "batch",
            "stream",
            "apps",
            "coredms",
            "disk_quota",
            "secrets",
            "sources",
            "sinks",
        ],
        errors,
    )?;
    let disk_quota = root.optional("disk_quota", DEFAULT_DISK_QUOTA, errors, size);
    let version = root.required("version", errors, |v| match v.as_u64() {
        Some(SCHEMA_VERSION) => Ok(SCHEMA_VERSION),
        _ => Err(format!("unsupported agreement version (this platform reads version {SCHEMA_VERSION})")),
    });
    let tenant = root.required("tenant", errors, |v| TenantId::parse(&string(v)?));
    let name = root.required("name", errors, string);
    let batch = match root.get("batch") {
        Some(v) => parse_batch(v, &root.field("batch"), errors).map(Some),
        None => Some(None),
    };
    let sources = connectors::parse_sources(&root, errors);
    let stream = match root.get("stream") {
        Some(v) => parse_stream(v, &root.field("stream"), sources.as_deref(), errors).map(Some),
        None => Some(None),
    };
    let apps = match root.get("apps") {
        Some(v) => parse_apps(v, &root.field("apps"), errors),
        None => Some(AppsAgreement { max_apps: 10, max_app_size: ByteSize(50 << 20), max_versions: 5 }),
    };
    let coredms = match root.get("coredms") {
        Some(v) => parse_coredms(v, &root.field("coredms"), errors),
        None => Some(CoreDmsAgreement::default()),
    };
    let secrets = match root.get("secrets") {
        Some(v) => connectors::parse_secrets(v, &root.field("secrets"), errors),
        None => Some(SecretsAgreement::default()),
    };
    for connectors in ["sources", "sinks"] {
        let declared = root.get(connectors).and_then(Value::as_sequence).is_some_and(|l| !l.is_empty());
        if declared && matches!(stream, Some(None)) {
            errors.push(
                connectors,
                format!("{connectors} run as stream instances under the stream section's limits; add a stream section"),
            );
        }
    }
    let known = known_topics(stream.as_ref().and_then(Option::as_ref), sources.as_deref());
    let sinks = sinks::parse_sinks(&root, &known, errors);
    if let (Some(list), Some(Some(stream))) = (&sources, &stream) {
        check_source_partitions(list, stream, errors);
    }
    Some(ServiceAgreement {
        version: version?,
        tenant: tenant?,
        name: name?,
        batch: batch?,
        stream: stream?,
        apps: apps?,
        coredms: coredms?,
        disk_quota: disk_quota?,
        secrets: secrets?,
        sources: sources?,
        sinks: sinks?,
    })
}

/// A source's topic may also be one of the stream's (its apps read it); with as many partitions.
fn check_source_partitions(list: &[Source], stream: &StreamAgreement, errors: &mut Errors) {
    for (i, src) in list.iter().enumerate() {
        for (topic, t) in src.topics().zip(&src.tables) {
            if let Some(declared) = stream.topics.iter().find(|d| d.name == topic) {
                if declared.partitions != src.partitions {
                    errors.push(
                        format!("sources[{i}].partitions"),
                        format!("table {t} goes to topic `{topic}`, which stream.topics declares with {} partitions, not {}", declared.partitions, src.partitions),
                    );
                }
            }
        }
    }
}

/// The tenant's topics a sink may copy: its stream's and its sources'.
fn known_topics(stream: Option<&StreamAgreement>, sources: Option<&[Source]>) -> std::collections::HashSet<String> {
    let declared = stream.into_iter().flat_map(|s| s.topics.iter().map(|t| t.name.clone()));
    declared.chain(sources.into_iter().flatten().flat_map(Source::topics)).collect()
}

fn parse_batch(value: &Value, path: &str, errors: &mut Errors) -> Option<BatchAgreement> {
    let s = Section::new(
        value,
        path,
        &[
            "routes",
            "formats",
            "max_file_size",
            "max_files_per_hour",
            "max_bytes_per_day",
            "max_concurrent_jobs",
            "retries",
            "min_file_age",
        ],
        errors,
    )?;
    let formats: Vec<Option<Format>> = s
        .list("formats", errors, true)
        .into_iter()
        .map(|(field, v)| {
            let parsed = string(v).and_then(|name| {
                Format::parse(&name).ok_or_else(|| {
                    let known: Vec<_> = Format::ALL.iter().map(|f| f.name()).collect();
                    format!("unknown format `{name}` (known: {})", known.join(", "))
                })
            });
            parsed.map_err(|m| errors.push(field, m)).ok()
        })
        .collect();
    let route_items = s.list("routes", errors, true);
    if route_items.is_empty() && s.get("routes").is_some() {
        errors.push(s.field("routes"), "at least one route is needed to ingest anything");
    }
    let routes: Vec<Option<Route>> = route_items.iter().map(|(field, v)| parse_route(v, field, errors)).collect();
    let max_file_size = s.required("max_file_size", errors, size);
    let max_files_per_hour = s.required("max_files_per_hour", errors, integer(1, 10_000_000));
    let max_bytes_per_day = s.required("max_bytes_per_day", errors, size);
    let max_concurrent_jobs = s.required("max_concurrent_jobs", errors, integer(1, 1024));
    let retries = s.optional("retries", 0, errors, integer(0, 100));
    let min_file_age = s.optional("min_file_age", Duration::from_secs(2), errors, duration);

    let formats: Option<Vec<Format>> = formats.into_iter().collect();
    let routes: Option<Vec<Route>> = routes.into_iter().collect();
    if let (Some(formats), Some(routes)) = (&formats, &routes) {
        for (i, route) in routes.iter().enumerate() {
            if let Some(f) = Format::from_file_name(&route.files) {
                if !formats.contains(&f) {
                    errors.push(
                        format!("{path}.routes[{i}].files"),
                        format!("`{}` matches {f} files but {f} is not in {path}.formats", route.files),
                    );
                }
            }
        }
    }
    Some(BatchAgreement {
        routes: routes?,
        formats: formats?,
        max_file_size: max_file_size?,
        max_files_per_hour: max_files_per_hour?,
        max_bytes_per_day: max_bytes_per_day?,
        max_concurrent_jobs: max_concurrent_jobs?,
        retries: retries?,
        min_file_age: min_file_age?,
    })
}

fn parse_route(value: &Value, path: &str, errors: &mut Errors) -> Option<Route> {
    let s =
        Section::new(value, path, &["files", "app", "timeout", "memory", "cpu_time", "cpus", "max_processes"], errors)?;
    let files = s.required("files", errors, |v| {
        let p = string(v)?;
        if p.contains('/') {
            Err(format!("`{p}` must match file names, not paths"))
        } else {
            Ok(p)
        }
    });
    let app = s.required("app", errors, |v| {
        let text = string(v)?;
        let (name, version) = match text.split_once('@') {
            Some((n, ver)) => {
                let ver: i32 = ver
                    .parse()
                    .ok()
                    .filter(|v| *v >= 1)
                    .ok_or_else(|| format!("`{text}`: the version after `@` must be a positive whole number"))?;
                (n.to_owned(), Some(ver))
            }
            None => (text.clone(), None),
        };
        validate_app_name(&name)?;
        Ok((name, version))
    });
    let timeout = s.required("timeout", errors, duration);
    let memory = s.required("memory", errors, program_memory);
    let cpu_time = s.optional("cpu_time", None, errors, |v| duration(v).map(Some));
    let cpus = s.optional("cpus", None, errors, |v| cpus(v).map(Some));
    let max_processes = s.optional("max_processes", DEFAULT_MAX_PROCESSES, errors, integer(1, 100_000));
    let (app, app_version) = app?;
    Some(Route {
        files: files?,
        app,
        app_version,
        timeout: timeout?,
        memory: memory?,
        cpu_time: cpu_time?,
        cpus: cpus?,
        max_processes: max_processes?,
    })
}

/// `sources`: the agreement's, whose topics apps may read too (`inputs`).
fn parse_stream(value: &Value, path: &str, sources: Option<&[Source]>, errors: &mut Errors) -> Option<StreamAgreement> {
    let s = Section::new(
        value,
        path,
        &[
            "topics",
            "inputs",
            "max_instances",
            "restart",
            "report_interval",
            "thresholds",
            "on_breach",
            "max_message_size",
            "memory",
            "cpus",
            "max_processes",
            "stop_grace",
            "runtime",
        ],
        errors,
    )?;
    let topics = parse_topics(&s, errors);
    let inputs = match (&topics, s.get("inputs")) {
        (Some(declared), Some(v)) => {
            let names = declared.iter().map(|t| t.name.clone());
            let known = names.chain(sources.into_iter().flatten().flat_map(Source::topics)).collect();
            parse_inputs(v, &s.field("inputs"), &known, errors)
        }
        (_, None) => Some(Default::default()),
        (None, Some(_)) => None,
    };
    let max_instances = s.required("max_instances", errors, integer(1, 256));
    let restart = parse_restart(&s, errors);
    let report_interval = s.optional("report_interval", Duration::from_secs(10), errors, duration);
    let thresholds = parse_thresholds(&s, errors);
    let on_breach = s.optional("on_breach", BreachAction::Notify, errors, |v| match string(v)?.as_str() {
        "scale_out" => Ok(BreachAction::ScaleOut),
        "restart" => Ok(BreachAction::Restart),
        "notify" => Ok(BreachAction::Notify),
        other => Err(format!("unknown action `{other}` (scale_out, restart, notify)")),
    });
    let max_message_size = s.optional("max_message_size", ByteSize(1 << 20), errors, |v| {
        let m = size(v)?;
        if m.0 < 1024 || m.0 > 100 << 20 {
            Err(format!("{m} is outside 1KiB..100MiB"))
        } else {
            Ok(m)
        }
    });
    let memory = s.optional("memory", ByteSize(512 << 20), errors, program_memory);
    let cpus = s.optional("cpus", 1.0, errors, cpus);
    let max_processes = s.optional("max_processes", DEFAULT_MAX_PROCESSES, errors, integer(1, 100_000));
    let stop_grace = s.optional("stop_grace", Duration::from_secs(10), errors, duration);
    let runtime = s.optional("runtime", RuntimeKind::Process, errors, |v| match string(v)?.as_str() {
        "process" => Ok(RuntimeKind::Process),
        "container" => Ok(RuntimeKind::Container),
        other => Err(format!("unknown runtime `{other}` (process, container)")),
    });
    Some(StreamAgreement {
        topics: topics?,
        inputs: inputs?,
        max_instances: max_instances?,
        restart: restart?,
        report_interval: report_interval?,
        thresholds: thresholds?,
        on_breach: on_breach?,
        max_message_size: max_message_size?,
        memory: memory?,
        cpus: cpus?,
        max_processes: max_processes?,
        stop_grace: stop_grace?,
        runtime: runtime?,
    })
}

/// At least 16 MiB: less cannot start a program (the loader, libc and a stack).
fn program_memory(v: &Value) -> Result<ByteSize, String> {
    let m = size(v)?;
    if m.0 < 16 << 20 {
        Err(format!("{m} is too little memory to start a program (at least 16MiB)"))
    } else {
        Ok(m)
    }
}

/// `stream.topics`: each with a valid name, listed once, and its partitions.
fn parse_topics(s: &Section<'_>, errors: &mut Errors) -> Option<Vec<Topic>> {
    let mut names = std::collections::HashSet::new();
    let topics: Vec<Option<Topic>> = s
        .list("topics", errors, true)
        .into_iter()
        .map(|(field, v)| {
            let t = Section::new(v, &field, &["name", "partitions"], errors)?;
            let name = t.required("name", errors, |v| {
                let n = string(v)?;
                // `.` and `..` are not topic names to Kafka, nor folder names to the lake.
                let ok = n.len() <= 100
                    && n.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                    && !n.starts_with('.');
                if ok {
                    Ok(n)
                } else {
                    Err(format!("`{n}` is not a topic name (letters, digits, `.`, `_`, `-`, not `.` first; up to 100)"))
                }
            });
            if let Some(n) = &name {
                if !names.insert(n.clone()) {
                    errors.push(t.field("name"), format!("topic `{n}` is listed twice"));
                }
            }
            let partitions = t.optional("partitions", 1, errors, integer(1, 1024));
            Some(Topic { name: name?, partitions: partitions? })
        })
        .collect();
    topics.into_iter().collect()
}

/// `stream.inputs`: app name -> the topics it reads. A tenant names only its own topics here (the
/// platform adds the prefix), so no app is ever handed another tenant's topic.
fn parse_inputs(
    value: &Value,
    path: &str,
    known: &std::collections::HashSet<String>,
    errors: &mut Errors,
) -> Option<std::collections::BTreeMap<String, Vec<String>>> {
    let Some(map) = value.as_mapping() else {
        errors.push(path, "expected a mapping of app names to lists of topics (`my-app: [orders]`)");
        return None;
    };
    let mut inputs = std::collections::BTreeMap::new();
    let mut ok = true;
    for (app, topics) in map {
        let app = match string(app).and_then(|a| validate_app_name(&a).map(|()| a)) {
            Ok(a) => a,
            Err(m) => {
                errors.push(path, m);
                ok = false;
                continue;
            }
        };
        let field = format!("{path}.{app}");
        let list = match topics.as_sequence() {
            Some(l) if !l.is_empty() => l,
            _ => {
                errors.push(&field, "expected a list of at least one topic the app reads");
                ok = false;
                continue;
            }
        };
        let mut read = Vec::new();
        for (i, t) in list.iter().enumerate() {
            match string(t) {
                Ok(t) if known.contains(&t) => read.push(t),
                Ok(t) => {
                    errors.push(format!("{field}[{i}]"), unknown_topic(&t));
                    ok = false;
                }
                Err(m) => {
                    errors.push(format!("{field}[{i}]"), m);
                    ok = false;
                }
            }
        }
        inputs.insert(app, read);
    }
    ok.then_some(inputs)
}

/// `stream.restart`, or its defaults when absent.
fn parse_restart(s: &Section<'_>, errors: &mut Errors) -> Option<RestartPolicy> {
    match s.get("restart") {
        Some(v) => (|| {
            let r = Section::new(v, &s.field("restart"), &["policy", "max_restarts", "backoff"], errors)?;
            let policy = r.optional("policy", RestartMode::OnFailure, errors, |v| match string(v)?.as_str() {
                "never" => Ok(RestartMode::Never),
                "on-failure" => Ok(RestartMode::OnFailure),
                "always" => Ok(RestartMode::Always),
                other => Err(format!("unknown restart policy `{other}` (never, on-failure, always)")),
            });
            let max_restarts = r.optional("max_restarts", 5, errors, integer(0, 10_000));
            let backoff = r.optional("backoff", Duration::from_secs(1), errors, duration);
            Some(RestartPolicy { policy: policy?, max_restarts: max_restarts?, backoff: backoff? })
        })(),
        None => {
            Some(RestartPolicy { policy: RestartMode::OnFailure, max_restarts: 5, backoff: Duration::from_secs(1) })
        }
    }
}

/// `stream.thresholds` (required).
fn parse_thresholds(s: &Section<'_>, errors: &mut Errors) -> Option<Thresholds> {
    match s.get("thresholds") {
        None => {
            errors.push(s.field("thresholds"), "missing required field");
            None
        }
        Some(v) => (|| {
            let t = Section::new(
                v,
                &s.field("thresholds"),
                &["min_processing_rate", "max_avg_ingestion_time", "breach_reports", "cooldown"],
                errors,
            )?;
            let min_processing_rate = t.required("min_processing_rate", errors, positive_number);
            let max_avg_ingestion_time = t.required("max_avg_ingestion_time", errors, duration);
            let breach_reports = t.optional("breach_reports", 3, errors, integer(1, 1000));
            let cooldown = t.optional("cooldown", Duration::from_secs(60), errors, duration);
            Some(Thresholds {
                min_processing_rate: min_processing_rate?,
                max_avg_ingestion_time: max_avg_ingestion_time?,
                breach_reports: breach_reports?,
                cooldown: cooldown?,
            })
        })(),
    }
}

/// Processes and threads a tenant's program may have at once unless its agreement says otherwise:
/// room for a JVM or a thread pool, not for a fork bomb.
pub const DEFAULT_MAX_PROCESSES: u64 = 256;

fn cpus(v: &Value) -> Result<f64, String> {
    let c = positive_number(v)?;
    if c > 256.0 {
        Err(format!("{c} CPUs is more than any machine here has"))
    } else {
        Ok(c)
    }
}

fn parse_coredms(value: &Value, path: &str, errors: &mut Errors) -> Option<CoreDmsAgreement> {
    let s =
        Section::new(value, path, &["max_connections", "statement_timeout", "idle_in_transaction_timeout"], errors)?;
    let d = CoreDmsAgreement::default();
    let max_connections = s.optional("max_connections", d.max_connections, errors, integer(1, 10_000));
    let at_least_a_second = |v: &Value| {
        let t = duration(v)?;
        if t < Duration::from_secs(1) {
            Err(format!("{} is less than a second", crate::units::format_duration(t)))
        } else {
            Ok(t)
        }
    };
    let statement_timeout = s.optional("statement_timeout", d.statement_timeout, errors, at_least_a_second);
    let idle_in_transaction_timeout =
        s.optional("idle_in_transaction_timeout", d.idle_in_transaction_timeout, errors, at_least_a_second);
    Some(CoreDmsAgreement {
        max_connections: max_connections?,
        statement_timeout: statement_timeout?,
        idle_in_transaction_timeout: idle_in_transaction_timeout?,
    })
}

fn parse_apps(value: &Value, path: &str, errors: &mut Errors) -> Option<AppsAgreement> {
    let s = Section::new(value, path, &["max_apps", "max_app_size", "max_versions"], errors)?;
    let max_apps = s.optional("max_apps", 10, errors, integer(1, 10_000));
    let max_app_size = s.optional("max_app_size", ByteSize(50 << 20), errors, size);
    let max_versions = s.optional("max_versions", 5, errors, integer(1, 1_000));
    Some(AppsAgreement { max_apps: max_apps?, max_app_size: max_app_size?, max_versions: max_versions? })
}

/// Why nothing is done for a tenant without an agreement in force (none yet, or only one that does
/// not parse): one wording for the API's refusals and the batch manager's.
pub fn not_in_force(tenant: &TenantId) -> String {
    format!("tenant `{tenant}` has no service agreement in force")
}

/// `*` matches any run of characters, `?` one character; everything else literally.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// `[a-z0-9][a-z0-9._-]{0,63}`: safe as a folder name and in a log line (apps' and secrets' names).
pub fn is_simple_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
}

/// A secret's name: a simple name (it appears in paths of the API and in agreements).
pub fn validate_secret_name(name: &str) -> Result<(), String> {
    if is_simple_name(name) {
        Ok(())
    } else {
        Err(format!("`{name}` is not a valid secret name (1-64 characters of a-z, 0-9, `.`, `_`, `-`)"))
    }
}

pub fn validate_app_name(name: &str) -> Result<(), String> {
    if is_simple_name(name) {
        Ok(())
    } else {
        Err(format!("`{name}` is not a valid app name (1-64 characters of a-z, 0-9, `.`, `_`, `-`)"))
    }
}

#[cfg(test)]
mod tests;
