//! The service as `mixpool serve` builds it ([`mixpool::app::App`]), on a random port with
//! a small base and a quick recipe, and the workers that run its jobs: the harness of the
//! HTTP tests.

use std::time::Duration;

use mixpool::api::SweepLimits;
use mixpool::config::Config;
use mixpool::engine::train::{Schedule, TrainConfig};
use mixpool::registry::recipes;
use mixpool::registry::tokens::Scope;
use mixpool::store::{S3Config, Store};
use mixpool::worker::Worker;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use tch::Device;

use crate::helpers::{corpus_path, fresh_db, small_llama, store_base};

pub struct App {
    pub url: String,
    /// Sends `token` with every request.
    pub client: reqwest::Client,
    /// An admin token on this app's database.
    pub token: String,
    pub pool: PgPool,
    pub store: Store,
    /// The store folder, the workers' scratch folder, the base's folder.
    pub _dirs: (tempfile::TempDir, tempfile::TempDir, tempfile::TempDir),
    /// The running service (it stops when dropped).
    pub _service: mixpool::app::App,
}

impl App {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub async fn json(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.unwrap();
        (response.status(), response.json().await.unwrap())
    }

    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
        Self::json(self.client.post(self.url(path)).body(body)).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        Self::json(self.client.get(self.url(path))).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        Self::json(self.client.delete(self.url(path))).await
    }

    pub async fn text(&self, path: &str) -> (StatusCode, String) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    }

    /// Polls until the partition's unit model is trained.
    pub async fn trained(&self, partition: &str) {
        for _ in 0..2400 {
            let (_, body) = self.get(&format!("/v1/partitions/{partition}")).await;
            match body["models"][0]["state"].as_str() {
                Some("ready") => return,
                Some("failed") => panic!("training {partition} failed: {body}"),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        panic!("{partition} was not trained in two minutes");
    }

    pub async fn jobs(&self) -> i64 {
        sqlx::query_scalar("select count(*) from jobs")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// A CPU worker of every kind on this app's database and store.
    pub fn worker(&self, owner: &str) -> Worker {
        let worker = Worker::new(
            self.pool.clone(),
            self.store.clone(),
            Device::Cpu,
            owner.into(),
            &self._dirs.1.path().join(owner),
            1 << 30,
            1 << 30,
        )
        .unwrap();
        Worker {
            lease: Duration::from_secs(30),
            ..worker
        }
    }

    /// Runs `worker` in the background until the test ends.
    pub fn start(worker: Worker) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                if !matches!(worker.try_run_one().await, Ok(true)) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    }

    /// The database's URL, for processes the test starts.
    pub async fn database_url(&self) -> String {
        crate::helpers::database_url(&self.pool).await
    }
}

/// A server with one worker running its jobs.
pub async fn spawn_app() -> App {
    let app = spawn_app_with(SweepLimits::default()).await;
    App::start(app.worker("api-test"));
    app
}

/// A server without workers (tests start their own), with the given sweep settings.
pub async fn spawn_app_with(sweeps: SweepLimits) -> App {
    spawn_app_on(sweeps, None).await
}

/// A server without workers whose store is a fresh prefix of the test bucket on the S3
/// server that `make test` starts.
pub async fn spawn_app_s3() -> App {
    let endpoint = std::env::var("MIXPOOL_TEST_S3_ENDPOINT").expect(
        "MIXPOOL_TEST_S3_ENDPOINT names the S3 server for tests (`scripts/s3.sh` starts one)",
    );
    let s3 = S3Config {
        endpoint: Some(endpoint),
        region: Some("us-east-1".into()),
        access_key_id: Some("mixpool".into()),
        secret_access_key: Some("mixpool-secret".into()),
    };
    let url = format!("s3://mixpool-test/{}", uuid::Uuid::new_v4());
    spawn_app_on(SweepLimits::default(), Some((url, s3))).await
}

async fn spawn_app_on(sweeps: SweepLimits, s3: Option<(String, S3Config)>) -> App {
    let pool = fresh_db().await;
    let dirs = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (url, s3_config) = s3.clone().unwrap_or_else(|| {
        (
            format!("file://{}", dirs.0.path().display()),
            S3Config::default(),
        )
    });
    let store = Store::open(&url, &s3_config).unwrap();
    tch::set_num_threads(1);
    store_base(&pool, &store, &small_llama(), 1, dirs.2.path()).await;
    let mut db = pool.acquire().await.unwrap();
    let recipe = TrainConfig {
        tokens: 8 * 64,
        batch_tokens: 4 * 64,
        micro_batch: 4,
        seq_len: 64,
        lr: 3e-3,
        schedule: Schedule::Constant,
        ..TrainConfig::default()
    };
    recipes::insert(&mut db, "unit", &recipe).await.unwrap();
    drop(db);

    let mut config = settings(&pool, &dirs.0, &dirs.1, sweeps, 120).await;
    if let Some((url, s3)) = s3 {
        config.service.store = url;
        config.s3 = s3;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = mixpool::app::App::build(&config, Some(listener))
        .await
        .unwrap();
    let token = crate::helpers::token(&pool, Scope::Admin).await;
    App {
        url: service.url(),
        client: crate::helpers::client(&token),
        token,
        pool,
        store,
        _dirs: dirs,
        _service: service,
    }
}

/// The settings of a test's service: `pool`'s database, a file store in `store`, scratch
/// space in `data`, uploads of up to 1 MiB, waits of up to `max_wait` seconds, no worker
/// of its own (tests start theirs).
pub async fn settings(
    pool: &PgPool,
    store: &tempfile::TempDir,
    data: &tempfile::TempDir,
    sweeps: SweepLimits,
    max_wait: u64,
) -> Config {
    let mut config = Config::default();
    config.service.database_url = crate::helpers::database_url(pool).await;
    config.service.store = format!("file://{}", store.path().display());
    config.service.data = data.path().display().to_string();
    config.service.max_upload_mb = 1;
    config.service.max_wait_seconds = max_wait;
    config.service.sweep_max_mixtures = sweeps.max_mixtures;
    config.service.sweep_shard_mixtures = sweeps.shard_mixtures as u64;
    config.service.worker = false;
    config
}

/// `lines` documents of a corpus domain, after skipping `skip`.
pub fn corpus(domain: &str, skip: usize, lines: usize) -> String {
    let text = std::fs::read_to_string(corpus_path(domain)).unwrap();
    text.lines()
        .skip(skip)
        .take(lines)
        .map(|l| format!("{l}\n"))
        .collect()
}
