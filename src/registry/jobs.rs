//! The job queue, which is also the job history: one `jobs` row per unit of work.
//!
//! A worker claims a job with one short statement (`for update skip locked`) and commits at
//! once; it never holds a row lock while the job runs. The claim increments `attempts`, and
//! every later state change is fenced by that number, so a worker whose lease expired (and
//! whose job another worker took) cannot overwrite the new owner's progress or result. A
//! running job extends its lease by heartbeats; jobs whose lease expired go back to the
//! queue, or fail once they have used `max_attempts`. `NOTIFY` on [`CHANNEL`] wakes idle
//! workers and waiting requests; they also poll, in case a notification is missed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

/// Notifications: the payload is `queued:<kind>` for new work, `done:<job id>` when a job
/// reaches a final state.
pub const CHANNEL: &str = "mixpool_jobs";

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Job {
    pub id: Uuid,
    pub kind: String,
    pub payload: Value,
    pub dedup_key: Option<String>,
    /// queued, running, succeeded, failed or cancelled.
    pub state: String,
    pub priority: i32,
    /// Leases taken so far (each claim's number fences its writes).
    pub attempts: i32,
    /// Attempts that count against `max_attempts`: retryable failures, and expired leases
    /// during which the job made no progress.
    pub strikes: i32,
    pub max_attempts: i32,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub cancel_requested: bool,
    pub progress: f32,
    pub message: Option<String>,
    pub loss: Option<f64>,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Jobs sharing their inputs share it (a sweep's shards); workers prefer the affinity
    /// of the last job they ran.
    #[serde(skip)]
    pub affinity: Option<String>,
    /// The partition a `train` job trains the unit model of (in lists).
    #[sqlx(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
}

/// What a worker holds while it runs a job: the claim's attempt number fences its writes.
#[derive(Debug, Clone)]
pub struct Lease {
    pub job: Job,
    pub owner: String,
}

impl Lease {
    pub fn id(&self) -> Uuid {
        self.job.id
    }
    pub fn attempt(&self) -> i32 {
        self.job.attempts
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The lease expired and the job was reclaimed (or finished, or cancelled) meanwhile.
    #[error("job {0} is no longer held by this worker")]
    LeaseLost(Uuid),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

#[derive(Debug, Clone)]
pub struct NewJob {
    /// A registered kind's name (`crate::jobs::KINDS`; the table checks it too).
    pub kind: &'static str,
    pub payload: Value,
    /// Jobs with the same key share one active (queued or running) job.
    pub dedup_key: Option<String>,
    pub priority: i32,
    pub max_attempts: i32,
    pub affinity: Option<String>,
}

impl NewJob {
    /// A job without a dedup key and with three attempts; a kind's `job` makes the real
    /// ones.
    pub fn new(kind: &'static str, payload: Value) -> Self {
        NewJob {
            kind,
            payload,
            dedup_key: None,
            priority: 0,
            max_attempts: 3,
            affinity: None,
        }
    }
}

/// Enqueues a job, or returns the active job with the same dedup key (the flag says which).
/// Takes a connection so that a domain row and the job that serves it can share one
/// transaction (`&mut *tx`).
pub async fn enqueue(db: &mut PgConnection, new: &NewJob) -> Result<(Job, bool), sqlx::Error> {
    let inserted: Option<Job> = sqlx::query_as(
        "insert into jobs (id, kind, payload, dedup_key, state, priority, max_attempts, affinity)
         values ($1, $2, $3, $4, 'queued', $5, $6, $7)
         on conflict (dedup_key) where state in ('queued', 'running') do nothing
         returning *",
    )
    .bind(Uuid::new_v4())
    .bind(new.kind)
    .bind(&new.payload)
    .bind(&new.dedup_key)
    .bind(new.priority)
    .bind(new.max_attempts)
    .bind(&new.affinity)
    .fetch_optional(&mut *db)
    .await?;
    if let Some(job) = inserted {
        notify(&mut *db, &format!("queued:{}", job.kind)).await?;
        return Ok((job, true));
    }
    let existing = sqlx::query_as(
        "select * from jobs where dedup_key = $1 and state in ('queued', 'running')",
    )
    .bind(&new.dedup_key)
    .fetch_one(&mut *db)
    .await?;
    Ok((existing, false))
}

/// Claims the most urgent queued job of one of `kinds`, first returning jobs with expired
/// leases to the queue (or failing them when their attempts are used up). Among jobs of
/// the same priority, those of affinity `prefer` come first.
pub async fn claim(
    pool: &PgPool,
    owner: &str,
    kinds: &[&str],
    lease: Duration,
    prefer: Option<&str>,
) -> Result<Option<Lease>, sqlx::Error> {
    requeue_expired(pool).await?;
    let job: Option<Job> = sqlx::query_as(
        "update jobs set state = 'running', attempts = attempts + 1, lease_owner = $1,
                lease_expires_at = now() + $2, started_at = coalesce(started_at, now()),
                claimed_saved = saved, updated_at = now(), error = null
         where state = 'queued' and id = (
             select id from jobs where state = 'queued' and kind = any($3)
               and (not_before is null or not_before <= now())
             order by priority desc, coalesce(affinity = $4, false) desc, created_at limit 1
             for update skip locked)
         returning *",
    )
    .bind(owner)
    .bind(interval(lease))
    .bind(kinds)
    .bind(prefer)
    .fetch_optional(pool)
    .await?;
    Ok(job.map(|job| Lease {
        job,
        owner: owner.to_string(),
    }))
}

/// Running jobs whose lease expired: back to the queue. An expiry during which the job saved
/// nothing new ([`saved`]) is a strike; at `max_attempts` strikes the job fails (a job that
/// kills its workers is not retried for ever, one whose workers die while it advances is
/// finished).
pub async fn requeue_expired(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let done: Vec<(Uuid,)> = sqlx::query_as(
        "with expired as (
             select id, strikes + case when saved > claimed_saved then 0 else 1 end as s
             from jobs where state = 'running' and lease_expires_at < now()
             for update skip locked)
         update jobs set
             strikes = expired.s,
             state = case when expired.s >= max_attempts then 'failed' else 'queued' end,
             error = case when expired.s >= max_attempts
                 then 'the worker stopped responding (lease expired) before saving progress '
                      || expired.s || ' times'
                 else error end,
             finished_at = case when expired.s >= max_attempts then now() end,
             lease_owner = null, lease_expires_at = null, updated_at = now()
         from expired where jobs.id = expired.id
         returning jobs.id",
    )
    .fetch_all(pool)
    .await?;
    for (id,) in &done {
        notify(pool, &format!("done:{id}")).await?;
    }
    Ok(done.len() as u64)
}

/// Extends the lease; returns whether cancellation was requested.
pub async fn heartbeat(
    pool: &PgPool,
    lease: &Lease,
    duration: Duration,
) -> Result<bool, QueueError> {
    let row: Option<(bool,)> = sqlx::query_as(
        "update jobs set lease_expires_at = now() + $3, updated_at = now()
         where id = $1 and attempts = $2 and state = 'running'
         returning cancel_requested",
    )
    .bind(lease.id())
    .bind(lease.attempt())
    .bind(interval(duration))
    .fetch_optional(pool)
    .await?;
    row.map(|(c,)| c).ok_or(QueueError::LeaseLost(lease.id()))
}

/// Records progress (a fraction in [0, 1], a message, and for trainings the loss at a step,
/// which is also kept in the job's loss series); `true` when the job's cancellation was
/// requested (the worker stops at once rather than at its next heartbeat).
pub async fn progress<'e>(
    db: impl PgExecutor<'e>,
    lease: &Lease,
    fraction: f32,
    message: &str,
    loss: Option<(u64, f64)>,
) -> Result<bool, QueueError> {
    let (step, loss) = loss.map(|(s, l)| (s as i32, l)).unzip();
    let row: Option<(bool,)> = sqlx::query_as(
        "with job as (
             update jobs set progress = $3, message = $4, loss = coalesce($6, loss), updated_at = now()
             where id = $1 and attempts = $2 and state = 'running'
             returning id, cancel_requested),
         point as (
             insert into job_losses (job_id, step, loss)
             select id, $5, $6 from job where $5::integer is not null and $6::float8 is not null
             on conflict (job_id, step) do update set loss = excluded.loss)
         select cancel_requested from job",
    )
    .bind(lease.id())
    .bind(lease.attempt())
    .bind(fraction.clamp(0.0, 1.0))
    .bind(message)
    .bind(step)
    .bind(loss)
    .fetch_optional(db)
    .await?;
    row.map(|(c,)| c).ok_or(QueueError::LeaseLost(lease.id()))
}

