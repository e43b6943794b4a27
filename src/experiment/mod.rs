//! `mixpool experiment paper`: the paper's protocol on the eight-domain corpus, run through
//! the service's own API. It starts `mixpool serve` (API and one worker), holds out
//! documents of each domain as that domain's eval set, pre-trains a base on a seed sample,
//! trains one unit model per domain, sweeps every mixture of 1 to 3 domains, validates 20
//! mixtures of 2 and 3 domains by training on their union, searches the domains' ratios for
//! two objectives and validates what the searches found against the best subset and the
//! uniform mixture (see [`ratios`]), and writes a report (markdown and a proxy-vs-true
//! scatter plot) with the correlations, the ratios, wall times and the training saved.

mod ratios;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::demo::{Client, read_corpus, split, take_bytes};
use crate::engine::data::jsonl;
use crate::engine::train::TrainConfig;
use crate::serve::ServeArgs;

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
    /// Held-out bytes per domain (each document cut to 4,000).
    #[arg(long, default_value_t = 20_000)]
    pub eval_bytes: usize,
    /// Where the report goes.
    #[arg(long, default_value = "docs/results")]
    pub out: PathBuf,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Bytes per domain in the base's pre-training sample.
const SEED_BYTES: usize = 300_000;
const EVAL_DOC: usize = 4_000;

pub async fn run(args: ExperimentArgs) -> Result<()> {
    let domains = read_corpus(&args.corpus)?;
    if domains.len() < 3 {
        bail!("the paper's protocol needs at least 3 domains");
    }
    let running = crate::serve::start(args.serve).await?;
    let (token, _) =
        crate::token::local_admin(&running.pool, &running.data, "experiment-admin").await?;
    let api = Client::new(format!("http://{}", running.addr), &token)?;
    let settings = Settings {
        preset: args.preset,
        base_tokens: args.base_tokens,
        unit_tokens: args.unit_tokens,
        validations: args.validations,
        eval_bytes: args.eval_bytes,
        out: args.out,
    };
    let outcome = protocol(&api, domains, &settings).await;
    // The report is written; the server stops with its worker.
    if let Err(e) = &outcome {
        tracing::error!("the experiment stopped: {e:#}");
    }
    outcome
}

struct Settings {
    preset: String,
    base_tokens: u64,
    unit_tokens: u64,
    validations: usize,
    eval_bytes: usize,
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
    for (name, docs) in domains {
        let (held_out, train) = split(&name, docs, s.eval_bytes, EVAL_DOC);
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

    // Every mixture of 1 to 3 domains on every held-out set.
    let eval_sets: Vec<String> = names.iter().map(|n| format!("held-out-{n}")).collect();
    let phase = Instant::now();
    let request = json!({"partitions": names, "sizes": [1, 3], "eval_sets": eval_sets});
    let sweep = api.send("POST", "/v1/sweeps", request.to_string()).await?;
    let id = sweep["id"].as_str().context("a sweep id")?.to_string();
    let sweep = wait(
        api,
        &format!("/v1/sweeps/{id}?limit=3"),
        |w| match w["state"].as_str() {
            Some("succeeded") => Ok(true),
            Some("failed" | "cancelled") => bail!("the sweep ended {}", w["state"]),
            _ => Ok(false),
        },
    )
    .await?;
    times.0.push(("sweep", phase.elapsed().as_secs_f64()));

    // The ground truth for a seeded draw of pairs and triples.
    let chosen = draw(&names, s.validations);
    let phase = Instant::now();
    let request = json!({"mixtures": chosen, "eval_sets": eval_sets});
    api.send("POST", "/v1/validations", request.to_string())
        .await?;
    let wanted = chosen.len();
    wait(api, "/v1/validations/report", |r| {
        let sets = r["sets"].as_array().map_or(0, Vec::len);
        let complete = r["sets"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["n"].as_u64() == Some(wanted as u64)));
        Ok(sets == eval_sets.len() && complete)
    })
    .await?;
    times.0.push(("validate", phase.elapsed().as_secs_f64()));
    let report = api.get("/v1/validations/report").await?;

    let phase = Instant::now();
    let ratios = ratios::run(api, &names, s.unit_tokens).await?;
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
        chosen: &chosen,
        ratios: &ratios,
        times: &times,
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

struct Run<'a> {
    settings: &'a Settings,
    names: &'a [String],
    held_out_docs: &'a BTreeMap<String, usize>,
    train_bytes: &'a BTreeMap<String, usize>,
    base: &'a Value,
    recipe: &'a Value,
    sweep: &'a Value,
    chosen: &'a [Vec<String>],
    ratios: &'a Value,
    times: &'a Times,
}

const PROXY_NAMES: [(&str, &str); 3] = [
    ("merged_uniform", "merged, uniform"),
    ("merged_tokens", "merged, token-weighted"),
    ("mean_of_units", "mean of units"),
];

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

fn fmt(v: &Value) -> String {
    v.as_f64().map_or("–".into(), |x| format!("{x:.3}"))
}

