//! `search` jobs: a ratio search run on one worker. The search's unit models stay resident
//! on the device; each point of each round (see [`crate::search::Plan`]) is merged with its
//! weights in memory and evaluated on the search's eval sets, and its scores are stored as
//! ordinary explicit-weight scores, with the point and the job's progress, in one transaction
//! fenced by the attempt. A worker that takes the job over recomputes the same candidates and
//! finds their scores stored, so nothing is evaluated twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde_json::{Value, json};
use uuid::Uuid;

use super::kind::SearchJob;
use super::merger::Merger;
use super::{Done, JobError};
use crate::engine::eval::EvalConfig;
use crate::mixture::{Mixture, Weighting};
use crate::registry::bases;
use crate::registry::datasets::{self, Kind};
use crate::registry::jobs::Lease;
use crate::registry::models::UnitModel;
use crate::registry::scores::{self, ScoreKey};
use crate::registry::searches::{self, Point, Search};
use crate::scoring::MERGE_METHOD;
use crate::search::{Bounds, Observed, Plan, Predictor};
use crate::worker::Worker;

pub(crate) async fn run(
    worker: &Worker,
    lease: &Lease,
    job: SearchJob,
    cancel: Arc<AtomicBool>,
) -> Result<Done, JobError> {
    let started = Instant::now();
    let pool = &worker.pool;
    let fatal = |what: String| JobError::Fatal(format!("search {}: {what}", job.search));
    let search = searches::get(pool, job.search)
        .await?
        .ok_or_else(|| fatal("not found".into()))?;
    let base = bases::find(pool, &search.base_id.to_string())
        .await?
        .ok_or_else(|| fatal(format!("base {} not found", search.base_id)))?;
    let mut eval_sets = Vec::with_capacity(search.eval_set_ids.len());
    for id in &search.eval_set_ids {
        let set = datasets::find(pool, Kind::EvalSet, &id.to_string())
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
    let plan = Plan {
        budget: search.budget as usize,
        prior: search.prior.clone(),
        bounds: Bounds::new(search.bounds_min.clone(), search.bounds_max.clone())
            .map_err(|e| fatal(e.to_string()))?,
        seed: search.seed as u64,
    };

    let mut merger = Merger::open(worker, lease, &base, &eval_sets, &eval).await?;
    let outcome = async {
        worker.check_fits(units.len(), merger.unit_bytes)?;
        for unit in units.values() {
            merger.load(worker, unit).await?;
        }
        let run = Run {
            worker,
            lease,
            search: &search,
            units: &units,
            merger: &merger,
            cancel: &cancel,
            scope: ScoreKey {
                base_id: search.base_id,
                recipe_id: search.recipe_id,
                mixture_key: String::new(),
                weighting: "explicit".into(),
                merge_method: MERGE_METHOD.into(),
                eval_set_id: Uuid::nil(),
                eval_config_sha256: search.eval_config_sha256.clone(),
            },
            total: plan.budget + 1,
        };
        run.search(&plan).await
    }
    .await;
    merger.close().await;
    crate::worker::remove_dir(&worker.job_dir(lease)).await;
    let (observed, proposal, predictor, computed) = match outcome? {
        Searched::Done {
            observed,
            proposal,
            predictor,
            computed,
        } => (observed, proposal, predictor, computed),
        Searched::Stopped(done) => return Ok(done),
    };
    let result = json!({
        "search": search.id,
        "worker": worker.owner,
        "evaluations": observed.len() + 1,
        "computed": computed,
        "proposal": { "weights": proposal.0, "objective": proposal.1, "predicted": predictor.predict(&proposal.0) },
        "fit": { "cv_spearman": predictor.cv_spearman, "lambda": predictor.lambda, "n": predictor.n },
        "seconds": started.elapsed().as_secs_f64(),
    });
    super::succeed(pool.begin().await?, lease, &result).await
}

enum Searched {
    Done {
        observed: Vec<Observed>,
        proposal: Observed,
        predictor: Predictor,
        /// Points merged and evaluated by this attempt (the others were stored).
        computed: usize,
    },
    /// Cancelled, or the lease was lost: what was stored stays.
    Stopped(Done),
}

/// A search's fixed context while it runs.
struct Run<'a> {
    worker: &'a Worker,
    lease: &'a Lease,
    search: &'a Search,
    /// Ready unit models by partition.
    units: &'a HashMap<Uuid, UnitModel>,
    merger: &'a Merger,
    cancel: &'a AtomicBool,
    /// The explicit-weight scores of the search's base, recipe and evaluation settings.
    scope: ScoreKey,
    /// Evaluations in all: the budget and the proposal.
    total: usize,
}

