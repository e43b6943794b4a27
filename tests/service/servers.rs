//! Two API servers on one registry and store, clients spread over both: identical concurrent
//! uploads and score misses share one row and one job across the servers, a job's events
//! reach a client on the server that did not queue it, and a waiting score on one server is
//! answered by the work the other queued.

use std::time::Duration;

use mixpool::api::SweepLimits;
use reqwest::StatusCode;
use serde_json::Value;

use crate::app::{App, corpus, settings, spawn_app_with};

#[tokio::test]
async fn two_servers_share_uploads_jobs_and_events() {
    let a = spawn_app_with(SweepLimits::default()).await;
    // The second server: the same settings, so the same database and store.
    let config = settings(&a.pool, &a._dirs.0, &a._dirs.1, SweepLimits::default(), 120).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_service = mixpool::app::App::build(&config, Some(listener))
        .await
        .unwrap();
    let b = b_service.url();
    let on_b = |path: &str| format!("{b}{path}");

    // The same partition sent to both at once: one row, one training job.
    let text = corpus("code_python", 0, 8);
    let path = "/v1/partitions?name=python";
    let (first, second) = tokio::join!(
        a.post(path, text.clone()),
        App::json(a.client.post(on_b(path)).body(text.clone()))
    );
    let mut statuses = [first.0, second.0];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::CREATED],
        "{first:?} {second:?}"
    );
    assert_eq!(first.1["partition"]["id"], second.1["partition"]["id"]);
    let trains: i64 = sqlx::query_scalar("select count(*) from jobs where kind = 'train'")
        .fetch_one(&a.pool)
        .await
        .unwrap();
    assert_eq!(trains, 1);
    for (name, domain) in [("c", "code_c")] {
        let (status, body) = App::json(
            a.client
                .post(on_b(&format!("/v1/partitions?name={name}")))
                .body(corpus(domain, 0, 8)),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    a.post("/v1/eval-sets?name=e", corpus("tech_docs", 0, 3))
        .await;
    let worker = App::start(a.worker("shared"));
    a.trained("python").await;
    a.trained("c").await;

    // Identical misses on both servers share one job; its events reach a client of the
    // server whose request did not queue it, up to its success.
    let url = "/v1/score?partitions=python,c&eval=e&wait=0";
    let ((s1, on_a), (s2, on_b_answer)) =
        tokio::join!(a.get(url), App::json(a.client.get(on_b(url))));
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(on_a["job"]["id"], on_b_answer["job"]["id"]);
    let scores: i64 = sqlx::query_scalar("select count(*) from jobs where kind = 'score'")
        .fetch_one(&a.pool)
        .await
        .unwrap();
    assert_eq!(scores, 1);
    let job = on_a["job"]["id"].as_str().unwrap();
    let events = a
        .client
        .get(on_b(&format!("/v1/jobs/{job}/events")))
        .send()
        .await
        .unwrap();
    let text = tokio::time::timeout(Duration::from_secs(120), events.text())
        .await
        .expect("the event stream ends")
        .unwrap();
    let last: Value = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .next_back()
        .map(|d| serde_json::from_str(d).unwrap())
        .unwrap();
    assert_eq!(last["state"], "succeeded", "{text}");

    // Either server answers the score from the registry now.
    let cached = "/v1/score?partitions=python,c&eval=e&wait=10";
    let (status, from_a) = a.get(cached).await;
    let (status_b, from_b) = App::json(a.client.get(on_b(cached))).await;
    assert_eq!((status, status_b), (StatusCode::OK, StatusCode::OK));
    assert_eq!(from_a["perplexity"], from_b["perplexity"]);
    assert_eq!(from_b["cached"], true);
    worker.abort();
}
