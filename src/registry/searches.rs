//! Ratio searches: a list of partitions whose mixture weights one `search` job scores round
//! by round. The points are ordinary scores with explicit weights (found by their keys); the
//! search keeps their list in the order they were evaluated.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::jobs::{self, Job};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Search {
    pub id: Uuid,
    pub base_id: Uuid,
    pub recipe_id: Uuid,
    pub partition_ids: Vec<Uuid>,
    /// The eval sets the points are scored on (a `gradient` search's report halves).
    pub eval_set_ids: Vec<Uuid>,
    /// A `gradient` search's tune halves, in `eval_set_ids`' order (empty otherwise).
    pub tune_set_ids: Vec<Uuid>,
    /// Each eval set's weight in the objective, summing to 1.
    pub objective: Vec<f64>,
    pub method: String,
    /// The proxy its points are scored by (a score key's `merge_method`).
    pub proxy: String,
    pub budget: i32,
    pub bounds_min: Vec<f64>,
    pub bounds_max: Vec<f64>,
    pub prior: Vec<f64>,
    /// The natural mixture's weights (proportional to the partitions' tokens), evaluated as a
    /// point of role `natural`; empty for searches made before it was.
    #[sqlx(rename = "natural_weights")]
    pub natural: Vec<f64>,
    /// The proxy the final candidates are scored again with (`None`: no check).
    pub check_proxy: Option<String>,
    pub seed: i64,
    pub eval_config: Value,
    pub eval_config_sha256: String,
    pub request: Value,
    pub job_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// One evaluated point of a search.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Point {
    pub position: i32,
    pub round: i32,
    /// `sample` or `proposal` (a `sample` search's), `step` (a `gradient` search's), or
    /// `natural` and `uniform` (every search's reference mixtures, evaluated last).
    pub role: String,
    pub mixture_key: String,
    /// In the search's partition order.
    pub weights: Vec<f64>,
    /// The objective on the tune halves (`gradient` searches).
    pub tune_objective: Option<f64>,
}

/// Inserts a search and `job`, which runs it, in the caller's transaction.
pub async fn create(
    db: &mut PgConnection,
    search: &Search,
    job: &jobs::NewJob,
) -> Result<Job, sqlx::Error> {
    let (job, _) = jobs::enqueue(&mut *db, job).await?;
    sqlx::query(
        "insert into searches (id, base_id, recipe_id, partition_ids, eval_set_ids, objective,
                               method, budget, bounds_min, bounds_max, prior, seed, eval_config,
                               eval_config_sha256, request, job_id, tune_set_ids, proxy, natural_weights,
                               check_proxy)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                 $18, $19, $20)",
    )
    .bind(search.id)
    .bind(search.base_id)
    .bind(search.recipe_id)
    .bind(&search.partition_ids)
    .bind(&search.eval_set_ids)
    .bind(&search.objective)
    .bind(&search.method)
    .bind(search.budget)
    .bind(&search.bounds_min)
    .bind(&search.bounds_max)
    .bind(&search.prior)
    .bind(search.seed)
    .bind(&search.eval_config)
    .bind(&search.eval_config_sha256)
    .bind(&search.request)
    .bind(job.id)
    .bind(&search.tune_set_ids)
    .bind(&search.proxy)
    .bind(&search.natural)
    .bind(&search.check_proxy)
    .execute(&mut *db)
    .await?;
    Ok(job)
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Search>, sqlx::Error> {
    sqlx::query_as("select * from searches where id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Newest first; pass the last row of a page as `before` for the next.
pub async fn list(
    pool: &PgPool,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Search>, sqlx::Error> {
    let (at, id) = before.unzip();
    sqlx::query_as(
        "select * from searches where ($1::timestamptz is null or (created_at, id) < ($1, $2))
         order by created_at desc, id desc limit $3",
    )
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Records an evaluated point (in the transaction that stores its scores); a point already
/// recorded at `position` (by an earlier attempt of the job) is kept.
pub async fn add_point(
    db: &mut PgConnection,
    search: Uuid,
    point: &Point,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into search_points
             (search_id, position, round, role, mixture_key, weights, tune_objective)
         values ($1, $2, $3, $4, $5, $6, $7) on conflict do nothing",
    )
    .bind(search)
    .bind(point.position)
    .bind(point.round)
    .bind(&point.role)
    .bind(&point.mixture_key)
    .bind(&point.weights)
    .bind(point.tune_objective)
    .execute(db)
    .await?;
    Ok(())
}

/// A search's points in evaluation order.
pub async fn points(pool: &PgPool, search: Uuid) -> Result<Vec<Point>, sqlx::Error> {
    sqlx::query_as(
        "select position, round, role, mixture_key, weights, tune_objective from search_points
         where search_id = $1 order by position",
    )
    .bind(search)
    .fetch_all(pool)
    .await
}

/// How many searches name a partition (such a partition cannot be deleted).
pub async fn count_with_partition(
    db: &mut PgConnection,
    partition: Uuid,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select count(*) from searches where $1 = any(partition_ids)")
        .bind(partition)
        .fetch_one(db)
        .await
}
