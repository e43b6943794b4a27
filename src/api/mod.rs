//! The REST API (v1). Handlers only do HTTP: they parse a request, call one workflow of
//! `crate::service` (or read the registry for a view), and shape the answer or map the
//! service's error to a status. They queue no job and touch no tensor themselves.

mod admin;
mod auth;
mod datasets;
mod error;
mod events;
mod health;
mod hf;
mod jobs;
mod leaderboard;
mod metrics;
mod models;
mod openapi;
mod overview;
pub mod score;
mod score_cache;
mod searches;
mod sweeps;
mod units;
mod validations;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use sqlx::PgPool;
use tokio::sync::watch;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

pub use error::ApiError;

pub use crate::service::sweep::SweepLimits;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub store: Store,
    /// Largest accepted upload, compressed or not.
    pub max_upload_bytes: u64,
    /// Longest `wait` a score request may ask for.
    pub max_wait: Duration,
    /// How big sweeps may be and how they are sharded.
    pub sweeps: SweepLimits,
    /// Turns true when the server stops: waits and event streams then end at once.
    pub shutdown: watch::Receiver<bool>,
    /// Whether GET requests need no token (`open_reads`); writes always need one.
    pub open_reads: bool,
    /// Score answers already given (see [`score_cache::ScoreCache`]).
    scores: Arc<score_cache::ScoreCache>,
    events: Arc<events::Events>,
    metrics: Arc<metrics::Metrics>,
}

impl AppState {
    /// The state of one server; starts its listener for the registry's notifications.
    pub fn new(pool: PgPool, store: Store, max_upload_bytes: u64, max_wait: Duration) -> Self {
        let scores = Arc::new(score_cache::ScoreCache::default());
        let events = events::Events::listen(pool.clone(), scores.clone());
        AppState {
            pool,
            store,
            max_upload_bytes,
            max_wait,
            sweeps: SweepLimits::default(),
            // Never stops unless the server sets its own signal.
            shutdown: watch::channel(false).1,
            open_reads: true,
            scores,
            events,
            metrics: Default::default(),
        }
    }

    /// Resolves once the server is stopping (never, for a server without a stop signal).
    pub(crate) async fn stopping(&self) {
        let mut shutdown = self.shutdown.clone();
        if shutdown.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await
        }
    }

    pub(crate) fn is_stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Waits until job `id` is final, `deadline` passes or the server stops; the job as it
    /// then is (`None` when there is no such job).
    async fn wait_for_job(
        &self,
        id: Uuid,
        deadline: tokio::time::Instant,
    ) -> Result<Option<crate::registry::jobs::Job>, sqlx::Error> {
        tokio::select! {
            job = self.events.wait_for_job(&self.pool, id, deadline) => job,
            _ = self.stopping() => crate::registry::jobs::get(&self.pool, id).await,
        }
    }

    /// What a request that was waiting on `job` answers when the server stops meanwhile.
    fn shutting_down(job: Uuid) -> ApiError {
        ApiError::Client {
            status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
            code: "shutting_down",
            message: format!("this server is shutting down; retry the request (job {job} goes on)"),
            details: Some(serde_json::json!({ "job": job })),
        }
    }
}

