//! Base models: an architecture config and weights in the store (`bases/<id>/…`). A base
//! created from a preset and pre-trained by a job is `pending` until its weights are stored.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::RegistryError;
use super::jobs::Job;
use crate::engine::model::ModelConfig;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Base {
    pub id: Uuid,
    pub name: String,
    pub config: Json<ModelConfig>,
    /// pending, ready or failed.
    pub state: String,
    pub weights_sha256: Option<String>,
    /// Side files (tokenizer, imported config) stored beside the weights: name → sha256.
    pub files: Json<BTreeMap<String, String>>,
    pub created_at: DateTime<Utc>,
}

/// Registers a base. `weights_sha256` is given when the weights are already stored (the base
/// is then ready), `None` for a base a job will pre-train. The id is chosen by the caller,
/// because the weights' keys contain it and are written first.
pub async fn insert(
    db: &mut PgConnection,
    id: Uuid,
    name: &str,
    config: &ModelConfig,
    weights_sha256: Option<&str>,
) -> Result<Base, RegistryError> {
    let state = if weights_sha256.is_some() {
        "ready"
    } else {
        "pending"
    };
    let row: Option<Base> = sqlx::query_as(
        "insert into bases (id, name, config, state, weights_sha256) values ($1, $2, $3, $4, $5)
         on conflict (name) do nothing returning *",
    )
    .bind(id)
    .bind(name)
    .bind(Json(config))
    .bind(state)
    .bind(weights_sha256)
    .fetch_optional(db)
    .await?;
    row.ok_or(RegistryError::NameTaken {
        kind: "base",
        name: name.to_string(),
    })
}

/// Marks a pending base ready once its weights are stored (in the pre-training job's
/// transaction).
pub async fn mark_ready(
    db: &mut PgConnection,
    id: Uuid,
    weights_sha256: &str,
) -> Result<Base, sqlx::Error> {
    sqlx::query_as(
        "update bases set state = 'ready', weights_sha256 = $2 where id = $1 returning *",
    )
    .bind(id)
    .bind(weights_sha256)
    .fetch_one(db)
    .await
}

/// Records the side files stored beside a base's weights (in the transaction that inserts
/// it, once they are stored).
pub async fn set_files(
    db: &mut PgConnection,
    id: Uuid,
    files: &BTreeMap<String, String>,
) -> Result<Base, sqlx::Error> {
    sqlx::query_as("update bases set files = $2 where id = $1 returning *")
        .bind(id)
        .bind(Json(files))
        .fetch_one(db)
        .await
}

/// A pending base whose pre-training ended without weights.
pub async fn mark_failed(db: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("update bases set state = 'failed' where id = $1 and state = 'pending'")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// By id, or by name when `key` is not a uuid.
pub async fn find(pool: &PgPool, key: &str) -> Result<Option<Base>, sqlx::Error> {
    match Uuid::parse_str(key) {
        Ok(id) => {
            sqlx::query_as("select * from bases where id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await
        }
        Err(_) => {
            sqlx::query_as("select * from bases where name = $1")
                .bind(key)
                .fetch_optional(pool)
                .await
        }
    }
}

/// The most recent ready base: the server's default when none is configured.
pub async fn latest_ready(pool: &PgPool) -> Result<Option<Base>, sqlx::Error> {
    sqlx::query_as(
        "select * from bases where state = 'ready' order by created_at desc, id desc limit 1",
    )
    .fetch_optional(pool)
    .await
}

/// The most recent base still being pre-trained.
pub async fn latest_pending(pool: &PgPool) -> Result<Option<Base>, sqlx::Error> {
    sqlx::query_as(
        "select * from bases where state = 'pending' order by created_at desc, id desc limit 1",
    )
    .fetch_optional(pool)
    .await
}

/// Newest first; pass the last row of a page as `before` for the next.
pub async fn list(
    pool: &PgPool,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Base>, sqlx::Error> {
    let (at, id) = before.unzip();
    sqlx::query_as(
        "select * from bases where ($1::timestamptz is null or (created_at, id) < ($1, $2))
         order by created_at desc, id desc limit $3",
    )
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The latest job that pre-trains the base, if it was pre-trained by one.
pub async fn pretrain_job(pool: &PgPool, id: Uuid) -> Result<Option<Job>, sqlx::Error> {
    sqlx::query_as(
        "select * from jobs where kind = 'pretrain' and payload->>'base' = $1
         order by created_at desc limit 1",
    )
    .bind(id.to_string())
    .fetch_optional(pool)
    .await
}
