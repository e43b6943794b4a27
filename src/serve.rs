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
    /// The address to listen on, e.g. 127.0.0.1:8080 (port 0: any free port).
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
    /// Job kinds this worker runs, comma-separated (default: every kind).
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(crate::jobs::names()))]
    pub kinds: Vec<String>,
    #[command(flatten)]
    pub service: ServiceArgs,
}

impl WorkerArgs {
    /// The kinds asked for, or every kind.
    pub fn kinds(&self) -> Vec<&'static str> {
        match self.kinds.is_empty() {
            true => crate::jobs::names(),
            false => crate::jobs::names()
                .into_iter()
                .filter(|k| self.kinds.iter().any(|asked| asked == k))
                .collect(),
        }
    }
}

/// Connects to the settings' database (`DATABASE_URL` overrides it), creating it when
/// missing, and applies the migrations.
pub async fn database(config: &Config) -> Result<sqlx::PgPool> {
    let url = &config.service.database_url;
    let shown = without_password(url);
    if !sqlx::Postgres::database_exists(url)
        .await
        .with_context(|| format!("connecting to {shown}"))?
    {
        sqlx::Postgres::create_database(url)
            .await
            .with_context(|| format!("creating the database {shown}"))?;
    }
    let options =
        PgConnectOptions::from_str(url).with_context(|| format!("invalid DATABASE_URL {shown}"))?;
    registry::connect(options)
        .await
        .context("connecting to the registry database")
}

/// `postgres://user:***@host/db` for `postgres://user:secret@host/db`, for messages.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((credentials, host)) if credentials.contains(':') => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_string(),
    }
}

const STARTUP_RETRY: Duration = Duration::from_secs(2);

/// The registry's database and the object store, waited for at start-up: while either cannot
/// be used, one line every few seconds says why. Settings that cannot work (a malformed URL,
/// a refused password) end the start at once.
async fn storage(config: &Config, args: &ServiceArgs) -> Result<(sqlx::PgPool, Store, PathBuf)> {
    let (store, data) = store(config, args)?;
    let pool = loop {
        match database(config).await {
            Ok(pool) => break pool,
            Err(e)
                if e.chain().any(|cause| {
                    cause
                        .downcast_ref::<sqlx::Error>()
                        .is_some_and(registry::is_outage)
                }) =>
            {
                tracing::warn!(
                    "the database cannot be used: {e:#}; retrying in {} s",
                    STARTUP_RETRY.as_secs()
                );
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(STARTUP_RETRY).await;
    };
    while let Err(e) = store.ready().await {
        tracing::warn!(
            "the object store cannot be used: {e}; retrying in {} s",
            STARTUP_RETRY.as_secs()
        );
        tokio::time::sleep(STARTUP_RETRY).await;
    }
    Ok((pool, store, data))
}

/// The settings' object store (`--store`, else the settings file, else DATA/store) and the
/// data folder.
pub fn store(config: &Config, args: &ServiceArgs) -> Result<(Store, PathBuf)> {
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
    kinds: Vec<&'static str>,
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
    /// The registry's database and the data folder, for the demo and the experiment.
    pub pool: sqlx::PgPool,
    pub data: PathBuf,
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
    let (pool, store, data) = storage(&config, &args.service).await?;
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
            crate::jobs::names(),
        )?;
        Some(tokio::spawn(worker.run(stopped.clone())))
    };
    let mut state = AppState::new(
        pool.clone(),
        store,
        config.service.max_upload_mb << 20,
        Duration::from_secs(config.service.max_wait_seconds),
    );
    state.open_reads = config.service.open_reads;
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
    state.shutdown = stopped.clone();
    tokio::spawn(heal(state.pool.clone()));
    let grace = Duration::from_secs(config.service.shutdown_seconds);
    let task = tokio::spawn(async move {
        let mut on_stop = stopped.clone();
        let server = axum::serve(listener, router(state)).with_graceful_shutdown(async move {
            let _ = on_stop.wait_for(|stop| *stop).await;
        });
        let mut on_stop = stopped.clone();
        tokio::select! {
            served = server => served?,
            _ = async {
                let _ = on_stop.wait_for(|stop| *stop).await;
                tokio::time::sleep(grace).await;
            } => tracing::warn!("connections still open {} s after the stop signal: closed", grace.as_secs()),
        }
        if let Some(worker) = background {
            worker.await??;
        }
        Ok(())
    });
    Ok(Running {
        addr,
        pool,
        data,
        task,
    })
}

/// How often `serve` looks for partitions without their unit model (and at start-up).
const HEAL_EVERY: Duration = Duration::from_secs(60);

/// Runs the healing pass ([`registry::models::heal`]) at start-up and every
/// [`HEAL_EVERY`], for as long as the server runs.
async fn heal(pool: sqlx::PgPool) {
    let mut every = tokio::time::interval(HEAL_EVERY);
    loop {
        every.tick().await;
        match crate::jobs::train::heal(&pool).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("queued the unit models of {n} partitions that had none"),
            Err(e) => tracing::warn!("healing pass: {e}"),
        }
    }
}

pub async fn run_worker(args: WorkerArgs) -> Result<()> {
    let config = Config::load()?;
    let kinds = args.kinds();
    let (pool, store, data) = storage(&config, &args.service).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        worker: WorkerArgs,
    }

    #[test]
    fn a_worker_runs_every_kind_unless_told_otherwise() {
        // A deployment of `serve --no-worker` and plain `worker`s (docker-compose.yml) must
        // run validations and exports too.
        let all = Cli::try_parse_from(["worker"]).unwrap().worker.kinds();
        assert_eq!(all, crate::jobs::names());
        let some = Cli::try_parse_from(["worker", "--kinds", "score,sweep"]).unwrap();
        assert_eq!(some.worker.kinds(), ["score", "sweep"]);
        assert!(Cli::try_parse_from(["worker", "--kinds", "nonsense"]).is_err());
    }
}
