//! Sweep cost: every mixture of 8 unit models (255) on a ~40 kB eval set, scored three ways
//! in one run on the same worker and device:
//! 1. one sweep: shards whose unit models stay resident, merged in memory;
//! 2. one score job per mixture (resident merge, but each job fetches its units, builds the
//!    model and tokenises the eval set anew);
//! 3. the steps a score job took before resident merges, in-process: download the unit
//!    models to disk, write the merged checkpoint, load it, evaluate;
//!
//! and the same mixtures as sweeps by the ensemble proxy, twice: first with no per-token
//! NLLs stored, then with them stored (mixtures per second against the resident sweep's);
//! and the sweep again in small shards (`--shard`, default 4) by a worker that keeps
//! nothing between jobs (every shard fetches, verifies and loads its unit models: before
//! the worker cache) and by one with its cache (after), side by side: what fetching and
//! loading cost per mixture beside the forward passes. The process's resident memory is
//! printed after each part.
//!
//! For each: wall time, the summed pure forward time of the evaluations, and the overhead per
//! mixture, (wall − forward) / mixtures. Needs PostgreSQL (`scripts/postgres.sh`).
//!
//! `make bench-sweep [ARGS="--preset tiny --mixtures 255 --sample 255 --device cpu"]`
//! (`--mixtures N` takes the first N mixtures, smallest first; `--sample N` times paths 2
//! and 3 on the first N of those only; `--eval-kb` sizes the eval set, default 40).

use std::str::FromStr;
use std::time::Instant;

use bytes::Bytes;
use mixpool::engine::checkpoint::{self, LoadedModel, WEIGHTS_FILE};
use mixpool::engine::data::{self, Format};
use mixpool::engine::eval::{EvalConfig, Prepared};
use mixpool::engine::merge::merge_model_dirs;
use mixpool::engine::model::ModelConfig;
use mixpool::engine::train::TrainConfig;
use mixpool::ingest::{Upload, ingest};
use mixpool::mixture::{self, Mixture, Weighting};
use mixpool::registry::datasets::{self, Kind};
use mixpool::registry::scores::eval_config_sha256;
use mixpool::registry::sweeps::{Sweep, SweepMixture};
use mixpool::registry::{bases, models, recipes};
use mixpool::service::scoring::{self, ScoreRequest};
use mixpool::store::{S3Config, Store, keys};
use mixpool::worker::Worker;
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor};
use uuid::Uuid;

const DOMAINS: [&str; 8] = [
    "code_c",
    "code_python",
    "drama_dialogue",
    "fiction",
    "legal_licenses",
    "religion",
    "speeches",
    "tech_docs",
];

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn corpus_lines(domain: &str, skip: usize, take: usize) -> Vec<String> {
    let dir = std::env::var("MIXPOOL_CORPUS").unwrap_or_else(|_| "../shared/corpus".into());
    let text = std::fs::read_to_string(format!("{dir}/{domain}.jsonl")).unwrap();
    text.lines()
        .skip(skip)
        .take(take)
        .map(str::to_string)
        .collect()
}

/// Sums a field over the `sweep` or `score` jobs' results.
async fn job_seconds(pool: &sqlx::PgPool, kind: &str, pointer: &str) -> f64 {
    let results: Vec<Value> =
        sqlx::query_scalar("select result from jobs where kind = $1 and state = 'succeeded'")
            .bind(kind)
            .fetch_all(pool)
            .await
            .unwrap();
    results
        .iter()
        .filter_map(|r| r.pointer(pointer).and_then(Value::as_f64))
        .sum()
}

/// A memory figure of this process from /proc (`VmHWM` the peak, `VmRSS` now), in MB.
fn status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// Prints the process's resident memory now and at its peak so far, after `stage`.
fn memory(stage: &str) {
    println!(
        "memory after {stage}: resident {:.0} MB, peak so far {:.0} MB",
        status_mb("VmRSS:"),
        peak_rss_mb()
    );
}

