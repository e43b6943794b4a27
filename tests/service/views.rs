//! The read views the dashboard draws from, over HTTP: the overview, partitions filtered with
//! their unit models, a unit model with its loss series, the leaderboard and the heatmap.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::app::{App, corpus, spawn_app_with};

/// Three partitions (two domains) with trained unit models and an eval set; a worker loop
/// that reports itself runs the jobs.
async fn pool() -> (App, tokio::sync::watch::Sender<bool>) {
    let app = spawn_app_with(Default::default()).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(app.worker("views-worker").run(stopped));
    for (name, domain) in [
        ("legal-a", "legal_licenses"),
        ("legal-b", "legal_licenses"),
        ("docs", "tech_docs"),
    ] {
        let skip = if name == "legal-b" { 30 } else { 0 };
        let source = if domain == "tech_docs" {
            "tech_docs"
        } else {
            "legal_licenses"
        };
        let (status, body) = app
            .post(
                &format!("/v1/partitions?name={name}&domain={domain}"),
                corpus(source, skip, 30),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) = app
        .post(
            "/v1/eval-sets?name=held-out",
            corpus("tech_docs", 60, 5) + &corpus("legal_licenses", 60, 5),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for name in ["legal-a", "legal-b", "docs"] {
        app.trained(name).await;
    }
    (app, stop)
}

#[tokio::test]
async fn the_views_show_the_pool_its_workers_losses_rankings_and_pairs() {
    let (app, stop) = pool().await;

    // Overview: counts, the live worker with its device and kinds, domains, defaults.
    let (status, o) = app.get("/v1/overview").await;
    assert_eq!(status, StatusCode::OK, "{o}");
    assert_eq!(o["counts"]["partitions"], 3);
    assert_eq!(o["counts"]["unit_models"], json!({"ready": 3}));
    assert_eq!(o["counts"]["eval_sets"], 1);
    assert_eq!(
        o["domains"],
        json!([{"domain": "legal_licenses", "partitions": 2}, {"domain": "tech_docs", "partitions": 1}])
    );
    assert_eq!(
        (
            o["default_base"]["name"].as_str(),
            o["default_recipe"]["name"].as_str()
        ),
        (Some("base"), Some("unit"))
    );
    let worker = o["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "views-worker");
    let worker = worker.unwrap_or_else(|| panic!("the worker is listed: {o}"));
    assert_eq!(worker["device"], "cpu");
    assert_eq!(
        worker["kinds"].as_array().unwrap().len(),
        mixpool::jobs::KINDS.len()
    );
    assert_eq!(o["queue"], json!({}), "nothing queued");

    // Partitions: by a part of the name (any case), by domain, with the unit model's state
    // and the partition's size in tokens (bytes of text plus one EOS per document).
    let (_, found) = app.get("/v1/partitions?q=LEGAL").await;
    let names: Vec<&str> = found["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["legal-b", "legal-a"], "newest first");
    let (_, tech_docs) = app.get("/v1/partitions?domain=tech_docs").await;
    let docs_partition = &tech_docs["items"][0];
    assert_eq!(
        (
            tech_docs["items"].as_array().unwrap().len(),
            docs_partition["name"].as_str()
        ),
        (1, Some("docs"))
    );
    assert_eq!(docs_partition["unit_model"]["state"], "ready");
    let text = corpus("tech_docs", 0, 30);
    let expected: usize = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .len()
                + 1
        })
        .sum();
    assert_eq!(docs_partition["unit_model"]["data_tokens"], json!(expected));
    let (_, paged) = app.get("/v1/partitions?limit=2").await;
    let (_, rest) = app
        .get(&format!(
            "/v1/partitions?limit=2&cursor={}",
            paged["next"].as_str().unwrap()
        ))
        .await;
    assert_eq!(rest["items"][0]["name"], "legal-a");
    let (status, e) = app.get("/v1/partitions?base=nope").await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    // A unit model with its loss series: one point per recorded step (a short training
    // records every step), ending at the loss its job reported last.
    let id = docs_partition["unit_model"]["id"].as_str().unwrap();
    let (status, m) = app.get(&format!("/v1/models/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{m}");
    let loss: Vec<(i64, f64)> = serde_json::from_value(m["loss"].clone()).unwrap();
    let steps = m["job"]["result"]["train"]["steps"].as_i64().unwrap();
    assert_eq!(
        loss.iter().map(|p| p.0).collect::<Vec<_>>(),
        (1..=steps).collect::<Vec<_>>()
    );
    assert_eq!(Some(loss.last().unwrap().1), m["job"]["loss"].as_f64());
    assert_eq!(
        (
            m["partition"]["name"].as_str(),
            m["base"]["name"].as_str(),
            m["recipe"]["name"].as_str()
        ),
        (Some("docs"), Some("base"), Some("unit"))
    );
    for (path, status, code) in [
        (
            "/v1/models/not-an-id",
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "/v1/models/00000000-0000-0000-0000-000000000000",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ] {
        let (got, e) = app.get(path).await;
        assert_eq!(
            (got, e["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}"
        );
    }

    // The leaderboard: every subset scored, then ranked both ways, by size, paged.
    let (status, batch) = app
        .post(
            "/v1/scores",
            json!({"mixtures": [["legal-a"], ["legal-b"], ["docs"], ["legal-a", "legal-b"],
                ["legal-a", "docs"], ["legal-b", "docs"], ["legal-a", "legal-b", "docs"]],
                "eval_sets": ["held-out"], "wait": 120})
            .to_string(),
        )
        .await;
    assert_eq!(
        (status, batch["done"].as_i64()),
        (StatusCode::OK, Some(7)),
        "{batch}"
    );
    let ppl = |v: &Value| -> Vec<f64> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["perplexity"].as_f64().unwrap())
            .collect()
    };
    let (_, best) = app.get("/v1/leaderboard?eval=held-out").await;
    assert_eq!(best["total"], 7);
    let ascending = ppl(&best);
    assert!(ascending.is_sorted() && ascending.len() == 7, "{best}");
    let (_, worst) = app.get("/v1/leaderboard?eval=held-out&order=desc").await;
    assert_eq!(
        ppl(&worst),
        ascending.iter().rev().copied().collect::<Vec<_>>()
    );
    let (_, pairs) = app
        .get("/v1/leaderboard?eval=held-out&size=2&sort=bits_per_byte")
        .await;
    assert_eq!(pairs["total"], 3);
    assert!(
        pairs["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["size"] == 2 && r["weighting"] == "uniform")
    );
    let (_, page) = app
        .get("/v1/leaderboard?eval=held-out&limit=3&offset=3")
        .await;
    assert_eq!(ppl(&page), ascending[3..6].to_vec());
    let (_, by_size) = app
        .get("/v1/leaderboard?eval=held-out&sort=size&order=desc&limit=1")
        .await;
    assert_eq!(by_size["items"][0]["mixture"].as_array().unwrap().len(), 3);
    for (path, status, code) in [
        (
            "/v1/leaderboard?eval=held-out&sort=luck",
            StatusCode::BAD_REQUEST,
            "invalid_sort",
        ),
        (
            "/v1/leaderboard?eval=held-out&order=up",
            StatusCode::BAD_REQUEST,
            "invalid_order",
        ),
        (
            "/v1/leaderboard?eval=held-out&limit=0",
            StatusCode::BAD_REQUEST,
            "invalid_limit",
        ),
        (
            "/v1/leaderboard?eval=held-out&offset=-1",
            StatusCode::BAD_REQUEST,
            "invalid_offset",
        ),
        (
            "/v1/leaderboard?eval=held-out&size=0",
            StatusCode::BAD_REQUEST,
            "invalid_size",
        ),
        (
            "/v1/leaderboard?eval=nope",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        ("/v1/leaderboard", StatusCode::BAD_REQUEST, "invalid_query"),
    ] {
        let (got, e) = app.get(path).await;
        assert_eq!(
            (got, e["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {e}"
        );
    }

    // The heatmap: a cell per pair (and per partition alone) with the score's value, for the
    // partitions with a unit model (one without shows only when named).
    let (status, body) = app
        .post(
            "/v1/partitions?name=aaa-untrained&train=false",
            corpus("code_c", 0, 3),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, map) = app.get("/v1/heatmap?eval=held-out").await;
    assert_eq!(status, StatusCode::OK, "{map}");
    assert_eq!(
        map["partitions"],
        json!(["docs", "legal-a", "legal-b"]),
        "by name"
    );
    let cells: Vec<(usize, usize, f64)> = serde_json::from_value(map["cells"].clone()).unwrap();
    assert_eq!((cells.len(), map["missing"].as_i64()), (6, Some(0)));
    let names = ["docs", "legal-a", "legal-b"];
    for (row, column, value) in &cells {
        assert!(column <= row);
        let mixture = if row == column {
            names[*row].to_string()
        } else {
            format!("{},{}", names[*row], names[*column])
        };
        let (_, score) = app
            .get(&format!("/v1/score?partitions={mixture}&eval=held-out"))
            .await;
        assert_eq!(score["perplexity"].as_f64(), Some(*value), "{mixture}");
    }
    let (_, legal_licenses) = app
        .get("/v1/heatmap?eval=held-out&domain=legal_licenses")
        .await;
    assert_eq!(
        (
            legal_licenses["partitions"].as_array().unwrap().len(),
            legal_licenses["cells"].as_array().unwrap().len()
        ),
        (2, 3)
    );
    let (_, named) = app
        .get("/v1/heatmap?eval=held-out&partitions=aaa-untrained,docs")
        .await;
    assert_eq!(
        (
            named["cells"].as_array().unwrap().len(),
            named["missing"].as_i64()
        ),
        (1, Some(2))
    );
    let (_, none) = app.get("/v1/heatmap?eval=held-out&domain=none").await;
    assert_eq!(
        (none["partitions"].clone(), none["cells"].clone()),
        (json!([]), json!([])),
        "no partition of that domain is trained"
    );
    let (_, listed) = app
        .get("/v1/heatmap?eval=held-out&partitions=legal-b,docs")
        .await;
    assert_eq!(
        listed["partitions"],
        json!(["legal-b", "docs"]),
        "in the order asked"
    );
    for (path, status, code) in [
        (
            "/v1/heatmap?eval=held-out&limit=101",
            StatusCode::BAD_REQUEST,
            "invalid_limit",
        ),
        (
            "/v1/heatmap?eval=held-out&partitions=docs,docs",
            StatusCode::BAD_REQUEST,
            "invalid_partitions",
        ),
        (
            "/v1/heatmap?eval=held-out&partitions=nope",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/v1/heatmap?eval=held-out&partitions=,",
            StatusCode::BAD_REQUEST,
            "invalid_partitions",
        ),
    ] {
        let (got, e) = app.get(path).await;
        assert_eq!(
            (got, e["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {e}"
        );
    }

    // Jobs by kind.
    let (_, trains) = app.get("/v1/jobs?kind=train").await;
    let kinds: Vec<&str> = trains["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["train"; 3]);
    let (_, scores) = app.get("/v1/jobs?kind=score&state=succeeded").await;
    assert!(
        !scores["items"].as_array().unwrap().is_empty()
            && scores["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|j| j["kind"] == "score")
    );
    let (status, e) = app.get("/v1/jobs?kind=nap").await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_kind"))
    );

    // The dashboard's shell and assets come from the binary; the chart library is pinned.
    let (status, html) = app.text("/leaderboard").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains(mixpool::web::ECHARTS) && !html.contains("http"),
        "no outside URL: {html}"
    );
    let response = app
        .client
        .get(app.url(mixpool::web::ECHARTS))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/javascript");
    assert!(response.text().await.unwrap().contains("echarts"));
    let _ = stop.send(true);
    tokio::time::sleep(Duration::from_millis(10)).await;
}
