//! What a report says of one eval set: each validated mixture's point, each proxy's
//! agreement with the trained models (correlations, the ranking measures, accuracy on
//! question sets) and the ceiling of training against itself.

use std::collections::BTreeMap;

use serde::Serialize;
use uuid::Uuid;

use super::{PROXIES, TRUSTED_AT, at_scale};
use crate::proxy::Scale;
use crate::stats;

/// One validated mixture on one eval set: the union model's perplexity and each proxy's
/// (`None` where its scores are not all stored yet).
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// The validation (of the lowest seed, when there are several).
    pub validation: Uuid,
    pub partitions: Vec<Uuid>,
    /// The trained perplexity: the mean of `truths`.
    pub truth: f64,
    /// The seeds the mixture was trained with, lowest first, and each one's perplexity.
    pub seeds: Vec<i64>,
    pub truths: Vec<f64>,
    /// Each proxy's perplexity, where its scores are all stored (by [`PROXIES`] name, and
    /// the task-vector merge at every scale as `task_vectors@λ`).
    pub proxies: BTreeMap<String, f64>,
    /// Whether none of the mixture's partitions is of the eval set's own domain (the
    /// domains its documents carry, or a question set's tasks); `None` when a partition or
    /// the eval set has none.
    pub excludes_own_domain: Option<bool>,
    /// Sets of questions: the trained model's accuracy (the mean over seeds) and each
    /// proxy's, as `proxies` names them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub true_accuracy: Option<f64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub accuracies: BTreeMap<String, f64>,
}

/// How a proxy's accuracy on a set of questions follows the trained model's.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Correlation {
    pub n: usize,
    pub pearson: Option<f64>,
    pub spearman: Option<f64>,
}

impl Correlation {
    pub(super) fn of(points: &[Point], proxy: &str) -> Correlation {
        let (x, y): (Vec<f64>, Vec<f64>) = points
            .iter()
            .filter_map(|p| Some((*p.accuracies.get(proxy)?, p.true_accuracy?)))
            .unzip();
        Correlation {
            n: x.len(),
            pearson: stats::pearson(&x, &y),
            spearman: stats::spearman(&x, &y),
        }
    }
}

impl Point {
    pub fn proxy(&self, name: &str) -> Option<f64> {
        self.proxies.get(name).copied()
    }
}

/// A proxy's agreement with the truth on one eval set; each correlation with its bootstrap
/// 90% interval (`*_90`, see [`stats::bootstrap90`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Agreement {
    pub n: usize,
    /// Pearson's r between the logs of proxy and true perplexity.
    pub pearson_log_ppl: Option<f64>,
    pub pearson_log_ppl_90: Option<(f64, f64)>,
    pub spearman: Option<f64>,
    pub spearman_90: Option<(f64, f64)>,
    /// The mixtures without a partition of the eval set's own domain: how many, and ρ over
    /// them (the case of a target the partitions do not cover).
    pub n_excluding: usize,
    pub rho_excluding: Option<f64>,
    pub rho_excluding_90: Option<(f64, f64)>,
    /// ρ over the best quarter of the mixtures by their trained perplexity.
    pub rho_top: Option<f64>,
    pub rho_top_90: Option<(f64, f64)>,
    /// The fraction of pairs of mixtures the proxy orders as training does.
    pub decision_accuracy: Option<f64>,
    /// How much worse (%) the trained model of the proxy's best mixture is than the best.
    pub regret: Option<f64>,
    /// The task-vector scale λ the report chose (the one with the highest ρ over these
    /// points, chosen on them: an in-sample choice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
}

impl Agreement {
    /// The agreement of `proxy` with the truth over `points` (those where it is known).
    pub fn of(points: &[Point], proxy: &str) -> Agreement {
        let known: Vec<&Point> = points.iter().filter(|p| p.proxy(proxy).is_some()).collect();
        let pairs = |only_excluding: bool| -> (Vec<f64>, Vec<f64>) {
            known
                .iter()
                .filter(|p| !only_excluding || p.excludes_own_domain == Some(true))
                .map(|p| (p.proxy(proxy).unwrap_or(f64::NAN), p.truth))
                .unzip()
        };
        let (x, y) = pairs(false);
        let (xe, ye) = pairs(true);
        let log_pearson = |x: &[f64], y: &[f64]| {
            let log = |v: &[f64]| v.iter().map(|p| p.ln()).collect::<Vec<_>>();
            stats::pearson(&log(x), &log(y))
        };
        Agreement {
            n: x.len(),
            pearson_log_ppl: log_pearson(&x, &y),
            pearson_log_ppl_90: stats::bootstrap90(&x, &y, log_pearson),
            spearman: stats::spearman(&x, &y),
            spearman_90: stats::bootstrap90(&x, &y, stats::spearman),
            n_excluding: xe.len(),
            rho_excluding: stats::spearman(&xe, &ye),
            rho_excluding_90: stats::bootstrap90(&xe, &ye, stats::spearman),
            rho_top: stats::rho_top(&x, &y),
            rho_top_90: stats::bootstrap90(&x, &y, stats::rho_top),
            decision_accuracy: stats::decision_accuracy(&x, &y),
            regret: stats::regret(&x, &y),
            scale: None,
        }
    }

