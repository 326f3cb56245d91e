//! The connectors an agreement declares (`sources:`, `sinks:`), run as the tenant's stream
//! instances: one instance per connector, started when the agreement declares it, stopped when it
//! no longer does (or declares it differently, or a source's secret changes: then a new instance
//! takes over). A source no longer declared at all is released: one last run drops its slot and
//! publication. The program is the platform's `mysimbdp-connect`, run like a tenant's app: in the
//! tenant's sandbox, as the tenant's user, through the broker gateway, with the tenant's secret (a
//! source) or its lake folder (a lake sink) and nothing else.

use sha2::{Digest, Sha256};

use super::StreamCtx;
use crate::agreement::{ServiceAgreement, Sink, SinkKind, SnapshotMode, Source};
use crate::domain::InstanceState;
use crate::messaging::topics::tenant_topic;
use crate::store::instances::{self, Instance};
use crate::store::secrets;
use crate::tenant::TenantId;
use mysimbdp_contract::env as contract;

/// An instance's app name for source `name`: no app can be called this (`:` is not allowed in app
/// names), so a connector never shares an app's instances, group or name.
pub fn app_of(source: &str) -> String {
    format!("source:{source}")
}

/// The source an instance runs, if it is a source's.
pub fn source_of(app: &str) -> Option<&str> {
    app.strip_prefix("source:")
}

/// An instance's app name for sink `name` (as `app_of` for a source).
pub fn sink_app(sink: &str) -> String {
    format!("sink:{sink}")
}

/// The sink an instance runs, if it is a sink's.
pub fn sink_of(app: &str) -> Option<&str> {
    app.strip_prefix("sink:")
}

/// Whether an instance runs a connector rather than a tenant's app.
pub fn is_connector(app: &str) -> bool {
    source_of(app).is_some() || sink_of(app).is_some()
}

/// The first 16 hex digits of the SHA-256 of what a connector was declared as (and its secret's version).
fn declaration_hash(declared: &impl serde::Serialize, secret_updated: Option<chrono::DateTime<chrono::Utc>>) -> String {
    let mut hash = Sha256::new();
    hash.update(serde_json::to_vec(declared).expect("a declaration serialises"));
    hash.update(secret_updated.map(|t| t.to_rfc3339()).unwrap_or_default());
    hex::encode(hash.finalize())[..16].to_owned()
}

/// What a connector's instance was started for: the declaration and the secret's version (another
/// value means the source was changed and its instance is replaced), and the secret's name (which
/// its release needs once the declaration is gone).
fn cause(source: &Source, secret_updated: Option<chrono::DateTime<chrono::Utc>>) -> String {
    format!("agreement {} secret {}", declaration_hash(source, secret_updated), source.secret)
}

/// The cause of a source's release run, naming the secret it connects with.
fn release_cause(secret: &str) -> String {
    format!("release secret {secret}")
}

/// The secret named in a connector instance's cause.
fn secret_of(cause: &str) -> Option<&str> {
    cause.rsplit_once(" secret ").map(|(_, s)| s)
}

