//! Unit models: listed, and queued explicitly (`POST /v1/models`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::Errors;
use super::{ApiError, AppState, Page, Q};
use crate::registry::datasets::{self, Kind};
use crate::registry::models::{self, Filter};
use crate::service::bases::All;
use crate::service::{resolve, units};

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListModels {
    base: Option<String>,
    recipe: Option<String>,
    partition: Option<String>,
    state: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

const STATES: [&str; 4] = ["queued", "ready", "failed", "cancelled"];

/// `GET /v1/models?base=&recipe=&partition=&state=`: unit models, newest first, paged.
#[utoipa::path(get, path = "/v1/models", tag = "models", params(ListModels),
    responses((status = 200, body = Object, description = "`{items, next}`: unit models, newest first"), Errors))]
pub async fn list_models(
    State(state): State<AppState>,
    Q(params): Q<ListModels>,
) -> Result<Json<Value>, ApiError> {
    let page = Page::parse(params.limit, params.cursor.as_deref())?;
    if let Some(s) = &params.state
        && !STATES.contains(&s.as_str())
    {
        return Err(ApiError::bad_request(
            "invalid_state",
            format!("state {s:?}: use one of {}", STATES.join(", ")),
        ));
    }
    let mut filter = Filter {
        state: params.state.clone(),
        ..Filter::default()
    };
    if let Some(key) = &params.base {
        filter.base = Some(resolve::base(&state.pool, Some(key)).await?.id);
    }
    if let Some(key) = &params.recipe {
        filter.recipe = Some(resolve::recipe(&state.pool, Some(key)).await?.id);
    }
    if let Some(key) = &params.partition {
        let partition = datasets::find(&state.pool, Kind::Partition, key)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("partition {key:?}")))?;
        filter.partition = Some(partition.id);
    }
    let rows = models::list(&state.pool, &filter, page.before, page.limit).await?;
    Ok(page.answer(&rows, |m| (m.created_at, m.id)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainRequest {
    base: Option<String>,
    recipe: Option<String>,
    /// Partition names or ids, or `"all"`.
    #[schema(value_type = Object)]
    partitions: Partitions,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Partitions {
    Named(Vec<String>),
    All(All),
}

/// `POST /v1/models {"base"?, "recipe"?, "partitions": [...] | "all"}`: queues the training
/// of the partitions' unit models that are not ready and not training (failed ones again);
/// 202 when something was queued or is training, 200 when all are ready. The answer lists
/// every named partition's model.
#[utoipa::path(post, path = "/v1/models", tag = "models", request_body = TrainRequest, security(("bearer" = [])),
    responses((status = 200, body = Object, description = "every unit model is ready"), (status = 202, body = Object, description = "some train: their jobs"), Errors))]
pub async fn train_models(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request: TrainRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
    let (base_key, recipe_key) = state
        .scores
        .names(
            &state.pool,
            request.base.as_deref(),
            request.recipe.as_deref(),
        )
        .await?;
    let base = resolve::base(&state.pool, Some(&base_key)).await?;
    let recipe = resolve::recipe(&state.pool, Some(&recipe_key)).await?;
    let partitions = match request.partitions {
        Partitions::All(All::All) => datasets::all_partitions(&state.pool).await?,
        Partitions::Named(keys) => {
            if keys.is_empty() {
                return Err(ApiError::bad_request(
                    "invalid_partitions",
                    "partitions names at least one partition, or is \"all\"",
                ));
            }
            let mut resolved = resolve::Partitions::default();
            let ids = resolved.resolve(&state.pool, &keys).await?;
            let mut rows: Vec<(Uuid, String)> = Vec::with_capacity(ids.len());
            for id in ids {
                if !rows.iter().any(|(p, _)| *p == id) {
                    rows.push((id, resolved.name(id).to_string()));
                }
            }
            rows
        }
    };
    let models = units::train(&state.pool, base.id, recipe.id, &partitions).await?;
    let training = models.iter().filter(|(_, m)| m.state != "ready").count();
    let listed: Vec<Value> = models
        .iter()
        .map(|(name, model)| json!({ "partition": name, "model": model }))
        .collect();
    let status = if training > 0 {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({
            "base": base.name,
            "recipe": recipe.name,
            "models": listed,
            "training": training,
        })),
    ))
}

/// `GET /v1/models/{id}`: one unit model with its partition, base, recipe, training job
/// (state, progress, result with tokens/s and duration) and its loss series (`loss`:
/// `[step, loss]` pairs, recorded every few steps while it trains).
#[utoipa::path(get, path = "/v1/models/{id}", tag = "models", params(("id" = String, Path, description = "the unit model's id")),
    responses((status = 200, body = Object, description = "`{model, partition, base, recipe, job, loss}`"), Errors))]
pub async fn get_model(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = super::parse_uuid(&id).ok_or_else(|| {
        ApiError::bad_request("invalid_id", format!("{id:?} is not a unit model id"))
    })?;
    let model = models::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unit model {id}")))?;
    let partition = datasets::find(
        &state.pool,
        Kind::Partition,
        &model.partition_id.to_string(),
    )
    .await?;
    let base = crate::registry::bases::find(&state.pool, &model.base_id.to_string()).await?;
    let recipe = crate::registry::recipes::find(&state.pool, &model.recipe_id.to_string()).await?;
    let (job, loss) = match model.job_id {
        Some(job) => (
            crate::registry::jobs::get(&state.pool, job).await?,
            crate::registry::jobs::losses(&state.pool, job).await?,
        ),
        None => (None, Vec::new()),
    };
    Ok(Json(json!({
        "model": model,
        "partition": partition,
        "base": base.map(|b| json!({ "id": b.id, "name": b.name, "config": b.config })),
        "recipe": recipe,
        "job": job,
        "loss": loss,
    })))
}
