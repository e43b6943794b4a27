//! Bases and recipes over HTTP: created from presets, pre-trained on a partition, the default
//! that scores use, and a score asked while the only base pre-trains.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::app::{corpus, spawn_app};

#[tokio::test]
async fn bases_and_recipes_created_over_http_train_and_score_a_mixture() {
    let app = spawn_app().await;
    let json = |v: Value| v.to_string();
    let (status, base) = app
        .post(
            "/v1/bases",
            json(serde_json::json!({"name": "http-base", "preset": "tiny", "seed": 7})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{base}");
    assert_eq!(
        (
            base["state"].as_str(),
            base["config"]["hidden_size"].as_i64()
        ),
        (Some("ready"), Some(128))
    );
    let quick = serde_json::json!({"name": "quick", "tokens": 512, "batch_tokens": 256, "micro_batch": 4, "seq_len": 64});
    let (status, recipe) = app.post("/v1/recipes", json(quick.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{recipe}");
    let (status, same) = app.post("/v1/recipes", json(serde_json::json!({"name": "quick-again", "tokens": 512, "batch_tokens": 256, "micro_batch": 4, "seq_len": 64}))).await;
    assert_eq!(
        (status, &same["id"]),
        (StatusCode::OK, &recipe["id"]),
        "equal settings are one recipe"
    );

    for (path, body, status, code) in [
        (
            "/v1/bases",
            serde_json::json!({"name": "b", "preset": "huge"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_preset",
        ),
        (
            "/v1/bases",
            serde_json::json!({"name": "http-base", "preset": "tiny"}),
            StatusCode::CONFLICT,
            "name_taken",
        ),
        (
            "/v1/bases",
            serde_json::json!({"name": "b", "preset": "tiny", "colour": 1}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "/v1/recipes",
            serde_json::json!({"name": "r", "tokens": 100, "seq_len": 64}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_recipe",
        ),
        (
            "/v1/recipes",
            serde_json::json!({"name": "r", "lr": "fast"}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "/v1/recipes",
            serde_json::json!({"tokens": 512}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "/v1/recipes",
            serde_json::json!({"name": "quick", "lr": 0.1}),
            StatusCode::CONFLICT,
            "name_taken",
        ),
    ] {
        let (got, answer) = app.post(path, json(body)).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {answer}"
        );
    }

    // The newest base and recipe are the defaults.
    let (status, upload) = app
        .post("/v1/partitions?name=speech", corpus("legal_licenses", 3, 5))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        (
            &upload["models"][0]["base_id"],
            &upload["models"][0]["recipe_id"]
        ),
        (&base["id"], &recipe["id"])
    );
    app.post("/v1/eval-sets?name=e", corpus("code_c", 0, 2))
        .await;
    app.trained("speech").await;
    let (status, score) = app
        .get("/v1/score?partitions=speech&eval=e&base=http-base&recipe=quick&wait=120")
        .await;
    assert_eq!(status, StatusCode::OK, "{score}");
    assert_eq!(score["base"], "http-base");
    let (status, _) = app.get("/v1/bases/http-base").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.get("/v1/recipes/quick").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_base_pretrained_on_a_partition_turns_ready_and_becomes_the_default() {
    let app = spawn_app().await;
    let json = |v: Value| v.to_string();
    let (status, _) = app
        .post(
            "/v1/partitions?name=seed&train=false",
            corpus("tech_docs", 0, 20),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let quick = serde_json::json!({"batch_tokens": 256, "micro_batch": 4, "seq_len": 64, "warmup_steps": 1});
    let before = app.jobs().await;
    for (body, status, code) in [
        (
            serde_json::json!({"name": "p", "preset": "tiny", "pretrain_tokens": 512}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            serde_json::json!({"name": "p", "preset": "tiny", "pretrain_on": "nowhere"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            serde_json::json!({"name": "p", "preset": "tiny", "pretrain_on": "seed", "pretrain_tokens": 100}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_pretrain",
        ),
        (
            serde_json::json!({"name": "p", "preset": "tiny", "pretrain_on": "seed", "pretrain": {"seq_len": 512}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_pretrain",
        ),
        (
            serde_json::json!({"name": "p", "preset": "tiny", "pretrain_on": "seed", "pretrain": {"speed": 1}}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
    ] {
        let (got, answer) = app.post("/v1/bases", json(body.clone())).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {answer}"
        );
    }
    assert_eq!(app.jobs().await, before, "bad requests queue nothing");
    let (_, listed) = app.get("/v1/bases").await;
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        1,
        "nor store a base"
    );

    let (status, base) = app
        .post(
            "/v1/bases",
            json(
                serde_json::json!({"name": "seeded", "preset": "tiny", "seed": 5,
                "pretrain_on": "seed", "pretrain_tokens": 512, "pretrain": quick}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{base}");
    assert_eq!(
        (base["state"].as_str(), base["job"]["kind"].as_str()),
        (Some("pending"), Some("pretrain"))
    );
    let mut ready = Value::Null;
    for _ in 0..2400 {
        let (_, got) = app.get("/v1/bases/seeded").await;
        if got["state"] != "pending" {
            ready = got;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready["state"], "ready", "{ready}");
    assert_eq!(ready["job"]["state"], "succeeded");
    assert_eq!(ready["job"]["result"]["train"]["tokens"], 512);

    // Partitions uploaded now train on the pre-trained base.
    let (_, upload) = app
        .post("/v1/partitions?name=c", corpus("code_c", 0, 5))
        .await;
    assert_eq!(upload["models"][0]["base_id"], base["id"]);
    let (_, listed) = app.get("/v1/bases?limit=1").await;
    assert_eq!(listed["items"][0]["name"], "seeded");
    assert!(listed["next"].is_string());
}

#[tokio::test]
async fn a_score_asked_while_the_only_base_pretrains_names_the_base_and_its_job() {
    let app = crate::app::spawn_app_with(mixpool::api::SweepLimits::default()).await;
    let base: uuid::Uuid = sqlx::query_scalar("update bases set state = 'pending' returning id")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let new = mixpool::registry::jobs::NewJob::new("pretrain", serde_json::json!({ "base": base }));
    let (job, _) = mixpool::registry::jobs::enqueue(&mut app.pool.acquire().await.unwrap(), &new)
        .await
        .unwrap();
    let (status, body) = app.get("/v1/score?partitions=a&eval=e").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "base_pending");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"base\"") && message.contains(&job.id.to_string()),
        "{message}"
    );
    assert_eq!(body["error"]["details"]["job"], serde_json::json!(job.id));
}
