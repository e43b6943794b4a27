//! Bases and recipes: what unit models are trained from and how.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::error::Errors;
use super::{ApiError, AppState, ListParams, Page, Q};
use crate::registry::{Created, bases, recipes};
use crate::service::bases::{BaseView, NewBase};

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))
}

/// `POST /v1/bases {"name", "preset", "seed"?, "pretrain_on"?, "pretrain_tokens"?,
/// "pretrain"?, "train"?}`: a base from a preset. Without `pretrain_on` its random
/// initialisation is stored before its row is written (ready at once); with it, the base is
/// `pending` and a `pretrain` job, queued in the same transaction, trains and stores it.
/// `"train": "all"` queues every partition's unit model for the default recipe, with the
/// base's row (or, for a pre-trained base, when its pre-training succeeds).
#[utoipa::path(post, path = "/v1/bases", tag = "models", request_body = NewBase, security(("bearer" = [])),
    responses((status = 201, body = Object, description = "the base (pending while a job pre-trains it)"), (status = 200, body = Object, description = "the same base already exists"), Errors))]
pub async fn create_base(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<BaseView>), ApiError> {
    let new: NewBase = parse(&body)?;
    let view = crate::service::bases::create(&state.pool, &state.store, &new).await?;
    if view.job.is_none() {
        state.scores.defaults_changed();
    }
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(get, path = "/v1/bases/{key}", tag = "models", params(("key" = String, Path, description = "name or id")),
    responses((status = 200, body = Object, description = "the base with its pre-training job"), Errors))]
pub async fn get_base(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<BaseView>, ApiError> {
    let base = bases::find(&state.pool, &key)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("base {key:?}")))?;
    let job = bases::pretrain_job(&state.pool, base.id).await?;
    Ok(Json(BaseView {
        base,
        job,
        training: None,
    }))
}

#[utoipa::path(get, path = "/v1/bases", tag = "models", params(crate::api::ListParams),
    responses((status = 200, body = Object, description = "`{items, next}`, newest first"), Errors))]
pub async fn list_bases(
    State(state): State<AppState>,
    Q(params): Q<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let page = Page::parse(params.limit, params.cursor.as_deref())?;
    let rows = bases::list(&state.pool, page.before, page.limit).await?;
    Ok(page.answer(&rows, |b| (b.created_at, b.id)))
}

#[utoipa::path(get, path = "/v1/recipes", tag = "models", params(crate::api::ListParams),
    responses((status = 200, body = Object, description = "`{items, next}`, newest first"), Errors))]
pub async fn list_recipes(
    State(state): State<AppState>,
    Q(params): Q<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let page = Page::parse(params.limit, params.cursor.as_deref())?;
    let rows = recipes::list(&state.pool, page.before, page.limit).await?;
    Ok(page.answer(&rows, |r| (r.created_at, r.id)))
}

/// `POST /v1/recipes {"name", "tokens", "lr", …}`: unset settings take the unit-model
/// defaults; equal settings are the existing recipe (200).
#[utoipa::path(post, path = "/v1/recipes", tag = "models",
    request_body(content = Object, description = "`{name, train?: \"all\", ...}` with any training settings (tokens, lr, batch_tokens, seq_len, ...); unset ones take the defaults"),
    security(("bearer" = [])),
    responses((status = 201, body = Object, description = "the recipe"), (status = 200, body = Object, description = "the same settings exist"), Errors))]
pub async fn create_recipe(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let fields: serde_json::Map<String, Value> = parse(&body)?;
    let (created, training) = crate::service::recipes::create(&state.pool, fields).await?;
    state.scores.defaults_changed();
    let status = if created.is_new() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let recipe = match created {
        Created::New(r) | Created::Existing(r) => r,
    };
    let mut body = json!(recipe);
    if let Some(training) = training {
        body["training"] = json!(training);
    }
    Ok((status, Json(body)))
}

#[utoipa::path(get, path = "/v1/recipes/{key}", tag = "models", params(("key" = String, Path, description = "name or id")),
    responses((status = 200, body = Object, description = "the recipe"), Errors))]
pub async fn get_recipe(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<recipes::Recipe>, ApiError> {
    recipes::find(&state.pool, &key)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("recipe {key:?}")))
}
