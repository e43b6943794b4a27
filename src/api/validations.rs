//! Validations: `POST /v1/validations` trains a model on the union of each mixture's
//! partitions (or on their sequences drawn in given proportions) and evaluates it beside the
//! mixture's proxies; `GET /v1/validations/report`
//! says, per eval set and proxy, how well the proxy ranks mixtures as training would.

use std::collections::HashSet;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::Errors;
use super::{ApiError, AppState, ListParams, Page, Q, parse_uuid};
use crate::engine::eval::EvalConfig;
use crate::registry::datasets::{self, Kind};
use crate::registry::scores::eval_config_sha256;
use crate::registry::validations::{self, Validation};
use crate::service::units::Created;
use crate::service::validation::{self, NewValidations};
use crate::validation::PROXIES;

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, message)
}

/// `POST /v1/validations {"mixture" | "mixtures", "eval_sets", "tokens"?, "base"?,
/// "recipe"?, "train"?}`: a mixture is a list of partitions (their union) or
/// `{"partition": weight}` (sequences drawn in those proportions). All checked first (names, repeated partitions), then missing unit models
/// queued (202 with `training`, nothing else created), else each validation created or
/// found, with the job that trains and evaluates what it lacks. 202 when a job was queued,
/// 200 when everything asked for is already there.
#[utoipa::path(post, path = "/v1/validations", tag = "validations", request_body = NewValidations, security(("bearer" = [])),
    responses((status = 200, body = Object, description = "every validation exists"), (status = 202, body = Object, description = "queued (or unit models trained first)"), Errors))]
pub async fn create_validations(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let new: NewValidations =
        serde_json::from_slice(&body).map_err(|e| bad("invalid_body", e.to_string()))?;
    let out = match validation::create(&state.pool, &new).await? {
        Created::Training(training) => return Ok((StatusCode::ACCEPTED, Json(json!(training)))),
        Created::Done(out) => out,
    };
    let queued = out.iter().any(|(_, job)| job.is_some());
    let mut items = Vec::with_capacity(out.len());
    for (validation, job) in &out {
        let mut item = view(&state, validation).await?;
        item["job"] = json!(job);
        items.push(item);
    }
    let status = if queued {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({ "items": items }))))
}

/// A validation as the API shows it: its mixture by name, state, budget, training summary
/// and its perplexity on each eval set evaluated so far.
async fn view(state: &AppState, v: &Validation) -> Result<Value, ApiError> {
    let names = datasets::names(&state.pool, Kind::Partition, &v.partition_ids).await?;
    let sha = eval_config_sha256(&EvalConfig::default());
    let scores = validations::scores(&state.pool, &sha, Some(&[v.id])).await?;
    let set_ids: Vec<Uuid> = scores.iter().map(|s| s.eval_set_id).collect();
    let set_names = datasets::names(&state.pool, Kind::EvalSet, &set_ids).await?;
    let results: Vec<Value> = scores
        .iter()
        .map(|s| {
            json!({
                "eval_set": set_names.get(&s.eval_set_id),
                "perplexity": s.result["perplexity"],
                "bits_per_byte": s.result["bits_per_byte"],
                "per_domain": s.result["per_domain"],
                "bits_per_byte_gold": s.result["bits_per_byte_gold"],
                "accuracy": s.result["accuracy"],
                "accuracy_raw": s.result["accuracy_raw"],
                "per_task": s.result["per_task"],
            })
        })
        .collect();
    Ok(json!({
        "id": v.id,
        "mixture": v.partition_ids.iter().map(|p| names.get(p)).collect::<Vec<_>>(),
        "sampling": v.sampling,
        "weights": v.weights.as_ref().map(|w| {
            v.partition_ids.iter().zip(w).map(|(p, w)| (names.get(p).cloned().unwrap_or_default(), json!(w))).collect::<serde_json::Map<_, _>>()
        }),
        "state": v.state,
        "tokens": v.tokens,
        "seed": v.seed,
        "job_id": v.job_id,
        "train": v.train,
        "results": results,
        "created_at": v.created_at,
    }))
}

#[utoipa::path(get, path = "/v1/validations/{id}", tag = "validations", params(("id" = String, Path, description = "the validation's id")),
    responses((status = 200, body = Object, description = "the validation with its true perplexities"), Errors))]
