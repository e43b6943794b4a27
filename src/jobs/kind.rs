//! Job kinds and their payloads: the one place a kind is named. The queue stores a kind as
//! text and a payload as JSON; [`Payload`] is their typed form, and [`Payload::new_job`] the
//! only way a job is made, so a kind's name, payload and dedup key cannot drift apart.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::engine::eval::EvalConfig;
use crate::engine::train::TrainConfig;
use crate::registry::jobs::{Job, NewJob};
use crate::registry::scores::ScoreKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// Trains a base created from a preset on one partition.
    Pretrain,
    /// Trains one unit model: a base continued on one partition with a recipe.
    Train,
    /// Merges one mixture's unit models and evaluates the merge on one eval set.
    Score,
    /// One shard of a sweep: many mixtures on many eval sets, unit models kept resident.
    Sweep,
    /// Trains a model on the union of a mixture's partitions and evaluates it beside the
    /// mixture's proxies.
    Validate,
    /// Merges a mixture's unit models into a Hugging Face directory in the store.
    Export,
    /// A ratio search: mixture weights scored round by round, unit models kept resident.
    Search,
}

impl JobKind {
    pub const ALL: [JobKind; 7] = [
        JobKind::Pretrain,
        JobKind::Train,
        JobKind::Score,
        JobKind::Sweep,
        JobKind::Validate,
        JobKind::Export,
        JobKind::Search,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Pretrain => "pretrain",
            JobKind::Train => "train",
            JobKind::Score => "score",
            JobKind::Sweep => "sweep",
            JobKind::Validate => "validate",
            JobKind::Export => "export",
            JobKind::Search => "search",
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        JobKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = JobKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown job kind {s:?}: use {}", known.join(", "))
            })
    }
}

/// `pretrain`: the base to train (created `pending`), its data and settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainJob {
    pub base: Uuid,
    pub partition: Uuid,
    pub config: TrainConfig,
    /// Queue every partition's unit model (for the newest recipe) once the base is ready.
    #[serde(default)]
    pub train_all: bool,
}

/// `train`: the unit model row to train (its base, recipe and partition say how).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainJob {
    pub model: Uuid,
}

/// `score`: one mixture, canonical, on one eval set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScoreJob {
    pub key: ScoreKey,
    pub mixture: Vec<MemberJson>,
    pub eval: EvalConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberJson {
    pub partition: Uuid,
    pub weight: f64,
}

impl MemberJson {
    /// The members of a stored mixture (`[{"partition", "weight"}]`; none when it does not
    /// parse).
    pub fn list(mixture: &Value) -> Vec<MemberJson> {
        serde_json::from_value(mixture.clone()).unwrap_or_default()
    }
}

/// `sweep`: a shard of a sweep, as the positions of its mixtures in the sweep's list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepJob {
    pub sweep: Uuid,
    pub items: Vec<i32>,
}

/// `validate`: the validation to train (once) and evaluate on `eval_sets`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValidateJob {
    pub validation: Uuid,
    pub eval_sets: Vec<Uuid>,
}

/// `export`: a canonical mixture of one base and recipe, merged and written to `object`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportJob {
    pub base: Uuid,
    pub recipe: Uuid,
    pub mixture: Vec<MemberJson>,
    /// The store key of the tar (`exports/<digest>.tar`).
    pub object: String,
}

/// `search`: the ratio search to run (its settings are in its row).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchJob {
    pub search: Uuid,
}

/// A job's payload, typed by its kind.
#[derive(Debug, Clone)]
pub enum Payload {
    Pretrain(PretrainJob),
    Train(TrainJob),
    Score(ScoreJob),
    Sweep(SweepJob),
    Validate(ValidateJob),
    Export(ExportJob),
    Search(SearchJob),
}

impl Payload {
    pub fn kind(&self) -> JobKind {
        match self {
            Payload::Pretrain(_) => JobKind::Pretrain,
            Payload::Train(_) => JobKind::Train,
            Payload::Score(_) => JobKind::Score,
            Payload::Sweep(_) => JobKind::Sweep,
            Payload::Validate(_) => JobKind::Validate,
            Payload::Export(_) => JobKind::Export,
            Payload::Search(_) => JobKind::Search,
        }
    }

    /// The job that does this work. Identical work shares one active job: a base has one
    /// pre-training, a unit model one training, a score key one scoring, a sweep shard one run.
    pub fn new_job(&self) -> NewJob {
        let (payload, dedup) = match self {
            Payload::Pretrain(p) => (json(p), format!("pretrain:{}", p.base)),
            Payload::Train(p) => (json(p), format!("train:{}", p.model)),
            Payload::Score(p) => {
                let key = Sha256::digest(serde_json::to_vec(&p.key).expect("keys serialise"));
                (json(p), format!("score:{}", hex::encode(key)))
            }
            Payload::Sweep(p) => (
                json(p),
                format!(
                    "sweep:{}:{}",
                    p.sweep,
                    p.items.first().copied().unwrap_or(-1)
                ),
            ),
            Payload::Validate(p) => {
                let mut sets = p.eval_sets.clone();
                sets.sort();
                let sets = Sha256::digest(serde_json::to_vec(&sets).expect("ids serialise"));
                (
                    json(p),
                    format!("validate:{}:{}", p.validation, hex::encode(sets)),
                )
            }
            Payload::Export(p) => (json(p), format!("export:{}", p.object)),
            Payload::Search(p) => (json(p), format!("search:{}", p.search)),
        };
        NewJob {
            dedup_key: Some(dedup),
            ..NewJob::new(self.kind(), payload)
        }
    }

    /// The typed payload of a job read from the queue; an error names what does not parse.
    pub fn of(job: &Job) -> Result<Payload, String> {
        let kind: JobKind = job.kind.parse()?;
        let bad = |e: serde_json::Error| format!("bad {kind} payload: {e}");
        let payload = job.payload.clone();
        Ok(match kind {
            JobKind::Pretrain => Payload::Pretrain(serde_json::from_value(payload).map_err(bad)?),
            JobKind::Train => Payload::Train(serde_json::from_value(payload).map_err(bad)?),
            JobKind::Score => Payload::Score(serde_json::from_value(payload).map_err(bad)?),
            JobKind::Sweep => Payload::Sweep(serde_json::from_value(payload).map_err(bad)?),
            JobKind::Validate => Payload::Validate(serde_json::from_value(payload).map_err(bad)?),
            JobKind::Export => Payload::Export(serde_json::from_value(payload).map_err(bad)?),
            JobKind::Search => Payload::Search(serde_json::from_value(payload).map_err(bad)?),
        })
    }
}

fn json(payload: &impl Serialize) -> Value {
    serde_json::to_value(payload).expect("payloads serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_name_and_unknown_ones_are_named() {
        for kind in JobKind::ALL {
            assert_eq!(kind.as_str().parse::<JobKind>(), Ok(kind));
        }
        let err = "merge".parse::<JobKind>().unwrap_err();
        assert!(err.contains("\"merge\"") && err.contains("sweep"), "{err}");
    }
}
