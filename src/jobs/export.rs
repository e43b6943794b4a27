//! `export` jobs: a mixture's unit models merged in memory on the worker (the path scores
//! take), written as a Hugging Face directory in the base's dtype with its tokenizer, and
//! stored as one tar that `GET /v1/mixtures/export` streams.

use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::JobError;
use super::context::{Context, blocking};
use super::kind::{Kind, Outcome};
use super::merger::{Combine, Merger};
use crate::engine::eval::EvalConfig;
use crate::engine::hf;
use crate::mixture::Member;
use crate::registry::bases;

pub struct Export;

/// `export`: a canonical mixture of one base and recipe, merged and written to `object`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportJob {
    pub base: Uuid,
    pub recipe: Uuid,
    pub mixture: Vec<Member>,
    /// The store key of the tar (`exports/<digest>.tar`).
    pub object: String,
}

impl Kind for Export {
    const NAME: &'static str = "export";
    const ABOUT: &'static str =
        "merges a mixture's unit models into a Hugging Face directory in the store";
    const MERGES: bool = true;
    type Payload = ExportJob;

    fn dedup_key(job: &ExportJob) -> String {
        format!("export:{}", job.object)
    }

    async fn run(cx: &Context, job: ExportJob) -> Outcome {
        run(cx, job).await
    }
}

/// The export job of `job` (the active one when an identical export is queued or running).
pub async fn queue(
    pool: &sqlx::PgPool,
    job: &ExportJob,
) -> Result<crate::registry::jobs::Job, sqlx::Error> {
    let mut db = pool.acquire().await?;
    let (job, _) = crate::registry::jobs::enqueue(&mut db, &Export::job(job)).await?;
    Ok(job)
}

async fn run(cx: &Context, job: ExportJob) -> Outcome {
    let pool = &cx.pool;
    let base = bases::find(pool, &job.base.to_string())
        .await?
        .ok_or_else(|| JobError::Fatal(format!("base {} not found", job.base)))?;
    let partitions: Vec<Uuid> = job.mixture.iter().map(|m| m.partition).collect();
    let members = super::ready_units(pool, job.base, job.recipe, &partitions).await?;
    let dir = cx.scratch.clone();
    let merged = dir.join("merged");
    let mut merger = Merger::open(cx, &base, &[], &EvalConfig::default()).await?;
    let saved = async {
        cx.check_fits(members.len(), merger.unit_bytes)?;
        for unit in &members {
            merger.load(cx, unit).await?;
        }
        let ids: Vec<Uuid> = members.iter().map(|u| u.id).collect();
        let weights: Vec<f64> = job.mixture.iter().map(|m| m.weight).collect();
        merger.score(&ids, &weights, Combine::Average, &[]).await?;
        merger.save(merged.clone()).await
    }
    .await;
    merger.finish(cx).await;
    saved?;
    let (export, tar_path) = (dir.join("export"), dir.join("model.tar"));
    let (from, to, tar_file) = (merged.clone(), export.clone(), tar_path.clone());
    blocking(move || -> Result<(), JobError> {
        hf::export(&from, &to).map_err(|e| JobError::Fatal(e.to_string()))?;
        let io = |e: std::io::Error| JobError::Retryable(e.to_string());
        let mut builder = tar::Builder::new(std::fs::File::create(&tar_file).map_err(io)?);
        builder.append_dir_all("model", &to).map_err(io)?;
        builder.finish().map_err(io)
    })
    .await?;
    let stored = cx.store.put_file(&tar_path, &job.object).await?;
    let result = json!({ "object": job.object, "sha256": stored.sha256, "bytes": stored.bytes });
    let done = cx.succeed(pool.begin().await?, &result).await?;
    cx.clear_scratch().await;
    Ok(done)
}
