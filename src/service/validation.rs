//! Creating validations: each mixture's partitions resolved and made canonical, the unit
//! models its proxies need queued first when missing, then each validation created or found
//! with the job that trains and evaluates what it lacks.

use std::collections::BTreeMap;

use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::mixture::{Mixture, Weighting};
use crate::registry::jobs::Job;
use crate::registry::models;
use crate::registry::validations::Validation;
use crate::service::resolve;
use crate::service::units::{self, Created};

/// A mixture to validate: a list of partitions (trained on their union as it is), or
/// `{"partition": weight}` (trained on sequences drawn from each partition in proportion to
/// its weight, normalised).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum MixtureSpec {
    Union(Vec<String>),
    Weighted(BTreeMap<String, f64>),
}

impl MixtureSpec {
    pub fn keys(&self) -> Vec<&String> {
        match self {
            MixtureSpec::Union(names) => names.iter().collect(),
            MixtureSpec::Weighted(weights) => weights.keys().collect(),
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewValidations {
    /// One mixture ...
    pub mixture: Option<MixtureSpec>,
    /// ... or several.
    pub mixtures: Option<Vec<MixtureSpec>>,
    pub eval_sets: Vec<String>,
    /// Tokens to train each model for (a multiple of the recipe's sequence length; default:
    /// the recipe's budget times the number of partitions with weight, the paper's k×).
    pub tokens: Option<u64>,
    /// The training seed (default: the recipe's). The same mixture validated with two seeds
    /// shows how well training agrees with itself: the report's ceiling for any proxy.
    pub seed: Option<u64>,
    pub base: Option<String>,
    pub recipe: Option<String>,
    /// Whether missing unit models are queued for training (default true: the answer is then
    /// 202 with `training`, and the validations are asked for again once those jobs end).
    pub train: Option<bool>,
}

fn bad(code: &'static str, message: impl Into<String>) -> Error {
    Error::invalid(code, message)
}

/// Checks a validations request (names, repeated partitions, the token budget) and creates
/// or finds each validation, with the job queued for what it lacks (`None` when it lacks
/// nothing) — or, when unit models are missing, queues those instead and nothing else.
pub async fn create(
    pool: &PgPool,
    new: &NewValidations,
) -> Result<Created<Vec<(Validation, Option<Job>)>>> {
    let mixtures = match (&new.mixture, &new.mixtures) {
        (Some(one), None) => vec![one],
        (None, Some(many)) if !many.is_empty() => many.iter().collect(),
        _ => {
            return Err(bad(
                "invalid_body",
                "give one mixture (\"mixture\") or a non-empty list (\"mixtures\")",
            ));
        }
    };
    let eval_sets = resolve::eval_sets(pool, &new.eval_sets).await?;
    let base = resolve::base(pool, new.base.as_deref()).await?;
    let recipe = resolve::recipe(pool, new.recipe.as_deref()).await?;

    let step = recipe.config.0.seq_len;
    if new.seed.is_some_and(|seed| seed > i64::MAX as u64) {
        return Err(bad("invalid_seed", format!("seed is at most {}", i64::MAX)));
    }
    if let Some(tokens) = new.tokens
        && (tokens == 0 || !tokens.is_multiple_of(step))
    {
        return Err(bad(
            "invalid_tokens",
            format!("tokens is a positive multiple of the recipe's seq_len ({step})"),
        ));
    }

    let mut partitions = resolve::Partitions::default();
    let mut resolved: Vec<(Mixture, Vec<Uuid>)> = Vec::new();
    for (i, spec) in mixtures.iter().enumerate() {
        let keys: Vec<String> = spec.keys().into_iter().cloned().collect();
        let ids = partitions.resolve(pool, &keys).await?;
        let weights: Option<Vec<f64>> = match spec {
            MixtureSpec::Union(_) => None,
            MixtureSpec::Weighted(weights) => Some(weights.values().copied().collect()),
        };
        let weighting = match weights {
            None => Weighting::Uniform,
            Some(_) => Weighting::Explicit,
        };
        let mixture = partitions
            .mixture(&ids, weights.as_deref(), weighting)
            .map_err(|e| e.context(format_args!("mixtures[{i}]")))?;
        resolved.push((mixture, ids));
    }
    // Each partition once, in the order the request names them.
    let mut used: Vec<Uuid> = Vec::new();
    for id in resolved.iter().flat_map(|(_, ids)| ids) {
        if !used.contains(id) {
            used.push(*id);
        }
    }
    // The proxies need the unit models.
    let missing = models::not_ready(pool, base.id, recipe.id, &used).await?;
    let name = |id: Uuid| partitions.name(id).to_string();
    let train = new.train.unwrap_or(true);
    if let Some(training) =
        units::train_missing(pool, (base.id, recipe.id), &missing, &name, train).await?
    {
        return Ok(Created::Training(training));
    }

    let set_ids: Vec<Uuid> = eval_sets.iter().map(|s| s.id).collect();
    let mixtures: Vec<Mixture> = resolved.into_iter().map(|(m, _)| m).collect();
    let budget = (new.tokens, new.seed);
    let out =
        crate::jobs::validate::queue(pool, base.id, &recipe, &mixtures, budget, &set_ids).await?;
    Ok(Created::Done(out))
}
