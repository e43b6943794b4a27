//! The work of each job kind, one module per kind. The worker claims a job, reads its typed
//! [`kind::Payload`] and calls that kind's `run`; the API only uses [`kind`] to queue work.

pub(crate) mod export;
pub mod kind;
mod merger;
pub(crate) mod pretrain;
pub(crate) mod score;
pub(crate) mod search;
pub(crate) mod sweep;
pub(crate) mod train;
mod training;
pub(crate) mod validate;

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

/// How a job that did not fail ended.
pub enum Done {
    Succeeded,
    /// Stopped on request (cancel, or the worker shutting down) before it finished.
    Cancelled,
    /// Another worker holds the job now: nothing of ours is recorded.
    LeaseLost,
}

/// Commits the job's success with the rows the caller wrote in `tx`.
pub(crate) async fn succeed(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    lease: &crate::registry::jobs::Lease,
    result: &serde_json::Value,
) -> Result<Done, JobError> {
    use crate::registry::jobs::{self, QueueError};
    match jobs::succeed(&mut tx, lease, result).await {
        Ok(()) => {
            tx.commit().await?;
            Ok(Done::Succeeded)
        }
        Err(QueueError::LeaseLost(_)) => Ok(Done::LeaseLost),
        Err(QueueError::Database(e)) => Err(e.into()),
    }
}

/// Commits `tx` (the rows a job stored as it went) with the job's progress, marked as kept
/// for the next worker (`saved`), fenced by the attempt. `Ok(false)` when the lease was lost:
/// nothing is committed then. A cancellation asked for meanwhile raises `cancel`.
pub(crate) async fn commit_progress(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    lease: &crate::registry::jobs::Lease,
    fraction: f32,
    message: &str,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<bool, JobError> {
    use crate::registry::jobs::{self, QueueError};
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
                cancel.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(true)
        }
        Err(QueueError::LeaseLost(_)) => Ok(false),
        Err(QueueError::Database(e)) => Err(e.into()),
    }
}

/// The ready unit models of `partitions` for a base and recipe, in the partitions' order; a
/// partition without one fails the job for good.
pub(crate) async fn ready_units(
    pool: &sqlx::PgPool,
    base: uuid::Uuid,
    recipe: uuid::Uuid,
    partitions: &[uuid::Uuid],
) -> Result<Vec<crate::registry::models::UnitModel>, JobError> {
    let units = crate::registry::models::for_partitions(pool, base, recipe, partitions).await?;
    partitions
        .iter()
        .map(|p| {
            units
                .iter()
                .find(|u| u.partition_id == *p && u.state == "ready")
                .cloned()
                .ok_or_else(|| JobError::Fatal(format!("partition {p} has no ready unit model")))
        })
        .collect()
}
