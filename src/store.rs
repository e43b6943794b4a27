//! Object storage: a local folder (`file:///path`) by default, or S3 (`s3://bucket/prefix`).
//!
//! Uploads are streamed, never held whole in memory, with their sha256 computed on the way;
//! content-addressed objects are first written under `staging/` and then moved to their
//! final key, so a final key always holds a complete object. Reads verify the sha256 that
//! the registry recorded; a mismatch is an error, never a wrong answer.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use object_store::ClientConfigKey;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, WriteMultipart};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// The key layout (see DESIGN.md's storage section).
pub mod keys {
    pub fn partition(sha256: &str) -> String {
        format!("partitions/{sha256}/data.jsonl.zst")
    }
    pub fn tokens(tokenizer: &str, sha256: &str) -> String {
        format!("tokens/{tokenizer}/{sha256}.u32")
    }
    pub fn base(id: &uuid::Uuid, file: &str) -> String {
        format!("bases/{id}/{file}")
    }
    pub fn model(id: &uuid::Uuid, file: &str) -> String {
        format!("models/{id}/{file}")
    }
    /// A unit model's per-token NLLs on an eval set under an evaluation setting, named by
    /// their own sha256 as well.
    pub fn logprobs(
        unit: &uuid::Uuid,
        eval_set: &uuid::Uuid,
        config: &str,
        sha256: &str,
    ) -> String {
        let (config, sha256) = (
            &config[..16.min(config.len())],
            &sha256[..16.min(sha256.len())],
        );
        model(unit, &format!("logprobs/{eval_set}-{config}-{sha256}.nll"))
    }
    pub fn eval_set(sha256: &str) -> String {
        format!("evalsets/{sha256}/data.jsonl.zst")
    }
    /// A merged model exported as a tar of a Hugging Face directory, named by a digest of
    /// what was merged.
    pub fn export(digest: &str) -> String {
        format!("exports/{digest}.tar")
    }
}

/// S3 settings; unset ones fall back to the usual `AWS_*` environment variables.
#[derive(Clone, Default, PartialEq, serde::Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// e.g. http://127.0.0.1:8333 for an S3-compatible server; empty for AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "***"),
            )
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store URL {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("object {key}: sha256 is {actual}, the registry recorded {expected}")]
    Checksum {
        key: String,
        expected: String,
        actual: String,
    },
    #[error("object store: {}", causes(.0))]
    Backend(#[from] object_store::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// Whether the store's disk is full (ENOSPC somewhere in the error's causes).
    pub fn is_full(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && (io.kind() == std::io::ErrorKind::StorageFull
                    || io.raw_os_error() == Some(libc::ENOSPC))
            {
                return true;
            }
            cause = e.source();
        }
        false
    }
}

/// An error with the causes that its own message leaves out ("HTTP error: builder error"
/// says little without "URL scheme is not allowed").
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        source = cause.source();
    }
    text
}

/// An object as a listing shows it.
#[derive(Debug, Clone)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// Since it was last written (`None` when the clocks disagree).
    pub age: Option<std::time::Duration>,
}

/// A stored object: its key, content hash and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub key: String,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
}

