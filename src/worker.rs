//! Workers: claim a job, run it with the engine, record the outcome.
//!
//! The job's engine work runs on a blocking thread (libtorch must not block the async
//! runtime, and a model lives on the thread that uses it). A side task heartbeats the lease
//! and raises the engine's cancel flag when the job is cancelled or the lease is lost. A job
//! succeeds in one transaction with the rows it produces, fenced by its attempt number.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use tch::Device;
use uuid::Uuid;

use crate::engine::checkpoint::{self, LoadedModel, WEIGHTS_FILE};
use crate::engine::data::{self, Format};
use crate::engine::eval;
use crate::engine::train::{self, Outcome, Progress, TrainOptions};
use crate::registry::datasets::{self, Kind};
use crate::registry::jobs::{self, Lease, QueueError};
use crate::registry::{bases, models, recipes, scores};
use crate::scoring::ScoreJob;
use crate::store::{Store, keys};

/// Whether trying the job again can help.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The database or the store failed: another attempt may succeed.
    #[error("{0}")]
    Retryable(String),
    /// The job's inputs are wrong (bad data, bad settings, a missing row): it will fail again.
    #[error("{0}")]
    Fatal(String),
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        JobError::Retryable(format!("database: {e}"))
    }
}

impl From<crate::store::StoreError> for JobError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Checksum { .. } => JobError::Fatal(e.to_string()),
            e => JobError::Retryable(e.to_string()),
        }
    }
}

enum Done {
    Succeeded,
    Cancelled,
    /// Another worker holds the job now: nothing of ours is recorded.
    LeaseLost,
}

#[derive(Clone)]
pub struct Worker {
    pub pool: PgPool,
    pub store: Store,
    pub device: Device,
    /// This worker's name in leases.
    pub owner: String,
    pub kinds: Vec<&'static str>,
    pub lease: Duration,
    /// Local scratch space for downloads, train states and outputs.
    pub work_dir: PathBuf,
}

