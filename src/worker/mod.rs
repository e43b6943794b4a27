//! Workers: claim a job, run it, record the outcome.
//!
//! The loop here only claims, heartbeats, dispatches to the kind registered under the job's
//! name in [`crate::jobs::KINDS`] and records how the job ended, all inside a span that
//! names the job (its id, kind and attempt), which its blocking threads enter too. Engine
//! work runs on blocking threads (libtorch must not block the async runtime, and a model
//! lives on the thread that uses it). A side task
//! heartbeats the lease and raises the engine's cancel flag when the job is cancelled or the
//! lease is lost. A job succeeds in one transaction with the rows it produces, fenced by its
//! attempt number.
//!
//! A worker keeps what it fetched ([`cache`]) and, between jobs that merge, its merger with
//! the unit models resident in it; it prefers queued jobs with the affinity of the last one
//! it ran (a sweep's shards), whose units it holds.

pub mod cache;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tch::Device;
use tracing::Instrument;

use crate::jobs::context::Context;
use crate::jobs::{self, Done, JobError, KeptMerger};
use crate::registry::jobs::{self as queue, Lease, QueueError};
use crate::store::Store;
use cache::ModelCache;

/// How often a running worker reports itself; the dashboard counts one seen within three
/// periods as alive.
pub const PRESENCE_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Worker {
    pub pool: PgPool,
    pub store: Store,
    pub device: Device,
    /// This worker's name in leases.
    pub owner: String,
    /// The kinds it claims (names from [`jobs::KINDS`]).
    pub kinds: Vec<&'static str>,
    pub lease: Duration,
    /// Local scratch space for downloads, train states and outputs.
    pub work_dir: PathBuf,
    /// Bytes of device memory that resident unit models may take (merges for scores and
    /// sweeps).
    pub resident_bytes: u64,
    /// The model weights it fetched (a bound of 0 keeps none, and no merger between jobs).
    pub cache: Arc<ModelCache>,
    /// Its merger between jobs that merge, and the affinity of the last job it ran.
    pub kept: Arc<KeptMerger>,
    pub affinity: Arc<std::sync::Mutex<Option<String>>>,
    pub started: chrono::DateTime<chrono::Utc>,
}

impl Worker {
    /// A worker of every kind named `owner`, with 60-second leases, its scratch space in a
    /// folder of its own under `data/work` (those of processes that are gone are removed
    /// first: a killed worker leaves its jobs' files) and a cache of at most `cache_bytes`
    /// under `data/cache`.
    pub fn new(
        pool: PgPool,
        store: Store,
        device: Device,
        owner: String,
        data: &std::path::Path,
        resident_bytes: u64,
        cache_bytes: u64,
    ) -> std::io::Result<Worker> {
        let work = data.join("work");
        remove_stale(&work);
        let own = incarnation(std::process::id()).unwrap_or_else(|| std::process::id().to_string());
        let unique = uuid::Uuid::new_v4().simple().to_string();
        Ok(Worker {
            pool,
            store,
            device,
            owner,
            kinds: jobs::names(),
            lease: Duration::from_secs(60),
            work_dir: work.join(format!("{own}-{}", &unique[..8])),
            resident_bytes,
            cache: Arc::new(ModelCache::open(&data.join("cache"), cache_bytes)?),
            kept: Default::default(),
            affinity: Default::default(),
            started: chrono::Utc::now(),
        })
    }

