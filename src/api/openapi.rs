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
