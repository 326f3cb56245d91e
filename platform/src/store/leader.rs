//! The stream manager's leadership (see `stream::leader`): a session lock held on a connection of its
//! own, and the row naming the process that holds it.

use sqlx::PgConnection;

/// Key of the session lock that makes one process the manager.
const MANAGER_LOCK: i64 = 0x6d79_7369_6d62_6470; // "mysimbdp"

/// Takes the manager lock on `conn`'s session if no other session holds it.
pub async fn try_lock(conn: &mut PgConnection) -> sqlx::Result<bool> {
    sqlx::query_scalar!(r#"select pg_try_advisory_lock($1) as "locked!""#, MANAGER_LOCK).fetch_one(conn).await
}

/// Whether the session answers (and so still holds its locks).
pub async fn ping(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query_scalar!("select 1 as one").fetch_one(conn).await.map(drop)
}

/// The process recorded as the last leader: its machine's boot id, pid and start time.
pub async fn last(conn: &mut PgConnection) -> sqlx::Result<Option<(String, i32, i64)>> {
    let row = sqlx::query!("select boot_id, pid, start_ticks from stream_leader").fetch_optional(conn).await?;
    Ok(row.map(|r| (r.boot_id, r.pid, r.start_ticks)))
}

/// Records this process as the leader.
pub async fn record(conn: &mut PgConnection, boot_id: &str, pid: i32, start_ticks: i64) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into stream_leader (singleton, boot_id, pid, start_ticks, since) values (true, $1, $2, $3, now())
         on conflict (singleton) do update set boot_id = $1, pid = $2, start_ticks = $3, since = now()",
        boot_id,
        pid,
        start_ticks,
    )
    .execute(conn)
    .await
    .map(drop)
}
