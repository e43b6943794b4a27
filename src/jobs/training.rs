//! Training runs shared by `train` and `pretrain` jobs: inputs fetched from the store
//! (verified), the engine on a blocking thread with its train state mirrored into the store,
//! the weights back to the store.

use std::sync::atomic::Ordering;

use super::context::{Context, blocking};
use super::mirror::StateMirror;
use super::{Done, JobError};
use crate::engine::checkpoint::{self, FISHER_FILE, LoadedModel, WEIGHTS_FILE};
use crate::engine::data::{self, Format};
use crate::engine::train::{self, Outcome, Progress, TrainOptions};
use crate::registry::jobs;
use crate::registry::{bases, datasets};
use crate::store::keys;

/// Trains: the starting weights and the partitions from the store (verified), the engine
/// on a blocking thread with its train state mirrored into the store, the weights back to
/// the store. `None` when the job was cancelled (or its lease lost) on the way.
pub(super) async fn run(cx: &Context, run: &TrainingRun) -> Result<Option<Trained>, JobError> {
    let dir = cx.scratch.clone();
    let start_dir = dir.join("start");
    tokio::fs::create_dir_all(&start_dir)
        .await
        .map_err(|e| JobError::Retryable(e.to_string()))?;
    checkpoint::write_config(&start_dir, &run.model).map_err(|e| JobError::Fatal(e.to_string()))?;
    if let Start::Stored { base, sha256 } = &run.start {
        let weights = cx
            .fetch(&keys::base(&base.id, WEIGHTS_FILE), sha256)
            .await?;
        tokio::fs::write(start_dir.join(WEIGHTS_FILE), &weights)
            .await
            .map_err(|e| JobError::Retryable(format!("writing the base's weights: {e}")))?;
        drop(weights);
        cx.fetch_base_files(base, &start_dir).await?;
    }
    let mut compressed = Vec::with_capacity(run.partitions.len());
    for partition in &run.partitions {
        let stored = keys::partition(&partition.sha256);
        let data = crate::sources::text(&cx.store, partition, &stored).await?;
        compressed.push(data);
    }

    let mut mirror = cx.mirror(&run.mirror);
    mirror.restore().await?;
    let (pool, lease, device) = (cx.pool.clone(), cx.lease.clone(), cx.device);
    let cancel = cx.cancel.clone();
    let runtime = tokio::runtime::Handle::current();
    let out_dir = dir.join("out");
    let (config, model_config) = (run.config.clone(), run.model.clone());
    let init_seed = run.start.init_seed();
    let weights = run.weights.clone();
    let keep_fisher = run.fisher.is_some();
    let work = dir.clone();
    let out = out_dir.clone();
    let summary = blocking(move || -> Result<Option<(train::Summary, u64)>, JobError> {
        let fatal = |e: &dyn std::fmt::Display| JobError::Fatal(e.to_string());
        let model = match init_seed {
            Some(seed) => LoadedModel::init(model_config, seed, device),
            None => LoadedModel::load(&start_dir, device),
        }
        .map_err(|e| fatal(&e))?;
        // Each partition's documents as one token stream, in the order given.
        let mut streams = Vec::with_capacity(compressed.len());
        for object in compressed {
            let text = data::decompress(object.to_vec()).map_err(|e| fatal(&e))?;
            let docs = data::parse_documents(&text, Some(Format::Jsonl)).map_err(|e| fatal(&e))?;
            streams.push(data::tokenize(&docs, &model.tokenizer).map_err(|e| fatal(&e))?);
        }
        let data_tokens = streams.iter().map(|s| s.len() as u64).sum();
        // Without weights, the union: the streams one after another, which training packs
        // and shuffles with the recipe's seed. With weights, each partition's sequences in
        // its share of every batch.
        let union: Vec<u32>;
        let (seq_len, seed) = (config.seq_len as usize, config.seed);
        let sequences = match &weights {
            None => {
                union = streams.concat();
                data::Sequences::new(&union, seq_len, seed)
            }
            Some(weights) => {
                let weighted: Vec<(&[u32], f64)> = streams
                    .iter()
                    .map(Vec::as_slice)
                    .zip(weights.iter().copied())
                    .collect();
                data::Sequences::weighted(&weighted, seq_len, seed)
            }
        }
        .map_err(|e| fatal(&e))?;
        let every = (config.steps() / 50).max(1);
        let mut report = |p: &Progress| {
            // The state saved at the previous step's end goes to the store, for
            // whichever worker runs this job next.
            let before = mirror.uploaded;
            match runtime.block_on(mirror.push()) {
                Err(e) => tracing::warn!("mirroring the train state failed: {e}"),
                Ok(()) if mirror.uploaded > before => {
                    let kept = mirror.uploaded as f32 / p.steps as f32;
                    let _ = runtime.block_on(jobs::saved(&pool, &lease, kept));
                }
                Ok(()) => {}
            }
            if p.step.is_multiple_of(every) || p.step == p.steps {
                let message = format!("step {}/{}", p.step, p.steps);
                let fraction = p.step as f32 / p.steps as f32;
                // A lost lease shows at the next heartbeat; progress is best effort.
                let asked = runtime.block_on(jobs::progress(
                    &pool,
                    &lease,
                    fraction,
                    &message,
                    Some((p.step, p.loss)),
                ));
                if matches!(asked, Ok(true)) {
                    cancel.store(true, Ordering::SeqCst);
                }
            }
        };
        let state = work.join("train_state");
        let moments = out.join(FISHER_FILE);
        let options = TrainOptions {
            state_dir: Some(&state),
            cancel: Some(&cancel),
            progress: Some(&mut report),
            moments: keep_fisher.then_some(moments.as_path()),
        };
        match train::train_on(&model, sequences, &config, options).map_err(|e| fatal(&e))? {
            Outcome::Finished(summary) => {
                tracing::info!(
                    steps = summary.steps,
                    tokens = summary.tokens,
                    loss = summary.final_loss,
                    tokens_per_second = summary.tokens_per_sec.round(),
                    "trained"
                );
                model
                    .save(&out)
                    .map_err(|e| JobError::Retryable(e.to_string()))?;
                Ok(Some((summary, data_tokens)))
            }
            Outcome::Cancelled { .. } => {
                // The state saved at the stop goes to the store for the next worker.
                if let Err(e) = runtime.block_on(mirror.push()) {
                    tracing::warn!("mirroring the train state failed: {e}");
                }
                Ok(None)
            }
        }
    })
    .await?;
    let Some((summary, data_tokens)) = summary else {
        return Ok(None);
    };
    let stored = cx
        .store
        .put_file(&out_dir.join(WEIGHTS_FILE), &run.output)
        .await?;
    let fisher = match &run.fisher {
        Some(key) => Some(cx.store.put_file(&out_dir.join(FISHER_FILE), key).await?),
        None => None,
    };
    Ok(Some(Trained {
        stored,
        fisher,
        summary,
        data_tokens,
    }))
}

