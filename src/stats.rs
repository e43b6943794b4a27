//! How well a proxy ranks mixtures as training does: Pearson's r and Spearman's ρ (Pearson's
//! r of the ranks, ties sharing their average rank, as scipy computes it), ρ over the best
//! mixtures only, the fraction of pairs ordered right, the regret of trusting the proxy's
//! best, and a bootstrap interval for any of them. Lower is better on both sides (they are
//! perplexities).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Pearson's r; `None` for fewer than 3 pairs, unequal lengths, or a constant side.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 3 {
        return None;
    }
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    let r = sxy / (sxx * syy).sqrt();
    r.is_finite().then(|| r.clamp(-1.0, 1.0))
}

/// Spearman's ρ.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() {
        return None;
    }
    pearson(&ranks(x), &ranks(y))
}

/// Spearman's ρ over the best quarter of the mixtures by `truth` (the lowest; at least 3 of
/// them): whether the proxy still ranks the mixtures a user would choose among.
pub fn rho_top(proxy: &[f64], truth: &[f64]) -> Option<f64> {
    if proxy.len() != truth.len() {
        return None;
    }
    let mut order: Vec<usize> = (0..truth.len()).collect();
    order.sort_by(|&a, &b| truth[a].total_cmp(&truth[b]));
    order.truncate(truth.len().div_ceil(4).max(3));
    let pick = |v: &[f64]| order.iter().map(|&i| v[i]).collect::<Vec<_>>();
    spearman(&pick(proxy), &pick(truth))
}

/// The fraction of pairs of mixtures that `proxy` orders as `truth` does. Pairs tied in the
/// truth are left out; a pair tied in the proxy alone counts half. `None` without a pair.
pub fn decision_accuracy(proxy: &[f64], truth: &[f64]) -> Option<f64> {
    if proxy.len() != truth.len() {
        return None;
    }
    let (mut right, mut pairs) = (0.0, 0usize);
    for i in 0..truth.len() {
        for j in i + 1..truth.len() {
            let t = truth[i].total_cmp(&truth[j]);
            if t.is_eq() {
                continue;
            }
            pairs += 1;
            let p = proxy[i].total_cmp(&proxy[j]);
            right += if p.is_eq() {
                0.5
            } else if p == t {
                1.0
            } else {
                0.0
            };
        }
    }
    (pairs > 0).then(|| right / pairs as f64)
}

/// How much worse, in %, the truth of the proxy's best mixture (its lowest; the first of
/// equals) is than the best truth: 0 when the proxy picks the best.
pub fn regret(proxy: &[f64], truth: &[f64]) -> Option<f64> {
    if proxy.len() != truth.len() || proxy.is_empty() {
        return None;
    }
    let chosen = (0..proxy.len()).min_by(|&a, &b| proxy[a].total_cmp(&proxy[b]))?;
    let best = truth.iter().copied().min_by(f64::total_cmp)?;
    Some((truth[chosen] / best - 1.0) * 100.0)
}

/// Resamples in [`bootstrap90`].
const RESAMPLES: usize = 1000;

