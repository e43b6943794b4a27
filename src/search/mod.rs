//! Ratio search, the arithmetic: mixture weights on the simplex within per-partition bounds,
//! seeded Dirichlet samples around a centre, and the predictor fitted to the points scored so
//! far — a ridge regression of the objective on Scheffé's quadratic mixture terms (each
//! weight, each product of two), whose quality is reported as the Spearman ρ of its
//! cross-validated predictions — and the exponentiated-gradient steps of a `gradient` search.
//! Nothing here touches the registry or a model.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SearchError {
    #[error("bounds of partition {0}: min and max lie in [0, 1] with min <= max")]
    BadBound(usize),
    #[error(
        "the bounds allow no mixture: the minimums sum to {min_sum}, the maximums to {max_sum}; a mixture's weights sum to 1"
    )]
    Infeasible { min_sum: f64, max_sum: f64 },
    #[error(
        "partition {partition} may hold at most {cap:.4} of the mixture (max_epochs), below its minimum {min}"
    )]
    BelowMinimum {
        partition: usize,
        min: f64,
        cap: f64,
    },
    #[error(
        "the partitions hold too little data: with each repeated at most max_epochs times, their largest shares sum to {max_sum:.4}, short of 1; raise max_epochs or lower the budget"
    )]
    TooLittleData { max_sum: f64 },
}

/// Per-partition bounds on the weights of a mixture (which sum to 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Bounds {
    pub min: Vec<f64>,
    pub max: Vec<f64>,
}

impl Bounds {
    /// `k` partitions without bounds of their own: every weight in [0, 1].
    pub fn open(k: usize) -> Self {
        Bounds {
            min: vec![0.0; k],
            max: vec![1.0; k],
        }
    }

    /// Checked bounds: each in [0, 1] with min <= max, and some mixture within them.
    pub fn new(min: Vec<f64>, max: Vec<f64>) -> Result<Self, SearchError> {
        for (i, (lo, hi)) in min.iter().zip(&max).enumerate() {
            if !(lo.is_finite() && hi.is_finite() && 0.0 <= *lo && lo <= hi && *hi <= 1.0) {
                return Err(SearchError::BadBound(i));
            }
        }
        let (min_sum, max_sum) = (min.iter().sum::<f64>(), max.iter().sum::<f64>());
        if min_sum > 1.0 + 1e-12 || max_sum < 1.0 - 1e-12 {
            return Err(SearchError::Infeasible { min_sum, max_sum });
        }
        Ok(Bounds { min, max })
    }

    /// These bounds with each maximum lowered to its `cap` (see [`epoch_caps`]).
    pub fn capped(&self, caps: &[f64]) -> Result<Bounds, SearchError> {
        let max: Vec<f64> = self.max.iter().zip(caps).map(|(m, c)| m.min(*c)).collect();
        if let Some(partition) = (0..max.len()).find(|&i| self.min[i] > max[i]) {
            return Err(SearchError::BelowMinimum {
                partition,
                min: self.min[partition],
                cap: caps[partition],
            });
        }
        let max_sum = max.iter().sum::<f64>();
        if max_sum < 1.0 - 1e-12 {
            return Err(SearchError::TooLittleData { max_sum });
        }
        Bounds::new(self.min.clone(), max)
    }

    /// Whether `weights` sum to 1 and lie within the bounds (to `tolerance`).
    pub fn contains(&self, weights: &[f64], tolerance: f64) -> bool {
        let sum: f64 = weights.iter().sum();
        (sum - 1.0).abs() <= tolerance
            && weights
                .iter()
                .zip(self.min.iter().zip(&self.max))
                .all(|(w, (lo, hi))| *w >= lo - tolerance && *w <= hi + tolerance)
    }

    /// The closest point to `x` (in Euclidean distance) whose weights sum to 1 within the
    /// bounds: `clamp(x_i - τ, min_i, max_i)` for the τ that makes the sum 1, found by
    /// bisection (the sum falls as τ grows).
    pub fn project(&self, x: &[f64]) -> Vec<f64> {
        let at = |tau: f64| -> Vec<f64> {
            x.iter()
                .zip(self.min.iter().zip(&self.max))
                .map(|(v, (lo, hi))| (v - tau).clamp(*lo, *hi))
                .collect()
        };
        let sum = |tau: f64| at(tau).iter().sum::<f64>();
        let (mut lo, mut hi) = (
            x.iter().fold(f64::INFINITY, |a, b| a.min(*b)) - 1.0,
            x.iter().fold(f64::NEG_INFINITY, |a, b| a.max(*b)),
        );
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if sum(mid) > 1.0 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let mut w = at(0.5 * (lo + hi));
        // The last rounding goes to a weight with room, so the sum is 1 to the last bit that
        // matters.
        let error = 1.0 - w.iter().sum::<f64>();
        if let Some(i) = (0..w.len()).find(|&i| {
            let v = w[i] + error;
            v >= self.min[i] && v <= self.max[i]
        }) {
            w[i] += error;
        }
        w
    }
}

