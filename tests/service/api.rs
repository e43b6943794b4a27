//! The REST API over a real server on a random port, with an in-process worker.

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
