//! Cancelling a job: a queued one at once, with what cancelling leaves on its target (its
//! kind's `cancelled`); a running one is asked to stop at its worker's next heartbeat or
//! progress report.

use sqlx::PgPool;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::registry::jobs::{self, Job};

/// Cancels job `id`: the job as it then is.
pub async fn job(pool: &PgPool, id: Uuid) -> Result<Job> {
    let mut tx = pool.begin().await?;
    let job = jobs::cancel(&mut tx, id)
        .await?
        .ok_or_else(|| Error::not_found(format!("job {id}")))?;
    // A job cancelled before it ran shows on its target at once (a running one's when its
    // worker stops it).
    if job.state == "cancelled"
        && let Some(kind) = crate::jobs::find(&job.kind)
    {
        kind.cancelled(&mut tx, &job.payload).await?;
    }
    tx.commit().await?;
    Ok(job)
}
