//! `search` jobs: a ratio search run on one worker. The search's unit models stay resident
//! on the device; each point is merged with its weights in memory and evaluated on the
//! search's eval sets, and its scores are stored as ordinary explicit-weight scores, with the
//! point and the job's progress, in one transaction fenced by the attempt.
//!
//! A `sample` search scores the rounds of a [`crate::search::Plan`]; a worker that takes the
//! job over recomputes the same candidates and finds their scores stored, so nothing is
//! evaluated twice. A `gradient` search takes [`crate::search::Descent`] steps along the
//! merged model's α-gradient on its tune halves, scoring each iterate on the report halves;
//! a worker that takes it over continues from the last stored step.
//!
//! Every search then evaluates the natural and the uniform mixture as points of their own
//! (roles `natural` and `uniform`), and answers with the best point it evaluated within its
//! bounds — where it has a check proxy, the best of its final candidates scored again by
//! that proxy (see [`sample`]).

mod descend;
mod sample;

use std::collections::HashMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::context::Context;
use super::ensemble::UnitNll;
use super::kind::{Kind, Outcome};
use super::merger::{Combine, Merger};
use super::{Done, JobError};
use crate::engine::eval::EvalConfig;
use crate::mixture::{Mixture, Weighting};
use crate::proxy::Proxy;
use crate::registry::bases;
use crate::registry::datasets;
use crate::registry::models::UnitModel;
use crate::registry::scores::{self, ScoreKey};
use crate::registry::searches::{self, Point};
use crate::search::{Bounds, Descent, Plan};

/// `search`: the ratio search to run (its settings are in its row).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchJob {
    pub search: Uuid,
}

pub struct Search;

impl Kind for Search {
    const NAME: &'static str = "search";
    const ABOUT: &'static str =
        "runs a ratio search: mixture weights scored round by round, unit models kept resident";
    const MERGES: bool = true;
    type Payload = SearchJob;

    fn dedup_key(job: &SearchJob) -> String {
        format!("search:{}", job.search)
    }

    async fn run(cx: &Context, job: SearchJob) -> Outcome {
        run(cx, job).await
    }
}

/// Stores a search with the job that runs it, in one transaction ([`searches::create`]).
pub async fn queue(
    pool: &sqlx::PgPool,
    search: &searches::Search,
) -> Result<crate::registry::jobs::Job, sqlx::Error> {
    let job = Search::job(&SearchJob { search: search.id });
    let mut tx = pool.begin().await?;
    let job = searches::create(&mut tx, search, &job).await?;
    tx.commit().await?;
    Ok(job)
}

async fn run(cx: &Context, job: SearchJob) -> Outcome {
    let started = Instant::now();
    let pool = &cx.pool;
    let fatal = |what: String| JobError::Fatal(format!("search {}: {what}", job.search));
    let search = searches::get(pool, job.search)
        .await?
        .ok_or_else(|| fatal("not found".into()))?;
    let base = bases::find(pool, &search.base_id.to_string())
        .await?
        .ok_or_else(|| fatal(format!("base {} not found", search.base_id)))?;
    let mut eval_sets = Vec::with_capacity(search.eval_set_ids.len());
    for id in search.eval_set_ids.iter().chain(&search.tune_set_ids) {
        let set = datasets::find(pool, datasets::Kind::EvalSet, &id.to_string())
            .await?
            .ok_or_else(|| fatal(format!("eval set {id} not found")))?;
        eval_sets.push(set);
    }
    let eval: EvalConfig = serde_json::from_value(search.eval_config.clone())
        .map_err(|e| fatal(format!("evaluation settings: {e}")))?;
    let units: HashMap<Uuid, UnitModel> = super::ready_units(
        pool,
        search.base_id,
        search.recipe_id,
        &search.partition_ids,
    )
    .await?
    .into_iter()
    .map(|u| (u.partition_id, u))
    .collect();
    let bounds = Bounds::new(search.bounds_min.clone(), search.bounds_max.clone())
        .map_err(|e| fatal(e.to_string()))?;

    let proxy = Proxy::from_key(&search.proxy)
        .ok_or_else(|| fatal(format!("unknown proxy {:?}", search.proxy)))?;
    let check = match &search.check_proxy {
        Some(key) => {
            Some(Proxy::from_key(key).ok_or_else(|| fatal(format!("unknown proxy {key:?}")))?)
        }
        None => None,
    };
    // What the merges need: the base for task vectors, the Fisher estimates for `fisher`.
    let combines: Vec<Combine> = std::iter::once(proxy)
        .chain(check)
        .map(Combine::of)
        .collect();
    let with_base = combines
        .iter()
        .any(|c| matches!(c, Combine::TaskVectors(_)));
    let with_fisher = combines.contains(&Combine::Fisher);

    let mut merger = Merger::open(cx, &base, &eval_sets, &eval).await?;
    let outcome = async {
        cx.check_fits(
            units.len() + usize::from(with_base),
            merger.unit_bytes
                * combines
                    .iter()
                    .map(|c| c.units_per_unit())
                    .max()
                    .unwrap_or(1),
        )?;
        for unit in units.values() {
            merger.load(cx, unit).await?;
            if with_fisher {
                merger.load_fisher(cx, unit).await?;
            }
        }
        if with_base {
            merger.load_base(cx, &base).await?;
        }
        // A proxy of stored per-token NLLs: each unit's, on the sets the points are scored
        // on, computed here where missing; every point is then arithmetic on them.
        let nll = if proxy.reads_token_nll() {
            let scored: Vec<_> = eval_sets
                .iter()
                .filter(|s| search.eval_set_ids.contains(&s.id))
                .cloned()
                .collect();
            let members: Vec<&UnitModel> = units.values().collect();
            let nll =
                UnitNll::gather(cx, &base, &scored, &eval, &members, Some(&mut merger)).await?;
            Some(nll)
        } else {
            None
        };
        let run = Run {
            cx,
            search: &search,
            units: &units,
            merger: &merger,
            proxy,
            check,
            bounds: bounds.clone(),
            nll,
            scope: ScoreKey {
                base_id: search.base_id,
                recipe_id: search.recipe_id,
                mixture_key: String::new(),
                weighting: "explicit".into(),
                merge_method: proxy.key(),
                eval_set_id: Uuid::nil(),
                eval_config_sha256: search.eval_config_sha256.clone(),
            },
            total: search.budget as usize + 1 + references(&search).len(),
        };
        match search.method.as_str() {
            "gradient" => run.descend(&Descent { bounds }).await,
            _ => {
                let plan = Plan {
                    budget: search.budget as usize,
                    prior: search.prior.clone(),
                    bounds,
                    seed: search.seed as u64,
                };
                run.sample(&plan).await
            }
        }
    }
    .await;
    merger.finish(cx).await;
    cx.clear_scratch().await;
    let mut result = match outcome? {
        Searched::Done(result) => result,
        Searched::Stopped(done) => return Ok(done),
    };
    result["search"] = json!(search.id);
    result["worker"] = json!(cx.worker);
    result["evaluations"] = json!(search.budget as usize + 1 + references(&search).len());
    result["seconds"] = json!(started.elapsed().as_secs_f64());
    cx.succeed(pool.begin().await?, &result).await
}

