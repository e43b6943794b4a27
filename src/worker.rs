//! Workers: claim a job, run it, record the outcome.
//!
//! The loop here only claims, heartbeats, dispatches to the kind's module in [`crate::jobs`]
//! and records how the job ended. Engine work runs on blocking threads (libtorch must not
//! block the async runtime, and a model lives on the thread that uses it). A side task
//! heartbeats the lease and raises the engine's cancel flag when the job is cancelled or the
//! lease is lost. A job succeeds in one transaction with the rows it produces, fenced by its
//! attempt number.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tch::Device;

use crate::jobs::kind::{JobKind, Payload};
use crate::jobs::{self, Done, JobError};
use crate::registry::bases;
use crate::registry::jobs::{self as queue, Lease, QueueError};
use crate::store::{Store, keys};

/// How often a running worker reports itself; the dashboard counts one seen within three
/// periods as alive.
pub const PRESENCE_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Worker {
    pub pool: PgPool,
    pub store: Store,
    pub device: Device,
    /// This worker's name in leases.
    pub owner: String,
    pub kinds: Vec<JobKind>,
    pub lease: Duration,
    /// Local scratch space for downloads, train states and outputs.
    pub work_dir: PathBuf,
    /// Bytes of device memory that resident unit models may take (merges for scores and
    /// sweeps).
    pub resident_bytes: u64,
}

