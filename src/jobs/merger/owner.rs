//! The merging thread's side: the workspace, the resident unit models and the prepared eval
//! sets it owns, and the loop that serves the async side's commands.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{Combine, Command, Descended, Scored};
use crate::engine::checkpoint::LoadedModel;
use crate::engine::choices::{self, PreparedChoices};
use crate::engine::data::{self, Format};
use crate::engine::ensemble::{NllLayout, TokenNll};
use crate::engine::eval::{EvalConfig, Evaluation, Prepared};
use crate::engine::resident::{Fisher, Unit, Workspace};
use crate::jobs::JobError;

/// An eval set made ready for the base's tokenizer and context.
enum Set {
    Text(Prepared),
    Choices(PreparedChoices),
}

impl Set {
    fn evaluate(&self, model: &LoadedModel, batch_size: usize) -> Evaluation {
        match self {
            Set::Text(p) => p.evaluate(model, batch_size).into(),
            Set::Choices(p) => Evaluation::Choices(p.evaluate(model)),
        }
    }

    /// A model's NLL of every token the set's figures read, and where each belongs.
    fn token_nll(&self, model: &LoadedModel, batch_size: usize) -> TokenNll {
        match self {
            Set::Text(p) => TokenNll {
                layout: NllLayout::Text(p.layout().clone()),
                nll: p.token_nll(model, batch_size),
            },
            Set::Choices(p) => TokenNll {
                layout: NllLayout::Choices(p.layout().clone()),
                nll: p.token_nll(model),
            },
        }
    }

    /// The held-out text, for what only text has (the α-gradient).
    fn text(&self, id: &Uuid) -> Result<&Prepared, JobError> {
        match self {
            Set::Text(p) => Ok(p),
            Set::Choices(_) => Err(JobError::Fatal(format!(
                "eval set {id} holds multiple-choice questions: gradient searches take held-out \
                 text"
            ))),
        }
    }
}

