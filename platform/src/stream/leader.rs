//! Which platform process is the stream manager, fenced so that no instance ever runs twice.
//!
//! Leadership is a PostgreSQL session lock, held on a connection of its own:
//! - the leader checks that connection every second (before each reconcile pass); when it fails (the session was ended, the
//!   store is unreachable for `CHECK_TIMEOUT`), the leader kills its instances at once (SIGKILL,
//!   no grace: another process may be starting them) and stands by again;
//! - a new leader waits `HANDOVER` before starting anything unless it knows the previous leader is
//!   gone (a process on this machine that no longer exists), so a previous leader that is alive
//!   but cut off has stopped its instances first; then it ends whatever of the previous leader's
//!   instances still runs on this machine.

use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, Postgres};
use tokio_util::sync::CancellationToken;

use crate::runtime::process::{alive, boot_id, start_ticks};
use crate::store::Db;

/// Key of the session lock that makes one process the manager.
const MANAGER_LOCK: i64 = 0x6d79_7369_6d62_6470; // "mysimbdp"
/// How long a check that the leader still holds the lock may take (it checks every second).
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a new leader waits for a previous one that may be alive: longer than that one takes to
/// find out it lost the lock and to kill its instances.
pub const HANDOVER: Duration = Duration::from_secs(5);

/// Waits to become the one manager; returns the connection holding the lock (never to go back to
/// the pool), or `None` on shutdown.
pub async fn acquire(db: &Db, shutdown: &CancellationToken) -> anyhow::Result<Option<PgConnection>> {
    let mut announced = false;
    loop {
        let mut conn: PoolConnection<Postgres> = db.acquire().await?;
        let (got,): (bool,) =
            sqlx::query_as("select pg_try_advisory_lock($1)").bind(MANAGER_LOCK).fetch_one(&mut *conn).await?;
        if got {
            return Ok(Some(conn.detach()));
        }
        drop(conn);
        if !announced {
            tracing::info!("another process is the stream manager; standing by");
            announced = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Whether the lock's session still answers (and so still holds the lock).
pub async fn still_held(lock: &mut PgConnection) -> bool {
    matches!(tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("select 1").execute(lock)).await, Ok(Ok(_)))
}

/// What a new leader must wait before starting instances: nothing when the previous leader was this
/// process or is a process of this machine that is gone; `HANDOVER` otherwise. Records this process
/// as the leader.
pub async fn take_over(lock: &mut PgConnection) -> anyhow::Result<Duration> {
    let boot_id = boot_id();
    let pid = std::process::id();
    let ticks = start_ticks(pid).unwrap_or_default();
    let previous: Option<(String, i32, i64)> =
        sqlx::query_as("select boot_id, pid, start_ticks from stream_leader").fetch_optional(&mut *lock).await?;
    let wait = match previous {
        None => Duration::ZERO,
        Some((boot, p, t)) if boot == boot_id && (p as u32 == pid && t == ticks) => Duration::ZERO,
        Some((boot, p, t)) if boot == boot_id && !alive(p as u32, t) => Duration::ZERO,
        Some(_) => HANDOVER,
    };
    sqlx::query(
        "insert into stream_leader (singleton, boot_id, pid, start_ticks, since) values (true, $1, $2, $3, now())
         on conflict (singleton) do update set boot_id = $1, pid = $2, start_ticks = $3, since = now()",
    )
    .bind(&boot_id)
    .bind(pid as i32)
    .bind(ticks)
    .execute(&mut *lock)
    .await?;
    Ok(wait)
}