impl Store {
    /// Opens `file:///path` (the folder is created) or `s3://bucket[/prefix]`.
    pub fn open(url: &str, s3: &S3Config) -> Result<Self, StoreError> {
        let bad = |message: String| StoreError::Url {
            url: url.to_string(),
            message,
        };
        let inner: Arc<dyn ObjectStore> = if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad(
                    "a file:// URL needs an absolute path (file:///data/store)".into(),
                ));
            }
            std::fs::create_dir_all(path).map_err(|e| bad(e.to_string()))?;
            Arc::new(LocalFileSystem::new_with_prefix(path).map_err(|e| bad(e.to_string()))?)
        } else if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket: use s3://bucket/prefix".into()));
            }
            // An unreachable store fails a request within seconds (a 503 the caller can
            // retry) rather than after object_store's default three minutes of retries.
            let retry = object_store::RetryConfig {
                max_retries: 3,
                retry_timeout: std::time::Duration::from_secs(10),
                ..Default::default()
            };
            // The environment's settings (AWS_ENDPOINT_URL, AWS_ALLOW_HTTP, …) stay; only
            // what it leaves unset, or what the settings file names, is added.
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry);
            let client = |key| AmazonS3ConfigKey::Client(key);
            if builder
                .get_config_value(&client(ClientConfigKey::ConnectTimeout))
                .is_none()
            {
                builder = builder.with_config(client(ClientConfigKey::ConnectTimeout), "5s");
            }
            let endpoint = s3
                .endpoint
                .clone()
                .or_else(|| builder.get_config_value(&AmazonS3ConfigKey::Endpoint));
            if let Some(endpoint) = &endpoint {
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                    return Err(bad(format!(
                        "S3 endpoint {endpoint:?} must be an http:// or https:// URL"
                    )));
                }
                // An http:// endpoint is plain HTTP by choice, wherever it was named.
                if endpoint.starts_with("http://") {
                    builder = builder.with_allow_http(true);
                }
                builder = builder.with_endpoint(endpoint);
            }
            if let Some(region) = &s3.region {
                builder = builder.with_region(region);
            }
            if let Some(key) = &s3.access_key_id {
                builder = builder.with_access_key_id(key);
            }
            if let Some(secret) = &s3.secret_access_key {
                builder = builder.with_secret_access_key(secret);
            }
            let store = builder.build().map_err(|e| bad(e.to_string()))?;
            match prefix.trim_matches('/') {
                "" => Arc::new(store),
                prefix => Arc::new(PrefixStore::new(store, prefix)),
            }
        } else {
            return Err(bad("use file:///path or s3://bucket/prefix".into()));
        };
        Ok(Store { inner })
    }

    /// Streams `data` into the store, hashing it on the way, then moves it to the key that
    /// `key_for(sha256)` names. Storing the same bytes twice yields the same key.
    pub async fn put_stream<S, E>(
        &self,
        data: S,
        key_for: impl FnOnce(&str) -> String,
    ) -> Result<Stored, StoreError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: Into<std::io::Error>,
    {
        let staging = Key::from(format!("staging/{}", uuid::Uuid::new_v4()));
        let mut upload = WriteMultipart::new(self.inner.put_multipart(&staging).await?);
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let mut data = std::pin::pin!(data);
        // Whatever fails (the body, or the store: a full disk), the staged parts go.
        let failed = loop {
            let chunk = match data.next().await {
                None => break None,
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => break Some(StoreError::Io(e.into())),
            };
            hasher.update(&chunk);
            bytes += chunk.len() as u64;
            if let Err(e) = upload.wait_for_capacity(4).await {
                break Some(e.into());
            }
            upload.put(chunk);
        };
        if let Some(e) = failed {
            if let Err(abort) = upload.abort().await {
                tracing::warn!("removing the staged upload {staging}: {abort}");
            }
            return Err(e);
        }
        upload.finish().await?;
        let sha256 = hex::encode(hasher.finalize());
        let key = key_for(&sha256);
        self.inner
            .rename(&staging, &Key::from(key.as_str()))
            .await?;
        Ok(Stored { key, sha256, bytes })
    }

    /// Stores a local file under `key` (streamed in 8 MiB parts).
    pub async fn put_file(&self, path: &Path, key: &str) -> Result<Stored, StoreError> {
        let file = tokio::fs::File::open(path).await?;
        let stream = file_chunks(file);
        let key = key.to_string();
        self.put_stream(stream, move |_| key).await
    }

    /// A small object whose integrity the caller checks itself (a manifest of hashes);
    /// `None` when there is none.
    pub async fn get_optional(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        match self.inner.get(&Key::from(key)).await {
            Ok(found) => Ok(Some(found.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores a small object whole.
    pub async fn put_bytes(&self, key: &str, data: Bytes) -> Result<Stored, StoreError> {
        let sha256 = hex::encode(Sha256::digest(&data));
        let bytes = data.len() as u64;
        self.inner.put(&Key::from(key), data.into()).await?;
        Ok(Stored {
            key: key.to_string(),
            sha256,
            bytes,
        })
    }

    /// The object's bytes, checked against `sha256`.
    pub async fn get_verified(&self, key: &str, sha256: &str) -> Result<Bytes, StoreError> {
        let data = self.inner.get(&Key::from(key)).await?.bytes().await?;
        verify(key, sha256, &hex::encode(Sha256::digest(&data)))?;
        Ok(data)
    }

    /// Streams the object into `path`, checked against `sha256`; the file appears (by rename)
    /// only when complete and correct.
    pub async fn download_verified(
        &self,
        key: &str,
        sha256: &str,
        path: &Path,
    ) -> Result<(), StoreError> {
        let partial = path.with_extension("partial");
        let mut file = tokio::fs::File::create(&partial).await?;
        let mut stream = self.inner.get(&Key::from(key)).await?.into_stream();
        let mut hasher = Sha256::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        drop(file);
        if let Err(e) = verify(key, sha256, &hex::encode(hasher.finalize())) {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
        tokio::fs::rename(&partial, path).await?;
        Ok(())
    }

    /// An object's bytes and their sha256 (for objects no row records yet); `None` when
    /// there is no such object.
    pub async fn get_hashed(&self, key: &str) -> Result<Option<(Bytes, String)>, StoreError> {
        match self.inner.get(&Key::from(key)).await {
            Ok(found) => {
                let data = found.bytes().await?;
                let sha256 = hex::encode(Sha256::digest(&data));
                Ok(Some((data, sha256)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// An object's size; `None` when there is no such object.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self.inner.head(&Key::from(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Bytes `range` of an object.
    pub async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, StoreError> {
        Ok(self.inner.get_range(&Key::from(key), range).await?)
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.inner.delete(&Key::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Keys under `prefix` (for tests and housekeeping).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut listing = self.inner.list(Some(&Key::from(prefix)));
        while let Some(meta) = listing.next().await {
            keys.push(meta?.location.to_string());
        }
        keys.sort();
        Ok(keys)
    }

    /// Every object under `prefix` with its size and age, by key.
    pub async fn list_meta(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut objects = Vec::new();
        let mut listing = self.inner.list(Some(&Key::from(prefix)));
        let now = chrono::Utc::now();
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            objects.push(ObjectMeta {
                key: meta.location.to_string(),
                size: meta.size,
                age: (now - meta.last_modified).to_std().ok(),
            });
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    /// The sha256 of an object, streamed; `None` when there is no such object.
    pub async fn sha256(&self, key: &str) -> Result<Option<String>, StoreError> {
        let mut stream = match self.inner.get(&Key::from(key)).await {
            Ok(got) => got.into_stream(),
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut hasher = Sha256::new();
        while let Some(chunk) = stream.next().await {
            hasher.update(&chunk?);
        }
        Ok(Some(hex::encode(hasher.finalize())))
    }

    /// Whether the store answers (readiness): a missing object is an answer.
    pub async fn ready(&self) -> Result<(), StoreError> {
        match self.inner.head(&Key::from("readiness-probe")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn verify(key: &str, expected: &str, actual: &str) -> Result<(), StoreError> {
    if expected == actual {
        return Ok(());
    }
    Err(StoreError::Checksum {
        key: key.to_string(),
        expected: expected.to_string(),
        actual: actual.to_string(),
    })
}

/// A file as a stream of 8 MiB chunks.
fn file_chunks(file: tokio::fs::File) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 8 << 20];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]).await {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => return Some((Err(e), file)),
            }
        }
        if filled == 0 {
            return None;
        }
        buf.truncate(filled);
        Some((Ok(Bytes::from(buf)), file))
    })
}