/// The merging thread: builds the workspace, answers `ready` with a unit model's size, then
/// serves commands until the async side drops its sender.
pub(super) fn owner(
    dir: PathBuf,
    device: tch::Device,
    texts: Vec<(Uuid, bool, Bytes)>,
    eval: EvalConfig,
    inbox: mpsc::Receiver<Command>,
    ready: oneshot::Sender<Result<u64, JobError>>,
) {
    let fatal = |e: &dyn std::fmt::Display| JobError::Fatal(e.to_string());
    let setup = || -> Result<(Workspace, HashMap<Uuid, Set>), JobError> {
        let model = LoadedModel::skeleton(&dir, device).map_err(|e| fatal(&e))?;
        let mut prepared = HashMap::new();
        for (id, is_choices, compressed) in texts {
            let text = data::decompress(compressed.to_vec()).map_err(|e| fatal(&e))?;
            let in_set = |e: &dyn std::fmt::Display| fatal(&format!("eval set {id}: {e}"));
            let set = if is_choices {
                let (questions, _) = choices::parse(&text).map_err(|e| in_set(&e))?;
                Set::Choices(
                    PreparedChoices::new(&model, &questions, &eval).map_err(|e| in_set(&e))?,
                )
            } else {
                let docs =
                    data::parse_documents(&text, Some(Format::Jsonl)).map_err(|e| fatal(&e))?;
                Set::Text(Prepared::new(&model, &docs, &eval).map_err(|e| in_set(&e))?)
            };
            prepared.insert(id, set);
        }
        Ok((Workspace::new(model), prepared))
    };
    let (mut workspace, prepared) = match setup() {
        Ok(ready_parts) => ready_parts,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(workspace.unit_bytes()));
    let mut units: HashMap<Uuid, Unit> = HashMap::new();
    let mut fishers: HashMap<Uuid, Fisher> = HashMap::new();
    while let Ok(command) = inbox.recv() {
        match command {
            Command::Load { id, bytes, reply } => {
                let loaded = workspace
                    .load_unit(&bytes, &format!("unit model {id}"))
                    .map_err(|e| fatal(&e));
                let _ = reply.send(loaded.map(|unit| {
                    let size = unit.bytes();
                    units.insert(id, unit);
                    size
                }));
            }
            Command::LoadFisher { id, bytes, reply } => {
                let loaded = workspace
                    .load_fisher(&bytes, &format!("the Fisher estimate of unit model {id}"))
                    .map_err(|e| fatal(&e));
                let _ = reply.send(loaded.map(|fisher| {
                    let size = fisher.bytes();
                    fishers.insert(id, fisher);
                    size
                }));
            }
            Command::Forget(id) => {
                units.remove(&id);
                fishers.remove(&id);
            }
            Command::Score {
                units: ids,
                weights,
                combine,
                base,
                eval_sets,
                reply,
            } => {
                let mut score = || -> Result<Scored, JobError> {
                    let chosen = resident(&units, &ids)?;
                    let started = Instant::now();
                    let without: Vec<&Uuid> =
                        ids.iter().filter(|id| !fishers.contains_key(id)).collect();
                    let note = (combine == Combine::Fisher && !without.is_empty()).then(|| {
                        format!(
                            "the plain average: unit model(s) {} have no Fisher estimate",
                            without
                                .iter()
                                .map(|id| id.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    });
                    match combine {
                        Combine::Fisher if note.is_none() => {
                            let with: Vec<(&Unit, &Fisher)> = chosen
                                .iter()
                                .zip(&ids)
                                .map(|(u, id)| (*u, &fishers[id]))
                                .collect();
                            workspace.merge_fisher(&with, &weights)
                        }
                        Combine::TaskVectors(lambda) => {
                            let base = base.ok_or_else(|| fatal(&"the base is not resident"))?;
                            let base = resident(&units, &[base])?[0];
                            workspace.merge_task_vectors(base, &chosen, &weights, lambda)
                        }
                        _ => workspace.merge(&chosen, &weights),
                    }
                    .map_err(|e| fatal(&e))?;
                    let merge_seconds = started.elapsed().as_secs_f64();
                    let started = Instant::now();
                    let results = eval_sets
                        .iter()
                        .map(|id| {
                            prepared
                                .get(id)
                                .map(|p| p.evaluate(workspace.model(), eval.batch_size))
                                .ok_or_else(|| fatal(&format!("eval set {id} was not prepared")))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(Scored {
                        results,
                        merge_seconds,
                        eval_seconds: started.elapsed().as_secs_f64(),
                        note,
                    })
                };
                let _ = reply.send(score());
            }
            Command::Gradient {
                units: ids,
                weights,
                objective,
                reply,
            } => {
                let mut descend = || -> Result<Descended, JobError> {
                    let chosen = resident(&units, &ids)?;
                    let mut out = Descended {
                        objective: 0.0,
                        gradient: vec![0.0; ids.len()],
                    };
                    for (id, w) in &objective {
                        let set = prepared
                            .get(id)
                            .ok_or_else(|| fatal(&format!("eval set {id} was not prepared")))?
                            .text(id)?;
                        let (loss, gradient) = workspace
                            .alpha_gradient(&chosen, &weights, set, eval.batch_size)
                            .map_err(|e| fatal(&e))?;
                        out.objective += w * loss;
                        for (sum, g) in out.gradient.iter_mut().zip(gradient) {
                            *sum += w * g;
                        }
                    }
                    Ok(out)
                };
                let _ = reply.send(descend());
            }
            Command::TokenNll {
                unit,
                eval_sets,
                reply,
            } => {
                let mut run = || -> Result<Vec<TokenNll>, JobError> {
                    let chosen = resident(&units, &[unit])?;
                    workspace.merge(&chosen, &[1.0]).map_err(|e| fatal(&e))?;
                    eval_sets
                        .iter()
                        .map(|id| {
                            let set = prepared
                                .get(id)
                                .ok_or_else(|| fatal(&format!("eval set {id} was not prepared")))?;
                            Ok(set.token_nll(workspace.model(), eval.batch_size))
                        })
                        .collect()
                };
                let _ = reply.send(run());
            }
            Command::Save { dir, reply } => {
                let _ = reply.send(workspace.model().save(&dir).map_err(|e| fatal(&e)));
            }
        }
    }
}

/// The resident units of `ids`, in order.
fn resident<'a>(units: &'a HashMap<Uuid, Unit>, ids: &[Uuid]) -> Result<Vec<&'a Unit>, JobError> {
    ids.iter()
        .map(|id| {
            units
                .get(id)
                .ok_or_else(|| JobError::Retryable(format!("unit model {id} is not resident")))
        })
        .collect()
}
