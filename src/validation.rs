//! Validations seen from the scores: a mixture's proxies (its merged-uniform and
//! merged-token-weighted scores, the mean of its unit models' own perplexities, the ensemble,
//! the Fisher-weighted and the task-vector merges) and the report that correlates each proxy
//! with the union model's perplexity, per eval set.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::engine::eval::EvalConfig;
use crate::error::Error;
use crate::mixture::{Mixture, MixtureError, Weighting};
use crate::proxy::{Choice, Proxy, Scale};
use crate::registry::datasets;
use crate::registry::datasets::Dataset;
use crate::registry::scores::eval_config_sha256;
use crate::registry::{scores, validations};
use crate::stats;

/// Validated mixtures an eval set needs before the report names its best proxy.
pub const TRUSTED_AT: usize = 8;

/// The proxies, in report order: the uniform and the token-weighted parameter average, the
/// mean of the unit models' own perplexities, the uniform ensemble of their distributions,
/// the uniform Fisher-weighted average, and the uniform task-vector merge at the scale λ
/// (of [`Scale::GRID`]) that ranks the eval set's validations best.
pub const PROXIES: [&str; 6] = [
    "merged_uniform",
    "merged_tokens",
    "mean_of_units",
    "ensemble",
    "fisher",
    "task_vectors",
];

/// A point's task-vector perplexity at one scale: `task_vectors@λ`.
fn at_scale(scale: Scale) -> String {
    format!("task_vectors@{scale}")
}

/// The scores a validation is compared with: the mixture merged with uniform and with
/// token-proportional weights, and each partition's unit model alone.
pub struct Proxies {
    pub uniform: Mixture,
    pub tokens: Mixture,
    pub singles: Vec<Mixture>,
}

impl Proxies {
    /// From the mixture's partitions and their sizes in bytes (the token counts of
    /// byte-level models, as `weighting=tokens` takes them).
    pub fn of(partitions: &[(Uuid, i64)]) -> Result<Proxies, MixtureError> {
        let ids: Vec<Uuid> = partitions.iter().map(|(p, _)| *p).collect();
        let sizes: Vec<f64> = partitions.iter().map(|(_, b)| *b as f64).collect();
        Ok(Proxies {
            uniform: Mixture::new(&ids, None, Weighting::Uniform)?,
            tokens: Mixture::new(&ids, Some(&sizes), Weighting::Tokens)?,
            singles: ids
                .iter()
                .map(|p| Mixture::new(&[*p], None, Weighting::Uniform))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Every score the proxies need: each mixture with the proxy that scores it.
    pub fn scored(self) -> Vec<(Mixture, Proxy)> {
        let mut out = vec![
            (self.uniform.clone(), Proxy::Average),
            (self.tokens, Proxy::Average),
        ];
        out.extend(self.singles.into_iter().map(|m| (m, Proxy::Average)));
        out.push((self.uniform.clone(), Proxy::Ensemble));
        out.push((self.uniform.clone(), Proxy::Fisher));
        for scale in Scale::GRID.into_iter().filter(|&s| s != Scale::ONE) {
            out.push((self.uniform.clone(), Proxy::TaskVectors(scale)));
        }
        out
    }
}

/// One validated mixture on one eval set: the union model's perplexity and each proxy's
/// (`None` where its scores are not all stored yet).
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// The validation (of the lowest seed, when there are several).
    pub validation: Uuid,
    pub partitions: Vec<Uuid>,
    /// The trained perplexity: the mean of `truths`.
    pub truth: f64,
    /// The seeds the mixture was trained with, lowest first, and each one's perplexity.
    pub seeds: Vec<i64>,
    pub truths: Vec<f64>,
    /// Each proxy's perplexity, where its scores are all stored (by [`PROXIES`] name, and
    /// the task-vector merge at every scale as `task_vectors@λ`).
    pub proxies: BTreeMap<String, f64>,
    /// Whether none of the mixture's partitions is of the eval set's own domain (the
    /// domains its documents carry); `None` when a partition or the eval set has none.
    pub excludes_own_domain: Option<bool>,
    /// Sets of questions: the trained model's accuracy (the mean over seeds) and each
    /// proxy's, as `proxies` names them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub true_accuracy: Option<f64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub accuracies: BTreeMap<String, f64>,
}

/// How a proxy's accuracy on a set of questions follows the trained model's.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Correlation {
    pub n: usize,
    pub pearson: Option<f64>,
    pub spearman: Option<f64>,
}

impl Correlation {
    fn of(points: &[Point], proxy: &str) -> Correlation {
        let (x, y): (Vec<f64>, Vec<f64>) = points
            .iter()
            .filter_map(|p| Some((*p.accuracies.get(proxy)?, p.true_accuracy?)))
            .unzip();
        Correlation {
            n: x.len(),
            pearson: stats::pearson(&x, &y),
            spearman: stats::spearman(&x, &y),
        }
    }
}

impl Point {
    pub fn proxy(&self, name: &str) -> Option<f64> {
        self.proxies.get(name).copied()
    }
}

/// A proxy's agreement with the truth on one eval set; each correlation with its bootstrap
/// 90% interval (`*_90`, see [`stats::bootstrap90`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Agreement {
    pub n: usize,
    /// Pearson's r between the logs of proxy and true perplexity.
    pub pearson_log_ppl: Option<f64>,
    pub pearson_log_ppl_90: Option<(f64, f64)>,
    pub spearman: Option<f64>,
    pub spearman_90: Option<(f64, f64)>,
    /// The mixtures without a partition of the eval set's own domain: how many, and ρ over
    /// them (the case of a target the partitions do not cover).
    pub n_excluding: usize,
    pub rho_excluding: Option<f64>,
    pub rho_excluding_90: Option<(f64, f64)>,
    /// ρ over the best quarter of the mixtures by their trained perplexity.
    pub rho_top: Option<f64>,
    pub rho_top_90: Option<(f64, f64)>,
    /// The fraction of pairs of mixtures the proxy orders as training does.
    pub decision_accuracy: Option<f64>,
    /// How much worse (%) the trained model of the proxy's best mixture is than the best.
    pub regret: Option<f64>,
    /// The task-vector scale λ the report chose (the one with the highest ρ over these
    /// points, chosen on them: an in-sample choice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
}

