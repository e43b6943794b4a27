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
use crate::worker::{StateMirror, Worker};

pub(crate) async fn run(
    worker: &Worker,
    lease: &Lease,
    job: TrainJob,
    cancel: Arc<AtomicBool>,
) -> Result<Done, JobError> {
    let id = job.model;
    let pool = &worker.pool;
    let fatal = |what: &str| JobError::Fatal(format!("{what} of model {id} not found"));
    // A model whose partition was deleted is not trained: the job ends cancelled.
    let Some(model) = models::get(pool, id).await? else {
        return Ok(Done::Cancelled);
    };
    let base = bases::find(pool, &model.base_id.to_string())
        .await?
        .ok_or_else(|| fatal("base"))?;
    let recipe = recipes::find(pool, &model.recipe_id.to_string())
        .await?
        .ok_or_else(|| fatal("recipe"))?;
    // Deleted since the model was read (its model row goes with it): cancelled as well.
    let Some(partition) =
        datasets::find(pool, Kind::Partition, &model.partition_id.to_string()).await?
    else {
        return Ok(Done::Cancelled);
    };
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
        weights: None,
        config: recipe.config.0.clone(),
        output: keys::model(&id, WEIGHTS_FILE),
        mirror: keys::model(&id, "train_state"),
    };
    let Some(training::Trained {
        stored,
        summary,
        data_tokens,
    }) = training::run(worker, lease, cancel, &run).await?
    else {
        if models::get(pool, id).await?.is_none() {
            // Deleted while it trained: the state mirrored at the stop has no owner.
            StateMirror::forget(&worker.store, &run.mirror).await;
        }
        return Ok(Done::Cancelled);
    };
    let mut tx = pool.begin().await?;
    if models::mark_ready(&mut tx, id, &stored.sha256)
        .await?
        .is_none()
    {
        // Deleted while it trained (the deletion removed what was stored before): what this
        // job wrote since goes too, and the job ends cancelled, not retried.
        drop(tx);
        let _ = worker.store.delete(&run.output).await;
        StateMirror::forget(&worker.store, &run.mirror).await;
        return Ok(Done::Cancelled);
    }
    let result = json!({ "model": id, "weights_sha256": stored.sha256, "train": summary, "data_tokens": data_tokens });
    training::finish(worker, tx, lease, &result, &run).await
}

/// A training that ended without weights leaves its model `failed`, so that asking for it
/// again queues a new job.
pub(crate) async fn failed(worker: &Worker, job: &TrainJob) -> Result<(), sqlx::Error> {
    models::mark_failed(&mut *worker.pool.acquire().await?, job.model).await
}
