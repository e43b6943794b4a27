//! The ratio part of the paper's protocol: which proportions of the domains to train on, for
//! an objective over several held-out sets. Each held-out set is split into a tune half and a
//! report half (by document: `<set>.tune`, `<set>.report`). Four mixtures are chosen on the
//! tune halves — by a `sample` search and a `gradient` search over every domain's weight, as
//! the best subset of a sweep (uniform weights), and the uniform mixture of every domain,
//! which needs no choosing — and each is validated by a model trained on sequences drawn in
//! its proportions, all for one token budget. The report halves, which nothing chose on,
//! judge the trained models.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use super::wait;
use crate::cli::demo::Client;

/// Points a `sample` search evaluates before its proposal.
pub const SAMPLE_BUDGET: u32 = 32;
/// Steps a `gradient` search takes.
pub const GRADIENT_STEPS: u32 = 16;
/// Every compared model trains for this many unit budgets (the sweep's largest subsets
/// train 3, a search's mixtures would train 8 at the summed budget).
pub const BUDGET_UNITS: u64 = 4;

/// One objective: the mean log perplexity over these domains' held-out sets.
pub struct Objective {
    pub name: &'static str,
    pub domains: Vec<String>,
}

/// The objectives the protocol searches: every held-out set, and the code sets (or, in a
/// corpus without them, the first three domains).
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
    vec![
        Objective {
            name: "all held-out sets",
            domains: names.to_vec(),
        },
        Objective {
            name: "code",
            domains: code,
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
    /// Merged models evaluated to choose it (0: nothing to choose).
    evaluations: u64,
    /// Backward passes through merged models (`gradient` only).
    passes: u64,
    seconds: f64,
}

/// Runs the searches, the sweep on the tune halves and the validations; returns what the
/// report shows.
pub async fn run(api: &Client, names: &[String], unit_tokens: u64) -> Result<Value> {
    let objectives = objectives(names);
    // The gradient searches come first: asking for one splits its eval sets into halves,
    // which the other choices then use.
    let mut searches: Vec<(usize, &'static str, String)> = Vec::new();
    for (i, objective) in objectives.iter().enumerate() {
        let sets: Vec<String> = objective
            .domains
            .iter()
            .map(|d| format!("held-out-{d}"))
            .collect();
        let request = json!({"partitions": names, "eval_sets": sets, "method": "gradient",
            "budget": GRADIENT_STEPS});
        let created = api
            .send("POST", "/v1/searches", request.to_string())
            .await?;
        searches.push((i, "gradient", id(&created)?));
        let tune: Vec<String> = objective.domains.iter().map(|d| set(d, "tune")).collect();
        let request = json!({"partitions": names, "eval_sets": tune, "method": "sample",
            "budget": SAMPLE_BUDGET});
        let created = api
            .send("POST", "/v1/searches", request.to_string())
            .await?;
        searches.push((i, "sample", id(&created)?));
    }
    let mut chosen: Vec<Vec<Chosen>> = objectives.iter().map(|_| Vec::new()).collect();
    for (i, method, search) in &searches {
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
        chosen[*i].push(Chosen {
            method,
            weights,
            evaluations: done["points"].as_array().map_or(0, Vec::len) as u64,
            passes: done["gradient_passes"].as_u64().unwrap_or(0),
            seconds: job["result"]["seconds"].as_f64().unwrap_or(f64::NAN),
        });
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
    for (objective, picks) in objectives.iter().zip(&mut chosen) {
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
            .filter_map(|(parts, ppl)| score(ppl).map(|s| (s, parts)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, parts)| parts.clone())
            .context("a swept mixture")?;
        picks.push(Chosen {
            method: "best subset",
            weights: best.iter().map(|p| (p.clone(), json!(1.0))).collect(),
            evaluations: swept.len() as u64,
            passes: 0,
            seconds: sweep_seconds,
        });
        picks.push(Chosen {
            method: "uniform",
            weights: names.iter().map(|p| (p.clone(), json!(1.0))).collect(),
            evaluations: 0,
            passes: 0,
            seconds: 0.0,
        });
    }

    // One model per chosen mixture, judged on the report halves.
    let report_sets: Vec<String> = names.iter().map(|d| set(d, "report")).collect();
    let tokens = BUDGET_UNITS * unit_tokens;
    let mixtures: Vec<Value> = chosen
        .iter()
        .flatten()
        .map(|c| Value::Object(c.weights.clone()))
        .collect();
    let request = json!({"mixtures": mixtures, "eval_sets": report_sets, "tokens": tokens});
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
                        Ok(v["results"].as_array().map_or(0, Vec::len) >= report_sets.len())
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
            }
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            rows.push(json!({
                "method": c.method,
                "weights": c.weights,
                "evaluations": c.evaluations,
                "gradient_passes": c.passes,
                "seconds": c.seconds,
                "merged": mean(&merged).exp(),
                "trained": mean(&trained).exp(),
                "validation": validation["id"],
            }));
        }
        out.push(json!({"objective": objective.name, "domains": objective.domains, "rows": rows}));
    }
    Ok(json!({"tokens": tokens, "objectives": out, "sweep_mixtures": swept.len()}))
}

