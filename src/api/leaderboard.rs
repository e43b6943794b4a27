//! Views over the score cache: the leaderboard of scored mixtures on an eval set, and the
//! heatmap of pairwise merges. Both read stored scores only; nothing is queued.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::Errors;
use super::{ApiError, AppState, Q};
use crate::engine::eval::EvalConfig;
use crate::mixture::Member;
use crate::mixture::{Mixture, Weighting};
use crate::proxy::Choice;
use crate::registry::datasets::{self, Kind};
use crate::registry::scores::eval_config_sha256;
use crate::registry::scores::{self, Rank, ScoreKey};

/// The scores of `base` × `recipe` on `eval` under the default evaluation settings.
async fn scope(
    state: &AppState,
    eval: &str,
    base: Option<&str>,
    recipe: Option<&str>,
    proxy: Option<&str>,
) -> Result<(ScoreKey, Value), ApiError> {
    let choice = Choice::parse(proxy)?;
    let base = crate::service::resolve::base(&state.pool, base).await?;
    let recipe = crate::service::resolve::recipe(&state.pool, recipe).await?;
    let eval_set = crate::service::resolve::eval_sets(&state.pool, &[eval.to_string()])
        .await?
        .remove(0);
    let chosen = crate::validation::choose(&state.pool, choice, &eval_set).await?;
    let proxy = chosen.proxy;
    let key = ScoreKey {
        base_id: base.id,
        recipe_id: recipe.id,
        mixture_key: String::new(),
        weighting: "uniform".into(),
        merge_method: proxy.key(),
        eval_set_id: eval_set.id,
        eval_config_sha256: eval_config_sha256(&EvalConfig::default()),
    };
    let context = json!({
        "eval_set": eval_set.name, "base": base.name, "recipe": recipe.name, "proxy": proxy,
        "proxy_chosen": chosen.reason,
    });
    Ok((key, context))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LeaderboardParams {
    /// The eval set (name or id).
    eval: String,
    base: Option<String>,
    recipe: Option<String>,
    /// `perplexity` (default), `bits_per_byte`, `bits_per_byte_gold` or `accuracy` (sets of
    /// questions), `size` or `created`.
    sort: Option<String>,
    /// `asc` or `desc`; by default the best first (`desc` for accuracy, `asc` otherwise).
    order: Option<String>,
    /// Only mixtures of this many partitions.
    size: Option<i32>,
    /// Rows per page, 1 to 500 (default 50).
    limit: Option<i64>,
    /// Rows to skip (default 0).
    offset: Option<i64>,
    /// Whose scores: `average` (default), `ensemble`, `units`, `fisher`, `task_vectors@λ`, or chosen by the eval set's validations: `task_vectors` (its best λ) or `best`.
    proxy: Option<String>,
}

/// `GET /v1/leaderboard?eval=E`: every stored score of the base and recipe on the eval set
/// (every weighting), ranked, one page at a time.
#[utoipa::path(get, path = "/v1/leaderboard", tag = "scores", params(LeaderboardParams),
    responses((status = 200, body = Object, description = "`{eval_set, base, recipe, sort, order, total, offset, items}`; each item a mixture with its weighting, perplexity, bits per byte, macro perplexity, tokens and time"), Errors))]
pub async fn leaderboard(
    State(state): State<AppState>,
    Q(params): Q<LeaderboardParams>,
) -> Result<Json<Value>, ApiError> {
    let sort = params.sort.as_deref().unwrap_or("perplexity");
    let rank = Rank::parse(sort).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_sort",
            format!("sort {sort:?}: use one of {}", Rank::NAMES.join(", ")),
        )
    })?;
    // Best first by default: the highest accuracy, the lowest of everything else.
    let best_first = if rank == Rank::Accuracy {
        "desc"
    } else {
        "asc"
    };
    let descending = match params.order.as_deref().unwrap_or(best_first) {
        "asc" => false,
        "desc" => true,
        other => {
            return Err(ApiError::bad_request(
                "invalid_order",
                format!("order {other:?}: use asc or desc"),
            ));
        }
    };
    let limit = params.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be between 1 and 500",
        ));
    }
    let offset = params.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::bad_request(
            "invalid_offset",
            "offset must be 0 or more",
        ));
    }
    if params.size.is_some_and(|s| s < 1) {
        return Err(ApiError::bad_request(
            "invalid_size",
            "size must be 1 or more",
        ));
    }
    let (scope, context) = scope(
        &state,
        &params.eval,
        params.base.as_deref(),
        params.recipe.as_deref(),
        params.proxy.as_deref(),
    )
    .await?;
    let (total, rows) = scores::leaderboard(
        &state.pool,
        &scope,
        params.size,
        rank,
        descending,
        limit,
        offset,
    )
    .await?;
    let ids: Vec<Uuid> = rows
        .iter()
        .flat_map(|s| Member::list(&s.mixture))
        .map(|m| m.partition)
        .collect();
    let names = datasets::names(&state.pool, Kind::Partition, &ids).await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|s| {
            let mixture: Vec<Value> = Member::list(&s.mixture)
                .into_iter()
                .map(|m| json!({ "partition": name(&names, m.partition), "weight": m.weight }))
                .collect();
            json!({
                "mixture": mixture,
                "size": mixture.len(),
                "weighting": s.weighting,
                "perplexity": s.result["perplexity"],
                "bits_per_byte": s.result["bits_per_byte"],
                "macro_perplexity": s.result["macro_perplexity"],
                "bits_per_byte_gold": s.result["bits_per_byte_gold"],
                "accuracy": s.result["accuracy"],
                "tokens": s.result["tokens"],
                "created_at": s.created_at,
            })
        })
        .collect();
    Ok(Json(json!({
        "eval_set": context["eval_set"],
        "base": context["base"],
        "recipe": context["recipe"],
        "proxy": context["proxy"],
        "proxy_chosen": context["proxy_chosen"],
        "sort": sort,
        "order": if descending { "desc" } else { "asc" },
        "total": total,
        "offset": offset,
        "items": items,
    })))
}

