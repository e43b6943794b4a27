//! Sweeps: `POST /v1/sweeps` scores every subset of partitions in a size range (or a given
//! list of mixtures) on every eval set, in shards that workers share; `GET /v1/sweeps/{id}`
//! shows its progress and, per eval set, the mixtures ranked, best first.

use std::collections::{BTreeMap, HashSet};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::Errors;
use super::{ApiError, AppState, ListParams, Page, Q, parse_uuid};
use crate::mixture::Member;
use crate::registry::datasets::{self, Kind};
use crate::registry::sweeps::{self, Sweep};
use crate::registry::{bases, recipes};
use crate::service::sweep::{self, NewSweep};
use crate::service::units::Created;

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, message)
}

/// `POST /v1/sweeps`: everything is checked (names, sizes, the mixture count against the
/// limit) before the sweep and its shards are queued in one transaction. When unit models
/// are missing they are queued instead (202) and nothing else is.
#[utoipa::path(post, path = "/v1/sweeps", tag = "sweeps", request_body = NewSweep, security(("bearer" = [])),
    responses((status = 201, body = Object, description = "the sweep, queued in shards"), (status = 202, body = Object, description = "unit models are trained first: ask again once their jobs end"), Errors))]
pub async fn create_sweep(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let new: NewSweep =
        serde_json::from_slice(&body).map_err(|e| bad("invalid_body", e.to_string()))?;
    let request = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match sweep::create(&state.pool, &new, request, state.sweeps).await? {
        Created::Training(training) => Ok((StatusCode::ACCEPTED, Json(json!(training)))),
        Created::Done(sweep) => {
            let sweep = sweeps::get(&state.pool, sweep.id)
                .await?
                .ok_or_else(|| ApiError::internal("a created sweep vanished"))?;
            Ok((
                StatusCode::CREATED,
                Json(view(&state, &sweep, Some(10)).await?),
            ))
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SweepParams {
    /// Ranked mixtures shown per eval set (default 100).
    limit: Option<usize>,
}

/// `GET /v1/sweeps/{id}`: progress, state, and per eval set the mixtures ranked by
/// perplexity, best first.
#[utoipa::path(get, path = "/v1/sweeps/{id}", tag = "sweeps", params(("id" = String, Path, description = "the sweep's id"), SweepParams),
    responses((status = 200, body = Object, description = "state, progress, and per eval set the mixtures ranked"), Errors))]
pub async fn get_sweep(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Q(params): Q<SweepParams>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_uuid(&id).ok_or_else(|| ApiError::not_found(format!("sweep {id:?}")))?;
    let sweep = sweeps::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("sweep {id}")))?;
    let limit = params.limit.unwrap_or(100);
    if limit > 10_000 {
        return Err(bad("invalid_limit", "limit is at most 10000"));
    }
    Ok(Json(view(&state, &sweep, Some(limit)).await?))
}

/// `GET /v1/sweeps`: newest first, each with its state and progress (no rankings).
#[utoipa::path(get, path = "/v1/sweeps", tag = "sweeps", params(crate::api::ListParams),
    responses((status = 200, body = Object, description = "`{items, next}`, newest first"), Errors))]
pub async fn list_sweeps(
    State(state): State<AppState>,
    Q(params): Q<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let page = Page::parse(params.limit, params.cursor.as_deref())?;
    let rows = sweeps::list(&state.pool, page.before, page.limit).await?;
    let mut items = Vec::with_capacity(rows.len());
    for sweep in &rows {
        items.push(view(&state, sweep, None).await?);
    }
    let keys: Vec<_> = rows.iter().map(|s| (s.created_at, s.id)).collect();
    let Json(mut answer) = page.answer(&keys, |k| *k);
    answer["items"] = json!(items);
    Ok(Json(answer))
}

/// A sweep as the API shows it; with `ranked`, that many of the best mixtures per eval set.
async fn view(state: &AppState, sweep: &Sweep, ranked: Option<usize>) -> Result<Value, ApiError> {
    let outcomes = sweeps::outcomes(&state.pool, sweep).await?;
    let jobs = sweeps::job_states(&state.pool, sweep.id).await?;
    let base = bases::find(&state.pool, &sweep.base_id.to_string()).await?;
    let recipe = recipes::find(&state.pool, &sweep.recipe_id.to_string()).await?;
    let eval_names = datasets::names(&state.pool, Kind::EvalSet, &sweep.eval_set_ids).await?;
    let partition_ids: Vec<Uuid> = outcomes
        .iter()
        .filter(|o| o.eval_set_id == sweep.eval_set_ids[0])
        .flat_map(|o| Member::list(&o.mixture).into_iter().map(|m| m.partition))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let names = datasets::names(&state.pool, Kind::Partition, &partition_ids).await?;
    let name = |id: &Uuid| names.get(id).cloned().unwrap_or_else(|| id.to_string());

    let total = outcomes.len();
    let scored = outcomes.iter().filter(|o| o.result.is_some()).count();
    let count = |s: &str| jobs.get(s).copied().unwrap_or(0);
    let job_state = if count("failed") > 0 {
        "failed"
    } else if count("cancelled") > 0 {
        "cancelled"
    } else if scored == total {
        "succeeded"
    } else if count("running") > 0 {
        "running"
    } else {
        "queued"
    };
    let mut out = json!({
        "id": sweep.id,
        "state": job_state,
        "base": base.map(|b| b.name),
        "recipe": recipe.map(|r| r.name),
        "weighting": sweep.weighting,
        "proxy": sweep.proxy,
        "eval_sets": sweep.eval_set_ids.iter().map(|id| eval_names.get(id).cloned()).collect::<Vec<_>>(),
        "mixtures": sweep.mixtures,
        "progress": {
            "scored": scored,
            "total": total,
            "fraction": if total == 0 { 1.0 } else { scored as f64 / total as f64 },
        },
        "jobs": jobs,
        "created_at": sweep.created_at,
    });
    let Some(limit) = ranked else {
        return Ok(out);
    };
    let mut per_set: BTreeMap<usize, Vec<(f64, Value)>> = BTreeMap::new();
    for o in &outcomes {
        let Some(result) = &o.result else { continue };
        let set = sweep
            .eval_set_ids
            .iter()
            .position(|id| *id == o.eval_set_id)
            .unwrap_or(0);
        let ppl = result["perplexity"].as_f64().unwrap_or(f64::INFINITY);
        let mixture: Vec<Value> = Member::list(&o.mixture)
            .iter()
            .map(|m| json!({ "partition": name(&m.partition), "weight": m.weight }))
            .collect();
        per_set.entry(set).or_default().push((
            ppl,
            json!({
                "mixture": mixture,
                "perplexity": result["perplexity"],
                "bits_per_byte": result["bits_per_byte"],
                "macro_perplexity": result["macro_perplexity"],
                "bits_per_byte_gold": result["bits_per_byte_gold"],
                "accuracy": result["accuracy"],
            }),
        ));
    }
    let results: Vec<Value> = sweep
        .eval_set_ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut rows = per_set.remove(&i).unwrap_or_default();
            rows.sort_by(|a, b| a.0.total_cmp(&b.0));
            let scored = rows.len();
            let ranking: Vec<Value> = rows
                .into_iter()
                .take(limit)
                .enumerate()
                .map(|(rank, (_, mut row))| {
                    row["rank"] = json!(rank + 1);
                    row
                })
                .collect();
            json!({
                "eval_set": eval_names.get(id),
                "scored": scored,
                "best": ranking.first(),
                "ranking": ranking,
            })
        })
        .collect();
    out["results"] = json!(results);
    Ok(out)
}
