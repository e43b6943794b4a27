//! Cancelled and deleted work over HTTP: what a cancelled training or a deleted partition
//! leaves on its model and in the store.

use std::time::Duration;

use reqwest::StatusCode;

use crate::app::corpus;

#[tokio::test]
async fn a_cancelled_training_shows_on_its_model_and_asking_again_queues_it_anew() {
    // No worker: the training stays queued until cancelled.
    let app = crate::app::spawn_app_with(mixpool::api::SweepLimits::default()).await;
    let text = corpus("code_c", 0, 4);
    let (status, created) = app.post("/v1/partitions?name=c", text.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let job = created["models"][0]["job_id"].as_str().unwrap().to_string();
    let (status, cancelled) = app.post(&format!("/v1/jobs/{job}/cancel"), "").await;
    assert_eq!(
        (status, cancelled["state"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    let (_, partition) = app.get("/v1/partitions/c").await;
    assert_eq!(partition["models"][0]["state"], "cancelled", "{partition}");

    // The same bytes uploaded again queue the unit model with a new job.
    let (status, again) = app.post("/v1/partitions?name=c", text).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    let (_, partition) = app.get("/v1/partitions/c").await;
    let model = &partition["models"][0];
    assert_eq!(model["state"], "queued", "{partition}");
    assert_ne!(model["job_id"].as_str(), Some(job.as_str()));
}

#[tokio::test]
async fn a_partition_deleted_while_its_unit_model_trains_cancels_the_job_and_leaves_nothing() {
    interrupted_training(Interruption::Delete).await;
}

#[tokio::test]
async fn a_training_cancelled_while_it_runs_shows_cancelled_on_its_model() {
    interrupted_training(Interruption::Cancel).await;
}

enum Interruption {
    Delete,
    Cancel,
}

async fn interrupted_training(how: Interruption) {
    // No background worker: the test runs one, with a short lease so that it hears the
    // cancellation within a second, on a recipe long enough to be caught mid-training.
    let app = crate::app::spawn_app_with(mixpool::api::SweepLimits::default()).await;
    let recipe = serde_json::json!({"name": "long", "tokens": 400 * 64, "batch_tokens": 4 * 64,
        "micro_batch": 4, "seq_len": 64, "checkpoint_every": 2});
    let (status, body) = app.post("/v1/recipes", recipe.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, created) = app
        .post("/v1/partitions?name=doomed", corpus("code_c", 0, 20))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let model = created["models"][0]["id"].as_str().unwrap().to_string();
    let job = created["models"][0]["job_id"].as_str().unwrap().to_string();
    let worker = mixpool::worker::Worker {
        lease: Duration::from_secs(3),
        ..app.worker("trainer")
    };
    let running = tokio::spawn(async move { worker.try_run_one().await.unwrap() });
    let started = std::time::Instant::now();
    loop {
        let (_, j) = app.get(&format!("/v1/jobs/{job}")).await;
        let state = j["state"].as_str().unwrap();
        assert!(state == "queued" || state == "running", "{j}");
        if j["progress"].as_f64().unwrap_or(0.0) > 0.05 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match how {
        Interruption::Delete => {
            let (status, deleted) = app.delete("/v1/partitions/doomed").await;
            assert_eq!(status, StatusCode::OK, "{deleted}");
        }
        Interruption::Cancel => {
            let (status, asked) = app.post(&format!("/v1/jobs/{job}/cancel"), "").await;
            assert_eq!(status, StatusCode::OK, "{asked}");
        }
    }
    assert!(running.await.unwrap(), "the worker ran the job");

    let (_, j) = app.get(&format!("/v1/jobs/{job}")).await;
    assert_eq!(
        (j["state"].as_str(), j["attempts"].as_i64()),
        (Some("cancelled"), Some(1)),
        "cancelled, never retried: {j}"
    );
    match how {
        Interruption::Delete => {
            let left = app.store.list(&format!("models/{model}")).await.unwrap();
            assert!(left.is_empty(), "nothing of the model survives: {left:?}");
        }
        Interruption::Cancel => {
            let (_, partition) = app.get("/v1/partitions/doomed").await;
            assert_eq!(partition["models"][0]["state"], "cancelled", "{partition}");
            let weights = app
                .store
                .list(&format!("models/{model}/model"))
                .await
                .unwrap();
            assert!(weights.is_empty(), "no weights stored: {weights:?}");
        }
    }
}