#[tokio::main]
async fn main() {
    let preset = arg("--preset", "tiny");
    let limit: usize = arg("--mixtures", "255").parse().unwrap();
    let sample: usize = arg("--sample", "255").parse().unwrap();
    let small_shard: usize = arg("--shard", "4").parse().unwrap();
    let eval_bytes: usize = arg("--eval-kb", "40").parse::<usize>().unwrap() * 1000;
    let device = mixpool::engine::device::parse(&arg("--device", "cpu")).unwrap();
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
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = Store::open(
        &format!("file://{}", dirs.0.path().display()),
        &S3Config::default(),
    )
    .unwrap();

    // A random-initialised base and 8 unit models trained one step each: what is measured
    // is the cost of merging and evaluating, which does not depend on the weights' values.
    let config = ModelConfig::preset(&preset).expect("--preset tiny|small|base-130m");
    let base_dir = dirs.1.path().join("base");
    LoadedModel::init(config.clone(), 0, tch::Device::Cpu)
        .unwrap()
        .save(&base_dir)
        .unwrap();
    let base_id = Uuid::new_v4();
    let stored = store
        .put_file(
            &base_dir.join(WEIGHTS_FILE),
            &keys::base(&base_id, WEIGHTS_FILE),
        )
        .await
        .unwrap();
    let mut db = pool.acquire().await.unwrap();
    let base = bases::insert(&mut db, base_id, "base", &config, Some(&stored.sha256))
        .await
        .unwrap();
    let recipe = TrainConfig {
        tokens: 4096,
        ..TrainConfig::default()
    };
    let recipe = recipes::insert(&mut db, "unit", &recipe)
        .await
        .unwrap()
        .into_inner();
    drop(db);
    let upload = |kind, name: &str, lines: Vec<String>| {
        let (pool, store) = (pool.clone(), store.clone());
        let upload = Upload {
            kind,
            name: name.into(),
            domain: None,
            tags: vec![],
            format: Some(Format::Jsonl),
            max_bytes: 1 << 26,
            train: true,
            choices: None,
            text_field: None,
            parquet: false,
        };
        async move {
            let body = Bytes::from(lines.join("\n") + "\n");
            ingest(&pool, &store, &upload, futures::stream::iter([Ok(body)]))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let mut partitions = Vec::new();
    for domain in DOMAINS {
        let p = upload(Kind::Partition, domain, corpus_lines(domain, 0, 40)).await;
        let mut db = pool.acquire().await.unwrap();
        mixpool::jobs::train::ensure(&mut db, base.id, recipe.id, p.id)
            .await
            .unwrap();
        partitions.push(p.id);
    }
    // About 40 kB of held-out documents (the first 2,000 characters of each), taken from
    // every domain in turn.
    let mut eval_lines = Vec::new();
    let (mut bytes, mut row) = (0, 40);
    'fill: loop {
        for domain in DOMAINS {
            let line = corpus_lines(domain, row, 1).remove(0);
            let doc: Value = serde_json::from_str(&line).unwrap();
            let text: String = doc["text"].as_str().unwrap().chars().take(2000).collect();
            bytes += text.len();
            eval_lines.push(serde_json::json!({"text": text, "domain": domain}).to_string());
            if bytes >= eval_bytes {
                break 'fill;
            }
        }
        row += 1;
    }
    let eval_set = upload(Kind::EvalSet, "held-out", eval_lines).await;
    let worker = Worker::new(
        pool.clone(),
        store.clone(),
        device,
        "bench".into(),
        dirs.1.path(),
        mixpool::worker::default_resident_bytes(device),
        0,
    )
    .unwrap();
    let worker = Worker {
        lease: std::time::Duration::from_secs(600),
        ..worker
    };
    while worker.try_run_one().await.unwrap() {}
    memory("training the unit models");

    let mut all = mixture::subsets(DOMAINS.len(), 1, DOMAINS.len());
    all.truncate(limit);
    let mixtures: Vec<Mixture> = all
        .iter()
        .map(|s| {
            let ids: Vec<Uuid> = s.iter().map(|&i| partitions[i]).collect();
            Mixture::new(&ids, None, Weighting::Uniform).unwrap()
        })
        .collect();
    let sample = sample.min(mixtures.len());
    println!(
        "{} mixtures of 8 `{preset}` unit models ({:.2}M parameters each) on a {:.1} kB eval set, {}, {} thread(s)",
        mixtures.len(),
        LoadedModel::init(config.clone(), 0, tch::Device::Cpu)
            .unwrap()
            .parameters() as f64
            / 1e6,
        eval_set.bytes as f64 / 1e3,
        mixpool::engine::device::name(device),
        tch::get_num_threads(),
    );

    // 1. One sweep, in shards of 32.
    let eval = EvalConfig::default();
    let sweep = Sweep {
        id: Uuid::new_v4(),
        base_id: base.id,
        recipe_id: recipe.id,
        weighting: "uniform".into(),
        proxy: "average".into(),
        eval_set_ids: vec![eval_set.id],
        eval_config: serde_json::to_value(&eval).unwrap(),
        eval_config_sha256: eval_config_sha256(&eval),
        request: Value::Null,
        mixtures: mixtures.len() as i32,
        created_at: chrono::Utc::now(),
    };
    let list: Vec<SweepMixture> = mixtures.iter().map(SweepMixture::from).collect();
    let started = Instant::now();
    mixpool::jobs::sweep::queue(&pool, &sweep, &list, 32)
        .await
        .unwrap();
    while worker.try_run_one().await.unwrap() {}
    let sweep_wall = started.elapsed().as_secs_f64();
    let sweep_forward = job_seconds(&pool, "sweep", "/shard/eval_seconds").await;
    let sweep_merge = job_seconds(&pool, "sweep", "/shard/merge_seconds").await;
    let sweep_load = job_seconds(&pool, "sweep", "/shard/load_seconds").await;
    let shards: i64 = sqlx::query_scalar("select count(*) from jobs where kind = 'sweep'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let peak_resident: f64 = sqlx::query_scalar(
        "select max((result->'shard'->>'peak_resident_bytes')::float8) from jobs where kind = 'sweep'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let swept: i64 = sqlx::query_scalar("select count(*) from scores")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(swept as usize, mixtures.len());
    sqlx::query("delete from scores")
        .execute(&pool)
        .await
        .unwrap();
    memory("the sweep");

    // 1a. Small shards, before and after the worker cache: each shard of the worker that
    // keeps nothing fetches, verifies and loads its unit models; the other's first shard does.
    // The largest mixtures, so that every shard merges most of the eight units (as most
    // shards of a full sweep do).
    let mut largest = mixture::subsets(DOMAINS.len(), 1, DOMAINS.len());
    largest.reverse();
    largest.truncate(limit);
    let spread: Vec<SweepMixture> = largest
        .iter()
        .map(|s| {
            let ids: Vec<Uuid> = s.iter().map(|&i| partitions[i]).collect();
            SweepMixture::from(&Mixture::new(&ids, None, Weighting::Uniform).unwrap())
        })
        .collect();
    let mut small = Vec::new();
    for (label, cache_bytes) in [("keeps nothing", 0), ("worker cache", 64 << 30)] {
        let cached = Worker::new(
            pool.clone(),
            store.clone(),
            device,
            format!("bench-{cache_bytes}"),
            &dirs.1.path().join(format!("cache-{cache_bytes}")),
            mixpool::worker::default_resident_bytes(device),
            cache_bytes,
        )
        .unwrap();
        let sweep = Sweep {
            id: Uuid::new_v4(),
            ..sweep.clone()
        };
        let started = Instant::now();
        let jobs = mixpool::jobs::sweep::queue(&pool, &sweep, &spread, small_shard)
            .await
            .unwrap();
        while cached.try_run_one().await.unwrap() {}
        let wall = started.elapsed().as_secs_f64();
        let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
        let sum = |pointer: &'static str| {
            let pool = pool.clone();
            let ids = ids.clone();
            async move {
                let results: Vec<Value> =
                    sqlx::query_scalar("select result from jobs where id = any($1)")
                        .bind(&ids)
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                results
                    .iter()
                    .filter_map(|r| r.pointer(pointer).and_then(Value::as_f64))
                    .sum::<f64>()
            }
        };
        let forward = sum("/shard/eval_seconds").await;
        let load = sum("/shard/load_seconds").await;
        let fetched = sum("/fetched/bytes_fetched").await;
        cached.kept.clear().await;
        small.push((label, jobs.len(), wall, forward, load, fetched));
        sqlx::query("delete from scores")
            .execute(&pool)
            .await
            .unwrap();
        memory(&format!("the sweep in shards of {small_shard}, {label}"));
    }

    // 1b. The same mixtures by the ensemble proxy: first with no per-token NLLs stored (a
    // forward pass per unit model), then again once they are (none).
    let mut ensemble_runs = Vec::new();
    for _ in 0..2 {
        let sweep = Sweep {
            id: Uuid::new_v4(),
            proxy: "ensemble".into(),
            ..sweep.clone()
        };
        let started = Instant::now();
        let jobs = mixpool::jobs::sweep::queue(&pool, &sweep, &list, 32)
            .await
            .unwrap();
        while worker.try_run_one().await.unwrap() {}
        let wall = started.elapsed().as_secs_f64();
        let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
        let forward: i64 = sqlx::query_scalar(
            "select sum((result->'shard'->>'forward_passes')::int8)::int8 from jobs where id = any($1)",
        )
        .bind(&ids)
        .fetch_one(&pool)
        .await
        .unwrap();
        ensemble_runs.push((wall, forward));
        sqlx::query("delete from scores")
            .execute(&pool)
            .await
            .unwrap();
    }

    memory("the ensemble sweeps");

    // 2. One score job per mixture.
    let started = Instant::now();
    for m in &mixtures[..sample] {
        let request = ScoreRequest {
            base: base.id,
            recipe: recipe.id,
            mixture: m.clone(),
            proxy: mixpool::proxy::Proxy::Average,
            eval_set: eval_set.id,
            eval: eval.clone(),
        };
        scoring::request(&pool, &request).await.unwrap();
        assert!(worker.try_run_one().await.unwrap());
    }
    let jobs_wall = started.elapsed().as_secs_f64();
    let jobs_forward = job_seconds(&pool, "score", "/seconds/eval").await;
    memory("one score job per mixture");

    // 3. The file-based steps of the earlier score job, in-process.
    let units = models::for_partitions(&pool, base.id, recipe.id, &partitions)
        .await
        .unwrap();
    let eval_row = datasets::find(&pool, Kind::EvalSet, "held-out")
        .await
        .unwrap()
        .unwrap();
    let (mut files_forward, started) = (0.0, Instant::now());
    for (i, m) in mixtures[..sample].iter().enumerate() {
        let dir = dirs.1.path().join(format!("files-{i}"));
        let mut inputs = Vec::new();
        for member in &m.members {
            let unit = units
                .iter()
                .find(|u| u.partition_id == member.partition)
                .unwrap();
            let unit_dir = dir.join(unit.id.to_string());
            std::fs::create_dir_all(&unit_dir).unwrap();
            checkpoint::write_config(&unit_dir, &config).unwrap();
            store
                .download_verified(
                    &keys::model(&unit.id, WEIGHTS_FILE),
                    unit.weights_sha256.as_deref().unwrap(),
                    &unit_dir.join(WEIGHTS_FILE),
                )
                .await
                .unwrap();
            inputs.push(unit_dir);
        }
        let compressed = store
            .get_verified(&keys::eval_set(&eval_row.sha256), &eval_row.object_sha256)
            .await
            .unwrap();
        let weights: Vec<f64> = m.members.iter().map(|m| m.weight).collect();
        let merged = dir.join("merged");
        let forward = tokio::task::spawn_blocking(move || {
            let text = data::decompress(compressed.to_vec()).unwrap();
            let docs = data::parse_documents(&text, Some(Format::Jsonl)).unwrap();
            merge_model_dirs(&inputs, &weights, device, &merged).unwrap();
            let model = LoadedModel::load(&merged, device).unwrap();
            let prepared = Prepared::new(&model, &docs, &EvalConfig::default()).unwrap();
            let t = Instant::now();
            prepared.evaluate(&model, EvalConfig::default().batch_size);
            t.elapsed().as_secs_f64()
        })
        .await
        .unwrap();
        files_forward += forward;
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let files_wall = started.elapsed().as_secs_f64();
    memory("the file-based score steps");

    println!(
        "{:<34} {:>9} {:>9} {:>10} {:>19}",
        "path", "mixtures", "wall s", "forward s", "overhead ms/mixture"
    );
    let row = |path: &str, n: usize, wall: f64, forward: f64| {
        println!(
            "{path:<34} {n:>9} {wall:>9.2} {forward:>10.2} {:>19.1}",
            (wall - forward) / n as f64 * 1e3
        )
    };
    row(
        "sweep (resident, shards of 32)",
        mixtures.len(),
        sweep_wall,
        sweep_forward,
    );
    row("one score job per mixture", sample, jobs_wall, jobs_forward);
    let per_second = |wall: f64| mixtures.len() as f64 / wall;
    println!(
        "ensemble sweep: {:.1} mixtures/s with no per-token NLLs stored ({} forward passes), {:.1} mixtures/s once stored ({} forward passes); resident merged sweep {:.1} mixtures/s: {:.1}x and {:.1}x",
        per_second(ensemble_runs[0].0),
        ensemble_runs[0].1,
        per_second(ensemble_runs[1].0),
        ensemble_runs[1].1,
        per_second(sweep_wall),
        sweep_wall / ensemble_runs[0].0,
        sweep_wall / ensemble_runs[1].0,
    );
    row(
        "files (the earlier score job)",
        sample,
        files_wall,
        files_forward,
    );
    println!(
        "the {} largest mixtures, swept in shards of {small_shard} by a worker that keeps nothing and by one with its cache:",
        spread.len()
    );
    println!(
        "sweep in shards of {small_shard}: {:<14} {:>7} {:>9} {:>10} {:>8} {:>11} {:>19}",
        "worker", "shards", "wall s", "forward s", "load s", "fetched MB", "overhead ms/mixture"
    );
    let per_mixture = |wall: f64, forward: f64| (wall - forward) / mixtures.len() as f64 * 1e3;
    for (label, shards, wall, forward, load, fetched) in &small {
        println!(
            "sweep in shards of {small_shard}: {label:<14} {shards:>7} {wall:>9.2} {forward:>10.2} {load:>8.2} {:>11.0} {:>19.1}",
            fetched / 1e6,
            per_mixture(*wall, *forward),
        );
    }
    let (before, after) = (&small[0], &small[1]);
    println!(
        "worker cache: overhead per mixture {:.2}x of the worker that keeps nothing ({:.1} → {:.1} ms), load time {:.2}x",
        per_mixture(after.2, after.3) / per_mixture(before.2, before.3),
        per_mixture(before.2, before.3),
        per_mixture(after.2, after.3),
        after.4 / before.4.max(1e-9),
    );
    println!(
        "sweep: merges {:.1} ms/mixture; {shards} shard(s) fetched their unit models in {sweep_load:.2} s ({:.1} ms/mixture); resident unit models at most {:.1} MB per shard; process peak RSS {:.0} MB",
        sweep_merge / mixtures.len() as f64 * 1e3,
        sweep_load / mixtures.len() as f64 * 1e3,
        peak_resident / 1e6,
        peak_rss_mb()
    );
    drop(pool);
    conn.execute(format!("drop database {name} with (force)").as_str())
        .await
        .unwrap();
}
