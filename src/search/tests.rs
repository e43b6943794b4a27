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

/// A plan's rounds on `objective`, and its proposal with the predictor of all its points.
fn search(plan: &Plan, objective: &dyn Fn(&[f64]) -> f64) -> (Vec<Observed>, Vec<f64>) {
    let mut observed: Vec<Observed> = Vec::new();
    for round in 0..plan.rounds() {
        for w in plan.round(round, &observed) {
            let y = objective(&w);
            observed.push((w, y));
        }
    }
    let proposal = plan.propose(&Predictor::fit(&observed), &observed);
    (observed, proposal)
}

#[test]
fn the_trust_region_halves_after_a_round_that_does_not_improve_and_holds_its_candidates() {
    let plan = Plan {
        budget: 12,
        prior: vec![1.0 / 3.0; 3],
        bounds: Bounds::open(3),
        seed: 1,
    };
    assert_eq!(plan.per_round(), 3);
    let point = |y: f64| (vec![1.0 / 3.0; 3], y);
    // Round 0 alone: the whole region.
    let mut observed: Vec<Observed> = vec![point(5.0), point(4.0), point(6.0)];
    assert_eq!(plan.radius(&observed), 1.0);
    // Round 1 improves (3 < 4): kept. Round 2 does not (3.5 ≥ 3): halved. A tie is no
    // improvement either.
    observed.extend([point(3.0), point(7.0), point(9.0)]);
    assert_eq!(plan.radius(&observed), 1.0);
    observed.extend([point(3.5), point(8.0), point(3.0)]);
    assert_eq!(plan.radius(&observed), 0.5);

    // On a real objective, every candidate of a round lies within the radius of the best
    // point before it.
    let objective = |w: &[f64]| (w[0] - 0.7).powi(2) + (w[1] - 0.2).powi(2) + w[0] * w[2];
    let plan = Plan {
        budget: 24,
        prior: vec![0.2, 0.3, 0.5],
        bounds: Bounds::open(3),
        seed: 9,
    };
    let mut observed: Vec<Observed> = Vec::new();
    for round in 0..plan.rounds() {
        let radius = plan.radius(&observed);
        let before = observed.clone();
        for w in plan.round(round, &observed) {
            if round > 0 {
                let best = super::best(&before);
                let distance: f64 = w.iter().zip(best).map(|(a, b)| (a - b).abs()).sum();
                assert!(
                    distance <= radius + 1e-9,
                    "round {round}: {distance} > {radius}"
                );
            }
            assert!(plan.bounds.contains(&w, 1e-9), "{w:?}");
            let y = objective(&w);
            observed.push((w, y));
        }
    }
}

#[test]
fn an_answer_is_never_worse_than_the_best_point_and_an_untrusted_predictor_proposes_it() {
    // Noise the predictor cannot fit: its cross-validated ρ is low, so it ranks nothing and
    // proposes the best point seen.
    let noise = |w: &[f64]| ((w[0] * 9973.0).sin() * 1e4).fract();
    let plan = Plan {
        budget: 16,
        prior: vec![0.25; 4],
        bounds: Bounds::open(4),
        seed: 3,
    };
    let (observed, proposal) = search(&plan, &noise);
    let predictor = Predictor::fit(&observed);
    assert!(!predictor.trusted(), "{:?}", predictor.cv_spearman);
    assert_eq!(proposal, super::best(&observed));
    // Whatever the proposal scores, the answer is the best point evaluated.
    for proposed in [-1.0, 0.5, 10.0] {
        let mut all = observed.clone();
        all.push((vec![0.1, 0.2, 0.3, 0.4], proposed));
        let at = answer(&all);
        let lowest = all.iter().map(|o| o.1).fold(f64::INFINITY, f64::min);
        assert_eq!(all[at].1, lowest);
        assert_eq!(
            at == all.len() - 1,
            proposed < observed.iter().map(|o| o.1).fold(f64::INFINITY, f64::min)
        );
    }
    // A smooth objective is fitted and trusted.
    let smooth = |w: &[f64]| (w[0] - 0.6).powi(2) + (w[1] - 0.1).powi(2) + 0.3 * w[2];
    let (observed, _) = search(&plan, &smooth);
    assert!(Predictor::fit(&observed).trusted());
}

#[test]
fn epoch_caps_bound_each_share_by_the_data_it_holds() {
    // 100 and 300 tokens, a budget of 400 tokens: one epoch of each is a quarter and three
    // quarters of the run; two epochs cap the first at a half and leave the second open.
    assert_eq!(epoch_caps(&[100, 300], 400, 1.0), vec![0.25, 0.75]);
    assert_eq!(epoch_caps(&[100, 300], 400, 2.0), vec![0.5, 1.0]);
    let bounds = Bounds::open(2)
        .capped(&epoch_caps(&[100, 300], 400, 1.0))
        .unwrap();
    assert_eq!(bounds.max, vec![0.25, 0.75]);
    // Every point a plan proposes within the capped bounds repeats no partition more.
    let plan = Plan {
        budget: 12,
        prior: vec![0.9, 0.1],
        bounds: bounds.clone(),
        seed: 3,
    };
    let (observed, proposal) = search(&plan, &|w| (w[0] - 0.9).powi(2));
    for (w, _) in observed.iter().chain([(proposal, 0.0)].iter()) {
        assert!(bounds.contains(w, 1e-9), "{w:?}");
        assert!(
            w[0] * 400.0 <= 100.0 + 1e-6,
            "{w:?} repeats the first partition"
        );
    }
    // Too little data for the budget, and a minimum above a cap, are refused by name.
    assert_eq!(
        Bounds::open(2).capped(&epoch_caps(&[100, 100], 400, 1.0)),
        Err(SearchError::TooLittleData { max_sum: 0.5 })
    );
    let with_min = Bounds::new(vec![0.5, 0.0], vec![1.0, 1.0]).unwrap();
    assert!(matches!(
        with_min.capped(&[0.25, 1.0]),
        Err(SearchError::BelowMinimum { partition: 0, .. })
    ));
}

#[test]
fn the_natural_mixture_follows_the_tokens() {
    assert_eq!(natural(&[100, 300]), vec![0.25, 0.75]);
    assert_eq!(natural(&[0, 0]), vec![0.5, 0.5]);
}

#[test]
fn a_check_scores_the_best_points_again_and_the_references_always() {
    let observed: Vec<Observed> = [5.0, 1.0, 4.0, 2.0, 3.0, 9.0, 0.5, 8.0, 7.0]
        .iter()
        .enumerate()
        .map(|(i, o)| (vec![i as f64], *o))
        .collect();
    // The five best (6, 1, 3, 4, 2), then the references 7 and 8 by their objective; a
    // reference among the best is not named twice.
    assert_eq!(to_check(&observed, &[7, 8]), vec![6, 1, 3, 4, 2, 8, 7]);
    assert_eq!(to_check(&observed, &[1, 8]), vec![6, 1, 3, 4, 2, 8]);
    assert_eq!(to_check(&observed[..2], &[]), vec![1, 0]);
}
