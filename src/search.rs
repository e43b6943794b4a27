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
/// predictor's optimum as the proposal. The candidates depend only on the settings and the
/// objectives of earlier points, so a search that stops and resumes proposes the same ones.
#[derive(Debug, Clone)]
pub struct Plan {
    pub budget: usize,
    pub prior: Vec<f64>,
    pub bounds: Bounds,
    pub seed: u64,
}

/// An evaluated point: weights and the objective there.
pub type Observed = (Vec<f64>, f64);

impl Plan {
    fn k(&self) -> usize {
        self.prior.len()
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
        let concentration = k * 4f64.powi(round as i32);
        let mut candidates: Vec<Vec<f64>> = (0..64 * n)
            .map(|_| sampler.around(best, concentration, &self.bounds))
            .collect();
        candidates.extend((0..32 * n).map(|_| sampler.around(&self.prior, k, &self.bounds)));
        let mut pool: Vec<(f64, Vec<f64>)> = candidates
            .into_iter()
            .map(|w| (predictor.predict(&w), w))
            .collect();
        pool.sort_by(|a, b| a.0.total_cmp(&b.0));
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

    /// The predictor's optimum among many candidates near the best point, around the prior,
    /// and the points evaluated: the search's proposal.
    pub fn propose(&self, predictor: &Predictor, observed: &[Observed]) -> Vec<f64> {
        let k = self.k() as f64;
        let mut sampler = self.sampler(self.rounds());
        let best = best(observed);
        let concentration = k * 4f64.powi(self.rounds() as i32);
        let mut candidates: Vec<Vec<f64>> = (0..2000)
            .map(|_| sampler.around(best, concentration, &self.bounds))
            .collect();
        candidates.extend((0..1000).map(|_| sampler.around(&self.prior, k, &self.bounds)));
        candidates.extend(observed.iter().map(|o| o.0.clone()));
        candidates
            .into_iter()
            .map(|w| (predictor.predict(&w), w))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, w)| w)
            .expect("candidates")
    }
}

