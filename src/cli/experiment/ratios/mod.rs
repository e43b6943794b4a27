//! The ratio part of the paper's protocol: which proportions of the domains to train on, for
//! three objectives — every held-out set, the code sets, and a transfer target whose domain
//! is held out of the pool (its partition is not searched, only its held-out text aimed at).
//! Each held-out set is split into a tune half and a report half (by document:
//! `<set>.tune`, `<set>.report`). Six mixtures are compared per objective: chosen on the tune
//! halves by a `gradient` search, a `sample` search scored by the merge, a `sample` search
//! over the ensemble's arithmetic checked on the merge, and as the best subset of a sweep;
//! and the uniform and natural mixtures, which need no choosing. Each is validated by a
//! model trained on sequences drawn in its proportions, all for one token budget, and judged
//! on the report halves (and the cloze tasks), which nothing chose on.

mod section;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

pub use self::section::{report, section};
use super::wait;
use crate::cli::demo::Client;

/// Points a `sample` search scored by the merge evaluates before its proposal.
pub const SAMPLE_BUDGET: u32 = 32;
/// Points a `sample` search over the ensemble's arithmetic evaluates (each nearly free).
pub const ENSEMBLE_BUDGET: u32 = 256;
/// Steps a `gradient` search takes.
pub const GRADIENT_STEPS: u32 = 16;
/// Every compared model trains for this many unit budgets (the sweep's largest subsets
/// train 3, a search's mixtures would train 8 at the summed budget).
pub const BUDGET_UNITS: u64 = 4;

/// One objective: the mean log perplexity over these domains' held-out sets, for mixtures
/// of these partitions.
pub struct Objective {
    pub name: String,
    pub domains: Vec<String>,
    pub partitions: Vec<String>,
}

/// The domain a transfer objective aims at, held out of its pool: `tech_docs`, or in a
/// corpus without it the last domain.
fn transfer_target(names: &[String]) -> String {
    names
        .iter()
        .find(|n| *n == "tech_docs")
        .or(names.last())
        .cloned()
        .unwrap_or_default()
}

/// The objectives the protocol searches: every held-out set, the code sets (or, in a corpus
/// without them, the first three domains), and the transfer target from the other domains.
pub fn objectives(names: &[String]) -> Vec<Objective> {
    let code: Vec<String> = ["code_c", "code_python", "tech_docs"]
        .iter()
        .filter(|d| names.iter().any(|n| n == *d))
        .map(|d| d.to_string())
        .collect();
    let code = if code.len() >= 2 {
        code
    } else {
        names.iter().take(3).cloned().collect()
    };
    let target = transfer_target(names);
    vec![
        Objective {
            name: "all held-out sets".into(),
            domains: names.to_vec(),
            partitions: names.to_vec(),
        },
        Objective {
            name: "code".into(),
            domains: code,
            partitions: names.to_vec(),
        },
        Objective {
            name: format!("transfer to {target}, held out of the pool"),
            domains: vec![target.clone()],
            partitions: names.iter().filter(|n| **n != target).cloned().collect(),
        },
    ]
}

fn set(domain: &str, half: &str) -> String {
    format!("held-out-{domain}.{half}")
}

/// A mixture chosen for an objective, and what choosing it took.
struct Chosen {
    method: &'static str,
    /// Partition name → weight (the members only).
    weights: Map<String, Value>,
    /// Points scored to choose it (0: nothing to choose).
    evaluations: u64,
    /// Of them, merged models evaluated (the others are arithmetic on stored NLLs).
    merged: u64,
    /// Backward passes through merged models (`gradient` only).
    passes: u64,
    seconds: f64,
}

/// The searches of one objective: (method, request).
fn searches(objective: &Objective) -> Vec<(&'static str, Value)> {
    let held_out: Vec<String> = objective
        .domains
        .iter()
        .map(|d| format!("held-out-{d}"))
        .collect();
    let tune: Vec<String> = objective.domains.iter().map(|d| set(d, "tune")).collect();
    let partitions = &objective.partitions;
    vec![
        // First: asking for it splits its eval sets into the halves the others use.
        (
            "gradient",
            json!({"partitions": partitions, "eval_sets": held_out, "method": "gradient",
                "budget": GRADIENT_STEPS}),
        ),
        (
            "sample",
            json!({"partitions": partitions, "eval_sets": tune, "method": "sample",
                "budget": SAMPLE_BUDGET}),
        ),
        (
            "sample, ensemble",
            json!({"partitions": partitions, "eval_sets": tune, "method": "sample",
                "budget": ENSEMBLE_BUDGET, "proxy": "ensemble"}),
        ),
    ]
}

