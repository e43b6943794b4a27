//! The experiment's task evaluations: per domain, a cloze task built from text kept out of
//! training ([`crate::cloze`]), uploaded as a set of questions. The validations score the
//! trained models and every proxy on them, and the report gives each proxy's
//! agreement with training in bits per byte of the gold answers (r and ρ) and in accuracy.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::cloze::{ClozeConfig, build, passages};
use crate::engine::choices::Question;
use crate::engine::data::Document;

/// A passage's bytes: a context of about 160 and a continuation of about 40, with room.
const PASSAGE_BYTES: usize = 240;

fn config(questions: usize) -> ClozeConfig {
    ClozeConfig {
        questions,
        context_bytes: 160,
        continuation_bytes: 40,
        choices: 4,
        seed: 0,
    }
}

/// The eval set of `domain`'s cloze task.
pub(super) fn set_name(domain: &str) -> String {
    format!("cloze-{domain}")
}

/// Up to `questions` cloze questions of `domain` from passages of the first documents of
/// `train`; the documents used leave `train`, so no unit model or validation trains on them.
pub(super) fn questions(
    domain: &str,
    train: &mut Vec<Document>,
    questions: usize,
) -> Vec<Question> {
    let config = config(questions);
    // A quarter more passages than the questions read: some are too short to ask about.
    let wanted = questions * config.choices * 5 / 4;
    let mut texts = Vec::new();
    let mut used = 0;
    while texts.len() < wanted && used < train.len() / 2 {
        texts.extend(passages(&train[used].text, PASSAGE_BYTES));
        used += 1;
    }
    train.drain(..used);
    build(&[(domain.to_string(), texts)], &config)
}

/// One line of JSON per question.
pub(super) fn jsonl(questions: &[Question]) -> String {
    questions
        .iter()
        .map(|q| serde_json::to_string(q).expect("questions serialise") + "\n")
        .collect()
}

const PROXIES: [(&str, &str); 6] = [
    ("merged_uniform", "merged, uniform"),
    ("merged_tokens", "merged, token-weighted"),
    ("mean_of_units", "mean of units"),
    ("ensemble", "ensemble"),
    ("fisher", "Fisher-weighted"),
    ("task_vectors", "task vectors"),
];

