//! The report's section on ratios: per objective, the compared mixtures with what choosing
//! them took and how their trained models did, and whether a searched one beat both the
//! uniform and the natural mixture by the goal's 1%.

use serde_json::Value;

use super::super::{Settings, Times};
use super::{BUDGET_UNITS, ENSEMBLE_BUDGET, GRADIENT_STEPS, SAMPLE_BUDGET};

/// The chosen mixtures compared with the references, as the rows name them: the searches'
/// (which the goal counts) and the sweep's best subset.
const CHOSEN: [&str; 4] = ["gradient", "sample", "sample, ensemble", "best subset"];
const SEARCHED: [&str; 3] = ["gradient", "sample", "sample, ensemble"];
/// How much better than both references a searched mixture's trained model must be.
const GOAL: f64 = 0.01;

fn weights(r: &Value) -> String {
    let weights = r["weights"].as_object().cloned().unwrap_or_default();
    let sum: f64 = weights.values().filter_map(Value::as_f64).sum();
    let mut shown: Vec<(String, f64)> = weights
        .iter()
        .map(|(p, w)| (p.clone(), w.as_f64().unwrap_or(0.0) / sum))
        .collect();
    shown.sort_by(|a, b| b.1.total_cmp(&a.1));
    shown
        .iter()
        .filter(|(_, w)| *w >= 0.005)
        .map(|(p, w)| format!("{p} {w:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn figure(v: &Value, digits: usize) -> String {
    v.as_f64().map_or("—".into(), |x| format!("{x:.digits$}"))
}

/// `a` against `b` in percent: negative when lower.
fn percent(a: f64, b: f64) -> f64 {
    100.0 * (a / b - 1.0)
}

pub fn section(ratios: &Value) -> String {
    let mut md = String::new();
    let mut line = |text: String| {
        md.push_str(&text);
        md.push('\n');
    };
    let cloze = ratios["cloze"].as_bool().unwrap_or(false);
    line("## Searching the ratios: does a searched mixture train a better model?\n".into());
    line(format!(
        "Each held-out set is split by document into a tune half and a report half. For each objective (the mean log perplexity over its held-out sets), mixtures of its partitions are chosen on the tune halves: by a `gradient` search ({GRADIENT_STEPS} exponentiated-gradient steps on the merged model's α-gradient), by a `sample` search scored by the merge ({SAMPLE_BUDGET} points and the predictor's proposal), by a `sample` search over the ensemble's arithmetic on stored per-token NLLs ({ENSEMBLE_BUDGET} points, its final candidates checked on the merge, which chooses), and as the best subset of a sweep of every mixture of 1 to 3 domains (uniform weights). Each search answers with the best point it evaluated (the natural and uniform mixtures among them). The uniform mixture and the natural one (each partition in proportion to its tokens) need no choosing. Each mixture is then validated: a model trained from the base with the unit recipe on sequences drawn from each domain in the mixture's proportions, for {} tokens ({BUDGET_UNITS} unit budgets) whatever the mixture. The perplexities are geometric means over the objective's **report** halves, which no choice looked at{}.\n",
        ratios["tokens"],
        if cloze {
            "; the cloze column is the trained model's bits per byte of the gold answers on the objective's domains' cloze tasks, which nothing chose on either"
        } else {
            ""
        },
    ));
    let mut met = 0;
    let objectives = ratios["objectives"].as_array().cloned().unwrap_or_default();
    for objective in &objectives {
        let list = |key: &str| -> String {
            objective[key]
                .as_array()
                .map(|d| {
                    d.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        line(format!(
            "### {} (aims at {}; searches {})\n",
            objective["objective"].as_str().unwrap_or(""),
            list("domains"),
            list("partitions"),
        ));
        line("| chosen by | points scored | of them merged | backward passes | seconds | weights | merged, report halves | trained, report halves | trained, cloze bpb |".into());
        line("|---|---|---|---|---|---|---|---|---|".into());
        let rows = objective["rows"].as_array().cloned().unwrap_or_default();
        for r in &rows {
            line(format!(
                "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} |",
                r["method"].as_str().unwrap_or(""),
                r["evaluations"],
                r["merged_evaluations"],
                r["gradient_passes"],
                r["seconds"].as_f64().unwrap_or(f64::NAN),
                weights(r),
                figure(&r["merged"], 3),
                figure(&r["trained"], 3),
                figure(&r["trained_bpb"], 4),
            ));
        }
        let trained = |m: &str| {
            rows.iter()
                .find(|r| r["method"] == m)
                .and_then(|r| r["trained"].as_f64())
                .unwrap_or(f64::NAN)
        };
        let (uniform, natural) = (trained("uniform"), trained("natural"));
        let reference = uniform.min(natural);
        line(String::new());
        for method in CHOSEN {
            let t = trained(method);
            line(format!(
                "- {method}: {t:.3}, {:+.1}% against uniform ({uniform:.3}), {:+.1}% against natural ({natural:.3}).",
                percent(t, uniform),
                percent(t, natural)
            ));
        }
        let best = SEARCHED
            .iter()
            .map(|m| (trained(m), *m))
            .filter(|(t, _)| t.is_finite())
            .min_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((t, method)) = best {
            let goal = t <= reference * (1.0 - GOAL);
            met += usize::from(goal);
            line(format!(
                "- **Goal (a searched mixture {}% below both references): {}** — the best searched mixture ({method}) is {:+.2}% against the better reference.",
                100.0 * GOAL,
                if goal { "met" } else { "not met" },
                percent(t, reference)
            ));
        }
        // Does the merge rank the compared mixtures as their trained models do?
        let merged: Vec<f64> = rows.iter().filter_map(|r| r["merged"].as_f64()).collect();
        let truth: Vec<f64> = rows.iter().filter_map(|r| r["trained"].as_f64()).collect();
        if merged.len() == truth.len()
            && let Some(rho) = crate::stats::spearman(&merged, &truth)
        {
            line(format!(
                "- The merge ranks these {} mixtures as training does with Spearman ρ {rho:.2}.",
                merged.len()
            ));
        }
        line(String::new());
    }
    line(format!(
        "**In all: the goal is met on {met} of {} objectives** (it asks for 2).\n",
        objectives.len()
    ));
    md
}

/// The report of a `--ratios-only` run: its setup, the ratio section and the wall times.
pub fn report(
    s: &Settings,
    names: &[String],
    train_bytes: &std::collections::BTreeMap<String, usize>,
    ratios: &Value,
    times: &Times,
) -> String {
    let mut md = String::new();
    let mut line = |text: String| {
        md.push_str(&text);
        md.push('\n');
    };
    line(format!(
        "# Searching the ratios on the {}-domain corpus (`{}`)\n",
        names.len(),
        s.preset
    ));
    line(format!(
        "Written by `mixpool experiment paper --preset {} --ratios-only` (the service's own API, one worker): the paper protocol's base ({} tokens on the first 300 kB of each domain's training documents) and unit models ({} tokens each, one per domain: {}), then the ratio part alone. Every number below comes from that run.\n",
        s.preset,
        s.base_tokens,
        s.unit_tokens,
        train_bytes
            .iter()
            .map(|(d, b)| format!("{d} {b} bytes"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    line(section(ratios));
    line("## Wall times of this run\n".into());
    line("| phase | seconds |\n|---|---|".into());
    for (phase, seconds) in &times.0 {
        line(format!("| {phase} | {seconds:.0} |"));
    }
    md
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::objectives;
    use super::section;

    #[test]
    fn the_transfer_objective_holds_its_target_out_of_the_pool() {
        let names: Vec<String> = ["code_c", "fiction", "religion", "tech_docs"]
            .map(String::from)
            .to_vec();
        let o = objectives(&names);
        assert_eq!(o.len(), 3);
        assert_eq!(o[2].domains, ["tech_docs"]);
        assert_eq!(o[2].partitions, ["code_c", "fiction", "religion"]);
        // Without tech_docs, the last domain.
        let o = objectives(&names[..3]);
        assert_eq!(
            (o[2].domains.clone(), o[2].partitions.len()),
            (vec!["religion".to_string()], 2)
        );
    }

    #[test]
    fn the_goal_counts_searches_at_least_one_percent_below_both_references() {
        let row = |method: &str, trained: f64| {
            json!({"method": method, "weights": {"a": 1.0}, "evaluations": 0,
                "merged_evaluations": 0, "gradient_passes": 0, "seconds": 0.0,
                "merged": trained, "trained": trained, "trained_bpb": null})
        };
        let objective = |name: &str, gradient: f64, subset: f64| {
            json!({"objective": name, "domains": ["a"], "partitions": ["a", "b"], "rows": [
                row("gradient", gradient), row("sample", 10.0), row("sample, ensemble", 10.0),
                row("best subset", subset), row("uniform", 10.0), row("natural", 10.1),
            ]})
        };
        let ratios = json!({"tokens": 1, "cloze": false, "objectives": [
            // 1.5% below uniform, the better reference: met.
            objective("first", 9.85, 10.0),
            // 0.5% below: not met; a best subset 5% below is not a search.
            objective("second", 9.95, 9.5),
        ]});
        let md = section(&ratios);
        assert!(
            md.contains("met** — the best searched mixture (gradient) is -1.50%"),
            "{md}"
        );
        assert!(
            md.contains("not met** — the best searched mixture (gradient) is -0.50%"),
            "{md}"
        );
        assert!(md.contains("the goal is met on 1 of 2 objectives"), "{md}");
        assert!(
            md.contains("- best subset: 9.500, -5.0% against uniform"),
            "{md}"
        );
    }
}
