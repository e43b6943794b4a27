//! Hugging Face checkpoints in and out over HTTP: import a base from a tar of a checkpoint
//! directory (or from a folder in the object store), export a mixture's merged model as a tar.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use super::error::Errors;
use super::mixture::resolve_mixture;
use super::score::scoring_error;
use super::units::train_missing;
use super::{ApiError, AppState, Q};
use crate::engine::checkpoint::{self, WEIGHTS_FILE};
use crate::engine::hf::{self, HfError};
use crate::jobs::{Export, ExportJob, Kind as _};
use crate::registry::{RegistryError, bases, jobs, models};
use crate::store::keys;

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
    train: Option<super::units::All>,
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
    let source = scratch.path().join("checkpoint");
    tokio::fs::create_dir_all(&source)
        .await
        .map_err(ApiError::internal)?;
    // The body is read first even when the request is refused: clients that are still
    // sending when the answer comes often see a reset connection instead of the answer.
    let tar = scratch.path().join("upload.tar");
    let received = match &params.from_store {
        Some(_) => Ok(()),
        None => receive(body, &tar, state.max_upload_bytes).await,
    };
    crate::ingest::check_name(&params.name)
        .map_err(|e| ApiError::bad_request("invalid_name", e.to_string()))?;
    if bases::find(&state.pool, &params.name).await?.is_some() {
        return Err(name_taken(&params.name));
    }
    let recipe = match params.train {
        Some(_) => Some(super::resolve_recipe(&state.pool, None).await?),
        None => None,
    };
    received?;
    match &params.from_store {
        Some(prefix) => fetch_folder(&state, prefix, &source).await?,
        None => {
            let dest = source.clone();
            tokio::task::spawn_blocking(move || unpack(&tar, &dest))
                .await
                .map_err(ApiError::internal)??;
        }
    }
    let converted = scratch.path().join("converted");
    let (from, to) = (checkpoint_root(&source), converted.clone());
    let strictness = match params.strict.unwrap_or(false) {
        true => hf::Strictness::Strict,
        false => hf::Strictness::ByEffect,
    };
    let imported = tokio::task::spawn_blocking(move || hf::import(&from, &to, strictness))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| match e {
            HfError::Io { .. } => ApiError::internal(e),
            e => ApiError::status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_checkpoint",
                e.to_string(),
            ),
        })?;
    let config = checkpoint::read_config(&converted).map_err(ApiError::internal)?;

    let id = Uuid::new_v4();
    let weights = state
        .store
        .put_file(
            &converted.join(WEIGHTS_FILE),
            &keys::base(&id, WEIGHTS_FILE),
        )
        .await?;
    let mut files = BTreeMap::new();
    for path in checkpoint::side_files(&converted) {
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let stored = state.store.put_file(&path, &keys::base(&id, &file)).await?;
        files.insert(file, stored.sha256);
    }
    let mut tx = state.pool.begin().await?;
    bases::insert(&mut tx, id, &params.name, &config, Some(&weights.sha256))
        .await
        .map_err(|e| match e {
            RegistryError::NameTaken { name, .. } => name_taken(&name),
            RegistryError::Database(e) => e.into(),
        })?;
    let base = bases::set_files(&mut tx, id, &files).await?;
    let training = match &recipe {
        Some(recipe) => Some(super::units::train_all(&mut tx, id, recipe.id).await?),
        None => None,
    };
    tx.commit().await?;
    state.scores.defaults_changed();
    let mut answer = json!(base);
    answer["import"] = json!(imported);
    if let Some(training) = training {
        answer["training"] = json!(training);
    }
    Ok((StatusCode::CREATED, Json(answer)))
}

fn name_taken(name: &str) -> ApiError {
    ApiError::status(
        StatusCode::CONFLICT,
        "name_taken",
        format!("the base name {name:?} is taken; choose another name"),
    )
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

/// Unpacks a tar, gzip-compressed or not, refusing links and paths outside the folder.
fn unpack(tar: &Path, dest: &Path) -> Result<(), ApiError> {
    let bad = |e: std::io::Error| {
        ApiError::bad_request(
            "invalid_archive",
            format!("not a readable tar archive: {e}"),
        )
    };
    let mut magic = [0u8; 2];
    let mut file = std::fs::File::open(tar).map_err(ApiError::internal)?;
    std::io::Read::read_exact(&mut file, &mut magic).map_err(bad)?;
    let file = std::fs::File::open(tar).map_err(ApiError::internal)?;
    let reader: Box<dyn std::io::Read> = if magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            return Err(ApiError::bad_request(
                "invalid_archive",
                "the archive may hold only files and folders",
            ));
        }
        // `unpack_in` refuses paths that would leave `dest`.
        if !entry.unpack_in(dest).map_err(bad)? {
            return Err(ApiError::bad_request(
                "invalid_archive",
                "the archive holds a path outside its folder",
            ));
        }
    }
    Ok(())
}

