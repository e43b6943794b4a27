use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

/// A new, migrated database named `mixpool_test_<uuid>`; `scripts/postgres.sh cleanup` drops them.
pub async fn fresh_db() -> PgPool {
    let url = std::env::var("MIXPOOL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let admin = PgConnectOptions::from_str(&url).expect("a postgres:// URL");
    let mut conn = PgConnection::connect_with(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url}: {e} (run `scripts/postgres.sh`)"));
    let name = format!("mixpool_test_{}", Uuid::new_v4().simple());
    conn.execute(format!("create database {name}").as_str())
        .await
        .unwrap();
    mixpool::registry::connect(admin.database(&name))
        .await
        .unwrap()
}

/// A new token with `scope` on `pool`'s database.
pub async fn token(pool: &PgPool, scope: mixpool::registry::tokens::Scope) -> String {
    let name = format!("test-{scope}-{}", Uuid::new_v4().simple());
    mixpool::registry::tokens::create(pool, &name, scope)
        .await
        .unwrap()
        .1
}

/// An HTTP client that sends `token` with every request.
pub fn client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// The URL of `pool`'s database, for processes a test starts.
pub async fn database_url(pool: &PgPool) -> String {
    let database: String = sqlx::query_scalar("select current_database()")
        .fetch_one(pool)
        .await
        .unwrap();
    let admin = std::env::var("MIXPOOL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    format!("{}/{database}", admin.rsplit_once('/').unwrap().0)
}

/// A `mixpool serve` process on a free port, killed when dropped; its log goes to a file.
pub struct Server {
    pub url: String,
    pub process: std::process::Child,
    log: tempfile::NamedTempFile,
}

impl Server {
    /// Starts `mixpool serve --no-worker` with `env` (over this process's environment, less
    /// its AWS_* and MIXPOOL_* variables) and waits until it answers /healthz.
    pub async fn start(data: &std::path::Path, env: &[(String, String)]) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mixpool"));
        command
            .args(["serve", "--no-worker", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data")
            .arg(data)
            .stdout(std::process::Stdio::null())
            .stderr(log.reopen().unwrap());
        for (name, _) in std::env::vars() {
            if name.starts_with("AWS_") || name.starts_with("MIXPOOL_") {
                command.env_remove(name);
            }
        }
        let mut server = Server {
            url: format!("http://127.0.0.1:{port}"),
            process: command.envs(env.iter().cloned()).spawn().unwrap(),
            log,
        };
        let client = reqwest::Client::new();
        let started = std::time::Instant::now();
        while client
            .get(format!("{}/healthz", server.url))
            .send()
            .await
            .is_err()
        {
            if let Some(status) = server.process.try_wait().unwrap() {
                panic!("serve exited ({status}): {}", server.log());
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "serve did not start in 30 s: {}",
                server.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        server
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A domain file of the corpus (`MIXPOOL_CORPUS`, else `../shared/corpus`).
pub fn corpus_path(domain: &str) -> std::path::PathBuf {
    let dir = std::env::var_os("MIXPOOL_CORPUS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus")
        });
    dir.join(format!("{domain}.jsonl"))
}

/// A small Llama with grouped-query attention, fast enough for jobs in tests.
pub fn small_llama() -> mixpool::engine::model::ModelConfig {
    mixpool::engine::model::ModelConfig::Llama(mixpool::engine::model::LlamaConfig {
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 64,
        ..Default::default()
    })
}

/// Initialises a model from `seed` into `dir`, stores its weights and registers it as the
/// ready base named "base"; returns its id.
pub async fn store_base(
    pool: &PgPool,
    store: &mixpool::store::Store,
    config: &mixpool::engine::model::ModelConfig,
    seed: u64,
    dir: &std::path::Path,
) -> Uuid {
    use mixpool::engine::checkpoint::LoadedModel;
    tch::set_num_threads(1);
    LoadedModel::init(config.clone(), seed, tch::Device::Cpu)
        .unwrap()
        .save(dir)
        .unwrap();
    let id = Uuid::new_v4();
    let key = mixpool::store::keys::base(&id, "model.safetensors");
    let weights = store
        .put_file(&dir.join("model.safetensors"), &key)
        .await
        .unwrap();
    let mut db = pool.acquire().await.unwrap();
    mixpool::registry::bases::insert(&mut db, id, "base", config, Some(&weights.sha256))
        .await
        .unwrap();
    id
}

/// A `mixpool worker` process for `kinds` on one CPU thread, with leases of `lease_seconds`
/// (its settings file goes in `data`), on the given database and store.
pub fn worker_process(
    database_url: &str,
    store_url: &str,
    data: &std::path::Path,
    kinds: &str,
    lease_seconds: u64,
) -> std::process::Child {
    std::fs::create_dir_all(data).unwrap();
    let config_file = data.join("mixpool.toml");
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"))
            .unwrap();
    std::fs::write(
        &config_file,
        shipped.replace(
            "lease_seconds = 60",
            &format!("lease_seconds = {lease_seconds}"),
        ),
    )
    .unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_mixpool"))
        .args([
            "worker",
            "--kinds",
            kinds,
            "--device",
            "cpu",
            "--threads",
            "1",
        ])
        .args(["--store", store_url])
        .arg("--data")
        .arg(data)
        .env("DATABASE_URL", database_url)
        .env("MIXPOOL_CONFIG", &config_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}