impl Worker {
    /// Runs jobs until `stop` turns true. A training job then stops at its next step, its
    /// train state goes to the store and the job back to the queue (without counting the
    /// attempt), for another worker to resume; a score job is finished. Idle, it wakes on
    /// the queue's notifications, and polls every second in case one was missed.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(jobs::CHANNEL).await?;
        while !*stop.borrow() {
            match self.run_one(Some(stop.clone())).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => tracing::warn!("claiming a job failed: {e}"),
            }
            tokio::select! {
                _ = stop.changed() => {}
                heard = listener.recv() => {
                    if let Err(e) = heard {
                        tracing::warn!("queue notifications: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        Ok(())
    }

    /// Claims one job and runs it to the end. Returns whether there was a job.
    pub async fn try_run_one(&self) -> Result<bool, sqlx::Error> {
        self.run_one(None).await
    }

    /// Claims one job and runs it; when `stop` turns true meanwhile, a training job is
    /// released at its next step instead of finished.
    async fn run_one(
        &self,
        stop: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Result<bool, sqlx::Error> {
        let Some(lease) = jobs::claim(&self.pool, &self.owner, &self.kinds, self.lease).await?
        else {
            return Ok(false);
        };
        tracing::info!(job = %lease.id(), kind = lease.job.kind, attempt = lease.attempt(), "running");
        let cancel = Arc::new(AtomicBool::new(false));
        let heartbeat = tokio::spawn(heartbeat(
            self.pool.clone(),
            lease.clone(),
            self.lease,
            cancel.clone(),
        ));
        let releasing = Arc::new(AtomicBool::new(false));
        let on_stop = stop.map(|mut stop| {
            let (releasing, cancel) = (releasing.clone(), cancel.clone());
            tokio::spawn(async move {
                if stop.wait_for(|stop| *stop).await.is_ok() {
                    releasing.store(true, Ordering::SeqCst);
                    cancel.store(true, Ordering::SeqCst);
                }
            })
        });
        let outcome = match lease.job.kind.as_str() {
            "train" => self.train(&lease, cancel.clone()).await,
            "pretrain" => self.pretrain(&lease, cancel.clone()).await,
            "score" => self.score(&lease).await,
            other => Err(JobError::Fatal(format!(
                "this worker does not run {other} jobs yet"
            ))),
        };
        heartbeat.abort();
        if let Some(task) = on_stop {
            task.abort();
        }
        let recorded = match outcome {
            Ok(Done::Succeeded) | Ok(Done::LeaseLost) => Ok(()),
            Ok(Done::Cancelled) if releasing.load(Ordering::SeqCst) => {
                tracing::info!(job = %lease.id(), "released for another worker to resume");
                jobs::release(&self.pool, &lease).await
            }
            // Only the job's owner marks its model or base failed (the stop may have been a
            // lost lease, with another worker now training it).
            Ok(Done::Cancelled) => match jobs::cancelled(&self.pool, &lease).await {
                Ok(()) => Ok(self.mark_target_failed(&lease).await?),
                lost => lost,
            },
            Err(JobError::Retryable(message)) => {
                jobs::fail(&self.pool, &lease, &message, true).await
            }
            Err(JobError::Fatal(message)) => {
                match jobs::fail(&self.pool, &lease, &message, false).await {
                    Ok(()) => Ok(self.mark_target_failed(&lease).await?),
                    lost => lost,
                }
            }
        };
        match recorded {
            Ok(()) | Err(QueueError::LeaseLost(_)) => Ok(true),
            Err(QueueError::Database(e)) => Err(e),
        }
    }

    /// A training job that ends without weights leaves its model or base `failed`, so that
    /// asking for it again queues a new job.
    async fn mark_target_failed(&self, lease: &Lease) -> Result<(), sqlx::Error> {
        let mut db = self.pool.acquire().await?;
        match lease.job.kind.as_str() {
            "train" => match model_id(lease) {
                Some(id) => models::mark_failed(&mut db, id).await,
                None => Ok(()),
            },
            "pretrain" => match serde_json::from_value::<PretrainJob>(lease.job.payload.clone()) {
                Ok(job) => bases::mark_failed(&mut db, job.base).await,
                Err(_) => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Trains a unit model: the base's weights, continued on the partition with the recipe.
    async fn train(&self, lease: &Lease, cancel: Arc<AtomicBool>) -> Result<Done, JobError> {
        let id =
            model_id(lease).ok_or_else(|| JobError::Fatal("payload has no model id".into()))?;
        let fatal = |what: &str| JobError::Fatal(format!("{what} of model {id} not found"));
        let model = models::get(&self.pool, id)
            .await?
            .ok_or_else(|| fatal("row"))?;
        let base = bases::find(&self.pool, &model.base_id.to_string())
            .await?
            .ok_or_else(|| fatal("base"))?;
        let recipe = recipes::find(&self.pool, &model.recipe_id.to_string())
            .await?
            .ok_or_else(|| fatal("recipe"))?;
        let partition =
            datasets::find(&self.pool, Kind::Partition, &model.partition_id.to_string())
                .await?
                .ok_or_else(|| fatal("partition"))?;
        let weights_sha = base
            .weights_sha256
            .clone()
            .ok_or_else(|| JobError::Fatal(format!("base {} has no weights yet", base.name)))?;
        let run = TrainingRun {
            model: base.config.0.clone(),
            start: Start::Stored {
                base: Box::new(base.clone()),
                sha256: weights_sha,
            },
            partition,
            config: recipe.config.0.clone(),
            output: keys::model(&id, WEIGHTS_FILE),
            mirror: keys::model(&id, "train_state"),
        };
        let Some((stored, summary)) = self.run_training(lease, cancel, &run).await? else {
            return Ok(Done::Cancelled);
        };
        let mut tx = self.pool.begin().await?;
        models::mark_ready(&mut tx, id, &stored.sha256).await?;
        let result = json!({ "model": id, "weights_sha256": stored.sha256, "train": summary });
        self.finish(tx, lease, &result, &run).await
    }

    /// Pre-trains a base created from a preset: random initialisation from the settings'
    /// seed, trained on one partition; the base turns ready with its weights.
    async fn pretrain(&self, lease: &Lease, cancel: Arc<AtomicBool>) -> Result<Done, JobError> {
        let job: PretrainJob = serde_json::from_value(lease.job.payload.clone())
            .map_err(|e| JobError::Fatal(format!("bad pretrain payload: {e}")))?;
        let base = bases::find(&self.pool, &job.base.to_string())
            .await?
            .ok_or_else(|| JobError::Fatal(format!("base {} not found", job.base)))?;
        let partition = datasets::find(&self.pool, Kind::Partition, &job.partition.to_string())
            .await?
            .ok_or_else(|| JobError::Fatal(format!("partition {} not found", job.partition)))?;
        let run = TrainingRun {
            model: base.config.0.clone(),
            start: Start::Init {
                seed: job.config.seed,
            },
            partition,
            config: job.config,
            output: keys::base(&base.id, WEIGHTS_FILE),
            mirror: keys::base(&base.id, "train_state"),
        };
        let Some((stored, summary)) = self.run_training(lease, cancel, &run).await? else {
            return Ok(Done::Cancelled);
        };
        let mut tx = self.pool.begin().await?;
        bases::mark_ready(&mut tx, base.id, &stored.sha256).await?;
        let result = json!({ "base": base.id, "weights_sha256": stored.sha256, "train": summary });
        self.finish(tx, lease, &result, &run).await
    }

    /// Commits the job's success with the rows the caller wrote in `tx`, then tidies up.
    async fn finish(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        lease: &Lease,
        result: &serde_json::Value,
        run: &TrainingRun,
    ) -> Result<Done, JobError> {
        match jobs::succeed(&mut tx, lease, result).await {
            Ok(()) => tx.commit().await?,
            Err(QueueError::LeaseLost(_)) => return Ok(Done::LeaseLost),
            Err(QueueError::Database(e)) => return Err(e.into()),
        }
        remove_dir(&self.job_dir(lease)).await;
        StateMirror::forget(&self.store, &run.mirror).await;
        Ok(Done::Succeeded)
    }

    /// The base's side files (tokenizer, imported config), verified, into a model folder.
    async fn fetch_base_files(&self, base: &bases::Base, dir: &Path) -> Result<(), JobError> {
        for (file, sha256) in base.files.iter() {
            self.store
                .download_verified(&keys::base(&base.id, file), sha256, &dir.join(file))
                .await?;
        }
        Ok(())
    }

    fn job_dir(&self, lease: &Lease) -> PathBuf {
        self.work_dir.join(format!("job-{}", lease.id()))
    }

    /// Trains: the starting weights and the partition from the store (verified), the engine
    /// on a blocking thread with its train state mirrored into the store, the weights back to
    /// the store. `None` when the job was cancelled (or its lease lost) on the way.
    async fn run_training(
        &self,
        lease: &Lease,
        cancel: Arc<AtomicBool>,
        run: &TrainingRun,
    ) -> Result<Option<(crate::store::Stored, train::Summary)>, JobError> {
        let dir = self.job_dir(lease);
        let start_dir = dir.join("start");
        tokio::fs::create_dir_all(&start_dir)
            .await
            .map_err(|e| JobError::Retryable(e.to_string()))?;
        checkpoint::write_config(&start_dir, &run.model)
            .map_err(|e| JobError::Fatal(e.to_string()))?;
        if let Start::Stored { base, sha256 } = &run.start {
            self.store
                .download_verified(
                    &keys::base(&base.id, WEIGHTS_FILE),
                    sha256,
                    &start_dir.join(WEIGHTS_FILE),
                )
                .await?;
            self.fetch_base_files(base, &start_dir).await?;
        }
        let compressed = self
            .store
            .get_verified(
                &keys::partition(&run.partition.sha256),
                &run.partition.object_sha256,
            )
            .await?;

        let mut mirror = StateMirror {
            store: self.store.clone(),
            prefix: run.mirror.clone(),
            dir: dir.join("train_state"),
            uploaded: 0,
        };
        mirror.restore().await?;
        let (pool, lease_for_thread, device) = (self.pool.clone(), lease.clone(), self.device);
        let runtime = tokio::runtime::Handle::current();
        let out_dir = dir.join("out");
        let (config, model_config) = (run.config.clone(), run.model.clone());
        let init_seed = run.start.init_seed();
        let work = dir.clone();
        let out = out_dir.clone();
        let summary =
            tokio::task::spawn_blocking(move || -> Result<Option<train::Summary>, JobError> {
                let fatal = |e: &dyn std::fmt::Display| JobError::Fatal(e.to_string());
                let text = data::decompress(compressed.to_vec()).map_err(|e| fatal(&e))?;
                let docs =
                    data::parse_documents(&text, Some(Format::Jsonl)).map_err(|e| fatal(&e))?;
                let model = match init_seed {
                    Some(seed) => LoadedModel::init(model_config, seed, device),
                    None => LoadedModel::load(&start_dir, device),
                }
                .map_err(|e| fatal(&e))?;
                let tokens = data::tokenize(&docs, &model.tokenizer).map_err(|e| fatal(&e))?;
                let every = (config.steps() / 50).max(1);
                let mut report = |p: &Progress| {
                    // The state saved at the previous step's end goes to the store, for
                    // whichever worker runs this job next.
                    if let Err(e) = runtime.block_on(mirror.push()) {
                        tracing::warn!("mirroring the train state failed: {e}");
                    }
                    if p.step.is_multiple_of(every) || p.step == p.steps {
                        let message = format!("step {}/{}", p.step, p.steps);
                        let fraction = p.step as f32 / p.steps as f32;
                        // A lost lease shows at the next heartbeat; progress is best effort.
                        let _ = runtime.block_on(jobs::progress(
                            &pool,
                            &lease_for_thread,
                            fraction,
                            &message,
                            Some(p.loss),
                        ));
                    }
                };
                let state = work.join("train_state");
                let options = TrainOptions {
                    state_dir: Some(&state),
                    cancel: Some(&cancel),
                    progress: Some(&mut report),
                };
                match train::train(&model, &tokens, &config, options).map_err(|e| fatal(&e))? {
                    Outcome::Finished(summary) => {
                        model
                            .save(&out)
                            .map_err(|e| JobError::Retryable(e.to_string()))?;
                        Ok(Some(summary))
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
            .await
            .map_err(|e| JobError::Retryable(format!("the training thread failed: {e}")))??;
        let Some(summary) = summary else {
            return Ok(None);
        };
        let stored = self
            .store
            .put_file(&out_dir.join(WEIGHTS_FILE), &run.output)
            .await?;
        Ok(Some((stored, summary)))
    }
}

/// One training job's inputs and outputs in the store.
struct TrainingRun {
    model: crate::engine::model::ModelConfig,
    start: Start,
    partition: datasets::Dataset,
    config: train::TrainConfig,
    /// Where the trained weights go.
    output: String,
    /// Where the train state is mirrored while the job runs.
    mirror: String,
}

/// The weights a training run starts from.
enum Start {
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

/// The payload of a `pretrain` job.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct PretrainJob {
    pub base: Uuid,
    pub partition: Uuid,
    pub config: train::TrainConfig,
}

impl Worker {
    /// Scores a mixture: the unit models' weights from the store (verified), merged and
    /// evaluated on a blocking thread, then the score row and the job together.
    async fn score(&self, lease: &Lease) -> Result<Done, JobError> {
        let job: ScoreJob = serde_json::from_value(lease.job.payload.clone())
            .map_err(|e| JobError::Fatal(format!("bad score payload: {e}")))?;
        let key = &job.key;
        let base = bases::find(&self.pool, &key.base_id.to_string())
            .await?
            .ok_or_else(|| JobError::Fatal(format!("base {} not found", key.base_id)))?;
        let eval_set = datasets::find(&self.pool, Kind::EvalSet, &key.eval_set_id.to_string())
            .await?
            .ok_or_else(|| JobError::Fatal(format!("eval set {} not found", key.eval_set_id)))?;
        let partitions: Vec<Uuid> = job.mixture.iter().map(|m| m.partition).collect();
        let units =
            models::for_partitions(&self.pool, key.base_id, key.recipe_id, &partitions).await?;

        let dir = self.work_dir.join(format!("job-{}", lease.id()));
        let mut inputs = Vec::with_capacity(partitions.len());
        for member in &job.mixture {
            let unit = units
                .iter()
                .find(|u| u.partition_id == member.partition && u.state == "ready")
                .ok_or_else(|| {
                    JobError::Fatal(format!(
                        "partition {} has no ready unit model",
                        member.partition
                    ))
                })?;
            let unit_dir = dir.join(unit.id.to_string());
            tokio::fs::create_dir_all(&unit_dir)
                .await
                .map_err(|e| JobError::Retryable(e.to_string()))?;
            checkpoint::write_config(&unit_dir, &base.config.0)
                .map_err(|e| JobError::Fatal(e.to_string()))?;
            self.fetch_base_files(&base, &unit_dir).await?;
            let sha = unit.weights_sha256.as_deref().unwrap_or_default();
            self.store
                .download_verified(
                    &keys::model(&unit.id, WEIGHTS_FILE),
                    sha,
                    &unit_dir.join(WEIGHTS_FILE),
                )
                .await?;
            inputs.push(unit_dir);
        }
        let eval_data = self
            .store
            .get_verified(&keys::eval_set(&eval_set.sha256), &eval_set.object_sha256)
            .await?;

        let (device, weights) = (
            self.device,
            job.mixture.iter().map(|m| m.weight).collect::<Vec<_>>(),
        );
        let (merged, eval_config) = (dir.join("merged"), job.eval.clone());
        let result = tokio::task::spawn_blocking(move || -> Result<serde_json::Value, JobError> {
            let fatal = |e: &dyn std::fmt::Display| JobError::Fatal(e.to_string());
            let text = data::decompress(eval_data.to_vec()).map_err(|e| fatal(&e))?;
            let docs = data::parse_documents(&text, Some(Format::Jsonl)).map_err(|e| fatal(&e))?;
            crate::engine::merge::merge_model_dirs(&inputs, &weights, device, &merged)
                .map_err(|e| fatal(&e))?;
            let model = LoadedModel::load(&merged, device).map_err(|e| fatal(&e))?;
            let result = eval::evaluate(&model, &docs, &eval_config).map_err(|e| fatal(&e))?;
            Ok(serde_json::to_value(result).expect("results serialise"))
        })
        .await
        .map_err(|e| JobError::Retryable(format!("the scoring thread failed: {e}")))??;

        let mut tx = self.pool.begin().await?;
        let mixture = serde_json::to_value(&job.mixture).expect("mixtures serialise");
        let eval_config = serde_json::to_value(&job.eval).expect("settings serialise");
        let score = scores::insert(&mut tx, key, &mixture, &eval_config, &result).await?;
        match jobs::succeed(&mut tx, lease, &json!({ "score": score.id })).await {
            Ok(()) => tx.commit().await?,
            Err(QueueError::LeaseLost(_)) => return Ok(Done::LeaseLost),
            Err(QueueError::Database(e)) => return Err(e.into()),
        }
        remove_dir(&dir).await;
        Ok(Done::Succeeded)
    }
}

/// The engine's train state mirrored into the store under `models/<id>/train_state/`, with a
/// manifest of the files' hashes, so that the worker that takes over a job whose worker
/// died resumes where that one last saved (and ends with the same weights).
struct StateMirror {
    store: Store,
    /// The store folder, e.g. `models/<id>/train_state`.
    prefix: String,
    /// The engine's local state folder.
    dir: PathBuf,
    /// The step of the last state uploaded or restored.
    uploaded: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Manifest {
    step: u64,
    /// File name → sha256.
    files: std::collections::BTreeMap<String, String>,
}

impl StateMirror {
    fn key(&self, file: &str) -> String {
        format!("{}/{file}", self.prefix)
    }

    /// Fetches the mirrored state into the local folder, verified, when there is one.
    async fn restore(&mut self) -> Result<(), JobError> {
        let Some(manifest) = self.store.get_optional(&self.key("manifest.json")).await? else {
            return Ok(());
        };
        let manifest: Manifest = serde_json::from_slice(&manifest).map_err(|e| {
            JobError::Fatal(format!("train state manifest in {}: {e}", self.prefix))
        })?;
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| JobError::Retryable(e.to_string()))?;
        for (file, sha) in &manifest.files {
            self.store
                .download_verified(&self.key(file), sha, &self.dir.join(file))
                .await?;
        }
        tracing::info!(state = %self.prefix, step = manifest.step, "resuming from the mirrored train state");
        self.uploaded = manifest.step;
        Ok(())
    }

    /// Uploads the local state when it is newer than the last one mirrored; the manifest is
    /// written last, so it only ever names complete files.
    async fn push(&mut self) -> Result<(), crate::store::StoreError> {
        let Ok(text) = tokio::fs::read(self.dir.join("train_state.json")).await else {
            return Ok(());
        };
        let saved: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
        let (Some(step), Some(tensors)) = (saved["step"].as_u64(), saved["tensors"].as_str())
        else {
            return Ok(());
        };
        if step <= self.uploaded {
            return Ok(());
        }
        let mut files = std::collections::BTreeMap::new();
        for file in [tensors, "train_state.json"] {
            let stored = self
                .store
                .put_file(&self.dir.join(file), &self.key(file))
                .await?;
            files.insert(file.to_string(), stored.sha256);
        }
        let manifest = serde_json::to_vec(&Manifest { step, files }).expect("manifests serialise");
        self.store
            .put_bytes(&self.key("manifest.json"), manifest.into())
            .await?;
        self.uploaded = step;
        Ok(())
    }

    /// Removes the mirror once the model is stored.
    async fn forget(store: &Store, prefix: &str) {
        if let Ok(keys) = store.list(prefix).await {
            for key in keys {
                let _ = store.delete(&key).await;
            }
        }
    }
}

fn model_id(lease: &Lease) -> Option<Uuid> {
    lease.job.payload.get("model")?.as_str()?.parse().ok()
}

/// Extends the lease every third of its length; raises `cancel` when the job was cancelled
/// or the lease was lost, so the engine stops at its next step.
async fn heartbeat(pool: PgPool, lease: Lease, every: Duration, cancel: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(every / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        match jobs::heartbeat(&pool, &lease, every).await {
            Ok(false) => {}
            Ok(true) | Err(QueueError::LeaseLost(_)) => {
                cancel.store(true, Ordering::Relaxed);
                return;
            }
            Err(QueueError::Database(e)) => {
                tracing::warn!(job = %lease.id(), "heartbeat failed: {e}")
            }
        }
    }
}

async fn remove_dir(dir: &Path) {
    if let Err(e) = tokio::fs::remove_dir_all(dir).await {
        tracing::warn!("could not remove {}: {e}", dir.display());
    }
}
