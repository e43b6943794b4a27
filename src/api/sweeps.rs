//! Sweeps: `POST /v1/sweeps` scores every subset of partitions in a size range (or a given
//! list of mixtures) on every eval set, in shards that workers share; `GET /v1/sweeps/{id}`
//! shows its progress and, per eval set, the mixtures ranked, best first.

use std::collections::{BTreeMap, HashMap, HashSet};

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
use crate::mixture::Member;
use crate::mixture::{self, Mixture, Weighting};
use crate::registry::datasets::{self, Dataset, Kind};
use crate::registry::scores::{MERGE_METHOD, eval_config_sha256};
use crate::registry::sweeps::{self, Sweep, SweepMixture};
use crate::registry::{bases, models, recipes};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSweep {
    /// With `sizes`: the partitions whose subsets are swept; with `mixtures`, optional, the
    /// partitions the mixtures may use.
    partitions: Option<Vec<String>>,
    /// `[min, max]` subset sizes (default: every size).
    #[schema(value_type = Option<Vec<u64>>)]
    sizes: Option<(usize, usize)>,
    /// An explicit list of mixtures, each a list of partitions.
    mixtures: Option<Vec<Vec<String>>>,
    eval_sets: Vec<String>,
    /// `uniform` (default) or `tokens`.
    weighting: Option<String>,
    base: Option<String>,
    recipe: Option<String>,
    /// Whether missing unit models are queued for training (default true: the answer is then
    /// 202 naming their jobs, and the sweep is asked for again once they end).
    train: Option<bool>,
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, message)
}

/// `POST /v1/sweeps`: everything is checked (names, sizes, the mixture count against the
/// limit) before the sweep and its shards are queued in one transaction. When unit models
/// are missing they are queued instead (202, see [`train_missing`]) and nothing else is.
#[utoipa::path(post, path = "/v1/sweeps", tag = "sweeps", request_body = NewSweep, security(("bearer" = [])),
    responses((status = 201, body = Object, description = "the sweep, queued in shards"), (status = 202, body = Object, description = "unit models are trained first: ask again once their jobs end"), Errors))]