fn id(v: &Value) -> Result<String> {
    v["id"]
        .as_str()
        .map(String::from)
        .with_context(|| format!("an id in {v}"))
}

/// The report's section on ratios.
pub fn section(ratios: &Value) -> String {
    let mut md = String::new();
    let mut line = |text: String| {
        md.push_str(&text);
        md.push('\n');
    };
    line("## Searching the ratios: does a searched mixture train a better model?\n".into());
    line(format!(
        "Each held-out set is split by document into a tune half and a report half. For each objective (the mean log perplexity over its held-out sets), four mixtures of the {} domains are chosen on the tune halves: by a `sample` search ({SAMPLE_BUDGET} points and the predictor's proposal; its answer is the best of them on the tune halves), by a `gradient` search ({GRADIENT_STEPS} exponentiated-gradient steps on the merged model's α-gradient; its answer is the step with the lowest tune objective), as the best subset of a sweep of every mixture of 1 to 3 domains ({} mixtures, uniform weights), and the uniform mixture of every domain. Each is then validated: a model trained from the base with the unit recipe on sequences drawn from each domain in the mixture's proportions, for {} tokens ({BUDGET_UNITS} unit budgets) whatever the mixture. Both columns of perplexities are the geometric mean over the objective's **report** halves, which no choice looked at.\n",
        ratios["objectives"][0]["domains"]
            .as_array()
            .map_or(0, Vec::len),
        ratios["sweep_mixtures"],
        ratios["tokens"],
    ));
    for objective in ratios["objectives"].as_array().cloned().unwrap_or_default() {
        let domains: Vec<&str> = objective["domains"]
            .as_array()
            .map(|d| d.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        line(format!(
            "### {} ({})\n",
            objective["objective"].as_str().unwrap_or(""),
            domains.join(", ")
        ));
        line("| chosen by | merged evaluations | backward passes | seconds | weights | merged, report halves | trained, report halves |".into());
        line("|---|---|---|---|---|---|---|".into());
        let rows = objective["rows"].as_array().cloned().unwrap_or_default();
        for r in &rows {
            let weights = r["weights"].as_object().cloned().unwrap_or_default();
            let sum: f64 = weights.values().filter_map(Value::as_f64).sum();
            let mut shown: Vec<(String, f64)> = weights
                .iter()
                .map(|(p, w)| (p.clone(), w.as_f64().unwrap_or(0.0) / sum))
                .collect();
            shown.sort_by(|a, b| b.1.total_cmp(&a.1));
            let shown: Vec<String> = shown
                .iter()
                .filter(|(_, w)| *w >= 0.005)
                .map(|(p, w)| format!("{p} {w:.2}"))
                .collect();
            line(format!(
                "| {} | {} | {} | {:.0} | {} | {:.3} | {:.3} |",
                r["method"].as_str().unwrap_or(""),
                r["evaluations"],
                r["gradient_passes"],
                r["seconds"].as_f64().unwrap_or(f64::NAN),
                shown.join(", "),
                r["merged"].as_f64().unwrap_or(f64::NAN),
                r["trained"].as_f64().unwrap_or(f64::NAN),
            ));
        }
        let trained = |m: &str| {
            rows.iter()
                .find(|r| r["method"] == m)
                .and_then(|r| r["trained"].as_f64())
                .unwrap_or(f64::NAN)
        };
        let baseline = trained("best subset").min(trained("uniform"));
        for method in ["sample", "gradient"] {
            let t = trained(method);
            let verdict = if t < baseline {
                format!(
                    "**yes**: {t:.3} against {baseline:.3}, {:.1}% lower",
                    100.0 * (1.0 - t / baseline)
                )
            } else {
                format!(
                    "**no**: {t:.3} against {baseline:.3}, {:.1}% higher",
                    100.0 * (t / baseline - 1.0)
                )
            };
            line(format!(
                "\n- The {method} search's mixture trains a better model than the better of the best subset and the uniform mixture: {verdict}."
            ));
        }
        line(String::new());
    }
    md
}
