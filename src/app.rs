//! The service, built from its settings and a listener: the registry (created and migrated
//! where needed), the object store, the API with its dashboard, the healing pass and, unless
//! `service.worker` is off, one in-process worker. `mixpool serve`, the demo, the
//! experiment, the tests and the benchmarks all start it here, so they run the same thing.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::PgPool;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::PgConnectOptions;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{AppState, SweepLimits, router};
use crate::config::Config;
use crate::registry;
use crate::store::Store;
use crate::worker::Worker;

/// A running service.
pub struct App {
    pub addr: std::net::SocketAddr,
    pub pool: PgPool,
    pub store: Store,
    /// The data folder (the default store and the worker's scratch space).
    pub data: PathBuf,
    stop: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl App {
    /// Waits for the database and the store (saying why every few seconds while either
    /// cannot be used), then serves the API in the background on `listener`, or (`None`)
    /// on the settings' `listen` address, bound only then: a service that cannot work yet
    /// listens on nothing.
    pub async fn build(config: &Config, listener: Option<TcpListener>) -> Result<App> {
        let (pool, store, data) = storage(config).await?;
        let listener = match listener {
            Some(listener) => listener,
            None => {
                let listen = &config.service.listen;
                TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("listening on {listen}"))?
            }
        };
        let (stop, stopped) = watch::channel(false);
        let background = match config.service.worker {
            true => {
                let worker = worker(config, pool.clone(), store.clone(), &data)?;
                Some(tokio::spawn(worker.run(stopped.clone())))
            }
            false => None,
        };
        let mut state = AppState::new(
            pool.clone(),
            store.clone(),
            config.service.max_upload_mb << 20,
            Duration::from_secs(config.service.max_wait_seconds),
        );
        state.open_reads = config.service.open_reads;
        state.sweeps = SweepLimits {
            max_mixtures: config.service.sweep_max_mixtures,
            shard_mixtures: config.service.sweep_shard_mixtures.max(1) as usize,
        };
        state.shutdown = stopped.clone();
        let addr = listener.local_addr()?;
        let healing = tokio::spawn(heal(pool.clone()));
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
            healing.abort();
            if let Some(worker) = background {
                worker.await??;
            }
            Ok(())
        });
        Ok(App {
            addr,
            pool,
            store,
            data,
            stop: Arc::new(stop),
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the service: no new requests; waits and event streams end at once; the worker
    /// finishes its job (or hands a training back) and claims no other.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops the service on SIGTERM or Ctrl-C.
    pub fn stop_on_signal(&self) {
        let stop = self.stop.clone();
        on_signal(move || {
            let _ = stop.send(true);
        });
    }

    /// Until the server and its worker have stopped.
    pub async fn wait(self) -> Result<()> {
        self.task.await?
    }
}

/// Calls `stop` once SIGTERM or Ctrl-C arrives.
pub fn on_signal(stop: impl FnOnce() + Send + 'static) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping");
        stop();
    });
}

/// Connects to the settings' database, creating it when missing, and applies the
/// migrations.
pub async fn database(config: &Config) -> Result<PgPool> {
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
pub async fn storage(config: &Config) -> Result<(PgPool, Store, PathBuf)> {
    let (store, data) = store(config)?;
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

/// The settings' object store (`service.store`, else DATA/store) and the data folder.
pub fn store(config: &Config) -> Result<(Store, PathBuf)> {
    let data = PathBuf::from(&config.service.data);
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let data = data.canonicalize()?;
    let url = match config.service.store.as_str() {
        "" => format!("file://{}", data.join("store").display()),
        url => url.to_string(),
    };
    Ok((Store::open(&url, &config.s3)?, data))
}

/// A worker of every kind on the settings' device (`engine.device`, `engine.threads`).
pub fn worker(
    config: &Config,
    pool: PgPool,
    store: Store,
    data: &std::path::Path,
) -> Result<Worker> {
    let engine = &config.engine;
    if engine.threads > 0 {
        tch::set_num_threads(engine.threads);
    }
    let device = crate::engine::device::parse(&engine.device).map_err(anyhow::Error::msg)?;
    let resident_bytes = match engine.resident_mb {
        0 => crate::worker::default_resident_bytes(device),
        mb => mb << 20,
    };
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    let owner = format!(
        "{host}:{}:{}",
        std::process::id(),
        crate::engine::device::name(device)
    );
    let cache_bytes = engine.cache_mb << 20;
    let worker = Worker::new(
        pool,
        store,
        device,
        owner,
        data,
        resident_bytes,
        cache_bytes,
    )
    .with_context(|| format!("opening the model cache in {}", data.display()))?;
    Ok(Worker {
        lease: Duration::from_secs(config.service.lease_seconds.max(3)),
        ..worker
    })
}

/// How often the service looks for partitions without their unit model (and at start-up).
const HEAL_EVERY: Duration = Duration::from_secs(60);

/// Runs the healing pass ([`crate::jobs::train::heal`]) at start-up and every
/// [`HEAL_EVERY`], for as long as the server runs.
async fn heal(pool: PgPool) {
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
