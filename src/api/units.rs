//! Unit models: listed, queued explicitly (`POST /v1/models`), and queued on demand for the
//! requests that need them (scores, sweeps, validations, exports).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::Errors;
use super::{ApiError, AppState, Page, Q, resolve_base, resolve_recipe};
use crate::registry::datasets::{self, Kind};
use crate::registry::models::{self, Filter, UnitModel};

/// What a request that needs unit models gets when some are not ready: with `train` (the
/// default) those neither ready nor training are queued, and the request answers 202 with
/// this body naming every model it waits for and its job; with `train=false`, or when a
/// model's training failed, it is a 409 naming them.
pub(super) async fn train_missing(
    state: &AppState,
    base: Uuid,
    recipe: Uuid,
    missing: &[(Uuid, Option<UnitModel>)],
    name: &(dyn Fn(Uuid) -> String + Sync),
    train: bool,
) -> Result<Option<Value>, ApiError> {
    if missing.is_empty() {
        return Ok(None);
    }
    if !train {
        return Err(not_ready(
            "models_not_ready",
            "no ready unit model (train=false) for",
            missing,
            name,
        ));
    }
    let partitions: Vec<Uuid> = missing.iter().map(|(p, _)| *p).collect();
    let models = crate::jobs::train::queue_missing(&state.pool, base, recipe, &partitions).await?;
    let failed: Vec<(Uuid, Option<UnitModel>)> = models
        .iter()
        .filter(|m| m.state == "failed")
        .map(|m| (m.partition_id, Some(m.clone())))
        .collect();
    if !failed.is_empty() {
        return Err(not_ready(
            "models_failed",
            "training failed (POST /v1/models to train again) for",
            &failed,
            name,
        ));
    }
    let names: Vec<String> = models.iter().map(|m| name(m.partition_id)).collect();
    let training: Vec<Value> = models
        .iter()
        .map(|m| json!({ "partition": name(m.partition_id), "model": m.id, "job": m.job_id }))
        .collect();
    Ok(Some(json!({
        "training": training,
        "message": format!(
            "training the unit models of {}; ask again once their jobs end",
            names.join(", ")
        ),
    })))
}

/// 409 `code` naming the partitions (by `name`) whose unit models are not ready, with each
/// model's state and job in `details`.
fn not_ready(
    code: &'static str,
    what: &str,
    missing: &[(Uuid, Option<UnitModel>)],
    name: &(dyn Fn(Uuid) -> String + Sync),
) -> ApiError {
    let details: Vec<Value> = missing
        .iter()
        .map(|(p, model)| {
            json!({
                "partition": name(*p),
                "model_state": model.as_ref().map(|m| m.state.clone()),
                "job": model.as_ref().and_then(|m| m.job_id),
            })
        })
        .collect();
    let names: Vec<String> = missing.iter().map(|(p, _)| name(*p)).collect();
    ApiError::Client {
        status: StatusCode::CONFLICT,
        code,
        message: format!("{what}: {}", names.join(", ")),
        details: Some(json!(details)),
    }
}

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
        filter.base = Some(resolve_base(&state.pool, Some(key)).await?.id);
    }
    if let Some(key) = &params.recipe {
        filter.recipe = Some(resolve_recipe(&state.pool, Some(key)).await?.id);
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

/// The word `"all"`: every partition.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum All {
    All,
}

/// With `"train": "all"` a new base or recipe queues the unit models of every partition,
/// for the default recipe or base, in the caller's transaction; how many were queued.
pub(super) async fn train_all(
    db: &mut sqlx::PgConnection,
    base: Uuid,
    recipe: Uuid,
) -> Result<usize, sqlx::Error> {
    let partitions: Vec<Uuid> = datasets::all_partitions(&mut *db)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    Ok(
        crate::jobs::train::queue(db, base, recipe, &partitions, false)
            .await?
            .len(),
    )
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
    let base = resolve_base(&state.pool, Some(&base_key)).await?;
    let recipe = resolve_recipe(&state.pool, Some(&recipe_key)).await?;
    let partitions = match request.partitions {
        Partitions::All(All::All) => datasets::all_partitions(&state.pool).await?,
        Partitions::Named(keys) => {
            if keys.is_empty() {
                return Err(ApiError::bad_request(
                    "invalid_partitions",
                    "partitions names at least one partition, or is \"all\"",
                ));
            }
            let mut rows = Vec::with_capacity(keys.len());
            for key in keys {
                let row = datasets::find(&state.pool, Kind::Partition, &key)
                    .await?
                    .ok_or_else(|| ApiError::not_found(format!("partition {key:?}")))?;
                if !rows.iter().any(|(id, _)| *id == row.id) {
                    rows.push((row.id, row.name));
                }
            }
            rows
        }
    };
    let ids: Vec<Uuid> = partitions.iter().map(|(id, _)| *id).collect();
    let mut tx = state.pool.begin().await?;
    crate::jobs::train::queue(&mut tx, base.id, recipe.id, &ids, true).await?;
    tx.commit().await?;
    let all = models::for_partitions(&state.pool, base.id, recipe.id, &ids).await?;
    let name = |id: Uuid| {
        partitions
            .iter()
            .find(|(p, _)| *p == id)
            .map_or(String::new(), |(_, n)| n.clone())
    };
    let listed: Vec<Value> = ids
        .iter()
        .filter_map(|id| all.iter().find(|m| m.partition_id == *id))
        .map(|m| json!({ "partition": name(m.partition_id), "model": m }))
        .collect();
    let training = all.iter().filter(|m| m.state != "ready").count();
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
