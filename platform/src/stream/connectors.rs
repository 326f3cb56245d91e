//! The connectors an agreement declares (`sources:`), run as the tenant's stream instances: one
//! instance per source, started when the agreement declares it, stopped when it no longer does (or
//! declares it differently, or its secret changes: then a new instance takes over). The program is
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

/// What a connector's instance was started for: the declaration and the secret's version. Another
/// value means the source was changed and its instance is replaced.
fn cause(source: &Source, secret_updated: Option<chrono::DateTime<chrono::Utc>>) -> String {
    let declared = serde_json::to_vec(source).expect("a source serialises");
    let mut hash = Sha256::new();
    hash.update(&declared);
    hash.update(secret_updated.map(|t| t.to_rfc3339()).unwrap_or_default());
    format!("agreement {}", &hex::encode(hash.finalize())[..16])
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
        if declared.iter().any(|(t, app, cause)| *t == inst.tenant && *app == inst.app && *cause == inst.cause) {
            continue;
        }
        let tenant = inst.tenant.clone();
        tracing::info!(%tenant, source, instance = %inst.id, "the source is no longer declared so; stopping its instance");
        instances::request_stop(&ctx.db, &tenant, Some(inst.id), None).await?;
        let detail =
            "the agreement no longer declares the source so (removed, changed, or its secret changed); stopping";
        instances::set_state(&ctx.db, inst.id, InstanceState::Stopping, detail).await?;
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
    let Some(source) = agreement.sources.iter().find(|s| s.name == name) else {
        return Ok(Err(format!("the agreement no longer declares source `{name}`")));
    };
    if inst.runtime != "process" {
        return Ok(Err("connectors run under the process runtime only".into()));
    }
    let Some(key) = &ctx.secrets_key else {
        return Ok(Err(format!(
            "source `{name}` needs secret `{}`, but this platform keeps no secrets (no MYSIMBDP_SECRETS_KEY_FILE)",
            source.secret
        )));
    };
    let Some(sealed) = secrets::sealed(&ctx.db, tenant, &source.secret).await? else {
        return Ok(Err(format!(
            "source `{name}` needs secret `{}`, which tenant `{tenant}` has not stored (PUT /v1/tenants/{tenant}/secrets/{})",
            source.secret, source.secret
        )));
    };
    let url = match key.open(tenant, &source.secret, &sealed).map(String::from_utf8) {
        Ok(Ok(url)) => url,
        Ok(Err(_)) => return Ok(Err(format!("secret `{}` is not text", source.secret))),
        Err(e) => return Ok(Err(e.to_string())),
    };
    let (Some(dir), Some(file)) = (ctx.connect_bin.parent(), ctx.connect_bin.file_name()) else {
        return Ok(Err(format!("the connector program {} is not a file", ctx.connect_bin.display())));
    };
    use mysimbdp_connect::cdc::env;
    let snapshot = match source.snapshot {
        SnapshotMode::Initial => "initial",
        SnapshotMode::Never => "never",
    };
    let vars = [
        ("MYSIMBDP_CONNECTOR", "postgres-cdc".to_owned()),
        (env::DATABASE_URL, url),
        (env::SOURCE, source.name.clone()),
        (env::TABLES, source.tables.join(",")),
        (env::TOPIC_PREFIX, tenant_topic(tenant, &source.topic_prefix)),
        (env::SNAPSHOT, snapshot.to_owned()),
        (env::SCHEMAS, source.schemas.to_string()),
        (env::REPLICA_IDENTITY, if source.replica_identity_full { "full" } else { "default" }.to_owned()),
    ];
    Ok(Ok(Program {
        dir: dir.to_owned(),
        entrypoint: file.to_string_lossy().into_owned(),
        env: vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        label: format!("source {name} (postgres_cdc)"),
    }))
}
