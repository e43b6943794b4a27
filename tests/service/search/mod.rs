//! Ratio searches over HTTP: points within the bounds that sum to 1, each an ordinary score
//! that `GET /v1/score` answers with the same weights, the same request searching the same
//! points again from the cache, and every bad setting refused before anything is queued.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::app::{App, corpus, spawn_app};

mod killed;

const PARTITIONS: [&str; 3] = ["legal_licenses", "tech_docs", "code_python"];

async fn pool() -> App {
    let app = spawn_app().await;
    for name in PARTITIONS {
        let (status, body) = app
            .post(
                &format!("/v1/partitions?name={name}&domain={name}"),
                corpus(name, 0, 25),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    for (set, domain) in [("legal", "legal_licenses"), ("code", "code_python")] {
        let (status, body) = app
            .post(&format!("/v1/eval-sets?name={set}"), corpus(domain, 40, 5))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    for name in PARTITIONS {
        app.trained(name).await;
    }
    app
}

async fn finished(app: &App, id: &str) -> Value {
    for _ in 0..2400 {
        let (status, search) = app.get(&format!("/v1/searches/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{search}");
        match search["state"].as_str() {
            Some("succeeded") => return search,
            Some("failed" | "cancelled") => panic!("the search ended: {search}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("the search did not finish in two minutes");
}

fn weights(point: &Value) -> Vec<f64> {
    PARTITIONS
        .iter()
        .map(|p| point["weights"][p].as_f64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_search_scores_points_within_its_bounds_that_the_score_endpoint_answers_alike() {
    let app = pool().await;
    let request = json!({
        "partitions": PARTITIONS, "eval_sets": ["legal", "code"], "objective": {"legal": 3, "code": 1},
        "budget": 8, "bounds": {"legal_licenses": [0.1, 0.6], "code_python": [0.0, 0.5]}, "seed": 4,
    });
    let (status, created) = app.post("/v1/searches", request.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["objective"], json!({"legal": 0.75, "code": 0.25}));
    let search = finished(&app, created["id"].as_str().unwrap()).await;

    let points = search["points"].as_array().unwrap();
    assert_eq!(
        points.len(),
        11,
        "the budget, the proposal, the natural and uniform mixtures: {search}"
    );
    assert_eq!(search["progress"]["evaluated"], 11);
    assert_eq!(search["progress"]["total"], 11);
    let roles: Vec<&str> = points.iter().map(|p| p["role"].as_str().unwrap()).collect();
    assert_eq!(roles[8..], ["proposal", "natural", "uniform"]);
    let rounds: Vec<i64> = points
        .iter()
        .map(|p| p["round"].as_i64().unwrap())
        .collect();
    assert_eq!(
        rounds,
        [0, 0, 1, 1, 2, 2, 3, 3, 4, 5, 5],
        "rounds of a quarter of the budget, then the references"
    );
    // The natural mixture: each partition in proportion to the tokens its unit model's
    // training counted; the uniform one, a third each.
    let (_, listed) = app.get("/v1/partitions?limit=10").await;
    let tokens: Vec<f64> = PARTITIONS
        .iter()
        .map(|name| {
            let row = listed["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == *name)
                .unwrap();
            row["unit_model"]["data_tokens"].as_f64().unwrap()
        })
        .collect();
    let total: f64 = tokens.iter().sum();
    let natural = weights(&points[9]);
    for (w, t) in natural.iter().zip(&tokens) {
        assert!((w - t / total).abs() < 1e-12, "{natural:?} from {tokens:?}");
    }
    assert_ne!(natural, vec![1.0 / 3.0; 3], "the partitions differ in size");
    assert_eq!(weights(&points[10]), vec![1.0 / 3.0; 3]);
    assert_eq!(search["natural"], points[9]["weights"]);
    let references: Vec<&Value> = search["references"].as_array().unwrap().iter().collect();
    assert_eq!(references, [&points[9], &points[10]]);
    let mut best = f64::INFINITY;
    for point in points {
        let w = weights(point);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{point}");
        let within = (0.1 - 1e-9..=0.6 + 1e-9).contains(&w[0])
            && (0.0..=0.5 + 1e-9).contains(&w[2])
            && w[1] >= 0.0;
        // The search's own points lie within the bounds; a reference mixture need not (the
        // natural one here holds more code_python than 0.5), and says so.
        assert_eq!(within, point.get("within_bounds").is_none(), "{point}");
        assert!(within || point["role"] == "natural", "{point}");
        // Each point is an ordinary score: GET /v1/score with the same weights answers it
        // from the cache, with the same perplexity, and the objective is their weighted log.
        let list: Vec<String> = w.iter().map(f64::to_string).collect();
        let mut objective = 0.0;
        for (set, share) in [("legal", 0.75), ("code", 0.25)] {
            let (status, score) = app
                .get(&format!(
                    "/v1/score?partitions={}&weights={}&eval={set}&train=false",
                    PARTITIONS.join(","),
                    list.join(",")
                ))
                .await;
            assert_eq!(status, StatusCode::OK, "{score}");
            assert_eq!(score["cached"], true);
            assert_eq!(score["perplexity"], point["perplexity"][set], "{point}");
            objective += share * score["perplexity"].as_f64().unwrap().ln();
        }
        let reported = point["objective"].as_f64().unwrap();
        assert!(
            (reported - objective).abs() < 1e-12,
            "{reported} {objective}"
        );
        if within {
            best = best.min(reported);
        }
    }
    assert_eq!(search["best"]["objective"].as_f64(), Some(best));
    // Done, its answer is the best point it evaluated (the proposal among them), by its proxy.
    assert_eq!(
        search["answer"]["objective"].as_f64(),
        Some(best),
        "{search}"
    );
    assert_eq!(search["answer"]["proxy"], "average");
    let fit = &search["fit"];
    assert!(fit["trusted"].is_boolean(), "{fit}");
    assert!(
        fit["trust_radius"]
            .as_f64()
            .is_some_and(|r| r > 0.0 && r <= 1.0),
        "{fit}"
    );
    // The search starts at the natural mixture (projected into the bounds).
    let prior = &points[0];
    assert_eq!(prior["role"], "sample");
    assert_eq!(search["prior"], search["natural"]);
    assert!(
        search["fit"]["n"] == 8 && search["fit"]["lambda"].is_number(),
        "{search}"
    );
    assert!(search["proposal"]["predicted"].is_number(), "{search}");

    // The same request again: the same points, all from the cache.
    let (status, again) = app.post("/v1/searches", request.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    let again = finished(&app, again["id"].as_str().unwrap()).await;
    let repeat: Vec<Vec<f64>> = again["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(weights)
        .collect();
    assert_eq!(repeat, points.iter().map(weights).collect::<Vec<_>>());
    let (_, job) = app
        .get(&format!("/v1/jobs/{}", again["job"].as_str().unwrap()))
        .await;
    assert_eq!(job["result"]["computed"], 0, "{job}");
    let (_, listed) = app.get("/v1/searches").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
    assert!(
        listed["items"][0].get("points").is_none(),
        "lists leave the points out"
    );

    // A searched partition is in use.
    let (status, _) = app.delete("/v1/partitions/tech_docs").await;
    assert_eq!(status, StatusCode::CONFLICT);
}

/// A search scores its points by the proxy it names: each point is that proxy's ordinary
/// score (GET /v1/score with the weights and the proxy answers it from the cache), and a
/// gradient search, which descends the merge's gradient, takes the merge only.
#[tokio::test]
async fn a_search_scores_its_points_by_the_proxy_it_names() {
    let app = pool().await;
    for proxy in ["ensemble", "task_vectors@2"] {
        let request = json!({
            "partitions": PARTITIONS, "eval_sets": ["legal", "code"], "budget": 4, "seed": 1,
            "proxy": proxy, "check": "none",
        });
        let (status, created) = app.post("/v1/searches", request.to_string()).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let search = finished(&app, created["id"].as_str().unwrap()).await;
        assert_eq!(search["proxy"], proxy, "{search}");
        assert_eq!(search["answer"]["proxy"], proxy, "unchecked: {search}");
        let points = search["points"].as_array().unwrap();
        assert_eq!(points.len(), 7, "{search}");
        for point in points {
            let list: Vec<String> = weights(point).iter().map(f64::to_string).collect();
            for set in ["legal", "code"] {
                let path = format!(
                    "/v1/score?partitions={}&weights={}&eval={set}&train=false",
                    PARTITIONS.join(","),
                    list.join(",")
                );
                let (status, score) = app.get(&format!("{path}&proxy={proxy}")).await;
                assert_eq!(status, StatusCode::OK, "{score}");
                assert_eq!(
                    (&score["cached"], &score["proxy"]),
                    (&json!(true), &json!(proxy))
                );
                assert_eq!(score["perplexity"], point["perplexity"][set], "{point}");
                // Not the merge's score: before anything asked for it (this GET queues it),
                // the merge of these weights is not stored at all.
                if proxy == "ensemble" {
                    let (status, merged) = app.get(&format!("{path}&wait=0")).await;
                    assert_eq!(status, StatusCode::ACCEPTED, "{merged}");
                }
            }
        }
    }
    let request = json!({
        "partitions": PARTITIONS, "eval_sets": ["legal"], "budget": 2, "method": "gradient",
        "proxy": "ensemble",
    });
    let (status, body) = app.post("/v1/searches", request.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_proxy", "{body}");
}

#[tokio::test]
async fn a_gradient_search_tunes_on_one_half_of_each_eval_set_and_scores_on_the_other() {
    let app = pool().await;
    let request = json!({
        "partitions": PARTITIONS, "eval_sets": ["legal", "code"], "objective": {"legal": 1, "code": 1},
        "budget": 6, "method": "gradient", "bounds": {"tech_docs": [0.05, 0.5]},
    });
    let (status, created) = app.post("/v1/searches", request.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["eval_sets"], json!(["legal.report", "code.report"]));
    assert_eq!(created["tune_sets"], json!(["legal.tune", "code.tune"]));
    // The halves are eval sets of their own that share no document and make up the whole.
    for (set, documents) in [("legal", 5), ("code", 5)] {
        let (_, tune) = app.get(&format!("/v1/eval-sets/{set}.tune")).await;
        let (_, report) = app.get(&format!("/v1/eval-sets/{set}.report")).await;
        assert_eq!(
            (tune["documents"].as_i64(), report["documents"].as_i64()),
            (Some(documents / 2), Some(documents - documents / 2)),
            "{tune} {report}"
        );
    }
    let search = finished(&app, created["id"].as_str().unwrap()).await;
    let all = search["points"].as_array().unwrap();
    assert_eq!(
        all.len(),
        9,
        "the first iterate, six steps, the natural and uniform mixtures: {search}"
    );
    let (points, references) = all.split_at(7);
    let roles: Vec<(&str, u64)> = references
        .iter()
        .map(|p| (p["role"].as_str().unwrap(), p["round"].as_u64().unwrap()))
        .collect();
    assert_eq!(roles, [("natural", 7), ("uniform", 7)]);
    let mut tuned = Vec::new();
    for (t, point) in points.iter().enumerate() {
        assert_eq!(
            (point["role"].as_str(), point["round"].as_u64()),
            (Some("step"), Some(t as u64))
        );
        let w = weights(point);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{point}");
        assert!((0.05 - 1e-9..=0.5 + 1e-9).contains(&w[1]), "{point}");
        // Scored on the report halves, as GET /v1/score answers the same weights there.
        let list: Vec<String> = w.iter().map(f64::to_string).collect();
        for set in ["legal.report", "code.report"] {
            let (status, score) = app
                .get(&format!(
                    "/v1/score?partitions={}&weights={}&eval={set}&train=false",
                    PARTITIONS.join(","),
                    list.join(",")
                ))
                .await;
            assert_eq!(status, StatusCode::OK, "{score}");
            assert_eq!(score["cached"], true);
            assert_eq!(score["perplexity"], point["perplexity"][set], "{point}");
        }
        tuned.push(point["tune_objective"].as_f64().expect("a tune objective"));
    }
    // The tune objective is the mean of the tune halves' log perplexities: score them too.
    let first = weights(&points[0]);
    let list: Vec<String> = first.iter().map(f64::to_string).collect();
    let mut objective = 0.0;
    for set in ["legal.tune", "code.tune"] {
        let (status, score) = app
            .get(&format!(
                "/v1/score?partitions={}&weights={}&eval={set}&wait=120",
                PARTITIONS.join(","),
                list.join(",")
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{score}");
        objective += 0.5 * score["perplexity"].as_f64().unwrap().ln();
    }
    assert!(
        (objective - tuned[0]).abs() < 1e-5,
        "{objective} vs {}",
        tuned[0]
    );
    // The steps go downhill on the tune halves, and the proposal is the lowest of them.
    let lowest = tuned.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(
        lowest < tuned[0] - 1e-4,
        "the steps moved nothing: {tuned:?}"
    );
    assert_ne!(weights(&points[1]), first);
    assert_eq!(
        search["proposal"]["tune_objective"].as_f64(),
        Some(lowest),
        "{search}"
    );
    // The answer: the lowest tune objective among the steps and the reference mixtures
    // (each with its tune objective too).
    let references_tuned: Vec<f64> = references
        .iter()
        .map(|p| p["tune_objective"].as_f64().expect("a tune objective"))
        .collect();
    let lowest_of_all = references_tuned.iter().copied().fold(lowest, f64::min);
    assert_eq!(
        search["answer"]["tune_objective"].as_f64(),
        Some(lowest_of_all),
        "{search}"
    );
    assert_eq!(search["best"]["position"], search["answer"]["position"]);
    assert_eq!(search["fit"], Value::Null);
    assert!(search["gradient_passes"].as_u64().unwrap() >= 9, "{search}");

    // An eval set of one document cannot be split.
    let (status, body) = app
        .post("/v1/eval-sets?name=single", corpus("legal_licenses", 60, 1))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let jobs = app.jobs().await;
    let request = json!({"partitions": PARTITIONS, "eval_sets": ["single"], "budget": 2, "method": "gradient"});
    let (status, e) = app.post("/v1/searches", request.to_string()).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("eval_set_too_small")),
        "{e}"
    );
    assert_eq!(app.jobs().await, jobs, "nothing queued");
}

/// `max_epochs` bounds every partition's share by the data it holds: no point, the proposal
/// and answer included, would repeat a partition more than that many times in a training run
/// of `tokens`.
#[tokio::test]
async fn no_point_of_a_search_repeats_a_partition_more_than_max_epochs() {
    let app = pool().await;
    let (_, listed) = app.get("/v1/partitions?limit=10").await;
    let tokens: Vec<f64> = PARTITIONS
        .iter()
        .map(|name| {
            let row = listed["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == *name)
                .unwrap();
            row["unit_model"]["data_tokens"].as_f64().unwrap()
        })
        .collect();
    // A budget of all the data: one and a quarter passes over a partition is 1.25 times its
    // natural share, which a search around the natural mixture meets often.
    let budget = tokens.iter().sum::<f64>() as u64;
    let request = json!({
        "partitions": PARTITIONS, "eval_sets": ["legal", "code"], "budget": 12, "seed": 2,
        "max_epochs": 1.25, "tokens": budget,
    });
    let (status, created) = app.post("/v1/searches", request.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let search = finished(&app, created["id"].as_str().unwrap()).await;
    for (name, t) in PARTITIONS.iter().zip(&tokens) {
        let cap = 1.25 * t / budget as f64;
        assert!(
            (search["bounds"][name][1].as_f64().unwrap() - cap).abs() < 1e-12,
            "{search}"
        );
    }
    let mut at_a_cap = 0;
    for point in search["points"].as_array().unwrap() {
        if point["role"] == "uniform" {
            continue;
        }
        for (w, t) in weights(point).iter().zip(&tokens) {
            let epochs = w * budget as f64 / t;
            assert!(epochs <= 1.25 + 1e-9, "{epochs} epochs at {point}");
            at_a_cap += usize::from(epochs > 1.25 - 1e-6);
        }
    }
    assert!(at_a_cap > 0, "the bound never bound: {search}");
    let answer = weights(&search["answer"]);
    for (w, t) in answer.iter().zip(&tokens) {
        assert!(w * budget as f64 / t <= 1.25 + 1e-9, "{search}");
    }
}

/// A search over the ensemble's arithmetic is checked on the merge: its best points and the
/// reference mixtures are scored again by merging, and the best of them by the merge is the
/// answer, which names the merge as the proxy that chose it.
#[tokio::test]
async fn an_ensemble_search_is_checked_on_the_merge_which_chooses_its_answer() {
    let app = pool().await;
    let request = json!({
        "partitions": PARTITIONS, "eval_sets": ["legal", "code"], "budget": 8, "seed": 5,
        "proxy": "ensemble",
    });
    let (status, created) = app.post("/v1/searches", request.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    // No validations trust any proxy yet: the check is the paper's merge.
    assert_eq!(created["check"], "average", "{created}");
    let search = finished(&app, created["id"].as_str().unwrap()).await;
    let points = search["points"].as_array().unwrap();
    let checked = search["checked"]["points"].as_array().unwrap();
    assert_eq!(search["checked"]["proxy"], "average");
    let roles: Vec<&str> = checked
        .iter()
        .map(|c| c["role"].as_str().unwrap())
        .collect();
    assert!(
        roles.contains(&"natural") && roles.contains(&"uniform"),
        "{roles:?}"
    );
    // The five best by the ensemble first, then the references not among them.
    let mut by_ensemble: Vec<(f64, u64)> = points
        .iter()
        .map(|p| {
            (
                p["objective"].as_f64().unwrap(),
                p["position"].as_u64().unwrap(),
            )
        })
        .collect();
    by_ensemble.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut expected: Vec<u64> = by_ensemble[..5].iter().map(|b| b.1).collect();
    for (_, at) in &by_ensemble[5..] {
        if points[*at as usize]["role"] == "natural" || points[*at as usize]["role"] == "uniform" {
            expected.push(*at);
        }
    }
    let positions: Vec<u64> = checked
        .iter()
        .map(|c| c["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, expected, "{search}");
    // Each checked objective is the merge's, as GET /v1/score answers the same weights from
    // the cache; the answer is the lowest of them.
    let mut lowest = (f64::INFINITY, 0);
    for c in checked {
        let point = &points[c["position"].as_u64().unwrap() as usize];
        let list: Vec<String> = weights(point).iter().map(f64::to_string).collect();
        let mut objective = 0.0;
        for set in ["legal", "code"] {
            let (status, score) = app
                .get(&format!(
                    "/v1/score?partitions={}&weights={}&eval={set}&train=false&proxy=average",
                    PARTITIONS.join(","),
                    list.join(",")
                ))
                .await;
            assert_eq!(status, StatusCode::OK, "{score}");
            assert_eq!(score["cached"], true, "{score}");
            objective += 0.5 * score["perplexity"].as_f64().unwrap().ln();
        }
        let reported = c["checked"].as_f64().unwrap();
        assert!(
            (reported - objective).abs() < 1e-12,
            "{reported} {objective}"
        );
        assert_eq!(c["objective"], point["objective"], "{c}");
        if reported < lowest.0 {
            lowest = (reported, point["position"].as_u64().unwrap());
        }
    }
    let answer = &search["answer"];
    assert_eq!(answer["proxy"], "average", "{answer}");
    assert_eq!(answer["position"].as_u64(), Some(lowest.1), "{search}");
    assert_eq!(
        answer["checked_objective"].as_f64(),
        Some(lowest.0),
        "{answer}"
    );
}

#[tokio::test]
async fn bad_search_settings_are_refused_and_nothing_is_queued() {
    let app = pool().await;
    let jobs = app.jobs().await;
    let base = json!({"partitions": PARTITIONS, "eval_sets": ["legal"], "budget": 4});
    let with = |patch: Value| {
        let mut request = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            request[k] = v.clone();
        }
        request.to_string()
    };
    for (body, status, code) in [
        (
            with(json!({"method": "newton"})),
            StatusCode::BAD_REQUEST,
            "invalid_method",
        ),
        (
            with(json!({"budget": 0})),
            StatusCode::BAD_REQUEST,
            "invalid_budget",
        ),
        (
            with(json!({"partitions": ["legal_licenses"]})),
            StatusCode::BAD_REQUEST,
            "invalid_partitions",
        ),
        (
            with(json!({"partitions": ["legal_licenses", "legal_licenses"]})),
            StatusCode::BAD_REQUEST,
            "invalid_partitions",
        ),
        (
            with(json!({"partitions": ["legal_licenses", "nope"]})),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            with(json!({"bounds": {"legal_licenses": [0.7, 1.0], "tech_docs": [0.5, 1.0]}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_bounds",
        ),
        (
            with(json!({"bounds": {"legal_licenses": [0.5, 0.2]}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_bounds",
        ),
        (
            with(json!({"bounds": {"code_c": [0.0, 0.5]}})),
            StatusCode::BAD_REQUEST,
            "invalid_setting",
        ),
        (
            with(json!({"objective": {"code": 1}})),
            StatusCode::BAD_REQUEST,
            "invalid_setting",
        ),
        (
            with(json!({"objective": {"legal": -1}})),
            StatusCode::BAD_REQUEST,
            "invalid_setting",
        ),
        (
            with(json!({"prior": {"legal_licenses": 0}})),
            StatusCode::BAD_REQUEST,
            "invalid_setting",
        ),
        (
            with(json!({"eval_sets": []})),
            StatusCode::BAD_REQUEST,
            "invalid_eval_sets",
        ),
        (
            with(json!({"budget": "many"})),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            with(json!({"max_epochs": -1})),
            StatusCode::BAD_REQUEST,
            "invalid_setting",
        ),
        (
            with(json!({"tokens": 0, "max_epochs": 1})),
            StatusCode::BAD_REQUEST,
            "invalid_setting",
        ),
        // A budget so large that one pass over every partition covers a sliver of it.
        (
            with(json!({"max_epochs": 1, "tokens": 1_000_000_000_u64})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_bounds",
        ),
        (
            with(json!({"check": "newton"})),
            StatusCode::BAD_REQUEST,
            "invalid_proxy",
        ),
        (
            with(json!({"check": "ensemble"})),
            StatusCode::BAD_REQUEST,
            "invalid_proxy",
        ),
        (
            with(json!({"check": "average", "method": "gradient"})),
            StatusCode::BAD_REQUEST,
            "invalid_proxy",
        ),
    ] {
        let (got, e) = app.post("/v1/searches", body.clone()).await;
        assert_eq!(
            (got, e["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {e}"
        );
    }
    assert_eq!(app.jobs().await, jobs, "nothing queued");
    let (status, e) = app.get("/v1/searches/not-a-search").await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

#[tokio::test]
async fn the_search_verb_follows_the_search_and_prints_the_proposal() {
    let app = pool().await;
    let run = |args: &str| {
        let args: Vec<String> = args.split(' ').map(String::from).collect();
        let (url, token) = (app.url.clone(), app.token.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_mixpool"))
                    .args(&args)
                    .args(["--url", &url])
                    .env("MIXPOOL_TOKEN", token)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let out = run(
        "search --partitions legal_licenses,tech_docs,code_python --eval legal --eval code \
                   --objective legal=1 --budget 4 --bound tech_docs=0,0.2 --seed 9 --json",
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let search: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(search["state"], "succeeded");
    assert_eq!(search["objective"], json!({"legal": 1.0, "code": 0.0}));
    assert_eq!(search["bounds"]["tech_docs"], json!([0.0, 0.2]));
    // Every point within the bound; a reference mixture outside it says so.
    for p in search["points"].as_array().unwrap() {
        let within = p["weights"]["tech_docs"].as_f64().unwrap() <= 0.2 + 1e-9;
        assert_eq!(within, p.get("within_bounds").is_none(), "{p}");
        assert!(
            within || p["role"] == "natural" || p["role"] == "uniform",
            "{p}"
        );
    }
    let (_, served) = app
        .get(&format!("/v1/searches/{}", search["id"].as_str().unwrap()))
        .await;
    assert_eq!(search["points"], served["points"]);

    let out = run("search --partitions legal_licenses,tech_docs --eval legal --budget 3").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("proposal")
            && text.contains("answer (by average)")
            && text.contains("tech_docs"),
        "{text}"
    );

    let out =
        run("search --partitions legal_licenses,tech_docs --eval legal --budget 3 --bound tech_docs=lots")
            .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME=VALUE"));
    let out =
        run("search --partitions legal_licenses,tech_docs --eval legal --budget 3 --method x")
            .await;
    assert_eq!(out.status.code(), Some(2), "clap refuses an unknown method");

    let out = run(
        "search --partitions legal_licenses,tech_docs --eval legal --budget 2 --method gradient",
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("tune objective")
            && text.contains("tuned on legal.tune")
            && text.contains("legal.report"),
        "{text}"
    );
}