pub async fn create_sweep(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let new: NewSweep =
        serde_json::from_slice(&body).map_err(|e| bad("invalid_body", e.to_string()))?;
    let eval_sets = resolve_eval_sets(&state.pool, &new.eval_sets).await?;
    let weighting = match new.weighting.as_deref() {
        None => Weighting::Uniform,
        Some(name) => Weighting::parse(name).map_err(|e| bad("invalid_weighting", e))?,
    };
    let (base_key, recipe_key) = state
        .scores
        .names(&state.pool, new.base.as_deref(), new.recipe.as_deref())
        .await?;
    let base = resolve_base(&state.pool, Some(&base_key)).await?;
    let recipe = resolve_recipe(&state.pool, Some(&recipe_key)).await?;

    let mut partitions = Partitions::default();
    let allowed = match &new.partitions {
        Some(keys) => Some(partitions.resolve_all(&state, keys).await?),
        None => None,
    };
    let limit = state.sweeps.max_mixtures;
    let too_many = |count: u64| {
        ApiError::unprocessable(
            "too_many_mixtures",
            format!(
                "this sweep would score {count} mixtures; the limit is {limit} \
                 (setting sweep_max_mixtures)"
            ),
        )
    };
    let chosen: Vec<Vec<Uuid>> = match (&new.sizes, &new.mixtures) {
        (Some(_), Some(_)) => {
            return Err(bad("invalid_sweep", "give sizes or mixtures, not both"));
        }
        (_, Some(list)) => {
            if list.is_empty() {
                return Err(bad("invalid_sweep", "mixtures lists at least one mixture"));
            }
            if list.len() as u64 > limit {
                return Err(too_many(list.len() as u64));
            }
            let mut out = Vec::with_capacity(list.len());
            for (i, names) in list.iter().enumerate() {
                let ids = partitions.resolve_all(&state, names).await?;
                let outside = allowed
                    .as_ref()
                    .and_then(|allowed| ids.iter().find(|p| !allowed.contains(p)));
                if let Some(p) = outside {
                    return Err(bad(
                        "invalid_sweep",
                        format!(
                            "mixtures[{i}] uses {:?}, which is not among partitions",
                            partitions.name(*p)
                        ),
                    ));
                }
                out.push(ids);
            }
            out
        }
        (sizes, None) => {
            let Some(ids) = allowed.clone().filter(|p| !p.is_empty()) else {
                return Err(bad(
                    "invalid_sweep",
                    "name the partitions to sweep (with sizes), or give mixtures",
                ));
            };
            if ids.iter().collect::<HashSet<_>>().len() != ids.len() {
                return Err(bad("invalid_sweep", "a partition is named twice"));
            }
            let n = ids.len();
            let (min, max) = sizes.unwrap_or((1, n));
            if !(1 <= min && min <= max && max <= n) {
                return Err(ApiError::unprocessable(
                    "invalid_sizes",
                    format!("sizes [{min}, {max}]: need 1 <= min <= max <= {n} partitions"),
                ));
            }
            let count = mixture::count_subsets(n, min, max);
            if count > limit {
                return Err(too_many(count));
            }
            mixture::subsets(n, min, max)
                .into_iter()
                .map(|s| s.into_iter().map(|i| ids[i]).collect())
                .collect()
        }
    };

    let mut seen = HashSet::new();
    let mut list = Vec::with_capacity(chosen.len());
    for (i, ids) in chosen.iter().enumerate() {
        let sizes = (weighting == Weighting::Tokens).then(|| {
            ids.iter()
                .map(|p| partitions.bytes(*p) as f64)
                .collect::<Vec<_>>()
        });
        let canonical = Mixture::new(ids, sizes.as_deref(), weighting).map_err(|e| {
            ApiError::unprocessable("invalid_mixture", format!("mixtures[{i}]: {e}"))
        })?;
        if seen.insert(canonical.key()) {
            list.push(SweepMixture::from(&canonical));
        }
    }
    // Every unit model must be ready; missing ones are queued first.
    let used: Vec<Uuid> = chosen
        .iter()
        .flatten()
        .copied()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let missing = models::not_ready(&state.pool, base.id, recipe.id, &used).await?;
    let name = |p: Uuid| partitions.name(p).to_string();
    let train = new.train.unwrap_or(true);
    if let Some(training) =
        train_missing(&state, base.id, recipe.id, &missing, &name, train).await?
    {
        return Ok((StatusCode::ACCEPTED, Json(training)));
    }

    let eval = EvalConfig::default();
    let sweep = Sweep {
        id: Uuid::new_v4(),
        base_id: base.id,
        recipe_id: recipe.id,
        weighting: weighting.as_str().into(),
        eval_set_ids: eval_sets.iter().map(|s| s.id).collect(),
        eval_config: serde_json::to_value(&eval).expect("settings serialise"),
        eval_config_sha256: eval_config_sha256(&eval),
        request: serde_json::from_slice(&body).unwrap_or(Value::Null),
        mixtures: list.len() as i32,
        created_at: chrono::Utc::now(),
    };
    crate::jobs::sweep::queue(&state.pool, &sweep, &list, state.sweeps.shard_mixtures).await?;
    let sweep = sweeps::get(&state.pool, sweep.id)
        .await?
        .ok_or_else(|| ApiError::Internal("a created sweep vanished".into()))?;
    Ok((
        StatusCode::CREATED,
        Json(view(&state, &sweep, Some(10)).await?),
    ))
}

/// Partitions resolved by name or id, remembered for the rest of the request.
#[derive(Default)]
struct Partitions {
    by_key: HashMap<String, Uuid>,
    rows: HashMap<Uuid, Dataset>,
}

impl Partitions {
    async fn resolve_all(
        &mut self,
        state: &AppState,
        keys: &[String],
    ) -> Result<Vec<Uuid>, ApiError> {
        let mut ids = Vec::with_capacity(keys.len());
        for key in keys {
            let id = match self.by_key.get(key) {
                Some(id) => *id,
                None => {
                    let row = datasets::find(&state.pool, Kind::Partition, key)
                        .await?
                        .ok_or_else(|| ApiError::not_found(format!("partition {key:?}")))?;
                    self.by_key.insert(key.clone(), row.id);
                    let id = row.id;
                    self.rows.insert(id, row);
                    id
                }
            };
            ids.push(id);
        }
        Ok(ids)
    }

    fn name(&self, id: Uuid) -> &str {
        self.rows.get(&id).map_or("", |r| r.name.as_str())
    }

    fn bytes(&self, id: Uuid) -> i64 {
        self.rows.get(&id).map_or(0, |r| r.bytes)
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
    let outcomes = sweeps::outcomes(&state.pool, sweep, MERGE_METHOD).await?;
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
