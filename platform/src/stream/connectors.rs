//! The connectors an agreement declares (`sources:`), run as the tenant's stream instances: one
//! instance per source, started when the agreement declares it, stopped when it no longer does (or
//! declares it differently, or its secret changes: then a new instance takes over). A source no
//! longer declared at all is released: one last run drops its slot and publication. The program is
//! the platform's `mysimbdp-connect`, run like a tenant's app: in the tenant's sandbox, as the
//! tenant's user, through the broker gateway, with the tenant's secret and nothing else.

use sha2::{Digest, Sha256};

use super::StreamCtx;
use crate::agreement::{ServiceAgreement, SnapshotMode, Source};
use crate::domain::InstanceState;
use crate::messaging::topics::tenant_topic;
use crate::store::instances::{self, Instance};
use crate::store::secrets;
use crate::tenant::TenantId;

/// An instance's app name for source `name`: no app can be called this (`:` is not allowed in app
/// names), so a connector never shares an app's instances, group or name.
pub fn app_of(source: &str) -> String {
    format!("source:{source}")
}

/// The source an instance runs, if it is a connector.
pub fn source_of(app: &str) -> Option<&str> {
    app.strip_prefix("source:")
}

/// What a connector's instance was started for: the declaration and the secret's version (another
/// value means the source was changed and its instance is replaced), and the secret's name (which
/// its release needs once the declaration is gone).
fn cause(source: &Source, secret_updated: Option<chrono::DateTime<chrono::Utc>>) -> String {
    let declared = serde_json::to_vec(source).expect("a source serialises");
    let mut hash = Sha256::new();
    hash.update(&declared);
    hash.update(secret_updated.map(|t| t.to_rfc3339()).unwrap_or_default());
    format!("agreement {} secret {}", &hex::encode(hash.finalize())[..16], source.secret)
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
        if agreement.sources.is_empty() || agreement.stream.is_none() {
            continue;
        }
        let stored = secrets::list(&ctx.db, tenant).await?;
        for source in &agreement.sources {
            let updated = stored.iter().find(|s| s.name == source.secret).map(|s| s.updated_at);
            let (app, cause) = (app_of(&source.name), cause(source, updated));
            let runtime = agreement.stream.as_ref().map_or("process", |s| s.runtime.as_str());
            if let Some(new) = instances::ensure_connector(&ctx.db, tenant, &app, runtime, &cause).await? {
                tracing::info!(%tenant, source = %source.name, instance = %new.id, "starting the source the agreement declares");
            }
            declared.push((tenant.clone(), app, cause));
        }
    }
    for inst in instances::wanted(&ctx.db).await? {
        let Some(source) = source_of(&inst.app) else { continue };
        let current =
            declared.iter().any(|(t, app, cause)| *t == inst.tenant && *app == inst.app && *cause == inst.cause);
        if current || inst.cause.starts_with("release ") {
            continue;
        }
        let tenant = inst.tenant.clone();
        tracing::info!(%tenant, source, instance = %inst.id, "the source is no longer declared so; stopping its instance");
        instances::request_stop(&ctx.db, &tenant, Some(inst.id), None).await?;
        let detail =
            "the agreement no longer declares the source so (removed, changed, or its secret changed); stopping";
        instances::set_state(&ctx.db, inst.id, InstanceState::Stopping, detail).await?;
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
}

pub async fn program(
    ctx: &StreamCtx,
    inst: &Instance,
    agreement: &ServiceAgreement,
    name: &str,
) -> anyhow::Result<Result<Program, String>> {
    let tenant = &inst.tenant;
    let releasing = if inst.cause.starts_with("release ") { secret_of(&inst.cause) } else { None };
    let declared = agreement.sources.iter().find(|s| s.name == name);
    let secret = match (releasing, declared) {
        (Some(secret), _) => secret,
        (None, Some(source)) => source.secret.as_str(),
        (None, None) => return Ok(Err(format!("the agreement no longer declares source `{name}`"))),
    };
    if inst.runtime != "process" {
        return Ok(Err("connectors run under the process runtime only".into()));
    }
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
    let url = match key.open(tenant, secret, &sealed).map(String::from_utf8) {
        Ok(Ok(url)) => url,
        Ok(Err(_)) => return Ok(Err(format!("secret `{secret}` is not text"))),
        Err(e) => return Ok(Err(e.to_string())),
    };
    let (Some(dir), Some(file)) = (ctx.connect_bin.parent(), ctx.connect_bin.file_name()) else {
        return Ok(Err(format!("the connector program {} is not a file", ctx.connect_bin.display())));
    };
    use mysimbdp_connect::cdc::env;
    let program = |vars: Vec<(&str, String)>, label: String| Program {
        dir: dir.to_owned(),
        entrypoint: file.to_string_lossy().into_owned(),
        env: vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        label,
    };
    let base =
        [("MYSIMBDP_CONNECTOR", "postgres-cdc".to_owned()), (env::DATABASE_URL, url), (env::SOURCE, name.to_owned())];
    let Some(source) = declared.filter(|_| releasing.is_none()) else {
        let vars = base.into_iter().chain([(env::RELEASE, "true".to_owned())]).collect();
        return Ok(Ok(program(vars, format!("release of source {name} (postgres_cdc)"))));
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
    Ok(Ok(program(base.into_iter().chain(vars).collect(), format!("source {name} (postgres_cdc)"))))
}
