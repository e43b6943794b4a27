//! Scoring a mixture: served from the cache when it was computed before, otherwise queued as
//! one `score` job per distinct request (identical requests share the job), which a worker
//! runs by merging the mixture's unit models and evaluating the merge.

use sqlx::PgPool;
use uuid::Uuid;

use crate::engine::eval::EvalConfig;
use crate::mixture::{Mixture, MixtureError, Weighting};
use crate::registry::datasets::{self, Kind};
use crate::registry::jobs::Job;
use crate::registry::models::{self, UnitModel};
use crate::registry::scores::{self, MERGE_METHOD, Score, ScoreKey, eval_config_sha256};

#[derive(Debug, Clone)]
pub struct ScoreRequest {
    pub base: Uuid,
    pub recipe: Uuid,
    pub partitions: Vec<Uuid>,
    /// With `Weighting::Explicit` only.
    pub weights: Option<Vec<f64>>,
    pub weighting: Weighting,
    pub eval_set: Uuid,
    pub eval: EvalConfig,
}

#[derive(Debug)]
pub enum ScoreStatus {
    Cached(Score),
    /// Being computed: the job to wait on (`created` when this request queued it).
    Pending {
        job: Job,
        created: bool,
    },
    /// Some partitions have no ready unit model: (partition, its model if one exists).
    ModelsNotReady(Vec<(Uuid, Option<UnitModel>)>),
}

#[derive(Debug, thiserror::Error)]
pub enum ScoringError {
    #[error(transparent)]
    Mixture(#[from] MixtureError),
    #[error("unknown partition {0}")]
    UnknownPartition(Uuid),
    #[error("weights are given only with explicit weighting")]
    WeightsWithoutExplicit,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A request checked and made canonical: its score's key and its mixture.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub key: ScoreKey,
    pub mixture: Mixture,
    pub eval: EvalConfig,
}

/// Looks the score up, or queues its job (or finds the identical job already queued).
pub async fn request(pool: &PgPool, req: &ScoreRequest) -> Result<ScoreStatus, ScoringError> {
    submit(pool, &prepare(pool, req).await?).await
}

/// Checks a request (weights, repeated partitions) and makes it canonical; changes nothing.
pub async fn prepare(pool: &PgPool, req: &ScoreRequest) -> Result<Prepared, ScoringError> {
    let mixture =
        canonical_mixture(pool, &req.partitions, req.weights.as_deref(), req.weighting).await?;
    let key = ScoreKey {
        base_id: req.base,
        recipe_id: req.recipe,
        mixture_key: mixture.key(),
        weighting: req.weighting.as_str().into(),
        merge_method: MERGE_METHOD.into(),
        eval_set_id: req.eval_set,
        eval_config_sha256: eval_config_sha256(&req.eval),
    };
    Ok(Prepared {
        key,
        mixture,
        eval: req.eval.clone(),
    })
}

/// The mixture of `partitions` with its weights resolved (explicit, uniform, or by
/// partition size) and normalised.
pub async fn canonical_mixture(
    pool: &PgPool,
    partitions: &[Uuid],
    weights: Option<&[f64]>,
    weighting: Weighting,
) -> Result<Mixture, ScoringError> {
    let weights = match (weighting, weights) {
        (Weighting::Explicit, Some(w)) => Some(w.to_vec()),
        (Weighting::Explicit, None) => None,
        (_, Some(_)) => return Err(ScoringError::WeightsWithoutExplicit),
        (Weighting::Uniform, None) => None,
        (Weighting::Tokens, None) => {
            // Partition sizes in UTF-8 bytes: the token counts of byte-level models.
            let mut sizes = Vec::with_capacity(partitions.len());
            for p in partitions {
                let row = datasets::find(pool, Kind::Partition, &p.to_string()).await?;
                sizes.push(row.ok_or(ScoringError::UnknownPartition(*p))?.bytes as f64);
            }
            Some(sizes)
        }
    };
    Ok(Mixture::new(partitions, weights.as_deref(), weighting)?)
}

/// The score of a prepared request, or the job that computes it (queued now, or already
/// queued by an identical request), or the unit models it still lacks.
pub async fn submit(pool: &PgPool, prepared: &Prepared) -> Result<ScoreStatus, ScoringError> {
    let Prepared { key, mixture, eval } = prepared;
    if let Some(score) = scores::get(pool, key).await? {
        return Ok(ScoreStatus::Cached(score));
    }
    let ids: Vec<Uuid> = mixture.members.iter().map(|m| m.partition).collect();
    let missing = models::not_ready(pool, key.base_id, key.recipe_id, &ids).await?;
    if !missing.is_empty() {
        return Ok(ScoreStatus::ModelsNotReady(missing));
    }
    let job = crate::jobs::ScoreJob {
        mixture: mixture.members.clone(),
        key: key.clone(),
        eval: eval.clone(),
    };
    // A job that finished between the cache lookup and here is no longer active, so a second
    // one is queued; it finds the stored score's key taken and keeps the first result.
    let (job, created) = crate::jobs::score::queue(pool, &job).await?;
    Ok(ScoreStatus::Pending { job, created })
}
