//! The paper experiment's report: markdown with the correlations, the ratios, wall times and
//! the training saved, and the proxy-against-trained scatter plot.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use super::{EVAL_DOC, Settings, Times, ratios};
use crate::engine::train::TrainConfig;

pub(super) struct Run<'a> {
    pub(super) settings: &'a Settings,
    pub(super) names: &'a [String],
    pub(super) held_out_docs: &'a BTreeMap<String, usize>,
    pub(super) train_bytes: &'a BTreeMap<String, usize>,
    pub(super) base: &'a Value,
    pub(super) recipe: &'a Value,
    pub(super) sweep: &'a Value,
    /// Each proxy's sweep of the same mixtures: its name, wall seconds and final status.
    pub(super) proxy_sweeps: &'a [(&'static str, f64, Value)],
    pub(super) chosen: &'a [Vec<String>],
    pub(super) ratios: &'a Value,
    pub(super) times: &'a Times,
    /// The validation report's sets of the cloze tasks, and each domain's question count.
    pub(super) tasks: &'a [Value],
    pub(super) questions: &'a BTreeMap<String, usize>,
}

const PROXY_NAMES: [(&str, &str); 6] = [
    ("merged_uniform", "merged, uniform"),
    ("merged_tokens", "merged, token-weighted"),
    ("mean_of_units", "mean of units"),
    ("ensemble", "ensemble"),
    ("fisher", "Fisher-weighted"),
    ("task_vectors", "task vectors"),
];

/// A proxy's name in a table row, with the task-vector scale the report chose for the set.
fn row_name(name: &str, agreement: &Value) -> String {
    match agreement["scale"].as_f64() {
        Some(scale) => format!("{name} (λ {scale})"),
        None => name.to_string(),
    }
}

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

/// `value [lo, hi]` for a measure with its 90% interval, or a dash.
fn with_interval(value: &Value, interval: &Value) -> String {
    match (value.as_f64(), interval[0].as_f64(), interval[1].as_f64()) {
        (Some(v), Some(lo), Some(hi)) => format!("{v:.3} [{lo:.2}, {hi:.2}]"),
        _ => fmt(value),
    }
}

/// What a user choosing among mixtures needs from a proxy, per held-out set: ρ over the
/// mixtures without the set's own domain and over the best quarter, the share of pairs
/// ordered right, and the regret of trusting its best; then each proxy's medians.
fn ranking_measures(sets: &[Value], line: &mut impl FnMut(String)) {
    line("## Can it rank the mixtures a user chooses among?\n".into());
    line("Per held-out set and proxy: ρ over the validated mixtures that leave out the set's own domain (n of them), ρ over the best quarter by trained perplexity, each with a bootstrap 90% interval; the share of pairs of mixtures ordered as training orders them; and regret, how much worse (%) the trained model of the proxy's best mixture is than the best trained one.\n".into());
    line("| eval set | proxy | n excl. | ρ excluding own domain | ρ best quarter | pairs right | regret |".into());
    line("|---|---|---|---|---|---|---|".into());
    let mut medians: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    for set in sets {
        for (key, name) in PROXY_NAMES {
            let a = &set["proxies"][key];
            for measure in ["rho_excluding", "rho_top", "decision_accuracy", "regret"] {
                if let Some(v) = a[measure].as_f64() {
                    medians.entry((key, measure)).or_default().push(v);
                }
            }
            line(format!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                set["eval_set"].as_str().unwrap_or(""),
                row_name(name, a),
                a["n_excluding"],
                with_interval(&a["rho_excluding"], &a["rho_excluding_90"]),
                with_interval(&a["rho_top"], &a["rho_top_90"]),
                a["decision_accuracy"]
                    .as_f64()
                    .map_or("–".into(), |v| format!("{:.0}%", v * 100.0)),
                a["regret"]
                    .as_f64()
                    .map_or("–".into(), |v| format!("{v:.2}%")),
            ));
        }
        let c = &set["ceiling"];
        if c["n"].as_u64().unwrap_or(0) > 0 {
            for measure in ["rho_excluding", "spearman"] {
                if let Some(v) = c[measure].as_f64() {
                    medians.entry(("ceiling", measure)).or_default().push(v);
                }
            }
            line(format!(
                "| {} | *ceiling: two seeds, {} mixtures (ρ over all {})* | {} | {} | | | |",
                set["eval_set"].as_str().unwrap_or(""),
                c["n"],
                with_interval(&c["spearman"], &c["spearman_90"]),
                c["n_excluding"],
                with_interval(&c["rho_excluding"], &c["rho_excluding_90"]),
            ));
        }
    }
    line(String::new());
    let ceiling = |measure: &str| {
        median(
            medians
                .get(&("ceiling", measure))
                .cloned()
                .unwrap_or_default(),
        )
    };
    if let Some(c) = ceiling("spearman") {
        line(format!(
            "- The ceiling, training against itself with a second seed: median ρ {c:.3}, median ρ excluding own domain {}.",
            ceiling("rho_excluding").map_or("–".into(), |v| format!("{v:.3}"))
        ));
    }
    for (key, name) in PROXY_NAMES {
        let m = |measure: &str| median(medians.get(&(key, measure)).cloned().unwrap_or_default());
        line(format!(
            "- {name}: median ρ excluding own domain {}, median ρ best quarter {}, median pairs right {}, median regret {}.",
            m("rho_excluding").map_or("–".into(), |v| format!("{v:.3}")),
            m("rho_top").map_or("–".into(), |v| format!("{v:.3}")),
            m("decision_accuracy").map_or("–".into(), |v| format!("{:.0}%", v * 100.0)),
            m("regret").map_or("–".into(), |v| format!("{v:.2}%")),
        ));
    }
    // The goal: median ρ excluding own domain ≥ 0.8 (or within 0.1 of the ceiling where the
    // ceiling is lower), with median ρ over all mixtures ≥ 0.9.
    let spearman_medians: BTreeMap<&str, f64> = sets
        .iter()
        .flat_map(|set| {
            PROXY_NAMES
                .iter()
                .filter_map(move |(k, _)| Some((*k, set["proxies"][k]["spearman"].as_f64()?)))
        })
        .fold(BTreeMap::<&str, Vec<f64>>::new(), |mut m, (k, v)| {
            m.entry(k).or_default().push(v);
            m
        })
        .into_iter()
        .filter_map(|(k, v)| Some((k, median(v)?)))
        .collect();
    let bar = match ceiling("rho_excluding") {
        Some(c) if c < 0.8 => c - 0.1,
        _ => 0.8,
    };
    let met: Vec<&str> = PROXY_NAMES
        .iter()
        .filter(|(k, _)| {
            let excl = median(
                medians
                    .get(&(*k, "rho_excluding"))
                    .cloned()
                    .unwrap_or_default(),
            );
            excl.is_some_and(|e| e >= bar) && spearman_medians.get(k).is_some_and(|r| *r >= 0.9)
        })
        .map(|(_, name)| *name)
        .collect();
    line(format!(
        "- A proxy with median ρ excluding own domain ≥ {bar:.3} and median ρ ≥ 0.9: {}.",
        if met.is_empty() {
            "**not met** by any proxy".to_string()
        } else {
            format!("met by {}", met.join(", "))
        }
    ));
    line(String::new());
}

