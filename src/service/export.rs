//! Exporting a mixture's merged model: the same export made once (its tar is named by what
//! is merged) and streamed from the store when asked again; otherwise an `export` job merges
//! it on a worker, and the request waits for it up to its deadline.

use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use super::resolve;
use super::scoring::WaitForJob;
use super::units::{self, Training};
use crate::error::{Error, Result};
use crate::jobs::{Export, ExportJob, Kind as _};
use crate::mixture::MixtureRequest;
use crate::registry::jobs::{self, Job};
use crate::registry::models;
use crate::store::{Store, StoreError, keys};

/// An export asked for.
pub struct Request<'a> {
    pub asked: &'a MixtureRequest,
    /// The base and recipe, defaults filled in.
    pub names: (&'a str, &'a str),
    /// Whether missing unit models are queued.
    pub train: bool,
    pub deadline: Instant,
    /// Where the tar is written.
    pub tar: &'a Path,
}

pub enum Exported {
    /// The tar is at the request's path.
    Tar,
    /// Unit models are training first.
    Training(Training),
    /// The export job is still running.
    Pending(Box<Job>),
}

/// Exports the mixture a request names (see the module's comment).
pub async fn export(
    pool: &PgPool,
    store: &Store,
    waiter: &impl WaitForJob,
    request: Request<'_>,
) -> Result<Exported> {
    let on = resolve::mixture_on(pool, request.asked, request.names).await?;
    let mixture = &on.mixture;
    let ids: Vec<Uuid> = mixture.members.iter().map(|m| m.partition).collect();
    let missing = models::not_ready(pool, on.base.id, on.recipe.id, &ids).await?;
    let name = |id: Uuid| on.partitions.name(id).to_string();
    let models = (on.base.id, on.recipe.id);
    if let Some(training) =
        units::train_missing(pool, models, &missing, &name, request.train).await?
    {
        return Ok(Exported::Training(training));
    }

    // What is merged names the stored tar: the same export is made once.
    let digest = hex::encode(Sha256::digest(
        json!([on.base.id, on.recipe.id, mixture.key()]).to_string(),
    ));
    let export = ExportJob {
        base: on.base.id,
        recipe: on.recipe.id,
        mixture: mixture.members.clone(),
        object: keys::export(&digest),
    };
    let dedup = Export::dedup_key(&export);
    // An export made before is streamed from the store, unless its tar was removed since.
    if let Some(done) = jobs::latest_succeeded(pool, &dedup).await?
        && fetch(store, &done, request.tar).await?
    {
        return Ok(Exported::Tar);
    }
    let queued = crate::jobs::export::queue(pool, &export).await?;
    let job = waiter
        .wait_for_job(queued.id, request.deadline)
        .await?
        .ok_or_else(|| Error::internal("an export job vanished"))?;
    match job.state.as_str() {
        "succeeded" => {}
        "failed" | "cancelled" => {
            return Err(Error::unprocessable(
                "export_failed",
                format!(
                    "the export job {} {}: {}",
                    job.id,
                    job.state,
                    job.error.as_deref().unwrap_or("no error recorded")
                ),
            ));
        }
        _ => return Ok(Exported::Pending(Box::new(job))),
    }
    if !fetch(store, &job, request.tar).await? {
        return Err(Error::internal(format!(
            "export job {} left no object",
            job.id
        )));
    }
    Ok(Exported::Tar)
}

/// Downloads (verified) the tar a succeeded export job stored; `false` when the job names
/// none or the store no longer has it.
async fn fetch(store: &Store, job: &Job, path: &Path) -> Result<bool> {
    let result = job.result.clone().unwrap_or_default();
    let (Some(object), Some(sha256)) = (result["object"].as_str(), result["sha256"].as_str())
    else {
        return Ok(false);
    };
    match store.download_verified(object, sha256, path).await {
        Ok(()) => Ok(true),
        Err(StoreError::Backend(object_store::Error::NotFound { .. })) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
