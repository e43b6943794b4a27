//! Unit models: one per base × recipe × partition, trained once by a `train` job.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::Created;
use super::jobs::{self, NewJob};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct UnitModel {
    pub id: Uuid,
    pub base_id: Uuid,
    pub recipe_id: Uuid,
    pub partition_id: Uuid,
    /// queued (a job will train it), ready (weights stored), failed or cancelled.
    pub state: String,
    pub job_id: Option<Uuid>,
    pub weights_sha256: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The diagonal Fisher estimate's sha256, when training kept it.
    pub fisher_sha256: Option<String>,
}

/// The unit model for (base, recipe, partition): created with its training job (`job` of
/// the model's id) in the caller's transaction when it does not exist yet; one whose job
/// ended without weights is queued again.
pub async fn ensure(
    db: &mut PgConnection,
    base: Uuid,
    recipe: Uuid,
    partition: Uuid,
    job: fn(Uuid) -> NewJob,
) -> Result<Created<UnitModel>, sqlx::Error> {
    let inserted: Option<UnitModel> = sqlx::query_as(
        "insert into models (id, base_id, recipe_id, partition_id, state) values ($1, $2, $3, $4, 'queued')
         on conflict (base_id, recipe_id, partition_id) do nothing returning *",
    )
    .bind(Uuid::new_v4())
    .bind(base)
    .bind(recipe)
    .bind(partition)
    .fetch_optional(&mut *db)
    .await?;
    let (model, new) = match inserted {
        Some(model) => (model, true),
        None => {
            let model: UnitModel = sqlx::query_as(
                "select * from models where base_id = $1 and recipe_id = $2 and partition_id = $3",
            )
            .bind(base)
            .bind(recipe)
            .bind(partition)
            .fetch_one(&mut *db)
            .await?;
            // A job that ended without weights (failed after its retries, or cancelled)
            // may have left the model `queued`: it is queued again, like a failed one.
            let job_ended = match model.job_id {
                Some(job) => jobs::get(&mut *db, job)
                    .await?
                    .is_some_and(|j| matches!(j.state.as_str(), "failed" | "cancelled")),
                None => true,
            };
            if model.state == "ready" || (model.state == "queued" && !job_ended) {
                return Ok(Created::Existing(model));
            }
            (model, false)
        }
    };
    let (job, _) = jobs::enqueue(&mut *db, &job(model.id)).await?;
    let model =
        sqlx::query_as("update models set job_id = $2, state = 'queued' where id = $1 returning *")
            .bind(model.id)
            .bind(job.id)
            .fetch_one(&mut *db)
            .await?;
    Ok(if new {
        Created::New(model)
    } else {
        Created::Existing(model)
    })
}

/// Records the stored weights (in the training job's success transaction); `None` when the
/// row is gone (its partition was deleted while it trained).
pub async fn mark_ready(
    db: &mut PgConnection,
    id: Uuid,
    weights_sha256: &str,
    fisher_sha256: Option<&str>,
) -> Result<Option<UnitModel>, sqlx::Error> {
    sqlx::query_as(
        "update models set state = 'ready', weights_sha256 = $2, fisher_sha256 = $3
         where id = $1 returning *",
    )
    .bind(id)
    .bind(weights_sha256)
    .bind(fisher_sha256)
    .fetch_optional(db)
    .await
}

pub async fn mark_failed(db: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("update models set state = 'failed' where id = $1 and state = 'queued'")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// A model whose training job was cancelled (before it ran, or by its worker).
pub async fn mark_cancelled(db: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("update models set state = 'cancelled' where id = $1 and state = 'queued'")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<UnitModel>, sqlx::Error> {
    sqlx::query_as("select * from models where id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The unit models of `partitions` for one base and recipe (missing ones are absent).
pub async fn for_partitions<'e>(
    db: impl sqlx::PgExecutor<'e>,
    base: Uuid,
    recipe: Uuid,
    partitions: &[Uuid],
) -> Result<Vec<UnitModel>, sqlx::Error> {
    sqlx::query_as(
        "select * from models where base_id = $1 and recipe_id = $2 and partition_id = any($3) order by partition_id",
    )
    .bind(base)
    .bind(recipe)
    .bind(partitions)
    .fetch_all(db)
    .await
}

/// Each partition's size in the base's tokens, as its unit model's training counted them
/// (the job's `data_tokens`), for the partitions whose ready unit model has the count.
pub async fn data_tokens(
    pool: &PgPool,
    base: Uuid,
    recipe: Uuid,
    partitions: &[Uuid],
) -> Result<HashMap<Uuid, u64>, sqlx::Error> {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "select m.partition_id, (j.result->>'data_tokens')::bigint from models m
         join jobs j on j.id = m.job_id
         where m.base_id = $1 and m.recipe_id = $2 and m.partition_id = any($3)
           and m.state = 'ready' and j.result ? 'data_tokens'",
    )
    .bind(base)
    .bind(recipe)
    .bind(partitions)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(p, t)| (p, t.max(0) as u64))
        .collect())
}

