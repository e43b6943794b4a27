//! Merging and evaluating on a worker with nothing written to disk. One thread owns the
//! base's model (its config and tokenizer; each merge overwrites the weights), the unit
//! models fetched into memory on the worker's device, and the eval sets, tokenised once.
//! Score jobs, sweep shards and searches all run here, so a mixture gets the same numbers
//! whichever asked; a `gradient` search also takes the objective's gradient with respect to
//! the merge weights here.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Mutex, mpsc};

use bytes::Bytes;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::JobError;
use super::context::{Context, remove_dir};
use crate::engine::checkpoint::{self, FISHER_FILE, WEIGHTS_FILE};
use crate::engine::ensemble::TokenNll;
use crate::engine::eval::{EvalConfig, Evaluation};
use crate::proxy::Proxy;
use crate::registry::bases::Base;
use crate::registry::datasets::Dataset;
use crate::registry::models::UnitModel;
use crate::store::keys;

mod owner;

/// The async side of the merging thread.
pub(super) struct Merger {
    commands: mpsc::Sender<Command>,
    thread: tokio::task::JoinHandle<()>,
    /// What it was opened for: a later job asking for the same base, evaluation settings
    /// and (some of) the same eval sets takes it over, resident models and all.
    opened: Opened,
    /// Resident unit models (by model id) and the bytes each takes.
    resident: HashMap<Uuid, u64>,
    /// Resident models whose Fisher estimate is resident too.
    fishers: HashSet<Uuid>,
    /// Resident models an earlier job loaded and this one has not asked for: the first to
    /// go when a load needs room.
    carried: HashSet<Uuid>,
    /// What one unit model of the base's architecture takes.
    pub unit_bytes: u64,
    /// The base's weights, when resident (task-vector merges start from them).
    base: Option<Uuid>,
    dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
struct Opened {
    base: Uuid,
    eval_sets: Vec<Uuid>,
    eval: serde_json::Value,
}

impl Opened {
    /// Whether a merger opened for `self` serves `asked`.
    fn serves(&self, asked: &Opened) -> bool {
        self.base == asked.base
            && self.eval == asked.eval
            && asked.eval_sets.iter().all(|s| self.eval_sets.contains(s))
    }
}

/// The merger a worker keeps between jobs (its resident unit models with it), so that
/// consecutive sweep shards, scores and searches on the same units fetch and load nothing.
#[derive(Default)]
pub struct KeptMerger(Mutex<Option<Merger>>);

impl KeptMerger {
    fn take(&self) -> Option<Merger> {
        self.0.lock().expect("kept merger").take()
    }

    fn keep(&self, merger: Merger) {
        *self.0.lock().expect("kept merger") = Some(merger);
    }

    /// The unit models it holds resident.
    pub fn resident(&self) -> Vec<Uuid> {
        let kept = self.0.lock().expect("kept merger");
        kept.iter()
            .flat_map(|m| m.resident.keys().copied())
            .collect()
    }

    /// Stops the kept merger's thread, freeing the memory it holds (before work that needs
    /// it, such as training, and when the worker stops).
    pub async fn clear(&self) {
        if let Some(merger) = self.take() {
            merger.close().await;
        }
    }
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
    /// The merger the worker kept from an earlier job when it serves this one; else one
    /// that fetches the base's config and side files and the eval sets (verified), and
    /// starts the thread, which builds the model and tokenises the eval sets.
    pub async fn open(
        cx: &Context,
        base: &Base,
        eval_sets: &[Dataset],
        eval: &EvalConfig,
    ) -> Result<Merger, JobError> {
        let opened = Opened {
            base: base.id,
            eval_sets: eval_sets.iter().map(|s| s.id).collect(),
            eval: serde_json::to_value(eval).expect("settings serialise"),
        };
        match cx.kept.take() {
            Some(mut kept) if kept.opened.serves(&opened) => {
                kept.carried = kept.resident.keys().copied().collect();
                return Ok(kept);
            }
            Some(other) => other.close().await,
            None => {}
        }
        // Beside the job's scratch folder, which goes when the job ends: a kept merger
        // outlives its job.
        let dir = cx
            .scratch
            .with_file_name(format!("merger-{}", Uuid::new_v4()));
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| JobError::Retryable(e.to_string()))?;
        checkpoint::write_config(&dir, &base.config.0)
            .map_err(|e| JobError::Fatal(e.to_string()))?;
        cx.fetch_base_files(base, &dir).await?;
        let mut texts = Vec::with_capacity(eval_sets.len());
        for set in eval_sets {
            let stored = keys::eval_set(&set.sha256);
            let data = crate::sources::text(&cx.store, set, &stored).await?;
            texts.push((set.id, set.is_choices(), data));
        }
        let (commands, inbox) = mpsc::channel();
        let (ready, started) = oneshot::channel();
        let (device, eval, model_dir) = (cx.device, eval.clone(), dir.clone());
        let span = tracing::Span::current();
        let thread = tokio::task::spawn_blocking(move || {
            span.in_scope(|| owner::owner(model_dir, device, texts, eval, inbox, ready))
        });
        let unit_bytes = started.await.map_err(|_| stopped())??;
        Ok(Merger {
            commands,
            thread,
            opened,
            resident: HashMap::new(),
            fishers: HashSet::new(),
            carried: HashSet::new(),
            unit_bytes,
            base: None,
            dir,
        })
    }

