//! The OpenAPI document, generated from the handlers' annotations and served at `/openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::extract::Json;
use super::{apps, health, ingestions, instances, problem, staging, stats, stream, tenants};

#[derive(OpenApi)]
#[openapi(
    info(title = "mysimbdp control plane", description = "Multi-tenant big-data ingestion: apps, staging, ingestion logs, stream app instances and their monitoring, statistics. Every error is an application/problem+json document."),
    paths(
        health::healthz, health::readyz, health::metrics,
        tenants::whoami, tenants::list, tenants::show,
        apps::upload, apps::list, apps::show, apps::delete,
        staging::put, staging::list,
        ingestions::list, ingestions::show, ingestions::log, ingestions::retry,
        instances::start, instances::list, instances::show, instances::stop, instances::stop_app, instances::log,
        stream::reports, stream::notifications, stream::actions,
        stats::tenant, stats::platform,
    ),
    components(schemas(problem::Problem, ingestions::RetryRequest, instances::StartRequest, crate::apps::AppKind, crate::store::jobs::JobState)),
    modifiers(&Bearer),
    tags((name = "tenants"), (name = "apps"), (name = "staging"), (name = "ingestions"), (name = "instances"), (name = "stream"), (name = "stats"), (name = "health")),
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