impl Worker {
    /// Runs jobs until `stop` turns true. A training job or a sweep shard then stops at its
    /// next step or mixture, its state goes to the store and the job back to the queue
    /// (without counting the attempt), for another worker to resume; a score job is
    /// finished. Idle, it wakes on the queue's notifications, and polls every second in
    /// case one was missed.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(queue::CHANNEL).await?;
        let presence = tokio::spawn(self.clone().report_presence());
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
        presence.abort();
        Ok(())
    }

    /// Says every few seconds that this worker is alive, on which device and for which
    /// kinds (`workers`; the dashboard lists the workers seen recently). Best effort: a
    /// database that does not answer only delays the next report.
    async fn report_presence(self) {
        let started = chrono::Utc::now();
        let device = crate::engine::device::name(self.device);
        let kinds: Vec<&str> = self.kinds.iter().map(|k| k.as_str()).collect();
        if let Err(e) = crate::registry::workers::forget_gone(&self.pool).await {
            tracing::debug!("forgetting workers gone for a day: {e}");
        }
        loop {
            let seen =
                crate::registry::workers::seen(&self.pool, &self.owner, &device, &kinds, started);
            if let Err(e) = seen.await {
                tracing::debug!("reporting this worker's presence: {e}");
            }
            tokio::time::sleep(PRESENCE_EVERY).await;
        }
    }

    /// Claims one job and runs it to the end. Returns whether there was a job.
    pub async fn try_run_one(&self) -> Result<bool, sqlx::Error> {
        self.run_one(None).await
    }

    /// Claims one job and runs it; when `stop` turns true meanwhile, a training job or sweep
    /// shard is released at its next step instead of finished.
    async fn run_one(
        &self,
        stop: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Result<bool, sqlx::Error> {
        let Some(lease) = queue::claim(&self.pool, &self.owner, &self.kinds, self.lease).await?
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
        let payload = Payload::of(&lease.job);
        let outcome = match payload.clone() {
            Err(e) => Err(JobError::Fatal(e)),
            Ok(Payload::Pretrain(job)) => jobs::pretrain::run(self, &lease, job, cancel).await,
            Ok(Payload::Train(job)) => jobs::train::run(self, &lease, job, cancel).await,
            Ok(Payload::Score(job)) => jobs::score::run(self, &lease, job).await,
            Ok(Payload::Sweep(job)) => jobs::sweep::run(self, &lease, job, cancel).await,
            Ok(Payload::Validate(job)) => jobs::validate::run(self, &lease, job, cancel).await,
            Ok(Payload::Export(job)) => jobs::export::run(self, &lease, job).await,
            Ok(Payload::Search(job)) => jobs::search::run(self, &lease, job, cancel).await,
        };
        heartbeat.abort();
        if let Some(task) = on_stop {
            task.abort();
        }
        let recorded = match outcome {
            Ok(Done::Succeeded) | Ok(Done::LeaseLost) => Ok(()),
            Ok(Done::Cancelled) if releasing.load(Ordering::SeqCst) => {
                tracing::info!(job = %lease.id(), "released for another worker to resume");
                // What the next worker needs is in the store; the local copy goes.
                remove_dir(&self.job_dir(&lease)).await;
                queue::release(&self.pool, &lease).await
            }
            // Only the job's owner marks its model or base failed (the stop may have been a
            // lost lease, with another worker now training it).
            Ok(Done::Cancelled) => {
                remove_dir(&self.job_dir(&lease)).await;
                match queue::cancelled(&self.pool, &lease).await {
                    Ok(()) => Ok(self.target_cancelled(payload.ok()).await?),
                    lost => lost,
                }
            }
            Err(JobError::Retryable(message)) => {
                queue::fail(&self.pool, &lease, &message, true).await
            }
            Err(JobError::Fatal(message)) => {
                match queue::fail(&self.pool, &lease, &message, false).await {
                    Ok(()) => Ok(self.target_failed(payload.ok()).await?),
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
    async fn target_failed(&self, payload: Option<Payload>) -> Result<(), sqlx::Error> {
        match payload {
            Some(Payload::Train(job)) => jobs::train::failed(self, &job).await,
            Some(Payload::Pretrain(job)) => jobs::pretrain::failed(self, &job).await,
            Some(Payload::Validate(job)) => jobs::validate::failed(self, &job).await,
            Some(
                Payload::Score(_) | Payload::Sweep(_) | Payload::Export(_) | Payload::Search(_),
            )
            | None => Ok(()),
        }
    }

    /// A cancelled training leaves its model `cancelled` (a base or a validation `failed`);
    /// asking for it again queues it anew.
    async fn target_cancelled(&self, payload: Option<Payload>) -> Result<(), sqlx::Error> {
        match payload {
            Some(Payload::Train(job)) => {
                crate::registry::models::mark_cancelled(&mut *self.pool.acquire().await?, job.model)
                    .await
            }
            other => self.target_failed(other).await,
        }
    }

    /// The base's side files (tokenizer, imported config), verified, into a model folder.
    pub(crate) async fn fetch_base_files(
        &self,
        base: &bases::Base,
        dir: &Path,
    ) -> Result<(), JobError> {
        for (file, sha256) in base.files.iter() {
            self.store
                .download_verified(&keys::base(&base.id, file), sha256, &dir.join(file))
                .await?;
        }
        Ok(())
    }

    /// The job's scratch folder.
    pub(crate) fn job_dir(&self, lease: &Lease) -> PathBuf {
        self.work_dir.join(format!("job-{}", lease.id()))
    }

    /// How many unit models of `unit_bytes` each fit the resident budget; an error naming
    /// the setting when fewer than `needed` (one mixture's) do.
    pub(crate) fn check_fits(&self, needed: usize, unit_bytes: u64) -> Result<usize, JobError> {
        let capacity = (self.resident_bytes / unit_bytes.max(1)) as usize;
        if capacity < needed {
            return Err(JobError::Fatal(format!(
                "a mixture of {needed} unit models needs {} MiB resident, more than this \
                 worker's budget of {} MiB (engine.resident_mb, MIXPOOL_RESIDENT_MB)",
                (needed as u64 * unit_bytes) >> 20,
                self.resident_bytes >> 20
            )));
        }
        Ok(capacity)
    }
}

/// The default resident budget: a quarter of the available memory on the CPU, half the free
/// memory on a GPU (the rest holds the merged model, activations and the allocator's
/// slack); 4 GiB where the free memory cannot be told.
pub fn default_resident_bytes(device: Device) -> u64 {
    let share = if device == Device::Cpu { 4 } else { 2 };
    crate::engine::device::free_memory(device).map_or(4 << 30, |free| free / share)
}

/// The engine's train state mirrored into the store under `models/<id>/train_state/`, with a
/// manifest of the files' hashes, so that the worker that takes over a job whose worker
/// died resumes where that one last saved (and ends with the same weights).
pub(crate) struct StateMirror {
    pub store: Store,
    /// The store folder, e.g. `models/<id>/train_state`.
    pub prefix: String,
    /// The engine's local state folder.
    pub dir: PathBuf,
    /// The step of the last state uploaded or restored.
    pub uploaded: u64,
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
    pub async fn restore(&mut self) -> Result<(), JobError> {
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
    /// written last, so it only ever names complete files, and the states it no longer
    /// names are removed after it (at most two states exist, and only for that moment).
    pub async fn push(&mut self) -> Result<(), crate::store::StoreError> {
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
        // The manifest names the new state now: earlier ones are of no use to anyone.
        for key in self.store.list(&self.prefix).await? {
            let file = key.rsplit('/').next().unwrap_or_default();
            if file.starts_with("state-") && file != tensors {
                self.store.delete(&key).await?;
            }
        }
        Ok(())
    }

    /// Removes the mirror once the model is stored.
    pub async fn forget(store: &Store, prefix: &str) {
        if let Ok(keys) = store.list(prefix).await {
            for key in keys {
                let _ = store.delete(&key).await;
            }
        }
    }
}

/// Extends the lease every third of its length; raises `cancel` when the job was cancelled
/// or the lease was lost, so the engine stops at its next step.
async fn heartbeat(pool: PgPool, lease: Lease, every: Duration, cancel: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(every / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        match queue::heartbeat(&pool, &lease, every).await {
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

/// Removes a scratch folder (one that is not there is fine).
pub(crate) async fn remove_dir(dir: &Path) {
    match tokio::fs::remove_dir_all(dir).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!("could not remove {}: {e}", dir.display())
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_mirror_keeps_only_the_latest_complete_state_at_every_checkpoint() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(
            &format!("file://{}", root.path().join("store").display()),
            &crate::store::S3Config::default(),
        )
        .unwrap();
        let dir = root.path().join("local");
        std::fs::create_dir_all(&dir).unwrap();
        let prefix = "models/m/train_state".to_string();
        let mut mirror = StateMirror {
            store: store.clone(),
            prefix: prefix.clone(),
            dir: dir.clone(),
            uploaded: 0,
        };
        for step in [3u64, 6, 9] {
            // As the engine saves: the new tensors, then the file naming them, then the old
            // tensors go.
            let tensors = format!("state-{step}.safetensors");
            std::fs::write(dir.join(&tensors), vec![step as u8; 1000]).unwrap();
            let named = serde_json::json!({"step": step, "tensors": tensors});
            std::fs::write(dir.join("train_state.json"), named.to_string()).unwrap();
            if step > 3 {
                std::fs::remove_file(dir.join(format!("state-{}.safetensors", step - 3))).unwrap();
            }
            mirror.push().await.unwrap();
            let states: Vec<String> = store
                .list(&prefix)
                .await
                .unwrap()
                .into_iter()
                .filter(|k| k.contains("/state-"))
                .collect();
            assert_eq!(states, [format!("{prefix}/{tensors}")], "step {step}");
            let manifest: Manifest = serde_json::from_slice(
                &store
                    .get_optional(&mirror.key("manifest.json"))
                    .await
                    .unwrap()
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(manifest.step, step);
        }
        // A fresh worker restores the latest state.
        let mut other = StateMirror {
            store,
            prefix,
            dir: root.path().join("other"),
            uploaded: 0,
        };
        other.restore().await.unwrap();
        assert_eq!(other.uploaded, 9);
        assert_eq!(
            std::fs::read(other.dir.join("state-9.safetensors")).unwrap(),
            vec![9u8; 1000]
        );
    }
}
