//! `mixpool sweep` and `mixpool validate`: a sweep or validations asked of a running server,
//! followed to the end with a progress bar (plain lines when stderr is not a terminal), then
//! the ranking or the proxy report as a table, or as JSON with `--json`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use comfy_table::Table;
use serde_json::{Value, json};

use super::api::{Api, Progress, number};
use super::{Models, Server};

#[derive(Args)]
pub struct SweepArgs {
    /// Comma-separated partitions whose subsets are swept.
    #[arg(long, value_delimiter = ',')]
    pub partitions: Vec<String>,
    /// Subset sizes, `MIN,MAX` (default: every size).
    #[arg(long, value_delimiter = ',', num_args = 1)]
    pub sizes: Option<Vec<usize>>,
    /// A mixture to score, comma-separated (repeat for more), instead of subsets.
    #[arg(long = "mixture")]
    pub mixtures: Vec<String>,
    /// An eval set (repeat for more).
    #[arg(long = "eval", required = true)]
    pub eval_sets: Vec<String>,
    /// uniform (default) or tokens.
    #[arg(long)]
    pub weighting: Option<String>,
    /// average (the merged parameters; default), ensemble (the mixture of the unit models'
    /// distributions: no forward pass once each unit has seen the eval set), units (the mean
    /// of their perplexities, likewise), fisher (the average weighted per coordinate by each
    /// unit's Fisher estimate), task_vectors@λ (base + λ (average − base)), or as the eval
    /// sets' validations choose: task_vectors (the best λ) or best (the best ρ).
    #[arg(long)]
    pub proxy: Option<String>,
    #[command(flatten)]
    pub models: Models,
    /// Ranked mixtures shown per eval set.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Print the sweep as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: Server,
}

#[derive(Args)]
pub struct ValidateArgs {
    /// A mixture to validate, comma-separated: `a,b` trains on the union, `a=0.7,b=0.3` on
    /// sequences drawn in those proportions (repeat for more).
    #[arg(long = "mixture")]
    pub mixtures: Vec<String>,
    /// An eval set (repeat for more).
    #[arg(long = "eval", required = true)]
    pub eval_sets: Vec<String>,
    /// Tokens to train each model for (default: the recipe's budget per partition).
    #[arg(long)]
    pub tokens: Option<u64>,
    /// The training seed (default: the recipe's); the same mixtures validated with two seeds
    /// give the report's ceiling.
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub models: Models,
    /// Print the validations and the report as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: Server,
}

