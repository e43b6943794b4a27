//! `mixpool fsck`: a pool checked against its store finds what was planted — an orphan, a
//! missing object, a corrupted object, an expired lease — and `--repair` mends only what can
//! be mended (the orphan is removed, the expired job requeued).

use std::process::Command;
use std::time::Duration;

use mixpool::registry::jobs::{self, NewJob};
use reqwest::StatusCode;
use serde_json::Value;

use crate::app::{corpus, spawn_app_with};

fn fsck(app_url: &str, store: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mixpool"))
        .arg("fsck")
        .args(args)
        .args(["--store", store])
        .env("DATABASE_URL", app_url)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The report on stdout; an error's message (exit 2) on stderr.
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    (
        out.status.code().unwrap(),
        stdout + &stderr_if_error(&out.status, &stderr),
    )
}

fn stderr_if_error(status: &std::process::ExitStatus, stderr: &str) -> String {
    match status.code() {
        Some(2) => stderr.to_string(),
        _ => String::new(),
    }
}

fn kinds(report: &Value) -> Vec<(String, bool)> {
    let mut kinds: Vec<(String, bool)> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap().to_string(),
                p["repaired"].as_bool().unwrap(),
            )
        })
        .collect();
    kinds.sort();
    kinds
}

#[tokio::test]
async fn fsck_finds_planted_faults_and_repairs_only_the_orphan_and_the_lease() {
    let app = spawn_app_with(mixpool::api::SweepLimits::default()).await;
    let worker = app.worker("w");
    let (status, python) = app
        .post("/v1/partitions?name=python", corpus("code_python", 0, 6))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, c) = app
        .post("/v1/partitions?name=c", corpus("code_c", 0, 6))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    while worker.try_run_one().await.unwrap() {}
    app.trained("python").await;
    app.trained("c").await;
    let database = app.database_url().await;
    let store_url = format!("file://{}", app._dirs.0.path().display());

    let (code, out) = fsck(&database, &store_url, &["--json"]);
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"));
    assert_eq!(
        (code, kinds(&report)),
        (0, vec![]),
        "a fresh pool is clean: {out}"
    );
    assert!(report["objects"].as_u64().unwrap() >= 5, "{report}");

    // Planted: the train state of a deleted partition's model, python's weights gone,
    // c's stored partition overwritten, a job whose worker died, and the staged object of an
    // upload that may still be in flight.
    let staged = format!("staging/{}", uuid::Uuid::new_v4());
    app.store
        .put_bytes(&staged, bytes::Bytes::from_static(b"half an upload"))
        .await
        .unwrap();
    let orphan = format!(
        "models/{}/train_state/state-4.safetensors",
        uuid::Uuid::new_v4()
    );
    app.store
        .put_bytes(&orphan, bytes::Bytes::from_static(b"left behind"))
        .await
        .unwrap();
    let model = python["models"][0]["id"].as_str().unwrap();
    let weights = format!("models/{model}/model.safetensors");
    app.store.delete(&weights).await.unwrap();
    let sha = c["partition"]["sha256"].as_str().unwrap();
    let partition = mixpool::store::keys::partition(sha);
    app.store
        .put_bytes(
            &partition,
            bytes::Bytes::from_static(b"not what was uploaded"),
        )
        .await
        .unwrap();
    jobs::enqueue(
        &mut app.pool.acquire().await.unwrap(),
        &NewJob::new("export", serde_json::json!({})),
    )
    .await
    .unwrap();
    let lease = jobs::claim(
        &app.pool,
        "died",
        &["export"],
        Duration::from_millis(1),
        None,
    )
    .await
    .unwrap()
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let (code, out) = fsck(&database, &store_url, &["--json"]);
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"));
    let found = vec![
        ("corrupt".to_string(), false),
        ("expired_lease".to_string(), false),
        ("missing".to_string(), false),
        ("orphan".to_string(), false),
    ];
    assert_eq!((code, kinds(&report)), (1, found), "{out}");
    let subjects: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["subject"].as_str().unwrap())
        .collect();
    for planted in [orphan.as_str(), weights.as_str(), partition.as_str()] {
        assert!(subjects.contains(&planted), "{planted} in {out}");
    }
    assert!(!subjects.contains(&staged.as_str()), "young: {out}");
    assert_eq!(report["in_flight"], 1, "{out}");
    // The same check over HTTP, read-only, for admin tokens alone.
    let (status, served) = app.get("/v1/admin/fsck").await;
    assert_eq!((status, kinds(&served)), (StatusCode::OK, kinds(&report)));
    let write = crate::helpers::token(&app.pool, mixpool::registry::tokens::Scope::Write).await;
    let refused = crate::helpers::client(&write)
        .get(app.url("/v1/admin/fsck"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    let (code, out) = fsck(&database, &store_url, &["--repair"]);
    assert_eq!(code, 1, "the missing and corrupt objects remain: {out}");
    assert!(out.contains("(repaired)"), "{out}");
    assert_eq!(app.store.get_optional(&orphan).await.unwrap(), None);
    assert!(
        app.store.get_optional(&partition).await.unwrap().is_some(),
        "kept"
    );
    let job = jobs::get(&app.pool, lease.id()).await.unwrap().unwrap();
    assert_eq!(job.state, "queued");
    let (_, out) = fsck(&database, &store_url, &["--json"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        kinds(&report),
        vec![
            ("corrupt".to_string(), false),
            ("missing".to_string(), false)
        ]
    );
    // Once no upload can be in flight, a grace of 0 removes the staged object too.
    assert!(app.store.get_optional(&staged).await.unwrap().is_some());
    let (_, out) = fsck(
        &database,
        &store_url,
        &["--repair", "--grace", "0", "--json"],
    );
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"));
    assert_eq!(report["in_flight"], 0, "{out}");
    assert!(out.contains(&staged), "{out}");
    assert_eq!(app.store.get_optional(&staged).await.unwrap(), None);

    // An unreachable database is an error, not a verdict.
    let (code, out) = fsck("postgres://postgres@127.0.0.1:1/nowhere", &store_url, &[]);
    assert_eq!(code, 2, "{out}");
}

#[tokio::test]
async fn deleting_a_partition_removes_the_exports_that_merged_it_and_fsck_stays_clean() {
    let app = crate::app::spawn_app().await;
    for (name, domain) in [("a", "code_python"), ("b", "code_c")] {
        let (status, body) = app
            .post(&format!("/v1/partitions?name={name}"), corpus(domain, 0, 6))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        app.trained(name).await;
    }
    for mixture in ["a,b", "a"] {
        let response = app
            .client
            .get(app.url(&format!(
                "/v1/mixtures/export?partitions={mixture}&wait=120"
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{mixture}");
    }
    assert_eq!(app.store.list("exports").await.unwrap().len(), 2);

    let (status, body) = app.delete("/v1/partitions/b").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The merge of a and b is gone with b; a's own export stays.
    let left = app.store.list("exports").await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    let report = mixpool::fsck::check(&app.pool, &app.store, false, mixpool::fsck::IN_FLIGHT)
        .await
        .unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let response = app
        .client
        .get(app.url("/v1/mixtures/export?partitions=a&wait=120"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "a's export is still served"
    );
}
