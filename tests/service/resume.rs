//! A worker process stopped in the middle of training — killed with SIGKILL, or asked to
//! stop with SIGTERM — and another worker that takes the job (after the lease expires, or at
//! once when the job was released), resumes from the train state mirrored in the store, and
//! ends with the weights an undisturbed run produces.

use std::time::{Duration, Instant};

use bytes::Bytes;
use mixpool::engine::checkpoint::LoadedModel;
use mixpool::engine::data::{self, Format};
use mixpool::engine::model::ModelConfig;
use mixpool::engine::train::{self, Schedule, TrainConfig, TrainOptions};
use mixpool::ingest::{Upload, ingest};
use mixpool::registry::datasets::Kind;
use mixpool::registry::{jobs, models, recipes};
use mixpool::store::{S3Config, Store, keys};
use mixpool::worker::Worker;
use tch::Device;

use crate::helpers::{corpus_path, fresh_db, store_base};

fn settings() -> TrainConfig {
    TrainConfig {
        tokens: 30 * 4096,
        batch_tokens: 4096,
        micro_batch: 16,
        seq_len: 256,
        lr: 1e-3,
        schedule: Schedule::Constant,
        checkpoint_every: 3,
        ..TrainConfig::default()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Stop {
    Kill,
    Term,
}

#[tokio::test]
async fn a_killed_workers_training_job_is_finished_by_another_with_the_same_weights() {
    interrupted_training_ends_with_the_undisturbed_weights(Stop::Kill).await;
}

#[tokio::test]
async fn a_worker_stopped_by_sigterm_releases_its_job_for_another_to_resume() {
    interrupted_training_ends_with_the_undisturbed_weights(Stop::Term).await;
}

async fn interrupted_training_ends_with_the_undisturbed_weights(stop: Stop) {
    let pool = fresh_db().await;
    let database: String = sqlx::query_scalar("select current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let admin = std::env::var("MIXPOOL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let url = format!("{}/{database}", admin.rsplit_once('/').unwrap().0);
    let dirs = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let store_url = format!("file://{}", dirs.0.path().display());
    let store = Store::open(&store_url, &S3Config::default()).unwrap();

    tch::set_num_threads(1);
    let config = ModelConfig::preset("tiny").unwrap();
    let base_id = store_base(&pool, &store, &config, 5, dirs.1.path()).await;
    let mut db = pool.acquire().await.unwrap();
    let recipe = recipes::insert(&mut db, "unit", &settings())
        .await
        .unwrap()
        .into_inner();
    let text: String = std::fs::read_to_string(corpus_path("code_python"))
        .unwrap()
        .lines()
        .take(60)
        .map(|l| format!("{l}\n"))
        .collect();
    let upload = Upload {
        kind: Kind::Partition,
        name: "python".into(),
        domain: None,
        tags: vec![],
        format: Some(Format::Jsonl),
        max_bytes: 1 << 26,
        train: true,
        choices: None,
        text_field: None,
        parquet: false,
    };
    let partition = ingest(
        &pool,
        &store,
        &upload,
        futures::stream::iter(vec![Ok(Bytes::from(text.clone()))]),
    )
    .await
    .unwrap()
    .into_inner();
    let model = mixpool::jobs::train::ensure(&mut db, base_id, recipe.id, partition.id)
        .await
        .unwrap()
        .into_inner();
    let job_id = model.job_id.unwrap();

    // A worker process with a 3-second lease, killed once it is a third of the way through.
    let mut child = crate::helpers::worker_process(&url, &store_url, dirs.2.path(), "train", 3);
    let started = Instant::now();
    loop {
        let job = jobs::get(&pool, job_id).await.unwrap().unwrap();
        if job.progress >= 0.35 {
            break;
        }
        assert!(
            job.state != "succeeded",
            "the worker finished before it could be killed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the worker process made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attempts = match stop {
        Stop::Kill => {
            child.kill().unwrap();
            child.wait().unwrap();
            let killed_at = jobs::get(&pool, job_id).await.unwrap().unwrap();
            assert_eq!(
                (killed_at.state.as_str(), killed_at.attempts),
                ("running", 1)
            );
            // The killed process's files stay until a worker starts in its data folder.
            let left = job_scratch(dirs.2.path(), job_id).expect("the killed job's folder");
            let next = Worker::new(
                pool.clone(),
                store.clone(),
                Device::Cpu,
                "next".into(),
                dirs.2.path(),
                1 << 30,
                1 << 30,
            )
            .unwrap();
            assert!(!left.exists(), "{} outlived its worker", left.display());
            assert_eq!(job_scratch(dirs.2.path(), job_id), None);
            assert!(next.work_dir.starts_with(dirs.2.path().join("work")));
            2
        }
        Stop::Term => {
            // SAFETY: a signal to the child process this test started.
            assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
            let status = child.wait().unwrap();
            assert!(status.success(), "the worker exits cleanly: {status}");
            let released = jobs::get(&pool, job_id).await.unwrap().unwrap();
            assert_eq!(
                (released.state.as_str(), released.attempts),
                ("queued", 0),
                "released without counting the attempt"
            );
            let mirrored = store
                .list(&keys::model(&model.id, "train_state"))
                .await
                .unwrap();
            let states: Vec<_> = mirrored
                .iter()
                .filter(|k| k.ends_with(".safetensors"))
                .collect();
            assert_eq!(
                states.len(),
                1,
                "only the latest train state is kept: {mirrored:?}"
            );
            assert_eq!(
                job_scratch(dirs.2.path(), job_id),
                None,
                "the released job's scratch folder is removed"
            );
            1
        }
    };

    let survivor = Worker::new(
        pool.clone(),
        store.clone(),
        Device::Cpu,
        "survivor".into(),
        dirs.3.path(),
        1 << 30,
        1 << 30,
    )
    .unwrap();
    let worker = Worker {
        kinds: vec!["train"],
        lease: Duration::from_secs(3),
        ..survivor
    };
    while !worker.try_run_one().await.unwrap() {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the job was never reclaimed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let job = jobs::get(&pool, job_id).await.unwrap().unwrap();
    assert_eq!(
        (job.state.as_str(), job.attempts),
        ("succeeded", attempts),
        "{:?}",
        job.error
    );
    let resumed_at = job.result.as_ref().unwrap()["train"]["resumed_at"]
        .as_u64()
        .unwrap();
    assert!(
        resumed_at >= 3,
        "resumed from the mirrored state, not from scratch ({resumed_at})"
    );
    assert!(
        store
            .list(&keys::model(&model.id, "train_state"))
            .await
            .unwrap()
            .is_empty(),
        "the mirror is removed"
    );

    // An undisturbed run on the same base, data and settings.
    let local = LoadedModel::load(dirs.1.path(), Device::Cpu).unwrap();
    let docs = data::parse_documents(text.as_bytes(), Some(Format::Jsonl)).unwrap();
    let tokens = data::tokenize(&docs, &local.tokenizer).unwrap();
    train::train(&local, &tokens, &settings(), TrainOptions::default()).unwrap();
    let model = models::get(&pool, model.id).await.unwrap().unwrap();
    let out = dirs.3.path().join("check");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(dirs.1.path().join("config.json"), out.join("config.json")).unwrap();
    store
        .download_verified(
            &keys::model(&model.id, "model.safetensors"),
            model.weights_sha256.as_ref().unwrap(),
            &out.join("model.safetensors"),
        )
        .await
        .unwrap();
    let resumed = LoadedModel::load(&out, Device::Cpu).unwrap();
    let mut a: Vec<_> = resumed.vs.variables().into_iter().collect();
    let mut b: Vec<_> = local.vs.variables().into_iter().collect();
    a.sort_by(|x, y| x.0.cmp(&y.0));
    b.sort_by(|x, y| x.0.cmp(&y.0));
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.equal(y), "{name} differs from the undisturbed run");
    }
}

/// The scratch folder of job `id` under any worker's folder in `data/work`.
fn job_scratch(data: &std::path::Path, id: uuid::Uuid) -> Option<std::path::PathBuf> {
    let workers = std::fs::read_dir(data.join("work")).ok()?;
    workers
        .flatten()
        .map(|w| w.path().join(format!("job-{id}")))
        .find(|p| p.exists())
}
