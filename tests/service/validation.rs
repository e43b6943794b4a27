//! Validations over HTTP: union models trained for the summed budget, evaluated beside the
//! mixture's proxies, and the proxy-vs-truth report; models trained on partitions drawn in
//! given proportions, or for another budget, beside it but out of the report.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use mixpool::api::SweepLimits;

use crate::app::{App, corpus, spawn_app, spawn_app_with};

async fn setup() -> App {
    let app = spawn_app().await;
    for domain in ["code_python", "code_c", "legal_licenses"] {
        let (status, body) = app
            .post(
                &format!("/v1/partitions?name={domain}&domain={domain}"),
                corpus(domain, 0, 8),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let mixed: String = ["code_python", "code_c", "legal_licenses"]
        .iter()
        .map(|d| corpus(d, 100, 2))
        .collect();
    for (name, text) in [
        ("mixed", mixed),
        ("legal", corpus("legal_licenses", 150, 2)),
        ("extra", corpus("tech_docs", 0, 2)),
    ] {
        let (status, body) = app.post(&format!("/v1/eval-sets?name={name}"), text).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    for domain in ["code_python", "code_c", "legal_licenses"] {
        app.trained(domain).await;
    }
    app
}

/// Polls until every listed validation is evaluated on `sets` eval sets.
async fn evaluated(app: &App, count: usize, sets: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let (status, list) = app.get("/v1/validations").await;
        assert_eq!(status, StatusCode::OK, "{list}");
        let items = list["items"].as_array().unwrap().clone();
        if let Some(bad) = items.iter().find(|v| v["state"] == "failed") {
            panic!("a validation failed: {bad}");
        }
        let done = items
            .iter()
            .filter(|v| v["results"].as_array().unwrap().len() >= sets)
            .count();
        let jobs_active: i64 = sqlx::query_scalar(
            "select count(*) from jobs where kind = 'validate' and state in ('queued', 'running')",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if items.len() == count && done == count && jobs_active == 0 {
            return items;
        }
        assert!(started.elapsed() < Duration::from_secs(180), "{list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Spearman's ρ by the textbook formula for values without ties, 1 − 6 Σd² / (n (n² − 1)),
/// computed here apart from the service's own statistics.
fn spearman_of_distinct(x: &[f64], y: &[f64]) -> f64 {
    let rank = |v: &[f64], i: usize| {
        assert!(
            v.iter().enumerate().all(|(j, w)| j == i || *w != v[i]),
            "ties in {v:?}"
        );
        v.iter().filter(|w| **w < v[i]).count() as f64
    };
    let n = x.len() as f64;
    let d2: f64 = (0..x.len())
        .map(|i| (rank(x, i) - rank(y, i)).powi(2))
        .sum();
    1.0 - 6.0 * d2 / (n * (n * n - 1.0))
}

fn result_on(validation: &Value, eval: &str) -> f64 {
    validation["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["eval_set"] == eval)
        .and_then(|r| r["perplexity"].as_f64())
        .unwrap()
}

#[tokio::test]
async fn validations_train_the_union_for_the_summed_budget_and_report_against_the_proxies() {
    let app = setup().await;
    let mixtures = json!([
        ["code_python"],
        ["code_python", "code_c"],
        ["code_c", "legal_licenses"],
        ["legal_licenses", "code_python", "code_c"]
    ]);
    let request = json!({"mixtures": mixtures, "eval_sets": ["mixed", "legal"]});
    let (status, created) = app.post("/v1/validations", request.to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    assert_eq!(created["items"].as_array().unwrap().len(), 4);
    assert!(created["items"][3]["job"]["id"].is_string());
    let items = evaluated(&app, 4, 2).await;
    let by_size = |k: usize| {
        items
            .iter()
            .find(|v| v["mixture"].as_array().unwrap().len() == k)
            .unwrap()
    };

    // The union budget is the recipe's (8 × 64 tokens) per partition.
    for k in 1..=3 {
        let v = by_size(k);
        assert_eq!(v["tokens"], 512 * k as u64, "{v}");
        assert_eq!(v["train"]["tokens"], 512 * k as u64, "{v}");
        assert_eq!(v["state"], "ready");
    }
    // One partition's "union" is its unit model's training again: the same perplexity.
    for eval in ["mixed", "legal"] {
        let (status, unit) = app
            .get(&format!(
                "/v1/score?partitions=code_python&eval={eval}&wait=0"
            ))
            .await;
        assert_eq!(
            (status, &unit["cached"]),
            (StatusCode::OK, &json!(true)),
            "{unit}"
        );
        assert_eq!(
            unit["perplexity"].as_f64().unwrap(),
            result_on(by_size(1), eval)
        );
    }

    let (status, report) = app.get("/v1/validations/report").await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let sets = report["sets"].as_array().unwrap();
    assert_eq!(sets.len(), 2, "{report}");
    let proxies: Vec<&str> = report["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        proxies,
        [
            "merged_uniform",
            "merged_tokens",
            "mean_of_units",
            "ensemble",
            "fisher",
            "task_vectors"
        ]
    );
    for set in sets {
        let eval = set["eval_set"].as_str().unwrap();
        assert_eq!(set["n"], 4);
        assert!(set["note"].is_null());
        assert!(
            set["best_proxy"].is_null(),
            "4 mixtures are too few to name one"
        );
        let points = set["points"].as_array().unwrap();
        let scale = set["proxies"]["task_vectors"]["scale"].as_f64().unwrap();
        assert!([0.5, 1.0, 1.5, 2.0, 3.0].contains(&scale), "{scale}");
        for proxy in &proxies {
            let proxy = *proxy;
            let agreement = &set["proxies"][proxy];
            assert_eq!(agreement["n"], 4, "{proxy}: {agreement}");
            let (x, y): (Vec<f64>, Vec<f64>) = points
                .iter()
                .map(|p| {
                    (
                        p[proxy].as_f64().unwrap().ln(),
                        p["true"].as_f64().unwrap().ln(),
                    )
                })
                .unzip();
            let r = mixpool::stats::pearson(&x, &y).unwrap();
            assert!((agreement["pearson_log_ppl"].as_f64().unwrap() - r).abs() < 1e-12);
            let rho = spearman_of_distinct(&x, &y);
            assert!(
                (agreement["spearman"].as_f64().unwrap() - rho).abs() < 1e-12,
                "{proxy}: {agreement}, ρ from the points {rho}"
            );
        }
        // The mixtures without the eval set's own domain (its documents' domains), ranked
        // apart: on `legal` the two without legal_licenses, on `mixed` none.
        let excluding: Vec<&Value> = points
            .iter()
            .filter(|p| p["excludes_own_domain"] == true)
            .collect();
        let own = if eval == "legal" {
            vec!["legal_licenses"]
        } else {
            vec!["code_python", "code_c", "legal_licenses"]
        };
        for p in points {
            let has_own = p["mixture"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| own.contains(&m.as_str().unwrap()));
            assert_eq!(p["excludes_own_domain"], json!(!has_own), "{p}");
        }
        assert_eq!(excluding.len(), if eval == "legal" { 2 } else { 0 });
        for proxy in &proxies {
            let proxy = *proxy;
            let agreement = &set["proxies"][proxy];
            assert_eq!(agreement["n_excluding"], excluding.len(), "{agreement}");
            assert!(agreement["rho_excluding"].is_null(), "under 3 mixtures");
            // Every pair ordered as training orders it, or the share that is.
            let accuracy = agreement["decision_accuracy"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&accuracy), "{agreement}");
            let (lo, hi) = (
                agreement["spearman_90"][0].as_f64().unwrap(),
                agreement["spearman_90"][1].as_f64().unwrap(),
            );
            let rho = agreement["spearman"].as_f64().unwrap();
            assert!(lo <= rho && rho <= hi, "{agreement}");
            // Regret: the truth of the proxy's pick against the best truth.
            let pick = points
                .iter()
                .min_by(|a, b| {
                    a[proxy]
                        .as_f64()
                        .unwrap()
                        .total_cmp(&b[proxy].as_f64().unwrap())
                })
                .unwrap();
            let best = points
                .iter()
                .map(|p| p["true"].as_f64().unwrap())
                .fold(f64::INFINITY, f64::min);
            let regret = (pick["true"].as_f64().unwrap() / best - 1.0) * 100.0;
            assert!(
                (agreement["regret"].as_f64().unwrap() - regret).abs() < 1e-9,
                "{agreement}"
            );
        }
        // The merged proxy is the ordinary score of the mixture, cached for GET /v1/score.
        let pair = points
            .iter()
            .find(|p| {
                p["mixture"] == json!(["code_python", "code_c"])
                    || p["mixture"] == json!(["code_c", "code_python"])
            })
            .unwrap();
        let (status, score) = app
            .get(&format!(
                "/v1/score?partitions=code_c,code_python&eval={eval}&wait=0"
            ))
            .await;
        assert_eq!(
            (status, &score["cached"]),
            (StatusCode::OK, &json!(true)),
            "{score}"
        );
        assert_eq!(score["perplexity"], pair["merged_uniform"]);
        let (status, score) = app
            .get(&format!(
                "/v1/score?partitions=code_c,code_python&eval={eval}&wait=0&proxy=ensemble"
            ))
            .await;
        assert_eq!(
            (status, &score["cached"]),
            (StatusCode::OK, &json!(true)),
            "{score}"
        );
        assert_eq!(score["perplexity"], pair["ensemble"]);
        let (_, a) = app
            .get(&format!(
                "/v1/score?partitions=code_python&eval={eval}&wait=0"
            ))
            .await;
        let (_, b) = app
            .get(&format!("/v1/score?partitions=code_c&eval={eval}&wait=0"))
            .await;
        let mean = (a["perplexity"].as_f64().unwrap() + b["perplexity"].as_f64().unwrap()) / 2.0;
        assert!((pair["mean_of_units"].as_f64().unwrap() - mean).abs() < 1e-12);
        let single = points
            .iter()
            .find(|p| p["mixture"].as_array().unwrap().len() == 1)
            .unwrap();
        for proxy in &proxies {
            assert_eq!(
                single["true"], single[*proxy],
                "one partition: truth = {proxy}"
            );
        }
    }

    // Asked again: nothing new to do.
    let jobs = app.jobs().await;
    let (status, again) = app.post("/v1/validations", request.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(app.jobs().await, jobs);

    // Two validations on a third eval set: too few for correlations, and the report says so.
    let request = json!({"mixtures": [["code_python", "code_c"], ["code_c", "legal_licenses"]], "eval_sets": ["extra"]});
    let (status, _) = app.post("/v1/validations", request.to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let started = Instant::now();
    let extra = loop {
        let (_, report) = app.get("/v1/validations/report?eval=extra").await;
        if report["sets"][0]["n"] == 2 {
            break report;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{report}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let set = &extra["sets"][0];
    assert!(
        set["note"].as_str().unwrap().contains("at least 3"),
        "{set}"
    );
    assert!(set["proxies"]["merged_uniform"]["pearson_log_ppl"].is_null());
    let (status, missing) = app.get("/v1/validations/report?eval=nope").await;
    assert_eq!(
        (status, missing["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    // The same four mixtures trained again with another seed, evaluated on `legal`: the
    // ceiling is ρ between the two seeds' perplexities, and the truth their mean.
    let before = app.get("/v1/validations/report?eval=legal").await.1;
    let request = json!({"mixtures": mixtures, "eval_sets": ["legal"], "seed": 7});
    let (status, created) = app.post("/v1/validations", request.to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    assert!(
        created["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["seed"] == 7)
    );
    let (status, refused) = app
        .post(
            "/v1/validations",
            json!({"mixtures": mixtures, "eval_sets": ["legal"], "seed": u64::MAX}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    evaluated(&app, 8, 1).await;
    let (_, report) = app.get("/v1/validations/report?eval=legal").await;
    let set = &report["sets"][0];
    assert_eq!(
        set["n"], 4,
        "one point per mixture, whatever its seeds: {set}"
    );
    let points = set["points"].as_array().unwrap();
    let (first, second): (Vec<f64>, Vec<f64>) = points
        .iter()
        .map(|p| {
            let truths = p["truths"].as_array().unwrap();
            assert_eq!(p["seeds"].as_array().unwrap().len(), 2, "{p}");
            assert!(p["seeds"].as_array().unwrap().contains(&json!(7)), "{p}");
            let (a, b) = (truths[0].as_f64().unwrap(), truths[1].as_f64().unwrap());
            assert_eq!(p["true"].as_f64().unwrap(), (a + b) / 2.0, "{p}");
            // The other seed's model is another model.
            assert_ne!(a, b, "{p}");
            (a, b)
        })
        .unzip();
    // The earlier seed's perplexities are what the report showed before.
    let earlier: Vec<f64> = before["sets"][0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["true"].as_f64().unwrap())
        .collect();
    let mut sorted_first = first.clone();
    let mut sorted_earlier = earlier.clone();
    sorted_first.sort_by(f64::total_cmp);
    sorted_earlier.sort_by(f64::total_cmp);
    assert_eq!(sorted_first, sorted_earlier);
    let ceiling = &set["ceiling"];
    assert_eq!(ceiling["n"], 4, "{ceiling}");
    let rho = spearman_of_distinct(&first, &second);
    assert!(
        (ceiling["spearman"].as_f64().unwrap() - rho).abs() < 1e-12,
        "{ceiling}, ρ from the points {rho}"
    );
    // The proxies are now compared with the mean over seeds.
    let truths: Vec<f64> = points.iter().map(|p| p["true"].as_f64().unwrap()).collect();
    let merged: Vec<f64> = points
        .iter()
        .map(|p| p["merged_uniform"].as_f64().unwrap())
        .collect();
    let rho = spearman_of_distinct(&merged, &truths);
    assert!(
        (set["proxies"]["merged_uniform"]["spearman"]
            .as_f64()
            .unwrap()
            - rho)
            .abs()
            < 1e-12,
        "{set}"
    );
}

#[tokio::test]
async fn weighted_and_rebudgeted_validations_train_apart_from_the_unions_and_stay_out_of_the_report()
 {
    let app = setup().await;
    let request = json!({
        "mixtures": [["code_python", "code_c"], {"code_python": 3, "code_c": 1}, ["code_c", "legal_licenses"], ["code_python"]],
        "eval_sets": ["mixed"],
    });
    let (status, created) = app.post("/v1/validations", request.to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let items = evaluated(&app, 4, 1).await;
    let weighted = items.iter().find(|v| v["sampling"] == "weights").unwrap();
    assert_eq!(
        weighted["weights"],
        json!({"code_python": 0.75, "code_c": 0.25}),
        "{weighted}"
    );
    // The summed budget of its two partitions, like the union's.
    assert_eq!(
        (
            weighted["tokens"].as_u64(),
            weighted["train"]["tokens"].as_u64()
        ),
        (Some(1024), Some(1024))
    );
    let union = items
        .iter()
        .find(|v| {
            v["sampling"] == "union"
                && v["mixture"].as_array().unwrap().len() == 2
                && v["mixture"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("code_python"))
        })
        .unwrap();
    assert!(union["weights"].is_null());
    assert_ne!(
        result_on(weighted, "mixed"),
        result_on(union, "mixed"),
        "other proportions, another model"
    );
    // Its proxy is the merge with its weights, stored as the ordinary explicit-weight score.
    let (status, score) = app
        .get("/v1/score?partitions=code_python,code_c&weights=3,1&eval=mixed&wait=0&train=false")
        .await;
    assert_eq!(
        (status, &score["cached"]),
        (StatusCode::OK, &json!(true)),
        "{score}"
    );

    // Another budget for a union already validated: a validation of its own.
    let request =
        json!({"mixture": ["code_python", "code_c"], "eval_sets": ["mixed"], "tokens": 512});
    let (status, created) = app.post("/v1/validations", request.to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    assert_ne!(created["items"][0]["id"], union["id"]);
    let items = evaluated(&app, 5, 1).await;
    let short = items
        .iter()
        .find(|v| v["tokens"] == 512 && v["mixture"].as_array().unwrap().len() == 2)
        .unwrap();
    assert_eq!(short["train"]["tokens"], 512);

    // The report correlates the proxies with the unions at their summed budgets only.
    let (_, report) = app.get("/v1/validations/report?eval=mixed").await;
    let points = report["sets"][0]["points"].as_array().unwrap();
    let mut ids: Vec<&str> = points
        .iter()
        .map(|p| p["validation"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut unions: Vec<&str> = items
        .iter()
        .filter(|v| {
            v["sampling"] == "union"
                && v["tokens"].as_u64() == Some(512 * v["mixture"].as_array().unwrap().len() as u64)
        })
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    unions.sort();
    assert_eq!((ids.len(), ids), (3, unions));
}

#[tokio::test]
async fn bad_validations_are_refused_by_name_and_queue_nothing() {
    // No worker: the unit models stay queued.
    let app = spawn_app_with(SweepLimits::default()).await;
    for domain in ["code_c", "legal_licenses"] {
        app.post(
            &format!("/v1/partitions?name={domain}"),
            corpus(domain, 0, 4),
        )
        .await;
    }
    app.post("/v1/eval-sets?name=e", corpus("legal_licenses", 150, 1))
        .await;
    let cases = [
        (
            json!({"mixture": ["code_c"], "mixtures": [["legal_licenses"]], "eval_sets": ["e"]}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "one mixture",
        ),
        (
            json!({"eval_sets": ["e"]}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "one mixture",
        ),
        (
            json!({"mixture": ["code_c"], "eval_sets": []}),
            StatusCode::BAD_REQUEST,
            "invalid_eval_sets",
            "at least one",
        ),
        (
            json!({"mixture": ["nope"], "eval_sets": ["e"]}),
            StatusCode::NOT_FOUND,
            "not_found",
            "\"nope\"",
        ),
        (
            json!({"mixture": ["code_c"], "eval_sets": ["nope"]}),
            StatusCode::NOT_FOUND,
            "not_found",
            "\"nope\"",
        ),
        (
            json!({"mixture": ["code_c", "code_c"], "eval_sets": ["e"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mixture",
            "more than once",
        ),
        (
            json!({"mixture": ["code_c"], "eval_sets": ["e"], "weights": [1]}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "weights",
        ),
        (
            json!({"mixture": {"code_c": -1, "legal_licenses": 2}, "eval_sets": ["e"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mixture",
            "non-negative",
        ),
        (
            json!({"mixture": {"code_c": 0, "legal_licenses": 0}, "eval_sets": ["e"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mixture",
            "sum to zero",
        ),
        (
            json!({"mixture": ["code_c"], "eval_sets": ["e"], "tokens": 100}),
            StatusCode::BAD_REQUEST,
            "invalid_tokens",
            "seq_len",
        ),
    ];
    for (body, status, code, says) in cases {
        let (got, answer) = app.post("/v1/validations", body.to_string()).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    let (status, answer) = app
        .post(
            "/v1/validations",
            json!({"mixture": ["code_c", "legal_licenses"], "eval_sets": ["e"], "train": false})
                .to_string(),
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("models_not_ready")),
        "{answer}"
    );
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("code_c, legal_licenses")
    );
    let validations: i64 = sqlx::query_scalar("select count(*) from validations")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(validations, 0);
}

/// The ids a registry gives its partitions are random: a union's training data must not
/// follow them, or the same mixture trains another model in every registry (and a second
/// seed could not be told from a second registry). Two registries, the same partitions: the
/// same validated perplexities, bit for bit.
#[tokio::test]
async fn a_union_trains_the_same_model_whatever_ids_its_partitions_got() {
    let (first, second) = tokio::join!(setup(), setup());
    let request = json!({
        "mixtures": [["code_python", "code_c", "legal_licenses"], ["legal_licenses", "code_c"]],
        "eval_sets": ["legal"],
    });
    let mut results = Vec::new();
    for app in [&first, &second] {
        let (status, created) = app.post("/v1/validations", request.to_string()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{created}");
        let mut by_mixture: Vec<(Vec<String>, f64)> = evaluated(app, 2, 1)
            .await
            .iter()
            .map(|v| {
                let mut names: Vec<String> = v["mixture"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_str().unwrap().to_string())
                    .collect();
                names.sort();
                (names, result_on(v, "legal"))
            })
            .collect();
        by_mixture.sort_by(|a, b| a.0.cmp(&b.0));
        results.push(by_mixture);
    }
    assert_eq!(results[0], results[1]);
}

/// `best` and `task_vectors` are chosen per eval set from its validations: refused with a 409
/// saying how many there are until enough are validated, then the proxy the report names
/// scores, ranks and sweeps.
#[tokio::test]
async fn best_and_task_vectors_follow_the_report_once_enough_mixtures_are_validated() {
    let app = setup().await;
    let (status, body) = app
        .post(
            "/v1/partitions?name=tech_docs&domain=tech_docs",
            corpus("tech_docs", 10, 8),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    app.trained("tech_docs").await;
    let sweep = |proxy: &str, sets: &[&str]| {
        json!({"partitions": ["code_c", "tech_docs"], "sizes": [1, 2],
               "eval_sets": sets, "proxy": proxy})
        .to_string()
    };
    let score = |proxy: &str| {
        format!("/v1/score?partitions=code_c,tech_docs&eval=mixed&proxy={proxy}&wait=60")
    };
    for proxy in ["best", "task_vectors"] {
        for (status, body) in [
            app.get(&score(proxy)).await,
            app.get(&format!("/v1/leaderboard?eval=mixed&proxy={proxy}"))
                .await,
            app.post("/v1/sweeps", sweep(proxy, &["mixed"])).await,
        ] {
            assert_eq!(status, StatusCode::CONFLICT, "{body}");
            assert_eq!(body["error"]["code"], "proxy_not_chosen", "{body}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains("has 0 validated"), "{message}");
        }
    }

    // Eight mixtures of the four partitions: every pair and two triples.
    let mixtures = json!([
        ["code_python", "code_c"],
        ["code_python", "legal_licenses"],
        ["code_python", "tech_docs"],
        ["code_c", "legal_licenses"],
        ["code_c", "tech_docs"],
        ["legal_licenses", "tech_docs"],
        ["code_python", "code_c", "legal_licenses"],
        ["code_c", "legal_licenses", "tech_docs"]
    ]);
    let request = json!({"mixtures": mixtures, "eval_sets": ["mixed"]});
    let (status, created) = app.post("/v1/validations", request.to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    evaluated(&app, 8, 1).await;
    let (status, report) = app.get("/v1/validations/report?eval=mixed").await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let set = &report["sets"][0];
    assert_eq!(set["n"], 8);
    let best = set["best_proxy"].as_str().expect("named at 8 mixtures");
    // The highest ρ, the first of equals in report order.
    let top = report["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .filter_map(|p| Some((p, set["proxies"][p]["spearman"].as_f64()?)))
        .fold(None, |b: Option<(&str, f64)>, (p, r)| match b {
            Some((_, br)) if br >= r => b,
            _ => Some((p, r)),
        })
        .unwrap();
    assert_eq!(best, top.0, "{set}");
    let scale = set["proxies"]["task_vectors"]["scale"].as_f64().unwrap();
    let task_vectors = if scale == 1.0 {
        "average".to_string()
    } else {
        format!("task_vectors@{scale}")
    };
    let scored_by = match best {
        "merged_uniform" | "merged_tokens" => "average".to_string(),
        "mean_of_units" => "units".to_string(),
        "task_vectors" => task_vectors.clone(),
        other => other.to_string(),
    };
    for (proxy, want) in [("best", &scored_by), ("task_vectors", &task_vectors)] {
        let (status, scored) = app.get(&score(proxy)).await;
        assert_eq!(status, StatusCode::OK, "{scored}");
        assert_eq!(&scored["proxy"], want, "{proxy}: {scored}");
        let (status, named) = app.get(&score(want)).await;
        assert_eq!(status, StatusCode::OK, "{named}");
        assert_eq!(named["perplexity"], scored["perplexity"]);
        let (status, board) = app
            .get(&format!("/v1/leaderboard?eval=mixed&proxy={proxy}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{board}");
        assert_eq!(&board["proxy"], want, "{board}");
        let why = board["proxy_chosen"].as_str().unwrap();
        assert!(why.contains("8 validated mixtures"), "{why}");
        let (status, created) = app.post("/v1/sweeps", sweep(proxy, &["mixed"])).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        assert_eq!(&created["proxy"], want, "{created}");
    }
    // One proxy per sweep: an eval set without validations cannot choose one.
    let (status, body) = app
        .post("/v1/sweeps", sweep("best", &["mixed", "legal"]))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"legal\"")
    );
}
