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
use crate::search::{Bounds, Descent, Observed, Plan, Predictor, answer};

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
    let combine = Combine::of(proxy);
    let with_base = matches!(combine, Combine::TaskVectors(_));

    let mut merger = Merger::open(cx, &base, &eval_sets, &eval).await?;
    let outcome = async {
        cx.check_fits(
            units.len() + usize::from(with_base),
            merger.unit_bytes * combine.units_per_unit(),
        )?;
        for unit in units.values() {
            merger.load(cx, unit).await?;
            if combine == Combine::Fisher {
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
            total: search.budget as usize + 1,
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
    merger.close().await;
    cx.clear_scratch().await;
    let mut result = match outcome? {
        Searched::Done(result) => result,
        Searched::Stopped(done) => return Ok(done),
    };
    result["search"] = json!(search.id);
    result["worker"] = json!(cx.worker);
    result["evaluations"] = json!(search.budget + 1);
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
    /// The unit models' per-token NLLs, where the proxy reads them instead of merging.
    nll: Option<UnitNll>,
    /// The explicit-weight scores of the search's base, recipe and evaluation settings.
    scope: ScoreKey,
    /// Evaluations in all: the budget and the proposal.
    total: usize,
}

impl Run<'_> {
    async fn sample(&self, plan: &Plan) -> Result<Searched, JobError> {
        let mut observed: Vec<Observed> = Vec::with_capacity(plan.budget);
        let mut computed = 0;
        for round in 0..plan.rounds() {
            for weights in plan.round(round, &observed) {
                if self.cx.is_cancelled() {
                    return Ok(Searched::Stopped(Done::Cancelled));
                }
                let point = self.point(observed.len(), round, "sample", &weights, None);
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
        let radius = plan.radius(&observed);
        let weights = plan.propose(&predictor, &observed);
        let position = observed.len();
        let point = self.point(position, plan.rounds(), "proposal", &weights, None);
        let Some((objective, fresh)) = self.evaluate(point).await? else {
            return Ok(Searched::Stopped(Done::LeaseLost));
        };
        observed.push((weights.clone(), objective));
        // The best point evaluated, the proposal among them: never worse than what was seen.
        let at = answer(&observed);
        Ok(Searched::Done(json!({
            "computed": computed + fresh as usize,
            "proposal": { "position": position, "weights": weights, "objective": objective, "predicted": predictor.predict(&weights) },
            "answer": { "position": at, "weights": observed[at].0, "objective": observed[at].1 },
            "fit": {
                "cv_spearman": predictor.cv_spearman, "lambda": predictor.lambda, "n": predictor.n,
                "trusted": predictor.trusted(), "trust_radius": radius,
            },
        })))
    }

    /// Steps 0 to budget: at each iterate the objective and its α-gradient on the tune
    /// halves, the iterate scored on the report halves, then the step to the next. The
    /// proposal is the iterate with the lowest tune objective, so the report halves never
    /// choose anything.
    async fn descend(&self, descent: &Descent) -> Result<Searched, JobError> {
        let search = self.search;
        let budget = search.budget as usize;
        let units: Vec<Uuid> = search
            .partition_ids
            .iter()
            .map(|p| self.units[p].id)
            .collect();
        let objective: Vec<(Uuid, f64)> = search
            .tune_set_ids
            .iter()
            .copied()
            .zip(search.objective.iter().copied())
            .filter(|(_, w)| *w > 0.0)
            .collect();
        // Each iterate and its tune objective, by position: those stored by an earlier
        // attempt, then this one's.
        let mut path: Vec<(Vec<f64>, f64)> = searches::points(&self.cx.pool, search.id)
            .await?
            .into_iter()
            .map(|p| {
                let tuned = p.tune_objective.ok_or_else(|| {
                    JobError::Fatal(format!("step {} has no tune objective", p.position))
                })?;
                Ok((p.weights, tuned))
            })
            .collect::<Result<_, JobError>>()?;
        // An earlier attempt's last step is taken again (its gradient was not kept).
        let mut t = path.len().saturating_sub(1);
        let mut weights = match path.last() {
            Some((w, _)) => w.clone(),
            None => descent.start(&search.prior),
        };
        let (mut computed, mut passes) = (0, 0);
        loop {
            if self.cx.is_cancelled() {
                return Ok(Searched::Stopped(Done::Cancelled));
            }
            let stored = t < path.len();
            if stored && t == budget {
                break;
            }
            let descended = self.merger.gradient(&units, &weights, &objective).await?;
            passes += 1;
            if !stored {
                let point = self.point(t, t, "step", &weights, Some(descended.objective));
                match self.evaluate(point).await? {
                    Some((_, fresh)) => computed += fresh as usize,
                    None => return Ok(Searched::Stopped(Done::LeaseLost)),
                }
                path.push((weights.clone(), descended.objective));
            }
            if t == budget {
                break;
            }
            weights = descent.step(t, &weights, &descended.gradient);
            t += 1;
        }
        let (position, (weights, tuned)) = path
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.1.total_cmp(&b.1.1))
            .expect("at least the first step");
        let mixture = Mixture::new(&search.partition_ids, Some(weights), Weighting::Explicit)
            .map_err(|e| JobError::Fatal(format!("search step {position}: {e}")))?;
        let perplexity = self.stored_perplexities(&mixture.key()).await?;
        let objective = objective_of(&search.objective, &search.eval_set_ids, &perplexity);
        let proposal = json!({ "position": position, "weights": weights, "objective": objective, "tune_objective": tuned });
        Ok(Searched::Done(json!({
            "computed": computed,
            "gradient_passes": passes,
            "answer": proposal,
            "proposal": proposal,
            "fit": null,
        })))
    }

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

    /// The perplexities stored for an explicit-weight mixture, by eval set.
    async fn stored_perplexities(&self, mixture_key: &str) -> Result<HashMap<Uuid, f64>, JobError> {
        let mut perplexity = HashMap::new();
        for set in &self.search.eval_set_ids {
            let key = ScoreKey {
                mixture_key: mixture_key.to_string(),
                eval_set_id: *set,
                ..self.scope.clone()
            };
            if let Some(score) = scores::get(&self.cx.pool, &key).await? {
                perplexity.insert(*set, ppl(&score.result)?);
            }
        }
        Ok(perplexity)
    }

    /// The objective at a point, and whether this attempt computed it (`false`: its scores
    /// were stored). Missing scores are merged, evaluated and stored with the point and the
    /// job's progress; `None` when the lease was lost (nothing is stored then).
    async fn evaluate(&self, mut point: Point) -> Result<Option<(f64, bool)>, JobError> {
        let ids = &self.search.partition_ids;
        let mixture = Mixture::new(ids, Some(&point.weights), Weighting::Explicit)
            .map_err(|e| JobError::Fatal(format!("search point {}: {e}", point.position)))?;
        point.mixture_key = mixture.key();
        let mut perplexity = self.stored_perplexities(&point.mixture_key).await?;
        let missing: Vec<Uuid> = self
            .search
            .eval_set_ids
            .iter()
            .filter(|s| !perplexity.contains_key(s))
            .copied()
            .collect();
        let members = serde_json::to_value(&mixture.members).expect("mixtures serialise");
        let mut tx = self.cx.pool.begin().await?;
        if !missing.is_empty() {
            // Merged in the canonical order, as a score job merges the same mixture.
            let units: Vec<Uuid> = mixture
                .members
                .iter()
                .map(|m| self.units[&m.partition].id)
                .collect();
            let weights: Vec<f64> = mixture.members.iter().map(|m| m.weight).collect();
            let (results, note) = match &self.nll {
                Some(nll) => {
                    let results = missing
                        .iter()
                        .map(|set| nll.score(self.proxy, &units, &weights, *set))
                        .collect::<Result<Vec<_>, _>>()?;
                    (results, None)
                }
                None => {
                    let combine = Combine::of(self.proxy);
                    let scored = self.merger.score(&units, &weights, combine, &missing);
                    let scored = scored.await?;
                    (scored.results, scored.note)
                }
            };
            for (set, result) in missing.iter().zip(&results) {
                let key = ScoreKey {
                    mixture_key: point.mixture_key.clone(),
                    eval_set_id: *set,
                    ..self.scope.clone()
                };
                let mut result = serde_json::to_value(result).expect("results serialise");
                if let Some(note) = &note {
                    result["note"] = json!(note);
                }
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
        if !self.cx.commit_progress(tx, fraction, &message).await? {
            return Ok(None);
        }
        let objective = objective_of(
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
pub(crate) fn objective_of(weights: &[f64], sets: &[Uuid], perplexity: &HashMap<Uuid, f64>) -> f64 {
    weights
        .iter()
        .zip(sets)
        .map(|(w, set)| w * perplexity[set].ln())
        .sum()
}
