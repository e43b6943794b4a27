//! Scoring a mixture: served from the registry when it was computed before, otherwise queued
//! as one `score` job per distinct request (identical requests share the job), which a worker
//! runs by merging the mixture's unit models and evaluating the merge. A request waits for
//! its job, or for the unit models it lacks, up to a deadline.

use std::collections::HashMap;

use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use crate::engine::eval::EvalConfig;
use crate::error::{Error, Reason, Result};
use crate::mixture::{Member, Mixture, MixtureRequest};
use crate::proxy::Proxy;
use crate::registry::jobs::Job;
use crate::registry::models::{self, UnitModel};
use crate::registry::scores::{self, Score, ScoreKey, eval_config_sha256};
use crate::service::resolve;
use crate::service::units::{self, Training};

/// A score asked for, with every name resolved: the mixture is canonical.
#[derive(Debug, Clone)]
pub struct ScoreRequest {
    pub base: Uuid,
    pub recipe: Uuid,
    pub mixture: Mixture,
    pub proxy: Proxy,
    pub eval_set: Uuid,
    pub eval: EvalConfig,
}

impl ScoreRequest {
    /// The key its score is stored under.
    pub fn key(&self) -> ScoreKey {
        ScoreKey {
            base_id: self.base,
            recipe_id: self.recipe,
            mixture_key: self.mixture.key(),
            weighting: self.mixture.weighting.as_str().into(),
            merge_method: self.proxy.key(),
            eval_set_id: self.eval_set,
            eval_config_sha256: eval_config_sha256(&self.eval),
        }
    }
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

/// The score of a request, or the job that computes it (queued now, or already queued by an
/// identical request), or the unit models it still lacks.
pub async fn request(pool: &PgPool, req: &ScoreRequest) -> Result<ScoreStatus, sqlx::Error> {
    let key = req.key();
    if let Some(score) = scores::get(pool, &key).await? {
        return Ok(ScoreStatus::Cached(score));
    }
    let ids: Vec<Uuid> = req.mixture.members.iter().map(|m| m.partition).collect();
    let missing = models::not_ready(pool, req.base, req.recipe, &ids).await?;
    if !missing.is_empty() {
        return Ok(ScoreStatus::ModelsNotReady(missing));
    }
    let job = crate::jobs::ScoreJob {
        mixture: req.mixture.members.clone(),
        key,
        eval: req.eval.clone(),
    };
    // A job that finished between the lookup and here is no longer active, so a second one
    // is queued; it finds the stored score's key taken and keeps the first result.
    let (job, created) = crate::jobs::score::queue(pool, &job).await?;
    Ok(ScoreStatus::Pending { job, created })
}

/// How a request waits for a job to end: the server's notifications, which also end every
/// wait when the server stops.
pub trait WaitForJob: Sync {
    /// Job `id` once it is final, or as it is at `deadline` (or when the server stops);
    /// `None` when there is no such job.
    fn wait_for_job(
        &self,
        id: Uuid,
        deadline: Instant,
    ) -> impl Future<Output = Result<Option<Job>, sqlx::Error>> + Send;
}

/// A score request resolved against the registry and checked; nothing is queued yet.
pub struct Resolved {
    pub request: ScoreRequest,
    /// Whether missing unit models are queued.
    pub train: bool,
    /// Partition id → the name the answer shows.
    names: HashMap<Uuid, String>,
    /// The eval set, base and recipe names the answer shows.
    context: Value,
}

/// What a score request gets.
pub enum Answer {
    /// The score as the API shows it ([`view`]).
    Score(Value),
    /// The score job is still running.
    Pending(Box<Job>),
    /// Unit models are training first.
    Training(Training),
}

/// Resolves the names of a score request (`base` and `recipe` given, defaults already
/// filled in) and checks everything it says; changes nothing.
pub async fn resolve(
    pool: &PgPool,
    asked: &MixtureRequest,
    proxy: Proxy,
    eval_set: &str,
    names: (&str, &str),
    train: bool,
) -> Result<Resolved> {
    let on = resolve::mixture_on(pool, asked, names).await?;
    let eval_set = resolve::eval_set(pool, eval_set).await?;
    Ok(Resolved {
        request: ScoreRequest {
            base: on.base.id,
            recipe: on.recipe.id,
            mixture: on.mixture,
            proxy,
            eval_set: eval_set.id,
            eval: EvalConfig::default(),
        },
        train,
        names: on.partitions.names(),
        context: json!({ "eval_set": eval_set.name, "base": on.base.name, "recipe": on.recipe.name }),
    })
}

/// The score from the registry, or from the job that computes it if that ends before
/// `deadline`; otherwise the job. Missing unit models are queued for training (or, without
/// `train`, a 409 names them).
pub async fn answer(
    pool: &PgPool,
    waiter: &impl WaitForJob,
    r: &Resolved,
    deadline: Instant,
) -> Result<Answer> {
    let name = |id: Uuid| r.names.get(&id).cloned().unwrap_or_default();
    let job = match request(pool, &r.request).await? {
        ScoreStatus::Cached(score) => return Ok(Answer::Score(view(&score, true, r))),
        ScoreStatus::ModelsNotReady(missing) => {
            let models = (r.request.base, r.request.recipe);
            let training = units::train_missing(pool, models, &missing, &name, r.train)
                .await?
                .ok_or_else(|| Error::internal("no unit model was missing"))?;
            return Ok(Answer::Training(training));
        }
        ScoreStatus::Pending { job, .. } => job,
    };
    let job = waiter
        .wait_for_job(job.id, deadline)
        .await?
        .ok_or_else(|| Error::internal("a score job vanished"))?;
    match job.state.as_str() {
        "succeeded" => {
            let score = scores::get(pool, &r.request.key())
                .await?
                .ok_or_else(|| Error::internal("a succeeded score job left no score"))?;
            Ok(Answer::Score(view(&score, false, r)))
        }
        "failed" | "cancelled" => Err(Error::refused(
            Reason::Failed,
            "score_failed",
            format!("scoring {}: {}", job.state, job.error.unwrap_or_default()),
        )),
        _ => Ok(Answer::Pending(Box::new(job))),
    }
}

/// Waits for the unit models' trainings; whether all succeeded before `deadline` (and
/// before the server stops).
pub async fn trained(
    waiter: &impl WaitForJob,
    training: &Training,
    deadline: Instant,
) -> Result<bool> {
    for job in training.training.iter().filter_map(|t| t.job) {
        let job = waiter.wait_for_job(job, deadline).await?;
        if job.is_none_or(|j| j.state != "succeeded") {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A score as the API shows it: the result (held-out text: perplexity, bits per byte, tokens,
/// bytes, per domain; questions: bits per byte of the gold answers, accuracy, per task), the
/// mixture by partition name, whether it was `cached`, and the eval set, base and recipe by
/// name.
fn view(score: &Score, cached: bool, r: &Resolved) -> Value {
    let mixture: Vec<Value> = Member::list(&score.mixture)
        .iter()
        .map(|m| json!({ "partition": r.names.get(&m.partition), "weight": m.weight }))
        .collect();
    let mut view = match &score.result {
        Value::Object(result) => result.clone(),
        _ => Default::default(),
    };
    for (key, value) in [
        ("proxy", json!(score.merge_method)),
        ("cached", json!(cached)),
        ("mixture", json!(mixture)),
        ("eval_set", r.context["eval_set"].clone()),
        ("base", r.context["base"].clone()),
        ("recipe", r.context["recipe"].clone()),
    ] {
        view.insert(key.into(), value);
    }
    Value::Object(view)
}
