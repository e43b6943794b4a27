//! `mixpool score` (one mixture on one eval set, with its per-domain breakdown) and
//! `mixpool check` (a CI gate: a mixture against a baseline or a perplexity ceiling, exit 0
//! when it holds, 1 when it does not, 2 for usage or server errors).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Args};
use serde_json::{Value, json};

use super::api::{Api, Progress, number, table};
use super::pool::print_json;
use super::{Models, Server};

#[derive(Args)]
pub struct ScoreArgs {
    /// The partitions merged (names or ids).
    #[arg(required = true)]
    pub partitions: Vec<String>,
    /// The eval set.
    #[arg(long)]
    pub eval: String,
    /// Weights, one per partition (default: uniform).
    #[arg(long, value_delimiter = ',')]
    pub weights: Option<Vec<f64>>,
    /// uniform or tokens (weights by the partitions' sizes).
    #[arg(long)]
    pub weighting: Option<String>,
    /// average (the merged parameters; default), ensemble (the mixture of the unit models'
    /// distributions), units (the mean of their perplexities), fisher (the average weighted
    /// by each unit's Fisher estimate), task_vectors@λ (base + λ (average − base)), or as
    /// the eval set's validations choose: task_vectors (its best λ) or best.
    #[arg(long)]
    pub proxy: Option<String>,
    #[command(flatten)]
    pub models: Models,
    /// Seconds to wait for training and scoring before giving up.
    #[arg(long, default_value_t = 3600)]
    pub wait: u64,
    /// Print the score as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: Server,
}

#[derive(Args)]
#[command(group(ArgGroup::new("against").required(true).args(["baseline", "max_ppl", "bound"])))]
pub struct CheckArgs {
    /// The mixture checked: comma-separated partitions.
    #[arg(long, value_delimiter = ',', required = true)]
    pub mixture: Vec<String>,
    /// An eval set (repeat for more): the check must hold on each.
    #[arg(long = "eval", required = true)]
    pub eval_sets: Vec<String>,
    /// Weights for the mixture, one per partition (default: uniform).
    #[arg(long, value_delimiter = ',')]
    pub weights: Option<Vec<f64>>,
    /// The mixture to compare with: the check holds when the mixture's perplexity is at
    /// most the baseline's plus --max-regression.
    #[arg(long, value_delimiter = ',')]
    pub baseline: Option<Vec<String>>,
    /// Or a ceiling: the check holds when the mixture's perplexity is at most this.
    #[arg(long, conflicts_with = "metric")]
    pub max_ppl: Option<f64>,
    /// What is checked: perplexity (default), or on question sets bits_per_byte_gold or
    /// accuracy.
    #[arg(long, value_parser = ["perplexity", "bits_per_byte_gold", "accuracy"])]
    pub metric: Option<String>,
    /// Or a bound on --metric: the check holds when the mixture's value is at most this (at
    /// least, for accuracy).
    #[arg(long)]
    pub bound: Option<f64>,
    /// How much worse than the baseline is still accepted, relative: `2%` or `0.02` (default
    /// 0); for accuracy, the share of the baseline's accuracy that may be lost.
    #[arg(long, value_parser = parse_fraction, requires = "baseline")]
    pub max_regression: Option<f64>,
    /// The proxy both mixtures are scored by: average (default), ensemble, units, fisher,
    /// task_vectors@λ, or as the eval set's validations choose: task_vectors or best.
    #[arg(long)]
    pub proxy: Option<String>,
    #[command(flatten)]
    pub models: Models,
    /// Seconds to wait for training and scoring before giving up (exit 2).
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
    /// Print the verdict as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: Server,
}

/// `2%` → 0.02, `0.02` → 0.02.
fn parse_fraction(s: &str) -> Result<f64, String> {
    let (number, scale) = match s.strip_suffix('%') {
        Some(n) => (n, 0.01),
        None => (s, 1.0),
    };
    match number.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x * scale),
        _ => Err(format!("{s:?}: a fraction like 2% or 0.02")),
    }
}

