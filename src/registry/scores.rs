//! Scores: the proxy perplexity of a mixture's merged unit models on an evaluation set.
//! Their inputs are immutable, so a score is computed once and cached forever.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use sha2::{Digest, Sha256};

use crate::engine::eval::EvalConfig;

/// sha256 of the evaluation settings' canonical JSON.
pub fn eval_config_sha256(config: &EvalConfig) -> String {
    hex::encode(Sha256::digest(
        serde_json::to_vec(config).expect("settings serialise"),
    ))
}

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

pub async fn get<'e>(
    db: impl sqlx::PgExecutor<'e>,
    key: &ScoreKey,
) -> Result<Option<Score>, sqlx::Error> {
    by_key(key).fetch_optional(db).await
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

/// Every stored score of a base and recipe under one evaluation setting, of every proxy:
/// (proxy, mixture key, weighting, eval set, result).
pub async fn all_for(
    pool: &PgPool,
    base: Uuid,
    recipe: Uuid,
    eval_config_sha256: &str,
) -> Result<Vec<(String, String, String, Uuid, Value)>, sqlx::Error> {
    sqlx::query_as(
        "select merge_method, mixture_key, weighting, eval_set_id, result from scores
         where base_id = $1 and recipe_id = $2 and eval_config_sha256 = $3",
    )
    .bind(base)
    .bind(recipe)
    .bind(eval_config_sha256)
    .fetch_all(pool)
    .await
}

/// What a leaderboard ranks by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rank {
    Perplexity,
    BitsPerByte,
    /// Sets of questions: bits per byte of the gold answers, and accuracy.
    BitsPerByteGold,
    Accuracy,
    Size,
    Created,
}

impl Rank {
    pub const NAMES: [&str; 6] = [
        "perplexity",
        "bits_per_byte",
        "bits_per_byte_gold",
        "accuracy",
        "size",
        "created",
    ];

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "perplexity" => Rank::Perplexity,
            "bits_per_byte" => Rank::BitsPerByte,
            "bits_per_byte_gold" => Rank::BitsPerByteGold,
            "accuracy" => Rank::Accuracy,
            "size" => Rank::Size,
            "created" => Rank::Created,
            _ => return None,
        })
    }

    /// The `order by` of a rank (a fixed string per variant: never the caller's text).
    fn order(self, descending: bool) -> &'static str {
        match (self, descending) {
            (Rank::Perplexity, false) => "(result->>'perplexity')::float8 asc, id",
            (Rank::Perplexity, true) => "(result->>'perplexity')::float8 desc, id",
            (Rank::BitsPerByte, false) => "(result->>'bits_per_byte')::float8 asc, id",
            (Rank::BitsPerByte, true) => "(result->>'bits_per_byte')::float8 desc, id",
            (Rank::BitsPerByteGold, false) => "(result->>'bits_per_byte_gold')::float8 asc, id",
            (Rank::BitsPerByteGold, true) => "(result->>'bits_per_byte_gold')::float8 desc, id",
            (Rank::Accuracy, false) => "(result->>'accuracy')::float8 asc, id",
            (Rank::Accuracy, true) => "(result->>'accuracy')::float8 desc, id",
            (Rank::Size, false) => {
                "jsonb_array_length(mixture) asc, (result->>'perplexity')::float8, id"
            }
            (Rank::Size, true) => {
                "jsonb_array_length(mixture) desc, (result->>'perplexity')::float8, id"
            }
            (Rank::Created, false) => "created_at asc, id",
            (Rank::Created, true) => "created_at desc, id",
        }
    }
}

/// One page of the merge scores of a base and recipe on one eval set (every weighting),
/// ranked; `size` keeps mixtures of that many partitions. Returns the number of scores the
/// filter keeps, and the page.
pub async fn leaderboard(
    pool: &PgPool,
    scope: &ScoreKey,
    size: Option<i32>,
    rank: Rank,
    descending: bool,
    limit: i64,
    offset: i64,
) -> Result<(i64, Vec<Score>), sqlx::Error> {
    const WHERE: &str = "where base_id = $1 and recipe_id = $2 and eval_set_id = $3
          and merge_method = $4 and eval_config_sha256 = $5
          and ($6::integer is null or jsonb_array_length(mixture) = $6)";
    let total: i64 = sqlx::query_scalar(&format!("select count(*) from scores {WHERE}"))
        .bind(scope.base_id)
        .bind(scope.recipe_id)
        .bind(scope.eval_set_id)
        .bind(&scope.merge_method)
        .bind(&scope.eval_config_sha256)
        .bind(size)
        .fetch_one(pool)
        .await?;
    let rows = sqlx::query_as(&format!(
        "select * from scores {WHERE} order by {} limit $7 offset $8",
        rank.order(descending)
    ))
    .bind(scope.base_id)
    .bind(scope.recipe_id)
    .bind(scope.eval_set_id)
    .bind(&scope.merge_method)
    .bind(&scope.eval_config_sha256)
    .bind(size)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    Ok((total, rows))
}

/// The perplexities stored for `mixture_keys` in `scope` (its own mixture key is ignored),
/// by key.
pub async fn perplexities(
    pool: &PgPool,
    scope: &ScoreKey,
    mixture_keys: &[String],
) -> Result<std::collections::HashMap<String, f64>, sqlx::Error> {
    let rows: Vec<(String, f64)> = sqlx::query_as(
        "select mixture_key, (result->>'perplexity')::float8 from scores
         where base_id = $1 and recipe_id = $2 and eval_set_id = $3 and weighting = $4
           and merge_method = $5 and eval_config_sha256 = $6 and mixture_key = any($7)",
    )
    .bind(scope.base_id)
    .bind(scope.recipe_id)
    .bind(scope.eval_set_id)
    .bind(&scope.weighting)
    .bind(&scope.merge_method)
    .bind(&scope.eval_config_sha256)
    .bind(mixture_keys)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}
