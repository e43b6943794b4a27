//! `train` jobs: a unit model, the base's weights continued on one partition with a recipe.

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::context::Context;
use super::kind::{Kind, Outcome};
use super::mirror::StateMirror;
use super::training::{self, Start, TrainingRun};
use super::{Done, JobError};
use crate::engine::checkpoint::{FISHER_FILE, WEIGHTS_FILE};
use crate::registry::Created;
use crate::registry::datasets;
use crate::registry::jobs::NewJob;
use crate::registry::models::UnitModel;
use crate::registry::{bases, models, recipes};
use crate::store::keys;

pub struct Train;

/// `train`: the unit model row to train (its base, recipe and partition say how).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainJob {
    pub model: Uuid,
}

impl Kind for Train {
    const NAME: &'static str = "train";
    const ABOUT: &'static str = "trains a unit model: a base continued on one partition";
    /// Trainings save their progress only at checkpoints, so a worker can die between two
    /// without the job being at fault.
    const MAX_ATTEMPTS: i32 = 5;
    type Payload = TrainJob;

    fn dedup_key(job: &TrainJob) -> String {
        format!("train:{}", job.model)
    }

    async fn run(cx: &Context, job: TrainJob) -> Outcome {
        run(cx, job).await
    }

    /// A training that ended without weights leaves its model `failed`, so that asking for
    /// it again queues a new job.
    async fn failed(db: &mut PgConnection, job: &TrainJob) -> Result<(), sqlx::Error> {
        models::mark_failed(db, job.model).await
    }

    /// A cancelled training leaves its model `cancelled`; asking for it again queues it anew.
    async fn cancelled(db: &mut PgConnection, job: &TrainJob) -> Result<(), sqlx::Error> {
        models::mark_cancelled(db, job.model).await
    }
}

async fn run(cx: &Context, job: TrainJob) -> Outcome {
    let id = job.model;
    let pool = &cx.pool;
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
    let Some(partition) = datasets::find(
        pool,
        datasets::Kind::Partition,
        &model.partition_id.to_string(),
    )
    .await?
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
        fisher: Some(keys::model(&id, FISHER_FILE)),
    };
    let Some(training::Trained {
        stored,
        fisher,
        summary,
        data_tokens,
    }) = training::run(cx, &run).await?
    else {
        if models::get(pool, id).await?.is_none() {
            // Deleted while it trained: the state mirrored at the stop has no owner.
            StateMirror::forget(&cx.store, &run.mirror).await;
        }
        return Ok(Done::Cancelled);
    };
    let mut tx = pool.begin().await?;
    let fisher_sha = fisher.as_ref().map(|f| f.sha256.as_str());
    if models::mark_ready(&mut tx, id, &stored.sha256, fisher_sha)
        .await?
        .is_none()
    {
        // Deleted while it trained (the deletion removed what was stored before): what this
        // job wrote since goes too, and the job ends cancelled, not retried.
        drop(tx);
        let _ = cx.store.delete(&run.output).await;
        if let Some(key) = &run.fisher {
            let _ = cx.store.delete(key).await;
        }
        StateMirror::forget(&cx.store, &run.mirror).await;
        return Ok(Done::Cancelled);
    }
    let result = json!({ "model": id, "weights_sha256": stored.sha256, "fisher_sha256": fisher_sha,
                         "train": summary, "data_tokens": data_tokens });
    training::finish(cx, tx, &result, &run).await
}

/// The training job of unit model `model`.
fn job_for(model: Uuid) -> NewJob {
    Train::job(&TrainJob { model })
}

/// The unit model of (base, recipe, partition), created and queued in the caller's
/// transaction when missing ([`models::ensure`]).
pub async fn ensure(
    db: &mut PgConnection,
    base: Uuid,
    recipe: Uuid,
    partition: Uuid,
) -> Result<Created<UnitModel>, sqlx::Error> {
    models::ensure(db, base, recipe, partition, job_for).await
}

/// Queues the training of every unit model of `partitions` that is neither ready nor
/// training ([`models::train`]); the models that are not ready, in the given order.
pub async fn queue(
    db: &mut PgConnection,
    base: Uuid,
    recipe: Uuid,
    partitions: &[Uuid],
    retry_failed: bool,
) -> Result<Vec<UnitModel>, sqlx::Error> {
    models::train(db, base, recipe, partitions, retry_failed, job_for).await
}

/// Queues, in a transaction of its own, the unit models of `partitions` that are neither
/// ready, training nor failed; the models that are not ready, as they now are (a failed one
/// stays failed: `POST /v1/models` trains it again).
pub async fn queue_missing(
    pool: &sqlx::PgPool,
    base: Uuid,
    recipe: Uuid,
    partitions: &[Uuid],
) -> Result<Vec<UnitModel>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let models = queue(&mut tx, base, recipe, partitions, false).await?;
    tx.commit().await?;
    Ok(models)
}

/// The healing pass ([`models::heal`]): how many unit models it queued.
pub async fn heal(pool: &sqlx::PgPool) -> Result<usize, sqlx::Error> {
    models::heal(pool, job_for).await
}
