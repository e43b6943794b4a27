//! `validate` jobs: the ground truth for one mixture. A model is trained on the union of the
//! mixture's partitions (or on their sequences drawn in the validation's proportions), from
//! the same base with the same recipe, for the validation's budget (by default the
//! partitions' summed budget: the paper's k-partition mixture trains k× the unit steps), with
//! its train state mirrored like a unit model's. It is then evaluated on the requested eval
//! sets, beside the mixture's proxies (for a union: merged uniform, merged token-weighted,
//! each unit alone, the uniform ensemble and Fisher merge; with weights: the merge, the
//! ensemble and the Fisher merge with those weights), which are stored as ordinary scores
//! where they are missing.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use super::context::Context;
use super::ensemble::UnitNll;
use super::kind::{Kind, Outcome};
use super::merger::{Combine, Merger};
use super::mirror::StateMirror;
use super::training::{self, Start, TrainingRun};
use super::{Done, JobError};
use crate::engine::checkpoint::WEIGHTS_FILE;
use crate::engine::eval::EvalConfig;
use crate::mixture::{Mixture, Weighting};
use crate::proxy::Proxy;
use crate::registry::datasets;
use crate::registry::jobs::NewJob;
use crate::registry::scores::eval_config_sha256;
use crate::registry::scores::{self, ScoreKey};
use crate::registry::{bases, models, recipes, validations};
use crate::store::keys;
use crate::validation::Proxies;

pub struct Validate;

/// `validate`: the validation to train (once) and evaluate on `eval_sets`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValidateJob {
    pub validation: Uuid,
    pub eval_sets: Vec<Uuid>,
}

impl Kind for Validate {
    const NAME: &'static str = "validate";
    const ABOUT: &'static str =
        "trains a model on a mixture's union and evaluates it beside the mixture's proxies";
    const MAX_ATTEMPTS: i32 = 5;
    type Payload = ValidateJob;

    /// A validation on a set of eval sets has one job.
    fn dedup_key(job: &ValidateJob) -> String {
        let mut sets = job.eval_sets.clone();
        sets.sort();
        let sets = Sha256::digest(serde_json::to_vec(&sets).expect("ids serialise"));
        format!("validate:{}:{}", job.validation, hex::encode(sets))
    }

    async fn run(cx: &Context, job: ValidateJob) -> Outcome {
        run(cx, job).await
    }

    /// A validation whose job ended without weights is `failed`, so asking again queues it.
    async fn failed(db: &mut PgConnection, job: &ValidateJob) -> Result<(), sqlx::Error> {
        validations::mark_failed(db, job.validation).await
    }
}

/// The job that trains validation `validation` (when it has no weights) and evaluates it on
/// `eval_sets`.
pub fn validation_job(validation: Uuid, eval_sets: Vec<Uuid>) -> NewJob {
    Validate::job(&ValidateJob {
        validation,
        eval_sets,
    })
}

/// The validation of each mixture from `base` with `recipe`, created or found in one
/// transaction with the job that trains it (once) and evaluates it on those of `eval_sets`
/// it lacks ([`validations::ensure`]). A mixture trains for `tokens`, or the recipe's
/// budget once per partition with weight, with `seed`, or the recipe's.
pub async fn queue(
    pool: &sqlx::PgPool,
    base: Uuid,
    recipe: &recipes::Recipe,
    mixtures: &[Mixture],
    (tokens, seed): (Option<u64>, Option<u64>),
    eval_sets: &[Uuid],
) -> Result<Vec<(validations::Validation, Option<crate::registry::jobs::Job>)>, sqlx::Error> {
    let seed = seed.unwrap_or(recipe.config.0.seed) as i64;
    let sha = eval_config_sha256(&EvalConfig::default());
    let mut tx = pool.begin().await?;
    let mut out = Vec::with_capacity(mixtures.len());
    for mixture in mixtures {
        let partitions: Vec<Uuid> = mixture.members.iter().map(|m| m.partition).collect();
        let weights: Vec<f64> = mixture.members.iter().map(|m| m.weight).collect();
        let weighted = mixture.weighting == Weighting::Explicit;
        let with_weight = weights.iter().filter(|w| **w > 0.0).count() as u64;
        let tokens = tokens.unwrap_or(recipe.config.0.tokens * with_weight);
        let new = validations::NewValidation {
            base,
            recipe: recipe.id,
            mixture_key: &mixture.key(),
            partitions: &partitions,
            weights: weighted.then_some(weights.as_slice()),
            tokens: tokens as i64,
            seed,
        };
        out.push(validations::ensure(&mut tx, &new, eval_sets, &sha, validation_job).await?);
    }
    tx.commit().await?;
    Ok(out)
}

