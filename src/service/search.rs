//! Creating a search: every setting checked (partitions, eval sets, objective, bounds,
//! prior, budget), the report and tune halves of a gradient search's eval sets made, and the
//! search queued with its job in one transaction — or, when unit models are missing, those
//! queued instead and nothing else.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::engine::eval::EvalConfig;
use crate::error::{Error, Result};
use crate::ingest::IngestError;
use crate::proxy::{Choice, Proxy};
use crate::registry::RegistryError;
use crate::registry::datasets;
use crate::registry::models;
use crate::registry::scores::eval_config_sha256;
use crate::registry::searches::Search;
use crate::search::{Bounds, SearchError};
use crate::service::resolve;
use crate::service::units::{self, Created};
use crate::store::Store;

/// The most points one search may evaluate.
const MAX_BUDGET: u32 = 10_000;
/// The most partitions one search may weigh (all stay resident on the worker).
const MAX_PARTITIONS: usize = 64;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSearch {
    /// The partitions whose weights are searched (2 to 64).
    pub partitions: Vec<String>,
    pub eval_sets: Vec<String>,
    /// Each eval set's weight in the objective, the weighted sum of log perplexities (default:
    /// equal weights); eval sets it leaves out weigh nothing.
    #[schema(value_type = Option<Object>)]
    pub objective: Option<BTreeMap<String, f64>>,
    /// Points to evaluate before the proposal (`sample`), or steps to take (`gradient`), 1 to
    /// 10,000.
    pub budget: u32,
    /// `sample` (default): Dirichlet samples in rounds, steered by a fitted predictor.
    /// `gradient`: exponentiated-gradient steps along the merged model's α-gradient, tuned on
    /// one half of each eval set's documents (`<name>.tune`) and scored on the other
    /// (`<name>.report`), both registered as eval sets.
    pub method: Option<String>,
    /// The proxy the points are scored by: `average` (default: the merged parameters),
    /// `ensemble` or `units` (arithmetic on the unit models' stored per-token NLLs: no
    /// forward pass per point), `fisher`, `task_vectors@λ`, or as the eval sets' validations
    /// choose: `task_vectors` or `best`. A `gradient` search descends the merge's gradient:
    /// `average` only.
    pub proxy: Option<String>,
    /// `{"partition": [min, max]}`: bounds on its weight (default [0, 1]).
    #[schema(value_type = Option<Object>)]
    pub bounds: Option<BTreeMap<String, (f64, f64)>>,
    /// `{"partition": weight}`: where the search starts (normalised; default: the natural
    /// mixture, each partition in proportion to its tokens); partitions it leaves out start
    /// at 0.
    #[schema(value_type = Option<Object>)]
    pub prior: Option<BTreeMap<String, f64>>,
    /// No partition repeated more than this many times when a model trains on `tokens` in
    /// the mixture's proportions: each weight at most `max_epochs` × its partition's tokens
    /// / `tokens` (its bound lowered to that). Default: no such bound.
    pub max_epochs: Option<f64>,
    /// The training budget `max_epochs` is judged against, in tokens (default: the recipe's
    /// budget times the number of partitions, as a validation of all of them trains).
    pub tokens: Option<u64>,
    /// The proxy the final candidates (the 5 best points, and the natural and uniform
    /// mixtures) are scored again with; the answer is then the best of them by it. A proxy,
    /// `best` (the one the eval sets' validations trust most), or `none`. Default: for a
    /// search scored on stored NLLs (`ensemble`, `units`), `best` where the validations
    /// agree on one, else `average`; no check for the others.
    pub check: Option<String>,
    /// The seed of the samples (default 0): the same request searches the same points.
    pub seed: Option<u64>,
    pub base: Option<String>,
    pub recipe: Option<String>,
    /// Whether missing unit models are queued for training (default true: the answer is then
    /// 202 naming their jobs; ask again once they end).
    pub train: Option<bool>,
}

fn bad(code: &'static str, message: impl Into<String>) -> Error {
    Error::invalid(code, message)
}