enum Searched {
    /// The method's part of the job's result: `computed` (points merged and evaluated by
    /// this attempt; the others were stored), `proposal` and `fit`.
    Done(Value),
    /// Cancelled, or the lease was lost: what was stored stays.
    Stopped(Done),
}

/// A search's fixed context while it runs.
struct Run<'a> {
    cx: &'a Context,
    search: &'a searches::Search,
    /// Ready unit models by partition.
    units: &'a HashMap<Uuid, UnitModel>,
    merger: &'a Merger,
    proxy: Proxy,
    /// The proxy the final candidates are scored again with, if any.
    check: Option<Proxy>,
    bounds: Bounds,
    /// The unit models' per-token NLLs, where the proxy reads them instead of merging.
    nll: Option<UnitNll>,
    /// The explicit-weight scores of the search's base, recipe and evaluation settings.
    scope: ScoreKey,
    /// Evaluations in all: the budget, the proposal and the reference mixtures.
    total: usize,
}

impl Run<'_> {
    fn point(
        &self,
        position: usize,
        round: usize,
        role: &str,
        weights: &[f64],
        tune_objective: Option<f64>,
    ) -> Point {
        Point {
            position: position as i32,
            round: round as i32,
            role: role.into(),
            mixture_key: String::new(),
            weights: weights.to_vec(),
            tune_objective,
        }
    }

    /// The perplexities of `mixture` by `proxy` on the search's eval sets — those stored read,
    /// the missing computed and inserted in `tx` — and whether any was computed.
    async fn perplexities(
        &self,
        mixture: &Mixture,
        proxy: Proxy,
        tx: &mut sqlx::PgConnection,
    ) -> Result<(HashMap<Uuid, f64>, bool), JobError> {
        let scope = ScoreKey {
            mixture_key: mixture.key(),
            merge_method: proxy.key(),
            ..self.scope.clone()
        };
        let mut perplexity = HashMap::new();
        for set in &self.search.eval_set_ids {
            let key = ScoreKey {
                eval_set_id: *set,
                ..scope.clone()
            };
            if let Some(score) = scores::get(&mut *tx, &key).await? {
                perplexity.insert(*set, ppl(&score.result)?);
            }
        }
        let missing: Vec<Uuid> = self
            .search
            .eval_set_ids
            .iter()
            .filter(|s| !perplexity.contains_key(s))
            .copied()
            .collect();
        if missing.is_empty() {
            return Ok((perplexity, false));
        }
        // Merged in the canonical order, as a score job merges the same mixture.
        let units: Vec<Uuid> = mixture
            .members
            .iter()
            .map(|m| self.units[&m.partition].id)
            .collect();
        let weights: Vec<f64> = mixture.members.iter().map(|m| m.weight).collect();
        let (results, note) = if proxy.reads_token_nll() {
            let nll = self.nll.as_ref().ok_or_else(|| {
                JobError::Fatal(format!("proxy {} without stored NLLs", proxy.key()))
            })?;
            let results = missing
                .iter()
                .map(|set| nll.score(proxy, &units, &weights, *set))
                .collect::<Result<Vec<_>, _>>()?;
            (results, None)
        } else {
            let scored = self
                .merger
                .score(&units, &weights, Combine::of(proxy), &missing);
            let scored = scored.await?;
            (scored.results, scored.note)
        };
        let members = serde_json::to_value(&mixture.members).expect("mixtures serialise");
        for (set, result) in missing.iter().zip(&results) {
            let key = ScoreKey {
                eval_set_id: *set,
                ..scope.clone()
            };
            let mut result = serde_json::to_value(result).expect("results serialise");
            if let Some(note) = &note {
                result["note"] = json!(note);
            }
            let stored =
                scores::insert(&mut *tx, &key, &members, &self.search.eval_config, &result).await?;
            perplexity.insert(*set, ppl(&stored.result)?);
        }
        Ok((perplexity, true))
    }

    fn mixture(&self, position: usize, weights: &[f64]) -> Result<Mixture, JobError> {
        Mixture::new(
            &self.search.partition_ids,
            Some(weights),
            Weighting::Explicit,
        )
        .map_err(|e| JobError::Fatal(format!("search point {position}: {e}")))
    }

    /// The objective at a point, and whether this attempt computed it (`false`: its scores
    /// were stored). Missing scores are merged, evaluated and stored with the point and the
    /// job's progress; `None` when the lease was lost (nothing is stored then).
    async fn evaluate(&self, mut point: Point) -> Result<Option<(f64, bool)>, JobError> {
        let mixture = self.mixture(point.position as usize, &point.weights)?;
        point.mixture_key = mixture.key();
        let mut tx = self.cx.pool.begin().await?;
        let (perplexity, fresh) = self.perplexities(&mixture, self.proxy, &mut tx).await?;
        searches::add_point(&mut tx, self.search.id, &point).await?;
        let done = point.position as usize + 1;
        let fraction = done as f32 / self.total as f32;
        let message = format!("point {done}/{}", self.total);
        if !self.cx.commit_progress(tx, fraction, &message).await? {
            return Ok(None);
        }
        let objective = objective_of(
            &self.search.objective,
            &self.search.eval_set_ids,
            &perplexity,
        );
        Ok(Some((objective, fresh)))
    }

    /// Evaluates the reference mixtures (see [`references`]) from `position` on, each with
    /// its objective on the tune halves where `tune` names them (a gradient search's: its
    /// units in partition order, and the tune halves' weights); their objectives, or `None`
    /// when the lease was lost.
    async fn references(
        &self,
        position: usize,
        round: usize,
        tune: Option<Tune<'_>>,
    ) -> Result<Option<Vec<Reference>>, JobError> {
        let mut out = Vec::new();
        for (i, (role, weights)) in references(self.search).into_iter().enumerate() {
            let tune_objective = match tune {
                Some(Tune { units, objective }) => Some(
                    self.merger
                        .gradient(units, &weights, objective)
                        .await?
                        .objective,
                ),
                None => None,
            };
            let point = self.point(position + i, round, role, &weights, tune_objective);
            let Some((objective, fresh)) = self.evaluate(point).await? else {
                return Ok(None);
            };
            out.push(Reference {
                role,
                within: self.bounds.contains(&weights, 1e-9),
                weights,
                objective,
                tune_objective,
                fresh,
            });
        }
        Ok(Some(out))
    }
}

