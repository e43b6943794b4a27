//! A `sample` search's run: the rounds of its [`Plan`], the proposal, the reference
//! mixtures, and — where the search has a check proxy — its final candidates scored again by
//! that proxy, which then chooses the answer. A search over the ensemble's arithmetic can
//! afford thousands of points; the check puts its best few through the proxy the
//! validations trust.

use serde_json::{Value, json};

use super::{Run, Searched, objective_of};
use crate::jobs::{Done, JobError};
use crate::search::{Observed, Plan, Predictor, answer, to_check};

impl Run<'_> {
    pub(super) async fn sample(&self, plan: &Plan) -> Result<Searched, JobError> {
        let mut observed: Vec<Observed> = Vec::with_capacity(plan.budget + 3);
        let mut computed = 0;
        for round in 0..plan.rounds() {
            for weights in plan.round(round, &observed) {
                if self.cx.is_cancelled() {
                    return Ok(Searched::Stopped(Done::Cancelled));
                }
                let point = self.point(observed.len(), round, "sample", &weights, None);
                match self.evaluate(point).await? {
                    Some((objective, fresh)) => {
                        observed.push((weights, objective));
                        computed += fresh as usize;
                    }
                    None => return Ok(Searched::Stopped(Done::LeaseLost)),
                }
            }
        }
        let predictor = Predictor::fit(&observed);
        let radius = plan.radius(&observed);
        let weights = plan.propose(&predictor, &observed);
        let position = observed.len();
        let point = self.point(position, plan.rounds(), "proposal", &weights, None);
        let Some((objective, fresh)) = self.evaluate(point).await? else {
            return Ok(Searched::Stopped(Done::LeaseLost));
        };
        computed += fresh as usize;
        observed.push((weights.clone(), objective));
        let Some(references) = self
            .references(observed.len(), plan.rounds() + 1, None)
            .await?
        else {
            return Ok(Searched::Stopped(Done::LeaseLost));
        };
        // The answer's candidates: every point within the bounds (a reference outside them
        // ranks last, never chosen).
        let mut always = Vec::new();
        for r in &references {
            computed += r.fresh as usize;
            if r.within {
                always.push(observed.len());
            }
            let rank = if r.within { r.objective } else { f64::INFINITY };
            observed.push((r.weights.clone(), rank));
        }
        let role = |at: usize| match at.checked_sub(position + 1) {
            Some(i) => references[i].role,
            None if at == position => "proposal",
            None => "sample",
        };
        let objective_at = |at: usize| match at.checked_sub(position + 1) {
            Some(i) => references[i].objective,
            None => observed[at].1,
        };
        // The best point evaluated, the proposal among them: never worse than what was seen.
        let at = answer(&observed);
        let mut answered = json!({ "position": at, "weights": observed[at].0,
            "objective": objective_at(at), "proxy": self.proxy.key(), "role": role(at) });
        let mut checked = Value::Null;
        if let Some(check) = self.check {
            let mut positions = to_check(&observed, &always);
            positions.retain(|p| observed[*p].1.is_finite());
            let mut scored = Vec::with_capacity(positions.len());
            for (i, at) in positions.iter().enumerate() {
                if self.cx.is_cancelled() {
                    return Ok(Searched::Stopped(Done::Cancelled));
                }
                let mixture = self.mixture(*at, &observed[*at].0)?;
                let mut tx = self.cx.pool.begin().await?;
                let (perplexity, fresh) = self.perplexities(&mixture, check, &mut tx).await?;
                let message = format!("checking {}/{} by {}", i + 1, positions.len(), check.key());
                if !self.cx.commit_progress(tx, 1.0, &message).await? {
                    return Ok(Searched::Stopped(Done::LeaseLost));
                }
                computed += fresh as usize;
                let search = self.search;
                let by_check = objective_of(&search.objective, &search.eval_set_ids, &perplexity);
                scored.push((*at, by_check));
            }
            // The best by the check, the first of equals (the better by the search's proxy).
            let by_check: Vec<Observed> = scored
                .iter()
                .map(|(at, o)| (observed[*at].0.clone(), *o))
                .collect();
            let (at, objective) = scored[answer(&by_check)];
            answered = json!({ "position": at, "weights": observed[at].0, "objective": objective,
                "proxy": check.key(), "role": role(at) });
            checked = json!({
                "proxy": check.key(),
                "points": scored.iter().map(|(at, o)| json!({
                    "position": at, "role": role(*at), "objective": objective_at(*at), "checked": o,
                })).collect::<Vec<_>>(),
            });
        }
        Ok(Searched::Done(json!({
            "computed": computed,
            "proposal": { "position": position, "weights": weights, "objective": objective, "predicted": predictor.predict(&weights) },
            "answer": answered,
            "checked": checked,
            "references": references.iter().map(|r| json!({
                "role": r.role, "weights": r.weights, "objective": r.objective, "within_bounds": r.within,
            })).collect::<Vec<_>>(),
            "fit": {
                "cv_spearman": predictor.cv_spearman, "lambda": predictor.lambda, "n": predictor.n,
                "trusted": predictor.trusted(), "trust_radius": radius,
            },
        })))
    }
}
