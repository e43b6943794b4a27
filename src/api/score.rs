//! `GET /v1/score`: the proxy perplexity of a mixture, from the cache or computed by a job
//! that this request waits on for up to `wait` seconds.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::Errors;
use super::metrics::Outcome;
use super::mixture::resolve_mixture;
use super::units::train_missing;
use super::{ApiError, AppState, Q};
use crate::engine::eval::EvalConfig;
use crate::registry::datasets::{self, Kind};
use crate::registry::jobs;
use crate::registry::scores::{self, Score};
use crate::scoring::{self, ScoreRequest, ScoreStatus, ScoringError};

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ScoreParams {
    /// Comma-separated partition names or ids.
    partitions: String,
    /// The eval set's name or id.
    eval: String,
    /// Comma-separated, one per partition (explicit weighting).
    weights: Option<String>,
    /// `uniform` (default) or `tokens`.
    weighting: Option<String>,
    /// The base (default: the newest).
    base: Option<String>,
    /// The recipe (default: the newest).
    recipe: Option<String>,
    /// Seconds to wait for a score being computed (default 30).
    wait: Option<f64>,
    /// Whether missing unit models are queued for training (default true; false answers
    /// 409 instead).
    train: Option<bool>,
}

/// A score request resolved against the registry and checked; nothing is queued yet.
struct Resolved {
    /// The request as asked, for the answer cache.
    cache_key: String,
    prepared: scoring::Prepared,
    /// Partition id → the name the answer shows.
    names: HashMap<Uuid, String>,
    /// The eval set, base and recipe names the answer shows.
    context: Value,
    /// Whether missing unit models are queued.
    train: bool,
}

enum Answer {
    Score(Value),
    /// The score job is still running.
    Pending(Box<jobs::Job>),
    /// Unit models are training first ([`train_missing`]'s body).
    Training(Value),
}

/// The key of the answer cache: the request's own words, with the defaults filled in.
fn cache_key(base: &str, recipe: &str, params: &ScoreParams) -> String {
    [
        base,
        recipe,
        &params.partitions,
        &params.eval,
        params.weights.as_deref().unwrap_or(""),
        params.weighting.as_deref().unwrap_or(""),
    ]
    .join("\n")
}

/// Resolves names and checks everything a score request says; changes nothing. `names` are
/// the base and recipe as asked, defaults filled in ([`ScoreCache::names`]).
async fn resolve(
    state: &AppState,
    params: &ScoreParams,
    (base_key, recipe_key): &(String, String),
) -> Result<Resolved, ApiError> {
    let spec = resolve_mixture(
        state,
        &params.partitions,
        params.weights.as_deref(),
        params.weighting.as_deref(),
        Some(base_key),
        Some(recipe_key),
    )
    .await?;
    let eval_set = datasets::find(&state.pool, Kind::EvalSet, &params.eval)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("eval set {:?}", params.eval)))?;
    let request = ScoreRequest {
        base: spec.base.id,
        recipe: spec.recipe.id,
        partitions: spec.partitions.iter().map(|p| p.id).collect(),
        weights: spec.weights,
        weighting: spec.weighting,
        eval_set: eval_set.id,
        eval: EvalConfig::default(),
    };
    let prepared = scoring::prepare(&state.pool, &request)
        .await
        .map_err(scoring_error)?;
    Ok(Resolved {
        cache_key: cache_key(base_key, recipe_key, params),
        prepared,
        names: spec
            .partitions
            .into_iter()
            .map(|p| (p.id, p.name))
            .collect(),
        context: json!({ "eval_set": eval_set.name, "base": spec.base.name, "recipe": spec.recipe.name }),
        train: params.train.unwrap_or(true),
    })
}

pub(super) fn scoring_error(e: ScoringError) -> ApiError {
    match e {
        ScoringError::Database(e) => e.into(),
        e => ApiError::status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mixture",
            e.to_string(),
        ),
    }
}

/// The score from the registry, or from the job that computes it if that ends before
/// `deadline`; otherwise the job. Missing unit models are queued for training (or, with
/// `train=false`, a 409 naming them).
async fn answer(state: &AppState, r: &Resolved, deadline: Instant) -> Result<Answer, ApiError> {
    let name = |id: Uuid| r.names.get(&id).cloned().unwrap_or_default();
    let status = scoring::submit(&state.pool, &r.prepared)
        .await
        .map_err(scoring_error)?;
    let job = match status {
        ScoreStatus::Cached(score) => {
            let answer = body(&score, true, &name, &r.context);
            state.scores.put(r.cache_key.clone(), answer.clone());
            return Ok(Answer::Score(answer));
        }
        ScoreStatus::ModelsNotReady(missing) => {
            let key = &r.prepared.key;
            let training =
                train_missing(state, key.base_id, key.recipe_id, &missing, &name, r.train)
                    .await?
                    .ok_or_else(|| ApiError::Internal("no unit model was missing".into()))?;
            return Ok(Answer::Training(training));
        }
        ScoreStatus::Pending { job, .. } => job,
    };
    let job = state
        .wait_for_job(job.id, deadline)
        .await?
        .ok_or_else(|| ApiError::Internal("a score job vanished".into()))?;
    match job.state.as_str() {
        "succeeded" => {
            let Some(score) = scores::get(&state.pool, &r.prepared.key).await? else {
                return Err(ApiError::Internal(
                    "a succeeded score job left no score".into(),
                ));
            };
            state
                .scores
                .put(r.cache_key.clone(), body(&score, true, &name, &r.context));
            Ok(Answer::Score(body(&score, false, &name, &r.context)))
        }
        "failed" | "cancelled" => Err(ApiError::status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "score_failed",
            format!("scoring {}: {}", job.state, job.error.unwrap_or_default()),
        )),
        _ => Ok(Answer::Pending(Box::new(job))),
    }
}