/// Checks a search request and queues the search, or the unit models it lacks. `request` is
/// the body as sent, kept with the search.
pub async fn create(
    pool: &PgPool,
    store: &Store,
    new: &NewSearch,
    request: Value,
) -> Result<Created<Search>> {
    let method = new.method.as_deref().unwrap_or("sample");
    if !["sample", "gradient"].contains(&method) {
        return Err(bad(
            "invalid_method",
            format!("method {method:?}: use sample or gradient"),
        ));
    }
    let choice = Choice::parse(new.proxy.as_deref())?;
    if method == "gradient" && choice != Choice::Named(Proxy::Average) {
        return Err(bad(
            "invalid_proxy",
            "a gradient search descends the merged model's α-gradient: proxy average only",
        ));
    }
    if !(1..=MAX_BUDGET).contains(&new.budget) {
        return Err(bad(
            "invalid_budget",
            format!("budget is 1 to {MAX_BUDGET} points"),
        ));
    }
    if !(2..=MAX_PARTITIONS).contains(&new.partitions.len()) {
        return Err(bad(
            "invalid_partitions",
            format!("a search weighs 2 to {MAX_PARTITIONS} partitions"),
        ));
    }
    let mut resolved = resolve::Partitions::default();
    let mut partitions: Vec<&datasets::Dataset> = Vec::with_capacity(new.partitions.len());
    let ids = resolved.resolve(pool, &new.partitions).await?;
    for (key, id) in new.partitions.iter().zip(&ids) {
        if partitions.iter().any(|q| q.id == *id) {
            return Err(bad(
                "invalid_partitions",
                format!("partition {key:?} is named twice"),
            ));
        }
        partitions.extend(resolved.row(*id));
    }
    // A setting keyed by partition (bounds, prior) or eval set (objective): its position.
    let position = |keys: &[(Uuid, &str)], key: &str, what: &str| {
        keys.iter()
            .position(|(id, name)| *name == key || id.to_string() == key)
            .ok_or_else(|| {
                bad(
                    "invalid_setting",
                    format!("{what} names {key:?}, which the search does not"),
                )
            })
    };
    let partition_keys: Vec<(Uuid, &str)> =
        partitions.iter().map(|p| (p.id, p.name.as_str())).collect();
    let eval_sets = resolve::eval_sets(pool, &new.eval_sets).await?;
    let proxy = crate::validation::choose_one(pool, choice, &eval_sets)
        .await?
        .proxy;
    if let Some(set) = eval_sets
        .iter()
        .find(|s| s.is_choices() && method == "gradient")
    {
        return Err(bad(
            "invalid_method",
            format!(
                "eval set {:?} holds multiple-choice questions: a gradient search tunes on held-out text; use sample",
                set.name
            ),
        ));
    }
    let set_keys: Vec<(Uuid, &str)> = eval_sets.iter().map(|s| (s.id, s.name.as_str())).collect();

    let objective = match &new.objective {
        None => vec![1.0; eval_sets.len()],
        Some(map) => {
            let mut w = vec![0.0; eval_sets.len()];
            for (key, weight) in map {
                w[position(&set_keys, key, "objective")?] = *weight;
            }
            w
        }
    };
    let objective = normalised(objective, "objective")?;
    let k = partitions.len();
    let (mut min, mut max) = (vec![0.0; k], vec![1.0; k]);
    for (key, (lo, hi)) in new.bounds.iter().flatten() {
        let i = position(&partition_keys, key, "bounds")?;
        (min[i], max[i]) = (*lo, *hi);
    }
    let bounds =
        Bounds::new(min, max).map_err(|e| Error::unprocessable("invalid_bounds", e.to_string()))?;
    let prior = match &new.prior {
        None => None,
        Some(map) => {
            let mut w = vec![0.0; k];
            for (key, weight) in map {
                w[position(&partition_keys, key, "prior")?] = *weight;
            }
            Some(normalised(w, "prior")?)
        }
    };
    if let Some(epochs) = new.max_epochs
        && !(epochs.is_finite() && epochs > 0.0)
    {
        return Err(bad(
            "invalid_setting",
            "max_epochs is a positive number of passes over each partition's data",
        ));
    }
    if new.tokens == Some(0) {
        return Err(bad(
            "invalid_setting",
            "tokens is a positive training budget",
        ));
    }
    let check = check_choice(new.check.as_deref(), method)?;
    let seed = new.seed.unwrap_or(0);
    if seed > i64::MAX as u64 {
        return Err(bad("invalid_seed", format!("seed is at most {}", i64::MAX)));
    }

    let base = resolve::base(pool, new.base.as_deref()).await?;
    let recipe = resolve::recipe(pool, new.recipe.as_deref()).await?;
    let ids: Vec<Uuid> = partitions.iter().map(|p| p.id).collect();
    let missing = models::not_ready(pool, base.id, recipe.id, &ids).await?;
    let names: HashMap<Uuid, String> = partitions.iter().map(|p| (p.id, p.name.clone())).collect();
    let name = |p: Uuid| names.get(&p).cloned().unwrap_or_default();
    let train = new.train.unwrap_or(true);
    if let Some(training) =
        units::train_missing(pool, (base.id, recipe.id), &missing, &name, train).await?
    {
        return Ok(Created::Training(training));
    }

    // The partitions' sizes in the base's tokens, as their unit models' training counted
    // them: the natural mixture, and the data `max_epochs` bounds shares by.
    let counted = models::data_tokens(pool, base.id, recipe.id, &ids).await?;
    let uncounted = partitions.iter().find(|p| !counted.contains_key(&p.id));
    let tokens: Vec<u64> = match uncounted {
        None => partitions.iter().map(|p| counted[&p.id]).collect(),
        // A unit model that was imported, not trained here, counted nothing: sizes in bytes.
        Some(_) => partitions.iter().map(|p| p.bytes.max(0) as u64).collect(),
    };
    let natural = crate::search::natural(&tokens);
    let bounds = match new.max_epochs {
        None => bounds,
        Some(epochs) => {
            if let Some(p) = uncounted {
                return Err(Error::unprocessable(
                    "invalid_setting",
                    format!(
                        "max_epochs needs each partition's size in tokens, which training its unit model counts; the unit model of {:?} was not trained here",
                        p.name
                    ),
                ));
            }
            let budget = new
                .tokens
                .unwrap_or(recipe.config.0.tokens * partitions.len() as u64);
            let caps = crate::search::epoch_caps(&tokens, budget, epochs);
            bounds.capped(&caps).map_err(|e| {
                let e = match e {
                    SearchError::BelowMinimum { partition, min, cap } => format!(
                        "partition {:?} may hold at most {cap:.4} of the mixture at max_epochs {epochs} and {budget} tokens, below its minimum {min}",
                        partitions[partition].name
                    ),
                    e => format!("{e} (max_epochs {epochs}, {budget} tokens)"),
                };
                Error::unprocessable("invalid_bounds", e)
            })?
        }
    };
    let prior = prior.unwrap_or_else(|| natural.clone());
    let check = match check {
        Check::Default if proxy.reads_token_nll() => {
            // The proxy the validations trust most where every eval set's agree, else the
            // paper's merge.
            let mut trusted = Vec::with_capacity(eval_sets.len());
            for set in &eval_sets {
                trusted.push(
                    match crate::validation::choose(pool, Choice::Best, set).await {
                        Ok(chosen) => Some(chosen.proxy),
                        Err(Error::Refused { .. }) => None,
                        Err(e) => return Err(e),
                    },
                );
            }
            let agreed = trusted[0].filter(|p| trusted.iter().all(|t| *t == Some(*p)));
            Some(agreed.unwrap_or(Proxy::Average))
        }
        Check::Default | Check::None => None,
        Check::Choose(choice) => Some(
            crate::validation::choose_one(pool, choice, &eval_sets)
                .await?
                .proxy,
        ),
    };
    let check = check.filter(|c| *c != proxy);
    if let Some(c) = check
        && c.reads_token_nll()
        && !proxy.reads_token_nll()
    {
        return Err(bad(
            "invalid_proxy",
            format!(
                "check {}: a search scored by merging checks with a merge (average, fisher, task_vectors@λ)",
                c.key()
            ),
        ));
    }

    // A gradient search scores its points on the report halves and never looks at them
    // otherwise.
    let (eval_set_ids, tune_set_ids) = if method == "gradient" {
        let (mut report, mut tune) = (Vec::new(), Vec::new());
        for set in &eval_sets {
            let (t, r) = crate::ingest::split_eval_set(pool, store, set)
                .await
                .map_err(split_error)?;
            tune.push(t.id);
            report.push(r.id);
        }
        (report, tune)
    } else {
        (eval_sets.iter().map(|s| s.id).collect(), Vec::new())
    };
    let eval = EvalConfig::default();
    let search = Search {
        id: Uuid::new_v4(),
        base_id: base.id,
        recipe_id: recipe.id,
        partition_ids: ids,
        eval_set_ids,
        tune_set_ids,
        objective,
        method: method.into(),
        proxy: proxy.key(),
        budget: new.budget as i32,
        bounds_min: bounds.min,
        bounds_max: bounds.max,
        prior,
        natural,
        check_proxy: check.map(|c| c.key()),
        seed: seed as i64,
        eval_config: serde_json::to_value(&eval).expect("settings serialise"),
        eval_config_sha256: eval_config_sha256(&eval),
        request,
        job_id: None,
        created_at: chrono::Utc::now(),
    };
    crate::jobs::search::queue(pool, &search).await?;
    Ok(Created::Done(search))
}