impl Agreement {
    /// The agreement of `proxy` with the truth over `points` (those where it is known).
    pub fn of(points: &[Point], proxy: &str) -> Agreement {
        let known: Vec<&Point> = points.iter().filter(|p| p.proxy(proxy).is_some()).collect();
        let pairs = |only_excluding: bool| -> (Vec<f64>, Vec<f64>) {
            known
                .iter()
                .filter(|p| !only_excluding || p.excludes_own_domain == Some(true))
                .map(|p| (p.proxy(proxy).unwrap_or(f64::NAN), p.truth))
                .unzip()
        };
        let (x, y) = pairs(false);
        let (xe, ye) = pairs(true);
        let log_pearson = |x: &[f64], y: &[f64]| {
            let log = |v: &[f64]| v.iter().map(|p| p.ln()).collect::<Vec<_>>();
            stats::pearson(&log(x), &log(y))
        };
        Agreement {
            n: x.len(),
            pearson_log_ppl: log_pearson(&x, &y),
            pearson_log_ppl_90: stats::bootstrap90(&x, &y, log_pearson),
            spearman: stats::spearman(&x, &y),
            spearman_90: stats::bootstrap90(&x, &y, stats::spearman),
            n_excluding: xe.len(),
            rho_excluding: stats::spearman(&xe, &ye),
            rho_excluding_90: stats::bootstrap90(&xe, &ye, stats::spearman),
            rho_top: stats::rho_top(&x, &y),
            rho_top_90: stats::bootstrap90(&x, &y, stats::rho_top),
            decision_accuracy: stats::decision_accuracy(&x, &y),
            regret: stats::regret(&x, &y),
            scale: None,
        }
    }

