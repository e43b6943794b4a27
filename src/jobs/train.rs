//! `train` jobs: a unit model, the base's weights continued on one partition with a recipe.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::json;

use super::kind::TrainJob;
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
    job: TrainJob,
    cancel: Arc<AtomicBool>,
) -> Result<Done, JobError> {
    let id = job.model;
    let pool = &worker.pool;
    let fatal = |what: &str| JobError::Fatal(format!("{what} of model {id} not found"));
    let model = models::get(pool, id).await?.ok_or_else(|| fatal("row"))?;
    let base = bases::find(pool, &model.base_id.to_string())
        .await?
        .ok_or_else(|| fatal("base"))?;
    let recipe = recipes::find(pool, &model.recipe_id.to_string())
        .await?
        .ok_or_else(|| fatal("recipe"))?;
    let partition = datasets::find(pool, Kind::Partition, &model.partition_id.to_string())
        .await?
        .ok_or_else(|| fatal("partition"))?;
    let weights_sha = base
        .weights_sha256
        .clone()
        .ok_or_else(|| JobError::Fatal(format!("base {} has no weights yet", base.name)))?;
    let run = TrainingRun {
        model: base.config.0.clone(),
        start: Start::Stored {
            base: Box::new(base.clone()),
            sha256: weights_sha,
        },
        partitions: vec![partition],
        config: recipe.config.0.clone(),
        output: keys::model(&id, WEIGHTS_FILE),
        mirror: keys::model(&id, "train_state"),
    };
    let Some((stored, summary)) = training::run(worker, lease, cancel, &run).await? else {
        return Ok(Done::Cancelled);
    };
    let mut tx = pool.begin().await?;
    models::mark_ready(&mut tx, id, &stored.sha256).await?;
    let result = json!({ "model": id, "weights_sha256": stored.sha256, "train": summary });
    training::finish(worker, tx, lease, &result, &run).await
}

/// A training that ended without weights leaves its model `failed`, so that asking for it
/// again queues a new job.
pub(crate) async fn failed(worker: &Worker, job: &TrainJob) -> Result<(), sqlx::Error> {
    models::mark_failed(&mut *worker.pool.acquire().await?, job.model).await
}