fn name(names: &HashMap<Uuid, String>, id: Uuid) -> String {
    names.get(&id).cloned().unwrap_or_else(|| id.to_string())
}

/// The most partitions a heatmap shows (a 100 × 100 map reads 5,050 scores).
const MAX_HEATMAP: usize = 100;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HeatmapParams {
    /// The eval set (name or id).
    eval: String,
    /// Comma-separated partitions, in the map's order (default: the first `limit` by name of
    /// those with a ready unit model for the base and recipe).
    partitions: Option<String>,
    /// Only partitions of this domain, when `partitions` is not given.
    domain: Option<String>,
    /// How many partitions, 1 to 100 (default 30), when `partitions` is not given.
    limit: Option<usize>,
    base: Option<String>,
    recipe: Option<String>,
    /// Whose scores: `average` (default), `ensemble`, `units`, `fisher`, `task_vectors@λ`, or chosen by the eval set's validations: `task_vectors` (its best λ) or `best`.
    proxy: Option<String>,
}

/// `GET /v1/heatmap?eval=E`: the stored perplexity of every uniform merge of two of the
/// partitions, and of each partition's unit model alone (the diagonal), on the eval set.
/// `cells` holds `[row, column, perplexity]` for `column <= row` (one cell per pair), only
/// where a score is stored; `missing` counts the pairs without one (`POST /v1/sweeps` with
/// `"sizes": [1, 2]` scores them).
#[utoipa::path(get, path = "/v1/heatmap", tag = "scores", params(HeatmapParams),
    responses((status = 200, body = Object, description = "`{eval_set, base, recipe, partitions, cells, missing}`"), Errors))]
pub async fn heatmap(
    State(state): State<AppState>,
    Q(params): Q<HeatmapParams>,
) -> Result<Json<Value>, ApiError> {
    let (scope, context) = scope(
        &state,
        &params.eval,
        params.base.as_deref(),
        params.recipe.as_deref(),
        params.proxy.as_deref(),
    )
    .await?;
    let partitions: Vec<(Uuid, String)> = match &params.partitions {
        Some(list) => {
            let mut found: Vec<(Uuid, String)> = Vec::new();
            for key in list.split(',').map(str::trim).filter(|k| !k.is_empty()) {
                let p = datasets::find(&state.pool, Kind::Partition, key)
                    .await?
                    .ok_or_else(|| ApiError::not_found(format!("partition {key:?}")))?;
                if found.iter().any(|(id, _)| *id == p.id) {
                    return Err(ApiError::bad_request(
                        "invalid_partitions",
                        format!("partition {key:?} is named twice"),
                    ));
                }
                found.push((p.id, p.name));
            }
            if found.is_empty() || found.len() > MAX_HEATMAP {
                return Err(ApiError::bad_request(
                    "invalid_partitions",
                    format!("a heatmap shows 1 to {MAX_HEATMAP} partitions"),
                ));
            }
            found
        }
        // None may be trained yet: an empty map.
        None => {
            let limit = params.limit.unwrap_or(30);
            if !(1..=MAX_HEATMAP).contains(&limit) {
                return Err(ApiError::bad_request(
                    "invalid_limit",
                    format!("limit must be between 1 and {MAX_HEATMAP}"),
                ));
            }
            datasets::first_trained(
                &state.pool,
                scope.base_id,
                scope.recipe_id,
                params.domain.as_deref(),
                limit as i64,
            )
            .await?
        }
    };
    let mut pairs: Vec<(usize, usize, String)> = Vec::new();
    for row in 0..partitions.len() {
        for column in 0..=row {
            let ids: Vec<Uuid> = if row == column {
                vec![partitions[row].0]
            } else {
                vec![partitions[row].0, partitions[column].0]
            };
            let mixture =
                Mixture::new(&ids, None, Weighting::Uniform).expect("distinct partitions");
            pairs.push((row, column, mixture.key()));
        }
    }
    let keys: Vec<String> = pairs.iter().map(|(_, _, k)| k.clone()).collect();
    let stored = scores::perplexities(&state.pool, &scope, &keys).await?;
    let cells: Vec<Value> = pairs
        .iter()
        .filter_map(|(row, column, key)| stored.get(key).map(|ppl| json!([row, column, ppl])))
        .collect();
    Ok(Json(json!({
        "eval_set": context["eval_set"],
        "base": context["base"],
        "recipe": context["recipe"],
        "proxy": context["proxy"],
        "proxy_chosen": context["proxy_chosen"],
        "partitions": partitions.iter().map(|(_, n)| n).collect::<Vec<_>>(),
        "missing": pairs.len() - cells.len(),
        "cells": cells,
    })))
}