pub fn router(state: AppState) -> Router {
    let tracked = state.clone();
    let (routes, mut spec) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(models::create_base, models::list_bases))
        .routes(routes!(hf::import_base))
        .routes(routes!(models::get_base))
        .routes(routes!(models::create_recipe, models::list_recipes))
        .routes(routes!(models::get_recipe))
        .routes(routes!(units::train_models, units::list_models))
        .routes(routes!(units::get_model))
        .routes(routes!(overview::overview))
        .routes(routes!(leaderboard::leaderboard))
        .routes(routes!(leaderboard::heatmap))
        .routes(routes!(
            datasets::upload_partition,
            datasets::list_partitions
        ))
        .routes(routes!(datasets::get_partition, datasets::delete_partition))
        .routes(routes!(datasets::upload_eval_set, datasets::list_eval_sets))
        .routes(routes!(datasets::get_eval_set))
        .routes(routes!(jobs::list_jobs))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::cancel_job))
        .routes(routes!(events::job_events))
        .routes(routes!(score::get_score))
        .routes(routes!(score::post_scores))
        .routes(routes!(hf::export_mixture))
        .routes(routes!(sweeps::create_sweep, sweeps::list_sweeps))
        .routes(routes!(sweeps::get_sweep))
        .routes(routes!(searches::create_search, searches::list_searches))
        .routes(routes!(searches::get_search))
        .routes(routes!(
            validations::create_validations,
            validations::list_validations
        ))
        .routes(routes!(validations::report))
        .routes(routes!(validations::get_validation))
        .routes(routes!(admin::fsck))
        .routes(routes!(auth::whoami))
        .routes(routes!(metrics::metrics))
        .split_for_parts();
    openapi::name_job_kinds(&mut spec);
    let doc = openapi::served(&spec);
    routes
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/docs")
                .external_url_unchecked("/v1/openapi.json", doc),
        )
        .merge(crate::web::router())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            tracked,
            metrics::track,
        ))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                // A failed request is logged once, by `ApiError`, with its cause.
                .on_failure(()),
        )
        .with_state(state)
}

/// Each request's span: its method, the route it matched (the pattern, not the path) and
/// its path.
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(axum::extract::MatchedPath::as_str);
    tracing::info_span!("request", method = %request.method(), route, path = request.uri().path())
}

/// An unknown route: 404 in the JSON error shape.
async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::Client {
        status: axum::http::StatusCode::NOT_FOUND,
        code: "no_route",
        message: format!(
            "no route {method} {}: see the API table in README.md",
            uri.path()
        ),
        details: None,
    }
}

/// A known route asked with another method: 405 in the JSON error shape.
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::Client {
        status: axum::http::StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        message: format!("{} does not take {method}", uri.path()),
        details: None,
    }
}

/// `Query`, with malformed query strings answered in the API's JSON error shape.
pub struct Q<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Q(v))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// The query of a plain list request.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Rows per page, 1 to 500 (default 50).
    limit: Option<i64>,
    /// The `next` value of the previous page.
    cursor: Option<String>,
}

/// A list request's `limit` and `cursor`, checked. Keyset pagination: a page's `next` names
/// its last row by creation time and id.
struct Page {
    limit: i64,
    before: Option<(chrono::DateTime<chrono::Utc>, Uuid)>,
}

impl Page {
    fn parse(limit: Option<i64>, cursor: Option<&str>) -> Result<Self, ApiError> {
        let limit = limit.unwrap_or(50);
        if !(1..=500).contains(&limit) {
            return Err(ApiError::bad_request(
                "invalid_limit",
                "limit must be between 1 and 500",
            ));
        }
        let before = match cursor {
            None => None,
            Some(cursor) => Some(decode_cursor(cursor).ok_or_else(|| {
                ApiError::bad_request("invalid_cursor", "cursor is not one this server gave")
            })?),
        };
        Ok(Page { limit, before })
    }

    /// The rows with the cursor of the next page, when this one is full.
    fn answer<T: serde::Serialize>(
        &self,
        rows: &[T],
        key: impl Fn(&T) -> (chrono::DateTime<chrono::Utc>, Uuid),
    ) -> axum::Json<serde_json::Value> {
        let next = (rows.len() as i64 == self.limit)
            .then(|| {
                rows.last().map(|r| {
                    let (at, id) = key(r);
                    format!("{}_{id}", at.timestamp_micros())
                })
            })
            .flatten();
        axum::Json(serde_json::json!({ "items": rows, "next": next }))
    }
}

fn decode_cursor(cursor: &str) -> Option<(chrono::DateTime<chrono::Utc>, Uuid)> {
    let (micros, id) = cursor.split_once('_')?;
    Some((
        chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        id.parse().ok()?,
    ))
}

fn parse_uuid(s: &str) -> Option<Uuid> {
    Uuid::parse_str(s).ok()
}

impl crate::service::scoring::WaitForJob for AppState {
    async fn wait_for_job(
        &self,
        id: Uuid,
        deadline: tokio::time::Instant,
    ) -> Result<Option<crate::registry::jobs::Job>, sqlx::Error> {
        AppState::wait_for_job(self, id, deadline).await
    }
}
