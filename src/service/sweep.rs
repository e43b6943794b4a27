//! Creating a sweep: every subset of some partitions in a size range (or a given list of
//! mixtures), each made canonical once, checked against the limit, and queued in shards on
//! every eval set in one transaction — or, when unit models are missing, those queued
//! instead and nothing else.

use std::collections::{BTreeSet, HashSet};

use serde::Deserialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::engine::eval::EvalConfig;
use crate::error::{Error, Result};
use crate::mixture::{self, Weighting};
use crate::proxy::Choice;
use crate::registry::models;
use crate::registry::scores::eval_config_sha256;
use crate::registry::sweeps::{Sweep, SweepMixture};
use crate::service::resolve;
use crate::service::units::{self, Created};

/// Sweep settings (`sweep_max_mixtures`, `sweep_shard_mixtures`).
#[derive(Clone, Copy, Debug)]
pub struct SweepLimits {
    pub max_mixtures: u64,
    pub shard_mixtures: usize,
}

impl Default for SweepLimits {
    fn default() -> Self {
        let service = crate::config::Config::default().service;
        SweepLimits {
            max_mixtures: service.sweep_max_mixtures,
            shard_mixtures: service.sweep_shard_mixtures as usize,
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSweep {
    /// With `sizes`: the partitions whose subsets are swept; with `mixtures`, optional, the
    /// partitions the mixtures may use.
    pub partitions: Option<Vec<String>>,
    /// `[min, max]` subset sizes (default: every size).
    #[schema(value_type = Option<Vec<u64>>)]
    pub sizes: Option<(usize, usize)>,
    /// An explicit list of mixtures, each a list of partitions.
    pub mixtures: Option<Vec<Vec<String>>>,
    pub eval_sets: Vec<String>,
    /// `uniform` (default) or `tokens`.
    pub weighting: Option<String>,
    /// `average` (default: the merged parameters), `ensemble` (the mixture of the unit
    /// models' distributions, from their stored per-token NLLs), `units` (the mean of their
    /// own perplexities, from the same), `fisher` (the average weighted per coordinate by
    /// each unit's Fisher estimate), `task_vectors@λ` (base + λ (average − base)), or chosen
    /// by the eval sets' validations: `task_vectors` (at the best λ) or `best` (the proxy
    /// with the best ρ); one proxy for all the sweep's eval sets.
    pub proxy: Option<String>,
    pub base: Option<String>,
    pub recipe: Option<String>,
    /// Whether missing unit models are queued for training (default true: the answer is then
    /// 202 naming their jobs, and the sweep is asked for again once they end).
    pub train: Option<bool>,
}

/// Checks everything a sweep request says (names, sizes, the mixture count against the
/// limit), then queues the sweep and its shards, or the unit models it lacks. `request` is
/// the body as sent, kept with the sweep.
pub async fn create(
    pool: &PgPool,
    new: &NewSweep,
    request: Value,
    limits: SweepLimits,
) -> Result<Created<Sweep>> {
    let eval_sets = resolve::eval_sets(pool, &new.eval_sets).await?;
    let weighting = match new.weighting.as_deref() {
        None => Weighting::Uniform,
        Some(name) => Weighting::parse(name).map_err(|e| Error::invalid("invalid_weighting", e))?,
    };
    let choice = Choice::parse(new.proxy.as_deref())?;
    let proxy = crate::validation::choose_one(pool, choice, &eval_sets)
        .await?
        .proxy;
    let base = resolve::base(pool, new.base.as_deref()).await?;
    let recipe = resolve::recipe(pool, new.recipe.as_deref()).await?;
    let mut partitions = resolve::Partitions::default();
    let chosen = choose(pool, new, &mut partitions, limits.max_mixtures).await?;

    let mut seen = HashSet::new();
    let mut list = Vec::with_capacity(chosen.len());
    for (i, ids) in chosen.iter().enumerate() {
        let canonical = partitions
            .mixture(ids, None, weighting)
            .map_err(|e| e.context(format_args!("mixtures[{i}]")))?;
        if seen.insert(canonical.key()) {
            list.push(SweepMixture::from(&canonical));
        }
    }
    // Every unit model must be ready; missing ones are queued first.
    let used: Vec<Uuid> = chosen
        .iter()
        .flatten()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let missing = models::not_ready(pool, base.id, recipe.id, &used).await?;
    let name = |p: Uuid| partitions.name(p).to_string();
    let train = new.train.unwrap_or(true);
    if let Some(training) =
        units::train_missing(pool, (base.id, recipe.id), &missing, &name, train).await?
    {
        return Ok(Created::Training(training));
    }

    let eval = EvalConfig::default();
    let sweep = Sweep {
        id: Uuid::new_v4(),
        base_id: base.id,
        recipe_id: recipe.id,
        weighting: weighting.as_str().into(),
        proxy: proxy.key(),
        eval_set_ids: eval_sets.iter().map(|s| s.id).collect(),
        eval_config: serde_json::to_value(&eval).expect("settings serialise"),
        eval_config_sha256: eval_config_sha256(&eval),
        request,
        mixtures: list.len() as i32,
        created_at: chrono::Utc::now(),
    };
    crate::jobs::sweep::queue(pool, &sweep, &list, limits.shard_mixtures).await?;
    Ok(Created::Done(sweep))
}

/// The mixtures a sweep request names, as partition ids: its list, or every subset of its
/// partitions in the size range; at most `limit`.
async fn choose(
    pool: &PgPool,
    new: &NewSweep,
    partitions: &mut resolve::Partitions,
    limit: u64,
) -> Result<Vec<Vec<Uuid>>> {
    let allowed = match &new.partitions {
        Some(keys) => Some(partitions.resolve(pool, keys).await?),
        None => None,
    };
    let too_many = |count: u64| {
        Error::unprocessable(
            "too_many_mixtures",
            format!(
                "this sweep would score {count} mixtures; the limit is {limit} \
                 (setting sweep_max_mixtures)"
            ),
        )
    };
    match (&new.sizes, &new.mixtures) {
        (Some(_), Some(_)) => Err(Error::invalid(
            "invalid_sweep",
            "give sizes or mixtures, not both",
        )),
        (_, Some(list)) => {
            if list.is_empty() {
                return Err(Error::invalid(
                    "invalid_sweep",
                    "mixtures lists at least one mixture",
                ));
            }
            if list.len() as u64 > limit {
                return Err(too_many(list.len() as u64));
            }
            let mut out = Vec::with_capacity(list.len());
            for (i, names) in list.iter().enumerate() {
                let ids = partitions.resolve(pool, names).await?;
                let outside = allowed
                    .as_ref()
                    .and_then(|allowed| ids.iter().find(|p| !allowed.contains(p)));
                if let Some(p) = outside {
                    return Err(Error::invalid(
                        "invalid_sweep",
                        format!(
                            "mixtures[{i}] uses {:?}, which is not among partitions",
                            partitions.name(*p)
                        ),
                    ));
                }
                out.push(ids);
            }
            Ok(out)
        }
        (sizes, None) => {
            let Some(ids) = allowed.filter(|p| !p.is_empty()) else {
                return Err(Error::invalid(
                    "invalid_sweep",
                    "name the partitions to sweep (with sizes), or give mixtures",
                ));
            };
            if ids.iter().collect::<HashSet<_>>().len() != ids.len() {
                return Err(Error::invalid(
                    "invalid_sweep",
                    "a partition is named twice",
                ));
            }
            let n = ids.len();
            let (min, max) = sizes.unwrap_or((1, n));
            if !(1 <= min && min <= max && max <= n) {
                return Err(Error::unprocessable(
                    "invalid_sizes",
                    format!("sizes [{min}, {max}]: need 1 <= min <= max <= {n} partitions"),
                ));
            }
            let count = mixture::count_subsets(n, min, max);
            if count > limit {
                return Err(too_many(count));
            }
            Ok(mixture::subsets(n, min, max)
                .into_iter()
                .map(|s| s.into_iter().map(|i| ids[i]).collect())
                .collect())
        }
    }
}
