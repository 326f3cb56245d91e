//! Extractors that carry tenancy. A handler for `/v1/tenants/{tenant}/...` takes `Scoped` (the tenant
//! as the caller may see it) or `Owned<T>` (one of that tenant's records by the `{id}` in the path):
//! both are checked before the handler runs, so no handler can forget the check. Another tenant's
//! tenant or record, a tenant that does not exist and a record that does not exist all get the same
//! 404, naming what was asked.

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use std::sync::Arc;

use super::auth::Caller;
use super::problem::Problem;
use super::ApiState;
use crate::agreement::{not_in_force, BatchAgreement, ServiceAgreement, StreamAgreement};
use crate::domain::{InstanceId, JobId};
use crate::store::instances::Instance;
use crate::store::jobs::{self, JobSummary};
use crate::store::Db;
use crate::tenant::TenantId;

/// The path's `{tenant}`, visible to the caller: a tenant token reaches its own tenant only, and a
/// tenant exists when it has an agreement in force or was provisioned (so its history stays readable
/// after its agreement is withdrawn).
pub struct Scoped {
    pub caller: Caller,
    pub tenant: TenantId,
}

/// One of the scoped tenant's records, by the path's `{id}`.
pub struct Owned<T> {
    pub tenant: TenantId,
    pub record: T,
}

/// The scoped tenant's agreement in force and its section `S` that the request needs (409 without
/// either: the tenant exists, but may not do this now).
pub struct InForce<S> {
    pub tenant: TenantId,
    pub agreement: Arc<ServiceAgreement>,
    pub section: S,
}

/// A part of the agreement a request can need.
pub trait Section: Sized {
    /// What it is called in a 409 ("the agreement of `zoo` has no stream section").
    const WHAT: &'static str;
    fn of(agreement: &ServiceAgreement) -> Option<Self>;
}

/// The agreement as a whole: only that it is in force.
pub struct Whole;

impl Section for Whole {
    const WHAT: &'static str = "";
    fn of(_: &ServiceAgreement) -> Option<Self> {
        Some(Whole)
    }
}

impl Section for BatchAgreement {
    const WHAT: &'static str = "batch";
    fn of(agreement: &ServiceAgreement) -> Option<Self> {
        agreement.batch.clone()
    }
}

impl Section for StreamAgreement {
    const WHAT: &'static str = "stream";
    fn of(agreement: &ServiceAgreement) -> Option<Self> {
        agreement.stream.clone()
    }
}

impl<S: Section> FromRequestParts<ApiState> for InForce<S> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Problem> {
        let Scoped { tenant, .. } = Scoped::from_request_parts(parts, state).await?;
        let agreement = state.agreements.get(&tenant).ok_or_else(|| Problem::conflict(not_in_force(&tenant)))?;
        let what = S::WHAT;
        let section = S::of(&agreement).ok_or_else(|| {
            Problem::conflict(format!("the agreement of `{tenant}` has no {what} section: no {what} ingestion"))
        })?;
        Ok(InForce { tenant, agreement, section })
    }
}

/// A record a tenant owns, found by its id among that tenant's only.
pub trait Record: Sized + Send {
    type Id: std::str::FromStr + Send;
    /// What it is called in a 404 ("tenant `zoo` has no instance `...`").
    const WHAT: &'static str;
    fn find(
        db: &Db,
        tenant: &TenantId,
        id: Self::Id,
    ) -> impl std::future::Future<Output = sqlx::Result<Option<Self>>> + Send;
}

impl Record for Instance {
    type Id = InstanceId;
    const WHAT: &'static str = "instance";
    async fn find(db: &Db, tenant: &TenantId, id: InstanceId) -> sqlx::Result<Option<Self>> {
        crate::store::instances::get(db, tenant, id).await
    }
}

impl Record for JobSummary {
    type Id = JobId;
    const WHAT: &'static str = "ingestion";
    async fn find(db: &Db, tenant: &TenantId, id: JobId) -> sqlx::Result<Option<Self>> {
        jobs::summary(db, tenant, id).await
    }
}

/// The value of path parameter `name` (percent-decoded).
async fn path_param(parts: &mut Parts, state: &ApiState, name: &str) -> Result<String, Problem> {
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|e| Problem::bad_request(format!("the path: {e}")))?;
    let found = params.iter().find(|(key, _)| *key == name).map(|(_, value)| value.to_owned());
    found.ok_or_else(|| Problem::internal(format!("the route has no `{{{name}}}` parameter")))
}

impl FromRequestParts<ApiState> for Scoped {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Problem> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let asked = path_param(parts, state, "tenant").await?;
        let tenant = visible(state, &caller, &asked).await?;
        Ok(Scoped { caller, tenant })
    }
}

impl<T: Record> FromRequestParts<ApiState> for Owned<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Problem> {
        let Scoped { tenant, .. } = Scoped::from_request_parts(parts, state).await?;
        let id = path_param(parts, state, "id").await?;
        let missing = || Problem::not_found(format!("tenant `{tenant}` has no {} `{id}`", T::WHAT));
        // An id that is no UUID names nothing either.
        let parsed = id.parse().map_err(|_| missing())?;
        let record = T::find(&state.db, &tenant, parsed).await?.ok_or_else(missing)?;
        Ok(Owned { tenant, record })
    }
}

/// `tenant` if the caller may see it and it exists; 404 otherwise.
pub async fn visible(state: &ApiState, caller: &Caller, tenant: &str) -> Result<TenantId, Problem> {
    let t = caller.scope(tenant)?;
    if state.agreements.get(&t).is_some() || crate::store::coredms::get(&state.db, &t).await?.is_some() {
        Ok(t)
    } else {
        Err(Problem::not_found(format!("there is no tenant `{tenant}`")))
    }
}