/// What a finished training run produced.
pub(super) struct Trained {
    pub stored: crate::store::Stored,
    /// The diagonal Fisher estimate, where the run kept it.
    pub fisher: Option<crate::store::Stored>,
    pub summary: train::Summary,
    /// The training data's size in tokens (under the model's tokenizer; documents end with
    /// EOS).
    pub data_tokens: u64,
}

/// Commits the job's success with the rows the caller wrote in `tx`, then removes the
/// scratch folder and the mirrored train state.
pub(super) async fn finish(
    cx: &Context,
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
    result: &serde_json::Value,
    run: &TrainingRun,
) -> Result<Done, JobError> {
    // The mirror goes before the success is recorded: a worker killed in between leaves a job
    // that trains again (to the same weights), never a finished job's train state behind.
    StateMirror::forget(&cx.store, &run.mirror).await;
    let done = cx.succeed(tx, result).await?;
    if let Done::Succeeded = done {
        cx.clear_scratch().await;
    }
    Ok(done)
}

/// One training job's inputs and outputs in the store.
pub(super) struct TrainingRun {
    pub model: crate::engine::model::ModelConfig,
    pub start: Start,
    /// The training data: one partition, or the union of a mixture's.
    pub partitions: Vec<datasets::Dataset>,
    /// The share of the training sequences drawn from each partition (in `partitions`'
    /// order); `None`: the union as it is.
    pub weights: Option<Vec<f64>>,
    pub config: train::TrainConfig,
    /// Where the trained weights go.
    pub output: String,
    /// Where the final second moments (the diagonal Fisher estimate) go, when kept.
    pub fisher: Option<String>,
    /// Where the train state is mirrored while the job runs.
    pub mirror: String,
}

/// The weights a training run starts from.
pub(super) enum Start {
    /// A base's stored weights (and side files), verified when read.
    Stored {
        base: Box<bases::Base>,
        sha256: String,
    },
    /// A random initialisation (pre-training a base).
    Init { seed: u64 },
}

impl Start {
    fn init_seed(&self) -> Option<u64> {
        match self {
            Start::Init { seed } => Some(*seed),
            Start::Stored { .. } => None,
        }
    }
}
