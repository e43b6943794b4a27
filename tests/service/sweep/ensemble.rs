//! Sweeps by the ensemble proxy: each unit model sees each eval set once (its per-token NLLs
//! stored), every later mixture of those units is arithmetic on them, a unit alone scores
//! exactly as its merge does, and the scores are ordinary ones of their own proxy.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{finished, mixture_names, pool_of, sweep_jobs};
use crate::app::spawn_app;

/// Sums a counter of the sweep jobs' shard results, over the jobs `skip..`.
fn counted(jobs: &[(String, i32, Value)], skip: usize, counter: &str) -> u64 {
    jobs[skip..]
        .iter()
        .map(|(_, _, r)| r["shard"][counter].as_u64().unwrap())
        .sum()
}

#[tokio::test]
async fn an_ensemble_sweep_runs_one_forward_pass_per_unit_and_set_then_none() {
    let app = spawn_app().await;
    let names = pool_of(&app, 3, 2).await;
    for name in &names {
        app.trained(name).await;
    }
    let sweep = |weighting: &str| {
        json!({"partitions": names, "sizes": [1, 3], "eval_sets": ["mixed", "legal"],
               "proxy": "ensemble", "weighting": weighting})
        .to_string()
    };
    let (status, created) = app.post("/v1/sweeps", sweep("uniform")).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["proxy"], "ensemble");
    let first = finished(&app, created["id"].as_str().unwrap()).await;
    assert_eq!(first["progress"]["scored"], 14);
    let jobs = sweep_jobs(&app).await;
    assert_eq!(counted(&jobs, 0, "forward_passes"), 3 * 2, "{jobs:?}");
    assert_eq!(counted(&jobs, 0, "logprobs_reused"), 0);

    // A unit alone: the ensemble's score is the merge's (a score job computes that one).
    for result in first["results"].as_array().unwrap() {
        let eval = result["eval_set"].as_str().unwrap();
        for entry in result["ranking"].as_array().unwrap() {
            let mixture = mixture_names(entry);
            let path = format!(
                "/v1/score?partitions={}&eval={eval}&wait=60",
                mixture.join(",")
            );
            if mixture.len() == 1 {
                let (status, merged) = app.get(&path).await;
                assert_eq!(status, StatusCode::OK, "{merged}");
                assert_eq!(merged["proxy"], "average");
                assert_eq!(
                    merged["perplexity"], entry["perplexity"],
                    "{mixture:?} on {eval}"
                );
            }
            // Every sweep score answers GET /v1/score?proxy=ensemble from the cache.
            let (status, score) = app.get(&format!("{path}&proxy=ensemble")).await;
            assert_eq!(status, StatusCode::OK, "{score}");
            assert_eq!(
                (&score["cached"], &score["proxy"]),
                (&json!(true), &json!("ensemble"))
            );
            assert_eq!(score["perplexity"], entry["perplexity"]);
        }
    }

    // Other weights, other scores: no forward pass, every unit's NLLs found stored.
    let before = sweep_jobs(&app).await.len();
    let (status, created) = app.post("/v1/sweeps", sweep("tokens")).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let second = finished(&app, created["id"].as_str().unwrap()).await;
    assert_eq!(second["progress"]["scored"], 14);
    let jobs = sweep_jobs(&app).await;
    assert!(jobs.len() > before);
    assert_eq!(counted(&jobs, before, "forward_passes"), 0, "{jobs:?}");
    assert_eq!(counted(&jobs, before, "logprobs_reused"), 3 * 2);

    // The mean of units: arithmetic on the same stored NLLs, the mean of the singles' scores.
    let before = sweep_jobs(&app).await.len();
    let units = sweep("uniform").replace("\"ensemble\"", "\"units\"");
    let (status, created) = app.post("/v1/sweeps", units).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["proxy"], "units");
    let means = finished(&app, created["id"].as_str().unwrap()).await;
    let jobs = sweep_jobs(&app).await;
    assert_eq!(counted(&jobs, before, "forward_passes"), 0, "{jobs:?}");
    for result in means["results"].as_array().unwrap() {
        let eval = result["eval_set"].as_str().unwrap();
        for entry in result["ranking"].as_array().unwrap() {
            let mixture = mixture_names(entry);
            let mut own = Vec::new();
            for name in &mixture {
                let (status, alone) = app
                    .get(&format!("/v1/score?partitions={name}&eval={eval}&wait=60"))
                    .await;
                assert_eq!(status, StatusCode::OK, "{alone}");
                own.push(alone["perplexity"].as_f64().unwrap());
            }
            let want = own.iter().sum::<f64>() / own.len() as f64;
            let got = entry["perplexity"].as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-12 * want,
                "{mixture:?}: {got} against {want}"
            );
        }
    }

    // The leaderboard of each proxy holds its own scores only.
    let (status, board) = app
        .get("/v1/leaderboard?eval=mixed&proxy=ensemble&limit=100")
        .await;
    assert_eq!(status, StatusCode::OK, "{board}");
    assert_eq!(
        (board["total"].as_u64(), &board["proxy"]),
        (Some(14), &json!("ensemble"))
    );
    let (status, board) = app.get("/v1/leaderboard?eval=mixed").await;
    assert_eq!(status, StatusCode::OK, "{board}");
    assert_eq!(
        (board["total"].as_u64(), &board["proxy"]),
        (Some(3), &json!("average"))
    );

    // An unknown proxy is refused by name, everywhere.
    for (status, body) in [
        app.post(
            "/v1/sweeps",
            sweep("uniform").replace("\"ensemble\"", "\"merge\""),
        )
        .await,
        app.get("/v1/score?partitions=code_c&eval=mixed&proxy=merge")
            .await,
        app.get("/v1/leaderboard?eval=mixed&proxy=merge").await,
    ] {
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "invalid_proxy", "{body}");
    }

    // The stored NLLs are objects their rows own: fsck finds nothing wrong.
    let report = mixpool::fsck::check(&app.pool, &app.store, false, mixpool::fsck::IN_FLIGHT)
        .await
        .unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let stored = app.store.list("models").await.unwrap();
    assert_eq!(
        stored.iter().filter(|k| k.contains("/logprobs/")).count(),
        3 * 2,
        "{stored:?}"
    );
}
