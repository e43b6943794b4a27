//! `mixpool search`: a ratio search asked of a running server, followed with a progress bar
//! (plain lines when stderr is not a terminal), then the proposal, the answer (the best point
//! evaluated, or the best by its check proxy), the natural and uniform mixtures and the
//! predictor's fit (a `sample` search's) as tables, or the whole search as
//! JSON with `--json`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Map, Value, json};

use super::api::{Api, Progress, number, table};
use super::{Models, Server};

#[derive(Args)]
pub struct SearchArgs {
    /// Comma-separated partitions whose mixture weights are searched.
    #[arg(long, value_delimiter = ',', required = true)]
    pub partitions: Vec<String>,
    /// An eval set of the objective (repeat for more).
    #[arg(long = "eval", required = true)]
    pub eval_sets: Vec<String>,
    /// An eval set's weight in the objective, `EVAL=W` (repeat; default: equal weights).
    #[arg(long = "objective")]
    pub objective: Vec<String>,
    /// Points to evaluate before the proposal (`sample`), or steps to take (`gradient`).
    #[arg(long)]
    pub budget: u32,
    /// `sample`: Dirichlet rounds steered by a fitted predictor; `gradient`: steps along the
    /// merged model's α-gradient, tuned on one half of each eval set, scored on the other.
    #[arg(long, value_parser = ["sample", "gradient"])]
    pub method: Option<String>,
    /// The proxy the points are scored by: average (default), ensemble, units, fisher,
    /// task_vectors@λ, or as the eval sets' validations choose: task_vectors or best
    /// (`sample` searches; a gradient search takes the average).
    #[arg(long)]
    pub proxy: Option<String>,
    /// Bounds on a partition's weight, `PARTITION=MIN,MAX` (repeat).
    #[arg(long = "bound")]
    pub bounds: Vec<String>,
    /// Where the search starts, `PARTITION=W` (repeat; default: the natural mixture, each
    /// partition in proportion to its tokens).
    #[arg(long = "prior")]
    pub prior: Vec<String>,
    /// No partition repeated more than this many times in a training run of `--tokens`:
    /// each weight at most max_epochs × its tokens / the budget.
    #[arg(long)]
    pub max_epochs: Option<f64>,
    /// The training budget `--max-epochs` is judged against (default: the recipe's budget
    /// times the number of partitions).
    #[arg(long)]
    pub tokens: Option<u64>,
    /// The proxy the final candidates are scored again with, which then chooses the answer:
    /// a proxy, best or none (default: for ensemble and units searches, the one the
    /// validations trust most, else average).
    #[arg(long)]
    pub check: Option<String>,
    /// The samples' seed: the same search, the same points.
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub models: Models,
    /// Evaluated points shown, best first.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Print the search as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: Server,
}

/// `NAME=VALUE` flags as a JSON object, each value parsed by `value`.
fn keyed(
    flags: &[String],
    what: &str,
    value: impl Fn(&str) -> Option<Value>,
) -> Result<Map<String, Value>> {
    let mut map = Map::new();
    for flag in flags {
        let parsed = flag
            .split_once('=')
            .and_then(|(name, v)| Some((name.trim().to_string(), value(v.trim())?)));
        let Some((name, v)) = parsed else {
            bail!("--{what} {flag:?}: write NAME=VALUE")
        };
        map.insert(name, v);
    }
    Ok(map)
}

