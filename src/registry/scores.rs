//! Scores: the proxy perplexity of a mixture's merged unit models on an evaluation set.
//! Their inputs are immutable, so a score is computed once and cached forever.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Everything a score depends on: the unique key of the `scores` table.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ScoreKey {
    pub base_id: Uuid,
    pub recipe_id: Uuid,
    pub mixture_key: String,
    pub weighting: String,
    pub merge_method: String,
    pub eval_set_id: Uuid,
    pub eval_config_sha256: String,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Score {
    pub id: Uuid,
    pub base_id: Uuid,
    pub recipe_id: Uuid,
    pub mixture_key: String,
    pub mixture: Value,
    pub weighting: String,
    pub merge_method: String,
    pub eval_set_id: Uuid,
    pub eval_config: Value,
    pub eval_config_sha256: String,
    pub result: Value,
    pub created_at: DateTime<Utc>,
}

const BY_KEY: &str =
    "select * from scores where base_id = $1 and recipe_id = $2 and mixture_key = $3
    and weighting = $4 and merge_method = $5 and eval_set_id = $6 and eval_config_sha256 = $7";

fn by_key(
    key: &ScoreKey,
) -> sqlx::query::QueryAs<'_, sqlx::Postgres, Score, sqlx::postgres::PgArguments> {
    sqlx::query_as(BY_KEY)
        .bind(key.base_id)
        .bind(key.recipe_id)
        .bind(&key.mixture_key)
        .bind(&key.weighting)
        .bind(&key.merge_method)
        .bind(key.eval_set_id)
        .bind(&key.eval_config_sha256)
}

pub async fn get(pool: &PgPool, key: &ScoreKey) -> Result<Option<Score>, sqlx::Error> {
    by_key(key).fetch_optional(pool).await
}

/// Stores a computed score; when the same key is already stored (a concurrent job got there
/// first), keeps and returns the stored one.
pub async fn insert(
    db: &mut PgConnection,
    key: &ScoreKey,
    mixture: &Value,
    eval_config: &Value,
    result: &Value,
) -> Result<Score, sqlx::Error> {
    let inserted: Option<Score> = sqlx::query_as(
        "insert into scores (id, base_id, recipe_id, mixture_key, mixture, weighting, merge_method,
                             eval_set_id, eval_config, eval_config_sha256, result)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         on conflict do nothing returning *",
    )
    .bind(Uuid::new_v4())
    .bind(key.base_id)
    .bind(key.recipe_id)
    .bind(&key.mixture_key)
    .bind(mixture)
    .bind(&key.weighting)
    .bind(&key.merge_method)
    .bind(key.eval_set_id)
    .bind(eval_config)
    .bind(&key.eval_config_sha256)
    .bind(result)
    .fetch_optional(&mut *db)
    .await?;
    match inserted {
        Some(score) => Ok(score),
        None => by_key(key).fetch_one(&mut *db).await,
    }
}

/// Which of `mixture_keys` × `eval_sets` are stored, for the base, recipe, weighting, merge
/// method and evaluation settings of `scope` (its own mixture key and eval set are ignored).
pub async fn stored_pairs(
    pool: &PgPool,
    scope: &ScoreKey,
    mixture_keys: &[String],
    eval_sets: &[Uuid],
) -> Result<Vec<(String, Uuid)>, sqlx::Error> {
    sqlx::query_as(
        "select mixture_key, eval_set_id from scores
         where base_id = $1 and recipe_id = $2 and weighting = $3 and merge_method = $4
           and eval_config_sha256 = $5 and mixture_key = any($6) and eval_set_id = any($7)",
    )
    .bind(scope.base_id)
    .bind(scope.recipe_id)
    .bind(&scope.weighting)
    .bind(&scope.merge_method)
    .bind(&scope.eval_config_sha256)
    .bind(mixture_keys)
    .bind(eval_sets)
    .fetch_all(pool)
    .await
}

/// Every stored merge score of a base and recipe under one evaluation setting:
/// (mixture key, weighting, eval set, result).
pub async fn all_for(
    pool: &PgPool,
    base: Uuid,
    recipe: Uuid,
    merge_method: &str,
    eval_config_sha256: &str,
) -> Result<Vec<(String, String, Uuid, Value)>, sqlx::Error> {
    sqlx::query_as(
        "select mixture_key, weighting, eval_set_id, result from scores
         where base_id = $1 and recipe_id = $2 and merge_method = $3 and eval_config_sha256 = $4",
    )
    .bind(base)
    .bind(recipe)
    .bind(merge_method)
    .bind(eval_config_sha256)
    .fetch_all(pool)
    .await
}
