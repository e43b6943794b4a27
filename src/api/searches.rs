//! Ratio searches: `POST /v1/searches` looks for the mixture weights of a list of partitions
//! that minimise an objective over eval sets, by merged evaluations only (one `search` job;
//! see [`crate::search`]); `GET /v1/searches/{id}` shows its progress, the best point so far,
//! every evaluated point, and once done the predictor's proposal and how well it fits.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::Errors;
use super::units::train_missing;
use super::{
    ApiError, AppState, ListParams, Page, Q, parse_uuid, resolve_base, resolve_eval_sets,
    resolve_recipe,
};
use crate::engine::eval::EvalConfig;
use crate::registry::datasets::{self, Kind};
use crate::registry::scores::{self, ScoreKey};
use crate::registry::scores::{MERGE_METHOD, eval_config_sha256};
use crate::registry::searches::{self, Search};
use crate::registry::{bases, jobs, models, recipes};
use crate::search::Bounds;

/// The most points one search may evaluate.
const MAX_BUDGET: u32 = 10_000;
/// The most partitions one search may weigh (all stay resident on the worker).
const MAX_PARTITIONS: usize = 64;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSearch {
    /// The partitions whose weights are searched (2 to 64).
    partitions: Vec<String>,
    eval_sets: Vec<String>,
    /// Each eval set's weight in the objective, the weighted sum of log perplexities (default:
    /// equal weights); eval sets it leaves out weigh nothing.
    #[schema(value_type = Option<Object>)]
    objective: Option<BTreeMap<String, f64>>,
    /// Points to evaluate before the proposal (`sample`), or steps to take (`gradient`), 1 to
    /// 10,000.
    budget: u32,
    /// `sample` (default): Dirichlet samples in rounds, steered by a fitted predictor.
    /// `gradient`: exponentiated-gradient steps along the merged model's α-gradient, tuned on
    /// one half of each eval set's documents (`<name>.tune`) and scored on the other
    /// (`<name>.report`), both registered as eval sets.
    method: Option<String>,
    /// `{"partition": [min, max]}`: bounds on its weight (default [0, 1]).
    #[schema(value_type = Option<Object>)]
    bounds: Option<BTreeMap<String, (f64, f64)>>,
    /// `{"partition": weight}`: where the search starts (normalised; default: proportional to
    /// the partitions' sizes, the token-weighted mixture); partitions it leaves out start at 0.
    #[schema(value_type = Option<Object>)]
    prior: Option<BTreeMap<String, f64>>,
    /// The seed of the samples (default 0): the same request searches the same points.
    seed: Option<u64>,
    base: Option<String>,
    recipe: Option<String>,
    /// Whether missing unit models are queued for training (default true: the answer is then
    /// 202 naming their jobs; ask again once they end).
    train: Option<bool>,
}

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
    let method = new.method.as_deref().unwrap_or("sample");
    if !["sample", "gradient"].contains(&method) {
        return Err(bad(
            "invalid_method",
            format!("method {method:?}: use sample or gradient"),
        ));
    }
    if !(1..=MAX_BUDGET).contains(&new.budget) {
        return Err(bad(
            "invalid_budget",
            format!("budget is 1 to {MAX_BUDGET} points"),
        ));
    }
    if !(2..=MAX_PARTITIONS).contains(&new.partitions.len()) {
        return Err(bad(
            "invalid_partitions",
            format!("a search weighs 2 to {MAX_PARTITIONS} partitions"),
        ));
    }
    let mut partitions = Vec::with_capacity(new.partitions.len());
    for key in &new.partitions {
        let p = datasets::find(&state.pool, Kind::Partition, key)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("partition {key:?}")))?;
        if partitions.iter().any(|q: &datasets::Dataset| q.id == p.id) {
            return Err(bad(
                "invalid_partitions",
                format!("partition {key:?} is named twice"),
            ));
        }
        partitions.push(p);
    }
    // A setting keyed by partition (bounds, prior) or eval set (objective): its position.
    let position = |keys: &[(Uuid, &str)], key: &str, what: &str| {
        keys.iter()
            .position(|(id, name)| *name == key || id.to_string() == key)
            .ok_or_else(|| {
                bad(
                    "invalid_setting",
                    format!("{what} names {key:?}, which the search does not"),
                )
            })
    };
    let partition_keys: Vec<(Uuid, &str)> =
        partitions.iter().map(|p| (p.id, p.name.as_str())).collect();
    let eval_sets = resolve_eval_sets(&state.pool, &new.eval_sets).await?;
    let set_keys: Vec<(Uuid, &str)> = eval_sets.iter().map(|s| (s.id, s.name.as_str())).collect();

    let objective = match &new.objective {
        None => vec![1.0; eval_sets.len()],
        Some(map) => {
            let mut w = vec![0.0; eval_sets.len()];
            for (key, weight) in map {
                w[position(&set_keys, key, "objective")?] = *weight;
            }
            w
        }
    };
    let objective = normalised(objective, "objective")?;
    let k = partitions.len();
    let (mut min, mut max) = (vec![0.0; k], vec![1.0; k]);
    for (key, (lo, hi)) in new.bounds.iter().flatten() {
        let i = position(&partition_keys, key, "bounds")?;
        (min[i], max[i]) = (*lo, *hi);
    }
    let bounds = Bounds::new(min, max)
        .map_err(|e| ApiError::unprocessable("invalid_bounds", e.to_string()))?;
    let prior = match &new.prior {
        None => partitions.iter().map(|p| p.bytes as f64).collect(),
        Some(map) => {
            let mut w = vec![0.0; k];
            for (key, weight) in map {
                w[position(&partition_keys, key, "prior")?] = *weight;
            }
            w
        }
    };
    let prior = normalised(prior, "prior")?;
    let seed = new.seed.unwrap_or(0);
    if seed > i64::MAX as u64 {
        return Err(bad("invalid_seed", format!("seed is at most {}", i64::MAX)));
    }

    let base = resolve_base(&state.pool, new.base.as_deref()).await?;
    let recipe = resolve_recipe(&state.pool, new.recipe.as_deref()).await?;
    let ids: Vec<Uuid> = partitions.iter().map(|p| p.id).collect();
    let missing = models::not_ready(&state.pool, base.id, recipe.id, &ids).await?;
    let names: HashMap<Uuid, String> = partitions.iter().map(|p| (p.id, p.name.clone())).collect();
    let name = |p: Uuid| names.get(&p).cloned().unwrap_or_default();
    if let Some(training) = train_missing(
        &state,
        base.id,
        recipe.id,
        &missing,
        &name,
        new.train.unwrap_or(true),
    )
    .await?
    {
        return Ok((StatusCode::ACCEPTED, Json(training)));
    }

    // A gradient search scores its points on the report halves and never looks at them
    // otherwise.
    let (eval_set_ids, tune_set_ids) = if method == "gradient" {
        let (mut report, mut tune) = (Vec::new(), Vec::new());
        for set in &eval_sets {
            let (t, r) = crate::ingest::split_eval_set(&state.pool, &state.store, set).await?;
            tune.push(t.id);
            report.push(r.id);
        }
        (report, tune)
    } else {
        (eval_sets.iter().map(|s| s.id).collect(), Vec::new())
    };
    let eval = EvalConfig::default();
    let search = Search {
        id: Uuid::new_v4(),
        base_id: base.id,
        recipe_id: recipe.id,
        partition_ids: ids,
        eval_set_ids,
        tune_set_ids,
        objective,
        method: method.into(),
        budget: new.budget as i32,
        bounds_min: bounds.min,
        bounds_max: bounds.max,
        prior,
        seed: seed as i64,
        eval_config: serde_json::to_value(&eval).expect("settings serialise"),
        eval_config_sha256: eval_config_sha256(&eval),
        request: serde_json::from_slice(&body).unwrap_or(Value::Null),
        job_id: None,
        created_at: chrono::Utc::now(),
    };
    crate::jobs::search::queue(&state.pool, &search).await?;
    let search = searches::get(&state.pool, search.id)
        .await?
        .ok_or_else(|| ApiError::Internal("a created search vanished".into()))?;
    Ok((
        StatusCode::CREATED,
        Json(view(&state, &search, true).await?),
    ))
}