    /// The task-vector merge's agreement at the scale of [`Scale::GRID`] with the highest ρ
    /// over `points` (λ nearest 1 among equals; λ = 1, the average, while none has a ρ), and
    /// that scale. Each point's `task_vectors` is set to its perplexity at that scale.
    pub fn task_vectors(points: &mut [Point]) -> Agreement {
        let mut grid = Scale::GRID;
        grid.sort_by(|a, b| (a.value() - 1.0).abs().total_cmp(&(b.value() - 1.0).abs()));
        let mut best = (Scale::ONE, Agreement::of(points, &at_scale(Scale::ONE)));
        for scale in grid {
            let agreement = Agreement::of(points, &at_scale(scale));
            if let Some(rho) = agreement.spearman
                && best.1.spearman.is_none_or(|b| rho > b)
            {
                best = (scale, agreement);
            }
        }
        let (scale, mut agreement) = best;
        for point in points.iter_mut() {
            if let Some(value) = point.proxy(&at_scale(scale)) {
                point.proxies.insert("task_vectors".into(), value);
            }
            if let Some(&value) = point.accuracies.get(&at_scale(scale)) {
                point.accuracies.insert("task_vectors".into(), value);
            }
        }
        agreement.scale = Some(scale.value());
        agreement
    }
}

/// Training against itself on one eval set: Spearman's ρ between the trained perplexities of
/// the first two seeds, over the mixtures trained with both (and over those of them without
/// the eval set's own domain), each with its bootstrap 90% interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Ceiling {
    pub n: usize,
    pub spearman: Option<f64>,
    pub spearman_90: Option<(f64, f64)>,
    pub n_excluding: usize,
    pub rho_excluding: Option<f64>,
    pub rho_excluding_90: Option<(f64, f64)>,
}

impl Ceiling {
    pub fn of(points: &[Point]) -> Ceiling {
        let twice = |only_excluding: bool| -> (Vec<f64>, Vec<f64>) {
            points
                .iter()
                .filter(|p| p.truths.len() >= 2)
                .filter(|p| !only_excluding || p.excludes_own_domain == Some(true))
                .map(|p| (p.truths[0], p.truths[1]))
                .unzip()
        };
        let (x, y) = twice(false);
        let (xe, ye) = twice(true);
        Ceiling {
            n: x.len(),
            spearman: stats::spearman(&x, &y),
            spearman_90: stats::bootstrap90(&x, &y, stats::spearman),
            n_excluding: xe.len(),
            rho_excluding: stats::spearman(&xe, &ye),
            rho_excluding_90: stats::bootstrap90(&xe, &ye, stats::spearman),
        }
    }
}

/// The report for one eval set.
#[derive(Debug, Clone, Serialize)]
pub struct SetReport {
    pub eval_set: Uuid,
    pub n: usize,
    pub proxies: BTreeMap<&'static str, Agreement>,
    /// How well training ranks the mixtures against itself: the best any proxy can do.
    pub ceiling: Ceiling,
    /// With at least [`TRUSTED_AT`] validated mixtures: the proxy with the highest ρ.
    pub best_proxy: Option<&'static str>,
    /// Sets of questions: each proxy's accuracy against the trained model's (ρ and r on
    /// bits per byte of the gold answers are the perplexity's, 2^bits_per_byte_gold).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<BTreeMap<&'static str, Correlation>>,
    /// Why a correlation is missing, when one is.
    pub note: Option<String>,
    pub points: Vec<Point>,
}

