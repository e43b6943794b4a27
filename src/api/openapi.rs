//! The OpenAPI 3.1 document: paths come from the handlers' `#[utoipa::path]` annotations as
//! the router registers them (so the document and the routes are one list), schemas from the
//! request types. Served at `/v1/openapi.json`, with Swagger UI at `/docs` (its files are in
//! the binary).

use utoipa::Modify;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "mixpool",
        description = "Scores data mixtures by the perplexity of the parameter average of \
            per-partition models. Writes need a bearer token with the write scope \
            (`mixpool token create`), /v1/admin/ the admin scope; reads are open unless the \
            server sets open_reads = false. Every error is `{\"error\": {\"code\", \"message\"}}`."
    ),
    components(schemas(super::error::ErrorBody)),
    modifiers(&Bearer),
    tags(
        (name = "pool", description = "the pool at a glance"),
        (name = "datasets", description = "partitions and eval sets"),
        (name = "models", description = "bases, recipes and unit models"),
        (name = "scores", description = "mixture scores and merged exports"),
        (name = "sweeps", description = "every subset, ranked"),
        (name = "searches", description = "mixture weights searched by merged evaluations"),
        (name = "validations", description = "trained models against the proxies"),
        (name = "jobs", description = "the queue"),
        (name = "auth", description = "tokens"),
        (name = "admin", description = "operators"),
        (name = "health", description = "probes and metrics"),
    )
)]
pub struct ApiDoc;

/// Names the registered job kinds as the values of `GET /v1/jobs`'s `kind` filter.
pub fn name_job_kinds(spec: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let Some(list) = spec.paths.paths.get_mut("/v1/jobs") else {
        return;
    };
    let parameters = list
        .get
        .iter_mut()
        .flat_map(|op| op.parameters.iter_mut().flatten());
    for parameter in parameters.filter(|p| p.name == "kind") {
        let kinds = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(crate::jobs::names()));
        parameter.schema = Some(kinds.into());
    }
}

/// A link: `(operation, status, link name, target operation, [(parameter, expression)])`.
type Link = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// How answers lead to other operations (OpenAPI links), for clients and for stateful
/// fuzzing.
const LINKS: &[Link] = {
    const PARTITION: &str = "$response.body#/partition/name";
    const JOB: &str = "$response.body#/job/id";
    const LISTED_JOB: &str = "$response.body#/items/0/id";
    &[
        (
            "upload_partition",
            "201",
            "GetPartition",
            "get_partition",
            &[("key", PARTITION)],
        ),
        (
            "upload_partition",
            "201",
            "ScorePartition",
            "get_score",
            &[("partitions", PARTITION)],
        ),
        (
            "upload_partition",
            "201",
            "DeletePartition",
            "delete_partition",
            &[("key", PARTITION)],
        ),
        (
            "upload_partition",
            "200",
            "GetPartition",
            "get_partition",
            &[("key", PARTITION)],
        ),
        (
            "upload_eval_set",
            "201",
            "GetEvalSet",
            "get_eval_set",
            &[("key", "$response.body#/name")],
        ),
        (
            "upload_eval_set",
            "201",
            "ScoreOn",
            "get_score",
            &[("eval", "$response.body#/name")],
        ),
        ("get_score", "202", "GetJob", "get_job", &[("id", JOB)]),
        (
            "get_score",
            "202",
            "CancelJob",
            "cancel_job",
            &[("id", JOB)],
        ),
        ("export_mixture", "202", "GetJob", "get_job", &[("id", JOB)]),
        (
            "list_jobs",
            "200",
            "GetJob",
            "get_job",
            &[("id", LISTED_JOB)],
        ),
        (
            "list_jobs",
            "200",
            "CancelJob",
            "cancel_job",
            &[("id", LISTED_JOB)],
        ),
        (
            "create_sweep",
            "201",
            "GetSweep",
            "get_sweep",
            &[("id", "$response.body#/id")],
        ),
        (
            "create_search",
            "201",
            "GetSearch",
            "get_search",
            &[("id", "$response.body#/id")],
        ),
        (
            "create_base",
            "201",
            "GetBase",
            "get_base",
            &[("key", "$response.body#/name")],
        ),
        (
            "create_recipe",
            "201",
            "GetRecipe",
            "get_recipe",
            &[("key", "$response.body#/name")],
        ),
    ]
};

/// The document as served: with [`LINKS`] added to the operations' responses (as JSON:
/// utoipa's `Link` writes its fields in snake case, which no client reads).
pub fn served(spec: &utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut doc = serde_json::to_value(spec).expect("the document serialises");
    let Some(paths) = doc["paths"].as_object_mut() else {
        return doc;
    };
    for operation in paths.values_mut().filter_map(|item| item.as_object_mut()) {
        for operation in operation.values_mut() {
            let Some(id) = operation["operationId"].as_str().map(str::to_string) else {
                continue;
            };
            for (_, status, name, target, parameters) in LINKS.iter().filter(|l| l.0 == id) {
                let Some(response) = operation["responses"].get_mut(*status) else {
                    continue;
                };
                let parameters: serde_json::Map<String, serde_json::Value> = parameters
                    .iter()
                    .map(|(p, e)| (p.to_string(), (*e).into()))
                    .collect();
                response["links"][*name] =
                    serde_json::json!({ "operationId": target, "parameters": parameters });
            }
        }
    }
    doc
}

/// The `bearer` security scheme that write operations name.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}
