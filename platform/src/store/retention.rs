//! What the platform forgets, and when: rows of finished work older than the operator's retention.

use chrono::{DateTime, Utc};

use super::Db;
use crate::domain::{InstanceId, JobId};
use crate::tenant::TenantId;

/// A final job that was deleted: its tenant and where its file was kept.
pub struct Forgotten {
    pub id: JobId,
    pub tenant: TenantId,
    pub final_path: Option<String>,
}

/// Final jobs being forgotten: deleted in a transaction not yet committed, so that their files can go
/// first. A crash before `commit` leaves the rows for the next sweep (removing a file twice is
/// harmless), and no kept file ever outlives its row.
pub struct Forgetting {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    pub jobs: Vec<Forgotten>,
}

impl Forgetting {
    pub async fn commit(self) -> sqlx::Result<()> {
        self.tx.commit().await
    }
}

/// Deletes up to `limit` final jobs that finished before `cutoff`, with their events, and moves the
/// change stamp of each tenant they belonged to (so no page cached before still passes for current);
/// nothing is gone until `Forgetting::commit`.
pub async fn forget_jobs(db: &Db, cutoff: DateTime<Utc>, limit: i64) -> sqlx::Result<Forgetting> {
    let mut tx = db.begin().await?;
    let jobs = sqlx::query_as!(
        Forgotten,
        r#"with old as (select id from jobs where state in ('succeeded', 'rejected', 'failed') and finished_at < $1
                      order by finished_at limit $2 for update skip locked),
              e as (delete from job_events where job_id in (select id from old)),
              d as (delete from jobs where id in (select id from old) returning id, tenant, final_path),
              s as (insert into job_deletions (tenant, changed)
                    select tenant, nextval('jobs_change_seq') from (select distinct tenant from d) t
                    on conflict (tenant) do update set changed = excluded.changed)
         select id as "id!: JobId", tenant as "tenant!: TenantId", final_path from d"#,
        cutoff,
        limit,
    )
    .fetch_all(&mut *tx)
    .await?;
    Ok(Forgetting { tx, jobs })
}

/// Stream records older than `cutoff`: trusted and dropped reports, notifications and the actions
/// taken on them, control messages not acted on. Returns how many rows went.
pub async fn forget_stream_records(db: &Db, cutoff: DateTime<Utc>) -> sqlx::Result<u64> {
    let deleted = [
        sqlx::query!("delete from metrics_reports where received_at < $1", cutoff).execute(db).await?,
        sqlx::query!("delete from dropped_reports where received_at < $1", cutoff).execute(db).await?,
        sqlx::query!("delete from stream_actions where at < $1", cutoff).execute(db).await?,
        sqlx::query!("delete from notifications where at < $1", cutoff).execute(db).await?,
        sqlx::query!("delete from control_dropped where at < $1", cutoff).execute(db).await?,
    ];
    Ok(deleted.iter().map(|d| d.rows_affected()).sum())
}

/// Instances stopped for good before `cutoff`: deleted; returns (tenant, id) to remove their folders.
pub async fn forget_instances(db: &Db, cutoff: DateTime<Utc>) -> sqlx::Result<Vec<(TenantId, InstanceId)>> {
    let forgotten = sqlx::query!(
        r#"delete from stream_instances
         where desired = 'stopped' and state in ('exited', 'failed') and coalesce(ended_at, updated_at) < $1
         returning tenant as "tenant: TenantId", id as "id: InstanceId""#,
        cutoff,
    )
    .fetch_all(db)
    .await?;
    Ok(forgotten.into_iter().map(|r| (r.tenant, r.id)).collect())
}
