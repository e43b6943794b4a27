//! What the service counts: score answers by outcome, requests by route, jobs by kind.

use reqwest::StatusCode;

use crate::app::{corpus, spawn_app_with};

#[tokio::test]
async fn score_answers_are_counted_by_outcome() {
    let app = crate::app::spawn_app_with(mixpool::api::SweepLimits::default()).await;
    let worker = app.worker("w");
    app.post("/v1/partitions?name=c", corpus("code_c", 0, 4))
        .await;
    app.post("/v1/eval-sets?name=e", corpus("tech_docs", 0, 1))
        .await;
    let answers = |metrics: &str, outcome: &str| -> u64 {
        let prefix = format!("mixpool_score_answers_total{{outcome=\"{outcome}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap()
            .parse()
            .unwrap()
    };
    let path = "/v1/score?partitions=c&eval=e&wait=0";
    let (status, _) = app.get(&format!("{path}&train=false")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = app.get(path).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(worker.try_run_one().await.unwrap(), "the unit model trains");
    let (status, pending) = app.get(path).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{pending}");
    assert!(worker.try_run_one().await.unwrap(), "the score job runs");
    // The client comes back for the score its 202 started: computed, not cached.
    let (status, score) = app.get(path).await;
    assert_eq!(
        (status, &score["cached"]),
        (StatusCode::OK, &serde_json::json!(true))
    );
    let (_, metrics) = app.text("/metrics").await;
    let counts: Vec<u64> = [
        "models_not_ready",
        "training",
        "pending",
        "computed",
        "cached",
        "error",
    ]
    .iter()
    .map(|o| answers(&metrics, o))
    .collect();
    assert_eq!(counts, vec![1, 1, 1, 1, 0, 0], "{metrics}");
    // Asked again, it is an ordinary cached answer.
    app.get(path).await;
    let (_, metrics) = app.text("/metrics").await;
    assert_eq!(answers(&metrics, "cached"), 1, "{metrics}");
}

#[tokio::test]
async fn unknown_routes_answer_json_and_requests_and_jobs_are_measured() {
    let app = spawn_app_with(mixpool::api::SweepLimits::default()).await;
    let (status, body) = app.get("/v1/nothing-here").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_route")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/nothing-here")
    );
    let (status, body) = app.delete("/v1/jobs").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed")),
        "{body}"
    );
    let (status, _) = app
        .post("/v1/partitions?name=c", corpus("code_c", 0, 4))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    for _ in 0..2 {
        app.get("/v1/partitions/c").await;
    }
    let worker = app.worker("w");
    assert!(worker.try_run_one().await.unwrap(), "the unit model trains");

    let (_, metrics) = app.text("/metrics").await;
    let value = |line: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {line}: {metrics}"))
            .parse()
            .unwrap()
    };
    // By the route's pattern, not the path.
    assert_eq!(
        value(
            r#"mixpool_http_request_duration_seconds_count{method="GET",route="/v1/partitions/{key}",status="200"}"#
        ),
        2.0
    );
    assert_eq!(
        value(
            r#"mixpool_http_request_duration_seconds_count{method="POST",route="/v1/partitions",status="201"}"#
        ),
        1.0
    );
    assert_eq!(
        value(r#"mixpool_job_duration_seconds_count{kind="train",state="succeeded"}"#),
        1.0
    );
    assert_eq!(
        value(r#"mixpool_job_queue_wait_seconds_count{kind="train"}"#),
        1.0
    );
    assert!(value(r#"mixpool_job_duration_seconds_sum{kind="train",state="succeeded"}"#) > 0.0);
    // Observed once, however often the metrics are read.
    let (_, again) = app.text("/metrics").await;
    assert!(
        again
            .lines()
            .any(|l| l == r#"mixpool_job_duration_seconds_count{kind="train",state="succeeded"} 1"#),
        "{again}"
    );
}
