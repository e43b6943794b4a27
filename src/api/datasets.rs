//! Partitions and evaluation sets: streamed uploads, listing, fetching one.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::Errors;
use super::{ApiError, AppState, ListParams, Page, Q};
use crate::engine::data::Format;
use crate::ingest::{IngestError, Upload, ingest};
use crate::registry::datasets::{self, Dataset, Kind};
use crate::registry::{Created, RegistryError, bases, models, recipes};
use crate::service::partitions;
use crate::service::sources::{self, RegisterRequest};

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadParams {
    /// The dataset's name (letters, digits, `-`, `_`, `.`). Without it, the body is a JSON
    /// object naming objects of the store to read in place (`RegisterRequest`).
    name: Option<String>,
    /// The partition's domain.
    domain: Option<String>,
    /// Comma-separated.
    tags: Option<String>,
    /// `jsonl`, `text` or `parquet`; taken from the content when absent (Parquet by its
    /// magic bytes).
    format: Option<String>,
    /// Parquet: the column holding the text (default `text`).
    text_field: Option<String>,
    /// Partitions only: queue the unit model for the default base and recipe (default true).
    train: Option<bool>,
    /// Eval sets only: `text` (held-out documents) or `choices` (multiple-choice questions:
    /// `{"context", "choices", "gold", "task"?}` per line, or the lm-eval-harness, ARC,
    /// HellaSwag or PIQA shapes); taken from the first record's fields when absent.
    kind: Option<String>,
}

#[utoipa::path(post, path = "/v1/partitions", tag = "datasets", params(UploadParams),
    request_body(content = String, description = "JSONL (a `text` per line), text or Parquet, optionally gzip or zstd; without `name`, a JSON `RegisterRequest` naming objects of the store to read in place", content_type = "application/octet-stream",
        example = json!("{\"text\": \"def add(a, b):\\n    return a + b\"}\n{\"text\": \"print(add(1, 2))\"}\n")),
    security(("bearer" = [])),
    responses((status = 201, body = Object, description = "stored: the partition and its queued unit model"),
              (status = 200, body = Object, description = "the same bytes were already stored"),
              (status = 202, body = Object, description = "a registration from the store: its `register` job, whose result holds the partition and its unit model once read"), Errors))]
pub async fn upload_partition(
    State(state): State<AppState>,
    Q(params): Q<UploadParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if params.name.is_none() {
        return register(&state, Kind::Partition, params, body).await;
    }
    let train = params.train.unwrap_or(true);
    let created = upload(&state, Kind::Partition, params, &headers, body).await?;
    let status = if created.is_new() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let new = created.is_new();
    let partition = created.into_inner();
    let models = partitions::uploaded(&state.pool, &partition, new, train).await?;
    Ok((
        status,
        Json(json!({ "partition": partition, "models": models })),
    ))
}

#[utoipa::path(post, path = "/v1/eval-sets", tag = "datasets", params(UploadParams),
    request_body(content = String, description = "JSONL with a `text` and an optional `domain` per line, or Parquet; without `name`, a JSON `RegisterRequest` naming objects of the store to read in place", content_type = "application/octet-stream",
        example = json!("{\"text\": \"Held out: a sentence the unit models never saw.\", \"domain\": \"prose\"}\n")),
    security(("bearer" = [])),
    responses((status = 201, body = Object, description = "stored"), (status = 200, body = Object, description = "already stored"),
              (status = 202, body = Object, description = "a registration from the store: its `register` job, whose result holds the eval set once read"), Errors))]
pub async fn upload_eval_set(
    State(state): State<AppState>,
    Q(params): Q<UploadParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if params.name.is_none() {
        return register(&state, Kind::EvalSet, params, body).await;
    }
    if params.train.is_some() {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "train applies to partitions, not eval sets",
        ));
    }
    let created = upload(&state, Kind::EvalSet, params, &headers, body).await?;
    let status = if created.is_new() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!(created.into_inner()))))
}

/// Largest registration body.
const MAX_REGISTRATION: usize = 1 << 20;