/// Runs the searches, the sweep on the tune halves and the validations (on the report
/// halves and `task_sets`, the cloze tasks); returns what the report shows.
pub async fn run(
    api: &Client,
    names: &[String],
    task_sets: &[String],
    unit_tokens: u64,
) -> Result<Value> {
    let objectives = objectives(names);
    let mut chosen: Vec<Vec<Chosen>> = objectives.iter().map(|_| Vec::new()).collect();
    let mut natural: Vec<Map<String, Value>> = Vec::new();
    for (objective, picks) in objectives.iter().zip(&mut chosen) {
        let mut ids = Vec::new();
        let mut found = None;
        for (method, request) in searches(objective) {
            let created = api
                .send("POST", "/v1/searches", request.to_string())
                .await?;
            ids.push((method, id(&created)?));
        }
        for (method, search) in ids {
            let done = wait(
                api,
                &format!("/v1/searches/{search}"),
                |s| match s["state"].as_str() {
                    Some("succeeded") => Ok(true),
                    Some("failed" | "cancelled") => bail!("the {method} search ended: {s}"),
                    _ => Ok(false),
                },
            )
            .await?;
            let job = api
                .get(&format!("/v1/jobs/{}", done["job"].as_str().unwrap_or("")))
                .await?;
            let weights = done["answer"]["weights"]
                .as_object()
                .context("an answer")?
                .clone();
            let evaluations = done["points"].as_array().map_or(0, Vec::len) as u64;
            let checked = done["checked"]["points"].as_array().map_or(0, Vec::len) as u64;
            picks.push(Chosen {
                method,
                weights,
                evaluations: evaluations + checked,
                merged: if done["proxy"] == "ensemble" {
                    checked
                } else {
                    evaluations
                },
                passes: done["gradient_passes"].as_u64().unwrap_or(0),
                seconds: job["result"]["seconds"].as_f64().unwrap_or(f64::NAN),
            });
            if method == "sample" {
                found = done["natural"].as_object().cloned();
            }
        }
        // Every search of the objective evaluated the natural mixture of its partitions.
        natural.push(found.context("a natural mixture")?);
    }

    // Every subset of 1 to 3 domains on the tune halves: the best subset per objective.
    let phase = Instant::now();
    let tune_sets: Vec<String> = names.iter().map(|d| set(d, "tune")).collect();
    let request = json!({"partitions": names, "sizes": [1, 3], "eval_sets": tune_sets});
    let sweep = api.send("POST", "/v1/sweeps", request.to_string()).await?;
    let sweep_id = id(&sweep)?;
    let sweep = wait(
        api,
        &format!("/v1/sweeps/{sweep_id}?limit=10000"),
        |w| match w["state"].as_str() {
            Some("succeeded") => Ok(true),
            Some("failed" | "cancelled") => bail!("the sweep ended {}", w["state"]),
            _ => Ok(false),
        },
    )
    .await?;
    let sweep_seconds = phase.elapsed().as_secs_f64();
    // Mixture (its partitions, sorted) → tune set → perplexity.
    let mut swept: BTreeMap<Vec<String>, BTreeMap<String, f64>> = BTreeMap::new();
    for result in sweep["results"].as_array().cloned().unwrap_or_default() {
        let eval = result["eval_set"].as_str().unwrap_or("").to_string();
        for r in result["ranking"].as_array().cloned().unwrap_or_default() {
            let mut parts: Vec<String> = r["mixture"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .filter_map(|p| p["partition"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            parts.sort();
            if let Some(ppl) = r["perplexity"].as_f64() {
                swept.entry(parts).or_default().insert(eval.clone(), ppl);
            }
        }
    }
    for ((objective, picks), natural) in objectives.iter().zip(&mut chosen).zip(&natural) {
        let score = |ppl: &BTreeMap<String, f64>| -> Option<f64> {
            let logs: Option<Vec<f64>> = objective
                .domains
                .iter()
                .map(|d| ppl.get(&set(d, "tune")).map(|p| p.ln()))
                .collect();
            logs.map(|l| l.iter().sum::<f64>() / l.len() as f64)
        };
        let best = swept
            .iter()
            .filter(|(parts, _)| parts.iter().all(|p| objective.partitions.contains(p)))
            .filter_map(|(parts, ppl)| score(ppl).map(|s| (s, parts)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, parts)| parts.clone())
            .context("a swept mixture")?;
        let candidates = swept
            .keys()
            .filter(|parts| parts.iter().all(|p| objective.partitions.contains(p)))
            .count() as u64;
        picks.push(Chosen {
            method: "best subset",
            weights: best.iter().map(|p| (p.clone(), json!(1.0))).collect(),
            evaluations: candidates,
            merged: candidates,
            passes: 0,
            seconds: sweep_seconds,
        });
        for (method, weights) in [
            (
                "uniform",
                objective
                    .partitions
                    .iter()
                    .map(|p| (p.clone(), json!(1.0)))
                    .collect(),
            ),
            ("natural", natural.clone()),
        ] {
            picks.push(Chosen {
                method,
                weights,
                evaluations: 0,
                merged: 0,
                passes: 0,
                seconds: 0.0,
            });
        }
    }

    // One model per chosen mixture, judged on the report halves and the cloze tasks.
    let report_sets: Vec<String> = names.iter().map(|d| set(d, "report")).collect();
    let judged: Vec<&String> = report_sets.iter().chain(task_sets).collect();
    let tokens = BUDGET_UNITS * unit_tokens;
    let mixtures: Vec<Value> = chosen
        .iter()
        .flatten()
        .map(|c| Value::Object(c.weights.clone()))
        .collect();
    let request = json!({"mixtures": mixtures, "eval_sets": judged, "tokens": tokens});
    let created = api
        .send("POST", "/v1/validations", request.to_string())
        .await?;
    let ids: Vec<String> = created["items"]
        .as_array()
        .context("validations")?
        .iter()
        .map(id)
        .collect::<Result<_>>()?;
    let mut validations = Vec::with_capacity(ids.len());
    for v in &ids {
        validations.push(
            wait(api, &format!("/v1/validations/{v}"), |v| {
                match v["state"].as_str() {
                    Some("failed") => bail!("a validation failed: {v}"),
                    Some("ready") => {
                        Ok(v["results"].as_array().map_or(0, Vec::len) >= judged.len())
                    }
                    _ => Ok(false),
                }
            })
            .await?,
        );
    }

    let mut out = Vec::new();
    let mut at = 0;
    for (objective, picks) in objectives.iter().zip(&chosen) {
        let mut rows = Vec::new();
        for c in picks {
            let validation = &validations[at];
            at += 1;
            rows.push(row(api, objective, c, validation, task_sets).await?);
        }
        out.push(
            json!({"objective": objective.name, "domains": objective.domains,
            "partitions": objective.partitions, "rows": rows}),
        );
    }
    Ok(
        json!({"tokens": tokens, "objectives": out, "sweep_mixtures": swept.len(),
        "cloze": !task_sets.is_empty()}),
    )
}

/// A compared mixture's row: how it was chosen, its merge's and its trained model's
/// perplexity (geometric mean over the objective's report halves), and the trained model's
/// bits per byte on the gold answers of the objective's cloze tasks.
async fn row(
    api: &Client,
    objective: &Objective,
    c: &Chosen,
    validation: &Value,
    task_sets: &[String],
) -> Result<Value> {
    let truth: BTreeMap<String, f64> = validation["results"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|r| {
            Some((
                r["eval_set"].as_str()?.to_string(),
                r["perplexity"].as_f64()?,
            ))
        })
        .collect();
    let (parts, weights): (Vec<String>, Vec<String>) = c
        .weights
        .iter()
        .map(|(p, w)| (p.clone(), w.as_f64().unwrap_or(0.0).to_string()))
        .unzip();
    let mut merged = Vec::new();
    let mut trained = Vec::new();
    let mut bpb = Vec::new();
    for d in &objective.domains {
        let eval = set(d, "report");
        let score = api
            .get(&format!(
                "/v1/score?partitions={}&weights={}&eval={eval}&wait=600",
                parts.join(","),
                weights.join(",")
            ))
            .await?;
        merged.push(
            score["perplexity"]
                .as_f64()
                .context("a merged perplexity")?
                .ln(),
        );
        trained.push(truth.get(&eval).context("a trained perplexity")?.ln());
        let task = super::tasks::set_name(d);
        if task_sets.contains(&task) {
            // A question set's perplexity is 2^(bits per byte of the gold answers).
            bpb.push(truth.get(&task).context("a trained cloze score")?.log2());
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    Ok(json!({
        "method": c.method,
        "weights": c.weights,
        "evaluations": c.evaluations,
        "merged_evaluations": c.merged,
        "gradient_passes": c.passes,
        "seconds": c.seconds,
        "merged": mean(&merged).exp(),
        "trained": mean(&trained).exp(),
        "trained_bpb": (!bpb.is_empty()).then(|| mean(&bpb)),
        "validation": validation["id"],
    }))
}

fn id(v: &Value) -> Result<String> {
    v["id"]
        .as_str()
        .map(String::from)
        .with_context(|| format!("an id in {v}"))
}
