//! `mixpool serve`, `mixpool worker` and `mixpool migrate`: the service's roles, wired from
//! settings. Roles share nothing but the database and the object store.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::PgConnectOptions;
use tokio::sync::watch;

use crate::api::{AppState, router};
use crate::config::Config;
use crate::jobs::kind::JobKind;
use crate::local::Engine;
use crate::registry;
use crate::store::Store;
use crate::worker::Worker;

#[derive(Args, Clone)]
pub struct ServiceArgs {
    /// The folder for the default store and the workers' scratch space.
    #[arg(long, env = "MIXPOOL_DATA")]
    pub data: Option<PathBuf>,
    /// file:///path or s3://bucket/prefix (default file://DATA/store).
    #[arg(long, env = "MIXPOOL_STORE")]
    pub store: Option<String>,
    #[command(flatten)]
    pub engine: Engine,
}

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long, env = "MIXPOOL_LISTEN")]
    pub listen: Option<String>,
    /// Run the API only, without the in-process worker.
    #[arg(long)]
    pub no_worker: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
}

#[derive(Args)]
pub struct WorkerArgs {
    /// Job kinds this worker runs (pretrain, train, score, sweep).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "pretrain,train,score,sweep"
    )]
    pub kinds: Vec<String>,
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// Connects to the settings' database (`DATABASE_URL` overrides it), creating it when
/// missing, and applies the migrations.
pub async fn database(config: &Config) -> Result<sqlx::PgPool> {
    let url = &config.service.database_url;
    if !sqlx::Postgres::database_exists(url)
        .await
        .with_context(|| format!("connecting to {url}"))?
    {
        sqlx::Postgres::create_database(url)
            .await
            .with_context(|| format!("creating the database {url}"))?;
    }
    let options =
        PgConnectOptions::from_str(url).with_context(|| format!("invalid DATABASE_URL {url}"))?;
    registry::connect(options)
        .await
        .context("connecting to the registry database")
}

fn store(config: &Config, args: &ServiceArgs) -> Result<(Store, PathBuf)> {
    let data = args
        .data
        .clone()
        .unwrap_or_else(|| PathBuf::from(&config.service.data));
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let data = data.canonicalize()?;
    let url = match args.store.clone().filter(|s| !s.is_empty()) {
        Some(url) => url,
        None if !config.service.store.is_empty() => config.service.store.clone(),
        None => format!("file://{}", data.join("store").display()),
    };
    Ok((Store::open(&url, &config.s3)?, data))
}

fn worker(
    config: &Config,
    args: &ServiceArgs,
    pool: sqlx::PgPool,
    store: Store,
    data: &std::path::Path,
    kinds: Vec<JobKind>,
) -> Result<Worker> {
    let device = args.engine.device()?;
    let resident_bytes = match config.engine.resident_mb {
        0 => crate::worker::default_resident_bytes(device),
        mb => mb << 20,
    };
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    Ok(Worker {
        pool,
        store,
        device,
        owner: format!(
            "{host}:{}:{}",
            std::process::id(),
            crate::engine::device::name(device)
        ),
        kinds,
        lease: Duration::from_secs(config.service.lease_seconds.max(3)),
        work_dir: data.join("work"),
        resident_bytes,
    })
}

pub async fn migrate() -> Result<()> {
    database(&Config::load()?).await?;
    tracing::info!("migrations applied");
    Ok(())
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    start(args).await?.wait().await
}

/// A server started by [`start`]: its address, and the task that runs it until SIGTERM.
pub struct Running {
    pub addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Running {
    /// Until the server and its worker have stopped.
    pub async fn wait(self) -> Result<()> {
        self.task.await?
    }
}

/// Binds the listener and starts the API (and, unless `--no-worker`, one worker) in the
/// background.
pub async fn start(args: ServeArgs) -> Result<Running> {
    let config = Config::load()?;
    let pool = database(&config).await?;
    let (store, data) = store(&config, &args.service)?;
    let stopped = stop_on_signal();
    let background = if args.no_worker {
        None
    } else {
        let worker = worker(
            &config,
            &args.service,
            pool.clone(),
            store.clone(),
            &data,
            JobKind::ALL.to_vec(),
        )?;
        Some(tokio::spawn(worker.run(stopped.clone())))
    };
    let mut state = AppState::new(
        pool,
        store,
        config.service.max_upload_mb << 20,
        Duration::from_secs(config.service.max_wait_seconds),
    );
    state.sweeps = crate::api::SweepLimits {
        max_mixtures: config.service.sweep_max_mixtures,
        shard_mixtures: config.service.sweep_shard_mixtures.max(1) as usize,
    };
    let listen = args.listen.unwrap_or(config.service.listen.clone());
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!("mixpool serving on http://{addr}");
    let mut on_stop = stopped.clone();
    let task = tokio::spawn(async move {
        axum::serve(listener, router(state))
            .with_graceful_shutdown(async move {
                let _ = on_stop.wait_for(|stop| *stop).await;
            })
            .await?;
        if let Some(worker) = background {
            worker.await??;
        }
        Ok(())
    });
    Ok(Running { addr, task })
}

pub async fn run_worker(args: WorkerArgs) -> Result<()> {
    let config = Config::load()?;
    let kinds = args
        .kinds
        .iter()
        .map(|k| k.parse::<JobKind>().map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let pool = database(&config).await?;
    let (store, data) = store(&config, &args.service)?;
    let worker = worker(&config, &args.service, pool, store, &data, kinds)?;
    tracing::info!(owner = worker.owner, "worker started");
    worker.run(stop_on_signal()).await
}

/// Turns true on SIGTERM or Ctrl-C: the server stops taking requests, the worker finishes
/// its current job and claims no other.
fn stop_on_signal() -> watch::Receiver<bool> {
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping");
        let _ = stop.send(true);
    });
    stopped
}
