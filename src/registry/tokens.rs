//! API tokens with scopes. A token is `mpt_<id>_<secret>`: the id finds the row, the secret's
//! sha256 is compared in constant time with the stored one. Secrets are never stored.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::RegistryError;

/// What a token may do; each scope includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, sqlx::Type, clap::ValueEnum,
)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// GET requests (when the server does not leave them open).
    Read,
    /// Uploads, bases, recipes, scores, sweeps, validations, deletes, cancels.
    Write,
    /// `/v1/admin/…`.
    Admin,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        })
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Token {
    pub id: Uuid,
    pub name: String,
    pub scope: Scope,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

const PREFIX: &str = "mpt_";

fn secret_sha256(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// A new token named `name` (unique among live tokens); the token's text is returned once.
pub async fn create(
    pool: &PgPool,
    name: &str,
    scope: Scope,
) -> Result<(Token, String), RegistryError> {
    let mut random = [0u8; 24];
    getrandom::fill(&mut random).expect("the operating system's random source");
    let secret = hex::encode(random);
    let id = Uuid::new_v4();
    let row: Option<Token> = sqlx::query_as(
        "insert into tokens (id, name, scope, secret_sha256) values ($1, $2, $3, $4)
         on conflict do nothing
         returning id, name, scope, created_at, last_used_at, revoked_at",
    )
    .bind(id)
    .bind(name)
    .bind(scope)
    .bind(secret_sha256(&secret))
    .fetch_optional(pool)
    .await?;
    let token = row.ok_or_else(|| RegistryError::NameTaken {
        kind: "token",
        name: name.into(),
    })?;
    Ok((token, format!("{PREFIX}{}_{secret}", id.simple())))
}

/// Every token, live and revoked, oldest first.
pub async fn list(pool: &PgPool) -> Result<Vec<Token>, sqlx::Error> {
    sqlx::query_as(
        "select id, name, scope, created_at, last_used_at, revoked_at from tokens
         order by created_at, id",
    )
    .fetch_all(pool)
    .await
}

/// Revokes the live token named `key` (or with that id); `None` when there is none.
pub async fn revoke(pool: &PgPool, key: &str) -> Result<Option<Token>, sqlx::Error> {
    let id = Uuid::parse_str(key).ok();
    sqlx::query_as(
        "update tokens set revoked_at = now()
         where revoked_at is null and (name = $1 or id = $2)
         returning id, name, scope, created_at, last_used_at, revoked_at",
    )
    .bind(key)
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// The live token `text` is, or `None` (malformed, unknown, wrong secret, revoked). Marks
/// it used at most once a minute.
pub async fn verify(pool: &PgPool, text: &str) -> Result<Option<Token>, sqlx::Error> {
    let Some((id, secret)) = text
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('_'))
    else {
        return Ok(None);
    };
    let Ok(id) = Uuid::try_parse(id) else {
        return Ok(None);
    };
    let row: Option<(Token, Vec<u8>)> = sqlx::query_as::<_, Stored>(
        "select id, name, scope, created_at, last_used_at, revoked_at, secret_sha256
         from tokens where id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    .map(|s| (s.token, s.secret_sha256));
    let Some((token, stored)) = row else {
        return Ok(None);
    };
    let matches: bool = secret_sha256(secret).ct_eq(&stored).into();
    if !matches || token.revoked_at.is_some() {
        return Ok(None);
    }
    if token
        .last_used_at
        .is_none_or(|at| Utc::now() - at > chrono::Duration::minutes(1))
    {
        sqlx::query("update tokens set last_used_at = now() where id = $1")
            .bind(token.id)
            .execute(pool)
            .await?;
    }
    Ok(Some(token))
}

#[derive(sqlx::FromRow)]
struct Stored {
    #[sqlx(flatten)]
    token: Token,
    secret_sha256: Vec<u8>,
}