/// A gradient search's tune halves: its unit models in partition order, and each tune
/// half's weight in the objective.
struct Tune<'a> {
    units: &'a [Uuid],
    objective: &'a [(Uuid, f64)],
}

/// A reference mixture as evaluated.
struct Reference {
    role: &'static str,
    weights: Vec<f64>,
    objective: f64,
    tune_objective: Option<f64>,
    /// Whether it lies within the search's bounds (only then can it be the answer).
    within: bool,
    fresh: bool,
}

/// The reference mixtures every search evaluates after its own points: the natural one
/// (searches made before it was kept have none) and the uniform one, as they are — outside
/// the bounds too, where the bounds exclude them.
fn references(search: &searches::Search) -> Vec<(&'static str, Vec<f64>)> {
    let k = search.partition_ids.len();
    let mut out = Vec::with_capacity(2);
    if search.natural.len() == k {
        out.push(("natural", search.natural.clone()));
    }
    out.push(("uniform", vec![1.0 / k as f64; k]));
    out
}

fn ppl(result: &Value) -> Result<f64, JobError> {
    result["perplexity"]
        .as_f64()
        .ok_or_else(|| JobError::Fatal(format!("a stored score without a perplexity: {result}")))
}

/// The search's objective at a point: the weighted sum of the log perplexities on its eval
/// sets (lower is better).
pub(crate) fn objective_of(weights: &[f64], sets: &[Uuid], perplexity: &HashMap<Uuid, f64>) -> f64 {
    weights
        .iter()
        .zip(sets)
        .map(|(w, set)| w * perplexity[set].ln())
        .sum()
}
