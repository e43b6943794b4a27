//! Validations seen from the scores: a mixture's proxies (its merged-uniform and
//! merged-token-weighted scores, the mean of its unit models' own perplexities, the ensemble,
//! the Fisher-weighted and the task-vector merges) and the report that correlates each proxy
//! with the union model's perplexity, per eval set.

use std::collections::{BTreeMap, HashMap};

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

mod measures;

use measures::best_proxy;
pub use measures::{Agreement, Ceiling, Correlation, Point, SetReport};

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

/// (eval set, base, recipe, mixture key): a mixture validated on one eval set, any seed.
type MixtureOnSet<'a> = (Uuid, Uuid, Uuid, &'a str);

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
    // The eval sets' own domains: those their documents carry (a question set's: its tasks).
    let mut own: HashMap<Uuid, Vec<String>> = HashMap::new();
    for truth in &truths {
        let result = &truth.result;
        if let Some(domains) = result["per_domain"]
            .as_object()
            .or(result["per_task"].as_object())
        {
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
            ("ensemble", accuracy(&proxies.uniform, Proxy::Ensemble)),
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
