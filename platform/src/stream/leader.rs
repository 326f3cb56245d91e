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
use crate::store::{self, Db};

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
        if store::leader::try_lock(&mut conn).await? {
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
    matches!(tokio::time::timeout(CHECK_TIMEOUT, store::leader::ping(lock)).await, Ok(Ok(())))
}

/// What a new leader must wait before starting instances: nothing when the previous leader was this
/// process or is a process of this machine that is gone; `HANDOVER` otherwise. Records this process
/// as the leader.
pub async fn take_over(lock: &mut PgConnection) -> anyhow::Result<Duration> {
    let boot_id = boot_id();
    let pid = std::process::id();
    let ticks = start_ticks(pid).unwrap_or_default();
    let previous = store::leader::last(lock).await?;
    let wait = match previous {
        None => Duration::ZERO,
        Some((boot, p, t)) if boot == boot_id && (p as u32 == pid && t == ticks) => Duration::ZERO,
        Some((boot, p, t)) if boot == boot_id && !alive(p as u32, t) => Duration::ZERO,
        Some(_) => HANDOVER,
    };
    store::leader::record(lock, &boot_id, pid as i32, ticks).await?;
    Ok(wait)
}
