//! A worker's cache: consecutive shards of a sweep on one worker fetch nothing again (the
//! jobs' counters and the worker's metrics say so), a merge on other eval sets reads the unit
//! models from the disk cache, and training frees the resident ones.

use std::time::{Duration, Instant};

use mixpool::api::SweepLimits;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{finished, pool_of, sweep_jobs};
use crate::app::{App, corpus, spawn_app_with};

/// A job's `fetched` counter.
fn fetched(result: &Value, counter: &str) -> u64 {
    result["fetched"][counter]
        .as_u64()
        .unwrap_or_else(|| panic!("no fetched.{counter} in {result}"))
}

/// A worker's counter as `/metrics` gives it (0 when absent).
fn metric(metrics: &str, name: &str, worker: &str) -> u64 {
    let prefix = format!("{name}{{worker=\"{worker}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map_or(0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn consecutive_shards_on_one_worker_fetch_nothing_again() {
    let app = spawn_app_with(SweepLimits {
        max_mixtures: 100,
        shard_mixtures: 3,
    })
    .await;
    let worker = app.worker("cached");
    let running = App::start(worker.clone());
    let names = pool_of(&app, 3, 2).await;
    for name in &names {
        app.trained(name).await;
    }
    let request = json!({"partitions": names, "eval_sets": ["mixed", "legal"]});
    let (status, created) = app.post("/v1/sweeps", request.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    finished(&app, created["id"].as_str().unwrap()).await;
    sweep_jobs(&app).await;

    // Shards in the order they ran: the first fetched the three unit models, the others
    // found them resident and fetched nothing.
    let shards: Vec<Value> = sqlx::query_scalar(
        "select result from jobs where kind = 'sweep' and state = 'succeeded' order by started_at",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(shards.len(), 3, "7 mixtures in shards of 3");
    assert!(fetched(&shards[0], "misses") >= 3, "{}", shards[0]);
    for shard in &shards[1..] {
        assert_eq!(
            (fetched(shard, "misses"), fetched(shard, "bytes_fetched")),
            (0, 0),
            "{shard}"
        );
    }
    assert_eq!(worker.kept.resident().len(), 3);
    worker.cache.settle().await;

    // Scored on a new eval set, the kept merger does not serve (it lacks the set): a new one
    // reads the two unit models from the disk cache, fetching nothing from the store.
    let (status, body) = app
        .post("/v1/eval-sets?name=fresh", corpus("tech_docs", 150, 2))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let pair = format!("{},{}", names[0], names[1]);
    let (status, score) = app
        .get(&format!("/v1/score?partitions={pair}&eval=fresh&wait=60"))
        .await;
    assert_eq!(status, StatusCode::OK, "{score}");
    let result: Value =
        sqlx::query_scalar("select result from jobs where kind = 'score' and state = 'succeeded'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(fetched(&result, "misses"), 0, "{result}");
    assert!(fetched(&result, "hits") >= 2, "{result}");

    // The worker's metrics add up its jobs' counters.
    let jobs: Vec<Value> = sqlx::query_scalar(
        "select result from jobs where state = 'succeeded' and result ? 'fetched'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let total = |counter: &str| jobs.iter().map(|r| fetched(r, counter)).sum::<u64>();
    let started = Instant::now();
    loop {
        let (_, metrics) = app.text("/metrics").await;
        let seen = [
            ("mixpool_worker_cache_misses_total", "misses"),
            ("mixpool_worker_cache_hits_total", "hits"),
            ("mixpool_worker_cache_fetched_bytes_total", "bytes_fetched"),
        ]
        .map(|(name, counter)| (metric(&metrics, name, "cached"), total(counter)));
        if seen.iter().all(|(metric, jobs)| metric == jobs) {
            assert!(seen[0].0 >= 3 && seen[1].0 >= 2, "{metrics}");
            assert!(metric(&metrics, "mixpool_worker_cache_bytes", "cached") > 0);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Training needs the memory: the kept merger goes first.
    let (status, body) = app
        .post("/v1/partitions?name=more", corpus("code_c", 20, 8))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    app.trained("more").await;
    assert!(worker.kept.resident().is_empty());
    running.abort();
}
