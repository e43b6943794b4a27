//! Hugging Face checkpoints in and out over HTTP: import a base from a tar of a checkpoint
//! directory (or from a folder in the object store), export a mixture's merged model as a tar.

use std::path::Path;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::error::Errors;
use super::{ApiError, AppState, Q};
use crate::mixture::MixtureRequest;
use crate::service::export::{self, Exported};
use crate::service::import::{self, Source};

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportParams {
    /// The base's name.
    name: String,
    /// A folder in the object store holding the checkpoint, instead of a tar body.
    from_store: Option<String>,
    /// `all`: queue every partition's unit model (for the default recipe) with the base.
    #[param(value_type = Option<String>)]
    train: Option<crate::service::bases::All>,
    /// Refuse every config field the engine does not read (default false: fields at their
    /// architecture's default behaviour are accepted and reported as `ignored`).
    strict: Option<bool>,
}

/// `POST /v1/bases/import?name=[&from_store=prefix]`: the body is a tar (optionally gzip)
/// of a Hugging Face checkpoint directory, or empty with `from_store` naming a folder in
/// the object store. The checkpoint is checked and converted like `mixpool local import`,
/// its weights and side files stored, then the base row written: 201 with the base.
/// `train=all` queues every partition's unit model for the default recipe with the row.
#[utoipa::path(post, path = "/v1/bases/import", tag = "models", params(ImportParams),
    request_body(content = String, description = "a tar (or .tar.gz) of a Hugging Face checkpoint directory; empty with `from_store`", content_type = "application/octet-stream"),
    security(("bearer" = [])),
    responses((status = 201, body = Object, description = "the base, with the config fields ignored"), Errors))]
pub async fn import_base(
    State(state): State<AppState>,
    Q(params): Q<ImportParams>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let scratch = tempfile::tempdir().map_err(ApiError::internal)?;
    // The body is read first even when the request is refused: clients that are still
    // sending when the answer comes often see a reset connection instead of the answer.
    let tar = scratch.path().join("upload.tar");
    let received = match &params.from_store {
        Some(_) => Ok(()),
        None => receive(body, &tar, state.max_upload_bytes).await,
    };
    let checked = import::check(&state.pool, &params.name, params.train.is_some()).await?;
    received?;
    let source = match &params.from_store {
        Some(prefix) => Source::Store(prefix),
        None => Source::Tar(&tar),
    };
    let strict = params.strict.unwrap_or(false);
    let base = import::import(
        &state.pool,
        &state.store,
        scratch.path(),
        source,
        &checked,
        strict,
    )
    .await?;
    state.scores.defaults_changed();
    Ok((StatusCode::CREATED, Json(base)))
}

/// Streams the request body into `path`, refusing more than `limit` bytes.
async fn receive(body: Body, path: &Path, limit: u64) -> Result<(), ApiError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(ApiError::internal)?;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream
        .try_next()
        .await
        .map_err(|e| ApiError::bad_request("bad_body", format!("reading the upload: {e}")))?
    {
        total += chunk.len() as u64;
        if total > limit {
            return Err(ApiError::status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the upload is larger than the limit of {limit} bytes"),
            ));
        }
        file.write_all(&chunk).await.map_err(ApiError::internal)?;
    }
    file.flush().await.map_err(ApiError::internal)?;
    if total == 0 {
        return Err(ApiError::bad_request(
            "empty_body",
            "send a tar of the checkpoint directory, or name a folder with from_store",
        ));
    }
    Ok(())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// Comma-separated partition names or ids.
    partitions: String,
    /// Comma-separated, one per partition.
    weights: Option<String>,
    /// `uniform` (default) or `tokens`.
    weighting: Option<String>,
    /// The base (default: the newest).
    base: Option<String>,
    /// The recipe (default: the newest).
    recipe: Option<String>,
    /// Seconds to wait for the merge (default and limit: the server's `max_wait_seconds`).
    wait: Option<f64>,
    /// Whether missing unit models are queued for training (default true: 202 with
    /// `training`; false: 409).
    train: Option<bool>,
}

/// `GET /v1/mixtures/export?partitions=a,b[&weights=][&weighting=][&base=][&recipe=][&wait=]`:
/// the merged model of the mixture's unit models (one unit model alone for one partition) as
/// a tar of a Hugging Face directory, in the base's dtype with its tokenizer. A worker merges
/// it (an `export` job, on its device, in memory) and stores the tar; the same export asked
/// again is streamed from the store. 202 with the job when it is not done within `wait`.
#[utoipa::path(get, path = "/v1/mixtures/export", tag = "scores", params(ExportParams),
    responses((status = 200, content_type = "application/x-tar", body = String, description = "a tar of the merged model's Hugging Face directory"),
              (status = 202, body = Object, description = "the export job (or the unit models' trainings) not done within `wait`"), Errors))]
pub async fn export_mixture(
    State(state): State<AppState>,
    Q(params): Q<ExportParams>,
) -> Result<Response, ApiError> {
    let asked = MixtureRequest::from_query(
        &params.partitions,
        params.weights.as_deref(),
        params.weighting.as_deref(),
    )?;
    let (base, recipe) = state
        .scores
        .names(
            &state.pool,
            params.base.as_deref(),
            params.recipe.as_deref(),
        )
        .await?;
    let wait = match params.wait {
        Some(w) if !(w.is_finite() && w >= 0.0) => {
            return Err(ApiError::bad_request(
                "invalid_wait",
                "wait is a number of seconds, 0 or more",
            ));
        }
        // Clamped before converting: a huge finite wait does not fit a Duration.
        Some(w) => Duration::from_secs_f64(w.min(state.max_wait.as_secs_f64())),
        None => state.max_wait,
    };
    let deadline = tokio::time::Instant::now() + wait;
    let scratch = tempfile::tempdir().map_err(ApiError::internal)?;
    let tar_path = scratch.path().join("model.tar");
    let train = params.train.unwrap_or(true);
    let names = (base.as_str(), recipe.as_str());
    let request = export::Request {
        asked: &asked,
        names,
        train,
        deadline,
        tar: &tar_path,
    };
    match export::export(&state.pool, &state.store, &state, request).await? {
        Exported::Tar => stream_tar(scratch, &tar_path).await,
        Exported::Training(training) => Ok((StatusCode::ACCEPTED, Json(training)).into_response()),
        // The job goes on elsewhere; this server cannot tell the client when it ends.
        Exported::Pending(job) if state.is_stopping() => Err(AppState::shutting_down(job.id)),
        Exported::Pending(job) => {
            Ok((StatusCode::ACCEPTED, Json(json!({ "job": job }))).into_response())
        }
    }
}

/// The tar as the response body; the open file outlives the scratch folder.
async fn stream_tar(scratch: tempfile::TempDir, tar_path: &Path) -> Result<Response, ApiError> {
    let file = tokio::fs::File::open(tar_path)
        .await
        .map_err(ApiError::internal)?;
    let length = file.metadata().await.map_err(ApiError::internal)?.len();
    drop(scratch);
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (header::CONTENT_LENGTH, length.to_string()),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"mixture.tar\"".to_string(),
            ),
        ],
        body,
    )
        .into_response())
}