/// Weights that are finite, non-negative and not all zero, scaled to sum 1.
fn normalised(weights: Vec<f64>, what: &str) -> Result<Vec<f64>, ApiError> {
    if weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
        return Err(bad(
            "invalid_setting",
            format!("{what}: weights are finite and non-negative"),
        ));
    }
    let sum: f64 = weights.iter().sum();
    if sum <= 0.0 {
        return Err(bad(
            "invalid_setting",
            format!("{what}: the weights sum to zero"),
        ));
    }
    Ok(weights.into_iter().map(|w| w / sum).collect())
}

#[utoipa::path(get, path = "/v1/searches/{id}", tag = "searches", params(("id" = String, Path, description = "the search's id")),
    responses((status = 200, body = Object, description = "state, progress, the best point so far, every point, and once done the proposal and the predictor's fit"), Errors))]
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
/// finished job the proposal and the predictor's fit.
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
            merge_method: MERGE_METHOD.into(),
            eval_set_id: *set_id,
            eval_config_sha256: search.eval_config_sha256.clone(),
        };
        perplexities.push(scores::perplexities(pool, &scope, &keys).await?);
    }
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
    let base = bases::find(pool, &search.base_id.to_string()).await?;
    let recipe = recipes::find(pool, &search.recipe_id.to_string()).await?;
    let total = search.budget as usize + 1;
    let mut out = json!({
        "id": search.id,
        "state": job.as_ref().map(|j| j.state.clone()),
        "method": search.method,
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
        "progress": { "evaluated": points.len(), "total": total, "fraction": points.len() as f64 / total as f64 },
        "best": best,
        "proposal": proposal,
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
