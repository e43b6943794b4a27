//! What `/metrics` reads of the registry at each scrape.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// The pool's state now.
pub struct Counts {
    /// (kind, state, jobs).
    pub jobs: Vec<(String, String, i64)>,
    /// (state, unit models).
    pub unit_models: Vec<(String, i64)>,
    /// Bases, partitions, eval sets and scores.
    pub sizes: [i64; 4],
    /// Each running job's (worker, kind, seconds since its lease was renewed).
    pub running: Vec<(String, String, f64)>,
}

pub async fn counts(pool: &PgPool) -> Result<Counts, sqlx::Error> {
    let jobs = sqlx::query_as("select kind, state, count(*) from jobs group by kind, state")
        .fetch_all(pool)
        .await?;
    let unit_models = sqlx::query_as("select state, count(*) from models group by state")
        .fetch_all(pool)
        .await?;
    let sizes: (i64, i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from bases), (select count(*) from partitions),
                (select count(*) from eval_sets), (select count(*) from scores)",
    )
    .fetch_one(pool)
    .await?;
    let running = sqlx::query_as(
        "select coalesce(lease_owner, ''), kind,
                extract(epoch from now() - updated_at)::float8
         from jobs where state = 'running'",
    )
    .fetch_all(pool)
    .await?;
    Ok(Counts {
        jobs,
        unit_models,
        sizes: [sizes.0, sizes.1, sizes.2, sizes.3],
        running,
    })
}

/// Jobs finished after `after`, oldest first: (kind, state, seconds from start to end, when
/// it finished).
pub async fn finished_since(
    pool: &PgPool,
    after: DateTime<Utc>,
) -> Result<Vec<(String, String, f64, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "select kind, state, extract(epoch from finished_at - coalesce(started_at, created_at))::float8,
                finished_at
         from jobs where finished_at > $1 order by finished_at",
    )
    .bind(after)
    .fetch_all(pool)
    .await
}

/// Jobs started after `after`, oldest first: (kind, seconds queued, when it started).
pub async fn started_since(
    pool: &PgPool,
    after: DateTime<Utc>,
) -> Result<Vec<(String, f64, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "select kind, extract(epoch from started_at - created_at)::float8, started_at
         from jobs where started_at > $1 order by started_at",
    )
    .bind(after)
    .fetch_all(pool)
    .await
}
