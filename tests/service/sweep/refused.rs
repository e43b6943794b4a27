//! Bad sweeps: each refused by name, with nothing queued.

use super::*;

#[tokio::test]
async fn bad_sweeps_are_refused_by_name_and_queue_nothing() {
    let app = spawn_app_with(SweepLimits {
        max_mixtures: 10,
        shard_mixtures: 4,
    })
    .await;
    let names = pool_of(&app, 4, 1).await;
    let cases = [
        (
            json!({"partitions": names, "eval_sets": ["mixed"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_mixtures",
            "15 mixtures",
        ),
        (
            json!({"partitions": names, "sizes": [0, 2], "eval_sets": ["mixed"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_sizes",
            "[0, 2]",
        ),
        (
            json!({"partitions": names, "sizes": [2, 5], "eval_sets": ["mixed"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_sizes",
            "4 partitions",
        ),
        (
            json!({"partitions": names, "sizes": [1, 1], "mixtures": [["code_c"]], "eval_sets": ["mixed"]}),
            StatusCode::BAD_REQUEST,
            "invalid_sweep",
            "not both",
        ),
        (
            json!({"partitions": ["code_c"], "mixtures": [["legal_licenses"]], "eval_sets": ["mixed"]}),
            StatusCode::BAD_REQUEST,
            "invalid_sweep",
            "\"legal_licenses\"",
        ),
        (
            json!({"mixtures": [["code_c", "code_c"]], "eval_sets": ["mixed"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mixture",
            "more than once",
        ),
        (
            json!({"partitions": names, "sizes": [1, 1], "eval_sets": []}),
            StatusCode::BAD_REQUEST,
            "invalid_eval_sets",
            "at least one",
        ),
        (
            json!({"partitions": names, "sizes": [1, 1], "eval_sets": ["nope"]}),
            StatusCode::NOT_FOUND,
            "not_found",
            "\"nope\"",
        ),
        (
            json!({"partitions": ["nope"], "eval_sets": ["mixed"]}),
            StatusCode::NOT_FOUND,
            "not_found",
            "\"nope\"",
        ),
        (
            json!({"partitions": names, "sizes": [1, 1], "eval_sets": ["mixed"], "weighting": "bytes"}),
            StatusCode::BAD_REQUEST,
            "invalid_weighting",
            "\"bytes\"",
        ),
        (
            json!({"partitions": names, "sizes": [1, 1], "eval_set": ["mixed"]}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "eval_set",
        ),
        (
            json!({"partitions": names, "sizes": [1, 1], "eval_sets": ["mixed"], "train": false}),
            StatusCode::CONFLICT,
            "models_not_ready",
            "code_c",
        ),
    ];
    for (body, status, code, says) in cases {
        let (got, answer) = app.post("/v1/sweeps", body.to_string()).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    let sweeps: i64 = sqlx::query_scalar("select count(*) from sweeps")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let jobs: i64 = sqlx::query_scalar("select count(*) from jobs where kind = 'sweep'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!((sweeps, jobs), (0, 0));
    // By default the missing unit models are what is queued, and the sweep is asked again.
    let body = json!({"partitions": names, "sizes": [1, 1], "eval_sets": ["mixed"]});
    let (status, answer) = app.post("/v1/sweeps", body.to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let mut training: Vec<&str> = answer["training"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["partition"].as_str().unwrap())
        .collect();
    training.sort();
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(training, expected, "{answer}");
    let sweeps: i64 = sqlx::query_scalar("select count(*) from sweeps")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(sweeps, 0, "no sweep before its unit models");
    let (status, missing) = app
        .get("/v1/sweeps/6a1f5e9e-0000-4000-8000-000000000000")
        .await;
    assert_eq!(
        (status, missing["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}