/// A job's recorded losses, `(step, loss)` by step.
pub async fn losses(pool: &PgPool, job: Uuid) -> Result<Vec<(i32, f64)>, sqlx::Error> {
    sqlx::query_as("select step, loss from job_losses where job_id = $1 order by step")
        .bind(job)
        .fetch_all(pool)
        .await
}

/// Records that `fraction` of the job's work is kept durably (a mirrored train state, stored
/// sweep mixtures): a lease that expires after this is not held against the job.
pub async fn saved<'e>(
    db: impl PgExecutor<'e>,
    lease: &Lease,
    fraction: f32,
) -> Result<(), QueueError> {
    let done = sqlx::query(
        "update jobs set saved = greatest(saved, $3)
         where id = $1 and attempts = $2 and state = 'running'",
    )
    .bind(lease.id())
    .bind(lease.attempt())
    .bind(fraction.clamp(0.0, 1.0))
    .execute(db)
    .await?;
    fenced(done.rows_affected(), lease)
}

/// Marks the job succeeded with `result`. Pass the transaction that writes the job's domain
/// rows, so both commit together or neither does.
pub async fn succeed(
    db: &mut PgConnection,
    lease: &Lease,
    result: &Value,
) -> Result<(), QueueError> {
    finish(db, lease, "succeeded", Some(result), None).await
}

