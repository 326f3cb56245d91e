//! PostgreSQL as coredms: a database owned by a login role of the same name, with CONNECT revoked
//! from PUBLIC so no other tenant's role can open it. Collections are tables
//! `(_id text primary key, doc jsonb not null, ingested_at timestamptz)` the apps create.

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use super::CoreDmsError;
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
        // Role and grant changes of one tenant from two places at once fail with "tuple concurrently
        // updated"; a session lock per tenant serialises provisioners, in this process or another.
        let mut conn = self.admin.acquire().await.map_err(pg)?;
        let key = format!("mysimbdp-provision/{}", creds.database);
        sqlx::query("select pg_advisory_lock(hashtextextended($1, 0))")
            .bind(&key)
            .execute(&mut *conn)
            .await
            .map_err(pg)?;
        let result = provision_locked(&mut conn, creds).await;
        let unlocked =
            sqlx::query("select pg_advisory_unlock(hashtextextended($1, 0))").bind(&key).execute(&mut *conn).await;
        result?;
        unlocked.map_err(pg)?;
        Ok(())
    }

    pub async fn drop(&self, name: &str) -> Result<(), CoreDmsError> {
        let n = ident(name);
        sqlx::query(&format!("drop database if exists {n} with (force)")).execute(&self.admin).await.map_err(pg)?;
        sqlx::query(&format!("drop role if exists {n}")).execute(&self.admin).await.map_err(pg)?;
        Ok(())
    }
}

async fn provision_locked(conn: &mut sqlx::PgConnection, creds: &Credentials) -> Result<(), CoreDmsError> {
    let role = ident(&creds.username);
    let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_roles where rolname = $1)")
        .bind(&creds.username)
        .fetch_one(&mut *conn)
        .await
        .map_err(pg)?;
    let password = literal(&creds.password);
    if !exists {
        let created =
            sqlx::query(&format!("create role {role} login password {password} nosuperuser nocreatedb nocreaterole"))
                .execute(&mut *conn)
                .await;
        if let Err(e) = created {
            if !already_exists(&e) {
                return Err(pg(e));
            }
        }
    }
    sqlx::query(&format!("alter role {role} with login password {password}")).execute(&mut *conn).await.map_err(pg)?;

    let db_exists: bool = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
        .bind(&creds.database)
        .fetch_one(&mut *conn)
        .await
        .map_err(pg)?;
    let database = ident(&creds.database);
    if !db_exists {
        if let Err(e) = sqlx::query(&format!("create database {database} owner {role}")).execute(&mut *conn).await {
            if !already_exists(&e) {
                return Err(pg(e));
            }
        }
    }
    sqlx::query(&format!("revoke all on database {database} from public")).execute(&mut *conn).await.map_err(pg)?;
    sqlx::query(&format!("grant connect, temporary on database {database} to {role}"))
        .execute(&mut *conn)
        .await
        .map_err(pg)?;
    Ok(())
}