/// A registration from objects of the store: 202 with its `register` job, whose result
/// holds the dataset (and a partition's queued unit model) once read.
async fn register(
    state: &AppState,
    kind: Kind,
    params: UploadParams,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let UploadParams {
        name: None,
        domain: None,
        tags: None,
        format: None,
        text_field: None,
        train: None,
        kind: None,
    } = params
    else {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "a registration takes its settings in its JSON body; upload parameters need a name",
        ));
    };
    let bytes = axum::body::to_bytes(body, MAX_REGISTRATION)
        .await
        .map_err(|e| ApiError::bad_request("bad_body", e.to_string()))?;
    let request: RegisterRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!(
                "without a name parameter the body names objects of the store to read: \
                 {{\"name\", \"objects\": [...] | \"prefix\"}} ({e})"
            ),
        )
    })?;
    let job = sources::register(&state.pool, &state.store, kind, request).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "job": job }))))
}

const CONTENT_TYPES: &[&str] = &[
    "application/jsonl",
    "application/x-ndjson",
    "application/json",
    "text/plain",
    "application/octet-stream",
    "application/gzip",
    "application/zstd",
    // What `curl --data-binary` sends unless told otherwise; the body is taken as is.
    "application/x-www-form-urlencoded",
];

async fn upload(
    state: &AppState,
    kind: Kind,
    params: UploadParams,
    headers: &HeaderMap,
    body: Body,
) -> Result<Created<Dataset>, ApiError> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let essence = content_type
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !CONTENT_TYPES.contains(&essence.as_str()) {
            return Err(ApiError::status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "content type {essence:?} is not accepted: send JSONL or plain text ({})",
                    CONTENT_TYPES.join(", ")
                ),
            ));
        }
    }
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        let encoding = encoding.to_str().unwrap_or("").trim().to_ascii_lowercase();
        if !matches!(encoding.as_str(), "gzip" | "zstd" | "identity") {
            return Err(ApiError::status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                format!("content encoding {encoding:?} is not accepted: use gzip or zstd"),
            ));
        }
    }
    let (format, parquet) = match params.format.as_deref() {
        None => (None, false),
        Some("jsonl") => (Some(Format::Jsonl), false),
        Some("text") => (Some(Format::Text), false),
        Some("parquet") => (None, true),
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_format",
                format!("format {other:?}: use jsonl, text or parquet"),
            ));
        }
    };
    let choices = match (kind, params.kind.as_deref()) {
        (_, None) => None,
        (Kind::EvalSet, Some("text")) => Some(false),
        (Kind::EvalSet, Some("choices")) => Some(true),
        (Kind::EvalSet, Some(other)) => {
            return Err(ApiError::bad_request(
                "invalid_kind",
                format!("kind {other:?}: use text or choices"),
            ));
        }
        (Kind::Partition, Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_kind",
                "kind is for eval sets: a partition is training text",
            ));
        }
    };
    let upload = Upload {
        choices,
        kind,
        name: params.name.unwrap_or_default(),
        text_field: params.text_field,
        parquet,
        domain: params.domain,
        tags: params
            .tags
            .map(|t| {
                t.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        format,
        max_bytes: state.max_upload_bytes,
        train: params.train.unwrap_or(true),
    };
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    ingest(&state.pool, &state.store, &upload, stream)
        .await
        .map_err(ApiError::from)
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> ApiError {
        match e {
            IngestError::Data(e) => ApiError::unprocessable("invalid_data", e.to_string()),
            IngestError::Choices(e) => ApiError::unprocessable("invalid_data", e.to_string()),
            e @ IngestError::TooLarge { .. } => {
                ApiError::status(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            e @ IngestError::BadName(_) => ApiError::bad_request("invalid_name", e.to_string()),
            IngestError::Registry(e @ RegistryError::NameTaken { .. }) => {
                ApiError::status(StatusCode::CONFLICT, "name_taken", e.to_string())
            }
            IngestError::Registry(RegistryError::Database(e)) => e.into(),
            IngestError::Store(e) => e.into(),
            e @ IngestError::Body(_) => ApiError::bad_request("bad_body", e.to_string()),
            e @ IngestError::TooFewToSplit { .. } => {
                ApiError::unprocessable("eval_set_too_small", e.to_string())
            }
            IngestError::Parquet(message) => ApiError::unprocessable("invalid_parquet", message),
            IngestError::Source(e) => ApiError::unprocessable("source_changed", e.to_string()),
        }
    }
}

async fn list(state: &AppState, kind: Kind, params: ListParams) -> Result<Json<Value>, ApiError> {
    let page = Page::parse(params.limit, params.cursor.as_deref())?;
    let rows = datasets::list(&state.pool, kind, page.before, page.limit).await?;
    Ok(page.answer(&rows, |r| (r.created_at, r.id)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListPartitions {
    /// Only partitions whose name contains this (case ignored).
    q: Option<String>,
    /// Only partitions of this domain.
    domain: Option<String>,
    /// The base whose unit models the list shows (default: the newest ready base).
    base: Option<String>,
    /// The recipe whose unit models the list shows (default: the newest recipe).
    recipe: Option<String>,
    /// Rows per page, 1 to 500 (default 50).
    limit: Option<i64>,
    /// The `next` value of the previous page.
    cursor: Option<String>,
}

/// `GET /v1/partitions[?q=][&domain=]`: newest first, each with its unit model for the base
/// and recipe (`unit_model`: id, state, job, `data_tokens`; `null` when there is none).
#[utoipa::path(get, path = "/v1/partitions", tag = "datasets", params(ListPartitions),
    responses((status = 200, body = Object, description = "`{items, next}`, newest first"), Errors))]
pub async fn list_partitions(
    State(state): State<AppState>,
    Q(params): Q<ListPartitions>,
) -> Result<Json<Value>, ApiError> {
    let page = Page::parse(params.limit, params.cursor.as_deref())?;
    // Named ones must exist; without a name, a pool with no base yet lists no unit models.
    let base = match &params.base {
        Some(key) => Some(crate::service::resolve::base(&state.pool, Some(key)).await?),
        None => bases::latest_ready(&state.pool).await?,
    };
    let recipe = match &params.recipe {
        Some(key) => Some(crate::service::resolve::recipe(&state.pool, Some(key)).await?),
        None => recipes::latest(&state.pool).await?,
    };
    let filter = datasets::PartitionFilter {
        name_contains: params.q.filter(|q| !q.is_empty()),
        domain: params.domain.filter(|d| !d.is_empty()),
        base: base.map(|b| b.id),
        recipe: recipe.map(|r| r.id),
    };
    let rows = datasets::list_partitions(&state.pool, &filter, page.before, page.limit).await?;
    Ok(page.answer(&rows, |r| (r.partition.created_at, r.partition.id)))
}

#[utoipa::path(get, path = "/v1/eval-sets", tag = "datasets", params(crate::api::ListParams),
    responses((status = 200, body = Object, description = "`{items, next}`, newest first"), Errors))]
pub async fn list_eval_sets(
    State(state): State<AppState>,
    Q(params): Q<ListParams>,
) -> Result<Json<Value>, ApiError> {
    list(&state, Kind::EvalSet, params).await
}

#[utoipa::path(get, path = "/v1/partitions/{key}", tag = "datasets", params(("key" = String, Path, description = "name or id")),
    responses((status = 200, body = Object, description = "`{partition, models}`"), Errors))]
