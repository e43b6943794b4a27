//! Logs an operator can follow: a job's lines name it.

use reqwest::StatusCode;

use crate::app::{corpus, spawn_app_with};

/// An operator can follow a job through the log: a worker process writing JSON lines trains
/// a unit model, and its lines about the job — on the async side ("running") and on the
/// blocking thread that trains ("trained") — carry the span `job` with the job's id, kind
/// and attempt.
#[tokio::test]
async fn every_log_line_of_a_job_names_the_job() {
    let app = spawn_app_with(Default::default()).await;
    let (status, body) = app
        .post("/v1/partitions?name=c", corpus("code_c", 0, 4))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let job = body["models"][0]["job_id"].as_str().unwrap().to_string();
    let data = app._dirs.1.path().join("logged");
    std::fs::create_dir_all(&data).unwrap();
    let log = data.join("worker.log");
    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_mixpool"))
        .args(["--log-format", "json", "worker", "--kinds", "train"])
        .args(["--device", "cpu", "--threads", "1"])
        .arg("--store")
        .arg(format!("file://{}", app._dirs.0.path().display()))
        .arg("--data")
        .arg(&data)
        .env("DATABASE_URL", app.database_url().await)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    app.trained("c").await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for message in ["running", "trained"] {
        let line = lines
            .iter()
            .find(|l| l["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line: {lines:#?}"));
        assert_eq!(
            (
                line["span"]["name"].as_str(),
                line["span"]["id"].as_str(),
                line["span"]["kind"].as_str(),
                line["span"]["attempt"].as_i64()
            ),
            (Some("job"), Some(job.as_str()), Some("train"), Some(1)),
            "{line}"
        );
    }
}
