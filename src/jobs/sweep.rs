//! `sweep` jobs: one shard of a sweep. For the `average` proxy the shard's unit models stay
//! resident on the device while each mixture is merged in memory and evaluated on every eval
//! set of the sweep that lacks its score; for the `ensemble` proxy each unit model's
//! per-token NLLs are fetched (or computed once) and every mixture is arithmetic on them. Each mixture's scores are stored (with the job's progress, fenced by its
//! attempt) as soon as they are computed, so a worker that takes over the shard of a dead one
//! skips what is stored: nothing is scored twice. Unit models that do not fit the worker's
//! memory budget together are taken in groups that do.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::context::{Context, blocking};
use super::ensemble::UnitNll;
use super::kind::{Kind, Outcome};
use super::merger::{Combine, Merger};
use super::{Done, JobError};
use crate::engine::eval::{EvalConfig, Evaluation};
use crate::mixture::Member;
use crate::proxy::Proxy;
use crate::registry::datasets;
use crate::registry::models::UnitModel;
use crate::registry::scores::{self, ScoreKey};
use crate::registry::sweeps;
use crate::registry::{bases, models};

pub struct Sweep;

/// `sweep`: a shard of a sweep, as the positions of its mixtures in the sweep's list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepJob {
    pub sweep: Uuid,
    pub items: Vec<i32>,
}

impl Kind for Sweep {
    const NAME: &'static str = "sweep";
    const ABOUT: &'static str = "scores one shard of a sweep, its unit models kept resident";
    const MERGES: bool = true;
    type Payload = SweepJob;

    /// A sweep shard has one run.
    fn dedup_key(job: &SweepJob) -> String {
        let first = job.items.first().copied().unwrap_or(-1);
        format!("sweep:{}:{first}", job.sweep)
    }

    /// A sweep's shards share its unit models.
    fn affinity(job: &SweepJob) -> Option<String> {
        Some(format!("sweep:{}", job.sweep))
    }

    async fn run(cx: &Context, job: SweepJob) -> Outcome {
        run(cx, job).await
    }
}

/// The job of one shard: the positions `items` of sweep `sweep`'s mixtures.
fn shard_job(sweep: Uuid, items: Vec<i32>) -> crate::registry::jobs::NewJob {
    Sweep::job(&SweepJob { sweep, items })
}

/// Stores a sweep with its mixtures and queues one job per `shard` mixtures not yet scored
/// on every eval set, in one transaction ([`sweeps::create`]); the jobs.
pub async fn queue(
    pool: &sqlx::PgPool,
    sweep: &sweeps::Sweep,
    mixtures: &[sweeps::SweepMixture],
    shard: usize,
) -> Result<Vec<crate::registry::jobs::Job>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let jobs = sweeps::create(&mut tx, sweep, mixtures, shard, shard_job).await?;
    tx.commit().await?;
    Ok(jobs)
}

/// Ensemble scores stored per transaction: each costs microseconds to compute, so a
/// transaction per mixture would be most of the work.
const ENSEMBLE_BATCH: usize = 64;

/// A mixture of the shard with the eval sets it still lacks.
struct Todo {
    key: String,
    members: Vec<Member>,
    eval_sets: Vec<Uuid>,
}

/// What the shard did, for the job's result.
#[derive(Default, serde::Serialize)]
struct Tally {
    mixtures: usize,
    /// Mixtures already scored on every eval set when the shard started.
    cached: usize,
    /// Mixtures scored by this attempt, and the scores it stored.
    computed: usize,
    scores: usize,
    /// Forward passes over an eval set: one per score for merges; for the ensemble, one per
    /// unit model and eval set whose per-token NLLs were not stored yet.
    forward_passes: usize,
    /// Per-token NLLs of a unit model on an eval set found stored (ensemble).
    logprobs_reused: usize,
    groups: usize,
    /// The most memory the resident unit models took at once.
    peak_resident_bytes: u64,
    load_seconds: f64,
    merge_seconds: f64,
    eval_seconds: f64,
    seconds: f64,
}