/// Makes the wanted connector instances match the agreements in force: starts each declared source
/// that has none, stops those no longer declared as they run.
pub async fn sync(ctx: &StreamCtx) -> anyhow::Result<()> {
    let snapshot = ctx.agreements.current();
    let mut declared: Vec<(TenantId, String, String)> = Vec::new();
    for (tenant, agreement) in &snapshot.in_force {
        let Some(stream) = &agreement.stream else { continue };
        let stored = if agreement.sources.is_empty() { Vec::new() } else { secrets::list(&ctx.db, tenant).await? };
        let sources = agreement.sources.iter().map(|source| {
            let updated = stored.iter().find(|s| s.name == source.secret).map(|s| s.updated_at);
            (app_of(&source.name), cause(source, updated))
        });
        let sinks = agreement
            .sinks
            .iter()
            .map(|sink| (sink_app(&sink.name), format!("agreement {}", declaration_hash(sink, None))));
        for (app, cause) in sources.chain(sinks) {
            if let Some(new) =
                instances::ensure_connector(&ctx.db, tenant, &app, stream.runtime.as_str(), &cause).await?
            {
                tracing::info!(%tenant, connector = %app, instance = %new.id, "starting the connector the agreement declares");
            }
            declared.push((tenant.clone(), app, cause));
        }
    }
    for inst in instances::wanted(&ctx.db).await? {
        if !is_connector(&inst.app) {
            continue;
        }
        let current =
            declared.iter().any(|(t, app, cause)| *t == inst.tenant && *app == inst.app && *cause == inst.cause);
        if current || inst.cause.starts_with("release ") {
            continue;
        }
        let tenant = inst.tenant.clone();
        tracing::info!(%tenant, connector = %inst.app, instance = %inst.id, "the connector is no longer declared so; stopping its instance");
        instances::request_stop(&ctx.db, &tenant, Some(inst.id), None).await?;
        let detail =
            "the agreement no longer declares the connector so (removed, changed, or its secret changed); stopping";
        instances::set_state(&ctx.db, inst.id, InstanceState::Stopping, detail).await?;
        let Some(source) = source_of(&inst.app) else { continue };
        // Removed (not changed) from an agreement still in force: its slot goes too.
        let removed =
            snapshot.get(&tenant).is_some_and(|a| a.stream.is_some() && a.sources.iter().all(|s| s.name != source));
        if let (true, Some(secret)) = (removed, secret_of(&inst.cause)) {
            let cause = release_cause(secret);
            if let Some(run) = instances::ensure_connector(&ctx.db, &tenant, &inst.app, &inst.runtime, &cause).await? {
                tracing::info!(%tenant, source, instance = %run.id, "releasing the removed source's slot");
            }
        }
    }
    Ok(())
}

/// What a connector instance runs: the program's folder and name, and its environment beyond the
/// stream app contract's. `Err` says why it cannot run.
pub struct Program {
    pub dir: std::path::PathBuf,
    pub entrypoint: String,
    pub env: Vec<(String, String)>,
    pub label: String,
    /// The tenant's lake folder on the host, for a lake sink.
    pub lake: Option<std::path::PathBuf>,
}

pub async fn program(
    ctx: &StreamCtx,
    inst: &Instance,
    agreement: &ServiceAgreement,
) -> anyhow::Result<Result<Program, String>> {
    if inst.runtime != "process" {
        return Ok(Err("connectors run under the process runtime only".into()));
    }
    let (Some(dir), Some(file)) = (ctx.connect_bin.parent(), ctx.connect_bin.file_name()) else {
        return Ok(Err(format!("the connector program {} is not a file", ctx.connect_bin.display())));
    };
    let program = |vars: Vec<(&str, String)>, label: String, lake: Option<std::path::PathBuf>| Program {
        dir: dir.to_owned(),
        entrypoint: file.to_string_lossy().into_owned(),
        env: vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        label,
        lake,
    };
    if let Some(name) = sink_of(&inst.app) {
        let Some(sink) = agreement.sinks.iter().find(|s| s.name == name) else {
            return Ok(Err(format!("the agreement no longer declares sink `{name}`")));
        };
        let (vars, lake) = sink_program(ctx, &inst.tenant, sink);
        return Ok(Ok(program(vars, format!("sink {name} ({})", sink_kind(sink)), lake)));
    }
    let name = source_of(&inst.app).unwrap_or_default();
    let tenant = &inst.tenant;
    let releasing = if inst.cause.starts_with("release ") { secret_of(&inst.cause) } else { None };
    let declared = agreement.sources.iter().find(|s| s.name == name);
    let secret = match (releasing, declared) {
        (Some(secret), _) => secret,
        (None, Some(source)) => source.secret.as_str(),
        (None, None) => return Ok(Err(format!("the agreement no longer declares source `{name}`"))),
    };
    let url = match open_secret(ctx, tenant, name, secret).await? {
        Ok(url) => url,
        Err(why) => return Ok(Err(why)),
    };
    use mysimbdp_connect::cdc::env;
    let base =
        [("MYSIMBDP_CONNECTOR", "postgres-cdc".to_owned()), (env::DATABASE_URL, url), (env::SOURCE, name.to_owned())];
    let Some(source) = declared.filter(|_| releasing.is_none()) else {
        let vars = base.into_iter().chain([(env::RELEASE, "true".to_owned())]).collect();
        return Ok(Ok(program(vars, format!("release of source {name} (postgres_cdc)"), None)));
    };
    let snapshot = match source.snapshot {
        SnapshotMode::Initial => "initial",
        SnapshotMode::Never => "never",
    };
    let vars = [
        (env::TABLES, source.tables.join(",")),
        (env::TOPIC_PREFIX, tenant_topic(tenant, &source.topic_prefix)),
        (env::SNAPSHOT, snapshot.to_owned()),
        (env::SCHEMAS, source.schemas.to_string()),
        (env::REPLICA_IDENTITY, if source.replica_identity_full { "full" } else { "default" }.to_owned()),
    ];
    Ok(Ok(program(base.into_iter().chain(vars).collect(), format!("source {name} (postgres_cdc)"), None)))
}