impl Run<'_> {
    async fn search(&self, plan: &Plan) -> Result<Searched, JobError> {
        let mut observed: Vec<Observed> = Vec::with_capacity(plan.budget);
        let mut computed = 0;
        for round in 0..plan.rounds() {
            for weights in plan.round(round, &observed) {
                if self.cancel.load(Ordering::SeqCst) {
                    return Ok(Searched::Stopped(Done::Cancelled));
                }
                let point = self.point(observed.len(), round, "sample", &weights);
                match self.evaluate(point).await? {
                    Some((objective, fresh)) => {
                        observed.push((weights, objective));
                        computed += fresh as usize;
                    }
                    None => return Ok(Searched::Stopped(Done::LeaseLost)),
                }
            }
        }
        let predictor = Predictor::fit(&observed);
        let weights = plan.propose(&predictor, &observed);
        let point = self.point(observed.len(), plan.rounds(), "proposal", &weights);
        let Some((objective, fresh)) = self.evaluate(point).await? else {
            return Ok(Searched::Stopped(Done::LeaseLost));
        };
        Ok(Searched::Done {
            observed,
            proposal: (weights, objective),
            predictor,
            computed: computed + fresh as usize,
        })
    }

    fn point(&self, position: usize, round: usize, role: &str, weights: &[f64]) -> Point {
        Point {
            position: position as i32,
            round: round as i32,
            role: role.into(),
            mixture_key: String::new(),
            weights: weights.to_vec(),
        }
    }

    /// The objective at a point, and whether this attempt computed it (`false`: its scores
    /// were stored). Missing scores are merged, evaluated and stored with the point and the
    /// job's progress; `None` when the lease was lost (nothing is stored then).
    async fn evaluate(&self, mut point: Point) -> Result<Option<(f64, bool)>, JobError> {
        let ids = &self.search.partition_ids;
        let mixture = Mixture::new(ids, Some(&point.weights), Weighting::Explicit)
            .map_err(|e| JobError::Fatal(format!("search point {}: {e}", point.position)))?;
        point.mixture_key = mixture.key();
        let mut perplexity: HashMap<Uuid, f64> = HashMap::new();
        for set in &self.search.eval_set_ids {
            let key = ScoreKey {
                mixture_key: point.mixture_key.clone(),
                eval_set_id: *set,
                ..self.scope.clone()
            };
            if let Some(score) = scores::get(&self.worker.pool, &key).await? {
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
        let members = serde_json::to_value(&mixture.members).expect("mixtures serialise");
        let mut tx = self.worker.pool.begin().await?;
        if !missing.is_empty() {
            // Merged in the canonical order, as a score job merges the same mixture.
            let units: Vec<Uuid> = mixture
                .members
                .iter()
                .map(|m| self.units[&m.partition].id)
                .collect();
            let weights: Vec<f64> = mixture.members.iter().map(|m| m.weight).collect();
            let scored = self.merger.score(&units, &weights, &missing).await?;
            for (set, result) in missing.iter().zip(&scored.results) {
                let key = ScoreKey {
                    mixture_key: point.mixture_key.clone(),
                    eval_set_id: *set,
                    ..self.scope.clone()
                };
                let result = serde_json::to_value(result).expect("results serialise");
                let stored =
                    scores::insert(&mut tx, &key, &members, &self.search.eval_config, &result)
                        .await?;
                perplexity.insert(*set, ppl(&stored.result)?);
            }
        }
        searches::add_point(&mut tx, self.search.id, &point).await?;
        let done = point.position as usize + 1;
        let fraction = done as f32 / self.total as f32;
        let message = format!("point {done}/{}", self.total);
        if !super::commit_progress(tx, self.lease, fraction, &message, self.cancel).await? {
            return Ok(None);
        }
        let objective = objective(
            &self.search.objective,
            &self.search.eval_set_ids,
            &perplexity,
        );
        Ok(Some((objective, !missing.is_empty())))
    }
}

fn ppl(result: &Value) -> Result<f64, JobError> {
    result["perplexity"]
        .as_f64()
        .ok_or_else(|| JobError::Fatal(format!("a stored score without a perplexity: {result}")))
}

/// The search's objective at a point: the weighted sum of the log perplexities on its eval
/// sets (lower is better).
pub(crate) fn objective(weights: &[f64], sets: &[Uuid], perplexity: &HashMap<Uuid, f64>) -> f64 {
    weights
        .iter()
        .zip(sets)
        .map(|(w, set)| w * perplexity[set].ln())
        .sum()
}
