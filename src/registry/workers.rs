//! Workers as they report themselves: a row per worker name, refreshed every few seconds
//! while it runs, so the dashboard can say which workers are alive and what each is doing.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::worker::cache::FetchCounts;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct WorkerRow {
    pub name: String,
    pub device: String,
    pub kinds: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
    /// The job it holds a lease on, if any.
    pub job_id: Option<Uuid>,
    pub job_kind: Option<String>,
    pub job_progress: Option<f32>,
}

/// What a worker says of itself.
pub struct Presence<'a> {
    pub name: &'a str,
    pub device: &'a str,
    pub kinds: &'a [&'static str],
    pub started_at: DateTime<Utc>,
    /// Its cache's counters since it started, and the bytes the cache holds.
    pub fetched: FetchCounts,
    pub cache_bytes: u64,
}

/// Records that a worker is alive now, with its cache's counters.
pub async fn seen(pool: &PgPool, worker: &Presence<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into workers (name, device, kinds, started_at, seen_at, fetched, cache_bytes)
         values ($1, $2, $3, $4, now(), $5, $6)
         on conflict (name) do update
         set device = excluded.device, kinds = excluded.kinds, started_at = excluded.started_at,
             seen_at = now(), fetched = excluded.fetched, cache_bytes = excluded.cache_bytes",
    )
    .bind(worker.name)
    .bind(worker.device)
    .bind(worker.kinds)
    .bind(worker.started_at)
    .bind(sqlx::types::Json(worker.fetched))
    .bind(worker.cache_bytes as i64)
    .execute(pool)
    .await?;
    Ok(())
}

/// Each worker seen within `seconds`: its name, its cache's counters and the bytes it holds.
pub async fn caches(
    pool: &PgPool,
    seconds: f64,
) -> Result<Vec<(String, FetchCounts, u64)>, sqlx::Error> {
    let rows: Vec<(String, sqlx::types::Json<FetchCounts>, i64)> = sqlx::query_as(
        "select name, fetched, cache_bytes from workers
         where seen_at > now() - make_interval(secs => $1) order by name",
    )
    .bind(seconds)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, fetched, bytes)| (name, fetched.0, bytes.max(0) as u64))
        .collect())
}

/// Forgets workers not seen for a day (each process is a worker of its own name).
pub async fn forget_gone(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("delete from workers where seen_at < now() - interval '1 day'")
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// Workers seen within `seconds`, most recently started first, each with its running job.
pub async fn recent(pool: &PgPool, seconds: f64) -> Result<Vec<WorkerRow>, sqlx::Error> {
    sqlx::query_as(
        "select w.name, w.device, w.kinds, w.started_at, w.seen_at,
                j.id as job_id, j.kind as job_kind, j.progress as job_progress
         from workers w
         left join lateral (
             select id, kind, progress from jobs
             where state = 'running' and lease_owner = w.name
             order by started_at desc limit 1) j on true
         where w.seen_at > now() - make_interval(secs => $1)
         order by w.started_at desc, w.name",
    )
    .bind(seconds)
    .fetch_all(pool)
    .await
}
