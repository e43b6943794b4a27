//! `pretrain` jobs: a base created from a preset, initialised from its seed and trained on
//! one partition; the base turns ready with its weights.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::json;

use super::kind::PretrainJob;
use super::training::{self, Start, TrainingRun};
use super::{Done, JobError};
use crate::engine::checkpoint::WEIGHTS_FILE;
use crate::registry::datasets::{self, Kind};
use crate::registry::jobs::Lease;
use crate::registry::{bases, models, recipes};
use crate::store::keys;
use crate::worker::Worker;

pub(crate) async fn run(
    worker: &Worker,
    lease: &Lease,
    job: PretrainJob,
    cancel: Arc<AtomicBool>,
) -> Result<Done, JobError> {
    let pool = &worker.pool;
    let base = bases::find(pool, &job.base.to_string())
        .await?
        .ok_or_else(|| JobError::Fatal(format!("base {} not found", job.base)))?;
    let partition = datasets::find(pool, Kind::Partition, &job.partition.to_string())
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
    };
    let Some(training::Trained {
        stored,
        summary,
        data_tokens,
    }) = training::run(worker, lease, cancel, &run).await?
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
        models::train(&mut tx, base.id, recipe.id, &ids, false).await?;
    }
    let result = json!({ "base": base.id, "weights_sha256": stored.sha256, "train": summary, "data_tokens": data_tokens });
    training::finish(worker, tx, lease, &result, &run).await
}

/// A pre-training that ended without weights leaves its base `failed`.
pub(crate) async fn failed(worker: &Worker, job: &PretrainJob) -> Result<(), sqlx::Error> {
    bases::mark_failed(&mut *worker.pool.acquire().await?, job.base).await
}
