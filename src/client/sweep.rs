//! `mixpool sweep` and `mixpool validate`: a sweep or validations asked of a running server,
//! followed to the end with a progress bar (plain lines when stderr is not a terminal), then
//! the ranking or the proxy report as a table, or as JSON with `--json`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use comfy_table::Table;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::Server;

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
    #[arg(long)]
    pub base: Option<String>,
    #[arg(long)]
    pub recipe: Option<String>,
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
    /// A mixture to validate, comma-separated (repeat for more).
    #[arg(long = "mixture")]
    pub mixtures: Vec<String>,
    /// An eval set (repeat for more).
    #[arg(long = "eval", required = true)]
    pub eval_sets: Vec<String>,
    #[arg(long)]
    pub base: Option<String>,
    #[arg(long)]
    pub recipe: Option<String>,
    /// Print the validations and the report as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: Server,
}

struct Api {
    url: String,
    http: reqwest::Client,
}

impl Api {
    fn new(server: &Server) -> Result<Api> {
        Ok(Api {
            url: server.url.trim_end_matches('/').to_string(),
            http: server.http()?,
        })
    }

    /// A JSON answer; a 4xx or 5xx is an error carrying the server's message.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("no answer from {}", self.url))?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = answer["error"]["message"].as_str().unwrap_or("no message");
            bail!("{status}: {message}");
        }
        Ok(answer)
    }

    /// POSTs `body` to `path`; while the server answers that unit models train first, waits
    /// for their jobs and asks again.
    async fn create(&self, path: &str, body: Value) -> Result<Value> {
        loop {
            let answer = self
                .call(reqwest::Method::POST, path, Some(body.clone()))
                .await?;
            let Some(training) = answer["training"].as_array() else {
                return Ok(answer);
            };
            let jobs: Vec<&str> = training.iter().filter_map(|t| t["job"].as_str()).collect();
            let mut progress = Progress::new("training unit models");
            loop {
                let mut done = 0;
                for id in &jobs {
                    let job = self
                        .call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None)
                        .await?;
                    match job["state"].as_str() {
                        Some("succeeded") => done += 1,
                        Some(state @ ("failed" | "cancelled")) => {
                            progress.finish();
                            bail!("training job {id} {state}: {}", job["error"]);
                        }
                        _ => {}
                    }
                }
                progress.set(done, jobs.len() as u64);
                if done == jobs.len() as u64 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            progress.finish();
        }
    }
}

/// Progress on stderr: a bar on a terminal, otherwise a line every ten seconds.
struct Progress {
    bar: Option<ProgressBar>,
    said: Instant,
    what: &'static str,
}

impl Progress {
    fn new(what: &'static str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta} left)")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar.set_message(what);
            bar
        });
        Progress {
            bar,
            said: Instant::now(),
            what,
        }
    }

    fn set(&mut self, done: u64, total: u64) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(done);
            }
            None if self.said.elapsed() >= Duration::from_secs(10) || done == total => {
                eprintln!("{}: {done}/{total}", self.what);
                self.said = Instant::now();
            }
            None => {}
        }
    }

    fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
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
    for (key, value) in [
        ("weighting", &a.weighting),
        ("base", &a.base),
        ("recipe", &a.recipe),
    ] {
        if let Some(v) = value {
            request[key] = json!(v);
        }
    }
    let created = api.create("/v1/sweeps", request).await?;
    let id = created["id"]
        .as_str()
        .context("the server gave no sweep id")?;
    let mut progress = Progress::new("scoring");
    let path = format!("/v1/sweeps/{id}?limit={}", a.top);
    let sweep = loop {
        let sweep = api.call(reqwest::Method::GET, &path, None).await?;
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
    let mut request = json!({"mixtures": split(&a.mixtures), "eval_sets": a.eval_sets});
    for (key, value) in [("base", &a.base), ("recipe", &a.recipe)] {
        if let Some(v) = value {
            request[key] = json!(v);
        }
    }
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
            let v = api
                .call(reqwest::Method::GET, &format!("/v1/validations/{id}"), None)
                .await?;
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
    let report = api
        .call(reqwest::Method::GET, "/v1/validations/report", None)
        .await?;
    if a.json {
        let out = json!({"validations": validations, "report": report});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let mut table = Table::new();
    table.set_header(["mixture", "eval set", "true perplexity"]);
    for v in &validations {
        let mixture: Vec<&str> = v["mixture"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
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
    let mut table = Table::new();
    table.set_header([
        "eval set",
        "n",
        "merged uniform r / ρ",
        "merged tokens r / ρ",
        "mean of units r / ρ",
    ]);
    for set in report["sets"].as_array().into_iter().flatten() {
        let cell = |k: &str| {
            let p = &set["proxies"][k];
            format!(
                "{} / {}",
                number(&p["pearson_log_ppl"]),
                number(&p["spearman"])
            )
        };
        table.add_row([
            set["eval_set"].as_str().unwrap_or("").to_string(),
            set["n"].to_string(),
            cell("merged_uniform"),
            cell("merged_tokens"),
            cell("mean_of_units"),
        ]);
    }
    println!(
        "\nproxy against truth over every validated mixture (Pearson r of log perplexity / Spearman ρ)\n{table}"
    );
    Ok(())
}

/// `a,b` → `["a", "b"]`, for each mixture given.
fn split(mixtures: &[String]) -> Vec<Vec<&str>> {
    mixtures
        .iter()
        .map(|m| m.split(',').map(str::trim).collect())
        .collect()
}

fn number(v: &Value) -> String {
    v.as_f64().map_or("–".into(), |x| format!("{x:.4}"))
}
