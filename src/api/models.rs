//! Bases and recipes: what unit models are trained from and how.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::Errors;
use super::units::{All, train_all as train_all_partitions};
use super::{ApiError, AppState, ListParams, Page, Q, resolve_base, resolve_recipe};
use crate::engine::checkpoint::{LoadedModel, WEIGHTS_FILE};
use crate::engine::model::{ModelConfig, PRESETS};
use crate::engine::train::TrainConfig;
use crate::jobs::PretrainJob;
use crate::registry::datasets::{self, Dataset, Kind};
use crate::registry::{Created, RegistryError, bases, jobs, recipes};
use crate::store::keys;

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))
}

fn name_taken(e: RegistryError) -> ApiError {
    match e {
        e @ RegistryError::NameTaken { .. } => {
            ApiError::status(StatusCode::CONFLICT, "name_taken", e.to_string())
        }
        RegistryError::Database(e) => e.into(),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBase {
    name: String,
    /// tiny, small, base-130m or tiny-gpt2.
    preset: String,
    /// Seed of the random initialisation (and of pre-training).
    #[serde(default)]
    seed: u64,
    /// A partition to pre-train the base on, by a `pretrain` job; without it the base is
    /// the random initialisation.
    pretrain_on: Option<String>,
    pretrain_tokens: Option<u64>,
    /// Pre-training settings that differ from the defaults (see `TrainConfig::pretrain`).
    #[schema(value_type = Option<Object>)]
    pretrain: Option<serde_json::Map<String, Value>>,
    /// `"all"`: queue the unit models of every partition (for the default recipe) once the
    /// base is ready.
    #[schema(value_type = Option<String>)]
    train: Option<All>,
}

/// A base with the job that pre-trains it, when there is one.
#[derive(serde::Serialize)]
pub struct BaseView {
    #[serde(flatten)]
    base: bases::Base,
    job: Option<jobs::Job>,
    /// Unit models queued by `"train": "all"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    training: Option<usize>,
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
    crate::ingest::check_name(&new.name)
        .map_err(|e| ApiError::bad_request("invalid_name", e.to_string()))?;
    let config = ModelConfig::preset(&new.preset).ok_or_else(|| {
        ApiError::status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_preset",
            format!("preset {:?}: use one of {}", new.preset, PRESETS.join(", ")),
        )
    })?;
    let pretrain = pretrain_settings(&state, &new, &config).await?;
    let train_all = new.train.is_some();
    let recipe = match train_all {
        true => Some(resolve_recipe(&state.pool, None).await?),
        false => None,
    };
    if bases::find(&state.pool, &new.name).await?.is_some() {
        return Err(name_taken(RegistryError::NameTaken {
            kind: "base",
            name: new.name,
        }));
    }
    let id = Uuid::new_v4();
    if let Some((partition, train)) = pretrain {
        let pretrain = PretrainJob {
            base: id,
            partition: partition.id,
            config: train,
            train_all,
        };
        let (base, job) = crate::jobs::pretrain::queue(&state.pool, &new.name, &config, &pretrain)
            .await
            .map_err(name_taken)?;
        let view = BaseView {
            base,
            job: Some(job),
            training: None,
        };
        return Ok((StatusCode::CREATED, Json(view)));
    }
    let dir = tempfile::tempdir().map_err(ApiError::internal)?;
    let path = dir.path().to_path_buf();
    let (seed, model_config) = (new.seed, config.clone());
    tokio::task::spawn_blocking(move || {
        LoadedModel::init(model_config, seed, tch::Device::Cpu).and_then(|m| m.save(&path))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let stored = state
        .store
        .put_file(
            &dir.path().join(WEIGHTS_FILE),
            &keys::base(&id, WEIGHTS_FILE),
        )
        .await?;
    let mut tx = state.pool.begin().await?;
    let base = bases::insert(&mut tx, id, &new.name, &config, Some(&stored.sha256))
        .await
        .map_err(name_taken)?;
    let training = match &recipe {
        Some(recipe) => Some(train_all_partitions(&mut tx, base.id, recipe.id).await?),
        None => None,
    };
    tx.commit().await?;
    state.scores.defaults_changed();
    let view = BaseView {
        base,
        job: None,
        training,
    };
    Ok((StatusCode::CREATED, Json(view)))
}

/// The partition and settings a new base is pre-trained with, checked; `None` without
/// `pretrain_on`.
async fn pretrain_settings(
    state: &AppState,
    new: &NewBase,
    model: &ModelConfig,
) -> Result<Option<(Dataset, TrainConfig)>, ApiError> {
    let Some(key) = &new.pretrain_on else {
        if new.pretrain_tokens.is_some() || new.pretrain.is_some() {
            return Err(ApiError::bad_request(
                "invalid_body",
                "pretrain_tokens and pretrain need pretrain_on: the partition to pre-train on",
            ));
        }
        return Ok(None);
    };
    let partition = datasets::find(&state.pool, Kind::Partition, key)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("partition {key:?}")))?;
    let mut fields = match serde_json::to_value(TrainConfig {
        seed: new.seed,
        ..TrainConfig::pretrain()
    }) {
        Ok(Value::Object(fields)) => fields,
        _ => unreachable!("settings serialise to an object"),
    };
    fields.extend(new.pretrain.clone().unwrap_or_default());
    if let Some(tokens) = new.pretrain_tokens {
        fields.insert("tokens".into(), json!(tokens));
    }
    let invalid =
        |e: String| ApiError::status(StatusCode::UNPROCESSABLE_ENTITY, "invalid_pretrain", e);
    let config: TrainConfig = serde_json::from_value(Value::Object(fields))
        .map_err(|e| ApiError::bad_request("invalid_body", format!("pretrain: {e}")))?;
    config.validate().map_err(invalid)?;
    if config.seq_len as i64 > model.context_length() {
        return Err(invalid(format!(
            "seq_len {} is longer than the preset's context ({})",
            config.seq_len,
            model.context_length()
        )));
    }
    Ok(Some((partition, config)))
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
    let mut fields: serde_json::Map<String, Value> = parse(&body)?;
    let train_all = match fields.remove("train") {
        None => false,
        Some(Value::String(all)) if all == "all" => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_body",
                format!("train is \"all\" or absent, not {other}"),
            ));
        }
    };
    let base = match train_all {
        true => Some(resolve_base(&state.pool, None).await?),
        false => None,
    };
    let name = match fields.remove("name") {
        Some(Value::String(name)) => name,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "a recipe needs a \"name\" string",
            ));
        }
    };
    crate::ingest::check_name(&name)
        .map_err(|e| ApiError::bad_request("invalid_name", e.to_string()))?;
    let config: TrainConfig = serde_json::from_value(Value::Object(fields))
        .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
    config
        .validate()
        .map_err(|e| ApiError::status(StatusCode::UNPROCESSABLE_ENTITY, "invalid_recipe", e))?;
    let mut tx = state.pool.begin().await?;
    let created = recipes::insert(&mut tx, &name, &config)
        .await
        .map_err(name_taken)?;
    let training = match &base {
        Some(base) => {
            let recipe = match &created {
                Created::New(r) | Created::Existing(r) => r.id,
            };
            Some(train_all_partitions(&mut tx, base.id, recipe).await?)
        }
        None => None,
    };
    tx.commit().await?;
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
