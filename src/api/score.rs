//! `GET /v1/score`: the proxy perplexity of a mixture, from the cache or computed by a job
//! that this request waits on for up to `wait` seconds.

use std::time::Duration;

use tokio::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::Errors;
use super::metrics::Outcome;
use super::{ApiError, AppState, Q};
use crate::mixture::MixtureRequest;
use crate::proxy::{Choice, Proxy};
use crate::service::scoring::{self, Answer, Resolved};

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
    /// `average` (default: the merged parameters), `ensemble` (the mixture of the unit
    /// models' next-token distributions), `units` (the mean of their own perplexities),
    /// `fisher` (the average weighted per coordinate by each unit's Fisher estimate),
    /// `task_vectors@λ` (base + λ (average − base)), or chosen by the eval set's validations:
    /// `task_vectors` (at its best λ) or `best` (the proxy with the best ρ; 409 until 8
    /// mixtures are validated).
    proxy: Option<String>,
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

/// The key of the answer cache: the request's own words, with the defaults filled in.
fn cache_key(
    (base, recipe): &(String, String),
    asked: &MixtureRequest,
    proxy: Proxy,
    eval: &str,
) -> String {
    let weights = asked
        .weights
        .as_ref()
        .map(|w| w.iter().map(f64::to_string).collect::<Vec<_>>().join(","));
    [
        base,
        recipe,
        &asked.partitions.join(","),
        eval,
        weights.as_deref().unwrap_or(""),
        asked.weighting.as_deref().unwrap_or(""),
        &proxy.key(),
    ]
    .join("\n")
}

/// Counts an answer by its outcome. A stored score counts as computed, not cached, when this
/// server answered the same score 202 before (the client came back for the job it started).
fn count(state: &AppState, r: &Resolved, answer: &Result<Answer, ApiError>) {
    let key = serde_json::to_string(&r.request.key()).expect("keys serialise");
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

/// The deadline of a request's `wait` (default 30 s, at most the configured maximum).
/// The proxy a request names on `eval` (`best` and `task_vectors` as its validations choose).
async fn chosen_proxy(
    state: &AppState,
    asked: Option<&str>,
    eval: &str,
) -> Result<Proxy, ApiError> {
    let choice = Choice::parse(asked)?;
    if let Choice::Named(proxy) = choice {
        return Ok(proxy);
    }
    let eval_set = crate::service::resolve::eval_set(&state.pool, eval).await?;
    Ok(crate::validation::choose(&state.pool, choice, &eval_set)
        .await?
        .proxy)
}

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
    let asked = MixtureRequest::from_query(
        &params.partitions,
        params.weights.as_deref(),
        params.weighting.as_deref(),
    )?;
    let proxy = chosen_proxy(&state, params.proxy.as_deref(), &params.eval).await?;
    let key = cache_key(&names, &asked, proxy, &params.eval);
    if let Some(answer) = state.scores.get(&key) {
        state.metrics.score_answered(Outcome::Cached);
        return Ok(Json(answer).into_response());
    }
    let deadline = deadline(&state, params.wait)?;
    let train = params.train.unwrap_or(true);
    let resolved = scoring::resolve(
        &state.pool,
        &asked,
        proxy,
        &params.eval,
        (&names.0, &names.1),
        train,
    )
    .await?;
    let mut answered = answer(&state, &key, &resolved, deadline).await;
    // Unit models that train within the wait are followed by the score itself.
    if let Ok(Answer::Training(training)) = &answered
        && Instant::now() < deadline
        && scoring::trained(&state, training, deadline).await?
    {
        answered = answer(&state, &key, &resolved, deadline).await;
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

/// [`scoring::answer`], with a score remembered in the answer cache under `key` (as cached:
/// asked again, it is).
async fn answer(
    state: &AppState,
    key: &str,
    r: &Resolved,
    deadline: Instant,
) -> Result<Answer, ApiError> {
    let answer = scoring::answer(&state.pool, state, r, deadline).await?;
    if let Answer::Score(score) = &answer {
        let mut cached = score.clone();
        cached["cached"] = json!(true);
        state.scores.put(key.to_string(), cached);
    }
    Ok(answer)
}

/// One mixture of a batch: a list of partitions, or partitions with weights or a weighting.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum BatchMixture {
    Partitions(Vec<String>),
    Weighted(MixtureRequest),
}

impl BatchMixture {
    fn asked(&self) -> MixtureRequest {
        match self {
            BatchMixture::Partitions(partitions) => MixtureRequest {
                partitions: partitions.clone(),
                weights: None,
                weighting: None,
            },
            BatchMixture::Weighted(asked) => asked.clone(),
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    mixtures: Vec<BatchMixture>,
    eval_sets: Vec<String>,
    base: Option<String>,
    recipe: Option<String>,
    /// `average` (default), `ensemble`, `units`, `fisher`, `task_vectors@λ`, or chosen by the eval set's validations: `task_vectors` (its best λ) or `best`.
    proxy: Option<String>,
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
    let train = batch.train.unwrap_or(true);
    let mut resolved = Vec::with_capacity(pairs);
    let mut proxies = Vec::with_capacity(batch.eval_sets.len());
    for eval in &batch.eval_sets {
        proxies.push(chosen_proxy(&state, batch.proxy.as_deref(), eval).await?);
    }
    for (i, mixture) in batch.mixtures.iter().enumerate() {
        let asked = mixture.asked();
        for (eval, &proxy) in batch.eval_sets.iter().zip(&proxies) {
            let r = scoring::resolve(
                &state.pool,
                &asked,
                proxy,
                eval,
                (&names.0, &names.1),
                train,
            )
            .await
            .map_err(|e| e.context(format_args!("mixtures[{i}] on eval set {eval:?}")))?;
            let key = cache_key(&names, &asked, proxy, eval);
            resolved.push((key, r));
        }
    }
    // Queue everything first, then wait for the jobs together.
    let mut results: Vec<Value> = Vec::with_capacity(pairs);
    let mut pending = Vec::new();
    let now = Instant::now();
    for (i, (key, r)) in resolved.iter().enumerate() {
        let first = answer(&state, key, r, now).await;
        if matches!(first, Ok(Answer::Pending(_))) {
            pending.push(i);
            results.push(Value::Null);
        } else {
            count(&state, r, &first);
            results.push(batch_item(first)?);
        }
    }
    for i in pending {
        let (key, r) = &resolved[i];
        let last = answer(&state, key, r, deadline).await;
        count(&state, r, &last);
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
            "training": training.training,
            "message": training.message,
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
