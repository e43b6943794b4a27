//! A worker's cache of the model weights it fetched from the store (unit models, bases,
//! Fisher estimates): files under its data folder named by their sha256, bounded in bytes,
//! the least recently used removed first. An object is verified once, as it is fetched, and
//! written into the cache in the background while the job goes on with it; a file appears in
//! the cache (by rename) only once complete and correct, so a hit is read as it is. What a fetch did is counted twice: for the worker (the metrics) and for the
//! job that asked ([`Fetched`], in its result).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Serialize;

use crate::store::{Store, StoreError};

/// Fetch counters: a job's own, or the worker's since it started.
#[derive(Debug, Default)]
pub struct Fetched {
    hits: AtomicU64,
    misses: AtomicU64,
    bytes: AtomicU64,
    evictions: AtomicU64,
}

/// [`Fetched`] read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FetchCounts {
    /// Objects read from the cache.
    pub hits: u64,
    /// Objects fetched from the store.
    pub misses: u64,
    /// Bytes fetched from the store.
    pub bytes_fetched: u64,
    /// Cached objects removed to keep the cache within its bound.
    pub evictions: u64,
}

impl Fetched {
    pub fn counts(&self) -> FetchCounts {
        FetchCounts {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes_fetched: self.bytes.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    fn miss(&self, bytes: u64) {
        self.misses.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn evicted(&self, n: u64) {
        self.evictions.fetch_add(n, Ordering::Relaxed);
    }
}

/// What the cache holds, and when each file was last used.
#[derive(Default)]
struct Index {
    files: HashMap<String, Entry>,
    bytes: u64,
    clock: u64,
}

struct Entry {
    bytes: u64,
    used: u64,
}

pub struct ModelCache {
    dir: PathBuf,
    /// The most bytes the cache keeps; 0 keeps nothing (every fetch goes to the store).
    limit: u64,
    index: Mutex<Index>,
    /// Files being written.
    writes: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Since the worker started.
    pub fetched: Fetched,
}

impl ModelCache {
    /// The cache in `dir` (created), holding at most `limit` bytes: files an earlier run
    /// left are kept, oldest first in line to go; partial downloads are removed.
    pub fn open(dir: &Path, limit: u64) -> std::io::Result<ModelCache> {
        std::fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata()?;
            if is_sha256(&name) && meta.is_file() {
                found.push((meta.modified()?, name, meta.len()));
            } else {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        found.sort();
        let mut index = Index::default();
        for (_, name, bytes) in found {
            index.clock += 1;
            index.bytes += bytes;
            let used = index.clock;
            index.files.insert(name, Entry { bytes, used });
        }
        let cache = ModelCache {
            dir: dir.to_path_buf(),
            limit,
            index: Mutex::new(index),
            writes: Mutex::default(),
            fetched: Fetched::default(),
        };
        cache.evict(None, &Fetched::default());
        Ok(cache)
    }

    /// Whether it keeps anything (a bound of 0 keeps nothing).
    pub fn keeps(&self) -> bool {
        self.limit > 0
    }

    /// Bytes the cache holds now.
    pub fn bytes(&self) -> u64 {
        self.index.lock().expect("cache index").bytes
    }

    /// Whether the object of `sha256` is cached.
    pub fn contains(&self, sha256: &str) -> bool {
        self.index
            .lock()
            .expect("cache index")
            .files
            .contains_key(sha256)
    }

    /// The object at `key`, whose sha256 the registry recorded as `sha256`: from the cache
    /// when it holds it, else from the store (verified), then kept. Counted in `job` and
    /// in the worker's counters.
    pub async fn get(
        self: &Arc<Self>,
        store: &Store,
        key: &str,
        sha256: &str,
        job: &Arc<Fetched>,
    ) -> Result<Bytes, StoreError> {
        let path = self.dir.join(sha256);
        if self.touch(sha256) {
            match tokio::fs::read(&path).await {
                Ok(data) => {
                    for counters in [job.as_ref(), &self.fetched] {
                        counters.hit();
                    }
                    return Ok(Bytes::from(data));
                }
                // Removed behind the cache's back: fetched again below.
                Err(e) => {
                    tracing::warn!("cached {}: {e}; fetching it again", path.display());
                    self.forget(sha256);
                }
            }
        }
        let data = store.get_verified(key, sha256).await?;
        let size = data.len() as u64;
        for counters in [job.as_ref(), &self.fetched] {
            counters.miss(size);
        }
        if size <= self.limit {
            // Written behind the caller's back: the job goes on with the bytes in memory.
            let (cache, sha256, job) = (self.clone(), sha256.to_string(), job.clone());
            let kept = data.clone();
            let write = tokio::spawn(async move {
                let partial = cache
                    .dir
                    .join(format!("{sha256}.{}.partial", uuid::Uuid::new_v4()));
                let written = match tokio::fs::write(&partial, &kept).await {
                    Ok(()) => tokio::fs::rename(&partial, &path).await,
                    Err(e) => Err(e),
                };
                match written {
                    Ok(()) => {
                        cache.insert(&sha256, size);
                        cache.evict(Some(&sha256), &job);
                    }
                    Err(e) => {
                        let _ = tokio::fs::remove_file(&partial).await;
                        tracing::warn!("keeping {sha256} in the model cache: {e}");
                    }
                }
            });
            self.writes.lock().expect("cache writes").push(write);
        }
        Ok(data)
    }

    /// Waits for the files being written into the cache.
    pub async fn settle(&self) {
        let writes: Vec<_> = std::mem::take(&mut *self.writes.lock().expect("cache writes"));
        for write in writes {
            let _ = write.await;
        }
    }

    /// Marks a cached object as used now; whether it is cached.
    fn touch(&self, sha256: &str) -> bool {
        let mut index = self.index.lock().expect("cache index");
        index.clock += 1;
        let now = index.clock;
        match index.files.get_mut(sha256) {
            Some(entry) => {
                entry.used = now;
                true
            }
            None => false,
        }
    }

    fn insert(&self, sha256: &str, bytes: u64) {
        let mut index = self.index.lock().expect("cache index");
        index.clock += 1;
        let used = index.clock;
        if let Some(old) = index
            .files
            .insert(sha256.to_string(), Entry { bytes, used })
        {
            index.bytes -= old.bytes;
        }
        index.bytes += bytes;
    }

    fn forget(&self, sha256: &str) {
        let mut index = self.index.lock().expect("cache index");
        if let Some(old) = index.files.remove(sha256) {
            index.bytes -= old.bytes;
        }
    }

    /// Removes the least recently used files until the cache is within its bound, sparing
    /// `keep` (the object just fetched).
    fn evict(&self, keep: Option<&str>, job: &Fetched) {
        let mut removed = Vec::new();
        {
            let mut index = self.index.lock().expect("cache index");
            while index.bytes > self.limit {
                let oldest = index
                    .files
                    .iter()
                    .filter(|(sha, _)| Some(sha.as_str()) != keep)
                    .min_by_key(|(_, entry)| entry.used)
                    .map(|(sha, _)| sha.clone());
                let Some(sha) = oldest else { break };
                let entry = index.files.remove(&sha).expect("listed");
                index.bytes -= entry.bytes;
                removed.push(sha);
            }
        }
        for sha in &removed {
            if let Err(e) = std::fs::remove_file(self.dir.join(sha)) {
                tracing::warn!("evicting {sha} from the model cache: {e}");
            }
        }
        for counters in [job, &self.fetched] {
            counters.evicted(removed.len() as u64);
        }
    }
}

fn is_sha256(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    async fn put(store: &Store, key: &str, size: usize, fill: u8) -> String {
        let data = Bytes::from(vec![fill; size]);
        store.put_bytes(key, data).await.unwrap().sha256
    }

    fn store(dir: &Path) -> Store {
        Store::open(
            &format!("file://{}", dir.display()),
            &crate::store::S3Config::default(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_second_get_reads_the_cache_and_the_bound_evicts_the_least_recently_used() {
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = store(dirs.0.path());
        let a = put(&store, "a", 400, 1).await;
        let b = put(&store, "b", 400, 2).await;
        let c = put(&store, "c", 400, 3).await;
        let cache = Arc::new(ModelCache::open(dirs.1.path(), 1000).unwrap());
        let job = Arc::new(Fetched::default());

        assert_eq!(cache.get(&store, "a", &a, &job).await.unwrap()[0], 1);
        assert_eq!(cache.get(&store, "b", &b, &job).await.unwrap()[0], 2);
        cache.settle().await;
        // A hit, read from the cache: the store's object may even be gone.
        store.delete("a").await.unwrap();
        assert_eq!(cache.get(&store, "a", &a, &job).await.unwrap()[0], 1);
        let counts = job.counts();
        assert_eq!(
            (counts.hits, counts.misses, counts.bytes_fetched),
            (1, 2, 800)
        );
        // c makes three: b, used least recently, goes.
        cache.get(&store, "c", &c, &job).await.unwrap();
        cache.settle().await;
        assert!(cache.contains(&a) && cache.contains(&c) && !cache.contains(&b));
        assert_eq!(cache.bytes(), 800);
        assert_eq!(job.counts().evictions, 1);
        assert!(!dirs.1.path().join(&b).exists());
        assert_eq!(cache.fetched.counts(), job.counts());

        // A new cache on the same folder keeps what is there, older first in line.
        drop(cache);
        let cache = Arc::new(ModelCache::open(dirs.1.path(), 1000).unwrap());
        assert!(cache.contains(&a) && cache.contains(&c));
        let job = Arc::new(Fetched::default());
        cache.get(&store, "c", &c, &job).await.unwrap();
        assert_eq!(job.counts().hits, 1);
    }

    #[tokio::test]
    async fn a_wrong_object_is_refused_and_never_cached_and_zero_keeps_nothing() {
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = store(dirs.0.path());
        let a = put(&store, "a", 100, 1).await;
        let cache = Arc::new(ModelCache::open(dirs.1.path(), 1000).unwrap());
        let job = Arc::new(Fetched::default());
        let wrong = hex::encode(Sha256::digest(b"something else"));
        let err = cache.get(&store, "a", &wrong, &job).await.unwrap_err();
        assert!(matches!(err, StoreError::Checksum { .. }), "{err}");
        assert_eq!(cache.bytes(), 0);
        assert_eq!(std::fs::read_dir(dirs.1.path()).unwrap().count(), 0);

        let off = Arc::new(ModelCache::open(&dirs.1.path().join("off"), 0).unwrap());
        off.get(&store, "a", &a, &job).await.unwrap();
        off.get(&store, "a", &a, &job).await.unwrap();
        assert_eq!((job.counts().hits, job.counts().misses), (0, 2));
        assert_eq!(off.bytes(), 0);
    }
}