/// What a request's `check` asks for.
enum Check {
    Default,
    None,
    Choose(Choice),
}

fn check_choice(name: Option<&str>, method: &str) -> Result<Check> {
    match name {
        None => Ok(Check::Default),
        Some("none") => Ok(Check::None),
        Some(_) if method == "gradient" => Err(bad(
            "invalid_proxy",
            "a gradient search chooses by its merged model's tune objective: no check",
        )),
        Some(name) => Choice::parse(Some(name)).map(Check::Choose),
    }
}

/// Weights that are finite, non-negative and not all zero, scaled to sum 1.
fn normalised(weights: Vec<f64>, what: &str) -> Result<Vec<f64>> {
    if weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
        return Err(bad(
            "invalid_setting",
            format!("{what}: weights are finite and non-negative"),
        ));
    }
    let sum: f64 = weights.iter().sum();
    if sum <= 0.0 {
        return Err(bad(
            "invalid_setting",
            format!("{what}: the weights sum to zero"),
        ));
    }
    Ok(weights.into_iter().map(|w| w / sum).collect())
}

/// Why an eval set could not be split into its tune and report halves.
fn split_error(e: IngestError) -> Error {
    match e {
        e @ IngestError::TooFewToSplit { .. } => {
            Error::unprocessable("eval_set_too_small", e.to_string())
        }
        IngestError::Registry(RegistryError::Database(e)) => e.into(),
        IngestError::Store(e) => e.into(),
        e => Error::internal(e),
    }
}
