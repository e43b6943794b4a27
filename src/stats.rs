//! Correlations between proxy and true perplexities: Pearson's r and Spearman's ρ (Pearson's r
//! of the ranks, ties sharing their average rank, as scipy computes it).

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

    #[test]
    fn too_few_or_constant_values_have_no_correlation() {
        assert_eq!(pearson(&[1.0, 2.0], &[2.0, 1.0]), None);
        assert_eq!(pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[1.0, 2.0]), None);
        assert_eq!(spearman(&[3.0, 2.0, 1.0], &[1.0, 2.0, 3.0]), Some(-1.0));
    }
}
