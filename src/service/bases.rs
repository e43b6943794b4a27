//! Bases: created from a preset (the random initialisation, stored before the row is
//! written, or a `pretrain` job queued with a pending row) or imported from a Hugging Face
//! checkpoint ([`super::import`]).

use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::engine::checkpoint::{LoadedModel, WEIGHTS_FILE};
use crate::engine::model::{ModelConfig, PRESETS};
use crate::engine::train::TrainConfig;
use crate::error::{Error, Result};
use crate::jobs::PretrainJob;
use crate::registry::datasets::{self, Dataset, Kind};
use crate::registry::{RegistryError, bases, jobs};
use crate::service::{resolve, units};
use crate::store::{Store, keys};

/// The word `"all"`: every partition.
#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum All {
    All,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBase {
    pub name: String,
    /// tiny, small, base-130m or tiny-gpt2.
    pub preset: String,
    /// Seed of the random initialisation (and of pre-training).
    #[serde(default)]
    pub seed: u64,
    /// A partition to pre-train the base on, by a `pretrain` job; without it the base is
    /// the random initialisation.
    pub pretrain_on: Option<String>,
    pub pretrain_tokens: Option<u64>,
    /// Pre-training settings that differ from the defaults (see `TrainConfig::pretrain`).
    #[schema(value_type = Option<Object>)]
    pub pretrain: Option<serde_json::Map<String, Value>>,
    /// `"all"`: queue the unit models of every partition (for the default recipe) once the
    /// base is ready.
    #[schema(value_type = Option<String>)]
    pub train: Option<All>,
}

/// A base with the job that pre-trains it, when there is one.
#[derive(serde::Serialize)]
pub struct BaseView {
    #[serde(flatten)]
    pub base: bases::Base,
    pub job: Option<jobs::Job>,
    /// Unit models queued by `"train": "all"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training: Option<usize>,
}

/// A base's name is taken (409 `name_taken`).
pub fn name_taken(e: RegistryError) -> Error {
    match e {
        e @ RegistryError::NameTaken { .. } => Error::conflict("name_taken", e.to_string()),
        RegistryError::Database(e) => e.into(),
    }
}

/// Creates a base from a preset: without `pretrain_on` its random initialisation is made (on
/// a blocking thread) and stored before its row is written, ready at once; with it, the
/// base is `pending` and a `pretrain` job, queued in the same transaction, trains and stores
/// it. `"train": "all"` queues every partition's unit model for the default recipe.
pub async fn create(pool: &PgPool, store: &Store, new: &NewBase) -> Result<BaseView> {
    crate::ingest::check_name(&new.name)
        .map_err(|e| Error::invalid("invalid_name", e.to_string()))?;
    let config = ModelConfig::preset(&new.preset).ok_or_else(|| {
        Error::unprocessable(
            "unknown_preset",
            format!("preset {:?}: use one of {}", new.preset, PRESETS.join(", ")),
        )
    })?;
    let pretrain = pretrain_settings(pool, new, &config).await?;
    let train_all = new.train.is_some();
    let recipe = match train_all {
        true => Some(resolve::recipe(pool, None).await?),
        false => None,
    };
    if bases::find(pool, &new.name).await?.is_some() {
        return Err(name_taken(RegistryError::NameTaken {
            kind: "base",
            name: new.name.clone(),
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
        let (base, job) = crate::jobs::pretrain::queue(pool, &new.name, &config, &pretrain)
            .await
            .map_err(name_taken)?;
        let view = BaseView {
            base,
            job: Some(job),
            training: None,
        };
        return Ok(view);
    }
    let dir = tempfile::tempdir().map_err(Error::internal)?;
    let path = dir.path().to_path_buf();
    let (seed, model_config) = (new.seed, config.clone());
    tokio::task::spawn_blocking(move || {
        LoadedModel::init(model_config, seed, tch::Device::Cpu).and_then(|m| m.save(&path))
    })
    .await
    .map_err(Error::internal)?
    .map_err(Error::internal)?;
    let stored = store
        .put_file(
            &dir.path().join(WEIGHTS_FILE),
            &keys::base(&id, WEIGHTS_FILE),
        )
        .await?;
    let mut tx = pool.begin().await?;
    let base = bases::insert(&mut tx, id, &new.name, &config, Some(&stored.sha256))
        .await
        .map_err(name_taken)?;
    let training = match &recipe {
        Some(recipe) => Some(units::train_all(&mut tx, base.id, recipe.id).await?),
        None => None,
    };
    tx.commit().await?;
    let view = BaseView {
        base,
        job: None,
        training,
    };
    Ok(view)
}

/// The partition and settings a new base is pre-trained with, checked; `None` without
/// `pretrain_on`.
async fn pretrain_settings(
    pool: &PgPool,
    new: &NewBase,
    model: &ModelConfig,
) -> Result<Option<(Dataset, TrainConfig)>> {
    let Some(key) = &new.pretrain_on else {
        if new.pretrain_tokens.is_some() || new.pretrain.is_some() {
            return Err(Error::invalid(
                "invalid_body",
                "pretrain_tokens and pretrain need pretrain_on: the partition to pre-train on",
            ));
        }
        return Ok(None);
    };
    let partition = datasets::find(pool, Kind::Partition, key)
        .await?
        .ok_or_else(|| Error::not_found(format!("partition {key:?}")))?;
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
    let invalid = |e: String| Error::unprocessable("invalid_pretrain", e);
    let config: TrainConfig = serde_json::from_value(Value::Object(fields))
        .map_err(|e| Error::invalid("invalid_body", format!("pretrain: {e}")))?;
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
