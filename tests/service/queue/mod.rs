use std::collections::HashSet;
use std::time::Duration;

use mixpool::registry::jobs::{self, Job, Lease, NewJob, QueueError};
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgListener;

use crate::helpers::fresh_db;

mod attempts;

const LONG: Duration = Duration::from_secs(60);
/// Long enough that a claim made right after another sees its lease valid on a busy machine;
/// tests wait for expiry on the database's clock, not by sleeping.
const SHORT: Duration = Duration::from_secs(1);

/// Waits until the database's clock has passed the job's current lease expiry.
async fn until_expired(pool: &PgPool, lease: &Lease) {
    until_past(pool, job(pool, lease).await.lease_expires_at.unwrap()).await
}

async fn until_past(pool: &PgPool, expires: chrono::DateTime<chrono::Utc>) {
    loop {
        let now: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("select now()")
            .fetch_one(pool)
            .await
            .unwrap();
        if now > expires {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn enqueue(pool: &PgPool, new: NewJob) -> Job {
    jobs::enqueue(&mut pool.acquire().await.unwrap(), &new)
        .await
        .unwrap()
        .0
}

async fn claim(pool: &PgPool, owner: &str, lease: Duration) -> Option<Lease> {
    jobs::claim(pool, owner, &mixpool::jobs::names(), lease, None)
        .await
        .unwrap()
}

async fn succeed(
    pool: &PgPool,
    lease: &Lease,
    result: serde_json::Value,
) -> Result<(), QueueError> {
    jobs::succeed(&mut pool.acquire().await.unwrap(), lease, &result).await
}

async fn job(pool: &PgPool, lease: &Lease) -> Job {
    jobs::get(pool, lease.id()).await.unwrap().unwrap()
}

#[tokio::test]
async fn claims_take_the_most_urgent_then_the_oldest_job() {
    let pool = fresh_db().await;
    let old = enqueue(&pool, NewJob::new("train", json!({"n": 1}))).await;
    let urgent = enqueue(
        &pool,
        NewJob {
            priority: 5,
            ..NewJob::new("score", json!({"n": 2}))
        },
    )
    .await;
    let young = enqueue(&pool, NewJob::new("train", json!({"n": 3}))).await;
    let order: Vec<_> = [
        claim(&pool, "w", LONG).await.unwrap(),
        claim(&pool, "w", LONG).await.unwrap(),
        claim(&pool, "w", LONG).await.unwrap(),
    ]
    .iter()
    .map(|l| l.id())
    .collect();
    assert_eq!(order, vec![urgent.id, old.id, young.id]);
    assert!(claim(&pool, "w", LONG).await.is_none());
    let running = jobs::get(&pool, old.id).await.unwrap().unwrap();
    assert_eq!(
        (
            running.state.as_str(),
            running.attempts,
            running.lease_owner.as_deref()
        ),
        ("running", 1, Some("w"))
    );
}

#[tokio::test]
async fn a_worker_prefers_jobs_of_its_last_affinity_within_a_priority() {
    let pool = fresh_db().await;
    let with = |n: i32, affinity: Option<&str>, priority: i32| NewJob {
        affinity: affinity.map(str::to_string),
        priority,
        ..NewJob::new("sweep", json!({"n": n}))
    };
    let other = enqueue(&pool, with(1, Some("sweep:a"), 0)).await;
    let none = enqueue(&pool, with(2, None, 0)).await;
    let mine = enqueue(&pool, with(3, Some("sweep:b"), 0)).await;
    let urgent = enqueue(&pool, with(4, Some("sweep:a"), 1)).await;
    let mut order = Vec::new();
    while let Some(lease) = jobs::claim(&pool, "w", &["sweep"], LONG, Some("sweep:b"))
        .await
        .unwrap()
    {
        order.push(lease.id());
    }
    // Priority first, then the preferred affinity, then age.
    assert_eq!(order, vec![urgent.id, mine.id, other.id, none.id]);
}

#[tokio::test]
async fn claims_only_take_the_kinds_a_worker_runs() {
    let pool = fresh_db().await;
    enqueue(&pool, NewJob::new("train", json!({}))).await;
    assert!(
        jobs::claim(&pool, "scorer", &["score"], LONG, None)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        jobs::claim(&pool, "trainer", &["train"], LONG, None)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn concurrent_workers_never_claim_the_same_job() {
    let pool = fresh_db().await;
    for i in 0..200 {
        enqueue(&pool, NewJob::new("score", json!({ "i": i }))).await;
    }
    let workers = (0..16).map(|w| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(lease) = claim(&pool, &format!("w{w}"), LONG).await {
                mine.push(lease.id());
            }
            mine
        })
    });
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    assert_eq!(all.len(), 200);
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 200);
    let claimed_twice: i64 = sqlx::query_scalar("select count(*) from jobs where attempts <> 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(claimed_twice, 0);
}

#[tokio::test]
async fn identical_work_shares_one_active_job() {
    let pool = fresh_db().await;
    let keyed = || NewJob {
        dedup_key: Some("score:abc".into()),
        ..NewJob::new("score", json!({}))
    };
    let mut conn = pool.acquire().await.unwrap();
    let (first, created) = jobs::enqueue(&mut conn, &keyed()).await.unwrap();
    let (second, again) = jobs::enqueue(&mut conn, &keyed()).await.unwrap();
    assert!(created && !again);
    assert_eq!(first.id, second.id);
    let lease = claim(&pool, "w", LONG).await.unwrap();
    assert_eq!(
        jobs::enqueue(&mut conn, &keyed()).await.unwrap().0.id,
        first.id,
        "running counts as active"
    );
    succeed(&pool, &lease, json!({"ppl": 3.0})).await.unwrap();
    let (third, created) = jobs::enqueue(&mut conn, &keyed()).await.unwrap();
    assert!(
        created && third.id != first.id,
        "a finished job does not block new work"
    );
}

#[tokio::test]
async fn an_expired_lease_goes_to_another_worker_and_fences_the_first() {
    let pool = fresh_db().await;
    enqueue(&pool, NewJob::new("train", json!({}))).await;
    let a = claim(&pool, "a", SHORT).await.unwrap();
    assert!(
        claim(&pool, "b", SHORT).await.is_none(),
        "the lease is still valid"
    );
    until_expired(&pool, &a).await;
    let b = claim(&pool, "b", LONG).await.unwrap();
    assert_eq!((b.id(), b.attempt()), (a.id(), 2));

    assert!(matches!(
        jobs::heartbeat(&pool, &a, LONG).await,
        Err(QueueError::LeaseLost(_))
    ));
    assert!(matches!(
        jobs::progress(&pool, &a, 0.9, "stale", Some((9, 1.0))).await,
        Err(QueueError::LeaseLost(_))
    ));
    assert!(matches!(
        succeed(&pool, &a, json!({"by": "a"})).await,
        Err(QueueError::LeaseLost(_))
    ));
    assert!(matches!(
        jobs::fail(&pool, &a, "a gave up", false).await,
        Err(QueueError::LeaseLost(_))
    ));

    assert!(!jobs::heartbeat(&pool, &b, LONG).await.unwrap());
    succeed(&pool, &b, json!({"by": "b"})).await.unwrap();
    let done = job(&pool, &b).await;
    assert_eq!(
        (done.state.as_str(), done.result, done.progress),
        ("succeeded", Some(json!({"by": "b"})), 1.0)
    );
    assert!(matches!(
        succeed(&pool, &a, json!({"by": "a"})).await,
        Err(QueueError::LeaseLost(_))
    ));
}

#[tokio::test]
async fn heartbeats_keep_a_lease_alive() {
    let pool = fresh_db().await;
    enqueue(&pool, NewJob::new("train", json!({}))).await;
    let a = claim(&pool, "a", SHORT).await.unwrap();
    let before = job(&pool, &a).await;
    // The heartbeat moves the expiry on: past the first one, the lease still holds.
    jobs::heartbeat(&pool, &a, SHORT * 3).await.unwrap();
    let after = job(&pool, &a).await;
    assert!(after.lease_expires_at > before.lease_expires_at);
    until_past(&pool, before.lease_expires_at.unwrap()).await;
    assert!(claim(&pool, "b", LONG).await.is_none());
    // Without further heartbeats it expires, and another worker takes the job.
    until_expired(&pool, &a).await;
    let b = claim(&pool, "b", LONG).await.unwrap();
    assert_eq!((b.id(), b.attempt()), (a.id(), 2));
}

#[tokio::test]
async fn cancelling_a_queued_job_is_immediate_and_a_running_one_asks_its_worker() {
    let pool = fresh_db().await;
    let queued = enqueue(&pool, NewJob::new("train", json!({}))).await;
    assert_eq!(
        jobs::cancel(&mut pool.acquire().await.unwrap(), queued.id)
            .await
            .unwrap()
            .unwrap()
            .state,
        "cancelled"
    );
    assert!(claim(&pool, "w", LONG).await.is_none());

    let running = enqueue(&pool, NewJob::new("train", json!({}))).await;
    let lease = claim(&pool, "w", LONG).await.unwrap();
    assert!(
        !jobs::progress(&pool, &lease, 0.1, "step 1", None)
            .await
            .unwrap()
    );
    assert_eq!(
        jobs::cancel(&mut pool.acquire().await.unwrap(), running.id)
            .await
            .unwrap()
            .unwrap()
            .state,
        "running"
    );
    assert!(
        jobs::heartbeat(&pool, &lease, LONG).await.unwrap(),
        "the worker learns of the request"
    );
    assert!(
        jobs::progress(&pool, &lease, 0.2, "step 2", None)
            .await
            .unwrap(),
        "and at its next progress report"
    );
    jobs::cancelled(&pool, &lease).await.unwrap();
    assert_eq!(job(&pool, &lease).await.state, "cancelled");
    assert!(
        jobs::cancel(&mut pool.acquire().await.unwrap(), uuid::Uuid::new_v4())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_released_job_is_claimed_again_without_losing_an_attempt() {
    let pool = fresh_db().await;
    enqueue(
        &pool,
        NewJob {
            max_attempts: 1,
            ..NewJob::new("train", json!({}))
        },
    )
    .await;
    let lease = claim(&pool, "stopping", LONG).await.unwrap();
    jobs::release(&pool, &lease).await.unwrap();
    let again = claim(&pool, "other", LONG).await.unwrap();
    assert_eq!((again.id(), again.attempt()), (lease.id(), 1));
}

#[tokio::test]
async fn progress_is_recorded_for_the_current_attempt() {
    let pool = fresh_db().await;
    enqueue(&pool, NewJob::new("train", json!({}))).await;
    let lease = claim(&pool, "w", LONG).await.unwrap();
    jobs::progress(&pool, &lease, 0.25, "step 5/20", Some((5, 2.5)))
        .await
        .unwrap();
    jobs::progress(&pool, &lease, 7.0, "step 20/20", None)
        .await
        .unwrap();
    let j = job(&pool, &lease).await;
    assert_eq!(
        (j.progress, j.message.as_deref(), j.loss),
        (1.0, Some("step 20/20"), Some(2.5))
    );
}

#[tokio::test]
async fn the_loss_series_keeps_one_point_per_step_across_attempts_and_fences_stale_ones() {
    let pool = fresh_db().await;
    enqueue(&pool, NewJob::new("train", json!({}))).await;
    let first = claim(&pool, "a", SHORT).await.unwrap();
    for (step, loss) in [(1, 5.0), (2, 4.5), (3, 4.0)] {
        jobs::progress(&pool, &first, 0.1, "step", Some((step, loss)))
            .await
            .unwrap();
    }
    until_expired(&pool, &first).await;
    let second = claim(&pool, "b", LONG).await.unwrap();
    // The resumed run reports step 3 again and goes on; the first worker's late report is
    // refused and leaves no point.
    jobs::progress(&pool, &second, 0.3, "step", Some((3, 3.9)))
        .await
        .unwrap();
    jobs::progress(&pool, &second, 0.4, "step", Some((4, 3.5)))
        .await
        .unwrap();
    assert!(matches!(
        jobs::progress(&pool, &first, 0.5, "stale", Some((5, 9.9))).await,
        Err(QueueError::LeaseLost(_))
    ));
    jobs::progress(&pool, &second, 0.5, "no loss", None)
        .await
        .unwrap();
    assert_eq!(
        jobs::losses(&pool, second.id()).await.unwrap(),
        vec![(1, 5.0), (2, 4.5), (3, 3.9), (4, 3.5)]
    );
}

#[tokio::test]
async fn listeners_hear_new_work_and_finished_jobs() {
    let pool = fresh_db().await;
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen(jobs::CHANNEL).await.unwrap();
    enqueue(&pool, NewJob::new("score", json!({}))).await;
    let heard = tokio::time::timeout(LONG, listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(heard.payload(), "queued:score");
    let lease = claim(&pool, "w", LONG).await.unwrap();
    succeed(&pool, &lease, json!({})).await.unwrap();
    let heard = tokio::time::timeout(LONG, listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(heard.payload(), format!("done:{}", lease.id()));
}

#[tokio::test]
async fn the_job_list_pages_newest_first() {
    let pool = fresh_db().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            enqueue(&pool, NewJob::new("train", json!({ "i": i })))
                .await
                .id,
        );
    }
    let first = jobs::list(&pool, None, None, None, 3).await.unwrap();
    let last = first.last().unwrap();
    let second = jobs::list(&pool, None, None, Some((last.created_at, last.id)), 3)
        .await
        .unwrap();
    let seen: Vec<_> = first.iter().chain(&second).map(|j| j.id).collect();
    assert_eq!(seen, ids.iter().rev().copied().collect::<Vec<_>>());
    claim(&pool, "w", LONG).await.unwrap();
    assert_eq!(
        jobs::list(&pool, Some("running"), None, None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn the_queue_takes_a_job_of_every_kind() {
    let pool = fresh_db().await;
    for kind in mixpool::jobs::names() {
        let job = enqueue(&pool, NewJob::new(kind, json!({}))).await;
        assert_eq!(job.kind, kind);
    }
    let claimed = jobs::claim(&pool, "w", &mixpool::jobs::names(), LONG, None)
        .await
        .unwrap();
    assert!(claimed.is_some());
}
