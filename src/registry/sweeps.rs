//! Sweeps: many mixtures on many eval sets, scored in shards by `sweep` jobs. A sweep keeps
//! its list of mixtures; its results are ordinary scores, found by their keys, so a score
//! computed by a sweep answers `GET /v1/score` and the other way round.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::jobs::{self, Job};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Sweep {
    pub id: Uuid,
    pub base_id: Uuid,
    pub recipe_id: Uuid,
    /// `uniform` or `tokens`.
    pub weighting: String,
    /// The proxy its scores are stored under (`average`, `ensemble`).
    pub proxy: String,
    pub eval_set_ids: Vec<Uuid>,
    pub eval_config: Value,
    pub eval_config_sha256: String,
    pub request: Value,
    pub mixtures: i32,
    pub created_at: DateTime<Utc>,
}

/// One mixture of a sweep: its canonical key and members (`[{"partition", "weight"}]`).
#[derive(Debug, Clone)]
pub struct SweepMixture {
    pub key: String,
    pub members: Value,
}

impl From<&crate::mixture::Mixture> for SweepMixture {
    fn from(mixture: &crate::mixture::Mixture) -> Self {
        SweepMixture {
            key: mixture.key(),
            members: serde_json::to_value(&mixture.members).expect("mixtures serialise"),
        }
    }
}

/// A stored mixture of a sweep and its score on one eval set, when there is one.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Outcome {
    pub position: i32,
    pub mixture: Value,
    pub eval_set_id: Uuid,
    pub result: Option<Value>,
}

/// The positions of a sweep's mixtures that lack a score on at least one of its eval sets.
const UNSCORED: &str = "
    select m.position from sweep_mixtures m join sweeps w on w.id = m.sweep_id
    where m.sweep_id = $1 and exists (
        select 1 from unnest(w.eval_set_ids) e(id) where not exists (
            select 1 from scores s
            where s.base_id = w.base_id and s.recipe_id = w.recipe_id
              and s.mixture_key = m.mixture_key and s.weighting = w.weighting
              and s.merge_method = w.proxy and s.eval_set_id = e.id
              and s.eval_config_sha256 = w.eval_config_sha256))
    order by m.position";

/// Inserts a sweep with its mixtures, and one `sweep` job per `shard` mixtures that are not
/// scored on every eval set yet (`job` of the sweep and the shard's positions), in the
/// caller's transaction. Returns the jobs.
pub async fn create(
    db: &mut PgConnection,
    sweep: &Sweep,
    mixtures: &[SweepMixture],
    shard: usize,
    job: fn(Uuid, Vec<i32>) -> jobs::NewJob,
) -> Result<Vec<Job>, sqlx::Error> {
    sqlx::query(
        "insert into sweeps (id, base_id, recipe_id, weighting, proxy, eval_set_ids, eval_config,
                             eval_config_sha256, request, mixtures)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(sweep.id)
    .bind(sweep.base_id)
    .bind(sweep.recipe_id)
    .bind(&sweep.weighting)
    .bind(&sweep.proxy)
    .bind(&sweep.eval_set_ids)
    .bind(&sweep.eval_config)
    .bind(&sweep.eval_config_sha256)
    .bind(&sweep.request)
    .bind(mixtures.len() as i32)
    .execute(&mut *db)
    .await?;
    let positions: Vec<i32> = (0..mixtures.len() as i32).collect();
    let keys: Vec<&str> = mixtures.iter().map(|m| m.key.as_str()).collect();
    let members: Vec<&Value> = mixtures.iter().map(|m| &m.members).collect();
    sqlx::query(
        "insert into sweep_mixtures (sweep_id, position, mixture_key, mixture, partition_ids)
         select $1, p, k, m, array(select (x->>'partition')::uuid from jsonb_array_elements(m) x)
         from unnest($2::int4[], $3::text[], $4::jsonb[]) as t(p, k, m)",
    )
    .bind(sweep.id)
    .bind(&positions)
    .bind(&keys)
    .bind(&members)
    .execute(&mut *db)
    .await?;
    let unscored: Vec<i32> = sqlx::query_scalar(UNSCORED)
        .bind(sweep.id)
        .fetch_all(&mut *db)
        .await?;
    let mut created = Vec::new();
    for items in unscored.chunks(shard.max(1)) {
        let (job, _) = jobs::enqueue(&mut *db, &job(sweep.id, items.to_vec())).await?;
        sqlx::query("insert into sweep_jobs (sweep_id, job_id) values ($1, $2)")
            .bind(sweep.id)
            .bind(job.id)
            .execute(&mut *db)
            .await?;
        created.push(job);
    }
    Ok(created)
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Sweep>, sqlx::Error> {
    sqlx::query_as("select * from sweeps where id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Newest first, keyset-paginated like the other lists.
pub async fn list(
    pool: &PgPool,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Sweep>, sqlx::Error> {
    let (before_at, before_id) = before.unzip();
    sqlx::query_as(
        "select * from sweeps
         where ($1::timestamptz is null or (created_at, id) < ($1, $2))
         order by created_at desc, id desc limit $3",
    )
    .bind(before_at)
    .bind(before_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The mixtures at `positions` of a sweep: (position, key, members).
pub async fn mixtures_at(
    pool: &PgPool,
    sweep: Uuid,
    positions: &[i32],
) -> Result<Vec<(i32, String, Value)>, sqlx::Error> {
    sqlx::query_as(
        "select position, mixture_key, mixture from sweep_mixtures
         where sweep_id = $1 and position = any($2) order by position",
    )
    .bind(sweep)
    .bind(positions)
    .fetch_all(pool)
    .await
}

/// Every mixture of the sweep on every one of its eval sets, with its score when stored.
pub async fn outcomes(pool: &PgPool, sweep: &Sweep) -> Result<Vec<Outcome>, sqlx::Error> {
    sqlx::query_as(
        "select m.position, m.mixture, e.id as eval_set_id, s.result
         from sweep_mixtures m join sweeps w on w.id = m.sweep_id
         cross join unnest(w.eval_set_ids) e(id)
         left join scores s on s.base_id = w.base_id and s.recipe_id = w.recipe_id
             and s.mixture_key = m.mixture_key and s.weighting = w.weighting
             and s.merge_method = w.proxy and s.eval_set_id = e.id
             and s.eval_config_sha256 = w.eval_config_sha256
         where m.sweep_id = $1
         order by m.position",
    )
    .bind(sweep.id)
    .fetch_all(pool)
    .await
}

/// The sweep's jobs counted by state.
pub async fn job_states(pool: &PgPool, sweep: Uuid) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "select j.state, count(*) from sweep_jobs sj join jobs j on j.id = sj.job_id
         where sj.sweep_id = $1 group by j.state",
    )
    .bind(sweep)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// How many sweeps list a mixture with this partition.
pub async fn count_with_partition(
    db: &mut PgConnection,
    partition: Uuid,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "select count(distinct sweep_id) from sweep_mixtures where partition_ids @> array[$1]",
    )
    .bind(partition)
    .fetch_one(db)
    .await
}