pub(super) fn write_report(c: &Run, report: &Value, plot: &Path) -> String {
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
    if !c.questions.is_empty() {
        line(format!(
            "| cloze tasks | per domain, questions from passages of the next documents, kept out of training too: {} |",
            c.questions
                .iter()
                .map(|(d, n)| format!("{d} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    line(format!(
        "| sweep | every mixture of 1 to 3 domains ({}) on every held-out text set, uniform weights, resident merges |",
        c.sweep["mixtures"]
    ));
    line(format!(
        "| validations | {} mixtures ({} pairs, {} triples, a seeded draw), each a model trained from the base with the unit recipe on the union of its domains for k × {} tokens; the first {} trained again with the next seed (the ceiling; their truth the mean of the two) |",
        c.chosen.len(),
        c.chosen.iter().filter(|m| m.len() == 2).count(),
        c.chosen.iter().filter(|m| m.len() == 3).count(),
        recipe.tokens,
        s.twice
    ));
    line(String::new());

    line("## Does the merged proxy rank mixtures as training on them does?\n".into());
    line("Pearson r of log perplexity and Spearman ρ between each proxy and the union-trained model, over the validated mixtures, per held-out set.\n".into());
    let header: Vec<String> = PROXY_NAMES
        .iter()
        .map(|(_, name)| format!("{name} r / ρ"))
        .collect();
    line(format!("| eval set | n | {} |", header.join(" | ")));
    line(format!("|---|---|{}", "---|".repeat(header.len())));
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
    ranking_measures(&sets, &mut line);
    super::tasks::section(c.tasks, &sets, c.questions, &mut line);
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

    line("## Each proxy's sweep\n".into());
    line(format!(
        "The same {} mixtures on the {} held-out sets, swept once per proxy on this machine, one after another (the ensemble's forward passes are each unit model's one pass over each set; its scores are then arithmetic on the stored per-token NLLs).\n",
        c.sweep["mixtures"],
        c.names.len()
    ));
    line(
        "| proxy | seconds | mixtures per second | time against the merge |\n|---|---|---|---|"
            .into(),
    );
    let merge_seconds = c.proxy_sweeps.first().map_or(0.0, |(_, s, _)| *s);
    for (proxy, seconds, sweep) in c.proxy_sweeps {
        let mixtures = sweep["mixtures"].as_f64().unwrap_or(0.0);
        line(format!(
            "| {proxy} | {seconds:.0} | {:.2} | {:.2}× |",
            mixtures / seconds.max(1e-9),
            seconds / merge_seconds.max(1e-9)
        ));
    }
    line(String::new());

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
pub(super) fn scatter(report: &Value, path: &Path) -> Result<()> {
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