/// Marks the job failed: back to the queue when `retryable` and attempts remain, not to be
/// claimed for 2 seconds after its first strike, 4 after its second, and so on up to 30.
pub async fn fail(
    pool: &PgPool,
    lease: &Lease,
    error: &str,
    retryable: bool,
) -> Result<(), QueueError> {
    let retry = retryable && lease.job.strikes + 1 < lease.job.max_attempts;
    if retry {
        let done = sqlx::query(
            "update jobs set state = 'queued', error = $3, lease_owner = null, lease_expires_at = null,
                    strikes = strikes + 1, updated_at = now(),
                    not_before = now() + make_interval(secs => least(30, 2 * power(2, strikes)))
             where id = $1 and attempts = $2 and state = 'running'",
        )
        .bind(lease.id())
        .bind(lease.attempt())
        .bind(error)
        .execute(pool)
        .await?;
        notify(pool, &format!("queued:{}", lease.job.kind)).await?;
        return fenced(done.rows_affected(), lease);
    }
    finish(
        &mut *pool.acquire().await?,
        lease,
        "failed",
        None,
        Some(error),
    )
    .await
}

/// Marks a running job cancelled (the worker saw `cancel_requested`).
pub async fn cancelled(pool: &PgPool, lease: &Lease) -> Result<(), QueueError> {
    finish(&mut *pool.acquire().await?, lease, "cancelled", None, None).await
}

/// Hands the job back to the queue without counting the attempt (a worker shutting down).
pub async fn release(pool: &PgPool, lease: &Lease) -> Result<(), QueueError> {
    let done = sqlx::query(
        "update jobs set state = 'queued', attempts = attempts - 1, lease_owner = null,
                lease_expires_at = null, updated_at = now()
         where id = $1 and attempts = $2 and state = 'running'",
    )
    .bind(lease.id())
    .bind(lease.attempt())
    .execute(pool)
    .await?;
    notify(pool, &format!("queued:{}", lease.job.kind)).await?;
    fenced(done.rows_affected(), lease)
}

