//! The registry: Postgres tables for the pool and its job queue. It knows nothing about
//! tensors; the worker connects it to the engine.

pub mod jobs;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

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
