//! Stored per-token NLLs of unit models on eval sets (the ensemble proxy's input): which
//! object holds each, with its checksum.

use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Logprobs {
    pub model_id: Uuid,
    pub eval_set_id: Uuid,
    pub eval_config_sha256: String,
    pub object: String,
    pub sha256: String,
    pub tokens: i64,
}

/// Those stored for `models` × `eval_sets` under one evaluation setting.
pub async fn find(
    pool: &PgPool,
    models: &[Uuid],
    eval_sets: &[Uuid],
    eval_config_sha256: &str,
) -> Result<Vec<Logprobs>, sqlx::Error> {
    sqlx::query_as(
        "select model_id, eval_set_id, eval_config_sha256, object, sha256, tokens
         from unit_logprobs
         where model_id = any($1) and eval_set_id = any($2) and eval_config_sha256 = $3",
    )
    .bind(models)
    .bind(eval_sets)
    .bind(eval_config_sha256)
    .fetch_all(pool)
    .await
}

/// Records an object written, replacing the row of one recorded before (whose object is
/// then unused, and `fsck --repair` removes it).
pub async fn upsert(pool: &PgPool, row: &Logprobs) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into unit_logprobs (model_id, eval_set_id, eval_config_sha256, object, sha256, tokens)
         values ($1, $2, $3, $4, $5, $6)
         on conflict (model_id, eval_set_id, eval_config_sha256) do update
         set object = excluded.object, sha256 = excluded.sha256, tokens = excluded.tokens,
             created_at = now()",
    )
    .bind(row.model_id)
    .bind(row.eval_set_id)
    .bind(&row.eval_config_sha256)
    .bind(&row.object)
    .bind(&row.sha256)
    .bind(row.tokens)
    .execute(pool)
    .await?;
    Ok(())
}
