//! The registry: Postgres tables for the pool and its job queue. It knows nothing about
//! tensors; the worker connects it to the engine.

pub mod bases;
pub mod datasets;
pub mod fsck;
pub mod jobs;
pub mod logprobs;
pub mod metrics;
pub mod models;
pub mod overview;
pub mod recipes;
pub mod scores;
pub mod searches;
pub mod sweeps;
pub mod tokens;
pub mod validations;
pub mod workers;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// Notifications of registry changes that cached answers may depend on (a deleted
/// partition); the payload names the change, e.g. `deleted:partition:<id>`.
pub const CHANGES: &str = "mixpool_registry";

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects with bounded waits (a pool that cannot connect fails fast instead of hanging)
/// and applies any pending migrations.
pub async fn connect(options: PgConnectOptions) -> Result<PgPool, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// Whether the database answers a trivial statement (readiness).
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("select 1").execute(pool).await.map(|_| ())
}

/// Whether an error says the database cannot be reached now (connection exceptions 08…, a
/// server shutting down or starting up 57P…) rather than that a statement was wrong.
pub fn is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::Io(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// An insert that found an identical row already there says so, so that the API can answer
/// 201 for new rows and 200 for existing ones.
#[derive(Debug, Clone)]
pub enum Created<T> {
    New(T),
    Existing(T),
}

impl<T> Created<T> {
    pub fn is_new(&self) -> bool {
        matches!(self, Created::New(_))
    }

    pub fn into_inner(self) -> T {
        match self {
            Created::New(t) | Created::Existing(t) => t,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The name is used by a row with different content.
    #[error("the {kind} name {name:?} is taken by different content; choose another name")]
    NameTaken { kind: &'static str, name: String },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}