    /// The task-vector merge's agreement at the scale of [`Scale::GRID`] with the highest ρ
    /// over `points` (λ nearest 1 among equals; λ = 1, the average, while none has a ρ), and
    /// that scale. Each point's `task_vectors` is set to its perplexity at that scale.
    pub fn task_vectors(points: &mut [Point]) -> Agreement {
        let mut grid = Scale::GRID;
        grid.sort_by(|a, b| (a.value() - 1.0).abs().total_cmp(&(b.value() - 1.0).abs()));
        let mut best = (Scale::ONE, Agreement::of(points, &at_scale(Scale::ONE)));
        for scale in grid {
            let agreement = Agreement::of(points, &at_scale(scale));
            if let Some(rho) = agreement.spearman
                && best.1.spearman.is_none_or(|b| rho > b)
            {
                best = (scale, agreement);
            }
        }
        let (scale, mut agreement) = best;
        for point in points.iter_mut() {
            if let Some(value) = point.proxy(&at_scale(scale)) {
                point.proxies.insert("task_vectors".into(), value);
            }
            if let Some(&value) = point.accuracies.get(&at_scale(scale)) {
                point.accuracies.insert("task_vectors".into(), value);
            }
        }
        agreement.scale = Some(scale.value());
        agreement
    }
}

/// Training against itself on one eval set: Spearman's ρ between the trained perplexities of
/// the first two seeds, over the mixtures trained with both (and over those of them without
/// the eval set's own domain), each with its bootstrap 90% interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Ceiling {
    pub n: usize,
    pub spearman: Option<f64>,
    pub spearman_90: Option<(f64, f64)>,
    pub n_excluding: usize,
    pub rho_excluding: Option<f64>,
    pub rho_excluding_90: Option<(f64, f64)>,
}

impl Ceiling {
    pub fn of(points: &[Point]) -> Ceiling {
        let twice = |only_excluding: bool| -> (Vec<f64>, Vec<f64>) {
            points
                .iter()
                .filter(|p| p.truths.len() >= 2)
                .filter(|p| !only_excluding || p.excludes_own_domain == Some(true))
                .map(|p| (p.truths[0], p.truths[1]))
                .unzip()
        };
        let (x, y) = twice(false);
        let (xe, ye) = twice(true);
        Ceiling {
            n: x.len(),
            spearman: stats::spearman(&x, &y),
            spearman_90: stats::bootstrap90(&x, &y, stats::spearman),
            n_excluding: xe.len(),
            rho_excluding: stats::spearman(&xe, &ye),
            rho_excluding_90: stats::bootstrap90(&xe, &ye, stats::spearman),
        }
    }
}

/// The report for one eval set.
#[derive(Debug, Clone, Serialize)]
pub struct SetReport {
    pub eval_set: Uuid,
    pub n: usize,
    pub proxies: BTreeMap<&'static str, Agreement>,
    /// How well training ranks the mixtures against itself: the best any proxy can do.
    pub ceiling: Ceiling,
    /// With at least [`TRUSTED_AT`] validated mixtures: the proxy with the highest ρ.
    pub best_proxy: Option<&'static str>,
    /// Sets of questions: each proxy's accuracy against the trained model's (ρ and r on
    /// bits per byte of the gold answers are the perplexity's, 2^bits_per_byte_gold).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<BTreeMap<&'static str, Correlation>>,
    /// Why a correlation is missing, when one is.
    pub note: Option<String>,
    pub points: Vec<Point>,
}

/// (eval set, base, recipe, mixture key): a mixture validated on one eval set, any seed.
type MixtureOnSet<'a> = (Uuid, Uuid, Uuid, &'a str);

