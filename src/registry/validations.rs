//! Validations: models trained on the union of a mixture's partitions (one per base × recipe
//! × mixture), and their evaluations, the ground truth that proxy scores are compared with.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::jobs::{self, Job};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Validation {
    pub id: Uuid,
    pub base_id: Uuid,
    pub recipe_id: Uuid,
    pub mixture_key: String,
    pub partition_ids: Vec<Uuid>,
    pub tokens: i64,
    /// `union` (the partitions' union as it is) or `weights` (sequences drawn from each
    /// partition in proportion to `weights`).
    pub sampling: String,
    /// In `partition_ids`' order, summing to 1 (`weights` sampling only).
    pub weights: Option<Vec<f64>>,
    /// The training seed: the recipe's, or another to train the same mixture again.
    pub seed: i64,
    /// queued (a job will train it), ready (weights stored) or failed.
    pub state: String,
    pub job_id: Option<Uuid>,
    pub weights_sha256: Option<String>,
    /// The training summary.
    pub train: Option<Value>,
    pub created_at: DateTime<Utc>,
}

/// A validation's result on one eval set.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ValidationScore {
    pub validation_id: Uuid,
    pub eval_set_id: Uuid,
    pub eval_config_sha256: String,
    pub result: Value,
}

/// What a new validation is made of.
pub struct NewValidation<'a> {
    pub base: Uuid,
    pub recipe: Uuid,
    /// The uniform mixture's key for the union, the explicit mixture's with weights.
    pub mixture_key: &'a str,
    pub partitions: &'a [Uuid],
    /// The share of each partition's sequences; `None`: the union as it is.
    pub weights: Option<&'a [f64]>,
    pub tokens: i64,
    pub seed: i64,
}

impl NewValidation<'_> {
    fn sampling(&self) -> &'static str {
        if self.weights.is_some() {
            "weights"
        } else {
            "union"
        }
    }
}

/// The validation of a mixture, created when missing, and the job that trains it (when it
/// has no weights yet) and evaluates it on those of `eval_sets` it lacks. No job when there
/// is nothing to do. Runs in the caller's transaction.
pub async fn ensure(
    db: &mut PgConnection,
    new: &NewValidation<'_>,
    eval_sets: &[Uuid],
    eval_config_sha256: &str,
    job: fn(Uuid, Vec<Uuid>) -> jobs::NewJob,
) -> Result<(Validation, Option<Job>), sqlx::Error> {
    sqlx::query(
        "insert into validations (id, base_id, recipe_id, mixture_key, partition_ids, tokens,
                                  sampling, weights, seed, state)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'queued')
         on conflict (base_id, recipe_id, sampling, mixture_key, tokens, seed) do nothing",
    )
    .bind(Uuid::new_v4())
    .bind(new.base)
    .bind(new.recipe)
    .bind(new.mixture_key)
    .bind(new.partitions)
    .bind(new.tokens)
    .bind(new.sampling())
    .bind(new.weights)
    .bind(new.seed)
    .execute(&mut *db)
    .await?;
    let validation: Validation = sqlx::query_as(
        "select * from validations where base_id = $1 and recipe_id = $2 and sampling = $3
             and mixture_key = $4 and tokens = $5 and seed = $6
         for update",
    )
    .bind(new.base)
    .bind(new.recipe)
    .bind(new.sampling())
    .bind(new.mixture_key)
    .bind(new.tokens)
    .bind(new.seed)
    .fetch_one(&mut *db)
    .await?;
    let done: Vec<Uuid> = sqlx::query_scalar(
        "select eval_set_id from validation_scores
         where validation_id = $1 and eval_config_sha256 = $2",
    )
    .bind(validation.id)
    .bind(eval_config_sha256)
    .fetch_all(&mut *db)
    .await?;
    let missing: Vec<Uuid> = eval_sets
        .iter()
        .filter(|e| !done.contains(e))
        .copied()
        .collect();
    if validation.state == "ready" && missing.is_empty() {
        return Ok((validation, None));
    }
    let (job, _) = jobs::enqueue(&mut *db, &job(validation.id, missing)).await?;
    let validation = sqlx::query_as(
        "update validations set job_id = $2,
             state = case when state = 'ready' then 'ready' else 'queued' end
         where id = $1 returning *",
    )
    .bind(validation.id)
    .bind(job.id)
    .fetch_one(&mut *db)
    .await?;
    Ok((validation, Some(job)))
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Validation>, sqlx::Error> {
    sqlx::query_as("select * from validations where id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Records the union model's stored weights.
pub async fn mark_ready(
    db: &mut PgConnection,
    id: Uuid,
    weights_sha256: &str,
    train: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update validations set state = 'ready', weights_sha256 = $2, train = $3 where id = $1",
    )
    .bind(id)
    .bind(weights_sha256)
    .bind(train)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn mark_failed(db: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("update validations set state = 'failed' where id = $1 and state = 'queued'")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// Stores a result (a concurrent duplicate keeps the first).
pub async fn insert_score(
    db: &mut PgConnection,
    validation: Uuid,
    eval_set: Uuid,
    eval_config: &Value,
    eval_config_sha256: &str,
    result: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into validation_scores
             (validation_id, eval_set_id, eval_config_sha256, eval_config, result)
         values ($1, $2, $3, $4, $5) on conflict do nothing",
    )
    .bind(validation)
    .bind(eval_set)
    .bind(eval_config_sha256)
    .bind(eval_config)
    .bind(result)
    .execute(db)
    .await?;
    Ok(())
}

/// Newest first, keyset-paginated.
pub async fn list(
    pool: &PgPool,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Validation>, sqlx::Error> {
    let (before_at, before_id) = before.unzip();
    sqlx::query_as(
        "select * from validations
         where ($1::timestamptz is null or (created_at, id) < ($1, $2))
         order by created_at desc, id desc limit $3",
    )
    .bind(before_at)
    .bind(before_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The results of validations (all, or those listed) under one evaluation setting.
pub async fn scores(
    pool: &PgPool,
    eval_config_sha256: &str,
    validations: Option<&[Uuid]>,
) -> Result<Vec<ValidationScore>, sqlx::Error> {
    sqlx::query_as(
        "select validation_id, eval_set_id, eval_config_sha256, result from validation_scores
         where eval_config_sha256 = $1 and ($2::uuid[] is null or validation_id = any($2))",
    )
    .bind(eval_config_sha256)
    .bind(validations)
    .fetch_all(pool)
    .await
}

/// Every ready validation of a mixture's union at the partitions' summed budget: what the
/// proxies are correlated with (weighted or re-budgeted validations answer other questions).
pub async fn ready_unions(pool: &PgPool) -> Result<Vec<Validation>, sqlx::Error> {
    sqlx::query_as(
        "select v.* from validations v join recipes r on r.id = v.recipe_id
         where v.state = 'ready' and v.sampling = 'union'
           and v.tokens = (r.config ->> 'tokens')::bigint * cardinality(v.partition_ids)
         order by v.created_at",
    )
    .fetch_all(pool)
    .await
}

/// How many validations train on this partition.
pub async fn count_with_partition(
    db: &mut PgConnection,
    partition: Uuid,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select count(*) from validations where partition_ids @> array[$1]")
        .bind(partition)
        .fetch_one(db)
        .await
}
