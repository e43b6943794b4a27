//! The names in a request resolved against the registry, once: bases, recipes, eval sets,
//! partitions and mixtures become rows, and nothing downstream looks a name up again.

use std::collections::HashMap;

use sqlx::PgPool;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::mixture::{Mixture, MixtureRequest, Weighting};
use crate::registry::datasets::{self, Dataset, Kind};
use crate::registry::{bases, recipes};

/// The base named `key`, or the most recent ready base (a 409 says when none is ready and
/// which job makes the next one).
pub async fn base(pool: &PgPool, key: Option<&str>) -> Result<bases::Base> {
    if let Some(key) = key {
        return bases::find(pool, key)
            .await?
            .ok_or_else(|| Error::not_found(format!("base {key:?}")));
    }
    if let Some(base) = bases::latest_ready(pool).await? {
        return Ok(base);
    }
    // No base is ready: say whether one is on its way, and which job makes it.
    let Some(pending) = bases::latest_pending(pool).await? else {
        return Err(Error::conflict(
            "no_base",
            "no base model yet: create one first",
        ));
    };
    let job = bases::pretrain_job(pool, pending.id).await?;
    let progress = job.as_ref().map_or(String::new(), |j| {
        format!(
            " (job {}, {}, {:.0}% done)",
            j.id,
            j.state,
            j.progress * 100.0
        )
    });
    Err(Error::conflict(
        "base_pending",
        format!(
            "base {:?} is still being pre-trained{progress}: ask again once it is ready",
            pending.name
        ),
    )
    .with_details(serde_json::json!({ "base": pending.name, "job": job.map(|j| j.id) })))
}

/// The recipe named `key`, or the most recent one.
pub async fn recipe(pool: &PgPool, key: Option<&str>) -> Result<recipes::Recipe> {
    match key {
        Some(key) => recipes::find(pool, key)
            .await?
            .ok_or_else(|| Error::not_found(format!("recipe {key:?}"))),
        None => recipes::latest(pool).await?.ok_or_else(|| {
            Error::conflict("no_recipe", "no training recipe yet: create one first")
        }),
    }
}

/// The eval set named `key` (a name or an id).
pub async fn eval_set(pool: &PgPool, key: &str) -> Result<Dataset> {
    datasets::find(pool, Kind::EvalSet, key)
        .await?
        .ok_or_else(|| Error::not_found(format!("eval set {key:?}")))
}

/// The eval sets a request names (at least one, each once).
pub async fn eval_sets(pool: &PgPool, keys: &[String]) -> Result<Vec<Dataset>> {
    if keys.is_empty() {
        return Err(Error::invalid(
            "invalid_eval_sets",
            "eval_sets names at least one eval set",
        ));
    }
    let mut sets: Vec<Dataset> = Vec::with_capacity(keys.len());
    for key in keys {
        let set = eval_set(pool, key).await?;
        if sets.iter().any(|s| s.id == set.id) {
            return Err(Error::invalid(
                "invalid_eval_sets",
                format!("eval set {key:?} is named twice"),
            ));
        }
        sets.push(set);
    }
    Ok(sets)
}

/// Partitions resolved by name or id, remembered for the rest of a request: a sweep of a
/// thousand mixtures of eight partitions reads eight rows.
#[derive(Default)]
pub struct Partitions {
    by_key: HashMap<String, Uuid>,
    rows: HashMap<Uuid, Dataset>,
}

impl Partitions {
    /// The ids of the partitions `keys` names, in order.
    pub async fn resolve(&mut self, pool: &PgPool, keys: &[String]) -> Result<Vec<Uuid>> {
        let mut ids = Vec::with_capacity(keys.len());
        for key in keys {
            let id = match self.by_key.get(key) {
                Some(id) => *id,
                None => {
                    let row = datasets::find(pool, Kind::Partition, key)
                        .await?
                        .ok_or_else(|| Error::not_found(format!("partition {key:?}")))?;
                    let id = row.id;
                    self.by_key.insert(key.clone(), id);
                    self.rows.insert(id, row);
                    id
                }
            };
            ids.push(id);
        }
        Ok(ids)
    }

    /// The row of a partition resolved here.
    pub fn row(&self, id: Uuid) -> Option<&Dataset> {
        self.rows.get(&id)
    }

    /// The name of a partition resolved here.
    pub fn name(&self, id: Uuid) -> &str {
        self.rows.get(&id).map_or("", |r| r.name.as_str())
    }

    /// Every partition resolved here, by id, with its name.
    pub fn names(&self) -> HashMap<Uuid, String> {
        self.rows
            .iter()
            .map(|(id, r)| (*id, r.name.clone()))
            .collect()
    }

    /// The canonical mixture of partitions `ids` (resolved here): `weights` for explicit
    /// weighting, the partitions' sizes in UTF-8 bytes (the token counts of byte-level
    /// models) for token weighting. A refusal (422 `invalid_mixture`) names the problem.
    pub fn mixture(
        &self,
        ids: &[Uuid],
        weights: Option<&[f64]>,
        weighting: Weighting,
    ) -> Result<Mixture> {
        let sizes: Option<Vec<f64>> = (weighting == Weighting::Tokens).then(|| {
            ids.iter()
                .map(|p| self.rows.get(p).map_or(0.0, |r| r.bytes as f64))
                .collect()
        });
        let weights = match weighting {
            Weighting::Explicit => weights,
            Weighting::Tokens => sizes.as_deref(),
            Weighting::Uniform => None,
        };
        Mixture::new(ids, weights, weighting)
            .map_err(|e| Error::unprocessable("invalid_mixture", e.to_string()))
    }

    /// The mixture a request names, resolved and made canonical.
    pub async fn asked(&mut self, pool: &PgPool, asked: &MixtureRequest) -> Result<Mixture> {
        let weighting = asked.weighting()?;
        let ids = self.resolve(pool, &asked.partitions).await?;
        self.mixture(&ids, asked.weights.as_deref(), weighting)
    }
}

/// A mixture a request names, on a base and a recipe, with every name resolved.
pub struct MixtureOn {
    pub base: bases::Base,
    pub recipe: recipes::Recipe,
    pub partitions: Partitions,
    pub mixture: Mixture,
}

/// Resolves the mixture `asked` names on the base and recipe named (defaults filled in).
pub async fn mixture_on(
    pool: &PgPool,
    asked: &MixtureRequest,
    (base_key, recipe_key): (&str, &str),
) -> Result<MixtureOn> {
    let weighting = asked.weighting()?;
    let base = base(pool, Some(base_key)).await?;
    let recipe = recipe(pool, Some(recipe_key)).await?;
    let mut partitions = Partitions::default();
    let ids = partitions.resolve(pool, &asked.partitions).await?;
    let mixture = partitions.mixture(&ids, asked.weights.as_deref(), weighting)?;
    Ok(MixtureOn {
        base,
        recipe,
        partitions,
        mixture,
    })
}