/// The partitions among `partitions` without a ready unit model for the base and recipe, in
/// the given order, each with its model when one exists (queued, failed or cancelled).
pub async fn not_ready<'e>(
    db: impl sqlx::PgExecutor<'e>,
    base: Uuid,
    recipe: Uuid,
    partitions: &[Uuid],
) -> Result<Vec<(Uuid, Option<UnitModel>)>, sqlx::Error> {
    let found = for_partitions(db, base, recipe, partitions).await?;
    Ok(partitions
        .iter()
        .filter_map(|p| {
            let model = found.iter().find(|m| m.partition_id == *p).cloned();
            match &model {
                Some(m) if m.state == "ready" => None,
                _ => Some((*p, model)),
            }
        })
        .collect())
}

/// Queues (in the caller's transaction) the training of every unit model of `partitions`
/// for one base and recipe that is neither ready nor training: missing, cancelled, or failed
/// when `retry_failed`. Returns the models that are not ready, as they now are, in the given
/// order.
pub async fn train(
    db: &mut PgConnection,
    base: Uuid,
    recipe: Uuid,
    partitions: &[Uuid],
    retry_failed: bool,
    job: fn(Uuid) -> NewJob,
) -> Result<Vec<UnitModel>, sqlx::Error> {
    let missing = not_ready(&mut *db, base, recipe, partitions).await?;
    let mut models = Vec::with_capacity(missing.len());
    for (partition, model) in missing {
        match model {
            Some(failed) if failed.state == "failed" && !retry_failed => models.push(failed),
            _ => models.push(ensure(db, base, recipe, partition, job).await?.into_inner()),
        }
    }
    Ok(models)
}

/// The advisory lock the healing pass holds while it runs, so that the API servers sharing a
/// registry heal one at a time.
pub const HEAL_LOCK: i64 = 0x6d69_7870_6f6f_6c01;

/// The healing pass: queues the unit model of every partition that has none for the default
/// base (the newest ready one) and recipe (the newest), so that no gap left by a crash
/// between storing a partition and queueing its model survives. Cancelled and failed models
/// are left as they are. One server at a time: while another holds [`HEAL_LOCK`], this pass
/// does nothing. How many were queued.
pub async fn heal(pool: &PgPool, job: fn(Uuid) -> NewJob) -> Result<usize, sqlx::Error> {
    let (Some(base), Some(recipe)) = (
        super::bases::latest_ready(pool).await?,
        super::recipes::latest(pool).await?,
    ) else {
        return Ok(0);
    };
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("select pg_try_advisory_xact_lock($1)")
        .bind(HEAL_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(0);
    }
    let lacking: Vec<Uuid> = sqlx::query_scalar(
        "select p.id from partitions p where p.train and not exists (
             select 1 from models m
             where m.partition_id = p.id and m.base_id = $1 and m.recipe_id = $2)
         order by p.created_at",
    )
    .bind(base.id)
    .bind(recipe.id)
    .fetch_all(&mut *tx)
    .await?;
    for partition in &lacking {
        ensure(&mut tx, base.id, recipe.id, *partition, job).await?;
    }
    tx.commit().await?;
    Ok(lacking.len())
}

/// Which unit models [`list`] returns; unset fields match every model.
#[derive(Debug, Default)]
pub struct Filter {
    pub base: Option<Uuid>,
    pub recipe: Option<Uuid>,
    pub partition: Option<Uuid>,
    pub state: Option<String>,
}

/// A page of unit models, newest first (keyset on creation time and id).
pub async fn list(
    pool: &PgPool,
    filter: &Filter,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<UnitModel>, sqlx::Error> {
    let (at, id) = before.unzip();
    sqlx::query_as(
        "select * from models
         where ($1::uuid is null or base_id = $1) and ($2::uuid is null or recipe_id = $2)
           and ($3::uuid is null or partition_id = $3) and ($4::text is null or state = $4)
           and ($5::timestamptz is null or (created_at, id) < ($5, $6))
         order by created_at desc, id desc limit $7",
    )
    .bind(filter.base)
    .bind(filter.recipe)
    .bind(filter.partition)
    .bind(&filter.state)
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Every unit model trained (or queued) on a partition, oldest first.
pub async fn for_partition(pool: &PgPool, partition: Uuid) -> Result<Vec<UnitModel>, sqlx::Error> {
    sqlx::query_as("select * from models where partition_id = $1 order by created_at")
        .bind(partition)
        .fetch_all(pool)
        .await
}
