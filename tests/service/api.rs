//! The REST API over a real server on a random port, with an in-process worker.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::app::{corpus, spawn_app, spawn_app_with};

#[tokio::test]
async fn partitions_are_trained_and_mixtures_scored_then_served_from_the_cache() {
    // The worker starts once the first score has been refused.
    let app = crate::app::spawn_app_with(mixpool::api::SweepLimits::default()).await;
    let (status, a) = app
        .post(
            "/v1/partitions?name=python&domain=code",
            corpus("code_python", 0, 10),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    assert_eq!(a["models"][0]["state"], "queued");
    let (status, again) = app
        .post(
            "/v1/partitions?name=python-again",
            corpus("code_python", 0, 10),
        )
        .await;
    assert_eq!(
        (status, &again["partition"]["id"]),
        (StatusCode::OK, &a["partition"]["id"]),
        "identical bytes"
    );
    let (status, c) = app
        .post("/v1/partitions?name=c", corpus("code_c", 0, 10))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = app
        .post(
            "/v1/eval-sets?name=held-out",
            corpus("legal_licenses", 0, 3),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, body) = app
        .get("/v1/score?partitions=python,c&eval=held-out&wait=0")
        .await;
    // The score waits on the unit models' training: 202 naming the jobs queued at upload.
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let mut training: Vec<_> = body["training"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["partition"].as_str().unwrap(), t["job"].clone()))
        .collect();
    training.sort_by_key(|(p, _)| p.to_string());
    assert_eq!(
        training,
        [
            ("c", c["models"][0]["job_id"].clone()),
            ("python", a["models"][0]["job_id"].clone())
        ]
    );
    crate::app::App::start(app.worker("api-test"));
    app.trained("python").await;
    app.trained("c").await;
    let (status, score) = app
        .get("/v1/score?partitions=python,c&eval=held-out&wait=120")
        .await;
    assert_eq!(status, StatusCode::OK, "{score}");
    assert_eq!(score["cached"], false);
    let ppl = score["perplexity"].as_f64().unwrap();
    assert!(ppl > 1.0 && ppl < 257.0);
    assert_eq!(score["mixture"].as_array().unwrap().len(), 2);
    assert_eq!(
        (
            score["base"].as_str(),
            score["recipe"].as_str(),
            score["eval_set"].as_str()
        ),
        (Some("base"), Some("unit"), Some("held-out"))
    );

    let jobs = app.jobs().await;
    let (status, cached) = app.get("/v1/score?partitions=c,python&eval=held-out").await;
    assert_eq!(
        (
            status,
            cached["cached"].as_bool(),
            cached["perplexity"].as_f64()
        ),
        (StatusCode::OK, Some(true), Some(ppl))
    );
    assert_eq!(app.jobs().await, jobs, "a cached score runs no job");

    let (status, single) = app
        .get("/v1/score?partitions=python&eval=held-out&wait=120")
        .await;
    assert_eq!(status, StatusCode::OK, "{single}");
    assert_ne!(single["perplexity"].as_f64(), Some(ppl));

    let (status, one) = app.get("/v1/partitions/python").await;
    assert_eq!(
        (status, one["models"][0]["state"].as_str()),
        (StatusCode::OK, Some("ready"))
    );
    let (_, listed) = app.get("/v1/partitions?limit=1").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    let (_, next) = app
        .get(&format!(
            "/v1/partitions?limit=1&cursor={}",
            listed["next"].as_str().unwrap()
        ))
        .await;
    assert_ne!(next["items"][0]["id"], listed["items"][0]["id"]);
    // A new base becomes the default at once: the cached answer for the old one is not served.
    let (status, _) = app
        .post(
            "/v1/bases",
            serde_json::json!({"name": "newer", "preset": "tiny"}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = app
        .get("/v1/score?partitions=c,python&eval=held-out&wait=0&train=false")
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("models_not_ready")),
        "{body}"
    );
    let (status, old) = app
        .get("/v1/score?partitions=c,python&eval=held-out&base=base")
        .await;
    assert_eq!(
        (status, old["cached"].as_bool()),
        (StatusCode::OK, Some(true))
    );

    let (status, succeeded) = app.get("/v1/jobs?state=succeeded&limit=100").await;
    assert_eq!(status, StatusCode::OK);
    let kinds: Vec<&str> = succeeded["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"train") && kinds.contains(&"score"),
        "{kinds:?}"
    );
    let (status, _) = app.get("/v1/jobs?state=lost").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app.get("/readyz").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_score_of_untrained_partitions_trains_them_first_unless_told_not_to() {
    let app = spawn_app_with(mixpool::api::SweepLimits::default()).await;
    app.post(
        "/v1/partitions?name=kept&train=false",
        corpus("tech_docs", 0, 5),
    )
    .await;
    app.post("/v1/eval-sets?name=e", corpus("legal_licenses", 0, 2))
        .await;
    let (status, body) = app
        .get("/v1/score?partitions=kept&eval=e&wait=0&train=false")
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "models_not_ready");
    assert!(body["error"]["message"].as_str().unwrap().contains("kept"));
    assert_eq!(body["error"]["details"][0]["model_state"], Value::Null);
    assert_eq!(app.jobs().await, 0, "train=false queues nothing");

    // Asked without train=false: the unit model is queued, and asked again, the same job.
    let (status, body) = app.get("/v1/score?partitions=kept&eval=e&wait=0").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["training"][0]["partition"], "kept");
    let job = body["training"][0]["job"].as_str().unwrap().to_string();
    let (status, again) = app.get("/v1/score?partitions=kept&eval=e&wait=0").await;
    assert_eq!(
        (status, again["training"][0]["job"].as_str()),
        (StatusCode::ACCEPTED, Some(job.as_str()))
    );
    assert_eq!(app.jobs().await, 1);
    // A request that waits follows the training with the score.
    crate::app::App::start(app.worker("w"));
    let (status, score) = app.get("/v1/score?partitions=kept&eval=e&wait=120").await;
    assert_eq!(
        (status, &score["cached"]),
        (StatusCode::OK, &Value::Bool(false)),
        "{score}"
    );
    let (_, trained) = app.get(&format!("/v1/jobs/{job}")).await;
    assert_eq!(trained["state"], "succeeded");
}