/// The proxy with the highest ρ over `n` validated mixtures (the first of equals), once `n`
/// reaches [`TRUSTED_AT`].
fn best_proxy(n: usize, proxies: &BTreeMap<&'static str, Agreement>) -> Option<&'static str> {
    if n < TRUSTED_AT {
        return None;
    }
    let mut best: Option<(&'static str, f64)> = None;
    for name in PROXIES {
        let Some(rho) = proxies.get(name).and_then(|a| a.spearman) else {
            continue;
        };
        if best.is_none_or(|(_, b)| rho > b) {
            best = Some((name, rho));
        }
    }
    best.map(|(name, _)| name)
}

/// What a request's proxy is on one eval set, and why, where the validations chose it.
#[derive(Debug, Clone, PartialEq)]
pub struct Chosen {
    pub proxy: Proxy,
    pub reason: Option<String>,
}

/// The scoring proxy of a report proxy: the merges by either weighting are the average (a
/// mixture's weights are its own), the mean of units is `units`, task vectors at `scale`.
fn scoring(name: &str, agreement: &Agreement) -> Proxy {
    match name {
        "ensemble" => Proxy::Ensemble,
        "fisher" => Proxy::Fisher,
        "mean_of_units" => Proxy::Units,
        "task_vectors" => agreement
            .scale
            .and_then(|s| Scale::parse(&s.to_string()))
            .map_or(Proxy::Average, |s| Proxy::TaskVectors(s).canonical()),
        _ => Proxy::Average,
    }
}

/// The proxy `choice` names on `eval_set`: a named one as it is; `task_vectors` at the scale
/// with the best ρ over the eval set's validated mixtures (at least 3); `best` the proxy with
/// the best ρ once [`TRUSTED_AT`] mixtures are validated. A 409 says how many there are.
pub async fn choose(pool: &PgPool, choice: Choice, eval_set: &Dataset) -> Result<Chosen, Error> {
    if let Choice::Named(proxy) = choice {
        return Ok(Chosen {
            proxy,
            reason: None,
        });
    }
    let (needed, what, why) = match choice {
        Choice::Best => (TRUSTED_AT, "proxy=best", "the best ρ of every proxy"),
        _ => (
            3,
            "proxy=task_vectors (its scale λ)",
            "the best ρ of every scale",
        ),
    };
    let set = report(pool, Some(eval_set.id)).await?.into_iter().next();
    let n = set.as_ref().map_or(0, |s| s.n);
    let refuse = || {
        Error::conflict(
            "proxy_not_chosen",
            format!(
                "{what} is chosen from the validations on eval set {:?}: it has {n} validated \
                 mixture(s), {needed} are needed (POST /v1/validations), or name a proxy",
                eval_set.name
            ),
        )
    };
    let set = set.ok_or_else(refuse)?;
    let name = match choice {
        Choice::Best => set.best_proxy.ok_or_else(refuse)?,
        _ if set.proxies["task_vectors"].spearman.is_some() => "task_vectors",
        _ => return Err(refuse()),
    };
    let agreement = &set.proxies[name];
    let proxy = scoring(name, agreement);
    Ok(Chosen {
        proxy,
        reason: Some(format!(
            "{name} has {why} (ρ {:.3}) over {} validated mixtures of eval set {:?}; scored as {}",
            agreement.spearman.unwrap_or(f64::NAN),
            set.n,
            eval_set.name,
            proxy.key()
        )),
    })
}

/// The one proxy `choice` names on all of `eval_sets` (a sweep scores by one); where the
/// validations choose differently per eval set, a 400 names them.
pub async fn choose_one(
    pool: &PgPool,
    choice: Choice,
    eval_sets: &[Dataset],
) -> Result<Chosen, Error> {
    let mut chosen: Vec<(Chosen, &str)> = Vec::with_capacity(eval_sets.len());
    for set in eval_sets {
        chosen.push((choose(pool, choice, set).await?, &set.name));
    }
    let (first, first_set) = chosen.first().cloned().expect("at least one eval set");
    if let Some((other, set)) = chosen.iter().find(|(c, _)| c.proxy != first.proxy) {
        return Err(Error::invalid(
            "invalid_proxy",
            format!(
                "the validations choose {} on eval set {first_set:?} and {} on {set:?}: ask \
                 for them apart, or name a proxy",
                first.proxy.key(),
                other.proxy.key()
            ),
        ));
    }
    Ok(first)
}

/// A figure (perplexity, or a question set's accuracy) by (proxy, mixture key, weighting,
/// eval set).
type Table = HashMap<(String, String, String, Uuid), f64>;

/// Per eval set (all, or `only`), every ready validation's point and each proxy's
/// correlation with the truth. Correlations need at least 3 points.
pub async fn report(pool: &PgPool, only: Option<Uuid>) -> Result<Vec<SetReport>, sqlx::Error> {
    let eval = EvalConfig::default();
    let sha = eval_config_sha256(&eval);
    let ready = validations::ready_unions(pool).await?;
    let truths = validations::scores(pool, &sha, None).await?;
    let all_partitions: Vec<Uuid> = ready.iter().flat_map(|v| v.partition_ids.clone()).collect();
    let sizes = datasets::partition_sizes(pool, &all_partitions).await?;
    // Stored scores by (base, recipe): (mixture key, weighting, eval set) → perplexity.
    let mut stored: HashMap<(Uuid, Uuid), (Table, Table)> = HashMap::new();
    for v in &ready {
        if let std::collections::hash_map::Entry::Vacant(entry) =
            stored.entry((v.base_id, v.recipe_id))
        {
            let rows = scores::all_for(pool, v.base_id, v.recipe_id, &sha).await?;
            let (mut perplexity, mut accuracy) = (Table::new(), Table::new());
            for (proxy, key, weighting, set, result) in rows {
                let key = (proxy, key, weighting, set);
                if let Some(a) = result["accuracy"].as_f64() {
                    accuracy.insert(key.clone(), a);
                }
                if let Some(p) = result["perplexity"].as_f64() {
                    perplexity.insert(key, p);
                }
            }
            entry.insert((perplexity, accuracy));
        }
    }
    // A mixture validated with several seeds is one point: its truth the mean over seeds.
    type Run<'a> = (&'a validations::Validation, f64, Option<f64>);
    let mut seeds: Vec<(MixtureOnSet, Vec<Run>)> = Vec::new();
    for truth in &truths {
        if only.is_some_and(|e| e != truth.eval_set_id) {
            continue;
        }
        let Some(v) = ready.iter().find(|v| v.id == truth.validation_id) else {
            continue;
        };
        let Some(ppl) = truth.result["perplexity"].as_f64() else {
            continue;
        };
        let key = (
            truth.eval_set_id,
            v.base_id,
            v.recipe_id,
            v.mixture_key.as_str(),
        );
        let accuracy = truth.result["accuracy"].as_f64();
        match seeds.iter_mut().find(|(k, _)| *k == key) {
            Some((_, runs)) => runs.push((v, ppl, accuracy)),
            None => seeds.push((key, vec![(v, ppl, accuracy)])),
        }
    }
    // The eval sets' own domains: those their documents carry.
    let mut own: HashMap<Uuid, Vec<String>> = HashMap::new();
    for truth in &truths {
        if let Some(domains) = truth.result["per_domain"].as_object() {
            own.entry(truth.eval_set_id)
                .or_insert_with(|| domains.keys().cloned().collect());
        }
    }
    let mut sets: BTreeMap<Uuid, Vec<Point>> = BTreeMap::new();
    for ((eval_set, ..), mut runs) in seeds {
        runs.sort_by_key(|(v, ..)| v.seed);
        let v = runs[0].0;
        let parts: Vec<(Uuid, i64)> = v
            .partition_ids
            .iter()
            .map(|p| (*p, sizes.get(p).map_or(0, |(bytes, _)| *bytes)))
            .collect();
        let own = own.get(&eval_set).cloned().unwrap_or_default();
        let domains: Option<Vec<&String>> = v
            .partition_ids
            .iter()
            .map(|p| sizes.get(p).and_then(|(_, d)| d.as_ref()))
            .collect();
        let excludes_own_domain = match domains {
            Some(domains) if !own.is_empty() => Some(!domains.iter().any(|d| own.contains(d))),
            _ => None,
        };
        let Ok(proxies) = Proxies::of(&parts) else {
            continue;
        };
        let (table, accuracy_table) = &stored[&(v.base_id, v.recipe_id)];
        let key = |m: &Mixture, proxy: Proxy| {
            (
                proxy.key(),
                m.key(),
                m.weighting.as_str().to_string(),
                eval_set,
            )
        };
        let score = |m: &Mixture, proxy: Proxy| table.get(&key(m, proxy)).copied();
        let accuracy = |m: &Mixture, proxy: Proxy| accuracy_table.get(&key(m, proxy)).copied();
        let singles: Option<Vec<f64>> = proxies
            .singles
            .iter()
            .map(|m| score(m, Proxy::Average))
            .collect();
        let mut accuracies: BTreeMap<String, f64> = [
            ("merged_uniform", accuracy(&proxies.uniform, Proxy::Average)),
            ("merged_tokens", accuracy(&proxies.tokens, Proxy::Average)),
            (
                "mean_of_units",
                proxies
                    .singles
                    .iter()
                    .map(|m| accuracy(m, Proxy::Average))
                    .collect::<Option<Vec<f64>>>()
                    .map(|s| s.iter().sum::<f64>() / s.len() as f64),
            ),
            ("fisher", accuracy(&proxies.uniform, Proxy::Fisher)),
        ]
        .into_iter()
        .filter_map(|(name, a)| Some((name.to_string(), a?)))
        .collect();
        for scale in Scale::GRID {
            if let Some(a) = accuracy(&proxies.uniform, Proxy::TaskVectors(scale)) {
                accuracies.insert(at_scale(scale), a);
            }
        }
        let true_accuracies: Option<Vec<f64>> = runs.iter().map(|(.., a)| *a).collect();
        let mut known = vec![
            (
                "merged_uniform".into(),
                score(&proxies.uniform, Proxy::Average),
            ),
            (
                "merged_tokens".into(),
                score(&proxies.tokens, Proxy::Average),
            ),
            (
                "mean_of_units".into(),
                singles.map(|s| s.iter().sum::<f64>() / s.len() as f64),
            ),
            ("ensemble".into(), score(&proxies.uniform, Proxy::Ensemble)),
            ("fisher".into(), score(&proxies.uniform, Proxy::Fisher)),
        ];
        for scale in Scale::GRID {
            let value = score(&proxies.uniform, Proxy::TaskVectors(scale));
            known.push((at_scale(scale), value));
        }
        let truths: Vec<f64> = runs.iter().map(|(_, ppl, _)| *ppl).collect();
        sets.entry(eval_set).or_default().push(Point {
            validation: v.id,
            partitions: v.partition_ids.clone(),
            truth: truths.iter().sum::<f64>() / truths.len() as f64,
            seeds: runs.iter().map(|(v, ..)| v.seed).collect(),
            truths,
            proxies: known
                .into_iter()
                .filter_map(|(name, value)| Some((name, value?)))
                .collect(),
            excludes_own_domain,
            true_accuracy: true_accuracies
                .filter(|a| !a.is_empty())
                .map(|a| a.iter().sum::<f64>() / a.len() as f64),
            accuracies,
        });
    }
    Ok(sets
        .into_iter()
        .map(|(eval_set, mut points)| {
            let task_vectors = Agreement::task_vectors(&mut points);
            let proxies: BTreeMap<&'static str, Agreement> = PROXIES
                .into_iter()
                .map(|name| match name {
                    "task_vectors" => (name, task_vectors.clone()),
                    _ => (name, Agreement::of(&points, name)),
                })
                .collect();
            let best_proxy = best_proxy(points.len(), &proxies);
            let accuracy = points.iter().any(|p| p.true_accuracy.is_some()).then(|| {
                PROXIES
                    .into_iter()
                    .filter(|name| *name != "ensemble")
                    .map(|name| (name, Correlation::of(&points, name)))
                    .collect()
            });
            let note = (points.len() < 3).then(|| {
                format!(
                    "{} validated mixture(s): correlations need at least 3",
                    points.len()
                )
            });
            SetReport {
                eval_set,
                n: points.len(),
                proxies,
                ceiling: Ceiling::of(&points),
                best_proxy,
                accuracy,
                note,
                points,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(truth: f64, proxy: f64, excludes_own_domain: Option<bool>) -> Point {
        Point {
            validation: Uuid::nil(),
            partitions: Vec::new(),
            truth,
            seeds: vec![0],
            truths: vec![truth],
            proxies: [
                ("merged_uniform".into(), proxy),
                ("mean_of_units".into(), proxy),
            ]
            .into(),
            excludes_own_domain,
            true_accuracy: None,
            accuracies: BTreeMap::new(),
        }
    }

    #[test]
    fn the_best_proxy_is_named_once_enough_mixtures_are_validated() {
        let with = |rho: [Option<f64>; 6]| -> BTreeMap<&'static str, Agreement> {
            PROXIES
                .into_iter()
                .zip(rho)
                .map(|(name, spearman)| {
                    (
                        name,
                        Agreement {
                            spearman,
                            ..Agreement::default()
                        },
                    )
                })
                .collect()
        };
        let proxies = with([Some(0.8), Some(0.9), Some(0.7), None, Some(0.85), Some(0.6)]);
        assert_eq!(best_proxy(TRUSTED_AT - 1, &proxies), None);
        assert_eq!(best_proxy(TRUSTED_AT, &proxies), Some("merged_tokens"));
        // Equals: the first in report order; unknown ρ never wins.
        let proxies = with([Some(0.9), Some(0.9), None, Some(0.85), None, Some(0.9)]);
        assert_eq!(best_proxy(20, &proxies), Some("merged_uniform"));
        assert_eq!(best_proxy(20, &with([None; 6])), None);
    }

    /// Four mixtures scored at three scales: λ = 0.5 ranks them in reverse, λ = 2 and λ = 3
    /// both right (λ = 2 is chosen, nearer 1), λ = 1 (the average) with one pair swapped.
    #[test]
    fn the_task_vector_scale_is_the_one_that_ranks_the_validations_best() {
        let truths = [10.0, 11.0, 12.0, 13.0];
        let at = |values: [f64; 4]| values;
        let table = [
            (Scale::GRID[0], at([4.0, 3.0, 2.0, 1.0])),
            (Scale::ONE, at([1.0, 3.0, 2.0, 4.0])),
            (Scale::GRID[3], at([1.0, 2.0, 3.0, 4.0])),
            (Scale::GRID[4], at([1.0, 2.0, 3.5, 4.0])),
        ];
        let mut points: Vec<Point> = truths
            .iter()
            .enumerate()
            .map(|(i, &truth)| {
                let mut p = point(truth, table[1].1[i], None);
                for (scale, values) in &table {
                    p.proxies.insert(at_scale(*scale), values[i]);
                }
                p
            })
            .collect();
        let a = Agreement::task_vectors(&mut points);
        assert_eq!(a.scale, Some(2.0));
        assert_eq!(a.spearman, Some(1.0));
        assert_eq!(a.n, 4);
        for (p, want) in points.iter().zip([1.0, 2.0, 3.0, 4.0]) {
            assert_eq!(p.proxy("task_vectors"), Some(want));
        }
        // Fewer than three points: no ρ anywhere, so the average's scale.
        let mut two = points[..2].to_vec();
        let a = Agreement::task_vectors(&mut two);
        assert_eq!((a.scale, a.spearman, a.n), (Some(1.0), None, 2));
    }

    /// Six mixtures: the three with the eval set's own domain are ranked right, the three
    /// without it in reverse; ρ over those is −1 while ρ over all stays high.
    #[test]
    fn the_mixtures_without_the_own_domain_are_ranked_apart() {
        let points = [
            point(10.0, 1.0, Some(false)),
            point(11.0, 2.0, Some(false)),
            point(12.0, 3.0, Some(false)),
            point(13.0, 6.0, Some(true)),
            point(14.0, 5.0, Some(true)),
            point(15.0, 4.0, Some(true)),
        ];
        let a = Agreement::of(&points, "merged_uniform");
        assert_eq!((a.n, a.n_excluding), (6, 3));
        assert_eq!(a.rho_excluding, Some(-1.0));
        // 15 pairs, the 3 among the last three wrong.
        assert_eq!(a.decision_accuracy, Some(12.0 / 15.0));
        assert_eq!(a.regret, Some(0.0));
        // ρ over all: d² = 0 + 0 + 0 + 4 + 0 + 4 = 8, 1 − 6·8 / (6·35).
        assert!((a.spearman.unwrap() - (1.0 - 48.0 / 210.0)).abs() < 1e-12);
        // The best quarter of six is the three best, ranked right.
        assert_eq!(a.rho_top, Some(1.0));
        // A proxy known on no point has nothing to say.
        let none = Agreement::of(&points, "merged_tokens");
        assert_eq!(none, Agreement::default());
        // Without domains there is no `excluding` set.
        let unknown: Vec<Point> = points
            .iter()
            .map(|p| Point {
                excludes_own_domain: None,
                ..p.clone()
            })
            .collect();
        let a = Agreement::of(&unknown, "merged_uniform");
        assert_eq!((a.n_excluding, a.rho_excluding), (0, None));
    }
}