fn write_report(c: &Run, report: &Value, plot: &Path) -> String {
    let s = c.settings;
    let sets = report["sets"].as_array().cloned().unwrap_or_default();
    let recipe: TrainConfig =
        serde_json::from_value(c.recipe["config"].clone()).unwrap_or_default();
    let pretrain = &c.base["job"]["payload"]["config"];
    let mut md = String::new();
    let mut line = |text: String| {
        md.push_str(&text);
        md.push('\n');
    };
    line(format!(
        "# The paper's protocol on the {}-domain corpus (`{}`)\n",
        c.names.len(),
        s.preset
    ));
    line(format!(
        "Written by `mixpool experiment paper --preset {}` (the service's own API, one worker). \
         Every number below comes from that run; nothing was tuned on the eval sets.\n",
        s.preset
    ));
    line("## Configuration\n".into());
    line("| | |\n|---|---|".into());
    line(format!(
        "| base | `{}` preset, byte-level; pre-trained by a `pretrain` job on `paper-seed` (the first 300 kB of each domain's training documents) for {} tokens: warmup {} steps, cosine from {} to {} |",
        s.preset, s.base_tokens, pretrain["warmup_steps"], pretrain["lr"], pretrain["min_lr"]
    ));
    line(format!(
        "| unit models | one per domain, {} tokens each at a constant {} (batch {} tokens, sequences of {}), on the domain's documents minus the held-out ones |",
        recipe.tokens, recipe.lr, recipe.batch_tokens, recipe.seq_len
    ));
    line(format!(
        "| eval sets | per domain, the first documents (each cut to {EVAL_DOC} bytes) up to {} bytes: {} |",
        s.eval_bytes,
        c.held_out_docs
            .iter()
            .map(|(d, n)| format!("{d} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    line(format!(
        "| sweep | every mixture of 1 to 3 domains ({}) on every eval set, uniform weights, resident merges |",
        c.sweep["mixtures"]
    ));
    line(format!(
        "| validations | {} mixtures ({} pairs, {} triples, a seeded draw), each a model trained from the base with the unit recipe on the union of its domains for k × {} tokens |",
        c.chosen.len(),
        c.chosen.iter().filter(|m| m.len() == 2).count(),
        c.chosen.iter().filter(|m| m.len() == 3).count(),
        recipe.tokens
    ));
    line(String::new());

    line("## Does the merged proxy rank mixtures as training on them does?\n".into());
    line("Pearson r of log perplexity and Spearman ρ between each proxy and the union-trained model, over the validated mixtures, per held-out set.\n".into());
    line("| eval set | n | merged, uniform r / ρ | merged, token-weighted r / ρ | mean of units r / ρ |".into());
    line("|---|---|---|---|---|".into());
    let mut per_proxy: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut merged_ahead = 0;
    for set in &sets {
        let mut cells = Vec::new();
        for (key, _) in PROXY_NAMES {
            let a = &set["proxies"][key];
            if let Some(r) = a["pearson_log_ppl"].as_f64() {
                per_proxy.entry(key).or_default().push(r);
            }
            cells.push(format!(
                "{} / {}",
                fmt(&a["pearson_log_ppl"]),
                fmt(&a["spearman"])
            ));
        }
        let r = |k: &str| {
            set["proxies"][k]["pearson_log_ppl"]
                .as_f64()
                .unwrap_or(f64::NAN)
        };
        if r("merged_uniform") > r("mean_of_units") {
            merged_ahead += 1;
        }
        line(format!(
            "| {} | {} | {} |",
            set["eval_set"].as_str().unwrap_or(""),
            set["n"],
            cells.join(" | ")
        ));
    }
    let medians: Vec<String> = PROXY_NAMES
        .iter()
        .map(|(k, _)| {
            median(per_proxy.get(k).cloned().unwrap_or_default())
                .map_or("–".into(), |m| format!("{m:.3}"))
        })
        .collect();
    line(format!("| **median r** | | {} |", medians.join(" | ")));
    line(String::new());
    let merged = per_proxy.get("merged_uniform").cloned().unwrap_or_default();
    let median_r = median(merged.clone()).unwrap_or(f64::NAN);
    let lowest = merged.iter().copied().fold(f64::INFINITY, f64::min);
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    line(format!(
        "- Median r of the merged (uniform) proxy ≥ 0.97: {} ({median_r:.3}).",
        verdict(median_r >= 0.97)
    ));
    line(format!(
        "- r ≥ 0.9 on every held-out set: {} (lowest {lowest:.3}).",
        verdict(lowest >= 0.9)
    ));
    line(format!(
        "- The merged proxy ahead of the mean of the unit models' perplexities: on {merged_ahead} of {} sets ({}).",
        sets.len(),
        verdict(merged_ahead * 2 > sets.len())
    ));
    line(String::new());
    line(format!(
        "![proxy against truth per held-out set](./{})\n",
        plot.file_name().unwrap().to_string_lossy()
    ));
    line("Each panel: one held-out set; each point a validated mixture; x the proxy's perplexity (blue: merged, uniform weights; grey: mean of the unit models), y the perplexity of the model trained on the mixture's union.\n".into());

    line("## The best mixtures per held-out set (from the sweep)\n".into());
    line("| eval set | best | second | third |\n|---|---|---|---|".into());
    for result in c.sweep["results"].as_array().cloned().unwrap_or_default() {
        let cells: Vec<String> = result["ranking"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|r| {
                let parts: Vec<&str> = r["mixture"]
                    .as_array()
                    .map(|m| m.iter().filter_map(|p| p["partition"].as_str()).collect())
                    .unwrap_or_default();
                format!("{} ({})", parts.join(" + "), fmt(&r["perplexity"]))
            })
            .collect();
        line(format!(
            "| {} | {} |",
            result["eval_set"].as_str().unwrap_or(""),
            cells.join(" | ")
        ));
    }
    line(String::new());

    line(ratios::section(c.ratios));

    line("## Wall times of this run\n".into());
    line("| phase | seconds |\n|---|---|".into());
    for (phase, seconds) in &c.times.0 {
        line(format!("| {phase} | {seconds:.0} |"));
    }
    line(String::new());

    let unit = recipe.tokens;
    let pool_tokens = unit * c.names.len() as u64;
    let swept: u64 = (1..=3u64)
        .map(|k| crate::mixture::count_subsets(c.names.len(), k as usize, k as usize) * k * unit)
        .sum();
    let validated: u64 = c.chosen.iter().map(|m| m.len() as u64 * unit).sum();
    line("## Training compute\n".into());
    line(format!(
        "The pool trained {} unit models for {pool_tokens} tokens in all ({} bytes of training text across the domains). Training a model on every one of the {} swept mixtures instead would take {swept} tokens, {:.1}× as many; the {} validations alone trained {validated} tokens. The sweep itself trains nothing: it merges and evaluates.",
        c.names.len(),
        c.train_bytes.values().sum::<usize>(),
        c.sweep["mixtures"],
        swept as f64 / pool_tokens as f64,
        c.chosen.len()
    ));
    let compared: std::collections::BTreeSet<String> = c.ratios["objectives"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|o| o["rows"].as_array().cloned().unwrap_or_default())
        .map(|r| r["validation"].to_string())
        .collect();
    let compared = compared.len();
    line(format!(
        " The ratio comparison trained {compared} models of {} tokens; the searches and the tune-half sweep trained nothing.",
        c.ratios["tokens"]
    ));
    md
}

/// One panel per held-out set: the validated mixtures' proxy perplexities against the
/// union-trained models'.
fn scatter(report: &Value, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| anyhow::anyhow!("the embedded font does not load"))?;
    let sets = report["sets"].as_array().cloned().unwrap_or_default();
    let columns = 4;
    let rows = sets.len().div_ceil(columns).max(1);
    let root = BitMapBackend::new(path, (1600, 420 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((rows, columns));
    let value = |p: &Value, k: &str| p[k].as_f64();
    for (set, panel) in sets.iter().zip(panels.iter()) {
        let points = set["points"].as_array().cloned().unwrap_or_default();
        let all: Vec<f64> = points
            .iter()
            .flat_map(|p| {
                ["true", "merged_uniform", "mean_of_units"]
                    .into_iter()
                    .filter_map(|k| value(p, k))
            })
            .collect();
        if all.is_empty() {
            continue;
        }
        let (lo, hi) = all
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let pad = (hi - lo).max(1e-3) * 0.08;
        let r = |k: &str| fmt(&set["proxies"][k]["pearson_log_ppl"]);
        let caption = format!(
            "{}  r {} (merged) / {} (mean)",
            set["eval_set"]
                .as_str()
                .unwrap_or("")
                .trim_start_matches("held-out-"),
            r("merged_uniform"),
            r("mean_of_units")
        );
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d((lo - pad)..(hi + pad), (lo - pad)..(hi + pad))?;
        chart
            .configure_mesh()
            .x_desc("proxy perplexity")
            .y_desc("true perplexity")
            .x_labels(5)
            .y_labels(5)
            .label_style(("sans-serif", 13))
            .draw()?;
        chart.draw_series(LineSeries::new(
            [(lo - pad, lo - pad), (hi + pad, hi + pad)],
            BLACK.mix(0.15),
        ))?;
        chart.draw_series(points.iter().filter_map(|p| {
            Some(Circle::new(
                (value(p, "mean_of_units")?, value(p, "true")?),
                4,
                RGBColor(150, 150, 150).filled(),
            ))
        }))?;
        chart.draw_series(points.iter().filter_map(|p| {
            Some(Circle::new(
                (value(p, "merged_uniform")?, value(p, "true")?),
                4,
                RGBColor(31, 119, 180).filled(),
            ))
        }))?;
    }
    root.present()?;
    Ok(())
}