pub async fn get_partition(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let partition = datasets::find(&state.pool, Kind::Partition, &key)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("partition {key:?}")))?;
    let models = models::for_partition(&state.pool, partition.id).await?;
    Ok(Json(json!({ "partition": partition, "models": models })))
}

/// `DELETE /v1/partitions/{key}`: removes a partition that no score needs, with its unit
/// models (their training is cancelled). 409 `partition_in_use` otherwise.
#[utoipa::path(delete, path = "/v1/partitions/{key}", tag = "datasets", params(("key" = String, Path, description = "name or id")),
    security(("bearer" = [])),
    responses((status = 200, body = Object, description = "deleted, with its unit models"), Errors))]
pub async fn delete_partition(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (partition, models) = partitions::delete(&state.pool, &state.store, &key).await?;
    // A name may come to mean another partition.
    state.scores.clear();
    Ok(Json(json!({ "deleted": partition, "models": models })))
}

#[utoipa::path(get, path = "/v1/eval-sets/{key}", tag = "datasets", params(("key" = String, Path, description = "name or id")),
    responses((status = 200, body = Object, description = "the eval set"), Errors))]
pub async fn get_eval_set(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<Dataset>, ApiError> {
    datasets::find(&state.pool, Kind::EvalSet, &key)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("eval set {key:?}")))
}