pub async fn search(a: SearchArgs) -> Result<()> {
    let number_of = |v: &str| v.parse::<f64>().ok().map(|x| json!(x));
    let mut request =
        json!({"partitions": a.partitions, "eval_sets": a.eval_sets, "budget": a.budget});
    if !a.objective.is_empty() {
        request["objective"] = Value::Object(keyed(&a.objective, "objective", number_of)?);
    }
    if !a.prior.is_empty() {
        request["prior"] = Value::Object(keyed(&a.prior, "prior", number_of)?);
    }
    if !a.bounds.is_empty() {
        let bound = |v: &str| {
            let (lo, hi) = v.split_once(',')?;
            Some(json!([
                lo.trim().parse::<f64>().ok()?,
                hi.trim().parse::<f64>().ok()?
            ]))
        };
        request["bounds"] = Value::Object(keyed(&a.bounds, "bound", bound)?);
    }
    if let Some(seed) = a.seed {
        request["seed"] = json!(seed);
    }
    if let Some(method) = &a.method {
        request["method"] = json!(method);
    }
    if let Some(proxy) = &a.proxy {
        request["proxy"] = json!(proxy);
    }
    if let Some(epochs) = a.max_epochs {
        request["max_epochs"] = json!(epochs);
    }
    if let Some(tokens) = a.tokens {
        request["tokens"] = json!(tokens);
    }
    if let Some(check) = &a.check {
        request["check"] = json!(check);
    }
    a.models.apply(&mut request);
    let api = Api::new(&a.server)?;
    let created = api.create("/v1/searches", request).await?;
    let id = created["id"]
        .as_str()
        .context("the server gave no search id")?;
    let mut progress = Progress::new("searching");
    let search = loop {
        let search = api.get(&format!("/v1/searches/{id}")).await?;
        let count = |k: &str| search["progress"][k].as_u64().unwrap_or(0);
        progress.set(count("evaluated"), count("total"));
        match search["state"].as_str() {
            Some("succeeded") => break search,
            Some(state @ ("failed" | "cancelled")) => {
                progress.finish();
                bail!(
                    "search {id} {state}: {}",
                    search["error"].as_str().unwrap_or("see its job")
                );
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    progress.finish();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&search)?);
        return Ok(());
    }
    let partitions: Vec<&str> = search["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let sets: Vec<&str> = search["eval_sets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    // A gradient search's points rank by the tune halves' objective, which chose them.
    let gradient = search["method"] == "gradient";
    let mut header = vec!["point"];
    if gradient {
        header.push("tune objective");
    }
    header.push("objective");
    header.extend(sets.iter().copied());
    header.extend(partitions.iter().copied());
    let row = |label: String, p: &Value| {
        let mut cells = vec![label];
        if gradient {
            cells.push(number(&p["tune_objective"]));
        }
        cells.push(number(&p["objective"]));
        cells.extend(sets.iter().map(|s| number(&p["perplexity"][s])));
        cells.extend(partitions.iter().map(|n| number(&p["weights"][n])));
        cells
    };
    let mut summary = table(&header);
    summary.add_row(row("proposal".into(), &search["proposal"]));
    // Once done, the answer is the best point evaluated (the proposal among them).
    match search["answer"]["proxy"].as_str() {
        Some(proxy) => summary.add_row(row(format!("answer (by {proxy})"), &search["answer"])),
        None => summary.add_row(row("best evaluated".into(), &search["best"])),
    };
    if let Some(prior) = search["points"].get(0) {
        summary.add_row(row("start".into(), prior));
    }
    for reference in search["references"].as_array().into_iter().flatten() {
        let role = reference["role"].as_str().unwrap_or("reference");
        summary.add_row(row(format!("{role} mixture"), reference));
    }
    let evaluated = &search["progress"]["evaluated"];
    if gradient {
        println!(
            "search {id}: {evaluated} steps scored on {}, tuned on {} ({} backward passes)\n{summary}",
            sets.join(", "),
            search["tune_sets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            search["gradient_passes"]
        );
    } else {
        let fit = &search["fit"];
        println!(
            "search {id}: {evaluated} points evaluated; the predictor's cross-validated Spearman ρ {} over {} points\n{summary}",
            number(&fit["cv_spearman"]),
            fit["n"]
        );
    }
    if let Some(check) = search["checked"]["proxy"].as_str() {
        let by = format!(
            "objective by {}",
            search["proxy"].as_str().unwrap_or("the proxy")
        );
        let checked_by = format!("objective by {check}");
        let mut checked = table(&["point", "role", by.as_str(), checked_by.as_str()]);
        for p in search["checked"]["points"].as_array().into_iter().flatten() {
            checked.add_row(vec![
                format!("#{}", p["position"]),
                p["role"].as_str().unwrap_or("").to_string(),
                number(&p["objective"]),
                number(&p["checked"]),
            ]);
        }
        println!(
            "\nthe final candidates scored again by {check}, which chose the answer\n{checked}"
        );
    }
    let rank = if gradient {
        "tune_objective"
    } else {
        "objective"
    };
    let mut points: Vec<&Value> = search["points"].as_array().into_iter().flatten().collect();
    points.sort_by(|x, y| {
        let o = |p: &Value| p[rank].as_f64().unwrap_or(f64::INFINITY);
        o(x).total_cmp(&o(y))
    });
    let mut ranked = table(&header);
    for p in points.into_iter().take(a.top) {
        ranked.add_row(row(format!("#{} (round {})", p["position"], p["round"]), p));
    }
    println!("\nevaluated points, best first\n{ranked}");
    Ok(())
}