/// The folder holding `config.json`: the archive's top level or its one folder.
fn checkpoint_root(dir: &Path) -> PathBuf {
    if dir.join(checkpoint::CONFIG_FILE).exists() {
        return dir.to_path_buf();
    }
    let folders: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    match folders.as_slice() {
        [only] => only.clone(),
        _ => dir.to_path_buf(),
    }
}

/// Copies the files directly under `prefix` in the object store into `dest`.
async fn fetch_folder(state: &AppState, prefix: &str, dest: &Path) -> Result<(), ApiError> {
    let prefix = prefix.trim_matches('/');
    let keys = state.store.list(prefix).await?;
    if keys.is_empty() {
        return Err(ApiError::not_found(format!("store folder {prefix:?}")));
    }
    for key in keys {
        let Some(name) = key
            .strip_prefix(prefix)
            .map(|n| n.trim_start_matches('/'))
            .filter(|n| !n.is_empty() && !n.contains('/'))
        else {
            continue;
        };
        let data = state
            .store
            .get_optional(&key)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("store object {key:?}")))?;
        tokio::fs::write(dest.join(name), &data)
            .await
            .map_err(ApiError::internal)?;
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
    let spec = resolve_mixture(
        &state,
        &params.partitions,
        params.weights.as_deref(),
        params.weighting.as_deref(),
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
    let ids: Vec<Uuid> = spec.partitions.iter().map(|p| p.id).collect();
    let mixture = crate::scoring::canonical_mixture(
        &state.pool,
        &ids,
        spec.weights.as_deref(),
        spec.weighting,
    )
    .await
    .map_err(scoring_error)?;
    let missing = models::not_ready(&state.pool, spec.base.id, spec.recipe.id, &ids).await?;
    let name = |id: Uuid| {
        spec.partitions
            .iter()
            .find(|p| p.id == id)
            .map_or(String::new(), |p| p.name.clone())
    };
    let train = params.train.unwrap_or(true);
    if let Some(training) =
        train_missing(&state, spec.base.id, spec.recipe.id, &missing, &name, train).await?
    {
        return Ok((StatusCode::ACCEPTED, Json(training)).into_response());
    }

    // What is merged names the stored tar: the same export is made once.
    let digest = hex::encode(Sha256::digest(
        json!([spec.base.id, spec.recipe.id, mixture.key()]).to_string(),
    ));
    let export = ExportJob {
        base: spec.base.id,
        recipe: spec.recipe.id,
        mixture: mixture.members.clone(),
        object: keys::export(&digest),
    };
    let dedup = Export::dedup_key(&export);
    let scratch = tempfile::tempdir().map_err(ApiError::internal)?;
    let tar_path = scratch.path().join("model.tar");
    // An export made before is streamed from the store, unless its tar was removed since.
    if let Some(done) = jobs::latest_succeeded(&state.pool, &dedup).await?
        && fetch_export(&state, &done, &tar_path).await?
    {
        return stream_tar(scratch, &tar_path).await;
    }
    let queued = crate::jobs::export::queue(&state.pool, &export).await?;
    let deadline = tokio::time::Instant::now() + wait;
    let job = state
        .wait_for_job(queued.id, deadline)
        .await?
        .ok_or_else(|| ApiError::Internal("an export job vanished".into()))?;
    match job.state.as_str() {
        "succeeded" => {}
        "failed" | "cancelled" => {
            return Err(ApiError::status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "export_failed",
                format!(
                    "the export job {} {}: {}",
                    job.id,
                    job.state,
                    job.error.as_deref().unwrap_or("no error recorded")
                ),
            ));
        }
        _ if state.is_stopping() => return Err(AppState::shutting_down(job.id)),
        _ => return Ok((StatusCode::ACCEPTED, Json(json!({ "job": job }))).into_response()),
    }
    if !fetch_export(&state, &job, &tar_path).await? {
        return Err(ApiError::internal(format!(
            "export job {} left no object",
            job.id
        )));
    }
    stream_tar(scratch, &tar_path).await
}

/// Downloads (verified) the tar a succeeded export job stored; `false` when the job names
/// none or the store no longer has it.
async fn fetch_export(state: &AppState, job: &jobs::Job, path: &Path) -> Result<bool, ApiError> {
    let result = job.result.clone().unwrap_or_default();
    let (Some(object), Some(sha256)) = (result["object"].as_str(), result["sha256"].as_str())
    else {
        return Ok(false);
    };
    match state.store.download_verified(object, sha256, path).await {
        Ok(()) => Ok(true),
        Err(crate::store::StoreError::Backend(object_store::Error::NotFound { .. })) => Ok(false),
        Err(e) => Err(e.into()),
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
