//! Job leases: which batch manager works on a job, until when, under which fencing number.
//!
//! A job that is being admitted (`detected`) or run (`running`) carries its manager's id, an expiry
//! the manager keeps pushing forward, and a fencing number that grows with every new lease. Every
//! state change a manager makes names the fencing number it holds, so a manager that lost a lease
//! (paused, cut off from the store) can change nothing once another took the job over.

use std::time::Duration;

use super::jobs::{job_query, Job};
use super::Db;
use crate::domain::{JobId, ManagerId};

/// The lease a manager takes on a job: its own id, for how long.
#[derive(Clone, Copy, Debug)]
pub struct Lease {
    pub owner: ManagerId,
    pub ttl: Duration,
}

impl Lease {
    pub fn ttl_ms(&self) -> i64 {
        millis(self.ttl)
    }
}

/// This process as a batch manager: how other managers on the same machine tell it is gone (its
/// pid and start time), so they take its jobs at once instead of waiting out the leases.
pub async fn register(db: &Db, id: ManagerId, boot_id: &str, pid: i32, start_ticks: i64) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into batch_managers (id, boot_id, pid, start_ticks) values ($1, $2, $3, $4)",
        id as ManagerId,
        boot_id,
        pid,
        start_ticks,
    )
    .execute(db)
    .await?;
    // Managers that hold no lease and have not been seen for a day are history.
    sqlx::query!(
        "delete from batch_managers m where seen_at < now() - interval '1 day'
           and not exists (select 1 from jobs where lease_owner = m.id and state in ('detected', 'running'))",
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn unregister(db: &Db, id: ManagerId) -> sqlx::Result<()> {
    sqlx::query!("delete from batch_managers where id = $1", id as ManagerId).execute(db).await?;
    Ok(())
}

/// A manager other than `me` that holds unexpired leases.
pub struct Holder {
    pub id: ManagerId,
    pub boot_id: String,
    pub pid: i32,
    pub start_ticks: i64,
}

pub async fn holders(db: &Db, me: ManagerId) -> sqlx::Result<Vec<Holder>> {
    sqlx::query_as!(
        Holder,
        r#"select m.id as "id: ManagerId", m.boot_id, m.pid, m.start_ticks from batch_managers m
         where m.id <> $1 and exists (select 1 from jobs j where j.lease_owner = m.id
                                        and j.state in ('detected', 'running') and j.lease_until >= now())"#,
        me as ManagerId,
    )
    .fetch_all(db)
    .await
}

/// The machine a manager ran on, if it is known.
pub async fn boot_id(db: &Db, manager: ManagerId) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!("select boot_id from batch_managers where id = $1", manager as ManagerId)
        .fetch_optional(db)
        .await
}

fn millis(d: Duration) -> i64 {
    d.as_millis() as i64
}

/// Pushes the expiry of the leases `me` holds (job id, fencing number) forward; returns the jobs
/// whose lease it still held.
///
/// Called every third of `ttl`. A lease with more than two thirds of `ttl` left (taken since the
/// last call) is left as it is: every lease still has at least two thirds of `ttl` left after a
/// call, as if all were renewed, but a burst of short jobs is not rewritten row by row (a thousand
/// rows held locked for 300 ms, their admissions waiting behind them).
pub async fn renew(db: &Db, me: ManagerId, held: &[(JobId, i64)], ttl: Duration) -> sqlx::Result<Vec<JobId>> {
    sqlx::query!("update batch_managers set seen_at = now() where id = $1", me as ManagerId).execute(db).await?;
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, fences): (Vec<JobId>, Vec<i64>) = held.iter().copied().unzip();
    sqlx::query_scalar!(
        r#"with h as (select * from unnest($2::uuid[], $3::bigint[]) as h(id, fence)),
              renewed as (update jobs j set lease_until = now() + make_interval(secs => $4::bigint / 1000.0)
                          from h where j.id = h.id and j.fence = h.fence and j.lease_owner = $1
                            and (j.lease_until is null or j.lease_until <= now() + make_interval(secs => $4::bigint * 2 / 3 / 1000.0))
                          returning j.id),
              fresh as (select j.id from jobs j join h on j.id = h.id and j.fence = h.fence
                        where j.lease_owner = $1
                          and j.lease_until > now() + make_interval(secs => $4::bigint * 2 / 3 / 1000.0))
         select id as "id!: JobId" from renewed union all select id from fresh"#,
        me as ManagerId,
        ids as Vec<JobId>,
        &fences,
        millis(ttl),
    )
    .fetch_all(db)
    .await
}

/// A job `me` took over, and the manager that held it before.
pub struct TakenOver {
    pub job: Job,
    pub old_owner: Option<ManagerId>,
}

/// Takes over jobs being admitted or run whose lease ran out, or whose manager is known to be gone
/// (`gone`): a new lease for `me` under the next fencing number, and an event saying so. Jobs `me`
/// is working on (`held`) are left alone, whatever their expiry says: `me` renews those itself.
pub async fn take_over(
    db: &Db,
    me: ManagerId,
    ttl: Duration,
    gone: &[ManagerId],
    held: &[JobId],
) -> sqlx::Result<Vec<TakenOver>> {
    job_query!(
        [
            "with t as (select id, lease_owner as old_owner from jobs
                    where state in ('detected', 'running')
                      and (lease_until is null or lease_until < now() or lease_owner = any($3))
                      and not (lease_owner = $1 and id = any($4))
                    order by detected_at limit 200 for update skip locked),
              u as (update jobs j set lease_owner = $1, fence = j.fence + 1,
                                      lease_until = now() + make_interval(secs => $2::bigint / 1000.0)
                    from t where j.id = t.id returning j.*, t.old_owner),
              e as (insert into job_events (job_id, tenant, state, message)
                    select id, tenant, state, 'taken up by batch manager ' || $1::text
                           || coalesce(' from ' || old_owner::text, '') || ', whose lease ended' from u) "
        ] r#", old_owner as "old_owner: crate::domain::ManagerId" from u"#
        => |row, job| TakenOver { job, old_owner: row.old_owner },
        me as ManagerId,
        millis(ttl),
        gone as &[ManagerId],
        held as &[JobId],
    )
    .fetch_all(db)
    .await
}
