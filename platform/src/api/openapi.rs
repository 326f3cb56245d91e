//! The OpenAPI document, generated from the handlers' annotations and served at `/openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::extract::Json;
use super::{apps, health, ingestions, instances, lake, problem, secrets, staging, stats, stream, tenants};

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
        secrets::put, secrets::list, secrets::delete,
        lake::list, lake::download,
    ),
    components(schemas(problem::Problem, ingestions::RetryRequest, instances::StartRequest, crate::apps::AppKind, crate::store::jobs::JobState, secrets::PutSecret)),
    modifiers(&Bearer),
    tags((name = "tenants"), (name = "apps"), (name = "staging"), (name = "ingestions"), (name = "instances"), (name = "stream"), (name = "stats"), (name = "secrets"), (name = "lake"), (name = "health")),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema an operation answers 200 with, its `$ref`s followed.
    fn ok_schema(doc: &serde_json::Value, path: &str) -> serde_json::Value {
        let mut schema = doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"].clone();
        while let Some(name) = schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/schemas/")) {
            schema = doc["components"]["schemas"][name].clone();
        }
        schema
    }

    #[test]
    fn every_list_is_one_kind_of_page() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let lists = ["ingestions", "instances", "reports", "notifications", "actions"];
        for list in lists {
            let path = format!("/v1/tenants/{{tenant}}/{list}");
            let schema = ok_schema(&doc, &path);
            // A page, or (reports) a page with more beside it.
            let parts = schema["allOf"].as_array().cloned().unwrap_or_else(|| vec![schema.clone()]);
            let props: Vec<String> = parts
                .iter()
                .flat_map(|p| {
                    let p = match p["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/schemas/")) {
                        Some(name) => doc["components"]["schemas"][name].clone(),
                        None => p.clone(),
                    };
                    p["properties"].as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default()
                })
                .collect();
            assert!(props.contains(&"items".into()) && props.contains(&"next_cursor".into()), "{path}: {schema}");
            let params: Vec<&str> = doc["paths"][&path]["get"]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            assert!(params.contains(&"limit") && params.contains(&"cursor"), "{path}: {params:?}");
        }
    }
}
