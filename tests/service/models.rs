//! Unit models on demand: a second base's unit models queued by `POST /v1/models`, by a
//! score that names the base, and by `"train": "all"`; `GET /v1/models` with its filters.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::app::{App, corpus, spawn_app_with};

async fn models(app: &App, query: &str) -> Vec<Value> {
    let (status, page) = app.get(&format!("/v1/models?{query}")).await;
    assert_eq!(status, StatusCode::OK, "{query}: {page}");
    page["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_second_bases_unit_models_are_queued_on_request_and_by_scores() {
    let app = spawn_app_with(mixpool::api::SweepLimits::default()).await;
    for (name, domain) in [("python", "code_python"), ("c", "code_c")] {
        let (status, body) = app
            .post(&format!("/v1/partitions?name={name}"), corpus(domain, 0, 6))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    app.post("/v1/eval-sets?name=e", corpus("tech_docs", 0, 2))
        .await;
    // A second base: the new default, with no unit model yet.
    let (status, second) = app
        .post(
            "/v1/bases",
            json!({"name": "second", "preset": "tiny"}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    assert_eq!(models(&app, "base=base").await.len(), 2);
    assert!(models(&app, "base=second").await.is_empty());

    // Explicitly, for one partition; asked twice, one job.
    let ask = json!({"base": "second", "partitions": ["python"]}).to_string();
    let (status, first) = app.post("/v1/models", ask.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert_eq!(first["models"][0]["partition"], "python");
    assert_eq!(first["models"][0]["model"]["state"], "queued");
    let (_, again) = app.post("/v1/models", ask).await;
    assert_eq!(
        again["models"][0]["model"]["job_id"],
        first["models"][0]["model"]["job_id"]
    );
    let listed = models(&app, "base=second").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], first["models"][0]["model"]["id"]);
    assert!(models(&app, "base=second&state=ready").await.is_empty());
    assert_eq!(models(&app, "partition=c").await.len(), 1);

    // A score that names the base queues what it still lacks (c) and names both jobs.
    let (status, score) = app
        .get("/v1/score?partitions=python,c&eval=e&base=second&wait=0")
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{score}");
    let training = score["training"].as_array().unwrap();
    assert_eq!(training.len(), 2, "{score}");
    assert_eq!(models(&app, "base=second&state=queued").await.len(), 2);

    // Bad requests say what to fix and queue nothing.
    let jobs = app.jobs().await;
    for (body, status, code) in [
        (json!({"partitions": ["nope"]}), 404, "not_found"),
        (json!({"partitions": []}), 400, "invalid_partitions"),
        (json!({"partitions": "some"}), 400, "invalid_body"),
        (
            json!({"partitions": "all", "base": "nope"}),
            404,
            "not_found",
        ),
    ] {
        let (got, answer) = app.post("/v1/models", body.to_string()).await;
        assert_eq!(
            (got.as_u16(), answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {answer}"
        );
    }
    let (status, answer) = app.get("/v1/models?state=lost").await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_state"))
    );
    assert_eq!(app.jobs().await, jobs);

    // Trained, the same request is 200 and the score is computed.
    App::start(app.worker("w"));
    let (status, score) = app
        .get("/v1/score?partitions=python,c&eval=e&base=second&wait=120")
        .await;
    assert_eq!(status, StatusCode::OK, "{score}");
    assert_eq!(score["base"], "second");
    let (status, all) = app
        .post("/v1/models", json!({"partitions": "all"}).to_string())
        .await;
    assert_eq!(
        (status, &all["training"]),
        (StatusCode::OK, &json!(0)),
        "{all}"
    );
    assert_eq!(models(&app, "base=second&state=ready").await.len(), 2);
}

#[tokio::test]
async fn bases_and_recipes_created_with_train_all_queue_every_partitions_unit_model() {
    let app = spawn_app_with(mixpool::api::SweepLimits::default()).await;
    for (name, domain) in [("python", "code_python"), ("c", "code_c")] {
        app.post(
            &format!("/v1/partitions?name={name}&train=false"),
            corpus(domain, 0, 4),
        )
        .await;
    }
    assert_eq!(app.jobs().await, 0);
    let (status, base) = app
        .post(
            "/v1/bases",
            json!({"name": "third", "preset": "tiny", "train": "all"}).to_string(),
        )
        .await;
    assert_eq!(
        (status, &base["training"]),
        (StatusCode::CREATED, &json!(2)),
        "{base}"
    );
    assert_eq!(models(&app, "base=third&state=queued").await.len(), 2);

    let recipe = json!({"name": "longer", "tokens": 1024, "batch_tokens": 256,
        "micro_batch": 4, "seq_len": 64, "train": "all"});
    let (status, created) = app.post("/v1/recipes", recipe.to_string()).await;
    assert_eq!(
        (status, &created["training"]),
        (StatusCode::CREATED, &json!(2)),
        "{created}"
    );
    assert_eq!(models(&app, "recipe=longer&base=third").await.len(), 2);
    let (status, bad) = app
        .post(
            "/v1/recipes",
            json!({"name": "odd", "train": "some"}).to_string(),
        )
        .await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_body"))
    );
    assert_eq!(app.jobs().await, 4);

    // A base still to be pre-trained queues them when its pre-training succeeds.
    let (status, pending) = app
        .post(
            "/v1/bases",
            json!({"name": "fourth", "preset": "tiny", "pretrain_on": "python",
                "pretrain_tokens": 512, "train": "all",
                "pretrain": {"batch_tokens": 256, "micro_batch": 4, "seq_len": 64}})
            .to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{pending}");
    assert!(models(&app, "base=fourth").await.is_empty());
    let pretrainer = mixpool::worker::Worker {
        kinds: vec!["pretrain"],
        ..app.worker("pretrainer")
    };
    assert!(pretrainer.try_run_one().await.unwrap());
    let queued = models(&app, "base=fourth&recipe=longer&state=queued").await;
    assert_eq!(queued.len(), 2, "{pending}");
}

#[tokio::test]
async fn a_partition_whose_unit_model_was_not_queued_gets_it_from_the_healing_pass() {
    let app = spawn_app_with(mixpool::api::SweepLimits::default()).await;
    // A database that fails after the partition is stored: the client hears an error...
    sqlx::query("alter table recipes rename to recipes_away")
        .execute(&app.pool)
        .await
        .unwrap();
    let text = corpus("code_c", 0, 4);
    let (status, body) = app.post("/v1/partitions?name=gap", text.clone()).await;
    assert!(status.is_server_error(), "{status}: {body}");
    sqlx::query("alter table recipes_away rename to recipes")
        .execute(&app.pool)
        .await
        .unwrap();
    // ...and its retry queues the unit model beside the partition already stored.
    let (status, retried) = app.post("/v1/partitions?name=gap", text).await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!(retried["models"][0]["state"], "queued", "{retried}");

    // A gap nobody retried (stored without its model, as a crash between the two steps
    // leaves it) is closed by the healing pass that `serve` runs at start-up; a partition
    // uploaded with train=false is left alone.
    app.post("/v1/partitions?name=left", corpus("code_python", 0, 4))
        .await;
    sqlx::query("delete from models")
        .execute(&app.pool)
        .await
        .unwrap();
    app.post(
        "/v1/partitions?name=kept&train=false",
        corpus("tech_docs", 0, 4),
    )
    .await;
    assert!(models(&app, "partition=left").await.is_empty());
    let data = tempfile::tempdir().unwrap();
    let env = [("DATABASE_URL".to_string(), app.database_url().await)];
    let server = crate::helpers::Server::start(data.path(), &env).await;
    let started = std::time::Instant::now();
    while models(&app, "partition=left").await.is_empty() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "no unit model queued: {}",
            server.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let healed = models(&app, "partition=left").await;
    assert!(
        models(&app, "partition=kept").await.is_empty(),
        "train=false is respected"
    );
    assert_eq!(healed[0]["state"], "queued");
    assert!(healed[0]["job_id"].is_string());
    // Nothing is left to heal; a cancelled model stays cancelled.
    let job = healed[0]["job_id"].as_str().unwrap();
    app.post(&format!("/v1/jobs/{job}/cancel"), "").await;
    assert_eq!(mixpool::jobs::train::heal(&app.pool).await.unwrap(), 0);
    assert_eq!(
        models(&app, "partition=left").await[0]["state"],
        "cancelled"
    );
}

#[tokio::test]
async fn the_healing_pass_runs_on_one_server_at_a_time() {
    let app = spawn_app_with(mixpool::api::SweepLimits::default()).await;
    for (name, domain) in [("one", "code_c"), ("two", "tech_docs")] {
        let (status, body) = app
            .post(&format!("/v1/partitions?name={name}"), corpus(domain, 0, 4))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    sqlx::query("delete from models")
        .execute(&app.pool)
        .await
        .unwrap();
    // Another server's pass holds the lock: this one does nothing.
    let mut other = app.pool.acquire().await.unwrap();
    sqlx::query("select pg_advisory_lock($1)")
        .bind(mixpool::registry::models::HEAL_LOCK)
        .execute(&mut *other)
        .await
        .unwrap();
    assert_eq!(mixpool::jobs::train::heal(&app.pool).await.unwrap(), 0);
    assert!(models(&app, "").await.is_empty());
    // Once it is done, the next pass heals.
    sqlx::query("select pg_advisory_unlock($1)")
        .bind(mixpool::registry::models::HEAL_LOCK)
        .execute(&mut *other)
        .await
        .unwrap();
    assert_eq!(mixpool::jobs::train::heal(&app.pool).await.unwrap(), 2);
    assert_eq!(models(&app, "").await.len(), 2);
}
