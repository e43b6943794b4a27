//! Batches of scores over HTTP: every subset of partitions in one request, then served from
//! the cache.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::app::{corpus, spawn_app};

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
