//! The exponentiated-gradient steps of a `gradient` search.

use super::Bounds;

/// How a `gradient` search moves: exponentiated-gradient steps on the simplex, each projected
/// into the bounds. From weights α and the objective's gradient g there, the step is
/// α_k ← α_k · exp(−η (g_k − Σ_j α_j g_j)) / Z (only differences of the g_k matter along
/// the simplex), with η scaled so the largest change of a log-weight is `STEP / √(t + 1)`
/// at step t: the step size does not depend on the scale of the gradient, and shrinks so the
/// iterates settle. The next weights depend only on the current ones and their gradient, so
/// a search that stops resumes from its last stored step.
#[derive(Debug, Clone)]
pub struct Descent {
    pub bounds: Bounds,
}

impl Descent {
    /// The largest change of a log-weight in the first step.
    pub const STEP: f64 = 1.0;
    /// The smallest weight a step starts from: a weight at 0 (the prior's, or the bounds')
    /// could never grow under multiplicative steps.
    const FLOOR: f64 = 1e-6;

    /// The first iterate: the prior within the bounds, with a little of the uniform mixture
    /// so that no partition starts at 0 where its bounds allow more.
    pub fn start(&self, prior: &[f64]) -> Vec<f64> {
        let k = prior.len() as f64;
        let mixed: Vec<f64> = prior.iter().map(|p| 0.98 * p + 0.02 / k).collect();
        self.bounds.project(&mixed)
    }

    /// The iterate after step `t` from `weights`, whose objective has `gradient`.
    pub fn step(&self, t: usize, weights: &[f64], gradient: &[f64]) -> Vec<f64> {
        let along: f64 = weights.iter().zip(gradient).map(|(a, g)| a * g).sum();
        let centred: Vec<f64> = gradient.iter().map(|g| g - along).collect();
        let largest = centred.iter().fold(0.0f64, |m, d| m.max(d.abs()));
        if !(largest.is_finite() && largest > 0.0) {
            return weights.to_vec();
        }
        let eta = Self::STEP / ((t + 1) as f64).sqrt() / largest;
        let moved: Vec<f64> = weights
            .iter()
            .zip(&centred)
            .map(|(a, d)| a.max(Self::FLOOR) * (-eta * d).exp())
            .collect();
        let sum: f64 = moved.iter().sum();
        let moved: Vec<f64> = moved.iter().map(|m| m / sum).collect();
        self.bounds.project(&moved)
    }
}
