//! Merging and evaluating on a worker with nothing written to disk. One thread owns the
//! base's model (its config and tokenizer; each merge overwrites the weights), the unit
//! models fetched into memory on the worker's device, and the eval sets, tokenised once.
//! Score jobs, sweep shards and searches all run here, so a mixture gets the same numbers
//! whichever asked; a `gradient` search also takes the objective's gradient with respect to
//! the merge weights here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::JobError;
use super::context::{Context, remove_dir};
use crate::engine::checkpoint::{self, FISHER_FILE, LoadedModel, WEIGHTS_FILE};
use crate::engine::choices::{self, PreparedChoices};
use crate::engine::data::{self, Format};
use crate::engine::ensemble::TokenNll;
use crate::engine::eval::{EvalConfig, Evaluation, Prepared};
use crate::engine::resident::{Fisher, Unit, Workspace};
use crate::proxy::Proxy;
use crate::registry::bases::Base;
use crate::registry::datasets::Dataset;
use crate::registry::models::UnitModel;
use crate::store::keys;

/// The async side of the merging thread.
pub(super) struct Merger {
    commands: mpsc::Sender<Command>,
    thread: tokio::task::JoinHandle<()>,
    /// Resident unit models (by model id) and the bytes each takes.
    resident: HashMap<Uuid, u64>,
    /// What one unit model of the base's architecture takes.
    pub unit_bytes: u64,
    /// The base's weights, when resident (task-vector merges start from them).
    base: Option<Uuid>,
    dir: PathBuf,
}

/// One merge's evaluations, in the order of the eval sets asked for, and where the time went.
pub(super) struct Scored {
    pub results: Vec<Evaluation>,
    pub merge_seconds: f64,
    pub eval_seconds: f64,
    /// Why a Fisher merge was a plain average instead, when it was.
    pub note: Option<String>,
}

/// How a merge combines its unit models.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Combine {
    /// The weighted parameter average.
    Average,
    /// Weighted per coordinate by each unit's Fisher estimate (loaded with
    /// [`Merger::load_fisher`]); the plain average where a unit has none, and the note says so.
    Fisher,
    /// The base plus λ times the average's displacement from it (the base loaded with
    /// [`Merger::load_base`]).
    TaskVectors(f64),
}

enum Command {
    Load {
        id: Uuid,
        bytes: Bytes,
        reply: oneshot::Sender<Result<u64, JobError>>,
    },
    LoadFisher {
        id: Uuid,
        bytes: Bytes,
        reply: oneshot::Sender<Result<u64, JobError>>,
    },
    Forget(Uuid),
    Score {
        units: Vec<Uuid>,
        weights: Vec<f64>,
        combine: Combine,
        base: Option<Uuid>,
        eval_sets: Vec<Uuid>,
        reply: oneshot::Sender<Result<Scored, JobError>>,
    },
    Gradient {
        units: Vec<Uuid>,
        weights: Vec<f64>,
        objective: Vec<(Uuid, f64)>,
        reply: oneshot::Sender<Result<Descended, JobError>>,
    },
    Save {
        dir: PathBuf,
        reply: oneshot::Sender<Result<(), JobError>>,
    },
    TokenNll {
        unit: Uuid,
        eval_sets: Vec<Uuid>,
        reply: oneshot::Sender<Result<Vec<TokenNll>, JobError>>,
    },
}

/// An objective and its gradient with respect to the merge weights.
pub(super) struct Descended {
    /// Σ weight · mean NLL over the objective's eval sets.
    pub objective: f64,
    /// ∂objective/∂α_k, one per unit.
    pub gradient: Vec<f64>,
}

impl Combine {
    /// How `proxy` merges (those from stored per-token NLLs do not).
    pub fn of(proxy: Proxy) -> Combine {
        match proxy.canonical() {
            Proxy::Fisher => Combine::Fisher,
            Proxy::TaskVectors(scale) => Combine::TaskVectors(scale.value()),
            Proxy::Average | Proxy::Ensemble | Proxy::Units => Combine::Average,
        }
    }

    /// Unit models' worth of memory one unit takes resident under this combination (a
    /// Fisher merge also holds each unit's estimate).
    pub fn units_per_unit(self) -> u64 {
        if self == Combine::Fisher { 2 } else { 1 }
    }
}

fn stopped() -> JobError {
    JobError::Retryable("the merging thread stopped".into())
}