pub async fn sweep(a: SweepArgs) -> Result<()> {
    let api = Api::new(&a.server)?;
    let mut request = json!({"eval_sets": a.eval_sets});
    if !a.partitions.is_empty() {
        request["partitions"] = json!(a.partitions);
    }
    match (&a.sizes, a.mixtures.is_empty()) {
        (Some(_), false) => bail!("give --sizes or --mixture, not both"),
        (Some(sizes), true) => match sizes.as_slice() {
            [min, max] => request["sizes"] = json!([min, max]),
            _ => bail!("--sizes takes MIN,MAX"),
        },
        (None, false) => request["mixtures"] = json!(split(&a.mixtures)),
        (None, true) => {}
    }
    if let Some(weighting) = &a.weighting {
        request["weighting"] = json!(weighting);
    }
    if let Some(proxy) = &a.proxy {
        request["proxy"] = json!(proxy);
    }
    a.models.apply(&mut request);
    let created = api.create("/v1/sweeps", request).await?;
    let id = created["id"]
        .as_str()
        .context("the server gave no sweep id")?;
    let mut progress = Progress::new("scoring");
    let path = format!("/v1/sweeps/{id}?limit={}", a.top);
    let sweep = loop {
        let sweep = api.get(&path).await?;
        let count = |k: &str| sweep["progress"][k].as_u64().unwrap_or(0);
        progress.set(count("scored"), count("total"));
        match sweep["state"].as_str() {
            Some("succeeded") => break sweep,
            Some(state @ ("failed" | "cancelled")) => {
                progress.finish();
                bail!("sweep {id} {state}: see GET /v1/jobs?state={state}");
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    progress.finish();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&sweep)?);
        return Ok(());
    }
    println!("sweep {id}: {} mixtures", sweep["mixtures"]);
    for result in sweep["results"].as_array().into_iter().flatten() {
        let mut table = Table::new();
        table.set_header(["rank", "mixture", "perplexity", "bits/byte"]);
        for row in result["ranking"].as_array().into_iter().flatten() {
            let mixture: Vec<String> = row["mixture"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    let name = m["partition"].as_str().unwrap_or("?");
                    match m["weight"].as_f64() {
                        Some(w) if sweep["weighting"] != "uniform" => format!("{name} ({w:.2})"),
                        _ => name.to_string(),
                    }
                })
                .collect();
            table.add_row([
                row["rank"].to_string(),
                mixture.join(" + "),
                number(&row["perplexity"]),
                number(&row["bits_per_byte"]),
            ]);
        }
        println!(
            "\n{} (best first)\n{table}",
            result["eval_set"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

pub async fn validate(a: ValidateArgs) -> Result<()> {
    if a.mixtures.is_empty() {
        bail!("name at least one --mixture a,b");
    }
    let api = Api::new(&a.server)?;
    let mixtures = a
        .mixtures
        .iter()
        .map(|m| validation_mixture(m))
        .collect::<Result<Vec<Value>>>()?;
    let mut request = json!({"mixtures": mixtures, "eval_sets": a.eval_sets});
    if let Some(tokens) = a.tokens {
        request["tokens"] = json!(tokens);
    }
    if let Some(seed) = a.seed {
        request["seed"] = json!(seed);
    }
    a.models.apply(&mut request);
    let created = api.create("/v1/validations", request).await?;
    let ids: Vec<String> = created["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["id"].as_str().map(str::to_string))
        .collect();
    let mut progress = Progress::new("training and evaluating");
    let wanted = (ids.len() * a.eval_sets.len()) as u64;
    let validations = loop {
        let mut done = 0;
        let mut all = Vec::new();
        for id in &ids {
            let v = api.get(&format!("/v1/validations/{id}")).await?;
            if v["state"] == "failed" {
                progress.finish();
                bail!("validation {id} failed: see its job {}", v["job_id"]);
            }
            let evaluated = v["results"].as_array().map_or(0, |r| {
                r.iter()
                    .filter(|r| a.eval_sets.iter().any(|e| r["eval_set"] == json!(e)))
                    .count()
            });
            done += evaluated as u64;
            all.push(v);
        }
        progress.set(done, wanted);
        if done >= wanted {
            break all;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    progress.finish();
    let report = api.get("/v1/validations/report").await?;
    if a.json {
        let out = json!({"validations": validations, "report": report});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let mut table = Table::new();
    table.set_header(["mixture", "eval set", "true perplexity"]);
    for v in &validations {
        let mixture: Vec<String> = v["mixture"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|name| match v["weights"][name].as_f64() {
                Some(w) => format!("{name} ({w:.2})"),
                None => name.to_string(),
            })
            .collect();
        for r in v["results"].as_array().into_iter().flatten() {
            table.add_row([
                mixture.join(" + "),
                r["eval_set"].as_str().unwrap_or("").to_string(),
                number(&r["perplexity"]),
            ]);
        }
    }
    println!("{table}");
    let proxies: Vec<&str> = report["proxies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut table = Table::new();
    let mut header = vec!["eval set".to_string(), "n".to_string()];
    header.extend(proxies.iter().map(|p| format!("{p} r / ρ")));
    table.set_header(header);
    for set in report["sets"].as_array().into_iter().flatten() {
        let cell = |k: &str| {
            let p = &set["proxies"][k];
            format!(
                "{} / {}",
                number(&p["pearson_log_ppl"]),
                number(&p["spearman"])
            )
        };
        let mut row = vec![
            set["eval_set"].as_str().unwrap_or("").to_string(),
            set["n"].to_string(),
        ];
        row.extend(proxies.iter().map(|p| cell(p)));
        table.add_row(row);
    }
    println!(
        "\nproxy against truth over every validated mixture (Pearson r of log perplexity / Spearman ρ)\n{table}"
    );
    let mut table = Table::new();
    table.set_header([
        "eval set",
        "proxy",
        "ρ excluding own domain (n)",
        "ρ best quarter",
        "pairs right",
        "regret",
    ]);
    for set in report["sets"].as_array().into_iter().flatten() {
        let name = set["eval_set"].as_str().unwrap_or("").to_string();
        for proxy in &proxies {
            let p = &set["proxies"][proxy];
            table.add_row([
                name.clone(),
                proxy.to_string(),
                format!("{} ({})", number(&p["rho_excluding"]), p["n_excluding"]),
                number(&p["rho_top"]),
                p["decision_accuracy"]
                    .as_f64()
                    .map_or("–".into(), |v| format!("{:.0}%", v * 100.0)),
                p["regret"]
                    .as_f64()
                    .map_or("–".into(), |v| format!("{v:.2}%")),
            ]);
        }
        let c = &set["ceiling"];
        if c["n"].as_u64().unwrap_or(0) > 0 {
            table.add_row([
                name.clone(),
                format!(
                    "ceiling: two seeds, ρ {} over {}",
                    number(&c["spearman"]),
                    c["n"]
                ),
                format!("{} ({})", number(&c["rho_excluding"]), c["n_excluding"]),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
    }
    println!("\nwhat choosing among mixtures needs of a proxy\n{table}");
    Ok(())
}

/// `a,b` → `["a", "b"]` (the union); `a=0.7,b=0.3` → `{"a": 0.7, "b": 0.3}` (weights).
fn validation_mixture(flag: &str) -> Result<Value> {
    let parts: Vec<&str> = flag.split(',').map(str::trim).collect();
    if !flag.contains('=') {
        return Ok(json!(parts));
    }
    let mut weights = serde_json::Map::new();
    for part in parts {
        let weight = part
            .split_once('=')
            .and_then(|(name, w)| Some((name.trim(), w.trim().parse::<f64>().ok()?)));
        let Some((name, w)) = weight else {
            bail!("--mixture {flag:?}: give every partition a weight, NAME=W,NAME=W")
        };
        weights.insert(name.to_string(), json!(w));
    }
    Ok(Value::Object(weights))
}

/// `a,b` → `["a", "b"]`, for each mixture given.
fn split(mixtures: &[String]) -> Vec<Vec<&str>> {
    mixtures
        .iter()
        .map(|m| m.split(',').map(str::trim).collect())
        .collect()
}