/// The weights of the point with the lowest objective.
pub fn best(observed: &[Observed]) -> &[f64] {
    &observed
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("at least one point")
        .0
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projections_sum_to_one_within_the_bounds_and_keep_points_already_there() {
        let bounds = Bounds::new(vec![0.1, 0.0, 0.2], vec![0.5, 0.3, 1.0]).unwrap();
        for x in [
            [0.9, 0.9, 0.9],
            [0.0, 0.0, 0.0],
            [-3.0, 7.0, 0.5],
            [0.2, 0.3, 0.5],
        ] {
            let w = bounds.project(&x);
            assert!(bounds.contains(&w, 1e-12), "{x:?} -> {w:?}");
        }
        let inside = [0.3, 0.2, 0.5];
        let w = bounds.project(&inside);
        for (a, b) in w.iter().zip(inside) {
            assert!((a - b).abs() < 1e-12, "{w:?}");
        }
    }

    proptest::proptest! {
        /// The projection is the closest point of the bounded simplex: no point of a fine
        /// grid over it is nearer to `x` (three partitions, random feasible bounds).
        #[test]
        fn a_projection_is_the_closest_point_within_the_bounds(
            lo in proptest::collection::vec(0.0..0.4f64, 3),
            span in proptest::collection::vec(0.05..1.0f64, 3),
            x in proptest::collection::vec(-2.0..2.0f64, 3),
        ) {
            let hi: Vec<f64> = lo.iter().zip(&span).map(|(l, s)| (l + s).min(1.0)).collect();
            let Ok(bounds) = Bounds::new(lo.clone(), hi.clone()) else {
                return Ok(());
            };
            let w = bounds.project(&x);
            proptest::prop_assert!(bounds.contains(&w, 1e-9), "{w:?}");
            let distance = |p: &[f64]| p.iter().zip(&x).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
            let best = distance(&w);
            let steps = 400;
            for i in 0..=steps {
                for j in 0..=steps - i {
                    let p = [i as f64 / steps as f64, j as f64 / steps as f64, (steps - i - j) as f64 / steps as f64];
                    if bounds.contains(&p, 1e-12) {
                        proptest::prop_assert!(
                            distance(&p) >= best - 1e-9,
                            "{p:?} is nearer to {x:?} than the projection {w:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn bounds_that_allow_no_mixture_are_refused() {
        assert_eq!(
            Bounds::new(vec![0.6, 0.6], vec![1.0, 1.0]),
            Err(SearchError::Infeasible {
                min_sum: 1.2,
                max_sum: 2.0
            })
        );
        assert!(matches!(
            Bounds::new(vec![0.0, 0.0], vec![0.3, 0.3]),
            Err(SearchError::Infeasible { .. })
        ));
        assert_eq!(
            Bounds::new(vec![0.5, 0.0], vec![0.4, 1.0]),
            Err(SearchError::BadBound(0))
        );
        assert_eq!(
            Bounds::new(vec![0.0, f64::NAN], vec![1.0, 1.0]),
            Err(SearchError::BadBound(1))
        );
    }

    #[test]
    fn samples_respect_the_bounds_and_repeat_with_the_seed() {
        let bounds = Bounds::new(vec![0.05, 0.0, 0.0, 0.1], vec![0.6, 0.2, 1.0, 1.0]).unwrap();
        let centre = [0.25; 4];
        let draw = |seed| {
            let mut s = Sampler::new(seed);
            (0..500)
                .map(|_| s.around(&centre, 4.0, &bounds))
                .collect::<Vec<_>>()
        };
        let (a, b, c) = (draw(7), draw(7), draw(8));
        assert_eq!(a, b);
        assert_ne!(a, c);
        for w in &a {
            assert!(bounds.contains(w, 1e-12), "{w:?}");
        }
        // Concentrated samples stay near the centre; diffuse ones spread out.
        let spread = |concentration: f64| {
            let mut s = Sampler::new(1);
            (0..500)
                .map(|_| {
                    let w = s.around(&centre, concentration, &Bounds::open(4));
                    w.iter()
                        .zip(centre)
                        .map(|(x, c)| (x - c).abs())
                        .sum::<f64>()
                })
                .sum::<f64>()
                / 500.0
        };
        assert!(
            spread(400.0) < 0.1 && spread(2.0) > 0.3,
            "{} {}",
            spread(400.0),
            spread(2.0)
        );
    }

    #[test]
    fn a_plan_spends_its_budget_in_rounds_within_bounds_and_nears_the_optimum() {
        // An objective with its minimum at (0.6, 0.3, 0.1), away from the prior.
        let target = [0.6, 0.3, 0.1];
        let objective = |w: &[f64]| {
            w.iter()
                .zip(target)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
        };
        let plan = Plan {
            budget: 24,
            prior: vec![0.2, 0.2, 0.6],
            bounds: Bounds::new(vec![0.0, 0.05, 0.0], vec![1.0, 1.0, 0.8]).unwrap(),
            seed: 5,
        };
        let run = || {
            let mut observed: Vec<Observed> = Vec::new();
            for round in 0..plan.rounds() {
                for w in plan.round(round, &observed) {
                    assert!(plan.bounds.contains(&w, 1e-9), "{w:?}");
                    let y = objective(&w);
                    observed.push((w, y));
                }
            }
            let proposal = plan.propose(&Predictor::fit(&observed), &observed);
            (observed, proposal)
        };
        let (observed, proposal) = run();
        assert_eq!(observed.len(), 24);
        assert_eq!(
            observed[0].0,
            plan.bounds.project(&plan.prior),
            "the prior first"
        );
        assert!(plan.bounds.contains(&proposal, 1e-9));
        assert!(objective(&proposal) < 0.01, "{proposal:?}");
        assert!(objective(&proposal) < objective(&plan.prior));
        assert_eq!(
            run(),
            (observed, proposal),
            "the same seed, the same search"
        );
    }

    #[test]
    fn the_predictor_recovers_a_quadratic_objective_and_ranks_held_out_points() {
        // y = 2 w0 + 1 w1 + 3 w2 - 4 w0 w2: its minimum on the simplex is inside, on w0-w2.
        let truth = |w: &[f64]| 2.0 * w[0] + w[1] + 3.0 * w[2] - 4.0 * w[0] * w[2];
        let mut s = Sampler::new(3);
        let points: Vec<(Vec<f64>, f64)> = (0..40)
            .map(|_| {
                let w = s.around(&[1.0 / 3.0; 3], 3.0, &Bounds::open(3));
                let y = truth(&w);
                (w, y)
            })
            .collect();
        let p = Predictor::fit(&points);
        assert!(p.cv_spearman.unwrap() > 0.99, "{p:?}");
        for w in [[0.5, 0.0, 0.5], [0.2, 0.7, 0.1], [1.0, 0.0, 0.0]] {
            assert!((p.predict(&w) - truth(&w)).abs() < 1e-3, "{w:?}");
        }
        // Too few points for a cross-validated ρ.
        assert_eq!(Predictor::fit(&points[..3]).cv_spearman, None);
    }

    #[test]
    fn descent_steps_stay_on_the_bounded_simplex_and_reach_a_quadratics_minimum() {
        // f(α) = Σ (α_k − m_k)² with m inside the simplex: its gradient is 2 (α − m).
        let m = [0.6, 0.3, 0.1];
        let descent = Descent {
            bounds: Bounds::open(3),
        };
        let mut w = descent.start(&[1.0 / 3.0; 3]);
        for t in 0..200 {
            let g: Vec<f64> = w.iter().zip(&m).map(|(a, b)| 2.0 * (a - b)).collect();
            w = descent.step(t, &w, &g);
            assert!(descent.bounds.contains(&w, 1e-9), "{w:?}");
        }
        for (a, b) in w.iter().zip(&m) {
            assert!((a - b).abs() < 0.02, "{w:?} vs {m:?}");
        }
        // With a bound that cuts the minimum off, the iterates end on the bound.
        let bounded = Descent {
            bounds: Bounds::new(vec![0.0, 0.0, 0.0], vec![0.4, 1.0, 1.0]).unwrap(),
        };
        let mut w = bounded.start(&[1.0 / 3.0; 3]);
        for t in 0..200 {
            let g: Vec<f64> = w.iter().zip(&m).map(|(a, b)| 2.0 * (a - b)).collect();
            w = bounded.step(t, &w, &g);
            assert!(bounded.bounds.contains(&w, 1e-9), "{w:?}");
        }
        assert!((w[0] - 0.4).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn a_descent_step_moves_each_log_weight_by_at_most_the_step_and_ignores_constant_shifts() {
        let descent = Descent {
            bounds: Bounds::open(3),
        };
        let w = [0.2, 0.3, 0.5];
        let g = [3.0, -1.0, 0.5];
        let next = descent.step(0, &w, &g);
        let shifted = descent.step(0, &w, &[1003.0, 999.0, 1000.5]);
        for (a, b) in next.iter().zip(&shifted) {
            assert!((a - b).abs() < 1e-9);
        }
        // Lower where the gradient is higher than the weighted mean, higher where lower.
        assert!(next[0] < w[0] && next[1] > w[1]);
        // log-ratios change by at most 2 · STEP (each log-weight by STEP, before normalising).
        for i in 0..3 {
            for j in 0..3 {
                let change = (next[i] / next[j]).ln() - (w[i] / w[j]).ln();
                assert!(change.abs() <= 2.0 * Descent::STEP + 1e-9);
            }
        }
        // A zero prior weight does not stay stuck at zero.
        assert!(descent.start(&[1.0, 0.0, 0.0])[1] > 0.0);
        // A flat gradient does not move.
        assert_eq!(descent.step(3, &w, &[2.0; 3]), w.to_vec());
    }
}
