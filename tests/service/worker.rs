use std::time::Duration;

use bytes::Bytes;
use mixpool::engine::checkpoint::LoadedModel;
use mixpool::engine::data::{self, Format};
use mixpool::engine::model::{LlamaConfig, ModelConfig};
use mixpool::engine::train::{self, Schedule, TrainConfig, TrainOptions};
use mixpool::ingest::{Upload, ingest};
use mixpool::registry::datasets::Kind;
use mixpool::registry::{bases, jobs, models, recipes};
use mixpool::store::{S3Config, Store, keys};
use mixpool::worker::Worker;
use tch::Device;
use uuid::Uuid;

use crate::helpers::fresh_db;

fn config() -> ModelConfig {
    ModelConfig::Llama(LlamaConfig {
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 64,
        ..LlamaConfig::default()
    })
}

fn settings() -> TrainConfig {
    TrainConfig {
        tokens: 12 * 128,
        batch_tokens: 4 * 64,
        micro_batch: 2,
        seq_len: 64,
        lr: 3e-3,
        schedule: Schedule::Constant,
        checkpoint_every: 3,
        ..TrainConfig::default()
    }
}

struct Setup {
    worker: Worker,
    base_dir: tempfile::TempDir,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// A database, a local store holding a small base, and a worker on the CPU.
async fn setup() -> Setup {
    let pool = fresh_db().await;
    let (store_dir, work_dir, base_dir) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let store = Store::open(
        &format!("file://{}", store_dir.path().display()),
        &S3Config::default(),
    )
    .unwrap();
    tch::set_num_threads(1);
    LoadedModel::init(config(), 3, Device::Cpu)
        .unwrap()
        .save(base_dir.path())
        .unwrap();
    let id = Uuid::new_v4();
    let stored = store
        .put_file(
            &base_dir.path().join("model.safetensors"),
            &keys::base(&id, "model.safetensors"),
        )
        .await
        .unwrap();
    bases::insert(
        &mut pool.acquire().await.unwrap(),
        id,
        "base",
        &config(),
        Some(&stored.sha256),
    )
    .await
    .unwrap();
    let worker = Worker {
        pool,
        store,
        device: Device::Cpu,
        owner: "test-worker".into(),
        kinds: vec!["train"],
        lease: Duration::from_secs(30),
        work_dir: work_dir.path().to_path_buf(),
    };
    Setup {
        worker,
        base_dir,
        _dirs: (store_dir, work_dir),
    }
}

async fn partition(s: &Setup, name: &str, text: String) -> Uuid {
    let upload = Upload {
        kind: Kind::Partition,
        name: name.into(),
        domain: None,
        tags: vec![],
        format: Some(Format::Jsonl),
        max_bytes: 1 << 24,
    };
    let body = futures::stream::iter(vec![Ok(Bytes::from(text))]);
    ingest(&s.worker.pool, &s.worker.store, &upload, body)
        .await
        .unwrap()
        .into_inner()
        .id
}

fn corpus_head(lines: usize) -> String {
    let path = crate::helpers::corpus_path("code_python");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .take(lines)
        .map(|l| format!("{l}\n"))
        .collect()
}

#[tokio::test]
async fn a_train_job_produces_the_unit_model_that_local_training_produces() {
    let s = setup().await;
    let pool = &s.worker.pool;
    let text = corpus_head(20);
    let partition = partition(&s, "python", text.clone()).await;
    let recipe = recipes::insert(&mut pool.acquire().await.unwrap(), "unit", &settings())
        .await
        .unwrap()
        .into_inner();
    let base = bases::find(pool, "base").await.unwrap().unwrap();
    let model = models::ensure(
        &mut pool.acquire().await.unwrap(),
        base.id,
        recipe.id,
        partition,
    )
    .await
    .unwrap()
    .into_inner();

    assert!(s.worker.try_run_one().await.unwrap());
    let job = jobs::get(pool, model.job_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    assert_eq!(
        (job.progress, job.message.as_deref()),
        (1.0, Some("step 6/6"))
    );
    let model = models::get(pool, model.id).await.unwrap().unwrap();
    assert_eq!(model.state, "ready");
    assert_eq!(
        job.result.unwrap()["weights_sha256"],
        model.weights_sha256.clone().unwrap()
    );

    // The stored weights equal an engine run on the same base, data and recipe.
    let out = tempfile::tempdir().unwrap();
    std::fs::copy(
        s.base_dir.path().join("config.json"),
        out.path().join("config.json"),
    )
    .unwrap();
    s.worker
        .store
        .download_verified(
            &keys::model(&model.id, "model.safetensors"),
            model.weights_sha256.as_ref().unwrap(),
            &out.path().join("model.safetensors"),
        )
        .await
        .unwrap();
    let trained = LoadedModel::load(out.path(), Device::Cpu).unwrap();
    let local = LoadedModel::load(s.base_dir.path(), Device::Cpu).unwrap();
    let docs = data::parse_documents(text.as_bytes(), Some(Format::Jsonl)).unwrap();
    let tokens = data::tokenize(&docs, &local.tokenizer).unwrap();
    train::train(&local, &tokens, &settings(), TrainOptions::default()).unwrap();
    let mut a: Vec<_> = trained.vs.variables().into_iter().collect();
    let mut b: Vec<_> = local.vs.variables().into_iter().collect();
    a.sort_by(|x, y| x.0.cmp(&y.0));
    b.sort_by(|x, y| x.0.cmp(&y.0));
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.equal(y), "{name} differs from local training");
    }

    assert!(!s.worker.try_run_one().await.unwrap(), "the queue is empty");
    assert!(
        std::fs::read_dir(&s.worker.work_dir)
            .unwrap()
            .next()
            .is_none(),
        "scratch space is cleaned up"
    );
}

#[tokio::test]
async fn a_partition_too_small_to_train_on_fails_its_job_for_good() {
    let s = setup().await;
    let pool = &s.worker.pool;
    let partition = partition(&s, "tiny", "{\"text\": \"too short\"}\n".into()).await;
    let recipe = recipes::insert(&mut pool.acquire().await.unwrap(), "unit", &settings())
        .await
        .unwrap()
        .into_inner();
    let base = bases::find(pool, "base").await.unwrap().unwrap();
    let model = models::ensure(
        &mut pool.acquire().await.unwrap(),
        base.id,
        recipe.id,
        partition,
    )
    .await
    .unwrap()
    .into_inner();
    assert!(s.worker.try_run_one().await.unwrap());
    let job = jobs::get(pool, model.job_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (job.state.as_str(), job.attempts),
        ("failed", 1),
        "bad data is not retried"
    );
    assert!(job.error.unwrap().contains("training needs at least"));
    assert_eq!(
        models::get(pool, model.id).await.unwrap().unwrap().state,
        "failed"
    );
}