/// A 90% bootstrap interval of `statistic`: its 5th and 95th percentiles over 1,000
/// resamples of the (proxy, truth) pairs with replacement, from a fixed seed (the same data
/// gives the same interval). `None` when fewer than 3 pairs, or when the statistic is
/// undefined on more than a tenth of the resamples (ties everywhere).
pub fn bootstrap90(
    proxy: &[f64],
    truth: &[f64],
    statistic: impl Fn(&[f64], &[f64]) -> Option<f64>,
) -> Option<(f64, f64)> {
    let n = proxy.len();
    if n != truth.len() || n < 3 {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (mut x, mut y) = (vec![0.0; n], vec![0.0; n]);
    let mut values = Vec::with_capacity(RESAMPLES);
    for _ in 0..RESAMPLES {
        for k in 0..n {
            let i = rng.random_range(0..n);
            (x[k], y[k]) = (proxy[i], truth[i]);
        }
        if let Some(v) = statistic(&x, &y) {
            values.push(v);
        }
    }
    if values.len() * 10 < RESAMPLES * 9 {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    Some((at(0.05), at(0.95)))
}

/// 1-based ranks; tied values share the average of the ranks they span.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut out = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = rank;
        }
        i = j + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values from scipy 1.x: `stats.pearsonr(np.log(x), np.log(y))` and
    /// `stats.spearmanr(x, y)`.
    #[test]
    fn correlations_match_scipy_on_fixed_vectors() {
        let x = [8.61, 8.68, 9.05, 8.70, 9.18, 8.85, 8.64, 8.74, 9.37, 8.80];
        let y = [8.52, 8.71, 8.98, 8.66, 9.30, 8.79, 8.60, 8.81, 9.41, 8.77];
        let log = |v: &[f64]| v.iter().map(|p| p.ln()).collect::<Vec<_>>();
        let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-12;
        assert!(close(pearson(&log(&x), &log(&y)), 0.9779460521386815));
        assert!(close(spearman(&x, &y), 0.9515151515151514));
        // With ties on both sides.
        let a = [1.0, 2.0, 2.0, 3.0, 5.0, 5.0, 5.0, 8.0];
        let b = [2.5, 1.0, 4.0, 4.0, 6.0, 3.0, 7.0, 9.0];
        assert!(close(pearson(&a, &b), 0.8358576752921976));
        assert!(close(spearman(&a, &b), 0.7841896995149691));
    }

    /// Five mixtures worked by hand. Truth ranks them a < b < c < d < e; the proxy swaps b
    /// and c and ties d with e.
    #[test]
    fn ranking_measures_match_a_hand_computed_example() {
        let truth = [10.0, 11.0, 12.0, 13.0, 14.0];
        let proxy = [20.0, 23.0, 22.0, 25.0, 25.0];
        // 10 pairs: (b, c) wrong, (d, e) a proxy tie worth half, the other 8 right.
        assert_eq!(decision_accuracy(&proxy, &truth), Some(8.5 / 10.0));
        // A pair tied in the truth is not a decision: of the other 5, the proxy tie (c, d)
        // counts half and the 4 others are right.
        let truth_tied = [10.0, 10.0, 12.0, 13.0];
        let proxy_tied = [1.0, 2.0, 3.0, 3.0];
        assert_eq!(decision_accuracy(&proxy_tied, &truth_tied), Some(4.5 / 5.0));
        // The best quarter of 5 is 3 mixtures (a, b, c): proxy ranks 1, 3, 2 against 1, 2,
        // 3, so ρ = 1 − 6·(0 + 1 + 1) / (3·8) = 0.5.
        assert_eq!(rho_top(&proxy, &truth), Some(0.5));
        // The proxy's best is a, the true best: no regret; the reverse proxy picks e,
        // 14 / 10 − 1 = 40% worse.
        assert_eq!(regret(&proxy, &truth), Some(0.0));
        let reversed: Vec<f64> = truth.iter().map(|t| -t).collect();
        assert!((regret(&reversed, &truth).unwrap() - 40.0).abs() < 1e-12);
        assert_eq!(decision_accuracy(&reversed, &truth), Some(0.0));
    }

    #[test]
    fn a_bootstrap_interval_holds_the_statistic_and_repeats() {
        let x = [8.61, 8.68, 9.05, 8.70, 9.18, 8.85, 8.64, 8.74, 9.37, 8.80];
        let y = [8.52, 8.71, 8.98, 8.66, 9.30, 8.79, 8.60, 8.81, 9.41, 8.77];
        let (lo, hi) = bootstrap90(&x, &y, spearman).unwrap();
        let rho = spearman(&x, &y).unwrap();
        assert!(lo < rho && rho <= hi && hi <= 1.0, "{lo} {rho} {hi}");
        assert_eq!(bootstrap90(&x, &y, spearman), Some((lo, hi)));
        // A perfect ranking stays perfect in every resample where it is defined.
        let z: Vec<f64> = y.iter().map(|v| v * 2.0).collect();
        assert_eq!(bootstrap90(&z, &y, spearman), Some((1.0, 1.0)));
        assert_eq!(bootstrap90(&x[..2], &y[..2], spearman), None);
    }

    #[test]
    fn too_few_or_constant_values_have_no_correlation() {
        assert_eq!(pearson(&[1.0, 2.0], &[2.0, 1.0]), None);
        assert_eq!(pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[1.0, 2.0]), None);
        assert_eq!(spearman(&[3.0, 2.0, 1.0], &[1.0, 2.0, 3.0]), Some(-1.0));
    }
}