#[tokio::test]
async fn bad_requests_get_a_json_error_that_says_what_to_fix_and_change_nothing() {
    let app = spawn_app().await;
    app.post("/v1/partitions?name=p&train=false", corpus("code_c", 0, 5))
        .await;
    app.post("/v1/partitions?name=q&train=false", corpus("code_c", 5, 5))
        .await;
    app.post("/v1/eval-sets?name=e", corpus("legal_licenses", 0, 2))
        .await;
    let jobs = app.jobs().await;
    let cases: Vec<(&str, StatusCode, &str)> = vec![
        (
            "/v1/score?partitions=p,nope&eval=e",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/v1/score?partitions=p&eval=missing",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/v1/score?partitions=p,p&eval=e",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mixture",
        ),
        (
            "/v1/score?partitions=p,q&eval=e&weights=1",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mixture",
        ),
        (
            "/v1/score?partitions=p,q&eval=e&weights=1,-2",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mixture",
        ),
        (
            "/v1/score?partitions=p,q&eval=e&weights=0,0",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mixture",
        ),
        (
            "/v1/score?partitions=p,q&eval=e&weights=1,NaN",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mixture",
        ),
        (
            "/v1/score?partitions=p,q&eval=e&weights=a,b",
            StatusCode::BAD_REQUEST,
            "invalid_weights",
        ),
        (
            "/v1/score?partitions=p&eval=e&weighting=magic",
            StatusCode::BAD_REQUEST,
            "invalid_weighting",
        ),
        (
            "/v1/score?partitions=p&eval=e&wait=-1",
            StatusCode::BAD_REQUEST,
            "invalid_wait",
        ),
        (
            "/v1/score?partitions=p&eval=e&colour=red",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        ("/v1/score?eval=e", StatusCode::BAD_REQUEST, "invalid_query"),
        (
            "/v1/score?partitions=,&eval=e",
            StatusCode::BAD_REQUEST,
            "invalid_partitions",
        ),
        (
            "/v1/partitions?limit=0",
            StatusCode::BAD_REQUEST,
            "invalid_limit",
        ),
        (
            "/v1/partitions?cursor=xyz",
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
        ),
        ("/v1/jobs/not-a-uuid", StatusCode::BAD_REQUEST, "invalid_id"),
        ("/v1/partitions/nope", StatusCode::NOT_FOUND, "not_found"),
    ];
    for (path, status, code) in cases {
        let (got, body) = app.get(path).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {body}"
        );
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }

    let uploads: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "/v1/partitions?name=bad",
            b"{\"text\": \"ok\"}\n{oops}\n".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "line 2",
        ),
        (
            "/v1/partitions?name=bad",
            b"{\"text\": \"\xff\"}\n".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "line 1: not valid UTF-8",
        ),
        (
            "/v1/partitions?name=bad",
            Vec::new(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no documents",
        ),
        (
            "/v1/partitions?name=bad",
            vec![b'x'; 2 << 20],
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than",
        ),
        (
            "/v1/partitions?name=../etc",
            b"{\"text\": \"x\"}".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid name",
        ),
        (
            "/v1/partitions?name=p",
            b"{\"text\": \"different\"}".to_vec(),
            StatusCode::CONFLICT,
            "taken",
        ),
        (
            "/v1/partitions?name=x&format=csv",
            b"{\"text\": \"x\"}".to_vec(),
            StatusCode::BAD_REQUEST,
            "csv",
        ),
        (
            "/v1/partitions",
            b"{\"text\": \"x\"}".to_vec(),
            StatusCode::BAD_REQUEST,
            "name",
        ),
    ];
    for (path, body, status, words) in uploads {
        let (got, answer) = app.post(path, body).await;
        assert_eq!(got, status, "{path}: {answer}");
        assert!(
            answer["error"]["message"].as_str().unwrap().contains(words),
            "{path}: {answer}"
        );
    }
    let response = app
        .client
        .post(format!("{}/v1/partitions?name=img", app.url))
        .header("content-type", "image/png")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let response = app
        .client
        .post(format!("{}/v1/partitions?name=br", app.url))
        .header("content-encoding", "br")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let (_, listed) = app.get("/v1/partitions").await;
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        2,
        "nothing stored"
    );
    assert_eq!(app.jobs().await, jobs, "nothing queued");
}

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
async fn every_subset_is_scored_in_one_batch_then_served_from_the_cache() {
    let app = spawn_app().await;
    // The `tiny` preset, created over HTTP with a quick recipe: the new defaults.
    let (status, _) = app
        .post(
            "/v1/bases",
            serde_json::json!({"name": "tiny", "preset": "tiny"}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let quick = serde_json::json!({"name": "quick", "tokens": 512, "batch_tokens": 256,
        "micro_batch": 4, "seq_len": 64});
    let (status, _) = app.post("/v1/recipes", quick.to_string()).await;
    assert_eq!(status, StatusCode::CREATED);
    for (name, domain) in [
        ("python", "code_python"),
        ("c", "code_c"),
        ("legal", "legal_licenses"),
    ] {
        let (status, _) = app
            .post(&format!("/v1/partitions?name={name}"), corpus(domain, 0, 8))
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    app.post("/v1/eval-sets?name=e", corpus("tech_docs", 0, 3))
        .await;
    for name in ["python", "c", "legal"] {
        app.trained(name).await;
    }

    // Two identical misses at once share one job, whose live events end with its success.
    let url = "/v1/score?partitions=python,c&eval=e&wait=0";
    let ((s1, first), (s2, second)) = tokio::join!(app.get(url), app.get(url));
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(first["job"]["id"], second["job"]["id"]);
    let score_jobs = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from jobs where kind = 'score'")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    assert_eq!(score_jobs().await, 1);
    let events = app
        .client
        .get(format!(
            "{}/v1/jobs/{}/events",
            app.url,
            first["job"]["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        events.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    // The stream ends by itself after the final state.
    let text = tokio::time::timeout(Duration::from_secs(120), events.text())
        .await
        .expect("the event stream ends")
        .unwrap();
    let states: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["state"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        states.last().map(String::as_str),
        Some("succeeded"),
        "{text}"
    );
    assert!(text.starts_with("event: job"), "{text}");

    // Every non-empty subset, in one batch.
    let names = ["python", "c", "legal"];
    let subsets: Vec<Vec<&str>> = (1..8u32)
        .map(|bits| {
            (0..3)
                .filter(|i| bits & (1 << i) != 0)
                .map(|i| names[i])
                .collect()
        })
        .collect();
    let batch = serde_json::json!({"mixtures": subsets, "eval_sets": ["e"], "wait": 120});
    let (status, answer) = app.post("/v1/scores", batch.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        (answer["done"].as_u64(), answer["pending"].as_u64()),
        (Some(7), Some(0))
    );
    assert_eq!(
        score_jobs().await,
        7,
        "one job per mixture, the shared one included"
    );
    let results = answer["results"].as_array().unwrap();
    let mut perplexities = Vec::new();
    for (subset, result) in subsets.iter().zip(results) {
        let score = &result["score"];
        assert_eq!(
            (&score["base"], &score["recipe"]),
            (&"tiny".into(), &"quick".into())
        );
        assert_eq!(score["mixture"].as_array().unwrap().len(), subset.len());
        let (status, again) = app
            .get(&format!("/v1/score?partitions={}&eval=e", subset.join(",")))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (again["cached"].as_bool(), &again["perplexity"]),
            (Some(true), &score["perplexity"]),
            "{subset:?}"
        );
        perplexities.push(score["perplexity"].as_f64().unwrap());
    }
    perplexities.sort_by(f64::total_cmp);
    perplexities.dedup();
    assert_eq!(perplexities.len(), 7, "each mixture has its own score");
    assert_eq!(score_jobs().await, 7, "cached answers run no job");

    let jobs = app.jobs().await;
    for (body, status, code) in [
        (
            serde_json::json!({"mixtures": [["python"], ["python", "nope"]], "eval_sets": ["e"]}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            serde_json::json!({"mixtures": [], "eval_sets": ["e"]}),
            StatusCode::BAD_REQUEST,
            "invalid_batch",
        ),
        (
            serde_json::json!({"mixtures": [{"partitions": ["python", "c"], "weights": [1, -1]}], "eval_sets": ["e"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mixture",
        ),
        (
            serde_json::json!({"mixtures": [["c", "c"]], "eval_sets": ["e"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mixture",
        ),
    ] {
        let (got, error) = app.post("/v1/scores", body.to_string()).await;
        assert_eq!(
            (got, error["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {error}"
        );
    }
    assert_eq!(app.jobs().await, jobs, "a bad batch queues nothing");

    let (status, metrics) = app.text("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics
            .lines()
            .any(|l| l == "mixpool_jobs{kind=\"score\",state=\"succeeded\"} 7"),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l == "mixpool_partitions 3"),
        "{metrics}"
    );
    let answers = |outcome: &str| -> u64 {
        let prefix = format!("mixpool_score_answers_total{{outcome=\"{outcome}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {outcome} answers line: {metrics}"))
            .parse()
            .unwrap()
    };
    assert!(answers("cached") >= 7, "{metrics}");
    assert_eq!(
        answers("computed"),
        7,
        "each subset computed once: {metrics}"
    );

    // A partition that scores need stays; one that none needs goes, with its unit model.
    let (status, body) = app.delete("/v1/partitions/legal").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("partition_in_use")),
        "{body}"
    );
    let (status, extra) = app
        .post("/v1/partitions?name=extra", corpus("tech_docs", 10, 5))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, deleted) = app.delete("/v1/partitions/extra").await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    let model = extra["models"][0]["id"].as_str().unwrap();
    assert_eq!(deleted["models"][0], model);
    let (status, _) = app.get("/v1/partitions/extra").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Its training ends (cancelled, or done just before), and the store keeps nothing of it.
    let job = extra["models"][0]["job_id"].as_str().unwrap();
    let ended = loop {
        let (_, j) = app.get(&format!("/v1/jobs/{job}")).await;
        match j["state"].as_str().unwrap() {
            "queued" | "running" => tokio::time::sleep(Duration::from_millis(20)).await,
            state => break state.to_string(),
        }
    };
    assert!(ended == "cancelled" || ended == "succeeded", "{ended}");
    let sha = extra["partition"]["sha256"].as_str().unwrap();
    let partition_key = mixpool::store::keys::partition(sha);
    assert_eq!(app.store.get_optional(&partition_key).await.unwrap(), None);
    let left = app.store.list(&format!("models/{model}")).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
    let (status, _) = app.delete("/v1/partitions/extra").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let models: i64 = sqlx::query_scalar("select count(*) from models")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(models, 3);
    // The name is free again, for other content.
    let (status, _) = app
        .post(
            "/v1/partitions?name=extra&train=false",
            corpus("tech_docs", 20, 5),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
}

/// A tar of a directory's files, as `mixpool bases import` sends it.
fn tar_of(dir: &std::path::Path) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        tar.append_path_with_name(&path, path.file_name().unwrap())
            .unwrap();
    }
    tar.into_inner().unwrap()
}

fn hf_fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

// Multi-threaded: the command line runs as a blocking child process meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_checkpoint_trains_scores_and_exports_the_merged_model() {
    let app = spawn_app().await;
    let bases_before = app.get("/v1/bases").await.1["items"]
        .as_array()
        .unwrap()
        .len();
    // Bad imports change nothing.
    let broken = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(hf_fixture("gpt2")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, broken.path().join(path.file_name().unwrap())).unwrap();
    }
    let config = broken.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("GPT2LMHeadModel", "T5ForConditionalGeneration"),
    )
    .unwrap();
    for (path, body, status, code) in [
        (
            "/v1/bases/import?name=x",
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "empty_body",
        ),
        (
            "/v1/bases/import?name=x",
            b"not a tar at all, just some bytes".repeat(40),
            StatusCode::BAD_REQUEST,
            "invalid_archive",
        ),
        (
            "/v1/bases/import?name=x",
            tar_of(broken.path()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_checkpoint",
        ),
        (
            "/v1/bases/import?name=../x",
            tar_of(&hf_fixture("gpt2")),
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            "/v1/bases/import?name=base",
            tar_of(&hf_fixture("gpt2")),
            StatusCode::CONFLICT,
            "name_taken",
        ),
    ] {
        let (got, answer) = app.post(path, body).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {answer}"
        );
    }
    let (_, answer) = app
        .post("/v1/bases/import?name=x", tar_of(broken.path()))
        .await;
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("T5ForConditionalGeneration")
    );
    assert_eq!(
        app.get("/v1/bases").await.1["items"]
            .as_array()
            .unwrap()
            .len(),
        bases_before
    );

    // The command line's import, against this server, of a checkpoint as found (fields
    // converters add, a chat template): refused with --strict, accepted and reported without.
    let strict = std::process::Command::new(env!("CARGO_BIN_EXE_mixpool"))
        .env("MIXPOOL_TOKEN", &app.token)
        .args([
            "bases",
            "import",
            "--url",
            &app.url,
            "--name",
            "converted",
            "--strict",
        ])
        .arg(hf_fixture("llama_converted"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&strict.stderr);
    assert!(
        !strict.status.success() && stderr.contains("_model_name_or_path"),
        "{stderr}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mixpool"))
        .env("MIXPOOL_TOKEN", &app.token)
        .args(["bases", "import", "--url", &app.url, "--name", "converted"])
        .arg(hf_fixture("llama_converted"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            base["state"].as_str(),
            base["import"]["architecture"].as_str()
        ),
        (Some("ready"), Some("LlamaForCausalLM"))
    );
    assert!(base["files"]["chat_template.jinja"].is_string(), "{base}");
    let ignored: Vec<&str> = base["import"]["ignored"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["field"].as_str().unwrap())
        .collect();
    assert!(ignored.contains(&"rope_interleaved"), "{base}");
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_mixpool"))
        .env("MIXPOOL_TOKEN", &app.token)
        .args(["bases", "import", "--url", &app.url, "--name", "converted"])
        .arg(hf_fixture("llama_converted"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("is taken"), "{stderr}");

    // Unit models of the imported base, with its BPE tokenizer, scored and exported.
    let quick = serde_json::json!({"name": "quick64", "tokens": 1024, "batch_tokens": 256, "micro_batch": 4, "seq_len": 64});
    assert_eq!(
        app.post("/v1/recipes", quick.to_string()).await.0,
        StatusCode::CREATED
    );
    for (name, domain) in [("py", "code_python"), ("law", "legal_licenses")] {
        let (_, upload) = app
            .post(&format!("/v1/partitions?name={name}"), corpus(domain, 0, 8))
            .await;
        assert_eq!(upload["models"][0]["base_id"], base["id"]);
    }
    app.post(
        "/v1/partitions?name=idle&train=false",
        corpus("tech_docs", 0, 3),
    )
    .await;
    let eval = corpus("tech_docs", 5, 2);
    app.post("/v1/eval-sets?name=docs", eval.clone()).await;
    app.trained("py").await;
    app.trained("law").await;
    let (status, score) = app
        .get("/v1/score?partitions=py,law&eval=docs&wait=120")
        .await;
    assert_eq!(status, StatusCode::OK, "{score}");

    let (status, body) = app
        .get("/v1/mixtures/export?partitions=py,idle&train=false")
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("models_not_ready"))
    );
    let (status, body) = app.get("/v1/mixtures/export?partitions=py,idle").await;
    assert_eq!(
        (status, body["training"][0]["partition"].as_str()),
        (StatusCode::ACCEPTED, Some("idle")),
        "the missing unit model is queued: {body}"
    );
    let (status, _) = app.get("/v1/mixtures/export?partitions=py,nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let dir = tempfile::tempdir().unwrap();
    let exported = dir.path().join("merged");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mixpool"))
        .env("MIXPOOL_TOKEN", &app.token)
        .args([
            "export",
            "--url",
            &app.url,
            "--partitions",
            "py,law",
            "--out",
        ])
        .arg(&exported)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in [
        "config.json",
        "chat_template.jinja",
        "tokenizer_config.json",
        "tokenizer.json",
    ] {
        assert_eq!(
            std::fs::read(exported.join(file)).unwrap(),
            std::fs::read(hf_fixture("llama_converted").join(file)).unwrap(),
            "the checkpoint's own {file}, through import, training, merging and export"
        );
    }
    // A worker merged it once (an `export` job); asked again, it comes from the store.
    let exports = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from jobs where kind = 'export'")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    assert_eq!(exports().await, 1);
    let again = app
        .client
        .get(app.url("/v1/mixtures/export?partitions=law,py"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let tar = again.bytes().await.unwrap();
    let mut archive = tar::Archive::new(&tar[..]);
    let weights = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap().ends_with("model.safetensors"))
        .map(|mut e| {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
            bytes
        })
        .unwrap();
    assert_eq!(
        weights,
        std::fs::read(exported.join("model.safetensors")).unwrap()
    );
    assert_eq!(exports().await, 1);
    // A stored tar removed by hand is merged again, not answered with an error.
    for key in app.store.list("exports").await.unwrap() {
        app.store.delete(&key).await.unwrap();
    }
    let remade = app
        .client
        .get(app.url("/v1/mixtures/export?partitions=law,py"))
        .send()
        .await
        .unwrap();
    assert_eq!(remade.status(), StatusCode::OK);
    let remade = remade.bytes().await.unwrap();
    let mut archive = tar::Archive::new(&remade[..]);
    let mut entry = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap().ends_with("model.safetensors"))
        .unwrap();
    let mut again = Vec::new();
    std::io::Read::read_to_end(&mut entry, &mut again).unwrap();
    assert_eq!(again, weights, "the same merge");
    assert_eq!(exports().await, 2);
    // Imported again, the exported model gives the perplexity the service reported.
    let reimported = dir.path().join("reimported");
    mixpool::engine::hf::import(&exported, &reimported, Default::default()).unwrap();
    let model =
        mixpool::engine::checkpoint::LoadedModel::load(&reimported, tch::Device::Cpu).unwrap();
    let docs = mixpool::engine::data::parse_documents(
        eval.as_bytes(),
        Some(mixpool::engine::data::Format::Jsonl),
    )
    .unwrap();
    let result = mixpool::engine::eval::evaluate(&model, &docs, &Default::default()).unwrap();
    let reported = score["perplexity"].as_f64().unwrap();
    assert!(
        ((result.total.perplexity - reported) / reported).abs() < 1e-6,
        "{} vs {reported}",
        result.total.perplexity
    );

    // A checkpoint already in the object store is imported from there.
    let folder = app._dirs.0.path().join("imports/mistral");
    std::fs::create_dir_all(&folder).unwrap();
    for entry in std::fs::read_dir(hf_fixture("mistral")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, folder.join(path.file_name().unwrap())).unwrap();
    }
    let (status, missing) = app
        .post(
            "/v1/bases/import?name=m&from_store=imports/nothing",
            Vec::new(),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    let (status, imported) = app
        .post(
            "/v1/bases/import?name=m&from_store=imports/mistral",
            Vec::new(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{imported}");
    assert_eq!(imported["import"]["architecture"], "MistralForCausalLM");
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
