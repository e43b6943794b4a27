//! What the integrity check ([`crate::fsck`]) reads of the registry: the objects rows
//! expect, with their recorded sha256, and the work in progress that owns objects.

use std::collections::BTreeMap;

use sqlx::PgPool;
use uuid::Uuid;

/// A base's id, name, weights and side files (file name → sha256).
pub type BaseRow = (
    Uuid,
    String,
    Option<String>,
    sqlx::types::Json<BTreeMap<String, String>>,
);

/// Every partition's (`partitions`) or eval set's (`eval_sets`) name, content sha256 and
/// stored object's sha256.
/// Each dataset's name, content sha256, object sha256 and the objects it is read from (in
/// place; then it has no object of its own).
pub async fn datasets(pool: &PgPool, table: Datasets) -> Result<Vec<DatasetRow>, sqlx::Error> {
    let table = match table {
        Datasets::Partitions => "partitions",
        Datasets::EvalSets => "eval_sets",
    };
    sqlx::query_as(&format!(
        "select name, sha256, object_sha256, sources from {table}"
    ))
    .fetch_all(pool)
    .await
}

pub type DatasetRow = (
    String,
    String,
    String,
    Option<sqlx::types::Json<crate::sources::Sources>>,
);

#[derive(Debug, Clone, Copy)]
pub enum Datasets {
    Partitions,
    EvalSets,
}

pub async fn bases(pool: &PgPool) -> Result<Vec<BaseRow>, sqlx::Error> {
    sqlx::query_as("select id, name, weights_sha256, files from bases")
        .fetch_all(pool)
        .await
}

/// Where trained weights live under `models/<id>/`.
#[derive(Debug, Clone, Copy)]
pub enum Trained {
    UnitModels,
    Validations,
}

/// The ready unit models' or validations' ids and recorded weights.
pub async fn ready_weights(
    pool: &PgPool,
    table: Trained,
) -> Result<Vec<(Uuid, Option<String>)>, sqlx::Error> {
    let table = match table {
        Trained::UnitModels => "models",
        Trained::Validations => "validations",
    };
    sqlx::query_as(&format!(
        "select id, weights_sha256 from {table} where state = 'ready'"
    ))
    .fetch_all(pool)
    .await
}

/// The unit models' Fisher estimates (kept beside their weights): (model, sha256).
pub async fn fisher_estimates(pool: &PgPool) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    sqlx::query_as("select id, fisher_sha256 from models where fisher_sha256 is not null")
        .fetch_all(pool)
        .await
}

/// Each unit model's stored per-token NLLs on an eval set: (model, object, sha256).
pub async fn logprobs(pool: &PgPool) -> Result<Vec<(Uuid, String, String)>, sqlx::Error> {
    sqlx::query_as("select model_id, object, sha256 from unit_logprobs")
        .fetch_all(pool)
        .await
}

/// Succeeded exports whose partitions all still exist: (job, object, sha256).
pub async fn live_exports(
    pool: &PgPool,
) -> Result<Vec<(Uuid, Option<String>, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "select j.id, j.result->>'object', j.result->>'sha256' from jobs j
         where j.kind = 'export' and j.state = 'succeeded'
           and not exists (
               select 1 from jsonb_array_elements(j.payload->'mixture') m
               where not exists (
                   select 1 from partitions p where p.id = (m->>'partition')::uuid))",
    )
    .fetch_all(pool)
    .await
}

/// The store folders of train states that queued or running work will still use: trainings'
/// (`models/<id>/train_state/`), pre-trainings' (`bases/<id>/train_state/`) and queued
/// validations'.
pub async fn train_states_in_use(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "select 'models/' || (payload->>'model') || '/train_state/' from jobs
         where state in ('queued', 'running') and kind = 'train' and payload ? 'model'
         union all
         select 'bases/' || (payload->>'base') || '/train_state/' from jobs
         where state in ('queued', 'running') and kind = 'pretrain' and payload ? 'base'
         union all
         select 'models/' || id || '/train_state/' from validations where state = 'queued'",
    )
    .fetch_all(pool)
    .await
}

/// Running jobs whose lease expired: (id, kind, lease owner).
pub async fn expired_leases(
    pool: &PgPool,
) -> Result<Vec<(Uuid, String, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "select id, kind, lease_owner from jobs where state = 'running' and lease_expires_at < now()",
    )
    .fetch_all(pool)
    .await
}
