//! Attempts: which failures count against `max_attempts`, and what a job does when they run out.

use super::*;

#[tokio::test]
async fn a_job_whose_worker_keeps_dying_fails_after_max_attempts() {
    let pool = fresh_db().await;
    enqueue(
        &pool,
        NewJob {
            max_attempts: 2,
            ..NewJob::new("train", json!({}))
        },
    )
    .await;
    let a = claim(&pool, "a", SHORT).await.unwrap();
    until_expired(&pool, &a).await;
    let b = claim(&pool, "b", SHORT).await.unwrap();
    until_expired(&pool, &b).await;
    assert!(claim(&pool, "c", SHORT).await.is_none());
    let failed = job(&pool, &b).await;
    assert_eq!((failed.state.as_str(), failed.attempts), ("failed", 2));
    assert!(failed.error.unwrap().contains("lease expired"));
    assert!(failed.finished_at.is_some());
}

#[tokio::test]
async fn retryable_failures_requeue_until_attempts_run_out_and_fatal_ones_fail_at_once() {
    let pool = fresh_db().await;
    let retried = enqueue(
        &pool,
        NewJob {
            max_attempts: 2,
            ..NewJob::new("score", json!({}))
        },
    )
    .await;
    let lease = claim(&pool, "w", LONG).await.unwrap();
    jobs::fail(&pool, &lease, "store unavailable", true)
        .await
        .unwrap();
    let again = job(&pool, &lease).await;
    assert_eq!(
        (again.state.as_str(), again.error.as_deref()),
        ("queued", Some("store unavailable"))
    );
    // It waits before it is claimed again (a restarting store does not burn its attempts).
    assert!(claim(&pool, "w", LONG).await.is_none());
    let wait: f64 = sqlx::query_scalar(
        "select extract(epoch from not_before - now())::float8 from jobs where id = $1",
    )
    .bind(retried.id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!((1.0..=2.0).contains(&wait), "{wait}");
    sqlx::query("update jobs set not_before = now() where id = $1")
        .bind(retried.id)
        .execute(&pool)
        .await
        .unwrap();
    let lease = claim(&pool, "w", LONG).await.unwrap();
    assert_eq!((lease.id(), lease.attempt()), (retried.id, 2));
    jobs::fail(&pool, &lease, "store unavailable", true)
        .await
        .unwrap();
    assert_eq!(job(&pool, &lease).await.state, "failed");

    enqueue(&pool, NewJob::new("score", json!({}))).await;
    let lease = claim(&pool, "w", LONG).await.unwrap();
    jobs::fail(&pool, &lease, "checksum mismatch", false)
        .await
        .unwrap();
    let fatal = job(&pool, &lease).await;
    assert_eq!(
        (fatal.state.as_str(), fatal.attempts, fatal.error.as_deref()),
        ("failed", 1, Some("checksum mismatch"))
    );
}

#[tokio::test]
async fn only_leases_that_expire_before_saving_progress_count_against_max_attempts() {
    let pool = fresh_db().await;
    let queued = enqueue(
        &pool,
        NewJob {
            max_attempts: 2,
            ..NewJob::new("train", json!({}))
        },
    )
    .await;
    // Four workers die in turn, each after saving more of the job: it is never used up.
    let mut first = None;
    for step in 1..=4 {
        let lease = claim(&pool, &format!("w{step}"), SHORT).await.unwrap();
        jobs::saved(&pool, &lease, step as f32 * 0.2).await.unwrap();
        until_expired(&pool, &lease).await;
        first.get_or_insert(lease);
    }
    assert_eq!(jobs::requeue_expired(&pool).await.unwrap(), 1);
    let job = jobs::get(&pool, queued.id).await.unwrap().unwrap();
    assert_eq!(
        (job.state.as_str(), job.attempts, job.strikes),
        ("queued", 4, 0)
    );
    // The first worker, were it only slow, is still fenced off.
    assert!(matches!(
        jobs::progress(&pool, &first.unwrap(), 0.9, "stale", None).await,
        Err(QueueError::LeaseLost(_))
    ));
    // Two deaths that save nothing new use it up, though they report progress (a job that
    // kills its worker at the same step each time, after resuming from the same state).
    for owner in ["w5", "w6"] {
        let lease = claim(&pool, owner, SHORT).await.unwrap();
        jobs::progress(&pool, &lease, 0.9, "again", None)
            .await
            .unwrap();
        jobs::saved(&pool, &lease, 0.8).await.unwrap();
        until_expired(&pool, &lease).await;
    }
    jobs::requeue_expired(&pool).await.unwrap();
    let job = jobs::get(&pool, queued.id).await.unwrap().unwrap();
    assert_eq!(
        (job.state.as_str(), job.attempts, job.strikes),
        ("failed", 6, 2)
    );
    assert!(
        job.error
            .unwrap()
            .contains("before saving progress 2 times")
    );
}
