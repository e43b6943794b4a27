//! Bases and recipes: what unit models are trained from and how.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{ApiError, AppState};
use crate::engine::checkpoint::{LoadedModel, WEIGHTS_FILE};
use crate::engine::model::{ModelConfig, PRESETS};
use crate::engine::train::TrainConfig;
use crate::registry::{Created, RegistryError, bases, recipes};
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBase {
    name: String,
    preset: String,
    /// Seed of the random initialisation.
    #[serde(default)]
    seed: u64,
}

/// `POST /v1/bases {"name", "preset", "seed"?}`: a randomly initialised base from a preset,
/// its weights stored before its row is written.
pub async fn create_base(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<bases::Base>), ApiError> {
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
    if bases::find(&state.pool, &new.name).await?.is_some() {
        return Err(name_taken(RegistryError::NameTaken {
            kind: "base",
            name: new.name,
        }));
    }
    let id = Uuid::new_v4();
    let dir = tempfile::tempdir().map_err(|e| ApiError::Internal(e.to_string()))?;
    let path = dir.path().to_path_buf();
    let (seed, model_config) = (new.seed, config.clone());
    tokio::task::spawn_blocking(move || {
        LoadedModel::init(model_config, seed, tch::Device::Cpu).and_then(|m| m.save(&path))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let stored = state
        .store
        .put_file(
            &dir.path().join(WEIGHTS_FILE),
            &keys::base(&id, WEIGHTS_FILE),
        )
        .await?;
    let mut db = state.pool.acquire().await?;
    let base = bases::insert(&mut db, id, &new.name, &config, Some(&stored.sha256))
        .await
        .map_err(name_taken)?;
    state.scores.defaults_changed();
    Ok((StatusCode::CREATED, Json(base)))
}

pub async fn get_base(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<bases::Base>, ApiError> {
    bases::find(&state.pool, &key)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("base {key:?}")))
}

/// `POST /v1/recipes {"name", "tokens", "lr", …}`: unset settings take the unit-model
/// defaults; equal settings are the existing recipe (200).
pub async fn create_recipe(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut fields: serde_json::Map<String, Value> = parse(&body)?;
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
    let mut db = state.pool.acquire().await?;
    let created = recipes::insert(&mut db, &name, &config)
        .await
        .map_err(name_taken)?;
    state.scores.defaults_changed();
    let status = if created.is_new() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let recipe = match created {
        Created::New(r) | Created::Existing(r) => r,
    };
    Ok((status, Json(json!(recipe))))
}

pub async fn get_recipe(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<recipes::Recipe>, ApiError> {
    recipes::find(&state.pool, &key)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("recipe {key:?}")))
}
