//! The run's own servers: a pool's `serve` and worker processes (with its own database,
//! store and admin token) and the S3 server that the run restarts. The soak run
//! (`examples/soak`) starts its pool with this too, on a file store.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use sqlx::migrate::MigrateDatabase;

pub const PARTITIONS: usize = 6;
const LEASE_SECONDS: &str = "3";

pub struct Pool {
    pub name: &'static str,
    pub database: String,
    pub store: String,
    pub data: tempfile::TempDir,
    /// The `serve --no-worker` processes, each on its own port, behind one database and store.
    pub apis: Vec<Api>,
    /// The first server's address (`urls` has them all).
    pub url: String,
    pub urls: Vec<String>,
    /// Sends the pool's admin token with every request.
    pub client: reqwest::Client,
    pub workers: Vec<Child>,
    /// Worker processes started so far (each gets a scratch folder of its own).
    started: usize,
}

pub struct Api {
    pub process: Child,
    pub port: u16,
}

impl Drop for Pool {
    fn drop(&mut self) {
        let apis = self.apis.iter_mut().map(|a| &mut a.process);
        for child in self.workers.iter_mut().chain(apis) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn bin() -> PathBuf {
    PathBuf::from(std::env::var("MIXPOOL_BIN").expect("MIXPOOL_BIN names the mixpool binary"))
}

/// The environment of every process of a pool: its database, its store, short leases.
fn command(pool_db: &str, store: &str, data: &Path, log: &Path) -> Command {
    let mut c = Command::new(bin());
    c.env("DATABASE_URL", pool_db)
        .env("MIXPOOL_STORE", store)
        .env("MIXPOOL_DATA", data)
        .env("MIXPOOL_LEASE_SECONDS", LEASE_SECONDS)
        .env("AWS_ENDPOINT_URL", s3_endpoint())
        .env("AWS_ACCESS_KEY_ID", "mixpool")
        .env("AWS_SECRET_ACCESS_KEY", "mixpool-secret")
        .env("AWS_REGION", "us-east-1")
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("a log file"),
        );
    c
}

/// The run's S3 server's ports (SeaweedFS also listens on each plus 10,000 for gRPC), apart
/// from those of the tests' server (`scripts/s3.sh`), which may be running beside it.
const S3_PORT: u16 = 21333;

pub fn s3_endpoint() -> String {
    format!("http://127.0.0.1:{S3_PORT}")
}

/// The run's own S3 server (SeaweedFS), which it kills and starts again on the same data.
pub struct S3Server {
    pub dir: tempfile::TempDir,
    pub process: Option<Child>,
}

impl S3Server {
    pub async fn start() -> Result<S3Server> {
        let mut server = S3Server {
            dir: tempfile::tempdir()?,
            process: None,
        };
        server.spawn().await?;
        Ok(server)
    }

    pub async fn spawn(&mut self) -> Result<()> {
        let weed = std::env::var("MIXPOOL_WEED").context("MIXPOOL_WEED names weed")?;
        let log = std::fs::File::create(self.dir.path().join("weed.log"))?;
        let child = Command::new(weed)
            .arg("mini")
            .arg(format!("-dir={}", self.dir.path().join("data").display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-admin.ui=false",
                "-webdav=false",
            ])
            .args([
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-bucket=mixpool-test",
            ])
            .arg(format!("-s3.port={S3_PORT}"))
            .args([
                "-master.port=22333",
                "-volume.port=21080",
                "-filer.port=21888",
            ])
            .env("AWS_ACCESS_KEY_ID", "mixpool")
            .env("AWS_SECRET_ACCESS_KEY", "mixpool-secret")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.process = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", S3_PORT)).is_err() {
            ensure!(
                started.elapsed() < Duration::from_secs(60),
                "the S3 server did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Killed outright, then started again on the same data.
    pub async fn restart(&mut self) -> Result<()> {
        if let Some(mut old) = self.process.take() {
            old.kill()?;
            old.wait()?;
        }
        self.spawn().await
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

impl Pool {
    /// A pool of `servers` API servers and `workers` worker processes on a new database
    /// (`chaos_NAME` on the PostgreSQL server at `admin`, made anew) and on the run's S3
    /// server, or with `file_store` on a file store in its data folder.
    pub async fn start(
        name: &'static str,
        admin: &str,
        servers: usize,
        workers: usize,
        file_store: bool,
    ) -> Result<Pool> {
        let database = format!("{admin}/chaos_{name}");
        if sqlx::Postgres::database_exists(&database).await? {
            sqlx::Postgres::drop_database(&database).await?;
        }
        let data = tempfile::tempdir()?;
        let store = if file_store {
            format!("file://{}", data.path().join("store").display())
        } else {
            format!("s3://mixpool-test/chaos-{name}-{}", uuid::Uuid::new_v4())
        };
        let log = data.path().join("api.log");
        // The registry, and a token for the run's requests (writes need one).
        let out = command(&database, &store, data.path(), &log)
            .arg("migrate")
            .status()?;
        ensure!(out.success(), "{name}: mixpool migrate failed: {out}");
        let out = command(&database, &store, data.path(), &log)
            .args(["token", "create", "--name", "chaos", "--scope", "admin"])
            .stdout(Stdio::piped())
            .output()?;
        ensure!(out.status.success(), "{name}: no token: {}", out.status);
        let token = String::from_utf8(out.stdout)?.trim().to_string();
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse()?,
        );
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .build()?;
        let mut pool = Pool {
            name,
            database,
            store,
            data,
            apis: Vec::new(),
            url: String::new(),
            urls: Vec::new(),
            client,
            workers: Vec::new(),
            started: 0,
        };
        for _ in 0..servers {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let process = pool.serve(port)?;
            pool.apis.push(Api { process, port });
            pool.urls.push(format!("http://127.0.0.1:{port}"));
        }
        pool.url = pool.urls[0].clone();
        for url in &pool.urls {
            let started = Instant::now();
            while pool
                .client
                .get(format!("{url}/readyz"))
                .send()
                .await
                .is_err()
            {
                if started.elapsed() > Duration::from_secs(60) {
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    anyhow::bail!("{name}: serve did not start in 60 s:\n{log}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        for _ in 0..workers {
            pool.add_worker()?;
        }
        Ok(pool)
    }

    fn serve(&self, port: u16) -> Result<Child> {
        let log = self.data.path().join("api.log");
        Ok(command(&self.database, &self.store, self.data.path(), &log)
            .args([
                "serve",
                "--no-worker",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .spawn()?)
    }

    pub fn add_worker(&mut self) -> Result<()> {
        let log = self.data.path().join("workers.log");
        let scratch = self.data.path().join(format!("worker-{}", self.started));
        self.started += 1;
        let child = command(&self.database, &self.store, &scratch, &log)
            .args(["worker", "--device", "cpu", "--threads", "1"])
            .spawn()?;
        self.workers.push(child);
        Ok(())
    }

    /// SIGKILLs worker `i` and starts a new one in its place.
    pub fn kill_worker(&mut self, i: usize) -> Result<()> {
        let mut old = self.workers.swap_remove(i);
        let _ = old.kill();
        old.wait()?;
        self.add_worker()
    }

    /// SIGKILLs API server `i` and starts it again on its port, without waiting for it: its
    /// clients retry, or go to the other server meanwhile.
    pub fn kill_api(&mut self, i: usize) -> Result<()> {
        let _ = self.apis[i].process.kill();
        self.apis[i].process.wait()?;
        self.apis[i].process = self.serve(self.apis[i].port)?;
        Ok(())
    }
}