async fn run(cx: &Context, job: SweepJob) -> Outcome {
    let started = Instant::now();
    let pool = &cx.pool;
    let sweep = sweeps::get(pool, job.sweep)
        .await?
        .ok_or_else(|| JobError::Fatal(format!("sweep {} not found", job.sweep)))?;
    let base = bases::find(pool, &sweep.base_id.to_string())
        .await?
        .ok_or_else(|| JobError::Fatal(format!("base {} not found", sweep.base_id)))?;
    let mut eval_sets = Vec::with_capacity(sweep.eval_set_ids.len());
    for id in &sweep.eval_set_ids {
        let set = datasets::find(pool, datasets::Kind::EvalSet, &id.to_string())
            .await?
            .ok_or_else(|| JobError::Fatal(format!("eval set {id} not found")))?;
        eval_sets.push(set);
    }
    let eval: EvalConfig = serde_json::from_value(sweep.eval_config.clone())
        .map_err(|e| JobError::Fatal(format!("sweep {}: evaluation settings: {e}", sweep.id)))?;
    let scope = ScoreKey {
        base_id: sweep.base_id,
        recipe_id: sweep.recipe_id,
        mixture_key: String::new(),
        weighting: sweep.weighting.clone(),
        merge_method: sweep.proxy.clone(),
        eval_set_id: Uuid::nil(),
        eval_config_sha256: sweep.eval_config_sha256.clone(),
    };

    let rows = sweeps::mixtures_at(pool, sweep.id, &job.items).await?;
    let keys: Vec<String> = rows.iter().map(|(_, key, _)| key.clone()).collect();
    let stored: HashSet<(String, Uuid)> =
        scores::stored_pairs(pool, &scope, &keys, &sweep.eval_set_ids)
            .await?
            .into_iter()
            .collect();
    let mut todo = Vec::new();
    for (position, key, members) in rows {
        let members: Vec<Member> = serde_json::from_value(members)
            .map_err(|e| JobError::Fatal(format!("sweep {} mixture {position}: {e}", sweep.id)))?;
        let missing: Vec<Uuid> = sweep
            .eval_set_ids
            .iter()
            .filter(|e| !stored.contains(&(key.clone(), **e)))
            .copied()
            .collect();
        if !missing.is_empty() {
            todo.push(Todo {
                key,
                members,
                eval_sets: missing,
            });
        }
    }
    let mut tally = Tally {
        mixtures: job.items.len(),
        cached: job.items.len() - todo.len(),
        ..Tally::default()
    };
    if !todo.is_empty() {
        let partitions: Vec<Uuid> = todo
            .iter()
            .flat_map(|t| t.members.iter().map(|m| m.partition))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let units: HashMap<Uuid, UnitModel> =
            models::for_partitions(pool, sweep.base_id, sweep.recipe_id, &partitions)
                .await?
                .into_iter()
                .filter(|u| u.state == "ready")
                .map(|u| (u.partition_id, u))
                .collect();
        if let Some(p) = partitions.iter().find(|p| !units.contains_key(p)) {
            return Err(JobError::Fatal(format!(
                "partition {p} has no ready unit model"
            )));
        }
        let proxy = Proxy::from_key(&sweep.proxy)
            .ok_or_else(|| JobError::Fatal(format!("unknown proxy {:?}", sweep.proxy)))?;
        let shard = Shard {
            cx,
            sweep: &sweep,
            base: &base,
            scope: &scope,
            units: &units,
            combine: Combine::of(proxy),
        };
        let outcome = if proxy.reads_token_nll() {
            let needed: HashSet<Uuid> = todo.iter().flat_map(|t| t.eval_sets.clone()).collect();
            let sets: Vec<_> = eval_sets
                .iter()
                .filter(|s| needed.contains(&s.id))
                .cloned()
                .collect();
            let models: Vec<&UnitModel> = units.values().collect();
            let loading = Instant::now();
            let nll = UnitNll::gather(cx, &base, &sets, &eval, &models, None).await?;
            tally.load_seconds = loading.elapsed().as_secs_f64();
            tally.forward_passes = nll.computed;
            tally.logprobs_reused = nll.reused;
            shard
                .score_by_token_nll(proxy, nll, &todo, &mut tally)
                .await
        } else {
            let mut merger = Merger::open(cx, &base, &eval_sets, &eval).await?;
            let outcome = shard.run(&mut merger, &todo, &mut tally).await;
            merger.finish(cx).await;
            outcome
        };
        cx.clear_scratch().await;
        match outcome? {
            Done::Succeeded => {}
            other => return Ok(other),
        }
    }
    tally.seconds = started.elapsed().as_secs_f64();
    let result = json!({ "sweep": sweep.id, "worker": cx.worker, "shard": tally });
    cx.succeed(pool.begin().await?, &result).await
}

