//! `pretrain` jobs: a base created from a preset, initialised from its seed and trained on
//! one partition; the base turns ready with its weights.

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::context::Context;
use super::kind::{Kind, Outcome};
use super::training::{self, Start, TrainingRun};
use super::{Done, JobError};
use crate::engine::checkpoint::WEIGHTS_FILE;
use crate::engine::train::TrainConfig;
use crate::registry::datasets;
use crate::registry::{RegistryError, bases, recipes};
use crate::store::keys;

pub struct Pretrain;

/// `pretrain`: the base to train (created `pending`), its data and settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainJob {
    pub base: Uuid,
    pub partition: Uuid,
    pub config: TrainConfig,
    /// Queue every partition's unit model (for the newest recipe) once the base is ready.
    #[serde(default)]
    pub train_all: bool,
}

impl Kind for Pretrain {
    const NAME: &'static str = "pretrain";
    const ABOUT: &'static str = "trains a base created from a preset on one partition";
    const MAX_ATTEMPTS: i32 = 5;
    type Payload = PretrainJob;

    fn dedup_key(job: &PretrainJob) -> String {
        format!("pretrain:{}", job.base)
    }

    async fn run(cx: &Context, job: PretrainJob) -> Outcome {
        run(cx, job).await
    }

    /// A pre-training that ended without weights leaves its base `failed`.
    async fn failed(db: &mut PgConnection, job: &PretrainJob) -> Result<(), sqlx::Error> {
        bases::mark_failed(db, job.base).await
    }
}

/// Creates the base `name` (pending, with `config`) and the job that pre-trains it, in one
/// transaction; a taken name is [`RegistryError::NameTaken`].
pub async fn queue(
    pool: &sqlx::PgPool,
    name: &str,
    config: &crate::engine::model::ModelConfig,
    job: &PretrainJob,
) -> Result<(bases::Base, crate::registry::jobs::Job), RegistryError> {
    let mut tx = pool.begin().await?;
    let base = bases::insert(&mut tx, job.base, name, config, None).await?;
    let (queued, _) = crate::registry::jobs::enqueue(&mut tx, &Pretrain::job(job)).await?;
    tx.commit().await?;
    Ok((base, queued))
}

async fn run(cx: &Context, job: PretrainJob) -> Outcome {
    let pool = &cx.pool;
    let base = bases::find(pool, &job.base.to_string())
        .await?
        .ok_or_else(|| JobError::Fatal(format!("base {} not found", job.base)))?;
    let partition = datasets::find(pool, datasets::Kind::Partition, &job.partition.to_string())
        .await?
        .ok_or_else(|| JobError::Fatal(format!("partition {} not found", job.partition)))?;
    let run = TrainingRun {
        model: base.config.0.clone(),
        start: Start::Init {
            seed: job.config.seed,
        },
        partitions: vec![partition],
        weights: None,
        config: job.config,
        output: keys::base(&base.id, WEIGHTS_FILE),
        mirror: keys::base(&base.id, "train_state"),
        fisher: None,
    };
    let Some(training::Trained {
        stored,
        summary,
        data_tokens,
        ..
    }) = training::run(cx, &run).await?
    else {
        return Ok(Done::Cancelled);
    };
    let mut tx = pool.begin().await?;
    bases::mark_ready(&mut tx, base.id, &stored.sha256).await?;
    if job.train_all
        && let Some(recipe) = recipes::latest(&mut *tx).await?
    {
        let partitions: Vec<_> = datasets::all_partitions(&mut *tx).await?;
        let ids: Vec<_> = partitions.into_iter().map(|(id, _)| id).collect();
        super::train::queue(&mut tx, base.id, recipe.id, &ids, false).await?;
    }
    let result = json!({ "base": base.id, "weights_sha256": stored.sha256, "train": summary, "data_tokens": data_tokens });
    training::finish(cx, tx, &result, &run).await
}