/// The proxy with the highest ρ over `n` validated mixtures (the first of equals), once `n`
/// reaches [`TRUSTED_AT`].
pub(super) fn best_proxy(
    n: usize,
    proxies: &BTreeMap<&'static str, Agreement>,
) -> Option<&'static str> {
    if n < TRUSTED_AT {
        return None;
    }
    let mut best: Option<(&'static str, f64)> = None;
    for name in PROXIES {
        let Some(rho) = proxies.get(name).and_then(|a| a.spearman) else {
            continue;
        };
        if best.is_none_or(|(_, b)| rho > b) {
            best = Some((name, rho));
        }
    }
    best.map(|(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(truth: f64, proxy: f64, excludes_own_domain: Option<bool>) -> Point {
        Point {
            validation: Uuid::nil(),
            partitions: Vec::new(),
            truth,
            seeds: vec![0],
            truths: vec![truth],
            proxies: [
                ("merged_uniform".into(), proxy),
                ("mean_of_units".into(), proxy),
            ]
            .into(),
            excludes_own_domain,
            true_accuracy: None,
            accuracies: BTreeMap::new(),
        }
    }

    #[test]
    fn the_best_proxy_is_named_once_enough_mixtures_are_validated() {
        let with = |rho: [Option<f64>; 6]| -> BTreeMap<&'static str, Agreement> {
            PROXIES
                .into_iter()
                .zip(rho)
                .map(|(name, spearman)| {
                    (
                        name,
                        Agreement {
                            spearman,
                            ..Agreement::default()
                        },
                    )
                })
                .collect()
        };
        let proxies = with([Some(0.8), Some(0.9), Some(0.7), None, Some(0.85), Some(0.6)]);
        assert_eq!(best_proxy(TRUSTED_AT - 1, &proxies), None);
        assert_eq!(best_proxy(TRUSTED_AT, &proxies), Some("merged_tokens"));
        // Equals: the first in report order; unknown ρ never wins.
        let proxies = with([Some(0.9), Some(0.9), None, Some(0.85), None, Some(0.9)]);
        assert_eq!(best_proxy(20, &proxies), Some("merged_uniform"));
        assert_eq!(best_proxy(20, &with([None; 6])), None);
    }

    /// Four mixtures scored at three scales: λ = 0.5 ranks them in reverse, λ = 2 and λ = 3
    /// both right (λ = 2 is chosen, nearer 1), λ = 1 (the average) with one pair swapped.
    #[test]
    fn the_task_vector_scale_is_the_one_that_ranks_the_validations_best() {
        let truths = [10.0, 11.0, 12.0, 13.0];
        let at = |values: [f64; 4]| values;
        let table = [
            (Scale::GRID[0], at([4.0, 3.0, 2.0, 1.0])),
            (Scale::ONE, at([1.0, 3.0, 2.0, 4.0])),
            (Scale::GRID[3], at([1.0, 2.0, 3.0, 4.0])),
            (Scale::GRID[4], at([1.0, 2.0, 3.5, 4.0])),
        ];
        let mut points: Vec<Point> = truths
            .iter()
            .enumerate()
            .map(|(i, &truth)| {
                let mut p = point(truth, table[1].1[i], None);
                for (scale, values) in &table {
                    p.proxies.insert(at_scale(*scale), values[i]);
                }
                p
            })
            .collect();
        let a = Agreement::task_vectors(&mut points);
        assert_eq!(a.scale, Some(2.0));
        assert_eq!(a.spearman, Some(1.0));
        assert_eq!(a.n, 4);
        for (p, want) in points.iter().zip([1.0, 2.0, 3.0, 4.0]) {
            assert_eq!(p.proxy("task_vectors"), Some(want));
        }
        // Fewer than three points: no ρ anywhere, so the average's scale.
        let mut two = points[..2].to_vec();
        let a = Agreement::task_vectors(&mut two);
        assert_eq!((a.scale, a.spearman, a.n), (Some(1.0), None, 2));
    }

    /// Six mixtures: the three with the eval set's own domain are ranked right, the three
    /// without it in reverse; ρ over those is −1 while ρ over all stays high.
    #[test]
    fn the_mixtures_without_the_own_domain_are_ranked_apart() {
        let points = [
            point(10.0, 1.0, Some(false)),
            point(11.0, 2.0, Some(false)),
            point(12.0, 3.0, Some(false)),
            point(13.0, 6.0, Some(true)),
            point(14.0, 5.0, Some(true)),
            point(15.0, 4.0, Some(true)),
        ];
        let a = Agreement::of(&points, "merged_uniform");
        assert_eq!((a.n, a.n_excluding), (6, 3));
        assert_eq!(a.rho_excluding, Some(-1.0));
        // 15 pairs, the 3 among the last three wrong.
        assert_eq!(a.decision_accuracy, Some(12.0 / 15.0));
        assert_eq!(a.regret, Some(0.0));
        // ρ over all: d² = 0 + 0 + 0 + 4 + 0 + 4 = 8, 1 − 6·8 / (6·35).
        assert!((a.spearman.unwrap() - (1.0 - 48.0 / 210.0)).abs() < 1e-12);
        // The best quarter of six is the three best, ranked right.
        assert_eq!(a.rho_top, Some(1.0));
        // A proxy known on no point has nothing to say.
        let none = Agreement::of(&points, "merged_tokens");
        assert_eq!(none, Agreement::default());
        // Without domains there is no `excluding` set.
        let unknown: Vec<Point> = points
            .iter()
            .map(|p| Point {
                excludes_own_domain: None,
                ..p.clone()
            })
            .collect();
        let a = Agreement::of(&unknown, "merged_uniform");
        assert_eq!((a.n_excluding, a.rho_excluding), (0, None));
    }
}
