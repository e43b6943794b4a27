//! What a job's work has at hand on its worker: the registry, the store, the device, a
//! scratch folder of its own, the memory budget for resident unit models, the lease that
//! fences its writes and the flag that asks it to stop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::PgPool;
use tch::Device;

use bytes::Bytes;

use super::merger::KeptMerger;
use super::mirror::StateMirror;
use super::{Done, JobError};
use crate::registry::bases::Base;
use crate::registry::jobs::{self, Lease, QueueError};
use crate::store::{Store, keys};
use crate::worker::cache::{Fetched, ModelCache};

pub struct Context {
    pub pool: PgPool,
    pub store: Store,
    pub device: Device,
    /// The worker's name, as its leases and job results give it.
    pub worker: String,
    /// The claim this job runs under: every state change is fenced by its attempt.
    pub lease: Lease,
    /// This job's scratch folder (removed when the job ends).
    pub scratch: PathBuf,
    /// Bytes of device memory that resident unit models may take.
    pub resident_bytes: u64,
    /// Raised when the job is cancelled, its lease is lost or the worker stops: the work
    /// stops at its next step.
    pub cancel: Arc<AtomicBool>,
    /// The worker's cache of model weights, and what this job fetched through it.
    pub cache: Arc<ModelCache>,
    pub fetched: Arc<Fetched>,
    /// The merger the worker keeps between jobs.
    pub kept: Arc<KeptMerger>,
}

impl Context {
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Model weights (a unit model's, a base's, a Fisher estimate) through the worker's
    /// cache: verified against `sha256` when fetched from the store.
    pub async fn fetch(&self, key: &str, sha256: &str) -> Result<Bytes, JobError> {
        Ok(self
            .cache
            .get(&self.store, key, sha256, &self.fetched)
            .await?)
    }

    /// The base's side files (tokenizer, imported config), verified, into a model folder.
    pub async fn fetch_base_files(&self, base: &Base, dir: &Path) -> Result<(), JobError> {
        for (file, sha256) in base.files.iter() {
            let data = self.fetch(&keys::base(&base.id, file), sha256).await?;
            tokio::fs::write(dir.join(file), &data)
                .await
                .map_err(|e| JobError::Retryable(format!("writing {file}: {e}")))?;
        }
        Ok(())
    }

    /// How many unit models of `unit_bytes` each fit the resident budget; an error naming
    /// the setting when fewer than `needed` (one mixture's) do.
    pub fn check_fits(&self, needed: usize, unit_bytes: u64) -> Result<usize, JobError> {
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

    /// The train state under the store folder `prefix`, mirrored from this job's scratch.
    pub fn mirror(&self, prefix: &str) -> StateMirror {
        StateMirror {
            store: self.store.clone(),
            prefix: prefix.to_string(),
            dir: self.scratch.join("train_state"),
            uploaded: 0,
        }
    }

    /// Commits the job's success with the rows the caller wrote in `tx`; the result gains
    /// what the job fetched (`fetched`).
    pub async fn succeed(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        result: &serde_json::Value,
    ) -> Result<Done, JobError> {
        let mut result = result.clone();
        if let Some(fields) = result.as_object_mut() {
            let fetched = serde_json::to_value(self.fetched.counts()).expect("counts serialise");
            fields.insert("fetched".into(), fetched);
        }
        match jobs::succeed(&mut tx, &self.lease, &result).await {
            Ok(()) => {
                tx.commit().await?;
                Ok(Done::Succeeded)
            }
            Err(QueueError::LeaseLost(_)) => Ok(Done::LeaseLost),
            Err(QueueError::Database(e)) => Err(e.into()),
        }
    }

    /// Commits `tx` (the rows the job stored as it went) with the job's progress, marked as
    /// kept for the next worker (`saved`), fenced by the attempt. `Ok(false)` when the lease
    /// was lost: nothing is committed then. A cancellation asked for meanwhile raises the
    /// cancel flag.
    pub async fn commit_progress(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        fraction: f32,
        message: &str,
    ) -> Result<bool, JobError> {
        let lease = &self.lease;
        let recorded = match jobs::progress(&mut *tx, lease, fraction, message, None).await {
            Ok(cancel_requested) => jobs::saved(&mut *tx, lease, fraction)
                .await
                .map(|()| cancel_requested),
            lost => lost,
        };
        match recorded {
            Ok(cancel_requested) => {
                tx.commit().await?;
                if cancel_requested {
                    self.cancel.store(true, Ordering::SeqCst);
                }
                Ok(true)
            }
            Err(QueueError::LeaseLost(_)) => Ok(false),
            Err(QueueError::Database(e)) => Err(e.into()),
        }
    }

    /// Removes this job's scratch folder.
    pub async fn clear_scratch(&self) {
        remove_dir(&self.scratch).await
    }
}

/// Runs blocking work (libtorch, file packing) on a blocking thread, inside the job's span,
/// so its log lines name the job.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, JobError> + Send + 'static,
) -> Result<T, JobError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
        .await
        .map_err(|e| JobError::Retryable(format!("a blocking thread of the job failed: {e}")))?
}

/// Removes a folder (one that is not there is fine).
pub async fn remove_dir(dir: &Path) {
    match tokio::fs::remove_dir_all(dir).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!("could not remove {}: {e}", dir.display())
        }
        _ => {}
    }
}
