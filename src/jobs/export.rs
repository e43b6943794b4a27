//! `export` jobs: a mixture's unit models merged in memory on the worker (the path scores
//! take), written as a Hugging Face directory in the base's dtype with its tokenizer, and
//! stored as one tar that `GET /v1/mixtures/export` streams.

use serde_json::json;
use uuid::Uuid;

use super::kind::ExportJob;
use super::merger::Merger;
use super::{Done, JobError};
use crate::engine::eval::EvalConfig;
use crate::engine::hf;
use crate::registry::bases;
use crate::registry::jobs::Lease;
use crate::worker::Worker;

pub(crate) async fn run(worker: &Worker, lease: &Lease, job: ExportJob) -> Result<Done, JobError> {
    let pool = &worker.pool;
    let base = bases::find(pool, &job.base.to_string())
        .await?
        .ok_or_else(|| JobError::Fatal(format!("base {} not found", job.base)))?;
    let partitions: Vec<Uuid> = job.mixture.iter().map(|m| m.partition).collect();
    let members = super::ready_units(pool, job.base, job.recipe, &partitions).await?;
    let dir = worker.job_dir(lease);
    let merged = dir.join("merged");
    let mut merger = Merger::open(worker, lease, &base, &[], &EvalConfig::default()).await?;
    let saved = async {
        worker.check_fits(members.len(), merger.unit_bytes)?;
        for unit in &members {
            merger.load(worker, unit).await?;
        }
        let ids: Vec<Uuid> = members.iter().map(|u| u.id).collect();
        let weights: Vec<f64> = job.mixture.iter().map(|m| m.weight).collect();
        merger.score(&ids, &weights, &[]).await?;
        merger.save(merged.clone()).await
    }
    .await;
    merger.close().await;
    saved?;
    let (export, tar_path) = (dir.join("export"), dir.join("model.tar"));
    let (from, to, tar_file) = (merged.clone(), export.clone(), tar_path.clone());
    tokio::task::spawn_blocking(move || -> Result<(), JobError> {
        hf::export(&from, &to).map_err(|e| JobError::Fatal(e.to_string()))?;
        let io = |e: std::io::Error| JobError::Retryable(e.to_string());
        let mut builder = tar::Builder::new(std::fs::File::create(&tar_file).map_err(io)?);
        builder.append_dir_all("model", &to).map_err(io)?;
        builder.finish().map_err(io)
    })
    .await
    .map_err(|e| JobError::Retryable(format!("the export thread failed: {e}")))??;
    let stored = worker.store.put_file(&tar_path, &job.object).await?;
    let result = json!({ "object": job.object, "sha256": stored.sha256, "bytes": stored.bytes });
    let done = super::succeed(pool.begin().await?, lease, &result).await?;
    crate::worker::remove_dir(&dir).await;
    Ok(done)
}