    /// Runs jobs until `stop` turns true. A training job or a sweep shard then stops at its
    /// next step or mixture, its state goes to the store and the job back to the queue
    /// (without counting the attempt), for another worker to resume; a score job is
    /// finished. Idle, it wakes on the queue's notifications, and polls every second in
    /// case one was missed.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(queue::CHANNEL).await?;
        let presence = tokio::spawn(self.clone().report_presence());
        while !*stop.borrow() {
            match self.run_one(Some(stop.clone())).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => tracing::warn!("claiming a job failed: {e}"),
            }
            tokio::select! {
                _ = stop.changed() => {}
                heard = listener.recv() => {
                    if let Err(e) = heard {
                        tracing::warn!("queue notifications: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        presence.abort();
        self.kept.clear().await;
        Ok(())
    }

    /// Says every few seconds that this worker is alive, on which device and for which
    /// kinds (`workers`; the dashboard lists the workers seen recently). Best effort: a
    /// database that does not answer only delays the next report.
    async fn report_presence(self) {
        if let Err(e) = crate::registry::workers::forget_gone(&self.pool).await {
            tracing::debug!("forgetting workers gone for a day: {e}");
        }
        loop {
            self.report().await;
            tokio::time::sleep(PRESENCE_EVERY).await;
        }
    }

    /// Says that this worker is alive, with its cache's counters (every few seconds while
    /// it runs, and after each job).
    pub async fn report(&self) {
        let device = crate::engine::device::name(self.device);
        let presence = crate::registry::workers::Presence {
            name: &self.owner,
            device: &device,
            kinds: &self.kinds,
            started_at: self.started,
            fetched: self.cache.fetched.counts(),
            cache_bytes: self.cache.bytes(),
        };
        if let Err(e) = crate::registry::workers::seen(&self.pool, &presence).await {
            tracing::debug!("reporting this worker's presence: {e}");
        }
    }

    /// Claims one job and runs it to the end. Returns whether there was a job.
    pub async fn try_run_one(&self) -> Result<bool, sqlx::Error> {
        self.run_one(None).await
    }

    /// Claims one job and runs it; when `stop` turns true meanwhile, a training job or sweep
    /// shard is released at its next step instead of finished.
    async fn run_one(
        &self,
        stop: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Result<bool, sqlx::Error> {
        let prefer = self.affinity.lock().expect("affinity").clone();
        let claimed = queue::claim(
            &self.pool,
            &self.owner,
            &self.kinds,
            self.lease,
            prefer.as_deref(),
        );
        let Some(lease) = claimed.await? else {
            return Ok(false);
        };
        *self.affinity.lock().expect("affinity") = lease.job.affinity.clone();
        let span = tracing::info_span!("job", id = %lease.id(), kind = %lease.job.kind, attempt = lease.attempt());
        self.run_claimed(lease, stop).instrument(span).await?;
        release_freed_memory();
        self.report().await;
        Ok(true)
    }

    /// Runs a claimed job with its heartbeat and records how it ended.
    async fn run_claimed(
        &self,
        lease: Lease,
        stop: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Result<(), sqlx::Error> {
        tracing::info!("running");
        let cancel = Arc::new(AtomicBool::new(false));
        let heartbeat = tokio::spawn(
            heartbeat(self.pool.clone(), lease.clone(), self.lease, cancel.clone())
                .in_current_span(),
        );
        let releasing = Arc::new(AtomicBool::new(false));
        let on_stop = stop.map(|mut stop| {
            let (releasing, cancel) = (releasing.clone(), cancel.clone());
            tokio::spawn(async move {
                if stop.wait_for(|stop| *stop).await.is_ok() {
                    releasing.store(true, Ordering::SeqCst);
                    cancel.store(true, Ordering::SeqCst);
                }
            })
        });
        let kind = jobs::find(&lease.job.kind);
        if !kind.is_some_and(|k| k.merges) {
            // Training and the like need the memory a kept merger holds.
            self.kept.clear().await;
        }
        let payload = lease.job.payload.clone();
        let cx = Context {
            pool: self.pool.clone(),
            store: self.store.clone(),
            device: self.device,
            worker: self.owner.clone(),
            scratch: self.work_dir.join(format!("job-{}", lease.id())),
            lease,
            resident_bytes: self.resident_bytes,
            cancel,
            cache: self.cache.clone(),
            fetched: Default::default(),
            kept: self.kept.clone(),
        };
        let outcome = match kind {
            Some(kind) => kind.run(&cx, payload.clone()).await,
            None => Err(JobError::Fatal(format!(
                "unknown job kind {:?}",
                cx.lease.job.kind
            ))),
        };
        heartbeat.abort();
        if let Some(task) = on_stop {
            task.abort();
        }
        let outcome = match outcome {
            Err(e) if self.scratch_full(&e.to_string()) => {
                // Whatever the failing step made of it, another worker (or this one, once
                // there is room) can run the job; what it wrote goes, to make room.
                cx.clear_scratch().await;
                Err(JobError::Retryable(format!(
                    "no space left on the worker's scratch disk ({}): {e}",
                    self.work_dir.display()
                )))
            }
            outcome => outcome,
        };
        let lease = &cx.lease;
        let recorded = match outcome {
            Ok(Done::Succeeded) | Ok(Done::LeaseLost) => Ok(()),
            Ok(Done::Cancelled) if releasing.load(Ordering::SeqCst) => {
                tracing::info!("released for another worker to resume");
                // What the next worker needs is in the store; the local copy goes.
                cx.clear_scratch().await;
                queue::release(&self.pool, lease).await
            }
            // Only the job's owner marks its target (the stop may have been a lost lease,
            // with another worker now running it).
            Ok(Done::Cancelled) => {
                cx.clear_scratch().await;
                match queue::cancelled(&self.pool, lease).await {
                    Ok(()) => {
                        if let Some(kind) = kind {
                            let mut db = self.pool.acquire().await?;
                            kind.cancelled(&mut db, &payload).await?;
                        }
                        Ok(())
                    }
                    lost => lost,
                }
            }
            Err(JobError::Retryable(message)) => {
                tracing::warn!("failed, to be retried: {message}");
                queue::fail(&self.pool, lease, &message, true).await
            }
            Err(JobError::Fatal(message)) => {
                tracing::warn!("failed: {message}");
                match queue::fail(&self.pool, lease, &message, false).await {
                    Ok(()) => {
                        if let Some(kind) = kind {
                            let mut db = self.pool.acquire().await?;
                            kind.failed(&mut db, &payload).await?;
                        }
                        Ok(())
                    }
                    lost => lost,
                }
            }
        };
        match recorded {
            Ok(()) | Err(QueueError::LeaseLost(_)) => Ok(()),
            Err(QueueError::Database(e)) => Err(e),
        }
    }

    /// Whether a job's failure `message` is its scratch disk's being full: the system's
    /// "No space left on device" (ENOSPC) about a file under the scratch folder, or with
    /// less than a MiB left there (a message that names no file).
    fn scratch_full(&self, message: &str) -> bool {
        let enospc = message.contains("No space left on device") || message.contains("os error 28");
        enospc
            && (message.contains(&*self.work_dir.to_string_lossy())
                || [
                    &self.work_dir,
                    self.work_dir.parent().unwrap_or(&self.work_dir),
                ]
                .iter()
                .find_map(|dir| free_bytes(dir))
                .is_some_and(|free| free < 1 << 20))
    }
}

/// A process's id and start time (`/proc/PID/stat`'s 22nd field, clock ticks since boot),
/// which together tell it from every other process the host has run (pids are reused).
fn incarnation(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command's name, which is in parentheses: the 3rd field on.
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let started = after.split_whitespace().nth(19)?;
    Some(format!("{pid}-{started}"))
}

/// Removes the scratch folders under `work` of worker processes that are gone (named
/// `PID-START-…` by [`incarnation`]); other entries, and everything where processes cannot
/// be told apart (no `/proc`), are left alone.
fn remove_stale(work: &std::path::Path) {
    if incarnation(std::process::id()).is_none() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(work) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut parts = name.splitn(3, '-');
        let (Some(pid), Some(started)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if incarnation(pid).as_deref() != Some(&format!("{pid}-{started}")) {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => tracing::info!("removed {}: its worker is gone", entry.path().display()),
                Err(e) => tracing::warn!("removing {}: {e}", entry.path().display()),
            }
        }
    }
}

/// Bytes free to unprivileged users on the file system that holds `dir`.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain data, for which all zeroes is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `stat` a statvfs to fill.
    let done = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    (done == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Returns the memory the job freed to the system. Jobs run on blocking threads, each with
/// its own malloc arena, and libtorch frees most of a training's or a merge's buffers into
/// them: without this, a worker's resident memory stays at the sum of every arena's peak
/// (on the CPU, several times what the next job needs; `benches/sweep.rs` prints both).
fn release_freed_memory() {
    #[cfg(target_os = "linux")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The default resident budget: a quarter of the available memory on the CPU, half the free
/// memory on a GPU (the rest holds the merged model, activations and the allocator's
/// slack); 4 GiB where the free memory cannot be told.
pub fn default_resident_bytes(device: Device) -> u64 {
    let share = if device == Device::Cpu { 4 } else { 2 };
    crate::engine::device::free_memory(device).map_or(4 << 30, |free| free / share)
}

/// Extends the lease every third of its length; raises `cancel` when the job was cancelled
/// or the lease was lost, so the engine stops at its next step.
async fn heartbeat(pool: PgPool, lease: Lease, every: Duration, cancel: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(every / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        match queue::heartbeat(&pool, &lease, every).await {
            Ok(false) => {}
            Ok(true) | Err(QueueError::LeaseLost(_)) => {
                cancel.store(true, Ordering::Relaxed);
                return;
            }
            Err(QueueError::Database(e)) => {
                tracing::warn!("heartbeat failed: {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scratch_folders_of_processes_that_are_gone_are_removed_and_no_others() {
        let work = tempfile::tempdir().unwrap();
        let own = incarnation(std::process::id()).unwrap();
        let (pid, started) = own.split_once('-').unwrap();
        let kept = [
            format!("{own}-aaaaaaaa"),
            "job-1".to_string(),
            "notes".to_string(),
        ];
        // The same pid with another start time (a process that had it before), and a pid
        // beyond the kernel's limit.
        let gone = [
            format!("{pid}-{}-bbbbbbbb", started.parse::<u64>().unwrap() + 1),
            "4194305-77-cccccccc".to_string(),
        ];
        for name in kept.iter().chain(&gone) {
            std::fs::create_dir_all(work.path().join(name).join("train_state")).unwrap();
        }
        remove_stale(work.path());
        let mut left: Vec<String> = std::fs::read_dir(work.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = kept.to_vec();
        want.sort();
        assert_eq!(left, want);
    }
}
