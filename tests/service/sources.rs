//! Corpora read in place from the store: JSONL shards and a Parquet file (written by pyarrow)
//! in the test S3 server train the unit models that uploads of the same text train, bit for
//! bit; Parquet uploads read as the same documents; an object changed after registration is
//! refused by training and reported by fsck (and objects outside the pool's own prefixes are
//! never orphans); bad registrations and bad Parquet are refused by name, queueing nothing.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::app::{App, corpus, spawn_app_s3, spawn_app_with};

/// `jsonl` (a `text` per line) as pyarrow writes it, the text in column `column`.
fn parquet(jsonl: &str, column: &str) -> Vec<u8> {
    let tools = std::env::var("MIXPOOL_TEST_API_TOOLS").expect(
        "MIXPOOL_TEST_API_TOOLS names the bin folder of scripts/api-tools.sh's venv (make test sets it)",
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/to_parquet.py");
    let mut child = Command::new(format!("{tools}/python"))
        .args([script, column])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(jsonl.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(out.stdout.starts_with(b"PAR1"));
    out.stdout
}

/// Only the `text` of each line (the corpus's lines carry other fields too).
fn texts_only(jsonl: &str) -> String {
    jsonl
        .lines()
        .map(|l| {
            let doc: Value = serde_json::from_str(l).unwrap();
            format!("{}\n", json!({"text": doc["text"]}))
        })
        .collect()
}

/// Registers from the store and waits for the `register` job; its result.
async fn register(app: &App, path: &str, body: Value) -> Value {
    let (status, accepted) = app.post(path, body.to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let job = accepted["job"]["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    loop {
        let (_, job) = app.get(&format!("/v1/jobs/{job}")).await;
        match job["state"].as_str().unwrap() {
            "succeeded" => return job["result"].clone(),
            "failed" | "cancelled" => panic!("registering failed: {job}"),
            _ => {}
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The weights' sha256 of the partition's unit model, once trained.
async fn unit_weights(app: &App, partition: &str) -> String {
    app.trained(partition).await;
    sqlx::query_scalar(
        "select m.weights_sha256 from models m join partitions p on p.id = m.partition_id
         where p.name = $1",
    )
    .bind(partition)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn shards_and_parquet_read_in_place_from_s3_train_what_uploads_of_their_text_train() {
    let lines = corpus("code_python", 0, 8);
    let all: Vec<&str> = lines.lines().collect();
    let (first, second) = (all[..3].join("\n") + "\n", all[3..5].join("\n") + "\n");
    let table_text = texts_only(&(all[5..].join("\n") + "\n"));

    let app = spawn_app_s3().await;
    let worker = App::start(app.worker("reader"));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(first.as_bytes()).unwrap();
    let shards = [
        ("corpora/py/part-0000.jsonl.gz", gz.finish().unwrap()),
        (
            "corpora/py/part-0001.jsonl.zst",
            zstd::encode_all(second.as_bytes(), 3).unwrap(),
        ),
        (
            "corpora/table/data.parquet",
            parquet(&table_text, "content"),
        ),
    ];
    for (key, data) in &shards {
        app.store
            .put_bytes(key, Bytes::from(data.clone()))
            .await
            .unwrap();
    }
    let result = register(
        &app,
        "/v1/partitions",
        json!({"name": "py", "prefix": "corpora/py/", "domain": "code"}),
    )
    .await;
    let objects = result["partition"]["sources"]["objects"]
        .as_array()
        .unwrap();
    assert_eq!(objects.len(), 2, "{result}");
    for ((key, data), object) in shards.iter().zip(objects) {
        assert_eq!(object["key"], json!(key));
        assert_eq!(object["bytes"], json!(data.len()));
        assert_eq!(object["sha256"].as_str().unwrap().len(), 64);
    }
    assert_eq!(result["partition"]["documents"], 5);
    let result = register(
        &app,
        "/v1/partitions",
        json!({"name": "table", "objects": ["corpora/table/data.parquet"], "text_field": "content"}),
    )
    .await;
    assert_eq!(result["partition"]["sources"]["format"], "parquet");
    assert_eq!(result["partition"]["documents"], 3);
    let in_place = (
        unit_weights(&app, "py").await,
        unit_weights(&app, "table").await,
    );

    // The Parquet file uploaded is the same partition: the same documents.
    let (status, body) = app
        .post(
            "/v1/partitions?name=direct&text_field=content",
            shards[2].1.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["partition"]["name"], "table");
    // It keeps reading its source: the upload's copy is not kept.
    assert_eq!(body["partition"]["object_sha256"], "");
    assert!(app.store.list("partitions/").await.unwrap().is_empty());

    // A pool that was uploaded the same text trains the same unit models, bit for bit.
    let uploaded = spawn_app_with(Default::default()).await;
    let other = App::start(uploaded.worker("uploader"));
    for (name, text) in [("py", first.clone() + &second), ("table", table_text)] {
        let (status, body) = uploaded
            .post(&format!("/v1/partitions?name={name}&domain=code"), text)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, py) = app.get("/v1/partitions/py").await;
    let (_, py_uploaded) = uploaded.get("/v1/partitions/py").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        py["partition"]["sha256"], py_uploaded["partition"]["sha256"],
        "the same documents"
    );
    let by_upload = (
        unit_weights(&uploaded, "py").await,
        unit_weights(&uploaded, "table").await,
    );
    assert_eq!(in_place, by_upload);
    worker.abort();
    other.abort();
}

#[tokio::test]
async fn a_changed_object_is_refused_by_training_and_reported_by_fsck() {
    let app = spawn_app_with(Default::default()).await;
    let worker = app.worker("reader");
    let text = corpus("legal_licenses", 0, 6);
    let key = "corpora/legal.jsonl";
    app.store
        .put_bytes(key, Bytes::from(text.clone()))
        .await
        .unwrap();
    // Somebody else's object in the same store, never registered.
    let theirs = "corpora/theirs.jsonl";
    app.store
        .put_bytes(theirs, Bytes::from(text.clone()))
        .await
        .unwrap();
    let (status, accepted) = app
        .post(
            "/v1/partitions",
            json!({"name": "legal", "objects": [key]}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert!(worker.try_run_one().await.unwrap(), "the register job");
    let (_, partition) = app.get("/v1/partitions/legal").await;
    assert_eq!(partition["models"][0]["state"], "queued", "{partition}");

    // The object changes before its unit model trains.
    let changed = text.replacen("License", "Licence", 1);
    app.store
        .put_bytes(key, Bytes::from(changed))
        .await
        .unwrap();
    assert!(worker.try_run_one().await.unwrap(), "the train job");
    let (_, partition) = app.get("/v1/partitions/legal").await;
    let job = partition["models"][0]["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, job) = app.get(&format!("/v1/jobs/{job}")).await;
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains(key) && error.contains("changed since it was registered"),
        "{error}"
    );

    let report = mixpool::fsck::check(&app.pool, &app.store, true, mixpool::fsck::IN_FLIGHT)
        .await
        .unwrap();
    let problems: Vec<_> = report
        .problems
        .iter()
        .map(|p| (p.kind.clone(), p.subject.as_str()))
        .collect();
    assert_eq!(
        problems,
        [(mixpool::fsck::Kind::Corrupt, key)],
        "{:?}",
        report.problems
    );
    assert!(report.problems[0].detail.contains("read in place"));
    // --repair leaves data it does not own alone.
    assert!(app.store.get_optional(theirs).await.unwrap().is_some());
}

#[tokio::test]
async fn bad_registrations_and_bad_parquet_are_refused_by_name_and_queue_nothing() {
    let app = spawn_app_with(Default::default()).await;
    let lines = corpus("tech_docs", 0, 4);
    app.store
        .put_bytes("corpora/docs.jsonl", Bytes::from(lines.clone()))
        .await
        .unwrap();
    app.store
        .put_bytes(
            "corpora/docs.parquet",
            Bytes::from(parquet(&texts_only(&lines), "body")),
        )
        .await
        .unwrap();
    let (status, body) = app.post("/v1/partitions?name=taken", lines.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let jobs = app.jobs().await;

    let cases = [
        (
            json!({"name": "a", "objects": ["corpora/none.jsonl"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_such_object",
            "corpora/none.jsonl",
        ),
        (
            json!({"name": "a", "prefix": "corpora/nothing/"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_such_object",
            "corpora/nothing/",
        ),
        (
            json!({"name": "a", "prefix": "corpora/", "objects": ["corpora/docs.jsonl"]}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "not both",
        ),
        (
            json!({"name": "a", "objects": ["corpora/docs.parquet"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parquet",
            "no column \"text\" (its columns: id, body)",
        ),
        (
            json!({"name": "a", "objects": ["corpora/docs.jsonl"], "format": "parquet"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parquet",
            "corpora/docs.jsonl: not a Parquet file",
        ),
        (
            json!({"name": "a", "objects": ["corpora/docs.jsonl"], "text_field": "body"}),
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "text_field",
        ),
        (
            json!({"name": "taken", "objects": ["corpora/docs.jsonl"]}),
            StatusCode::CONFLICT,
            "name_taken",
            "taken",
        ),
        (
            json!({"name": "a", "prefix": "partitions/"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_object",
            "the pool's own objects",
        ),
        (
            json!({"name": "a", "objects": ["corpora/docs.jsonl"], "formt": "jsonl"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "formt",
        ),
    ];
    for (body, status, code, names) in cases {
        let (got, error) = app.post("/v1/partitions", body.to_string()).await;
        assert_eq!(
            (got, error["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {error}"
        );
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(names), "{body}: {message}");
    }

    // Uploads: Parquet without the column, and a body that is not Parquet.
    let parquet_body = parquet(&texts_only(&lines), "body");
    for (path, body, names) in [
        (
            "/v1/partitions?name=b",
            parquet_body.clone(),
            "no column \"text\" (its columns: id, body)",
        ),
        (
            "/v1/eval-sets?name=b&text_field=content",
            parquet_body,
            "no column \"content\"",
        ),
        (
            "/v1/partitions?name=b&format=parquet",
            lines.clone().into_bytes(),
            "not a Parquet file",
        ),
    ] {
        let (status, error) = app.post(path, body).await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_parquet")),
            "{path}: {error}"
        );
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(names), "{path}: {message}");
    }
    assert_eq!(app.jobs().await, jobs, "nothing queued");
    let (_, list) = app.get("/v1/partitions").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_register_verb_reads_a_prefix_and_says_what_it_registered() {
    let app = crate::app::spawn_app().await;
    for (i, skip) in [0, 3].into_iter().enumerate() {
        let shard = corpus("tech_docs", 200 + skip, 3);
        let key = format!("corpora/held/{i}.jsonl");
        app.store.put_bytes(&key, Bytes::from(shard)).await.unwrap();
    }
    let (code, out, err) = crate::cli::mixpool(
        &app,
        &["eval-sets", "register", "held", "--prefix", "corpora/held/"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim_end().lines().last().unwrap().split(':').next(),
        Some("held")
    );
    assert!(
        out.contains("6 documents") && out.contains("from 2 object(s)"),
        "{out}"
    );
    let (status, set) = app.get("/v1/eval-sets/held").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(set["documents"], 6);

    let (code, _, err) = crate::cli::mixpool(
        &app,
        &[
            "partitions",
            "register",
            "none",
            "--object",
            "corpora/none.jsonl",
        ],
    )
    .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("corpora/none.jsonl is not in the store"),
        "{err}"
    );
}