/// Counts an answer by its outcome. A stored score counts as computed, not cached, when this
/// server answered the same score 202 before (the client came back for the job it started).
fn count(state: &AppState, r: &Resolved, answer: &Result<Answer, ApiError>) {
    let key = serde_json::to_string(&r.prepared.key).expect("keys serialise");
    let outcome = match answer {
        Ok(Answer::Score(score)) if score["cached"] == true => {
            if state.metrics.awaited(&key) {
                Outcome::Computed
            } else {
                Outcome::Cached
            }
        }
        Ok(Answer::Score(_)) => {
            state.metrics.awaited(&key);
            Outcome::Computed
        }
        Ok(Answer::Pending(_)) => {
            state.metrics.await_later(key);
            Outcome::Pending
        }
        Ok(Answer::Training(_)) => Outcome::Training,
        Err(ApiError::Client { code, .. })
            if *code == "models_not_ready" || *code == "models_failed" =>
        {
            Outcome::ModelsNotReady
        }
        Err(_) => Outcome::Error,
    };
    state.metrics.score_answered(outcome);
}

/// Waits for the training jobs that a [`train_missing`] body names; whether all succeeded
/// before `deadline` (and before the server stops).
async fn trained(state: &AppState, training: &Value, deadline: Instant) -> Result<bool, ApiError> {
    let jobs = training["training"].as_array().into_iter().flatten();
    for id in jobs.filter_map(|t| t["job"].as_str()?.parse::<Uuid>().ok()) {
        let job = state.wait_for_job(id, deadline).await?;
        if job.is_none_or(|j| j.state != "succeeded") {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The deadline of a request's `wait` (default 30 s, at most the configured maximum).
fn deadline(state: &AppState, wait: Option<f64>) -> Result<Instant, ApiError> {
    let wait = wait.unwrap_or(30.0);
    if !(wait.is_finite() && wait >= 0.0) {
        return Err(ApiError::bad_request(
            "invalid_wait",
            "wait is a non-negative number of seconds",
        ));
    }
    // Clamped before converting: a huge finite wait does not fit a Duration.
    let wait = Duration::from_secs_f64(wait.min(state.max_wait.as_secs_f64()));
    Ok(Instant::now() + wait)
}

#[utoipa::path(get, path = "/v1/score", tag = "scores", params(ScoreParams),
    responses((status = 200, body = Object, description = "the score: perplexity, bits per byte, per domain, cached"),
              (status = 202, body = Object, description = "the score's job, or the unit models' trainings, not done within `wait`"), Errors))]
pub async fn get_score(
    State(state): State<AppState>,
    Q(params): Q<ScoreParams>,
) -> Result<Response, ApiError> {
    let names = state
        .scores
        .names(
            &state.pool,
            params.base.as_deref(),
            params.recipe.as_deref(),
        )
        .await?;
    if let Some(answer) = state.scores.get(&cache_key(&names.0, &names.1, &params)) {
        state.metrics.score_answered(Outcome::Cached);
        return Ok(Json(answer).into_response());
    }
    let deadline = deadline(&state, params.wait)?;
    let resolved = resolve(&state, &params, &names).await?;
    let mut answered = answer(&state, &resolved, deadline).await;
    // Unit models that train within the wait are followed by the score itself.
    if let Ok(Answer::Training(training)) = &answered
        && Instant::now() < deadline
        && trained(&state, training, deadline).await?
    {
        answered = answer(&state, &resolved, deadline).await;
    }
    count(&state, &resolved, &answered);
    Ok(match answered? {
        Answer::Training(training) => (StatusCode::ACCEPTED, Json(training)).into_response(),
        Answer::Score(score) => Json(score).into_response(),
        // The job goes on elsewhere; this server cannot tell the client when it ends.
        Answer::Pending(job) if state.is_stopping() => {
            return Err(AppState::shutting_down(job.id));
        }
        Answer::Pending(job) => (StatusCode::ACCEPTED, Json(json!({ "job": job }))).into_response(),
    })
}

/// One mixture of a batch: a list of partitions, or partitions with weights or a weighting.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum BatchMixture {
    Partitions(Vec<String>),
    Weighted {
        partitions: Vec<String>,
        weights: Option<Vec<f64>>,
        weighting: Option<String>,
    },
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    mixtures: Vec<BatchMixture>,
    eval_sets: Vec<String>,
    base: Option<String>,
    recipe: Option<String>,
    /// Seconds to wait for the scores being computed, all together (default 30).
    wait: Option<f64>,
    /// Whether missing unit models are queued for training (default true).
    train: Option<bool>,
}