/// A shard's fixed context while it runs.
struct Shard<'a> {
    cx: &'a Context,
    sweep: &'a sweeps::Sweep,
    base: &'a bases::Base,
    scope: &'a ScoreKey,
    /// Ready unit models by partition.
    units: &'a HashMap<Uuid, UnitModel>,
    /// How merges combine the units (the ensemble's shards do not merge).
    combine: Combine,
}

impl Shard<'_> {
    /// Scores every mixture of `todo`, group by group. `Succeeded` once all are stored.
    async fn run(
        &self,
        merger: &mut Merger,
        todo: &[Todo],
        tally: &mut Tally,
    ) -> Result<Done, JobError> {
        // A task-vector merge also holds the base.
        let base_slot = usize::from(matches!(self.combine, Combine::TaskVectors(_)));
        let capacity = self.cx.check_fits(
            todo.iter().map(|t| t.members.len()).max().unwrap_or(0) + base_slot,
            merger.unit_bytes * self.combine.units_per_unit(),
        )?;
        if base_slot == 1 {
            merger.load_base(self.cx, self.base).await?;
        }
        let groups = groups(todo, capacity - base_slot);
        tally.groups = groups.len();
        let count = groups.len();
        let mut finished = 0usize;
        for (index, group) in groups.into_iter().enumerate() {
            // The progress says when the shard's units do not fit the budget together.
            let in_group = (count > 1).then_some((index + 1, count));
            let needed: HashSet<Uuid> = group
                .iter()
                .flat_map(|t| t.members.iter().map(|m| self.units[&m.partition].id))
                .collect();
            let resident: Vec<Uuid> = self.units.values().map(|u| u.id).collect();
            for id in resident.iter().filter(|id| !needed.contains(id)) {
                merger.forget(*id);
            }
            let loading = Instant::now();
            // Nothing is fetched or loaded for a model resident already.
            for unit in self.units.values().filter(|u| needed.contains(&u.id)) {
                merger.load(self.cx, unit).await?;
                if self.combine == Combine::Fisher {
                    merger.load_fisher(self.cx, unit).await?;
                }
            }
            tally.load_seconds += loading.elapsed().as_secs_f64();
            tally.peak_resident_bytes = tally.peak_resident_bytes.max(merger.resident_bytes());
            for item in group {
                if self.cx.is_cancelled() {
                    return Ok(Done::Cancelled);
                }
                let ids: Vec<Uuid> = item
                    .members
                    .iter()
                    .map(|m| self.units[&m.partition].id)
                    .collect();
                let weights: Vec<f64> = item.members.iter().map(|m| m.weight).collect();
                let scored = merger
                    .score(&ids, &weights, self.combine, &item.eval_sets)
                    .await?;
                tally.merge_seconds += scored.merge_seconds;
                tally.eval_seconds += scored.eval_seconds;
                finished += 1;
                let progress = Progress {
                    fraction: finished as f32 / todo.len() as f32,
                    done: finished,
                    total: todo.len(),
                    group: in_group,
                };
                if !self
                    .store(&[(item, scored.results, scored.note)], progress)
                    .await?
                {
                    return Ok(Done::LeaseLost);
                }
                tally.computed += 1;
                tally.scores += item.eval_sets.len();
                tally.forward_passes += item.eval_sets.len();
            }
        }
        Ok(Done::Succeeded)
    }

    /// Scores every mixture of `todo` by `proxy` (the ensemble of its unit models or their
    /// mean) from their per-token NLLs (`nll`), storing [`ENSEMBLE_BATCH`] mixtures per
    /// transaction.
    async fn score_by_token_nll(
        &self,
        proxy: Proxy,
        nll: UnitNll,
        todo: &[Todo],
        tally: &mut Tally,
    ) -> Result<Done, JobError> {
        let nll = std::sync::Arc::new(nll);
        let mut finished = 0usize;
        for batch in todo.chunks(ENSEMBLE_BATCH) {
            if self.cx.is_cancelled() {
                return Ok(Done::Cancelled);
            }
            let started = Instant::now();
            let asked: Vec<(Vec<Uuid>, Vec<f64>, Vec<Uuid>)> = batch
                .iter()
                .map(|item| {
                    let ids = item
                        .members
                        .iter()
                        .map(|m| self.units[&m.partition].id)
                        .collect();
                    let weights = item.members.iter().map(|m| m.weight).collect();
                    (ids, weights, item.eval_sets.clone())
                })
                .collect();
            // Arithmetic over every token of the eval sets: off the async threads.
            let nll = nll.clone();
            let results = blocking(move || {
                asked
                    .iter()
                    .map(|(ids, weights, sets)| {
                        sets.iter()
                            .map(|set| nll.score(proxy, ids, weights, *set))
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
            let scored: Vec<_> = batch
                .iter()
                .zip(results)
                .map(|(item, results)| (item, results, None))
                .collect();
            tally.merge_seconds += started.elapsed().as_secs_f64();
            finished += batch.len();
            let progress = Progress {
                fraction: finished as f32 / todo.len() as f32,
                done: finished,
                total: todo.len(),
                group: None,
            };
            if !self.store(&scored, progress).await? {
                return Ok(Done::LeaseLost);
            }
            tally.computed += batch.len();
            tally.scores += batch.iter().map(|t| t.eval_sets.len()).sum::<usize>();
        }
        Ok(Done::Succeeded)
    }

    /// Stores mixtures' scores with the job's progress, in one transaction fenced by the
    /// attempt; `false` when the lease was lost (nothing is stored then).
    async fn store(
        &self,
        scored: &[(&Todo, Vec<Evaluation>, Option<String>)],
        progress: Progress,
    ) -> Result<bool, JobError> {
        let mut tx = self.cx.pool.begin().await?;
        for (item, results, note) in scored {
            let members = serde_json::to_value(&item.members).expect("mixtures serialise");
            for (eval_set, result) in item.eval_sets.iter().zip(results) {
                let key = ScoreKey {
                    mixture_key: item.key.clone(),
                    eval_set_id: *eval_set,
                    ..self.scope.clone()
                };
                let mut result = serde_json::to_value(result).expect("results serialise");
                if let Some(note) = note {
                    result["note"] = json!(note);
                }
                scores::insert(&mut tx, &key, &members, &self.sweep.eval_config, &result).await?;
            }
        }
        let Progress {
            fraction,
            done,
            total,
            group,
        } = progress;
        let message = match group {
            None => format!("mixture {done}/{total}"),
            Some((group, groups)) => format!(
                "mixture {done}/{total}, in group {group} of {groups}: the shard's unit models \
                 do not fit the memory budget together"
            ),
        };
        self.cx.commit_progress(tx, fraction, &message).await
    }
}

/// How far a shard is: its mixtures done, and the group of unit models it is in when they
/// do not all fit the memory budget.
struct Progress {
    fraction: f32,
    done: usize,
    total: usize,
    group: Option<(usize, usize)>,
}

/// Consecutive mixtures grouped so that each group's unit models number at most `capacity`
/// (every mixture fits alone: checked before).
fn groups(todo: &[Todo], capacity: usize) -> Vec<Vec<&Todo>> {
    let mut groups: Vec<Vec<&Todo>> = Vec::new();
    let mut units: HashSet<Uuid> = HashSet::new();
    for item in todo {
        let mut union = units.clone();
        union.extend(item.members.iter().map(|m| m.partition));
        match groups.last_mut() {
            Some(group) if union.len() <= capacity => {
                group.push(item);
                units = union;
            }
            _ => {
                groups.push(vec![item]);
                units = item.members.iter().map(|m| m.partition).collect();
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn todo(partitions: &[u128]) -> Todo {
        Todo {
            key: String::new(),
            members: partitions
                .iter()
                .map(|&p| Member {
                    partition: Uuid::from_u128(p),
                    weight: 1.0,
                })
                .collect(),
            eval_sets: vec![],
        }
    }

    #[test]
    fn groups_hold_at_most_the_units_that_fit_and_keep_the_order() {
        let items = [
            todo(&[1, 2]),
            todo(&[1, 3]),
            todo(&[2, 3]),
            todo(&[4]),
            todo(&[1, 4]),
            todo(&[5, 6]),
        ];
        let sizes =
            |capacity| -> Vec<usize> { groups(&items, capacity).iter().map(|g| g.len()).collect() };
        assert_eq!(sizes(6), vec![6]);
        assert_eq!(sizes(3), vec![3, 2, 1]);
        assert_eq!(sizes(2), vec![1, 1, 1, 2, 1]);
        for capacity in 2..=6 {
            for group in groups(&items, capacity) {
                let units: HashSet<_> = group
                    .iter()
                    .flat_map(|t| t.members.iter().map(|m| m.partition))
                    .collect();
                assert!(units.len() <= capacity, "capacity {capacity}: {units:?}");
            }
        }
    }
}
