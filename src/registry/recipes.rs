//! Training recipes: a recipe is its settings, so equal settings are one recipe whatever the
//! name, and a name keeps meaning the settings it was first given.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{Created, RegistryError};
use crate::engine::train::TrainConfig;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Recipe {
    pub id: Uuid,
    pub name: String,
    pub config: sqlx::types::Json<TrainConfig>,
    pub config_sha256: String,
    pub created_at: DateTime<Utc>,
}

/// sha256 of the settings' canonical JSON (fields in declaration order, every field present).
pub fn config_sha256(config: &TrainConfig) -> String {
    hex::encode(Sha256::digest(
        serde_json::to_vec(config).expect("settings serialise"),
    ))
}

pub async fn insert(
    db: &mut PgConnection,
    name: &str,
    config: &TrainConfig,
) -> Result<Created<Recipe>, RegistryError> {
    let sha = config_sha256(config);
    let inserted: Option<Recipe> = sqlx::query_as(
        "insert into recipes (id, name, config, config_sha256) values ($1, $2, $3, $4)
         on conflict do nothing returning *",
    )
    .bind(Uuid::new_v4())
    .bind(name)
    .bind(sqlx::types::Json(config))
    .bind(&sha)
    .fetch_optional(&mut *db)
    .await?;
    if let Some(row) = inserted {
        return Ok(Created::New(row));
    }
    let same: Option<Recipe> = sqlx::query_as("select * from recipes where config_sha256 = $1")
        .bind(&sha)
        .fetch_optional(&mut *db)
        .await?;
    same.map(Created::Existing).ok_or(RegistryError::NameTaken {
        kind: "recipe",
        name: name.to_string(),
    })
}

/// By id, or by name when `key` is not a uuid.
pub async fn find(pool: &PgPool, key: &str) -> Result<Option<Recipe>, sqlx::Error> {
    match Uuid::parse_str(key) {
        Ok(id) => {
            sqlx::query_as("select * from recipes where id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await
        }
        Err(_) => {
            sqlx::query_as("select * from recipes where name = $1")
                .bind(key)
                .fetch_optional(pool)
                .await
        }
    }
}

/// The most recently created recipe: the server's default when none is configured.
pub async fn latest<'e>(db: impl sqlx::PgExecutor<'e>) -> Result<Option<Recipe>, sqlx::Error> {
    sqlx::query_as("select * from recipes order by created_at desc, id desc limit 1")
        .fetch_optional(db)
        .await
}

/// Newest first; pass the last row of a page as `before` for the next.
pub async fn list(
    pool: &PgPool,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Recipe>, sqlx::Error> {
    let (at, id) = before.unzip();
    sqlx::query_as(
        "select * from recipes where ($1::timestamptz is null or (created_at, id) < ($1, $2))
         order by created_at desc, id desc limit $3",
    )
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(pool)
    .await
}