pub async fn get_validation(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let found = match parse_uuid(&id) {
        Some(uuid) => validations::get(&state.pool, uuid).await?,
        None => None,
    };
    let v = found.ok_or_else(|| ApiError::not_found(format!("validation {id:?}")))?;
    Ok(Json(view(&state, &v).await?))
}

#[utoipa::path(get, path = "/v1/validations", tag = "validations", params(crate::api::ListParams),
    responses((status = 200, body = Object, description = "`{items, next}`, newest first"), Errors))]
pub async fn list_validations(
    State(state): State<AppState>,
    Q(params): Q<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let page = Page::parse(params.limit, params.cursor.as_deref())?;
    let rows = validations::list(&state.pool, page.before, page.limit).await?;
    let mut items = Vec::with_capacity(rows.len());
    for v in &rows {
        items.push(view(&state, v).await?);
    }
    let keys: Vec<_> = rows.iter().map(|v| (v.created_at, v.id)).collect();
    let Json(mut answer) = page.answer(&keys, |k| *k);
    answer["items"] = json!(items);
    Ok(Json(answer))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReportParams {
    /// One eval set (name or id); all by default.
    eval: Option<String>,
}

/// `GET /v1/validations/report[?eval=]`: per eval set, n and each proxy's agreement with the
/// union models (Pearson r of log perplexity, Spearman ρ, ρ over the mixtures without the eval
/// set's own domain and over the best quarter, decision accuracy, regret; correlations with
/// bootstrap 90% intervals), the ceiling (ρ between two seeds' trained perplexities, over the
/// mixtures trained with both), and the points behind them (the truth the mean over seeds).
#[utoipa::path(get, path = "/v1/validations/report", tag = "validations", params(ReportParams),
    responses((status = 200, body = Object, description = "per eval set and proxy: n, Pearson r, Spearman ρ, rho_excluding, rho_top, decision_accuracy, regret, intervals; the points"), Errors))]
pub async fn report(
    State(state): State<AppState>,
    Q(params): Q<ReportParams>,
) -> Result<Json<Value>, ApiError> {
    let only = match &params.eval {
        Some(key) => Some(
            datasets::find(&state.pool, Kind::EvalSet, key)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("eval set {key:?}")))?
                .id,
        ),
        None => None,
    };
    let sets = crate::validation::report(&state.pool, only).await?;
    let set_ids: Vec<Uuid> = sets.iter().map(|s| s.eval_set).collect();
    let set_names = datasets::names(&state.pool, Kind::EvalSet, &set_ids).await?;
    let partition_ids: Vec<Uuid> = sets
        .iter()
        .flat_map(|s| s.points.iter().flat_map(|p| p.partitions.clone()))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let names = datasets::names(&state.pool, Kind::Partition, &partition_ids).await?;
    let mut sets: Vec<Value> = sets
        .iter()
        .map(|s| {
            let points: Vec<Value> = s
                .points
                .iter()
                .map(|p| {
                    let mut point = json!({
                        "validation": p.validation,
                        "mixture": p.partitions.iter().map(|id| names.get(id)).collect::<Vec<_>>(),
                        "true": p.truth,
                        "seeds": p.seeds,
                        "truths": p.truths,
                        "excludes_own_domain": p.excludes_own_domain,
                    });
                    for name in PROXIES {
                        point[name] = json!(p.proxy(name));
                    }
                    if let Some(accuracy) = p.true_accuracy {
                        point["true_accuracy"] = json!(accuracy);
                        point["accuracies"] = PROXIES
                            .iter()
                            .filter_map(|name| {
                                Some((name.to_string(), json!(p.accuracies.get(*name)?)))
                            })
                            .collect::<serde_json::Map<_, _>>()
                            .into();
                    }
                    point
                })
                .collect();
            json!({
                "eval_set": set_names.get(&s.eval_set),
                "n": s.n,
                "proxies": s.proxies,
                "ceiling": s.ceiling,
                "best_proxy": s.best_proxy,
                "accuracy": s.accuracy,
                "note": s.note,
                "points": points,
            })
        })
        .collect();
    sets.sort_by(|a, b| a["eval_set"].as_str().cmp(&b["eval_set"].as_str()));
    Ok(Json(json!({ "proxies": PROXIES, "sets": sets })))
}
