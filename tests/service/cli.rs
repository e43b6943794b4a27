//! The command line as a client, run as a process against a running server: uploads, lists,
//! scores, the queue, and `mixpool check` with its exit codes (0 holds, 1 does not, 2 for
//! usage and server errors — a server that is down included).

use std::process::Command;

use serde_json::Value;

use crate::app::{App, corpus, spawn_app};

/// Runs `mixpool ARGS` against `app` with its admin token; (exit code, stdout, stderr).
pub async fn mixpool(app: &App, args: &[&str]) -> (i32, String, String) {
    run(args, &app.url, Some(&app.token)).await
}

/// Runs `mixpool ARGS` with `MIXPOOL_URL=url` (off the test's runtime, which serves the app).
async fn run(args: &[&str], url: &str, token: Option<&str>) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (url, token) = (url.to_string(), token.map(str::to_string));
    tokio::task::spawn_blocking(move || blocking(&args, &url, token.as_deref()))
        .await
        .unwrap()
}

fn blocking(args: &[String], url: &str, token: Option<&str>) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mixpool"));
    command
        .args(args)
        .env("MIXPOOL_URL", url)
        .env_remove("MIXPOOL_TOKEN");
    if let Some(token) = token {
        command.env("MIXPOOL_TOKEN", token);
    }
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[tokio::test]
async fn the_client_verbs_upload_list_score_and_check_with_exit_codes() {
    let app = spawn_app().await;
    let files = tempfile::tempdir().unwrap();
    let path = |name: &str| files.path().join(name).display().to_string();
    std::fs::write(path("python.jsonl"), corpus("code_python", 0, 8)).unwrap();
    std::fs::write(path("c.jsonl.gz"), gzip(&corpus("code_c", 0, 8))).unwrap();
    std::fs::write(path("held.jsonl"), corpus("code_python", 40, 4)).unwrap();

    // Writes need the token: without it, a message and a non-zero exit.
    let (code, _, err) = run(
        &["partitions", "add", &path("python.jsonl")],
        &app.url,
        None,
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("need a token"), "{err}");

    let (code, out, err) = mixpool(
        &app,
        &[
            "partitions",
            "add",
            &path("python.jsonl"),
            &path("c.jsonl.gz"),
            "--domain",
            "code",
            "--wait",
            "--json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let added = json(&out);
    assert_eq!(added[0]["partition"]["name"], "python");
    assert_eq!(
        added[1]["partition"]["name"], "c",
        "named by the file, less its extensions"
    );
    assert_eq!(added[1]["partition"]["domain"], "code");
    let (code, _, err) = mixpool(
        &app,
        &["eval-sets", "add", &path("held.jsonl"), "--name", "held"],
    )
    .await;
    assert_eq!(code, 0, "{err}");

    let (code, out, _) = mixpool(&app, &["partitions", "ls", "--json"]).await;
    assert_eq!(code, 0);
    let listed = json(&out);
    let mut names: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["c", "python"]);
    // The same bytes under another name are the partition already stored, and its name is
    // what scripts get.
    let (code, out, err) = mixpool(
        &app,
        &[
            "partitions",
            "add",
            &path("python.jsonl"),
            "--name",
            "python-again",
            "--wait",
            "--print-names",
        ],
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "python\n"), "{err}");
    let (code, out, _) = mixpool(&app, &["partitions", "ls"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("python") && out.matches("1 ready").count() == 2,
        "{out}"
    );
    for verb in [["bases", "ls"], ["recipes", "ls"], ["eval-sets", "ls"]] {
        let (code, out, err) = mixpool(&app, &[verb[0], verb[1], "--json"]).await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(json(&out).as_array().unwrap().len(), 1, "{verb:?}: {out}");
    }

    // A score waits for the training it needs and equals the API's answer.
    let (code, out, err) =
        mixpool(&app, &["score", "--eval", "held", "python", "c", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let scored = json(&out);
    let (status, api) = app.get("/v1/score?partitions=python,c&eval=held").await;
    assert_eq!(status, 200, "{api}");
    assert_eq!(scored["perplexity"], api["perplexity"]);
    assert_eq!(api["cached"], true);

    // The check: against the same mixture it holds (0% regression), under a ceiling of 1
    // (no model reaches it) it does not.
    let (code, out, err) = mixpool(
        &app,
        &[
            "check",
            "--eval",
            "held",
            "--mixture",
            "python,c",
            "--baseline",
            "c,python",
            "--json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let verdict = json(&out);
    assert_eq!(verdict["holds"], true);
    assert_eq!(verdict["checks"][0]["perplexity"], api["perplexity"]);
    assert_eq!(verdict["checks"][0]["regression"], 0.0);
    let (code, out, err) = mixpool(
        &app,
        &[
            "check",
            "--eval",
            "held",
            "--mixture",
            "python",
            "--max-ppl",
            "1",
        ],
    )
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("FAIL"), "{out}");
    let (code, out, _) = mixpool(
        &app,
        &[
            "check",
            "--eval",
            "held",
            "--mixture",
            "python",
            "--baseline",
            "c",
            "--max-regression",
            "100000%",
            "--json",
        ],
    )
    .await;
    assert_eq!((code, json(&out)["holds"].clone()), (0, Value::Bool(true)));

    // On a set of questions: accuracy at least a bound, or against a baseline.
    let (status, body) = app
        .post(
            "/v1/eval-sets?name=quiz&kind=choices",
            std::fs::read(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/choices/piqa.jsonl"),
            )
            .unwrap(),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    for (extra, holds) in [
        (vec!["--metric", "accuracy", "--bound", "0"], true),
        (vec!["--metric", "accuracy", "--bound", "1.01"], false),
        (
            vec!["--metric", "bits_per_byte_gold", "--bound", "1000"],
            true,
        ),
        (
            vec![
                "--metric",
                "accuracy",
                "--baseline",
                "c",
                "--max-regression",
                "100%",
            ],
            true,
        ),
    ] {
        let mut args = vec!["check", "--eval", "quiz", "--mixture", "python", "--json"];
        args.extend_from_slice(&extra);
        let (code, out, err) = mixpool(&app, &args).await;
        assert_eq!(code, if holds { 0 } else { 1 }, "{extra:?}: {out}{err}");
        let verdict = json(&out);
        let check = &verdict["checks"][0];
        assert_eq!(check["metric"], extra[1], "{verdict}");
        let (_, score) = app
            .get("/v1/score?partitions=python&eval=quiz&train=false")
            .await;
        assert_eq!(check["value"], score[extra[1]], "{verdict} {score}");
    }
    let (code, _, err) = mixpool(
        &app,
        &[
            "check",
            "--eval",
            "held",
            "--mixture",
            "python",
            "--metric",
            "accuracy",
            "--bound",
            "0.5",
        ],
    )
    .await;
    assert_eq!(code, 2, "held-out text has no accuracy: {err}");
    assert!(err.contains("no accuracy"), "{err}");

    // Exit 2: a usage error, an unknown partition, a server that is down.
    let (code, _, err) = mixpool(&app, &["check", "--eval", "held", "--mixture", "python"]).await;
    assert_eq!(code, 2, "neither --baseline nor --max-ppl: {err}");
    let (code, _, err) = mixpool(
        &app,
        &[
            "check",
            "--eval",
            "held",
            "--mixture",
            "nope",
            "--max-ppl",
            "9",
        ],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nope"), "{err}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let args = [
        "check",
        "--eval",
        "held",
        "--mixture",
        "python",
        "--max-ppl",
        "9",
    ];
    let (code, _, err) = run(&args, &format!("http://{closed}"), Some(&app.token)).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no answer"), "{err}");

    // The queue: the trainings listed, one followed to its end.
    let (code, out, _) = mixpool(&app, &["jobs", "ls", "--state", "succeeded", "--json"]).await;
    assert_eq!(code, 0);
    let jobs = json(&out);
    let train = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["kind"] == "train")
        .unwrap_or_else(|| panic!("{out}"));
    let (code, out, err) = mixpool(&app, &["jobs", "watch", train["id"].as_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("succeeded"), "{out}");

    // Removed when unused, refused by name when scores use it.
    let (code, _, err) = mixpool(&app, &["partitions", "rm", "c"]).await;
    assert_eq!(code, 1, "c is used by cached scores: {err}");
    assert!(err.contains("409"), "{err}");
    std::fs::write(path("spare.jsonl"), corpus("legal_licenses", 0, 3)).unwrap();
    let (code, out, err) = mixpool(
        &app,
        &["partitions", "add", &path("spare.jsonl"), "--no-train"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("spare: stored") && !out.contains("queued"),
        "{out}"
    );
    let (code, out, err) = mixpool(&app, &["partitions", "rm", "spare"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deleted spare"), "{out}");
    let (status, _) = app.get("/v1/partitions/spare").await;
    assert_eq!(status, 404);
}

fn gzip(text: &str) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(text.as_bytes()).unwrap();
    encoder.finish().unwrap()
}
