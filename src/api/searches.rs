//! Ratio searches: `POST /v1/searches` looks for the mixture weights of a list of partitions
//! that minimise an objective over eval sets, by merged evaluations only (one `search` job;
//! see [`crate::search`]); `GET /v1/searches/{id}` shows its progress, the best point so far,
//! every evaluated point, and once done the predictor's proposal and how well it fits.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::Errors;
use super::{ApiError, AppState, ListParams, Page, Q, parse_uuid};
use crate::registry::datasets::{self, Kind};
use crate::registry::scores::{self, ScoreKey};
use crate::registry::searches::{self, Search};
use crate::registry::{bases, jobs, recipes};
use crate::service::search::{self, NewSearch};
use crate::service::units::Created;

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, message)
}

/// `POST /v1/searches`: every setting is checked before the search and its job are queued in
/// one transaction; missing unit models are queued instead (202).
#[utoipa::path(post, path = "/v1/searches", tag = "searches", request_body = NewSearch, security(("bearer" = [])),
    responses((status = 201, body = Object, description = "the search, queued"), (status = 202, body = Object, description = "unit models are trained first: ask again once their jobs end"), Errors))]
pub async fn create_search(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let new: NewSearch =
        serde_json::from_slice(&body).map_err(|e| bad("invalid_body", e.to_string()))?;
    let request = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match search::create(&state.pool, &state.store, &new, request).await? {
        Created::Training(training) => Ok((StatusCode::ACCEPTED, Json(json!(training)))),
        Created::Done(search) => {
            let search = searches::get(&state.pool, search.id)
                .await?
                .ok_or_else(|| ApiError::internal("a created search vanished"))?;
            Ok((
                StatusCode::CREATED,
                Json(view(&state, &search, true).await?),
            ))
        }
    }
}

#[utoipa::path(get, path = "/v1/searches/{id}", tag = "searches", params(("id" = String, Path, description = "the search's id")),
    responses((status = 200, body = Object, description = "state, progress, the best point so far, every point, the reference points (natural and uniform mixtures), and once done the proposal, the answer (the best point evaluated within the bounds, or the best of the final candidates by the check proxy; with the proxy that chose it), the check's scores and the predictor's fit"), Errors))]
pub async fn get_search(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let found = match parse_uuid(&id) {
        Some(uuid) => searches::get(&state.pool, uuid).await?,
        None => None,
    };
    let search = found.ok_or_else(|| ApiError::not_found(format!("search {id:?}")))?;
    Ok(Json(view(&state, &search, true).await?))
}

#[utoipa::path(get, path = "/v1/searches", tag = "searches", params(crate::api::ListParams),
    responses((status = 200, body = Object, description = "`{items, next}`, newest first (without their points)"), Errors))]
pub async fn list_searches(
    State(state): State<AppState>,
    Q(params): Q<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let page = Page::parse(params.limit, params.cursor.as_deref())?;
    let rows = searches::list(&state.pool, page.before, page.limit).await?;
    let mut items = Vec::with_capacity(rows.len());
    for search in &rows {
        items.push(view(&state, search, false).await?);
    }
    let keys: Vec<_> = rows.iter().map(|s| (s.created_at, s.id)).collect();
    let Json(mut answer) = page.answer(&keys, |k| *k);
    answer["items"] = json!(items);
    Ok(Json(answer))
}

