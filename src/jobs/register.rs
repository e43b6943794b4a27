//! `register` jobs: a partition or eval set from objects already in the pool's store, read in
//! place on a worker (nothing streams through the API). Each object is read once, its size
//! and sha256 recorded; its documents are those an upload of the same text gives, so the
//! dataset's identity (the sha256 of its normalised documents) and everything trained on it
//! are the same. A partition's unit model is then queued as an upload's is.

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::JobError;
use super::context::{Context, blocking};
use super::kind::{Kind, Outcome};
use crate::ingest::normalised;
use crate::registry::RegistryError;
use crate::registry::datasets::{self, Kind as Datasets, NewDataset};
use crate::sources::{self, SourceFormat, SourceObject, Sources};

pub struct Register;

/// `register`: the dataset `name` of `kind`, read from `keys` in that order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterJob {
    /// `partition` or `eval_set`.
    pub kind: String,
    pub name: String,
    pub domain: Option<String>,
    pub tags: Vec<String>,
    /// Partitions: whether its unit model is wanted.
    pub train: bool,
    pub format: SourceFormat,
    pub text_field: String,
    pub keys: Vec<String>,
}

impl RegisterJob {
    pub fn datasets(&self) -> Datasets {
        if self.kind == "eval_set" {
            Datasets::EvalSet
        } else {
            Datasets::Partition
        }
    }
}

impl Kind for Register {
    const NAME: &'static str = "register";
    const ABOUT: &'static str =
        "reads a partition or eval set in place from objects of the store and registers it";
    type Payload = RegisterJob;

    fn dedup_key(job: &RegisterJob) -> String {
        format!("register:{}:{}", job.kind, job.name)
    }

    async fn run(cx: &Context, job: RegisterJob) -> Outcome {
        run(cx, job).await
    }
}

/// Queues the registration (the active job when the same one is queued or running).
pub async fn queue(
    pool: &sqlx::PgPool,
    job: &RegisterJob,
) -> Result<crate::registry::jobs::Job, sqlx::Error> {
    let mut db = pool.acquire().await?;
    let (job, _) = crate::registry::jobs::enqueue(&mut db, &Register::job(job)).await?;
    Ok(job)
}

async fn run(cx: &Context, job: RegisterJob) -> Outcome {
    let fatal = |message: String| JobError::Fatal(message);
    let mut objects = Vec::with_capacity(job.keys.len());
    let mut hasher = Sha256::new();
    let (mut documents, mut bytes) = (0i64, 0i64);
    for (done, key) in job.keys.iter().enumerate() {
        if cx.is_cancelled() {
            return Ok(super::Done::Cancelled);
        }
        let (data, sha256) = cx
            .store
            .get_hashed(key)
            .await?
            .ok_or_else(|| fatal(format!("{key} is not in the store")))?;
        objects.push(SourceObject {
            key: key.clone(),
            bytes: data.len() as u64,
            sha256,
        });
        let (key, format, field) = (key.clone(), job.format, job.text_field.clone());
        let docs = blocking(move || {
            sources::documents(&key, data.to_vec(), format, &field)
                .map_err(|e| JobError::Fatal(e.to_string()))
        })
        .await?;
        for doc in &docs {
            hasher.update(normalised(doc));
            documents += 1;
            bytes += doc.text.len() as i64;
        }
        let message = format!("object {}/{}", done + 1, job.keys.len());
        let fraction = (done + 1) as f32 / job.keys.len() as f32;
        if let Err(e) =
            crate::registry::jobs::progress(&cx.pool, &cx.lease, fraction, &message, None).await
        {
            tracing::debug!("progress: {e}");
        }
    }
    if documents == 0 {
        return Err(fatal(
            sources::SourceError::Empty {
                objects: objects.len(),
            }
            .to_string(),
        ));
    }
    let kind = job.datasets();
    let new = NewDataset {
        name: job.name.clone(),
        domain: job.domain.clone(),
        tags: job.tags.clone(),
        sha256: hex::encode(hasher.finalize()),
        // No object of its own: it is read from its sources.
        object_sha256: String::new(),
        bytes,
        documents,
        shape: None,
        train: job.train,
        sources: Some(Sources {
            format: job.format,
            text_field: job.text_field.clone(),
            objects,
        }),
    };
    let mut db = cx.pool.acquire().await?;
    let created = match datasets::insert(&mut db, kind, &new).await {
        Ok(created) => created,
        Err(e @ RegistryError::NameTaken { .. }) => return Err(fatal(e.to_string())),
        Err(RegistryError::Database(e)) => return Err(e.into()),
    };
    drop(db);
    let (is_new, dataset) = (created.is_new(), created.into_inner());
    let result = match kind {
        Datasets::Partition => {
            let models =
                crate::service::partitions::uploaded(&cx.pool, &dataset, is_new, job.train)
                    .await
                    .map_err(|e| JobError::Retryable(e.to_string()))?;
            json!({ "partition": dataset, "models": models, "new": is_new })
        }
        Datasets::EvalSet => json!({ "eval_set": dataset, "new": is_new }),
    };
    cx.succeed(cx.pool.begin().await?, &result).await
}