/// Asks `POST /v1/scores` until every item is done: training unit models and computing
/// scores are waited for, with progress; anything else (a failed model, an unknown name) is
/// an error. Items come back in the order asked: mixtures × eval sets.
async fn scores(api: &Api, mut request: Value, timeout: Duration) -> Result<Vec<Value>> {
    let started = Instant::now();
    let mut progress: Option<Progress> = None;
    request["wait"] = json!(10);
    loop {
        let answer = api.post("/v1/scores", &request).await?;
        let items = answer["results"].as_array().cloned().unwrap_or_default();
        if let Some(bad) = items
            .iter()
            .find(|i| !matches!(i["status"].as_str(), Some("done" | "pending" | "training")))
        {
            if let Some(p) = progress.take() {
                p.finish();
            }
            bail!(
                "{}",
                bad["error"]["message"]
                    .as_str()
                    .unwrap_or("the server refused the scores")
            );
        }
        let done = items.iter().filter(|i| i["status"] == "done").count();
        if done == items.len() {
            if let Some(p) = progress.take() {
                p.finish();
            }
            return Ok(items);
        }
        if started.elapsed() > timeout {
            bail!(
                "{done} of {} scores were ready after {} s (--timeout): see `mixpool jobs ls`",
                items.len(),
                timeout.as_secs()
            );
        }
        if let Some(item) = items.iter().find(|i| i["status"] == "training") {
            if let Some(p) = progress.take() {
                p.finish();
            }
            eprintln!(
                "{}",
                item["message"]
                    .as_str()
                    .unwrap_or("unit models train first")
            );
            let training: Vec<Value> = items
                .iter()
                .filter(|i| i["status"] == "training")
                .flat_map(|i| i["training"].as_array().cloned().unwrap_or_default())
                .collect();
            api.wait_for_training(&training).await?;
            continue;
        }
        progress
            .get_or_insert_with(|| Progress::new("scoring"))
            .set(done as u64, items.len() as u64);
    }
}

/// A mixture of a batch: the partitions alone, or with their weights or weighting.
fn mixture(partitions: &[String], weights: Option<&Vec<f64>>, weighting: Option<&String>) -> Value {
    match (weights, weighting) {
        (None, None) => json!(partitions),
        _ => json!({"partitions": partitions, "weights": weights, "weighting": weighting}),
    }
}

pub async fn score(a: ScoreArgs) -> Result<()> {
    let api = Api::new(&a.server)?;
    let m = mixture(&a.partitions, a.weights.as_ref(), a.weighting.as_ref());
    let mut request = json!({"mixtures": [m], "eval_sets": [a.eval], "proxy": a.proxy});
    a.models.apply(&mut request);
    let items = scores(&api, request, Duration::from_secs(a.wait)).await?;
    let score = &items[0]["score"];
    if a.json {
        return print_json(score);
    }
    let members: Vec<String> = score["mixture"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            format!(
                "{} ({:.3})",
                m["partition"].as_str().unwrap_or("?"),
                m["weight"].as_f64().unwrap_or(0.0)
            )
        })
        .collect();
    let when = if score["cached"] == true {
        "cached"
    } else {
        "computed now"
    };
    if let Some(tasks) = score["per_task"].as_object() {
        println!(
            "{} on {}: accuracy {} ({} by raw log-likelihood), {} bits/byte of the gold answers, {} questions; {when}",
            members.join(" + "),
            a.eval,
            number(&score["accuracy"]),
            number(&score["accuracy_raw"]),
            number(&score["bits_per_byte_gold"]),
            score["n"],
        );
        let mut t = table(&[
            "task",
            "accuracy",
            "accuracy (raw)",
            "bits/byte gold",
            "questions",
        ]);
        for (task, r) in tasks {
            t.add_row([
                task.clone(),
                number(&r["accuracy"]),
                number(&r["accuracy_raw"]),
                number(&r["bits_per_byte_gold"]),
                r["n"].to_string(),
            ]);
        }
        println!("{t}");
        return Ok(());
    }
    println!(
        "{} on {}: perplexity {} ({} bits/byte, {} tokens; {when})",
        members.join(" + "),
        a.eval,
        number(&score["perplexity"]),
        number(&score["bits_per_byte"]),
        score["tokens"],
    );
    if let Some(domains) = score["per_domain"].as_object() {
        let mut t = table(&["domain", "perplexity", "bits/byte", "documents"]);
        for (domain, d) in domains {
            t.add_row([
                domain.clone(),
                number(&d["perplexity"]),
                number(&d["bits_per_byte"]),
                d["documents"].to_string(),
            ]);
        }
        println!("{t}");
    }
    Ok(())
}

