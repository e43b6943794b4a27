//! Cached `GET /v1/score` latency and throughput under concurrent load on loopback, beside a
//! bare axum endpoint measured in the same run. Needs PostgreSQL (`scripts/postgres.sh`).
//!
//! `make bench-service [ARGS="--seconds 5 --concurrency 16"]`

use std::str::FromStr;
use std::time::{Duration, Instant};

use mixpool::engine::eval::EvalConfig;
use mixpool::engine::model::ModelConfig;
use mixpool::engine::train::TrainConfig;
use mixpool::mixture::{Mixture, Weighting};
use mixpool::proxy::Proxy;
use mixpool::registry::datasets::{self, Kind, NewDataset};
use mixpool::registry::scores::eval_config_sha256;
use mixpool::registry::scores::{self, ScoreKey};
use mixpool::registry::{bases, recipes};
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor};
use uuid::Uuid;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Hammers `url` from `concurrency` tasks for `seconds`; returns sorted latencies and req/s.
async fn load(url: String, concurrency: u64, seconds: u64) -> (Vec<Duration>, f64) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let response = client.get(&url).send().await.unwrap();
                    assert!(response.status().is_success(), "{}", response.status());
                    response.bytes().await.unwrap();
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort();
    (all, rate)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let (seconds, concurrency) = (arg("--seconds", 5), arg("--concurrency", 16));
    let admin = std::env::var("MIXPOOL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let admin = PgConnectOptions::from_str(&admin).unwrap();
    let name = format!("mixpool_test_bench_{}", Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect_with(&admin)
        .await
        .expect("PostgreSQL (scripts/postgres.sh)");
    conn.execute(format!("create database {name}").as_str())
        .await
        .unwrap();
    let pool = mixpool::registry::connect(admin.clone().database(&name))
        .await
        .unwrap();

    // A pool with one cached score, written directly: no model runs in this benchmark.
    let mut db = pool.acquire().await.unwrap();
    let base = bases::insert(
        &mut db,
        Uuid::new_v4(),
        "base",
        &ModelConfig::preset("tiny").unwrap(),
        Some("w"),
    )
    .await
    .unwrap();
    let recipe = recipes::insert(&mut db, "unit", &TrainConfig::default())
        .await
        .unwrap()
        .into_inner();
    let dataset = |name: &str| NewDataset {
        name: name.into(),
        domain: None,
        tags: vec![],
        sha256: name.into(),
        object_sha256: name.into(),
        bytes: 1,
        documents: 1,
        shape: None,
        train: true,
        sources: None,
    };
    let a = datasets::insert(&mut db, Kind::Partition, &dataset("a"))
        .await
        .unwrap()
        .into_inner()
        .id;
    let b = datasets::insert(&mut db, Kind::Partition, &dataset("b"))
        .await
        .unwrap()
        .into_inner()
        .id;
    let eval = datasets::insert(&mut db, Kind::EvalSet, &dataset("e"))
        .await
        .unwrap()
        .into_inner()
        .id;
    let mixture = Mixture::new(&[a, b], None, Weighting::Uniform).unwrap();
    let key = ScoreKey {
        base_id: base.id,
        recipe_id: recipe.id,
        mixture_key: mixture.key(),
        weighting: "uniform".into(),
        merge_method: Proxy::Average.key(),
        eval_set_id: eval,
        eval_config_sha256: eval_config_sha256(&EvalConfig::default()),
    };
    let mixture_json = json!(
        mixture
            .members
            .iter()
            .map(|m| json!({"partition": m.partition, "weight": m.weight}))
            .collect::<Vec<_>>()
    );
    let result = json!({"perplexity": 7.5, "bits_per_byte": 2.9, "tokens": 1000, "bytes": 1000, "per_domain": {}, "macro_perplexity": 7.5});
    scores::insert(&mut db, &key, &mixture_json, &json!({}), &result)
        .await
        .unwrap();
    drop(db);

    // The service as `mixpool serve --no-worker` builds it.
    let dir = tempfile::tempdir().unwrap();
    let mut config = mixpool::config::Config::default();
    let admin_url = std::env::var("MIXPOOL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    config.service.database_url = format!("{}/{name}", admin_url.rsplit_once('/').unwrap().0);
    config.service.data = dir.path().display().to_string();
    config.service.max_wait_seconds = 1;
    config.service.worker = false;
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = mixpool::app::App::build(&config, Some(api)).await.unwrap();
    let api_url = format!("{}/v1/score?partitions=a,b&eval=e", service.url());
    let bare = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bare_url = format!("http://{}/", bare.local_addr().unwrap());
    let bare_router = axum::Router::new().route(
        "/",
        axum::routing::get(|| async { axum::Json(json!({"perplexity": 7.5})) }),
    );
    tokio::spawn(async move { axum::serve(bare, bare_router).await.unwrap() });

    load(api_url.clone(), concurrency, 1).await;
    load(bare_url.clone(), concurrency, 1).await;
    let (ours, ours_rate) = load(api_url, concurrency, seconds).await;
    let (bare, bare_rate) = load(bare_url, concurrency, seconds).await;
    println!(
        "cached GET /v1/score vs a bare axum endpoint, {concurrency} concurrent clients, {seconds} s each, loopback, same process"
    );
    println!("{:<22} {:>9} {:>9} {:>10}", "", "p50 ms", "p99 ms", "req/s");
    println!(
        "{:<22} {:>9.2} {:>9.2} {:>10.0}",
        "GET /v1/score (cached)",
        pct(&ours, 0.5),
        pct(&ours, 0.99),
        ours_rate
    );
    println!(
        "{:<22} {:>9.2} {:>9.2} {:>10.0}",
        "bare endpoint",
        pct(&bare, 0.5),
        pct(&bare, 0.99),
        bare_rate
    );
    println!(
        "throughput ratio: {:.2} of the bare endpoint",
        ours_rate / bare_rate
    );
    conn.execute(format!("drop database {name} with (force)").as_str())
        .await
        .unwrap();
}
