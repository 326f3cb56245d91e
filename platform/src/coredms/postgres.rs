//! PostgreSQL as coredms: a database owned by a login role of the same name, with CONNECT revoked
//! from PUBLIC so no other tenant's role can open it. Collections are tables
//! `(_id text primary key, doc jsonb not null, ingested_at timestamptz)` the apps create.

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};

use super::CoreDmsError;
use crate::agreement::CoreDmsAgreement;
use crate::store::coredms::Credentials;

pub struct Provisioner {
    admin: PgPool,
}

fn pg(e: sqlx::Error) -> CoreDmsError {
    CoreDmsError::Postgres(e.to_string())
}

/// Identifiers here come from `TenantId::coredms_name` (`[a-z0-9_]`); quoting is belt and braces.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Errors a concurrent provisioner of the same tenant causes; the object exists, which is what we want.
fn already_exists(e: &sqlx::Error) -> bool {
    matches!(e.as_database_error().and_then(|d| d.code()).as_deref(), Some("42710" | "42P04" | "23505"))
}

impl Provisioner {
    pub async fn connect(admin_url: &str) -> Result<Self, CoreDmsError> {
        let admin = PgPoolOptions::new().max_connections(2).connect(admin_url).await.map_err(pg)?;
        Ok(Provisioner { admin })
    }

    pub async fn provision(&self, creds: &Credentials) -> Result<(), CoreDmsError> {
        let mut conn = self.lock(&creds.database).await?;
        let result = provision_locked(&mut conn, creds).await;
        unlock(conn, &creds.database, result).await
    }

    /// The agreement's share of the server for the tenant's login: a connection limit enforced by
    /// PostgreSQL, and timeouts as the login's defaults.
    pub async fn limit(&self, role: &str, limits: &CoreDmsAgreement) -> Result<(), CoreDmsError> {
        let r = ident(role);
        let ms = |d: std::time::Duration| literal(&format!("{}ms", d.as_millis()));
        let statements = [
            format!("alter role {r} connection limit {}", limits.max_connections),
            format!("alter role {r} set statement_timeout = {}", ms(limits.statement_timeout)),
            format!(
                "alter role {r} set idle_in_transaction_session_timeout = {}",
                ms(limits.idle_in_transaction_timeout)
            ),
        ];
        // The tenant's login and database share its name.
        let mut conn = self.lock(role).await?;
        let mut result = Ok(());
        for sql in statements {
            result = sqlx::query(&sql).execute(&mut *conn).await.map(drop).map_err(pg);
            if result.is_err() {
                break;
            }
        }
        unlock(conn, role, result).await
    }

    /// A connection holding the tenant's session lock. Role and grant changes of one tenant from two
    /// places at once fail with "tuple concurrently updated" (the tenant manager provisions and
    /// limits while each of the tenant's starting instances provisions), so every change of a
    /// tenant's login and database is made under this lock, in this process or another.
    async fn lock(&self, tenant: &str) -> Result<PoolConnection<Postgres>, CoreDmsError> {
        let mut conn = self.admin.acquire().await.map_err(pg)?;
        let key = format!("mysimbdp-provision/{tenant}");
        sqlx::query!("select pg_advisory_lock(hashtextextended($1, 0))", key).execute(&mut *conn).await.map_err(pg)?;
        Ok(conn)
    }

    /// The timeouts are only defaults a session may change for itself (`SET statement_timeout = 0`);
    /// here they are enforced: statements running past theirs are cancelled, sessions idle past
    /// theirs inside a transaction closed (a few seconds' grace, for sessions that honour them). Returns how many.
    pub async fn enforce(&self, logins: &[(String, CoreDmsAgreement)]) -> Result<u64, CoreDmsError> {
        if logins.is_empty() {
            return Ok(0);
        }
        let roles: Vec<&str> = logins.iter().map(|(r, _)| r.as_str()).collect();
        let statement: Vec<f64> = logins.iter().map(|(_, l)| l.statement_timeout.as_secs_f64()).collect();
        let idle: Vec<f64> = logins.iter().map(|(_, l)| l.idle_in_transaction_timeout.as_secs_f64()).collect();
        let ended = sqlx::query_scalar!(
            r#"with limits(role, statement_s, idle_s) as (select * from unnest($1::text[], $2::float8[], $3::float8[])),
                  over as (
                    select a.pid, a.state = 'active' as running from pg_stat_activity a join limits l on a.usename = l.role
                    where a.pid <> pg_backend_pid() and (
                      (a.state = 'active' and now() - a.query_start > make_interval(secs => l.statement_s + 5))
                      or (a.state like 'idle in transaction%' and now() - a.state_change > make_interval(secs => l.idle_s + 5))))
             select count(*) filter (where case when running then pg_cancel_backend(pid) else pg_terminate_backend(pid) end)
                    as "ended!"
             from over"#,
            &roles as &[&str],
            &statement,
            &idle,
        )
        .fetch_one(&self.admin)
        .await
        .map_err(pg)?;
        Ok(ended as u64)
    }

    pub async fn drop(&self, name: &str) -> Result<(), CoreDmsError> {
        let n = ident(name);
        sqlx::query(&format!("drop database if exists {n} with (force)")).execute(&self.admin).await.map_err(pg)?;
        sqlx::query(&format!("drop role if exists {n}")).execute(&self.admin).await.map_err(pg)?;
        Ok(())
    }
}

/// Releases `lock`'s lock; `result`, the locked work's outcome, comes first.
async fn unlock(
    mut conn: PoolConnection<Postgres>,
    tenant: &str,
    result: Result<(), CoreDmsError>,
) -> Result<(), CoreDmsError> {
    let key = format!("mysimbdp-provision/{tenant}");
    let unlocked = sqlx::query!("select pg_advisory_unlock(hashtextextended($1, 0))", key).fetch_one(&mut *conn).await;
    result?;
    unlocked.map_err(pg)?;
    Ok(())
}

/// Runs `create` unless `exists` (a query taking `name`) says the object is there; a concurrent
/// creator winning the race is fine too.
async fn create_unless_exists(
    conn: &mut sqlx::PgConnection,
    exists: &str,
    name: &str,
    create: &str,
) -> Result<(), CoreDmsError> {
    let there: bool = sqlx::query_scalar(exists).bind(name).fetch_one(&mut *conn).await.map_err(pg)?;
    if !there {
        if let Err(e) = sqlx::query(create).execute(&mut *conn).await {
            if !already_exists(&e) {
                return Err(pg(e));
            }
        }
    }
    Ok(())
}

async fn provision_locked(conn: &mut sqlx::PgConnection, creds: &Credentials) -> Result<(), CoreDmsError> {
    let (role, database, password) = (ident(&creds.username), ident(&creds.database), literal(&creds.password));
    create_unless_exists(
        conn,
        "select exists (select 1 from pg_roles where rolname = $1)",
        &creds.username,
        &format!("create role {role} login password {password} nosuperuser nocreatedb nocreaterole"),
    )
    .await?;
    sqlx::query(&format!("alter role {role} with login password {password}")).execute(&mut *conn).await.map_err(pg)?;
    create_unless_exists(
        conn,
        "select exists (select 1 from pg_database where datname = $1)",
        &creds.database,
        &format!("create database {database} owner {role}"),
    )
    .await?;
    sqlx::query(&format!("revoke all on database {database} from public")).execute(&mut *conn).await.map_err(pg)?;
    sqlx::query(&format!("grant connect, temporary on database {database} to {role}"))
        .execute(&mut *conn)
        .await
        .map_err(pg)?;
    Ok(())
}