/// The text of the tenant's secret a source connects with, or why there is none to give it.
async fn open_secret(
    ctx: &StreamCtx,
    tenant: &TenantId,
    name: &str,
    secret: &str,
) -> anyhow::Result<Result<String, String>> {
    let Some(key) = &ctx.secrets_key else {
        return Ok(Err(format!(
            "source `{name}` needs secret `{secret}`, but this platform keeps no secrets (no MYSIMBDP_SECRETS_KEY_FILE)"
        )));
    };
    let Some(sealed) = secrets::sealed(&ctx.db, tenant, secret).await? else {
        return Ok(Err(format!(
            "source `{name}` needs secret `{secret}`, which tenant `{tenant}` has not stored (PUT /v1/tenants/{tenant}/secrets/{secret})"
        )));
    };
    Ok(match key.open(tenant, secret, &sealed).map(String::from_utf8) {
        Ok(Ok(url)) => Ok(url),
        Ok(Err(_)) => Err(format!("secret `{secret}` is not text")),
        Err(e) => Err(e.to_string()),
    })
}

fn sink_kind(sink: &Sink) -> &'static str {
    match sink.kind {
        SinkKind::ParquetLake(_) => "parquet_lake",
        SinkKind::Coredms { .. } => "coredms",
    }
}

/// A sink's environment (its topics, and what its kind needs) and, for a lake sink, the tenant's
/// lake folder on the host.
fn sink_program(
    ctx: &StreamCtx,
    tenant: &TenantId,
    sink: &Sink,
) -> (Vec<(&'static str, String)>, Option<std::path::PathBuf>) {
    use mysimbdp_connect::{documents, lake};
    let topics: Vec<String> = sink.topics.iter().map(|t| tenant_topic(tenant, t)).collect();
    let mut vars = vec![(contract::INPUT_TOPICS, topics.join(",")), (lake::env::SINK, sink.name.clone())];
    match &sink.kind {
        SinkKind::Coredms { collection } => {
            vars.push(("MYSIMBDP_CONNECTOR", "coredms-sink".to_owned()));
            vars.extend(collection.clone().map(|c| (documents::env::COLLECTION, c)));
            (vars, None)
        }
        SinkKind::ParquetLake(l) => {
            let host = crate::layout::lake_dir(&ctx.data_dir, tenant);
            // Confined, the sink sees its tenant's lake folder and nothing else of the host's.
            let seen = if ctx.sandbox.is_some() {
                crate::runtime::sandbox::paths::LAKE.into()
            } else {
                host.display().to_string()
            };
            vars.extend([
                ("MYSIMBDP_CONNECTOR", "parquet-lake".to_owned()),
                (lake::env::LAKE_DIR, seen),
                (lake::env::FLUSH_ROWS, l.flush_rows.to_string()),
                (lake::env::FLUSH_MS, l.flush_interval.as_millis().to_string()),
                (lake::env::MAX_BYTES, l.max_size.0.to_string()),
            ]);
            vars.extend(
                l.columns.as_ref().map(|c| (lake::env::COLUMNS, serde_json::to_string(c).expect("columns serialise"))),
            );
            vars.extend(l.date_field.clone().map(|f| (lake::env::DATE_FIELD, f)));
            (vars, Some(host))
        }
    }
}