/// A search as the API shows it: weights and settings by partition and eval set name, each
/// point with its perplexities and objective (`with_points`), the best so far, and from the
/// finished job the proposal, the answer and the predictor's fit.
async fn view(state: &AppState, search: &Search, with_points: bool) -> Result<Value, ApiError> {
    let pool = &state.pool;
    let names = datasets::names(pool, Kind::Partition, &search.partition_ids).await?;
    let all_sets: Vec<Uuid> = search
        .eval_set_ids
        .iter()
        .chain(&search.tune_set_ids)
        .copied()
        .collect();
    let set_names = datasets::names(pool, Kind::EvalSet, &all_sets).await?;
    let partition = |i: usize| {
        names
            .get(&search.partition_ids[i])
            .cloned()
            .unwrap_or_default()
    };
    let set = |i: usize| {
        set_names
            .get(&search.eval_set_ids[i])
            .cloned()
            .unwrap_or_default()
    };
    let by_partition = |w: &[f64]| -> Value {
        Value::Object(
            w.iter()
                .enumerate()
                .map(|(i, w)| (partition(i), json!(w)))
                .collect(),
        )
    };
    let points = searches::points(pool, search.id).await?;
    let keys: Vec<String> = points.iter().map(|p| p.mixture_key.clone()).collect();
    let mut perplexities: Vec<HashMap<String, f64>> = Vec::new();
    for set_id in &search.eval_set_ids {
        let scope = ScoreKey {
            base_id: search.base_id,
            recipe_id: search.recipe_id,
            mixture_key: String::new(),
            weighting: "explicit".into(),
            merge_method: search.proxy.clone(),
            eval_set_id: *set_id,
            eval_config_sha256: search.eval_config_sha256.clone(),
        };
        perplexities.push(scores::perplexities(pool, &scope, &keys).await?);
    }
    let bounds = crate::search::Bounds {
        min: search.bounds_min.clone(),
        max: search.bounds_max.clone(),
    };
    let shown: Vec<(Value, Option<f64>)> = points
        .iter()
        .map(|p| {
            let ppl: Vec<Option<f64>> = perplexities.iter().map(|m| m.get(&p.mixture_key).copied()).collect();
            let objective = ppl
                .iter()
                .zip(&search.objective)
                .try_fold(0.0, |sum, (ppl, w)| ppl.map(|v| sum + w * v.ln()));
            let mut body = json!({
                "position": p.position,
                "round": p.round,
                "role": p.role,
                "weights": by_partition(&p.weights),
                "objective": objective,
                "perplexity": Value::Object(ppl.iter().enumerate().map(|(i, v)| (set(i), json!(v))).collect()),
            });
            if p.tune_objective.is_some() {
                body["tune_objective"] = json!(p.tune_objective);
            }
            // A reference mixture outside the bounds is shown, and ranks nothing.
            if !bounds.contains(&p.weights, 1e-9) {
                body["within_bounds"] = json!(false);
                return (body, None);
            }
            // What ranks the points: a gradient search's tune objective (its report halves
            // choose nothing), else the objective.
            (body, p.tune_objective.or(objective))
        })
        .collect();
    let best = shown
        .iter()
        .filter_map(|(body, rank)| rank.map(|o| (o, body)))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, body)| body.clone());
    let job = match search.job_id {
        Some(id) => jobs::get(pool, id).await?,
        None => None,
    };
    let result = job.as_ref().and_then(|j| j.result.clone());
    // A sample search's proposal is its last point; the finished job names a gradient
    // search's.
    let proposal = result
        .as_ref()
        .and_then(|r| r["proposal"]["position"].as_u64())
        .and_then(|at| shown.iter().find(|(body, _)| body["position"] == at))
        .or_else(|| shown.iter().find(|(body, _)| body["role"] == "proposal"))
        .map(|(body, _)| {
            let mut body = body.clone();
            if let Some(predicted) = result.as_ref().map(|r| &r["proposal"]["predicted"])
                && !predicted.is_null()
            {
                body["predicted"] = predicted.clone();
            }
            body
        });
    // Once done, the answer the job chose: the best point it evaluated within its bounds (by
    // the tune objective where it has tune halves), or the best of its final candidates by
    // its check proxy; with the proxy that chose it.
    let answer = (job.as_ref().map(|j| j.state.as_str()) == Some("succeeded"))
        .then(|| {
            let chosen = result.as_ref().map(|r| &r["answer"]);
            let at = chosen.and_then(|a| a["position"].as_u64());
            let body = match at {
                Some(at) => shown
                    .iter()
                    .find(|(body, _)| body["position"] == at)
                    .map(|(body, _)| body.clone()),
                None => best.clone(),
            };
            body.map(|mut body| {
                let proxy = chosen
                    .and_then(|a| a["proxy"].as_str())
                    .unwrap_or(&search.proxy);
                if proxy != search.proxy {
                    body["checked_objective"] =
                        chosen.map_or(Value::Null, |a| a["objective"].clone());
                }
                body["proxy"] = json!(proxy);
                body
            })
        })
        .flatten();
    let references: Vec<Value> = shown
        .iter()
        .filter(|(body, _)| body["role"] == "natural" || body["role"] == "uniform")
        .map(|(body, _)| body.clone())
        .collect();
    let base = bases::find(pool, &search.base_id.to_string()).await?;
    let recipe = recipes::find(pool, &search.recipe_id.to_string()).await?;
    let total = search.budget as usize + 2 + usize::from(!search.natural.is_empty());
    let mut out = json!({
        "id": search.id,
        "state": job.as_ref().map(|j| j.state.clone()),
        "method": search.method,
        "proxy": search.proxy,
        "budget": search.budget,
        "seed": search.seed,
        "base": base.map(|b| b.name),
        "recipe": recipe.map(|r| r.name),
        "partitions": (0..search.partition_ids.len()).map(partition).collect::<Vec<_>>(),
        "eval_sets": (0..search.eval_set_ids.len()).map(set).collect::<Vec<_>>(),
        "tune_sets": search.tune_set_ids.iter().map(|id| set_names.get(id).cloned().unwrap_or_default()).collect::<Vec<_>>(),
        "objective": Value::Object(search.objective.iter().enumerate().map(|(i, w)| (set(i), json!(w))).collect()),
        "bounds": Value::Object((0..search.partition_ids.len()).map(|i| (partition(i), json!([search.bounds_min[i], search.bounds_max[i]]))).collect()),
        "prior": by_partition(&search.prior),
        "natural": (!search.natural.is_empty()).then(|| by_partition(&search.natural)),
        "check": search.check_proxy,
        "progress": { "evaluated": points.len(), "total": total, "fraction": points.len() as f64 / total as f64 },
        "best": best,
        "proposal": proposal,
        "answer": answer,
        "references": references,
        "checked": result.as_ref().map_or(Value::Null, |r| r["checked"].clone()),
        "fit": result.as_ref().map_or(Value::Null, |r| r["fit"].clone()),
        "gradient_passes": result.as_ref().map_or(Value::Null, |r| r["gradient_passes"].clone()),
        "job": job.as_ref().map(|j| j.id),
        "error": job.as_ref().and_then(|j| j.error.clone()),
        "created_at": search.created_at,
    });
    if with_points {
        out["points"] = Value::Array(shown.into_iter().map(|(body, _)| body).collect());
    }
    Ok(out)
}
