//! `GET /v1/score`: the proxy perplexity of a mixture, from the cache or computed by a job
//! that this request waits on for up to `wait` seconds.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{ApiError, AppState, Q, resolve_base, resolve_recipe};
use crate::engine::eval::EvalConfig;
use crate::mixture::Weighting;
use crate::registry::datasets::{self, Dataset, Kind};
use crate::registry::jobs;
use crate::registry::scores::Score;
use crate::scoring::{self, ScoreRequest, ScoreStatus, ScoringError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreParams {
    /// Comma-separated partition names or ids.
    partitions: String,
    /// The eval set's name or id.
    eval: String,
    /// Comma-separated, one per partition (explicit weighting).
    weights: Option<String>,
    /// `uniform` (default) or `tokens`.
    weighting: Option<String>,
    base: Option<String>,
    recipe: Option<String>,
    /// Seconds to wait for a score being computed (default 30).
    wait: Option<f64>,
}

/// Answers already given, by request. A score never changes and a name always means the
/// same row, so a cached answer stays true; only the defaults (the newest base and recipe)
/// can move, so they are looked up again after [`DEFAULTS_TTL`] (at once after this server
/// creates a base or recipe). A cached answer reads no database.
#[derive(Default)]
pub struct ScoreCache {
    answers: RwLock<HashMap<String, Value>>,
    defaults: Mutex<Option<(Instant, String, String)>>,
}

const DEFAULTS_TTL: Duration = Duration::from_secs(1);
/// Past this many answers the cache starts over, which bounds its memory.
const MAX_ANSWERS: usize = 100_000;

impl ScoreCache {
    /// Forgets the defaults (a base or recipe was just created).
    pub fn defaults_changed(&self) {
        *self.defaults.lock().unwrap() = None;
    }

    /// The base and recipe names a request means.
    async fn names(
        &self,
        pool: &sqlx::PgPool,
        base: Option<&str>,
        recipe: Option<&str>,
    ) -> Result<(String, String), ApiError> {
        if let (Some(base), Some(recipe)) = (base, recipe) {
            return Ok((base.to_string(), recipe.to_string()));
        }
        let fresh = self
            .defaults
            .lock()
            .unwrap()
            .clone()
            .filter(|(at, _, _)| at.elapsed() < DEFAULTS_TTL);
        let (default_base, default_recipe) = match fresh {
            Some((_, b, r)) => (b, r),
            None => {
                let b = resolve_base(pool, None).await?.name;
                let r = resolve_recipe(pool, None).await?.name;
                *self.defaults.lock().unwrap() = Some((Instant::now(), b.clone(), r.clone()));
                (b, r)
            }
        };
        Ok((
            base.map(str::to_string).unwrap_or(default_base),
            recipe.map(str::to_string).unwrap_or(default_recipe),
        ))
    }

    fn get(&self, key: &str) -> Option<Value> {
        self.answers.read().unwrap().get(key).cloned()
    }

    fn put(&self, key: String, answer: Value) {
        let mut answers = self.answers.write().unwrap();
        if answers.len() >= MAX_ANSWERS {
            answers.clear();
        }
        answers.insert(key, answer);
    }
}

pub async fn get_score(
    State(state): State<AppState>,
    Q(params): Q<ScoreParams>,
) -> Result<Response, ApiError> {
    let (base_name, recipe_name) = state
        .scores
        .names(
            &state.pool,
            params.base.as_deref(),
            params.recipe.as_deref(),
        )
        .await?;
    let cache_key = [&base_name, &recipe_name, &params.partitions, &params.eval]
        .into_iter()
        .map(String::as_str)
        .chain([
            params.weights.as_deref().unwrap_or(""),
            params.weighting.as_deref().unwrap_or(""),
        ])
        .collect::<Vec<_>>()
        .join("\n");
    if let Some(answer) = state.scores.get(&cache_key) {
        return Ok(Json(answer).into_response());
    }
    let base = resolve_base(&state.pool, Some(&base_name)).await?;
    let recipe = resolve_recipe(&state.pool, Some(&recipe_name)).await?;
    let eval_set = datasets::find(&state.pool, Kind::EvalSet, &params.eval)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("eval set {:?}", params.eval)))?;
    let mut partitions: Vec<Dataset> = Vec::new();
    for key in params.partitions.split(',').map(str::trim) {
        if key.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_partitions",
                "partitions is a comma-separated list of names or ids",
            ));
        }
        let p = datasets::find(&state.pool, Kind::Partition, key)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("partition {key:?}")))?;
        partitions.push(p);
    }
    let weights = match &params.weights {
        None => None,
        Some(list) => Some(
            list.split(',')
                .map(|w| w.trim().parse::<f64>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    ApiError::bad_request(
                        "invalid_weights",
                        format!("weights {list:?} are not numbers"),
                    )
                })?,
        ),
    };
    let weighting = match (params.weighting.as_deref(), &weights) {
        (None | Some("uniform"), None) => Weighting::Uniform,
        (None, Some(_)) => Weighting::Explicit,
        (Some("tokens"), None) => Weighting::Tokens,
        (Some("uniform" | "tokens"), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_weights",
                "give either weights or a weighting, not both",
            ));
        }
        (Some(other), _) => {
            return Err(ApiError::bad_request(
                "invalid_weighting",
                format!("weighting {other:?}: use uniform or tokens"),
            ));
        }
    };
    let wait = params.wait.unwrap_or(30.0);
    if !(wait.is_finite() && wait >= 0.0) {
        return Err(ApiError::bad_request(
            "invalid_wait",
            "wait is a non-negative number of seconds",
        ));
    }
    let wait = Duration::from_secs_f64(wait).min(state.max_wait);

    let request = ScoreRequest {
        base: base.id,
        recipe: recipe.id,
        partitions: partitions.iter().map(|p| p.id).collect(),
        weights,
        weighting,
        eval_set: eval_set.id,
        eval: EvalConfig::default(),
    };
    let names = |id: Uuid| {
        partitions
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.name.clone())
            .unwrap_or_default()
    };
    let context = json!({ "eval_set": eval_set.name, "base": base.name, "recipe": recipe.name });
    let status = scoring::request(&state.pool, &request)
        .await
        .map_err(|e| match e {
            ScoringError::Database(e) => e.into(),
            e => ApiError::status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_mixture",
                e.to_string(),
            ),
        })?;
    match status {
        ScoreStatus::Cached(score) => {
            let answer = body(&score, true, &names, &context);
            state.scores.put(cache_key, answer.clone());
            Ok(Json(answer).into_response())
        }
        ScoreStatus::ModelsNotReady(missing) => {
            let details: Vec<Value> = missing
                .iter()
                .map(|(p, model)| {
                    json!({
                        "partition": names(*p),
                        "model_state": model.as_ref().map(|m| m.state.clone()),
                        "job": model.as_ref().and_then(|m| m.job_id),
                    })
                })
                .collect();
            let message = format!(
                "no ready unit model for: {}",
                missing
                    .iter()
                    .map(|(p, _)| names(*p))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Err(ApiError::Client {
                status: StatusCode::CONFLICT,
                code: "models_not_ready",
                message,
                details: Some(json!(details)),
            })
        }
        ScoreStatus::Pending { job, .. } => {
            let deadline = Instant::now() + wait;
            loop {
                let current = jobs::get(&state.pool, job.id)
                    .await?
                    .ok_or_else(|| ApiError::Internal("job vanished".into()))?;
                match current.state.as_str() {
                    "succeeded" => {
                        let Some(ScoreStatus::Cached(score)) =
                            scoring::request(&state.pool, &request).await.ok()
                        else {
                            return Err(ApiError::Internal(
                                "a succeeded score job left no score".into(),
                            ));
                        };
                        state
                            .scores
                            .put(cache_key, body(&score, true, &names, &context));
                        return Ok(Json(body(&score, false, &names, &context)).into_response());
                    }
                    "failed" | "cancelled" => {
                        let message = format!(
                            "scoring {}: {}",
                            current.state,
                            current.error.unwrap_or_default()
                        );
                        return Err(ApiError::status(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "score_failed",
                            message,
                        ));
                    }
                    _ if Instant::now() >= deadline => {
                        return Ok(
                            (StatusCode::ACCEPTED, Json(json!({ "job": current }))).into_response()
                        );
                    }
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
    }
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