/// The largest share of each partition such that a training run of `budget` tokens drawn in
/// the mixture's proportions repeats no partition more than `max_epochs` times: its tokens ×
/// `max_epochs` / `budget`, at most 1.
pub fn epoch_caps(tokens: &[u64], budget: u64, max_epochs: f64) -> Vec<f64> {
    tokens
        .iter()
        .map(|t| (max_epochs * *t as f64 / budget as f64).min(1.0))
        .collect()
}

/// The natural mixture: each partition in proportion to its tokens (the uniform one where
/// they hold none).
pub fn natural(tokens: &[u64]) -> Vec<f64> {
    let total: u64 = tokens.iter().sum();
    if total == 0 {
        return vec![1.0 / tokens.len() as f64; tokens.len()];
    }
    tokens.iter().map(|t| *t as f64 / total as f64).collect()
}

/// A seeded source of candidate weights: the same seed gives the same candidates, so a
/// search resumed by another worker proposes what the first one would have.
pub struct Sampler {
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(seed: u64) -> Self {
        Sampler {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A Dirichlet sample with mean `centre` (weights summing to 1) and total concentration
    /// `concentration` (larger: closer to the centre), projected into `bounds`.
    pub fn around(&mut self, centre: &[f64], concentration: f64, bounds: &Bounds) -> Vec<f64> {
        let draws: Vec<f64> = centre
            .iter()
            .map(|c| {
                // Every shape stays positive, so no partition is ruled out for good.
                let shape = (c * concentration).max(0.02);
                Gamma::new(shape, 1.0)
                    .expect("a positive shape")
                    .sample(&mut self.rng)
            })
            .collect();
        let total: f64 = draws.iter().sum();
        let x: Vec<f64> = if total > 0.0 {
            draws.iter().map(|d| d / total).collect()
        } else {
            centre.to_vec()
        };
        bounds.project(&x)
    }
}

/// Scheffé's quadratic mixture terms: each weight, then each product of two (i < j). With
/// weights summing to 1 they also express a constant, so there is no separate intercept.
pub fn features(weights: &[f64]) -> Vec<f64> {
    let k = weights.len();
    let mut f = Vec::with_capacity(k + k * (k - 1) / 2);
    f.extend_from_slice(weights);
    for i in 0..k {
        for j in i + 1..k {
            f.push(weights[i] * weights[j]);
        }
    }
    f
}

/// A fitted predictor of the objective from mixture weights.
#[derive(Debug, Clone)]
pub struct Predictor {
    coefficients: Vec<f64>,
    /// The ridge penalty chosen by cross-validation.
    pub lambda: f64,
    /// Spearman's ρ between the cross-validated predictions and the observed objectives
    /// (`None` with fewer than 4 points, or when either is constant).
    pub cv_spearman: Option<f64>,
    /// The points it was fitted to.
    pub n: usize,
}

const LAMBDAS: [f64; 6] = [1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];

impl Predictor {
    /// Fits the ridge regression to `(weights, objective)` points, with the penalty of
    /// [`LAMBDAS`] whose leave-one-out (or 5-fold, from 20 points) predictions err least.
    pub fn fit(points: &[(Vec<f64>, f64)]) -> Predictor {
        let n = points.len();
        let folds = if n >= 20 { 5 } else { n };
        let mut best: Option<(f64, f64, Vec<f64>)> = None;
        for lambda in LAMBDAS {
            let mut predicted = vec![0.0; n];
            if n >= 4 {
                for fold in 0..folds {
                    let train: Vec<(Vec<f64>, f64)> = points
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| i % folds != fold)
                        .map(|(_, p)| p.clone())
                        .collect();
                    let c = ridge(&train, lambda);
                    for (i, p) in points.iter().enumerate().filter(|(i, _)| i % folds == fold) {
                        predicted[i] = dot(&c, &features(&p.0));
                    }
                }
            }
            let error: f64 = points
                .iter()
                .zip(&predicted)
                .map(|(p, q)| (p.1 - q).powi(2))
                .sum();
            if best.as_ref().is_none_or(|(e, _, _)| error < *e) {
                best = Some((error, lambda, predicted));
            }
        }
        let (_, lambda, predicted) = best.expect("a penalty");
        let observed: Vec<f64> = points.iter().map(|p| p.1).collect();
        Predictor {
            coefficients: ridge(points, lambda),
            lambda,
            cv_spearman: (n >= 4)
                .then(|| crate::stats::spearman(&predicted, &observed))
                .flatten(),
            n,
        }
    }

    pub fn predict(&self, weights: &[f64]) -> f64 {
        dot(&self.coefficients, &features(weights))
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Ridge regression without intercept: the coefficients minimising
/// |Φc − y|² + λ·n·|c|² (solved in libtorch, fp64).
fn ridge(points: &[(Vec<f64>, f64)], lambda: f64) -> Vec<f64> {
    let n = points.len();
    let d = features(&points[0].0).len();
    let rows: Vec<f64> = points.iter().flat_map(|p| features(&p.0)).collect();
    let y: Vec<f64> = points.iter().map(|p| p.1).collect();
    let phi = tch::Tensor::from_slice(&rows).reshape([n as i64, d as i64]);
    let y = tch::Tensor::from_slice(&y).reshape([n as i64, 1]);
    let gram = phi.transpose(0, 1).matmul(&phi)
        + tch::Tensor::eye(d as i64, (tch::Kind::Double, tch::Device::Cpu)) * (lambda * n as f64);
    let solved = tch::Tensor::linalg_solve(&gram, &phi.transpose(0, 1).matmul(&y), true);
    Vec::<f64>::try_from(solved.reshape([d as i64])).expect("fp64 coefficients")
}

/// How a `sample` search picks its points: rounds of candidates, the first around the
/// prior, each later one where the predictor fitted to the points so far expects the lowest
/// objective (near the best point yet, more tightly each round, with some candidates drawn
/// around the prior again so the search does not only narrow), and at the end the
/// predictor's optimum as the proposal. Every candidate after the first round lies in a
/// trust region around the best point (see [`Plan::radius`]), and a predictor whose
/// cross-validated ρ is below [`TRUSTED_FIT`] ranks nothing: its round's candidates are the
/// sampler's, and the proposal is the best point seen. The candidates depend only on the
/// settings and the objectives of earlier points, so a search that stops and resumes
/// proposes the same ones.
#[derive(Debug, Clone)]
pub struct Plan {
    pub budget: usize,
    pub prior: Vec<f64>,
    pub bounds: Bounds,
    pub seed: u64,
}

/// An evaluated point: weights and the objective there.
pub type Observed = (Vec<f64>, f64);

/// The cross-validated ρ below which a predictor is not trusted to rank candidates.
pub const TRUSTED_FIT: f64 = 0.5;

/// The trust region's radius (L1 distance from the best point; the simplex's diameter is 2)
/// at the start, and the least it shrinks to.
const RADIUS: f64 = 1.0;
const MIN_RADIUS: f64 = 0.02;

impl Predictor {
    /// Whether its cross-validated ρ is at least [`TRUSTED_FIT`].
    pub fn trusted(&self) -> bool {
        self.cv_spearman.is_some_and(|rho| rho >= TRUSTED_FIT)
    }
}

/// `w` moved straight toward `centre` until it lies within L1 distance `radius` of it (a
/// convex combination of two mixtures within bounds stays within them).
fn within(centre: &[f64], w: Vec<f64>, radius: f64) -> Vec<f64> {
    let distance: f64 = w.iter().zip(centre).map(|(a, b)| (a - b).abs()).sum();
    if distance <= radius {
        return w;
    }
    let t = radius / distance;
    w.iter().zip(centre).map(|(a, c)| c + t * (a - c)).collect()
}

impl Plan {
    fn k(&self) -> usize {
        self.prior.len()
    }

    /// The trust region's radius after the rounds in `observed`: 1 at first, halved (down
    /// to 0.02) after every round from the second on whose best point did not improve on
    /// the best seen before it, kept after one that did.
    pub fn radius(&self, observed: &[Observed]) -> f64 {
        let per = self.per_round();
        let min = |points: &[Observed]| points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let mut radius = RADIUS;
        let mut round = 1;
        while (round + 1) * per <= observed.len() {
            let before = min(&observed[..round * per]);
            if min(&observed[round * per..(round + 1) * per]) >= before {
                radius = (radius / 2.0).max(MIN_RADIUS);
            }
            round += 1;
        }
        radius
    }

    /// Points per round: a quarter of the budget (at least 2), so about four rounds.
    pub fn per_round(&self) -> usize {
        self.budget.div_ceil(4).max(2)
    }

    pub fn rounds(&self) -> usize {
        self.budget.div_ceil(self.per_round())
    }

    fn sampler(&self, round: usize) -> Sampler {
        Sampler::new(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ round as u64)
    }

    /// The candidates of `round`, given the points evaluated in the rounds before it.
    pub fn round(&self, round: usize, observed: &[Observed]) -> Vec<Vec<f64>> {
        let n = self.per_round().min(self.budget - round * self.per_round());
        let k = self.k() as f64;
        let mut sampler = self.sampler(round);
        if round == 0 || observed.len() < 2 {
            let mut out = Vec::with_capacity(n);
            if round == 0 {
                out.push(self.bounds.project(&self.prior));
            }
            while out.len() < n {
                out.push(sampler.around(&self.prior, k, &self.bounds));
            }
            return out;
        }
        let predictor = Predictor::fit(observed);
        let best = best(observed);
        let radius = self.radius(observed);
        let concentration = k * 4f64.powi(round as i32);
        let mut candidates: Vec<Vec<f64>> = (0..64 * n)
            .map(|_| sampler.around(best, concentration, &self.bounds))
            .collect();
        candidates.extend((0..32 * n).map(|_| sampler.around(&self.prior, k, &self.bounds)));
        let mut pool: Vec<(f64, Vec<f64>)> = candidates
            .into_iter()
            .map(|w| within(best, w, radius))
            .map(|w| (predictor.predict(&w), w))
            .collect();
        // An untrusted predictor ranks nothing: the sampler's order stands.
        if predictor.trusted() {
            pool.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        let mut chosen: Vec<Vec<f64>> = Vec::with_capacity(n);
        let far =
            |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() >= 0.02;
        for (_, w) in &pool {
            if chosen.len() == n {
                break;
            }
            if chosen
                .iter()
                .chain(observed.iter().map(|o| &o.0))
                .all(|o| far(o, w))
            {
                chosen.push(w.clone());
            }
        }
        // Too few distinct candidates (tight bounds): the best predicted ones, repeated.
        for (_, w) in pool.iter().take(n - chosen.len()) {
            chosen.push(w.clone());
        }
        chosen
    }

    /// The search's proposal: a trusted predictor's optimum among many candidates in the
    /// trust region around the best point (drawn near it and around the prior) and the
    /// points evaluated there; the best point seen where the predictor is not trusted.
    pub fn propose(&self, predictor: &Predictor, observed: &[Observed]) -> Vec<f64> {
        let best = best(observed);
        if !predictor.trusted() {
            return best.to_vec();
        }
        let k = self.k() as f64;
        let mut sampler = self.sampler(self.rounds());
        let radius = self.radius(observed);
        let concentration = k * 4f64.powi(self.rounds() as i32);
        let mut candidates: Vec<Vec<f64>> = (0..2000)
            .map(|_| sampler.around(best, concentration, &self.bounds))
            .collect();
        candidates.extend((0..1000).map(|_| sampler.around(&self.prior, k, &self.bounds)));
        candidates.extend(observed.iter().map(|o| o.0.clone()));
        candidates
            .into_iter()
            .map(|w| within(best, w, radius))
            .map(|w| (predictor.predict(&w), w))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, w)| w)
            .expect("candidates")
    }
}

/// The weights of the point with the lowest objective.
pub fn best(observed: &[Observed]) -> &[f64] {
    &observed[answer(observed)].0
}

/// A search's answer: the position of the point with the lowest objective among those it
/// evaluated (its proposal included), the first of equals. Never worse than what was seen.
pub fn answer(observed: &[Observed]) -> usize {
    observed
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.1.total_cmp(&b.1.1))
        .expect("at least one point")
        .0
}

/// How many of a search's best points, by the proxy that scored them, a check scores again.
pub const CHECKED: usize = 5;

/// The positions a check scores again: the [`CHECKED`] best points by their objective (the
/// first of equals first) and every position in `always` (the reference mixtures), each once,
/// best first.
pub fn to_check(observed: &[Observed], always: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..observed.len()).collect();
    order.sort_by(|a, b| observed[*a].1.total_cmp(&observed[*b].1).then(a.cmp(b)));
    let mut out: Vec<usize> = order.iter().copied().take(CHECKED).collect();
    for at in order {
        if always.contains(&at) && !out.contains(&at) {
            out.push(at);
        }
    }
    out
}

mod descent;

pub use descent::Descent;

#[cfg(test)]
mod tests;