async fn run(cx: &Context, job: ValidateJob) -> Outcome {
    let pool = &cx.pool;
    let fatal = |what: String| JobError::Fatal(format!("validation {}: {what}", job.validation));
    let validation = validations::get(pool, job.validation)
        .await?
        .ok_or_else(|| fatal("not found".into()))?;
    let base = bases::find(pool, &validation.base_id.to_string())
        .await?
        .ok_or_else(|| fatal("base not found".into()))?;
    let recipe = recipes::find(pool, &validation.recipe_id.to_string())
        .await?
        .ok_or_else(|| fatal("recipe not found".into()))?;
    let mut partitions = Vec::new();
    for id in &validation.partition_ids {
        let p = datasets::find(pool, datasets::Kind::Partition, &id.to_string())
            .await?
            .ok_or_else(|| fatal(format!("partition {id} not found")))?;
        partitions.push(p);
    }
    let mut eval_sets = Vec::new();
    for id in &job.eval_sets {
        let set = datasets::find(pool, datasets::Kind::EvalSet, &id.to_string())
            .await?
            .ok_or_else(|| fatal(format!("eval set {id} not found")))?;
        eval_sets.push(set);
    }

    // The union model, once.
    let (weights_sha, trained) = match validation.weights_sha256.clone() {
        Some(sha) if validation.state == "ready" => (sha, None),
        _ => {
            let weights = base
                .weights_sha256
                .clone()
                .ok_or_else(|| fatal(format!("base {} has no weights yet", base.name)))?;
            let mut config = recipe.config.0.clone();
            config.tokens = validation.tokens as u64;
            config.seed = validation.seed as u64;
            // The partitions in the order of their content, not of their random ids: the same
            // mixture trains the same model in any registry, and differs only by its seed.
            let mut order: Vec<usize> = (0..partitions.len()).collect();
            order.sort_by(|&a, &b| partitions[a].sha256.cmp(&partitions[b].sha256));
            let run = TrainingRun {
                model: base.config.0.clone(),
                start: Start::Stored {
                    base: Box::new(base.clone()),
                    sha256: weights,
                },
                partitions: order.iter().map(|&i| partitions[i].clone()).collect(),
                weights: validation
                    .weights
                    .as_ref()
                    .map(|w| order.iter().map(|&i| w[i]).collect()),
                config,
                output: keys::model(&validation.id, WEIGHTS_FILE),
                mirror: keys::model(&validation.id, "train_state"),
                fisher: None,
            };
            let Some(training::Trained {
                stored, summary, ..
            }) = training::run(cx, &run).await?
            else {
                return Ok(Done::Cancelled);
            };
            let summary = serde_json::to_value(&summary).expect("summaries serialise");
            let mut db = pool.acquire().await?;
            validations::mark_ready(&mut db, validation.id, &stored.sha256, &summary).await?;
            StateMirror::forget(&cx.store, &run.mirror).await;
            (stored.sha256, Some(summary))
        }
    };

    // The union model and the proxies on every requested eval set.
    let units = models::for_partitions(
        pool,
        validation.base_id,
        validation.recipe_id,
        &validation.partition_ids,
    )
    .await?;
    let eval = EvalConfig::default();
    let eval_json = serde_json::to_value(&eval).expect("settings serialise");
    let sha = eval_config_sha256(&eval);
    let sizes: Vec<(Uuid, i64)> = partitions.iter().map(|p| (p.id, p.bytes)).collect();
    // A weighted validation's proxies are the merge and the ensemble with its weights; a
    // union's are the paper's, each unit alone and the uniform ensemble.
    let proxies: Vec<(Mixture, Proxy)> = match &validation.weights {
        Some(weights) => {
            let mixture = Mixture::new(
                &validation.partition_ids,
                Some(weights),
                Weighting::Explicit,
            )
            .map_err(|e| fatal(e.to_string()))?;
            vec![
                (mixture.clone(), Proxy::Average),
                (mixture, Proxy::Ensemble),
            ]
        }
        None => Proxies::of(&sizes)
            .map_err(|e| fatal(e.to_string()))?
            .scored(),
    };
    let mut merger = Merger::open(cx, &base, &eval_sets, &eval).await?;
    let outcome = async {
        // The union model, the base (task-vector merges start from it), and each unit with
        // its Fisher estimate (twice a unit's memory).
        cx.check_fits(2 * units.len() + 2, merger.unit_bytes)?;
        merger.load_model(cx, validation.id, &weights_sha).await?;
        let union = merger
            .score(&[validation.id], &[1.0], Combine::Average, &job.eval_sets)
            .await?;
        let mut unit_of = std::collections::HashMap::new();
        let mut members = Vec::new();
        for p in &validation.partition_ids {
            let unit = units
                .iter()
                .find(|u| u.partition_id == *p && u.state == "ready")
                .ok_or_else(|| fatal(format!("partition {p} has no ready unit model")))?;
            merger.load(cx, unit).await?;
            merger.load_fisher(cx, unit).await?;
            unit_of.insert(*p, unit.id);
            members.push(unit);
        }
        // Each unit's per-token NLLs (of text, or of questions' choices): a unit alone and
        // the ensemble are arithmetic on them.
        let nll =
            UnitNll::gather(cx, &base, &eval_sets, &eval, &members, Some(&mut merger)).await?;
        let mut proxy_scores = Vec::new();
        for (mixture, proxy) in &proxies {
            let scope = ScoreKey {
                base_id: validation.base_id,
                recipe_id: validation.recipe_id,
                mixture_key: mixture.key(),
                weighting: mixture.weighting.as_str().into(),
                merge_method: proxy.key(),
                eval_set_id: Uuid::nil(),
                eval_config_sha256: sha.clone(),
            };
            let stored: HashSet<Uuid> = scores::stored_pairs(
                pool,
                &scope,
                std::slice::from_ref(&scope.mixture_key),
                &job.eval_sets,
            )
            .await?
            .into_iter()
            .map(|(_, set)| set)
            .collect();
            let missing: Vec<Uuid> = job
                .eval_sets
                .iter()
                .filter(|e| !stored.contains(e))
                .copied()
                .collect();
            if missing.is_empty() {
                continue;
            }
            let ids: Vec<Uuid> = mixture
                .members
                .iter()
                .map(|m| unit_of[&m.partition])
                .collect();
            let weights: Vec<f64> = mixture.members.iter().map(|m| m.weight).collect();
            let by_nll = *proxy == Proxy::Ensemble || ids.len() == 1;
            let (from_nll, merged): (Vec<Uuid>, Vec<Uuid>) = if by_nll {
                (missing, Vec::new())
            } else {
                (Vec::new(), missing)
            };
            let mut results = Vec::with_capacity(from_nll.len() + merged.len());
            for set in &from_nll {
                results.push(nll.score(Proxy::Ensemble, &ids, &weights, *set)?);
            }
            let mut note = None;
            if !merged.is_empty() {
                if matches!(proxy, Proxy::TaskVectors(_)) {
                    merger.load_base(cx, &base).await?;
                }
                let scored = merger
                    .score(&ids, &weights, Combine::of(*proxy), &merged)
                    .await?;
                results.extend(scored.results);
                note = scored.note;
            }
            for (set, result) in from_nll.into_iter().chain(merged).zip(results) {
                let mut result = serde_json::to_value(result).expect("results serialise");
                if let Some(note) = &note {
                    result["note"] = json!(note);
                }
                proxy_scores.push((
                    ScoreKey {
                        eval_set_id: set,
                        ..scope.clone()
                    },
                    serde_json::to_value(&mixture.members).expect("mixtures serialise"),
                    result,
                ));
            }
        }
        Ok::<_, JobError>((union, proxy_scores))
    }
    .await;
    merger.finish(cx).await;
    let (union, proxy_scores) = outcome?;

    let mut tx = pool.begin().await?;
    for (set, result) in job.eval_sets.iter().zip(&union.results) {
        let result = serde_json::to_value(result).expect("results serialise");
        validations::insert_score(&mut tx, validation.id, *set, &eval_json, &sha, &result).await?;
    }
    for (key, members, result) in &proxy_scores {
        scores::insert(&mut tx, key, members, &eval_json, result).await?;
    }
    let result = json!({
        "validation": validation.id,
        "weights_sha256": weights_sha,
        "train": trained,
        "evaluated": job.eval_sets.len(),
        "proxy_scores": proxy_scores.len(),
    });
    let done = cx.succeed(tx, &result).await?;
    cx.clear_scratch().await;
    Ok(done)
}