async fn finish(
    db: &mut PgConnection,
    lease: &Lease,
    state: &str,
    result: Option<&Value>,
    error: Option<&str>,
) -> Result<(), QueueError> {
    let done = sqlx::query(
        "update jobs set state = $3, result = $4, error = $5, progress = case when $3 = 'succeeded' then 1 else progress end,
                lease_owner = null, lease_expires_at = null, finished_at = now(), updated_at = now()
         where id = $1 and attempts = $2 and state = 'running'",
    )
    .bind(lease.id())
    .bind(lease.attempt())
    .bind(state)
    .bind(result)
    .bind(error)
    .execute(&mut *db)
    .await?;
    fenced(done.rows_affected(), lease)?;
    notify(db, &format!("done:{}", lease.id())).await?;
    Ok(())
}

/// Cancels a job: a queued one at once, a running one by asking its worker (which sees the
/// request at its next heartbeat). Returns the job, or `None` when there is no such job.
pub async fn cancel(db: &mut PgConnection, id: Uuid) -> Result<Option<Job>, sqlx::Error> {
    let job: Option<Job> = sqlx::query_as(
        "update jobs set
             state = case when state = 'queued' then 'cancelled' else state end,
             finished_at = case when state = 'queued' then now() else finished_at end,
             cancel_requested = state in ('queued', 'running'),
             updated_at = now()
         where id = $1
         returning *",
    )
    .bind(id)
    .fetch_optional(&mut *db)
    .await?;
    if let Some(job) = &job
        && job.state == "cancelled"
    {
        notify(db, &format!("done:{id}")).await?;
    }
    Ok(job)
}

pub async fn get<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<Option<Job>, sqlx::Error> {
    sqlx::query_as("select * from jobs where id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Newest first (of a state and a kind, when given), keyset-paginated: pass the last job of
/// a page as `before` for the next.
pub async fn list(
    pool: &PgPool,
    state: Option<&str>,
    kind: Option<&str>,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Job>, sqlx::Error> {
    let (before_at, before_id) = before.unzip();
    sqlx::query_as(
        "select j.*, p.name as partition from jobs j
         left join models m on j.kind = 'train' and m.id = (j.payload->>'model')::uuid
         left join partitions p on p.id = m.partition_id
         where ($1::text is null or j.state = $1) and ($5::text is null or j.kind = $5)
           and ($2::timestamptz is null or (j.created_at, j.id) < ($2, $3))
         order by j.created_at desc, j.id desc limit $4",
    )
    .bind(state)
    .bind(before_at)
    .bind(before_id)
    .bind(limit)
    .bind(kind)
    .fetch_all(pool)
    .await
}

/// The store keys of the exports whose mixtures merged `partition`.
pub async fn exports_of(
    db: &mut PgConnection,
    partition: Uuid,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "select distinct payload->>'object' from jobs
         where kind = 'export' and payload->'mixture' @> $1",
    )
    .bind(serde_json::json!([{ "partition": partition }]))
    .fetch_all(db)
    .await
}

fn fenced(rows: u64, lease: &Lease) -> Result<(), QueueError> {
    match rows {
        1 => Ok(()),
        _ => Err(QueueError::LeaseLost(lease.id())),
    }
}

async fn notify<'e>(db: impl PgExecutor<'e>, payload: &str) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(db)
        .await?;
    Ok(())
}

fn interval(d: Duration) -> sqlx::postgres::types::PgInterval {
    sqlx::postgres::types::PgInterval {
        months: 0,
        days: 0,
        microseconds: d.as_micros() as i64,
    }
}

/// The most recent job with this dedup key that succeeded (its result names what it made).
pub async fn latest_succeeded(pool: &PgPool, dedup_key: &str) -> Result<Option<Job>, sqlx::Error> {
    sqlx::query_as(
        "select * from jobs where dedup_key = $1 and state = 'succeeded'
         order by finished_at desc limit 1",
    )
    .bind(dedup_key)
    .fetch_optional(pool)
    .await
}
