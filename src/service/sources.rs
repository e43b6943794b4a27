//! Registering a partition or eval set from objects already in the pool's store: the request
//! checked (the name, the objects there, a Parquet file's text column from its footer), then
//! one `register` job that reads them in place ([`crate::jobs::register`]).

use serde::Deserialize;
use sqlx::PgPool;

use crate::error::{Error, Result};
use crate::ingest::check_name;
use crate::jobs::RegisterJob;
use crate::registry::datasets::{self, Kind};
use crate::registry::jobs::Job;
use crate::sources::{self, SourceFormat};
use crate::store::Store;

/// `POST /v1/partitions` or `/v1/eval-sets` with a JSON body and no `name` parameter.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub name: String,
    /// Keys of the pool's store, read in this order; or
    pub objects: Option<Vec<String>>,
    /// every object under this prefix, in key order.
    pub prefix: Option<String>,
    /// `jsonl` (also gzip or zstd), `text` or `parquet`; by default Parquet when every key
    /// ends in `.parquet`, else JSONL.
    pub format: Option<String>,
    /// Parquet: the column holding the text (default `text`).
    pub text_field: Option<String>,
    /// Partitions only.
    pub domain: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Partitions only: queue the unit model (default true).
    pub train: Option<bool>,
}

/// Where the pool keeps its own objects: never a corpus to read in place.
const OWN_PREFIXES: &[&str] = &[
    "partitions/",
    "evalsets/",
    "tokens/",
    "bases/",
    "models/",
    "exports/",
    "staging/",
];

/// Whether `key` is one of the pool's own objects (rather than data it reads in place).
pub fn is_own(key: &str) -> bool {
    OWN_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Checks the request and queues its `register` job (the active one when the same
/// registration is queued or running).
pub async fn register(
    pool: &PgPool,
    store: &Store,
    kind: Kind,
    request: RegisterRequest,
) -> Result<Job> {
    check_name(&request.name).map_err(|e| Error::invalid("invalid_name", e.to_string()))?;
    if kind == Kind::EvalSet && (request.train.is_some() || request.domain.is_some()) {
        return Err(Error::invalid(
            "invalid_parameter",
            "train and domain apply to partitions, not eval sets",
        ));
    }
    if datasets::find(pool, kind, &request.name).await?.is_some() {
        return Err(Error::conflict(
            "name_taken",
            format!(
                "the {} name {:?} is taken; choose another name",
                kind.noun(),
                request.name
            ),
        ));
    }
    let keys = match (&request.objects, &request.prefix) {
        (Some(objects), None) if !objects.is_empty() => {
            let mut keys = Vec::with_capacity(objects.len());
            for key in objects {
                let size = store.size(key).await?.ok_or_else(|| {
                    Error::unprocessable("no_such_object", format!("{key} is not in the store"))
                })?;
                keys.push((key.clone(), size));
            }
            keys
        }
        (None, Some(prefix)) => {
            let keys: Vec<(String, u64)> = store
                .list_meta(prefix)
                .await?
                .into_iter()
                .map(|o| (o.key, o.size))
                .collect();
            if keys.is_empty() {
                return Err(Error::unprocessable(
                    "no_such_object",
                    format!("no object in the store under {prefix:?}"),
                ));
            }
            keys
        }
        _ => {
            return Err(Error::invalid(
                "invalid_request",
                "name the objects to read: objects (a non-empty list of keys) or prefix, not both",
            ));
        }
    };
    if let Some((key, _)) = keys.iter().find(|(key, _)| is_own(key)) {
        return Err(Error::unprocessable(
            "invalid_object",
            format!("{key} is one of the pool's own objects, not data to read"),
        ));
    }
    let format = match request.format.as_deref() {
        Some(name) => SourceFormat::parse(name)
            .map_err(|message| Error::invalid("invalid_format", message))?,
        None if keys.iter().all(|(k, _)| k.ends_with(".parquet")) => SourceFormat::Parquet,
        None => SourceFormat::Jsonl,
    };
    let text_field = request.text_field.unwrap_or_else(|| "text".into());
    if format != SourceFormat::Parquet && text_field != "text" {
        return Err(Error::invalid(
            "invalid_parameter",
            "text_field names a Parquet column; JSONL's text is its `text` field",
        ));
    }
    if format == SourceFormat::Parquet {
        for (key, size) in &keys {
            if let Err(message) = sources::check_parquet(store, key, *size, &text_field).await? {
                return Err(Error::unprocessable(
                    "invalid_parquet",
                    format!("{key}: {message}"),
                ));
            }
        }
    }
    let job = RegisterJob {
        kind: match kind {
            Kind::Partition => "partition",
            Kind::EvalSet => "eval_set",
        }
        .into(),
        name: request.name,
        domain: request.domain,
        tags: request.tags,
        train: kind == Kind::Partition && request.train.unwrap_or(true),
        format,
        text_field,
        keys: keys.into_iter().map(|(key, _)| key).collect(),
    };
    Ok(crate::jobs::register::queue(pool, &job).await?)
}