/// The most mixture × eval set pairs one batch may ask for.
const MAX_BATCH: usize = 10_000;

/// `POST /v1/scores {"mixtures": [...], "eval_sets": [...], "base"?, "recipe"?, "wait"?}`:
/// every mixture on every eval set. All requests are checked before any job is queued (a
/// bad one is a 4xx naming it); then each is answered like `GET /v1/score`, in order, with a
/// `status` of `done`, `pending` (with its job), `training` (with the unit models' jobs; ask
/// again once they end) or `models_not_ready` / `models_failed`.
#[utoipa::path(post, path = "/v1/scores", tag = "scores", request_body = Batch, security(("bearer" = [])),
    responses((status = 200, body = Object, description = "`{results, done, pending, training}`, in order"), Errors))]
pub async fn post_scores(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let batch: Batch = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
    let pairs = batch.mixtures.len() * batch.eval_sets.len();
    if pairs == 0 || pairs > MAX_BATCH {
        return Err(ApiError::bad_request(
            "invalid_batch",
            format!("a batch asks for 1 to {MAX_BATCH} mixture × eval set pairs, not {pairs}"),
        ));
    }
    let deadline = deadline(&state, batch.wait)?;
    let names = state
        .scores
        .names(&state.pool, batch.base.as_deref(), batch.recipe.as_deref())
        .await?;
    let mut resolved = Vec::with_capacity(pairs);
    for (i, mixture) in batch.mixtures.iter().enumerate() {
        let (partitions, weights, weighting) = match mixture {
            BatchMixture::Partitions(p) => (p, None, None),
            BatchMixture::Weighted {
                partitions,
                weights,
                weighting,
            } => (partitions, weights.as_ref(), weighting.clone()),
        };
        for eval in &batch.eval_sets {
            let params = ScoreParams {
                train: batch.train,
                partitions: partitions.join(","),
                eval: eval.clone(),
                weights: weights.map(|w| {
                    w.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                }),
                weighting: weighting.clone(),
                base: batch.base.clone(),
                recipe: batch.recipe.clone(),
                wait: None,
            };
            let r = resolve(&state, &params, &names)
                .await
                .map_err(|e| match e {
                    ApiError::Client {
                        status,
                        code,
                        message,
                        details,
                    } => ApiError::Client {
                        status,
                        code,
                        message: format!("mixtures[{i}] on eval set {eval:?}: {message}"),
                        details,
                    },
                    e => e,
                })?;
            resolved.push(r);
        }
    }
    // Queue everything first, then wait for the jobs together.
    let mut results: Vec<Value> = Vec::with_capacity(pairs);
    let mut pending = Vec::new();
    let now = Instant::now();
    for (i, r) in resolved.iter().enumerate() {
        let first = answer(&state, r, now).await;
        if matches!(first, Ok(Answer::Pending(_))) {
            pending.push(i);
            results.push(Value::Null);
        } else {
            count(&state, r, &first);
            results.push(batch_item(first)?);
        }
    }
    for i in pending {
        let last = answer(&state, &resolved[i], deadline).await;
        count(&state, &resolved[i], &last);
        results[i] = batch_item(last)?;
    }
    let count = |status: &str| results.iter().filter(|r| r["status"] == status).count();
    Ok(Json(json!({
        "results": results,
        "done": count("done"),
        "pending": count("pending"),
        "training": count("training"),
    })))
}

/// One result of a batch: a score, the job computing it, or what the caller can fix (a
/// server-side failure fails the whole batch).
fn batch_item(answer: Result<Answer, ApiError>) -> Result<Value, ApiError> {
    Ok(match answer {
        Ok(Answer::Score(score)) => json!({ "status": "done", "score": score }),
        Ok(Answer::Pending(job)) => json!({ "status": "pending", "job": job }),
        Ok(Answer::Training(training)) => json!({
            "status": "training",
            "training": training["training"],
            "message": training["message"],
        }),
        Err(ApiError::Client {
            code,
            message,
            details,
            ..
        }) => {
            json!({ "status": code, "error": { "code": code, "message": message, "details": details } })
        }
        Err(e) => return Err(e),
    })
}

fn body(score: &Score, cached: bool, names: &dyn Fn(Uuid) -> String, context: &Value) -> Value {
    let r = &score.result;
    let mixture: Vec<Value> = score
        .mixture
        .as_array()
        .map(|m| m.iter().map(|e| json!({ "partition": e["partition"].as_str().and_then(|s| s.parse().ok()).map(names), "weight": e["weight"] })).collect())
        .unwrap_or_default();
    json!({
        "perplexity": r["perplexity"],
        "bits_per_byte": r["bits_per_byte"],
        "tokens": r["tokens"],
        "bytes": r["bytes"],
        "per_domain": r["per_domain"],
        "macro_perplexity": r["macro_perplexity"],
        "cached": cached,
        "mixture": mixture,
        "eval_set": context["eval_set"],
        "base": context["base"],
        "recipe": context["recipe"],
    })
}
