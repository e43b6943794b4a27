//! Full disks: the file store's disk filling up mid-upload answers 507 with a message that
//! says so, registers nothing and leaves no staged part behind, and the server stores the
//! next upload that fits; a worker's scratch disk too small for a training's files hands the job back
//! saying so and where, registers nothing, frees what the job wrote, and the same worker
//! trains it once there is room. The disks are small tmpfs mounted over the folders (the
//! tests need root, as `make test` runs on its machines).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::app::{corpus, spawn_app_with};

/// A tmpfs of `size` mounted over `dir` until dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(
            status.success(),
            "mounting a tmpfs over {} needs root (CAP_SYS_ADMIN)",
            dir.display()
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Tmpfs {
    /// Gives the mounted disk a new size.
    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("mount");
        assert!(status.success(), "resizing {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[tokio::test]
async fn a_full_store_answers_507_registers_nothing_and_keeps_no_staged_part() {
    let app = spawn_app_with(Default::default()).await;
    let store = app._dirs.0.path();
    let _disk = Tmpfs::mount(store, "64k");
    let partitions = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from partitions")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };

    // About 900 kB of text (some 200 kB compressed) into 64 kB.
    let big: String = ["code_c", "code_python", "legal_licenses", "tech_docs"]
        .iter()
        .map(|d| corpus(d, 0, 1000))
        .collect::<String>()
        .chars()
        .take(900_000)
        .collect();
    let big = big[..big.rfind('\n').unwrap() + 1].to_string();
    assert!(big.len() > 500_000, "{}", big.len());
    let (status, error) = app.post("/v1/partitions?name=big", big).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{error}");
    assert_eq!(error["error"]["code"], "store_full");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("no space left"), "{message}");
    assert!(
        message.to_lowercase().contains("no space left on device"),
        "{message}"
    );
    assert_eq!(partitions().await, 0, "nothing registered");
    let started = Instant::now();
    while !files(store).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "staged parts left: {:?}",
            files(store)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // What fits is stored as usual.
    let (status, body) = app
        .post("/v1/partitions?name=small", corpus("code_c", 0, 3))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(partitions().await, 1);
}

#[tokio::test]
async fn a_full_scratch_disk_hands_the_job_back_saying_where_and_the_worker_goes_on() {
    let app = spawn_app_with(Default::default()).await;
    // The worker's data folder (its scratch space and model cache) on a 64 kB disk: the
    // training's state alone is larger.
    let data = app._dirs.1.path().join("small-disk");
    std::fs::create_dir_all(&data).unwrap();
    let disk = Tmpfs::mount(&data, "64k");
    let worker = mixpool::worker::Worker::new(
        app.pool.clone(),
        app.store.clone(),
        tch::Device::Cpu,
        "small-disk".into(),
        &data,
        1 << 30,
        1 << 30,
    )
    .unwrap();

    let (status, body) = app
        .post("/v1/partitions?name=python", corpus("code_python", 0, 20))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(worker.try_run_one().await.unwrap(), "it ran the training");
    let (state, strikes, error): (String, i32, Option<String>) =
        sqlx::query_as("select state, strikes, error from jobs where kind = 'train'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let error = error.unwrap_or_default();
    println!("the job's error: {error}");
    assert_eq!(
        (state.as_str(), strikes),
        ("queued", 1),
        "handed back: {error}"
    );
    assert!(error.contains("no space left"), "{error}");
    assert!(
        error.contains(&data.display().to_string()),
        "says where: {error}"
    );
    let (_, partition) = app.get("/v1/partitions/python").await;
    assert_ne!(partition["models"][0]["state"], "ready", "{partition}");
    assert!(
        partition["models"][0]["weights_sha256"].is_null(),
        "{partition}"
    );
    // What the job wrote is gone, so the disk is not left full for the next job.
    let left: Vec<_> = files(&data)
        .into_iter()
        .filter(|f| f.starts_with(data.join("work")))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // The same worker, once its disk has room, trains it when the backoff has passed.
    disk.resize("64m");
    let started = Instant::now();
    loop {
        if worker.try_run_one().await.unwrap() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never claimed again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, partition) = app.get("/v1/partitions/python").await;
    assert_eq!(partition["models"][0]["state"], "ready", "{partition}");
}
