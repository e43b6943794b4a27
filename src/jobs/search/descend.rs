//! A `gradient` search's run: [`Descent`] steps along the merged model's α-gradient on the
//! tune halves, each iterate scored on the report halves, then the reference mixtures with
//! their tune objectives; the answer is the point with the lowest tune objective, so the
//! report halves never choose anything.

use serde_json::json;
use uuid::Uuid;

use super::{Run, Searched, Tune, objective_of};
use crate::jobs::{Done, JobError};
use crate::registry::searches;
use crate::search::Descent;

impl Run<'_> {
    /// Steps 0 to budget: at each iterate the objective and its α-gradient on the tune
    /// halves, the iterate scored on the report halves, then the step to the next.
    pub(super) async fn descend(&self, descent: &Descent) -> Result<Searched, JobError> {
        let search = self.search;
        let budget = search.budget as usize;
        let units: Vec<Uuid> = search
            .partition_ids
            .iter()
            .map(|p| self.units[p].id)
            .collect();
        let objective: Vec<(Uuid, f64)> = search
            .tune_set_ids
            .iter()
            .copied()
            .zip(search.objective.iter().copied())
            .filter(|(_, w)| *w > 0.0)
            .collect();
        // Each iterate and its tune objective, by position: those stored by an earlier
        // attempt, then this one's.
        let mut path: Vec<(Vec<f64>, f64)> = searches::points(&self.cx.pool, search.id)
            .await?
            .into_iter()
            .filter(|p| p.role == "step")
            .map(|p| {
                let tuned = p.tune_objective.ok_or_else(|| {
                    JobError::Fatal(format!("step {} has no tune objective", p.position))
                })?;
                Ok((p.weights, tuned))
            })
            .collect::<Result<_, JobError>>()?;
        // An earlier attempt's last step is taken again (its gradient was not kept).
        let mut t = path.len().saturating_sub(1);
        let mut weights = match path.last() {
            Some((w, _)) => w.clone(),
            None => descent.start(&search.prior),
        };
        let (mut computed, mut passes) = (0, 0);
        loop {
            if self.cx.is_cancelled() {
                return Ok(Searched::Stopped(Done::Cancelled));
            }
            let stored = t < path.len();
            if stored && t == budget {
                break;
            }
            let descended = self.merger.gradient(&units, &weights, &objective).await?;
            passes += 1;
            if !stored {
                let point = self.point(t, t, "step", &weights, Some(descended.objective));
                match self.evaluate(point).await? {
                    Some((_, fresh)) => computed += fresh as usize,
                    None => return Ok(Searched::Stopped(Done::LeaseLost)),
                }
                path.push((weights.clone(), descended.objective));
            }
            if t == budget {
                break;
            }
            weights = descent.step(t, &weights, &descended.gradient);
            t += 1;
        }
        let tune = Some(Tune {
            units: &units,
            objective: &objective,
        });
        let Some(references) = self.references(path.len(), budget + 1, tune).await? else {
            return Ok(Searched::Stopped(Done::LeaseLost));
        };
        passes += references.len();
        // The proposal: the step with the lowest tune objective; the answer: the lowest
        // among the steps and the references within the bounds.
        let steps = path
            .iter()
            .enumerate()
            .map(|(at, (w, tuned))| (at, "step", w, *tuned));
        let lowest = |a: &(usize, &str, &Vec<f64>, f64), b: &(usize, &str, &Vec<f64>, f64)| {
            a.3.total_cmp(&b.3)
        };
        let proposal = steps
            .clone()
            .min_by(lowest)
            .expect("at least the first step");
        let within = references.iter().enumerate().filter(|(_, r)| r.within);
        let answer = steps
            .chain(within.map(|(i, r)| {
                let tuned = r.tune_objective.expect("a tune objective");
                (path.len() + i, r.role, &r.weights, tuned)
            }))
            .min_by(lowest)
            .expect("at least the first step");
        let mut shown = Vec::with_capacity(2);
        for (position, role, weights, tuned) in [proposal, answer] {
            let mixture = self.mixture(position, weights)?;
            let mut tx = self.cx.pool.begin().await?;
            let (perplexity, _) = self.perplexities(&mixture, self.proxy, &mut tx).await?;
            tx.commit().await?;
            let reported = objective_of(&search.objective, &search.eval_set_ids, &perplexity);
            shown.push(
                json!({ "position": position, "weights": weights, "objective": reported,
                "tune_objective": tuned, "proxy": self.proxy.key(), "role": role }),
            );
        }
        let (proposal, answer) = (shown[0].clone(), shown[1].clone());
        Ok(Searched::Done(json!({
            "computed": computed + references.iter().filter(|r| r.fresh).count(),
            "gradient_passes": passes,
            "answer": answer,
            "proposal": proposal,
            "references": references.iter().map(|r| json!({
                "role": r.role, "weights": r.weights, "objective": r.objective,
                "tune_objective": r.tune_objective, "within_bounds": r.within,
            })).collect::<Vec<_>>(),
            "fit": null,
        })))
    }
}
