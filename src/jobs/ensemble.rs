//! The ensemble proxy on a worker. Each unit model's per-token NLLs on each eval set are
//! taken from the store where a job computed them before, and otherwise computed (one
//! forward pass of the unit over the set) and stored; every mixture of those units is then
//! arithmetic on them ([`crate::engine::ensemble`]), with no forward pass.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use uuid::Uuid;

use super::JobError;
use super::context::Context;
use super::merger::Merger;
use crate::engine::ensemble::{TokenNll, ensemble, mean_of_units};
use crate::engine::eval::{EvalConfig, Evaluation};
use crate::proxy::Proxy;
use crate::registry::bases::Base;
use crate::registry::datasets::Dataset;
use crate::registry::logprobs::{self, Logprobs};
use crate::registry::models::UnitModel;
use crate::registry::scores::eval_config_sha256;
use crate::store::keys;

/// Per-token NLLs of some unit models on some eval sets, and how many of them this job
/// computed (forward passes) and found stored.
pub(super) struct UnitNll {
    by: HashMap<(Uuid, Uuid), TokenNll>,
    pub computed: usize,
    pub reused: usize,
}

impl UnitNll {
    /// Those of `units` on `eval_sets`. Missing ones are computed on `merger` when the caller
    /// has one open on these eval sets (the units it holds stay resident), or on a merger
    /// opened here when something is missing.
    pub async fn gather(
        cx: &Context,
        base: &Base,
        eval_sets: &[Dataset],
        eval: &EvalConfig,
        units: &[&UnitModel],
        merger: Option<&mut Merger>,
    ) -> Result<UnitNll, JobError> {
        let sha = eval_config_sha256(eval);
        let ids: Vec<Uuid> = units.iter().map(|u| u.id).collect();
        let sets: Vec<Uuid> = eval_sets.iter().map(|s| s.id).collect();
        let mut found = UnitNll {
            by: HashMap::new(),
            computed: 0,
            reused: 0,
        };
        for row in logprobs::find(&cx.pool, &ids, &sets, &sha).await? {
            let bytes = cx.store.get_verified(&row.object, &row.sha256).await?;
            let nll = TokenNll::decode(&bytes)
                .map_err(|e| JobError::Fatal(format!("{}: {e}", row.object)))?;
            found.by.insert((row.model_id, row.eval_set_id), nll);
            found.reused += 1;
        }
        // Missing sets per unit, in a fixed order.
        let mut missing: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
        for unit in units {
            for set in &sets {
                if !found.by.contains_key(&(unit.id, *set)) {
                    missing.entry(unit.id).or_default().push(*set);
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let mut own = None;
        let merger = match merger {
            Some(merger) => merger,
            None => own.insert(Merger::open(cx, base, eval_sets, eval).await?),
        };
        let outcome = async {
            for (model, sets) in &missing {
                if cx.is_cancelled() {
                    return Err(JobError::Retryable("cancelled".into()));
                }
                let unit = units.iter().find(|u| u.id == *model).expect("one of units");
                let was_resident = merger.is_resident(unit.id);
                if !was_resident {
                    cx.check_fits(merger.resident_count() + 1, merger.unit_bytes)?;
                    merger.load(cx, unit).await?;
                }
                let computed = merger.token_nll(unit.id, sets).await?;
                if !was_resident {
                    merger.forget(unit.id);
                }
                for (set, nll) in sets.iter().zip(computed) {
                    store(cx, unit.id, *set, &sha, &nll).await?;
                    found.by.insert((unit.id, *set), nll);
                    found.computed += 1;
                }
            }
            Ok(())
        }
        .await;
        if let Some(own) = own {
            own.finish(cx).await;
        }
        outcome.map(|()| found)
    }

    /// One unit model's NLLs on one eval set.
    pub fn unit(&self, model: Uuid, eval_set: Uuid) -> Result<&TokenNll, JobError> {
        self.by.get(&(model, eval_set)).ok_or_else(|| {
            JobError::Fatal(format!(
                "no per-token NLLs of unit model {model} on eval set {eval_set}"
            ))
        })
    }

    /// `proxy` (the ensemble or the mean of units) of `models` with `weights` on
    /// `eval_set`.
    pub fn score(
        &self,
        proxy: Proxy,
        models: &[Uuid],
        weights: &[f64],
        eval_set: Uuid,
    ) -> Result<Evaluation, JobError> {
        let units: Vec<&TokenNll> = models
            .iter()
            .map(|m| self.unit(*m, eval_set))
            .collect::<Result<_, _>>()?;
        match proxy {
            Proxy::Ensemble => ensemble(&units, weights),
            Proxy::Units => mean_of_units(&units, weights),
            other => {
                return Err(JobError::Fatal(format!(
                    "the {} proxy needs a merge, not stored per-token NLLs",
                    other.key()
                )));
            }
        }
        .map_err(|e| JobError::Fatal(e.to_string()))
    }
}

/// Writes one unit's NLLs (named by their sha256) and records them; a row recorded before
/// is replaced, so the row always names an object that exists.
async fn store(
    cx: &Context,
    model: Uuid,
    eval_set: Uuid,
    sha: &str,
    nll: &TokenNll,
) -> Result<(), JobError> {
    let data = Bytes::from(nll.encode());
    let stored = cx
        .store
        .put_stream(
            futures::stream::once(async move { Ok::<_, std::io::Error>(data) }),
            |digest| keys::logprobs(&model, &eval_set, sha, digest),
        )
        .await?;
    logprobs::upsert(
        &cx.pool,
        &Logprobs {
            model_id: model,
            eval_set_id: eval_set,
            eval_config_sha256: sha.to_string(),
            object: stored.key,
            sha256: stored.sha256,
            tokens: nll.nll.len() as i64,
        },
    )
    .await?;
    Ok(())
}
