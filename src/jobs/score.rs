//! `score` jobs: one mixture's unit models merged in memory and evaluated on one eval set;
//! the score row and the job's success commit together.

use serde_json::json;
use uuid::Uuid;

use super::kind::ScoreJob;
use super::merger::Merger;
use super::{Done, JobError};
use crate::registry::datasets::{self, Kind};
use crate::registry::jobs::Lease;
use crate::registry::{bases, scores};
use crate::worker::Worker;

pub(crate) async fn run(worker: &Worker, lease: &Lease, job: ScoreJob) -> Result<Done, JobError> {
    let started = std::time::Instant::now();
    let key = &job.key;
    let pool = &worker.pool;
    let base = bases::find(pool, &key.base_id.to_string())
        .await?
        .ok_or_else(|| JobError::Fatal(format!("base {} not found", key.base_id)))?;
    let eval_set = datasets::find(pool, Kind::EvalSet, &key.eval_set_id.to_string())
        .await?
        .ok_or_else(|| JobError::Fatal(format!("eval set {} not found", key.eval_set_id)))?;
    let partitions: Vec<Uuid> = job.mixture.iter().map(|m| m.partition).collect();
    let members = super::ready_units(pool, key.base_id, key.recipe_id, &partitions).await?;

    let mut merger = Merger::open(
        worker,
        lease,
        &base,
        std::slice::from_ref(&eval_set),
        &job.eval,
    )
    .await?;
    worker.check_fits(members.len(), merger.unit_bytes)?;
    let scored = async {
        for unit in &members {
            merger.load(worker, unit).await?;
        }
        let ids: Vec<Uuid> = members.iter().map(|u| u.id).collect();
        let weights: Vec<f64> = job.mixture.iter().map(|m| m.weight).collect();
        merger.score(&ids, &weights, &[eval_set.id]).await
    }
    .await;
    merger.close().await;
    let scored = scored?;
    let result = serde_json::to_value(&scored.results[0]).expect("results serialise");

    let mut tx = pool.begin().await?;
    let mixture = serde_json::to_value(&job.mixture).expect("mixtures serialise");
    let eval_config = serde_json::to_value(&job.eval).expect("settings serialise");
    let score = scores::insert(&mut tx, key, &mixture, &eval_config, &result).await?;
    let seconds = json!({
        "merge": scored.merge_seconds,
        "eval": scored.eval_seconds,
        "total": started.elapsed().as_secs_f64(),
    });
    let result = json!({ "score": score.id, "seconds": seconds });
    let done = super::succeed(tx, lease, &result).await?;
    crate::worker::remove_dir(&worker.job_dir(lease)).await;
    Ok(done)
}
