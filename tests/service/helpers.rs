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

/// A domain file of the corpus (`MIXPOOL_CORPUS`, else `../shared/corpus`).
pub fn corpus_path(domain: &str) -> std::path::PathBuf {
    let dir = std::env::var_os("MIXPOOL_CORPUS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus")
        });
    dir.join(format!("{domain}.jsonl"))
}