fn fmt(v: Option<f64>) -> String {
    v.map_or("–".into(), |x| format!("{x:.3}"))
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

/// The report's section on the cloze tasks: per task, the trained models' figures, then each
/// proxy's r and ρ on bits per byte of the gold answers (beside the same proxy's ρ on
/// the domain's held-out text), its ρ over the mixtures without the task's domain and its
/// accuracy's ρ; then each proxy's medians.
pub(super) fn section(
    tasks: &[Value],
    text: &[Value],
    questions: &BTreeMap<String, usize>,
    line: &mut impl FnMut(String),
) {
    if tasks.is_empty() {
        return;
    }
    line("## Task evaluations: cloze questions per domain\n".into());
    line("Each domain's cloze task is built from documents kept out of every training (`crate::cloze`, seed 0): a passage's first ~160 bytes are the context and its true ~40-byte continuation is the gold choice among the continuations of three other passages of the domain. Scored as OLMES's RC format: per choice, the log-likelihood of its tokens after BOS and the context; `bits_per_byte_gold` is the mean over questions of −ll(gold) / (UTF-8 bytes of the gold choice · ln 2), accuracy the share of questions whose gold choice has the highest ll per byte (chance 25%). Every validated mixture's trained model and every proxy is scored on them (the ensemble and the mean of units from each unit model's NLLs of the choices' tokens). r is Pearson's on bits per byte, ρ Spearman's; \"ρ text\" is the same proxy's ρ on the domain's held-out text, for comparison.\n".into());
    line("| task | questions | trained bits/byte | trained accuracy | proxy | r bits/byte | ρ bits/byte | ρ text | ρ excluding own domain | ρ accuracy |".into());
    line("|---|---|---|---|---|---|---|---|---|---|".into());
    let mut medians: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    for set in tasks {
        let name = set["eval_set"].as_str().unwrap_or("");
        let domain = name.trim_start_matches("cloze-");
        let held_out = text
            .iter()
            .find(|s| s["eval_set"].as_str() == Some(&format!("held-out-{domain}")));
        let points = set["points"].as_array().cloned().unwrap_or_default();
        let mean = |f: &dyn Fn(&Value) -> Option<f64>| {
            let v: Vec<f64> = points.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        let bpb = mean(&|p| p["true"].as_f64().map(f64::log2));
        let accuracy = mean(&|p| p["true_accuracy"].as_f64());
        let asked = questions.get(domain).map_or("–".into(), |n| n.to_string());
        for (i, (key, label)) in PROXIES.iter().enumerate() {
            let a = &set["proxies"][key];
            let acc = &set["accuracy"][key];
            let rho_text = held_out.and_then(|s| s["proxies"][key]["spearman"].as_f64());
            let figures = [
                ("pearson", a["pearson_log_ppl"].as_f64()),
                ("spearman", a["spearman"].as_f64()),
                ("rho_text", rho_text),
                ("rho_excluding", a["rho_excluding"].as_f64()),
                ("accuracy", acc["spearman"].as_f64()),
            ];
            for (measure, v) in figures {
                if let Some(v) = v {
                    medians.entry((key, measure)).or_default().push(v);
                }
            }
            let label = match a["scale"].as_f64() {
                Some(scale) => format!("{label} (λ {scale})"),
                None => label.to_string(),
            };
            let lead = if i == 0 {
                format!(
                    "| {name} | {asked} | {} | {} |",
                    fmt(bpb),
                    accuracy.map_or("–".into(), |a| format!("{:.1}%", a * 100.0))
                )
            } else {
                "| | | | |".into()
            };
            line(format!(
                "{lead} {label} | {} | {} | {} | {} | {} |",
                fmt(figures[0].1),
                fmt(figures[1].1),
                fmt(figures[2].1),
                fmt(figures[3].1),
                fmt(figures[4].1),
            ));
        }
    }
    line(String::new());
    for (key, label) in PROXIES {
        let m = |measure: &str| median(medians.get(&(key, measure)).cloned().unwrap_or_default());
        line(format!(
            "- {label}: over the {} tasks, median r on bits per byte {}, median ρ {} (on held-out text {}), median ρ excluding own domain {}, median ρ of accuracy {}.",
            tasks.len(),
            fmt(m("pearson")),
            fmt(m("spearman")),
            fmt(m("rho_text")),
            fmt(m("rho_excluding")),
            fmt(m("accuracy")),
        ));
    }
    line(String::new());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn questions_leave_training_and_the_section_reads_the_report() {
        let mut train: Vec<Document> = (0..40)
            .map(|i| Document {
                text: (0..500)
                    .map(|j| format!("w{i}x{j}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                domain: None,
            })
            .collect();
        let asked = questions("prose", &mut train, 8);
        assert_eq!(asked.len(), 8);
        // The documents the questions came from left training: the first ones, and only they.
        assert!(train.len() < 40 && train.len() >= 36, "{}", train.len());
        assert!(
            train[0]
                .text
                .starts_with(&format!("w{}x0 ", 40 - train.len()))
        );
        for q in &asked {
            assert!(!train.iter().any(|d| d.text.contains(&q.context)), "{q:?}");
        }
        assert_eq!(jsonl(&asked).lines().count(), 8);

        let point = |truth: f64, acc: f64| json!({"true": truth, "true_accuracy": acc});
        let agreement = json!({"pearson_log_ppl": 0.9, "spearman": 0.8, "rho_excluding": 0.5});
        let tasks = [json!({
            "eval_set": "cloze-prose",
            "proxies": {"merged_uniform": agreement, "task_vectors": {"spearman": 0.7, "scale": 1.5}},
            "accuracy": {"merged_uniform": {"spearman": 0.4}},
            "points": [point(8.0, 0.25), point(2.0, 0.75)],
        })];
        let text = [
            json!({"eval_set": "held-out-prose", "proxies": {"merged_uniform": {"spearman": 0.95}}}),
        ];
        let asked = BTreeMap::from([("prose".to_string(), 8)]);
        let mut md = Vec::new();
        section(&tasks, &text, &asked, &mut |l| md.push(l));
        let md = md.join("\n");
        // Trained: mean of log2 8 and log2 2 bits per byte, accuracy 50%.
        assert!(md.contains("| cloze-prose | 8 | 2.000 | 50.0% | merged, uniform | 0.900 | 0.800 | 0.950 | 0.500 | 0.400 |"), "{md}");
        assert!(md.contains("task vectors (λ 1.5) | – | 0.700 |"), "{md}");
        assert!(
            md.contains("- merged, uniform: over the 1 tasks, median r on bits per byte 0.900"),
            "{md}"
        );
    }
}