    /// Whether the model is resident for this job (one an earlier job left counts once this
    /// job loads it).
    pub fn is_resident(&self, model: Uuid) -> bool {
        self.resident.contains_key(&model) && !self.carried.contains(&model)
    }

    /// How many unit models are resident for this job.
    pub fn resident_count(&self) -> usize {
        self.resident.len() - self.carried.len()
    }

    /// Memory the models resident for this job take.
    pub fn resident_bytes(&self) -> u64 {
        self.resident
            .iter()
            .filter(|(id, _)| !self.carried.contains(id))
            .map(|(_, bytes)| bytes)
            .sum()
    }

    /// Whether the model is resident already (then it is this job's now); else frees what
    /// earlier jobs left and this one has not asked for until a model of `bytes` fits the
    /// budget.
    fn reuse_or_make_room(&mut self, cx: &Context, id: Uuid, bytes: u64) -> bool {
        if self.resident.contains_key(&id) {
            self.carried.remove(&id);
            return true;
        }
        while self.resident.values().sum::<u64>() + bytes > cx.resident_bytes {
            let Some(&old) = self.carried.iter().next() else {
                break;
            };
            self.forget(old);
        }
        false
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
    /// verified against `sha256`, onto the device, unless they are resident already.
    pub async fn load_model(
        &mut self,
        cx: &Context,
        id: Uuid,
        sha256: &str,
    ) -> Result<(), JobError> {
        if self.reuse_or_make_room(cx, id, self.unit_bytes) {
            return Ok(());
        }
        let bytes = cx.fetch(&keys::model(&id, WEIGHTS_FILE), sha256).await?;
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
            self.carried.remove(&base.id);
            return Ok(());
        }
        let sha = base
            .weights_sha256
            .as_deref()
            .ok_or_else(|| JobError::Fatal(format!("base {} has no weights yet", base.name)))?;
        self.reuse_or_make_room(cx, base.id, self.unit_bytes);
        let bytes = cx.fetch(&keys::base(&base.id, WEIGHTS_FILE), sha).await?;
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
    /// training kept one (unless it is resident already); `false` where it did not.
    pub async fn load_fisher(&mut self, cx: &Context, unit: &UnitModel) -> Result<bool, JobError> {
        let Some(sha) = unit.fisher_sha256.as_deref() else {
            if self.fishers.contains(&unit.id) {
                // An estimate an earlier job loaded, which the registry no longer names.
                self.forget(unit.id);
                self.load(cx, unit).await?;
            }
            return Ok(false);
        };
        if self.fishers.contains(&unit.id) {
            return Ok(true);
        }
        let bytes = cx.fetch(&keys::model(&unit.id, FISHER_FILE), sha).await?;
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
        self.fishers.insert(unit.id);
        Ok(true)
    }

    /// Frees a resident unit model.
    pub fn forget(&mut self, model: Uuid) {
        if self.resident.remove(&model).is_some() {
            self.fishers.remove(&model);
            self.carried.remove(&model);
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

    /// Hands the merger to the worker for the next job when it keeps one (its cache is on),
    /// else closes it.
    pub async fn finish(self, cx: &Context) {
        if cx.cache.keeps() {
            cx.kept.keep(self);
        } else {
            self.close().await;
        }
    }

    /// Stops the thread (freeing the device's memory) and removes its folder.
    pub async fn close(self) {
        drop(self.commands);
        let _ = self.thread.await;
        remove_dir(&self.dir).await;
    }
}