/// `mixpool check`: `Ok(true)` when the check holds on every eval set.
pub async fn check(a: CheckArgs) -> Result<bool> {
    let api = Api::new(&a.server)?;
    let mut mixtures = vec![mixture(&a.mixture, a.weights.as_ref(), None)];
    if let Some(baseline) = &a.baseline {
        mixtures.push(json!(baseline));
    }
    let mut request = json!({"mixtures": mixtures, "eval_sets": a.eval_sets, "proxy": a.proxy});
    a.models.apply(&mut request);
    let items = scores(&api, request, Duration::from_secs(a.timeout)).await?;
    let sets = a.eval_sets.len();
    let allowed = a.max_regression.unwrap_or(0.0);
    let metric = a.metric.as_deref().unwrap_or("perplexity");
    // Accuracy is better higher; the others lower.
    let higher_is_better = metric == "accuracy";
    let value_of = |item: &Value, eval: &str| {
        item["score"][metric].as_f64().with_context(|| {
            format!("eval set {eval}: the score has no {metric} (accuracy and bits_per_byte_gold are of question sets)")
        })
    };
    let mut checks = Vec::new();
    for (i, eval) in a.eval_sets.iter().enumerate() {
        let value = value_of(&items[i], eval)?;
        let check = match a.baseline {
            Some(_) => {
                let base = value_of(&items[sets + i], eval)?;
                let regression = if higher_is_better {
                    1.0 - value / base
                } else {
                    value / base - 1.0
                };
                json!({"eval_set": eval, "metric": metric, "value": value, "baseline": base,
                       "perplexity": items[i]["score"]["perplexity"],
                       "baseline_perplexity": items[sets + i]["score"]["perplexity"],
                       "regression": regression, "max_regression": allowed,
                       "holds": regression <= allowed})
            }
            None => {
                let bound = a
                    .bound
                    .or(a.max_ppl)
                    .expect("clap requires --baseline, --bound or --max-ppl");
                let holds = if higher_is_better {
                    value >= bound
                } else {
                    value <= bound
                };
                json!({"eval_set": eval, "metric": metric, "value": value, "bound": bound,
                       "perplexity": items[i]["score"]["perplexity"], "holds": holds})
            }
        };
        checks.push(check);
    }
    let holds = checks.iter().all(|c| c["holds"] == true);
    if a.json {
        print_json(&json!({
            "holds": holds,
            "mixture": a.mixture,
            "weights": a.weights,
            "baseline": a.baseline,
            "proxy": a.proxy.as_deref().unwrap_or("average"),
            "checks": checks,
        }))?;
        return Ok(holds);
    }
    let name = a.mixture.join("+");
    let limit = if higher_is_better {
        "at least"
    } else {
        "at most"
    };
    for c in &checks {
        let verdict = if c["holds"] == true { "ok  " } else { "FAIL" };
        let eval = c["eval_set"].as_str().unwrap_or_default();
        let value = c["value"].as_f64().unwrap_or(f64::NAN);
        match c["baseline"].as_f64() {
            Some(base) => println!(
                "{verdict} {eval}: {metric} of {name} {value:.4} vs baseline {} {base:.4} ({:+.2}% worse, at most {:+.2}%)",
                a.baseline.as_deref().unwrap_or_default().join("+"),
                100.0 * c["regression"].as_f64().unwrap_or(f64::NAN),
                100.0 * allowed
            ),
            None => println!(
                "{verdict} {eval}: {metric} of {name} {value:.4} ({limit} {})",
                number(&c["bound"])
            ),
        }
    }
    let held = checks.iter().filter(|c| c["holds"] == true).count();
    println!(
        "{}: the check holds on {held} of {} eval set(s)",
        if holds { "PASS" } else { "FAIL" },
        checks.len()
    );
    Ok(holds)
}

#[cfg(test)]
mod tests {
    use super::parse_fraction;

    #[test]
    fn regressions_read_as_percent_or_fraction() {
        assert_eq!(parse_fraction("2%"), Ok(0.02));
        assert_eq!(parse_fraction("0.5"), Ok(0.5));
        assert!(parse_fraction("-1%").is_err());
        assert!(parse_fraction("lots").is_err());
    }
}
