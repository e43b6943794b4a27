//! `GET /v1/overview`: the pool at a glance, for the dashboard's first page and for scripts
//! that watch a deployment.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::error::Errors;
use super::{ApiError, AppState};
use crate::registry::{bases, datasets, overview, recipes, workers};

/// A worker that reported itself within this many seconds counts as alive.
const ALIVE_SECONDS: f64 = 3.0 * crate::worker::PRESENCE_EVERY.as_secs() as f64;

/// Counts (bases, recipes, partitions, unit models by state, eval sets, scores, sweeps,
/// validations, searches), the queue by kind and state, the workers seen recently with their device
/// and current job, the partitions' domains, and the default base and recipe (`null` until
/// there is one).
#[utoipa::path(get, path = "/v1/overview", tag = "pool",
    responses((status = 200, body = Object, description = "`{counts, queue, workers, domains, default_base, default_recipe}`"), Errors))]
pub async fn overview(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let pool = &state.pool;
    let counts = overview::counts(pool).await?;
    let workers = workers::recent(pool, ALIVE_SECONDS).await?;
    let domains: Vec<Value> = datasets::domains(pool)
        .await?
        .into_iter()
        .map(|(domain, partitions)| json!({ "domain": domain, "partitions": partitions }))
        .collect();
    let base = bases::latest_ready(pool).await?;
    let recipe = recipes::latest(pool).await?;
    Ok(Json(json!({
        "counts": {
            "bases": counts.bases,
            "recipes": counts.recipes,
            "partitions": counts.partitions,
            "unit_models": counts.unit_models,
            "eval_sets": counts.eval_sets,
            "scores": counts.scores,
            "sweeps": counts.sweeps,
            "validations": counts.validations,
            "searches": counts.searches,
        },
        "queue": counts.queue,
        "workers": workers,
        "domains": domains,
        "default_base": base.map(|b| json!({ "id": b.id, "name": b.name, "config": b.config })),
        "default_recipe": recipe.map(|r| json!({ "id": r.id, "name": r.name, "config": r.config })),
    })))
}
