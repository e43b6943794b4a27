//! `score` jobs: one mixture's score on one eval set by its proxy (the unit models merged
//! in memory and evaluated, or their ensemble from stored per-token NLLs); the score row and
//! the job's success commit together.

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::JobError;
use super::context::Context;
use super::ensemble::UnitNll;
use super::kind::{Kind, Outcome};
use super::merger::{Combine, Merger, Scored};
use crate::engine::eval::EvalConfig;
use crate::mixture::Member;
use crate::proxy::Proxy;
use crate::registry::datasets;
use crate::registry::models::UnitModel;
use crate::registry::scores::ScoreKey;
use crate::registry::{bases, scores};

pub struct Score;

/// `score`: one mixture, canonical, on one eval set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScoreJob {
    pub key: ScoreKey,
    pub mixture: Vec<Member>,
    pub eval: EvalConfig,
}

impl Kind for Score {
    const NAME: &'static str = "score";
    const ABOUT: &'static str =
        "merges one mixture's unit models and evaluates the merge on one eval set";
    const MERGES: bool = true;
    type Payload = ScoreJob;

    /// A score key has one scoring.
    fn dedup_key(job: &ScoreJob) -> String {
        let key = Sha256::digest(serde_json::to_vec(&job.key).expect("keys serialise"));
        format!("score:{}", hex::encode(key))
    }

    async fn run(cx: &Context, job: ScoreJob) -> Outcome {
        run(cx, job).await
    }
}

/// The job that computes `job`'s score, and whether this call queued it (an identical
/// request's active job is shared).
pub async fn queue(
    pool: &sqlx::PgPool,
    job: &ScoreJob,
) -> Result<(crate::registry::jobs::Job, bool), sqlx::Error> {
    let mut db = pool.acquire().await?;
    crate::registry::jobs::enqueue(&mut db, &Score::job(job)).await
}

async fn run(cx: &Context, job: ScoreJob) -> Outcome {
    let started = std::time::Instant::now();
    let key = &job.key;
    let pool = &cx.pool;
    let base = bases::find(pool, &key.base_id.to_string())
        .await?
        .ok_or_else(|| JobError::Fatal(format!("base {} not found", key.base_id)))?;
    let eval_set = datasets::find(pool, datasets::Kind::EvalSet, &key.eval_set_id.to_string())
        .await?
        .ok_or_else(|| JobError::Fatal(format!("eval set {} not found", key.eval_set_id)))?;
    let partitions: Vec<Uuid> = job.mixture.iter().map(|m| m.partition).collect();
    let members = super::ready_units(pool, key.base_id, key.recipe_id, &partitions).await?;

    let ids: Vec<Uuid> = members.iter().map(|u| u.id).collect();
    let weights: Vec<f64> = job.mixture.iter().map(|m| m.weight).collect();
    let sets = std::slice::from_ref(&eval_set);
    // Forward passes over the eval set: the merge's one, or the ensemble's per unit model
    // whose per-token NLLs were not stored yet.
    let mut forward_passes = 1;
    let proxy = Proxy::from_key(&key.merge_method)
        .ok_or_else(|| JobError::Fatal(format!("unknown proxy {:?}", key.merge_method)))?;
    let scored = if proxy.reads_token_nll() {
        let units: Vec<&UnitModel> = members.iter().collect();
        let nll = UnitNll::gather(cx, &base, sets, &job.eval, &units, None).await?;
        forward_passes = nll.computed;
        let started = std::time::Instant::now();
        Scored {
            results: vec![nll.score(proxy, &ids, &weights, eval_set.id)?],
            merge_seconds: started.elapsed().as_secs_f64(),
            eval_seconds: 0.0,
            note: None,
        }
    } else {
        let combine = Combine::of(proxy);
        let with_base = matches!(combine, Combine::TaskVectors(_));
        let mut merger = Merger::open(cx, &base, sets, &job.eval).await?;
        cx.check_fits(
            members.len() + usize::from(with_base),
            merger.unit_bytes * combine.units_per_unit(),
        )?;
        let scored = async {
            if with_base {
                merger.load_base(cx, &base).await?;
            }
            for unit in &members {
                merger.load(cx, unit).await?;
                if combine == Combine::Fisher {
                    merger.load_fisher(cx, unit).await?;
                }
            }
            merger.score(&ids, &weights, combine, &[eval_set.id]).await
        }
        .await;
        merger.finish(cx).await;
        scored?
    };
    let mut result = serde_json::to_value(&scored.results[0]).expect("results serialise");
    if let Some(note) = &scored.note {
        result["note"] = json!(note);
    }

    let mut tx = pool.begin().await?;
    let mixture = serde_json::to_value(&job.mixture).expect("mixtures serialise");
    let eval_config = serde_json::to_value(&job.eval).expect("settings serialise");
    let score = scores::insert(&mut tx, key, &mixture, &eval_config, &result).await?;
    let seconds = json!({
        "merge": scored.merge_seconds,
        "eval": scored.eval_seconds,
        "total": started.elapsed().as_secs_f64(),
    });
    let result = json!({ "score": score.id, "forward_passes": forward_passes, "seconds": seconds });
    let done = cx.succeed(tx, &result).await?;
    cx.clear_scratch().await;
    Ok(done)
}