impl Merger {
    /// Fetches the base's config and side files and the eval sets (verified), and starts the
    /// thread, which builds the model and tokenises the eval sets.
    pub async fn open(
        cx: &Context,
        base: &Base,
        eval_sets: &[Dataset],
        eval: &EvalConfig,
    ) -> Result<Merger, JobError> {
        let dir = cx.scratch.join("base");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| JobError::Retryable(e.to_string()))?;
        checkpoint::write_config(&dir, &base.config.0)
            .map_err(|e| JobError::Fatal(e.to_string()))?;
        cx.fetch_base_files(base, &dir).await?;
        let mut texts = Vec::with_capacity(eval_sets.len());
        for set in eval_sets {
            let data = cx
                .store
                .get_verified(&keys::eval_set(&set.sha256), &set.object_sha256)
                .await?;
            texts.push((set.id, set.is_choices(), data));
        }
        let (commands, inbox) = mpsc::channel();
        let (ready, started) = oneshot::channel();
        let (device, eval, model_dir) = (cx.device, eval.clone(), dir.clone());
        let span = tracing::Span::current();
        let thread = tokio::task::spawn_blocking(move || {
            span.in_scope(|| owner(model_dir, device, texts, eval, inbox, ready))
        });
        let unit_bytes = started.await.map_err(|_| stopped())??;
        Ok(Merger {
            commands,
            thread,
            resident: HashMap::new(),
            unit_bytes,
            base: None,
            dir,
        })
    }

    pub fn is_resident(&self, model: Uuid) -> bool {
        self.resident.contains_key(&model)
    }

    /// How many unit models are resident.
    pub fn resident_count(&self) -> usize {
        self.resident.len()
    }

    /// Memory the resident unit models take.
    pub fn resident_bytes(&self) -> u64 {
        self.resident.values().sum()
    }

    /// Fetches a ready unit model's weights (verified) onto the device.
    pub async fn load(&mut self, cx: &Context, unit: &UnitModel) -> Result<(), JobError> {
        let sha = unit
            .weights_sha256
            .as_deref()
            .ok_or_else(|| JobError::Fatal(format!("unit model {} has no weights yet", unit.id)))?;
        self.load_model(cx, unit.id, sha).await
    }

    /// Fetches the weights stored under `models/<id>/` (a unit or a validation model),
    /// verified against `sha256`, onto the device.
    pub async fn load_model(
        &mut self,
        cx: &Context,
        id: Uuid,
        sha256: &str,
    ) -> Result<(), JobError> {
        let bytes = cx
            .store
            .get_verified(&keys::model(&id, WEIGHTS_FILE), sha256)
            .await?;
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Load { id, bytes, reply })
            .map_err(|_| stopped())?;
        let size = answer.await.map_err(|_| stopped())??;
        self.resident.insert(id, size);
        Ok(())
    }

    /// Fetches the base's weights (verified) onto the device, for task-vector merges.
    pub async fn load_base(&mut self, cx: &Context, base: &Base) -> Result<(), JobError> {
        if self.base == Some(base.id) {
            return Ok(());
        }
        let sha = base
            .weights_sha256
            .as_deref()
            .ok_or_else(|| JobError::Fatal(format!("base {} has no weights yet", base.name)))?;
        let bytes = cx
            .store
            .get_verified(&keys::base(&base.id, WEIGHTS_FILE), sha)
            .await?;
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Load {
                id: base.id,
                bytes,
                reply,
            })
            .map_err(|_| stopped())?;
        let size = answer.await.map_err(|_| stopped())??;
        self.resident.insert(base.id, size);
        self.base = Some(base.id);
        Ok(())
    }

    /// Fetches a resident unit model's Fisher estimate (verified) onto the device, where
    /// training kept one; `false` where it did not.
    pub async fn load_fisher(&mut self, cx: &Context, unit: &UnitModel) -> Result<bool, JobError> {
        let Some(sha) = unit.fisher_sha256.as_deref() else {
            return Ok(false);
        };
        let bytes = cx
            .store
            .get_verified(&keys::model(&unit.id, FISHER_FILE), sha)
            .await?;
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::LoadFisher {
                id: unit.id,
                bytes,
                reply,
            })
            .map_err(|_| stopped())?;
        let size = answer.await.map_err(|_| stopped())??;
        *self.resident.entry(unit.id).or_default() += size;
        Ok(true)
    }

    /// Frees a resident unit model.
    pub fn forget(&mut self, model: Uuid) {
        if self.resident.remove(&model).is_some() {
            if self.base == Some(model) {
                self.base = None;
            }
            let _ = self.commands.send(Command::Forget(model));
        }
    }

    /// Merges resident unit models with `weights` and evaluates the merge on `eval_sets`.
    pub async fn score(
        &self,
        units: &[Uuid],
        weights: &[f64],
        combine: Combine,
        eval_sets: &[Uuid],
    ) -> Result<Scored, JobError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Score {
                units: units.to_vec(),
                weights: weights.to_vec(),
                combine,
                base: self.base,
                eval_sets: eval_sets.to_vec(),
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Merges resident unit models with `weights` and returns the objective Σ w · mean NLL
    /// over `objective`'s (eval set, w) pairs, with its gradient with respect to each weight
    /// (one backward pass through the merge per eval set).
    pub async fn gradient(
        &self,
        units: &[Uuid],
        weights: &[f64],
        objective: &[(Uuid, f64)],
    ) -> Result<Descended, JobError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Gradient {
                units: units.to_vec(),
                weights: weights.to_vec(),
                objective: objective.to_vec(),
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// A resident unit model's NLL of every token of `eval_sets`, in their order (one forward
    /// pass over each; the working model then holds the unit's weights).
    pub async fn token_nll(
        &self,
        unit: Uuid,
        eval_sets: &[Uuid],
    ) -> Result<Vec<TokenNll>, JobError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::TokenNll {
                unit,
                eval_sets: eval_sets.to_vec(),
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Writes the last merge as a model directory (config, weights, the base's side files).
    pub async fn save(&self, dir: PathBuf) -> Result<(), JobError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Save { dir, reply })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Stops the thread (freeing the device's memory) and removes the scratch folder.
    pub async fn close(self) {
        drop(self.commands);
        let _ = self.thread.await;
        remove_dir(&self.dir).await;
    }
}

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

    /// The held-out text, for what only text has (per-token NLLs, the α-gradient).
    fn text(&self, id: &Uuid) -> Result<&Prepared, JobError> {
        match self {
            Set::Text(p) => Ok(p),
            Set::Choices(_) => Err(JobError::Fatal(format!(
                "eval set {id} holds multiple-choice questions: the ensemble, the mean of \
                 units and gradient searches take held-out text"
            ))),
        }
    }
}

/// The merging thread: builds the workspace, answers `ready` with a unit model's size, then
/// serves commands until the async side drops its sender.
fn owner(
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
                                .ok_or_else(|| fatal(&format!("eval set {id} was not prepared")))?
                                .text(id)?;
                            Ok(TokenNll {
                                layout: set.layout().clone(),
                                nll: set.token_nll(workspace.model(), eval.batch_size),
                            })
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
