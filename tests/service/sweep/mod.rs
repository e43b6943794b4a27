//! Sweeps over HTTP: every subset of a partition list scored in shards by resident merges,
//! ranked per eval set, equal to single scores, shared by two workers, and finished by
//! another worker when one is killed mid-shard.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use mixpool::api::SweepLimits;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::app::{App, corpus, spawn_app, spawn_app_with};

mod cache;
mod ensemble;
mod refused;

const DOMAINS: [&str; 4] = ["code_python", "code_c", "legal_licenses", "tech_docs"];

/// Uploads one partition per domain (`n` of them) and two eval sets; returns the names.
async fn pool_of(app: &App, n: usize, eval_docs: usize) -> Vec<String> {
    let mut names = Vec::new();
    for domain in &DOMAINS[..n] {
        let (status, body) = app
            .post(
                &format!("/v1/partitions?name={domain}"),
                corpus(domain, 0, 8),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        names.push(domain.to_string());
    }
    let mixed: String = DOMAINS.iter().map(|d| corpus(d, 100, eval_docs)).collect();
    for (name, text) in [
        ("mixed", mixed),
        ("legal", corpus("legal_licenses", 150, eval_docs)),
    ] {
        let (status, body) = app.post(&format!("/v1/eval-sets?name={name}"), text).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    names
}

/// Polls the sweep until it has succeeded; fails on failure or after two minutes.
async fn finished(app: &App, id: &str) -> Value {
    let started = Instant::now();
    loop {
        let (status, sweep) = app.get(&format!("/v1/sweeps/{id}?limit=1000")).await;
        assert_eq!(status, StatusCode::OK, "{sweep}");
        match sweep["state"].as_str().unwrap() {
            "succeeded" => return sweep,
            "failed" | "cancelled" => panic!("the sweep ended badly: {sweep}"),
            _ => {}
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{sweep}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sweep's shard jobs (state, attempts, result), once none is queued or running: a sweep
/// is done when its last score is stored, a moment before its shard job records its result.
async fn sweep_jobs(app: &App) -> Vec<(String, i32, Value)> {
    let started = Instant::now();
    loop {
        let jobs: Vec<(String, i32, Value)> =
            sqlx::query_as("select state, attempts, result from jobs where kind = 'sweep'")
                .fetch_all(&app.pool)
                .await
                .unwrap()
                .into_iter()
                .map(|(state, attempts, result): (String, i32, Option<Value>)| {
                    (state, attempts, result.unwrap_or_default())
                })
                .collect();
        if jobs
            .iter()
            .all(|(state, _, _)| state != "queued" && state != "running")
        {
            return jobs;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{jobs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn mixture_names(entry: &Value) -> Vec<String> {
    entry["mixture"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["partition"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_sweep_ranks_every_subset_and_equals_single_scores() {
    let app = spawn_app().await;
    let names = pool_of(&app, 3, 2).await;
    for name in &names {
        app.trained(name).await;
    }
    let request = json!({"partitions": names, "sizes": [1, 3], "eval_sets": ["mixed", "legal"]});
    let (status, created) = app.post("/v1/sweeps", request.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["mixtures"], 7);
    assert_eq!(created["progress"]["total"], 14);
    let id = created["id"].as_str().unwrap();
    let sweep = finished(&app, id).await;
    assert_eq!(sweep["progress"]["scored"], 14);

    let mut swept: HashMap<(Vec<String>, String), f64> = HashMap::new();
    for result in sweep["results"].as_array().unwrap() {
        let eval = result["eval_set"].as_str().unwrap().to_string();
        let ranking = result["ranking"].as_array().unwrap();
        assert_eq!((result["scored"].as_u64(), ranking.len()), (Some(7), 7));
        let ppls: Vec<f64> = ranking
            .iter()
            .map(|r| r["perplexity"].as_f64().unwrap())
            .collect();
        assert!(
            ppls.windows(2).all(|w| w[0] <= w[1]),
            "best first: {ppls:?}"
        );
        assert_eq!(result["best"], ranking[0]);
        assert_eq!(ranking[0]["rank"], 1);
        let subsets: HashSet<Vec<String>> = ranking.iter().map(mixture_names).collect();
        assert_eq!(subsets.len(), 7, "each subset once");
        for entry in ranking {
            swept.insert(
                (mixture_names(entry), eval.clone()),
                entry["perplexity"].as_f64().unwrap(),
            );
        }
    }

    // Every score is an ordinary one: GET /v1/score answers it from the cache, no new job.
    let jobs = app.jobs().await;
    for ((mixture, eval), ppl) in &swept {
        let path = format!(
            "/v1/score?partitions={}&eval={eval}&wait=0",
            mixture.join(",")
        );
        let (status, score) = app.get(&path).await;
        assert_eq!(
            (status, &score["cached"]),
            (StatusCode::OK, &json!(true)),
            "{score}"
        );
        assert_eq!(score["perplexity"].as_f64().unwrap(), *ppl);
    }
    assert_eq!(app.jobs().await, jobs);

    // The same mixtures scored one job each (the stored scores and every server's answer
    // cache cleared) give the same numbers.
    sqlx::query("delete from scores")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("select pg_notify('mixpool_registry', 'deleted:partition:test')")
        .execute(&app.pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for ((mixture, eval), ppl) in &swept {
        let path = format!(
            "/v1/score?partitions={}&eval={eval}&wait=60",
            mixture.join(",")
        );
        let (status, score) = app.get(&path).await;
        assert_eq!(
            (status, &score["cached"]),
            (StatusCode::OK, &json!(false)),
            "{score}"
        );
        let single = score["perplexity"].as_f64().unwrap();
        assert!(
            (single - ppl).abs() <= 1e-9 * ppl,
            "{mixture:?} on {eval}: {single} vs {ppl}"
        );
    }

    // A second, overlapping sweep finds everything in the cache and queues nothing.
    let again = json!({"mixtures": [["code_c", "code_python"], ["legal_licenses"]], "eval_sets": ["legal"]});
    let (status, created) = app.post("/v1/sweeps", again.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        (
            created["state"].as_str(),
            created["progress"]["scored"].as_u64()
        ),
        (Some("succeeded"), Some(2))
    );
    let (status, list) = app.get("/v1/sweeps").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert_eq!(list["items"][1]["id"], json!(id));
}

#[tokio::test]
async fn a_sweep_shared_by_two_workers_scores_each_mixture_once() {
    let app = spawn_app_with(SweepLimits {
        max_mixtures: 100,
        shard_mixtures: 2,
    })
    .await;
    let owners = ["worker-a", "worker-b"];
    let workers: Vec<_> = owners.iter().map(|o| App::start(app.worker(o))).collect();
    let names = pool_of(&app, 4, 2).await;
    for name in &names {
        app.trained(name).await;
    }
    let request = json!({"partitions": names, "eval_sets": ["mixed", "legal"]});
    let (status, created) = app.post("/v1/sweeps", request.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["mixtures"], 15);
    finished(&app, created["id"].as_str().unwrap()).await;

    let shards = sweep_jobs(&app).await;
    assert_eq!(shards.len(), 8, "15 mixtures in shards of 2");
    let computed: u64 = shards
        .iter()
        .map(|(_, _, r)| r["shard"]["computed"].as_u64().unwrap())
        .sum();
    assert_eq!(computed, 15, "each mixture merged and evaluated once");
    let by: HashSet<&str> = shards
        .iter()
        .map(|(_, _, r)| r["worker"].as_str().unwrap())
        .collect();
    assert_eq!(by, owners.into_iter().collect(), "both workers ran shards");
    let scores: i64 = sqlx::query_scalar("select count(*) from scores")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(scores, 30);
    workers.iter().for_each(|w| w.abort());
}

#[tokio::test]
async fn a_worker_killed_mid_shard_leaves_the_rest_to_another_and_nothing_is_scored_twice() {
    let app = spawn_app_with(SweepLimits::default()).await;
    let trainer = App::start(app.worker("trainer"));
    let names = pool_of(&app, 4, 12).await;
    for name in &names {
        app.trained(name).await;
    }
    trainer.abort();
    let request = json!({"partitions": names, "eval_sets": ["mixed", "legal"]});
    let (status, created) = app.post("/v1/sweeps", request.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");

    // A worker process with a 3-second lease, killed once it has stored some mixtures.
    let mut child = crate::helpers::worker_process(
        &app.database_url().await,
        &format!("file://{}", app._dirs.0.path().display()),
        &app._dirs.1.path().join("process"),
        "sweep",
        3,
    );
    let count = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from scores")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    let started = Instant::now();
    while count().await < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the worker stored nothing"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let stored = count().await;
    assert!(stored < 30, "the worker finished before it could be killed");
    assert_eq!(stored % 2, 0, "a mixture's scores are stored together");

    let other = App::start(app.worker("survivor"));
    let sweep = finished(&app, created["id"].as_str().unwrap()).await;
    assert_eq!(sweep["progress"]["scored"], 30);
    let shards = sweep_jobs(&app).await;
    other.abort();
    assert_eq!(shards.len(), 1);
    let (state, attempts, result) = &shards[0];
    assert_eq!((state.as_str(), *attempts), ("succeeded", 2));
    assert_eq!(result["worker"], "survivor");
    assert_eq!(result["shard"]["cached"].as_i64().unwrap(), stored / 2);
    assert_eq!(
        result["shard"]["computed"].as_i64().unwrap(),
        15 - stored / 2
    );
    assert_eq!(count().await, 30);

    // The scores equal an undisturbed run's: the same sweep again, on scores made afresh by
    // a worker that nobody stops.
    let disturbed = scores_by_key(&app).await;
    sqlx::query("delete from scores")
        .execute(&app.pool)
        .await
        .unwrap();
    let (status, again) = app.post("/v1/sweeps", request.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    let reference = App::start(app.worker("reference"));
    finished(&app, again["id"].as_str().unwrap()).await;
    reference.abort();
    let undisturbed = scores_by_key(&app).await;
    assert_eq!(undisturbed.len(), 30);
    for (key, ppl) in &undisturbed {
        let seen = disturbed[key];
        assert!(
            (seen - ppl).abs() <= 1e-9 * ppl,
            "{key:?}: {seen} with a killed worker, {ppl} undisturbed"
        );
    }
}

/// Every stored score's perplexity by (mixture key, eval set).
async fn scores_by_key(app: &App) -> HashMap<(String, String), f64> {
    sqlx::query_as::<_, (String, uuid::Uuid, Value)>(
        "select mixture_key, eval_set_id, result from scores",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(key, set, result)| {
        (
            (key, set.to_string()),
            result["perplexity"].as_f64().unwrap(),
        )
    })
    .collect()
}

#[tokio::test]
async fn unit_models_beyond_the_memory_budget_are_taken_in_groups_that_fit() {
    let app = spawn_app_with(SweepLimits::default()).await;
    let trainer = App::start(app.worker("trainer"));
    let names = pool_of(&app, 4, 1).await;
    for name in &names {
        app.trained(name).await;
    }
    trainer.abort();
    let unit = mixpool::engine::checkpoint::LoadedModel::init(
        crate::helpers::small_llama(),
        0,
        tch::Device::Cpu,
    )
    .unwrap()
    .parameters() as u64
        * 4;
    // Room for the two unit models of a pair, not for the four of the sweep.
    let tight = mixpool::worker::Worker {
        resident_bytes: unit * 5 / 2,
        ..app.worker("tight")
    };
    let request = json!({"partitions": names, "sizes": [1, 2], "eval_sets": ["legal"]});
    let (status, created) = app.post("/v1/sweeps", request.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert!(tight.try_run_one().await.unwrap());
    let sweep = finished(&app, created["id"].as_str().unwrap()).await;
    assert_eq!(sweep["progress"]["scored"], 10);
    let (_, _, result) = &sweep_jobs(&app).await[0];
    let shard = &result["shard"];
    assert_eq!(shard["computed"], 10);
    assert!(shard["groups"].as_u64().unwrap() > 1, "{shard}");
    // Its progress said so as it went.
    let message: String = sqlx::query_scalar("select message from jobs where kind = 'sweep'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        message.starts_with("mixture 10/10, in group ") && message.contains("memory budget"),
        "{message}"
    );
    assert!(
        shard["peak_resident_bytes"].as_u64().unwrap() <= unit * 2,
        "{shard}"
    );

    // A budget smaller than one mixture's unit models fails the shard and says why.
    let tiny = mixpool::worker::Worker {
        resident_bytes: unit,
        ..app.worker("tiny")
    };
    let request =
        json!({"mixtures": [["code_c", "legal_licenses", "tech_docs"]], "eval_sets": ["legal"]});
    let (status, created) = app.post("/v1/sweeps", request.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert!(tiny.try_run_one().await.unwrap());
    let (status, sweep) = app
        .get(&format!("/v1/sweeps/{}", created["id"].as_str().unwrap()))
        .await;
    assert_eq!(
        (status, sweep["state"].as_str()),
        (StatusCode::OK, Some("failed")),
        "{sweep}"
    );
    let error: String =
        sqlx::query_scalar("select error from jobs where kind = 'sweep' and state = 'failed'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(
        error.contains("3 unit models") && error.contains("resident_mb"),
        "{error}"
    );
}

#[tokio::test]
async fn the_sweep_and_validate_verbs_follow_the_work_and_print_the_results() {
    let app = spawn_app().await;
    // The unit models are still training: the sweep verb waits for them, then sweeps.
    pool_of(&app, 2, 1).await;
    let run = |args: Vec<String>| {
        let (url, token) = (app.url.clone(), app.token.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                Command::new(env!("CARGO_BIN_EXE_mixpool"))
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
    let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
    let swept = run(args(
        "sweep --partitions code_python,code_c --eval legal --eval mixed --json",
    ))
    .await;
    assert!(
        swept.status.success(),
        "{}",
        String::from_utf8_lossy(&swept.stderr)
    );
    let sweep: Value = serde_json::from_slice(&swept.stdout).unwrap();
    assert_eq!(
        (sweep["state"].as_str(), sweep["mixtures"].as_u64()),
        (Some("succeeded"), Some(3))
    );
    let (_, served) = app
        .get(&format!(
            "/v1/sweeps/{}?limit=10",
            sweep["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(sweep["results"], served["results"]);

    let table = run(args(
        "sweep --mixture code_python,code_c --mixture code_c --eval legal",
    ))
    .await;
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    let pair = text.contains("code_python + code_c") || text.contains("code_c + code_python");
    assert!(pair && text.contains("legal (best first)"), "{text}");

    let validated = run(args(
        "validate --mixture code_python,code_c --eval legal --json",
    ))
    .await;
    assert!(
        validated.status.success(),
        "{}",
        String::from_utf8_lossy(&validated.stderr)
    );
    let out: Value = serde_json::from_slice(&validated.stdout).unwrap();
    assert_eq!(out["validations"][0]["results"][0]["eval_set"], "legal");
    assert_eq!(out["report"]["sets"][0]["n"], 1);

    let weighted = run(args(
        "validate --mixture code_python=3,code_c=1 --eval legal --tokens 512",
    ))
    .await;
    assert!(
        weighted.status.success(),
        "{}",
        String::from_utf8_lossy(&weighted.stderr)
    );
    let text = String::from_utf8_lossy(&weighted.stdout);
    assert!(
        text.contains("code_python (0.75)") && text.contains("code_c (0.25)"),
        "{text}"
    );
    let refused = run(args("validate --mixture code_python=3,code_c --eval legal")).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("NAME=W"));

    let refused = run(args("sweep --partitions code_python --eval nope")).await;
    assert_eq!(refused.status.code(), Some(1));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("404") && said.contains("\"nope\""), "{said}");
}
