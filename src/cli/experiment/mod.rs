//! `mixpool experiment paper`: the paper's protocol on the eight-domain corpus, run through
//! the service's own API. It starts `mixpool serve` (API and one worker), holds out
//! documents of each domain as that domain's eval set, pre-trains a base on a seed sample,
//! trains one unit model per domain, sweeps every mixture of 1 to 3 domains, validates 20
//! mixtures of 2 and 3 domains by training on their union, searches the domains' ratios for
//! three objectives and validates what the searches found against the best subset and the
//! uniform and natural mixtures (see [`ratios`]; `--ratios-only` runs that part alone), and
//! writes a report (markdown and a proxy-vs-true scatter plot) with the correlations, the
//! ratios, wall times and the training saved.

mod ratios;
mod report;
mod tasks;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use self::report::{Run, scatter, write_report};
use super::demo::{Client, read_corpus, split, take_bytes};
use super::serve::ServeArgs;
use crate::config::Config;
use crate::engine::data::jsonl;

#[derive(Args)]
pub struct ExperimentArgs {
    /// The protocol to run (only `paper` so far).
    #[arg(value_parser = ["paper"])]
    pub protocol: String,
    /// A folder of `<domain>.jsonl` files.
    #[arg(long, default_value = "../shared/corpus", env = "MIXPOOL_CORPUS")]
    pub corpus: PathBuf,
    /// The base's architecture: tiny (CPU) or base-130m (GPU).
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Tokens to pre-train the base on (warmup and cosine decay from 3e-3).
    #[arg(long, default_value_t = 736 * 4096)]
    pub base_tokens: u64,
    /// Tokens every unit model trains for (a constant 3e-4, a tenth of the base's peak).
    #[arg(long, default_value_t = 50 * 4096)]
    pub unit_tokens: u64,
    /// Mixtures of 2 and 3 domains to validate (half each; a seeded draw).
    #[arg(long, default_value_t = 20)]
    pub validations: usize,
    /// How many of them are trained again with another seed: the ceiling of any proxy.
    #[arg(long, default_value_t = 10)]
    pub twice: usize,
    /// Held-out bytes per domain (each document cut to 4,000).
    #[arg(long, default_value_t = 20_000)]
    pub eval_bytes: usize,
    /// Cloze questions per domain, built from documents kept out of training and validated
    /// like the held-out text (0: none).
    #[arg(long, default_value_t = 40)]
    pub questions: usize,
    /// Only the ratio part: the base, the unit models, the searches and their validations
    /// (no proxy sweeps, no validated pairs and triples); the report goes to
    /// `paper-<preset>-ratios.md`.
    #[arg(long)]
    pub ratios_only: bool,
    /// Where the report goes.
    #[arg(long, default_value = "docs/results")]
    pub out: PathBuf,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The proxies the sweep is run with, each timed: the paper's merge (first: the report ranks
/// by it), the ensemble, the Fisher-weighted merge and a task-vector merge (one scale; any
/// costs the same).
const SWEPT_PROXIES: [&str; 4] = ["average", "ensemble", "fisher", "task_vectors@2"];

/// Bytes per domain in the base's pre-training sample.
const SEED_BYTES: usize = 300_000;
const EVAL_DOC: usize = 4_000;

pub async fn run(args: ExperimentArgs, config: &Config) -> Result<()> {
    let domains = read_corpus(&args.corpus)?;
    if domains.len() < 3 {
        bail!("the paper's protocol needs at least 3 domains");
    }
    let app = args.serve.start(config).await?;
    let (token, _) = super::token::local_admin(&app.pool, &app.data, "experiment-admin").await?;
    let api = Client::new(app.url(), &token)?;
    let settings = Settings {
        preset: args.preset,
        base_tokens: args.base_tokens,
        unit_tokens: args.unit_tokens,
        validations: args.validations,
        twice: args.twice.min(args.validations),
        eval_bytes: args.eval_bytes,
        questions: args.questions,
        ratios_only: args.ratios_only,
        out: args.out,
    };
    let outcome = protocol(&api, domains, &settings).await;
    // The report is written; the server stops with its worker.
    if let Err(e) = &outcome {
        tracing::error!("the experiment stopped: {e:#}");
    }
    app.stop();
    app.wait().await?;
    outcome
}

struct Settings {
    preset: String,
    base_tokens: u64,
    unit_tokens: u64,
    validations: usize,
    twice: usize,
    eval_bytes: usize,
    questions: usize,
    ratios_only: bool,
    out: PathBuf,
}

/// Wall times of this run's phases, in seconds.
#[derive(Default)]
struct Times(Vec<(&'static str, f64)>);

async fn protocol(
    api: &Client,
    domains: Vec<(String, Vec<crate::engine::data::Document>)>,
    s: &Settings,
) -> Result<()> {
    let started = Instant::now();
    let mut times = Times::default();
    let names: Vec<String> = domains.iter().map(|(n, _)| n.clone()).collect();
    let mut seed_docs = Vec::new();
    let mut held_out_docs = BTreeMap::new();
    let mut train_bytes = BTreeMap::new();
    let mut partitions = Vec::new();
    let mut questions = BTreeMap::new();
    let mut task_sets = Vec::new();
    for (name, docs) in domains {
        let (held_out, mut train) = split(&name, docs, s.eval_bytes, EVAL_DOC);
        if s.questions > 0 {
            let asked = tasks::questions(&name, &mut train, s.questions);
            let set = tasks::set_name(&name);
            api.send(
                "POST",
                &format!("/v1/eval-sets?name={set}&kind=choices"),
                tasks::jsonl(&asked),
            )
            .await?;
            questions.insert(name.clone(), asked.len());
            task_sets.push(set);
        }
        seed_docs.extend(take_bytes(&train, SEED_BYTES));
        let body = jsonl(&train);
        train_bytes.insert(name.clone(), body.len());
        partitions.push((name.clone(), body));
        api.send(
            "POST",
            &format!("/v1/eval-sets?name=held-out-{name}"),
            jsonl(&held_out),
        )
        .await?;
        held_out_docs.insert(name, held_out.len());
    }
    api.send(
        "POST",
        "/v1/partitions?name=paper-seed&train=false",
        jsonl(&seed_docs),
    )
    .await?;

    // The base, pre-trained by a job.
    let base = format!("paper-{}", s.preset);
    let phase = Instant::now();
    let request = json!({"name": base, "preset": s.preset, "pretrain_on": "paper-seed",
        "pretrain_tokens": s.base_tokens});
    api.send("POST", "/v1/bases", request.to_string()).await?;
    let base_row = wait(api, &format!("/v1/bases/{base}"), |b| {
        match b["state"].as_str() {
            Some("ready") => Ok(true),
            Some("failed") => bail!("pre-training failed: {}", b["job"]["error"]),
            _ => Ok(false),
        }
    })
    .await?;
    times
        .0
        .push(("pre-train the base", phase.elapsed().as_secs_f64()));

    // One unit model per domain.
    let recipe = json!({"name": "paper-unit", "tokens": s.unit_tokens});
    let recipe = api.send("POST", "/v1/recipes", recipe.to_string()).await?;
    let phase = Instant::now();
    // Each upload queues its unit model for the newest base and recipe (these); an upload
    // of bytes already stored finds the partition and its unit model.
    for (name, body) in partitions {
        let path = format!("/v1/partitions?name={name}&domain={name}");
        api.send("POST", &path, body).await?;
    }
    for name in &names {
        wait(
            api,
            &format!("/v1/partitions/{name}"),
            |p| match p["models"][0]["state"].as_str() {
                Some("ready") => Ok(true),
                Some("failed") => bail!("training the unit model of {name} failed"),
                _ => Ok(false),
            },
        )
        .await?;
    }
    times
        .0
        .push(("train the unit models", phase.elapsed().as_secs_f64()));

    if s.ratios_only {
        let phase = Instant::now();
        let ratios = ratios::run(api, &names, &task_sets, s.unit_tokens).await?;
        times.0.push((
            "search the ratios, sweep the tune halves, validate",
            phase.elapsed().as_secs_f64(),
        ));
        times.0.push(("total", started.elapsed().as_secs_f64()));
        std::fs::create_dir_all(&s.out).with_context(|| s.out.display().to_string())?;
        let data = s.out.join(format!("paper-{}-ratios.json", s.preset));
        std::fs::write(&data, serde_json::to_string_pretty(&ratios)?)
            .with_context(|| data.display().to_string())?;
        let markdown = s.out.join(format!("paper-{}-ratios.md", s.preset));
        let text = ratios::report(s, &names, &train_bytes, &ratios, &times);
        std::fs::write(&markdown, text).with_context(|| markdown.display().to_string())?;
        println!("report: {}", markdown.display());
        return Ok(());
    }

    // Every mixture of 1 to 3 domains on every held-out set, with each proxy: the paper's
    // merge first (the sweep the report ranks by), then the others, each timed alone.
    let eval_sets: Vec<String> = names.iter().map(|n| format!("held-out-{n}")).collect();
    let phase = Instant::now();
    let mut proxy_sweeps = Vec::new();
    for proxy in SWEPT_PROXIES {
        let started = Instant::now();
        let request = json!({
            "partitions": names, "sizes": [1, 3], "eval_sets": eval_sets, "proxy": proxy,
        });
        let sweep = api.send("POST", "/v1/sweeps", request.to_string()).await?;
        let id = sweep["id"].as_str().context("a sweep id")?.to_string();
        let sweep = wait(
            api,
            &format!("/v1/sweeps/{id}?limit=3"),
            |w| match w["state"].as_str() {
                Some("succeeded") => Ok(true),
                Some("failed" | "cancelled") => bail!("the {proxy} sweep ended {}", w["state"]),
                _ => Ok(false),
            },
        )
        .await?;
        proxy_sweeps.push((proxy, started.elapsed().as_secs_f64(), sweep));
    }
    let sweep = proxy_sweeps[0].2.clone();
    times
        .0
        .push(("sweep, every proxy", phase.elapsed().as_secs_f64()));

    // The ground truth for a seeded draw of pairs and triples, on the held-out text and the
    // cloze tasks.
    let chosen = draw(&names, s.validations);
    let validated_sets: Vec<&String> = eval_sets.iter().chain(&task_sets).collect();
    let phase = Instant::now();
    let request = json!({"mixtures": chosen, "eval_sets": validated_sets});
    api.send("POST", "/v1/validations", request.to_string())
        .await?;
    let wanted = chosen.len();
    wait(api, "/v1/validations/report", |r| {
        let sets = r["sets"].as_array().map_or(0, Vec::len);
        let complete = r["sets"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["n"].as_u64() == Some(wanted as u64)));
        Ok(sets == validated_sets.len() && complete)
    })
    .await?;
    times.0.push(("validate", phase.elapsed().as_secs_f64()));

    // The first of them trained again with the next seed: how well training agrees with
    // itself, the most any proxy can reach.
    let phase = Instant::now();
    let seed = recipe["config"]["seed"].as_u64().unwrap_or(0) + 1;
    let again = &chosen[..s.twice];
    let request = json!({"mixtures": again, "eval_sets": validated_sets, "seed": seed});
    api.send("POST", "/v1/validations", request.to_string())
        .await?;
    wait(api, "/v1/validations/report", |r| {
        Ok(r["sets"].as_array().is_some_and(|sets| {
            sets.iter()
                .all(|s| s["ceiling"]["n"].as_u64() == Some(again.len() as u64))
        }))
    })
    .await?;
    times.0.push((
        "validate again with another seed",
        phase.elapsed().as_secs_f64(),
    ));
    let mut report = api.get("/v1/validations/report").await?;
    // The held-out text's sets for the report's tables and plot; the tasks' in a section.
    let (text_sets, task_reports): (Vec<Value>, Vec<Value>) = report["sets"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .partition(|set| {
            !task_sets
                .iter()
                .any(|t| set["eval_set"].as_str() == Some(t))
        });
    report["sets"] = Value::Array(text_sets);

    let phase = Instant::now();
    let ratios = ratios::run(api, &names, &task_sets, s.unit_tokens).await?;
    times.0.push((
        "search the ratios, sweep the tune halves, validate",
        phase.elapsed().as_secs_f64(),
    ));
    times.0.push(("total", started.elapsed().as_secs_f64()));

    let context = Run {
        settings: s,
        names: &names,
        held_out_docs: &held_out_docs,
        train_bytes: &train_bytes,
        base: &base_row,
        recipe: &recipe,
        sweep: &sweep,
        proxy_sweeps: &proxy_sweeps,
        chosen: &chosen,
        ratios: &ratios,
        times: &times,
        tasks: &task_reports,
        questions: &questions,
    };
    std::fs::create_dir_all(&s.out).with_context(|| s.out.display().to_string())?;
    let stem = format!("paper-{}", s.preset);
    let plot = s.out.join(format!("{stem}.png"));
    scatter(&report, &plot)?;
    let markdown = s.out.join(format!("{stem}.md"));
    std::fs::write(&markdown, write_report(&context, &report, &plot))
        .with_context(|| markdown.display().to_string())?;
    println!("report: {} and {}", markdown.display(), plot.display());
    Ok(())
}

/// Polls `path` every two seconds until `done` says so (or fails); logs where it stands
/// every half minute.
async fn wait(
    api: &Client,
    path: &str,
    mut done: impl FnMut(&Value) -> Result<bool>,
) -> Result<Value> {
    let mut said = Instant::now();
    loop {
        let answer = api.get(path).await?;
        if done(&answer)? {
            return Ok(answer);
        }
        if said.elapsed() >= Duration::from_secs(30) {
            let running = api.get("/v1/jobs?state=running&limit=1").await?;
            let job = &running["items"][0];
            tracing::info!(
                "waiting on {path}: {} job {} ({})",
                job["kind"].as_str().unwrap_or("no"),
                job["message"].as_str().unwrap_or("queued"),
                job["progress"]
            );
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// A seeded draw of `n` mixtures: half pairs, half triples.
fn draw(names: &[String], n: usize) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (size, count) in [(2, n / 2), (3, n - n / 2)] {
        let all = crate::mixture::subsets(names.len(), size, size);
        let order = crate::engine::data::permutation(all.len(), 2024 + size as u64);
        out.extend(order.iter().take(count).map(|&i| {
            all[i as usize]
                .iter()
                .map(|&j| names[j].clone())
                .collect::<Vec<_>>()
        }));
    }
    out
}
