//! The OpenAPI document: valid OpenAPI 3.1 by a validator from PyPI, the interactive page
//! served from the binary (no CDN), and schemathesis — a property-based API fuzzer — run
//! against a server seeded with a base, trained unit models and an eval set: no 5xx, and no
//! answer that breaks the document (status, content type, schema). The checkers come from
//! `scripts/api-tools.sh` (`MIXPOOL_TEST_API_TOOLS`, set by `make test`).

use std::process::Command;
use std::time::Duration;

use mixpool::registry::tokens::Scope;
use serde_json::Value;

use mixpool::api::SweepLimits;

use crate::app::{App, corpus, spawn_app, spawn_app_with};
use crate::helpers::token;

fn tools() -> String {
    std::env::var("MIXPOOL_TEST_API_TOOLS").expect(
        "MIXPOOL_TEST_API_TOOLS names the bin folder of scripts/api-tools.sh's venv (make test sets it)",
    )
}

#[tokio::test]
async fn the_document_is_valid_openapi_3_1_and_the_docs_page_needs_no_network() {
    let app = spawn_app().await;
    let (status, spec) = app.get("/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(spec["openapi"], "3.1.0");
    let paths = spec["paths"].as_object().unwrap();
    for path in [
        "/v1/score",
        "/v1/partitions",
        "/v1/sweeps/{id}",
        "/v1/admin/fsck",
    ] {
        assert!(paths.contains_key(path), "{path} in {:?}", paths.keys());
    }
    // Every documented operation is routed (none answers no_route or a wrong method).
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            let url = app.url(&path.replace("{id}", "x").replace("{key}", "x"));
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = app
                .client
                .request(method.clone(), url)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if let Ok(response) = response {
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                assert!(
                    body["error"]["code"] != "no_route" && status != 405,
                    "{method} {path}: {status} {body}"
                );
            }
        }
    }

    // Links lead from answers to operations that exist, by parameters those take.
    let mut operations = std::collections::BTreeMap::new();
    let methods = ["get", "post", "put", "patch", "delete"];
    let operations_of = |item: &Value| -> Vec<Value> {
        let item = item.as_object().unwrap();
        methods
            .iter()
            .filter_map(|m| item.get(*m).cloned())
            .collect()
    };
    for item in paths.values() {
        for operation in operations_of(item) {
            let parameters: Vec<String> = operation["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter_map(|p| p["name"].as_str())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            let id = operation["operationId"].as_str().unwrap().to_string();
            operations.insert(id, parameters);
        }
    }
    let mut links = 0;
    for item in paths.values() {
        for operation in operations_of(item) {
            for response in operation["responses"].as_object().unwrap().values() {
                for link in response["links"]
                    .as_object()
                    .into_iter()
                    .flat_map(|l| l.values())
                {
                    let target = link["operationId"].as_str().unwrap();
                    let takes = operations.get(target).unwrap_or_else(|| panic!("{link}"));
                    for parameter in link["parameters"].as_object().unwrap().keys() {
                        assert!(takes.contains(parameter), "{target}: {link}");
                    }
                    links += 1;
                }
            }
        }
    }
    assert!(links >= 12, "{links} links");

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), spec.to_string()).unwrap();
    let out = Command::new(format!("{}/openapi-spec-validator", tools()))
        .arg(file.path())
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("OK"), "{said}");

    // The interactive page and its files come from this server alone.
    let page = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    for asset in [
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "swagger-initializer.js",
    ] {
        let response = app
            .client
            .get(app.url(&format!("/docs/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{asset}");
    }
    let init = app
        .client
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(init.contains("/v1/openapi.json"), "{init}");

    // A wait too large for a Duration once crashed the request (found by the fuzzer).
    let (status, body) = app
        .get("/v1/score?eval=&partitions=&train=false&wait=1.8446744073709552e%2B19")
        .await;
    assert!(status.is_client_error(), "{status} {body}");
    // A NUL character in a name once reached PostgreSQL and came back as a 500 (fuzzer).
    let (status, body) = app.get("/v1/validations/report?eval=%00x").await;
    assert_eq!(
        (status.as_u16(), &body["error"]["code"]),
        (400, &Value::from("invalid_value")),
        "{body}"
    );
    let nul = r#"{"partitions": ["a"], "eval_sets": ["e\u0000"]}"#;
    let (status, body) = app.post("/v1/sweeps", nul).await;
    assert_eq!(status.as_u16(), 400, "{body}");
}

/// A pool with a base, two trained unit models, a cached score and an eval set, served
/// without a worker (so fuzzed requests queue work but run none) and with short waits.
async fn seeded() -> (App, mixpool::app::App, String) {
    let app = spawn_app_with(SweepLimits::default()).await;
    let worker = app.worker("seed");
    for (name, domain) in [("python", "code_python"), ("c", "code_c")] {
        let path = format!("/v1/partitions?name={name}");
        let (status, body) = app.post(&path, corpus(domain, 0, 8)).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, _) = app
        .post("/v1/eval-sets?name=held", corpus("legal_licenses", 0, 3))
        .await;
    assert_eq!(status, 201);
    while worker.try_run_one().await.unwrap() {}
    app.trained("python").await;
    app.trained("c").await;
    let (status, body) = app
        .get("/v1/score?partitions=python,c&eval=held&wait=0")
        .await;
    assert_eq!(status, 202, "{body}");
    while worker.try_run_one().await.unwrap() {}
    let (status, body) = app.get("/v1/score?partitions=python,c&eval=held").await;
    assert_eq!(
        (status.as_u16(), &body["cached"]),
        (200, &Value::Bool(true)),
        "{body}"
    );
    // The same registry behind a second server: no worker, waits of at most a second.
    let config = crate::app::settings(
        &app.pool,
        &app._dirs.0,
        &app._dirs.1,
        SweepLimits::default(),
        1,
    )
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second = mixpool::app::App::build(&config, Some(listener))
        .await
        .unwrap();
    let admin = token(&app.pool, Scope::Admin).await;
    (app, second, admin)
}

/// The fewest test cases a schemathesis run may generate: a run makes about 12,000 in its 90
/// seconds on two cores, so a quarter of that leaves room for a slower machine and still
/// fails a run that stopped testing early.
const MIN_TEST_CASES: u64 = 3_000;

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let (app, second, admin) = seeded().await;
    let url = second.url();
    let report = tempfile::tempdir().unwrap();
    let cli = format!("{}/schemathesis", tools());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(cli)
            .args(["run", &format!("{url}/v1/openapi.json")])
            .args(["--header", &format!("Authorization: Bearer {admin}")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            ])
            // The stateful phase follows the document's links: an upload's name into its
            // score, a job's id into its cancellation.
            .args(["--phases", "examples,coverage,fuzzing,stateful"])
            .args(["--max-examples", "25", "--max-time", "120", "--request-timeout", "20"])
            // One worker: schemathesis on Python 3.11 can fail inside ast.parse when its
            // threads generate at once ("AST constructor recursion depth mismatch").
            .args(["--seed", "2024", "--workers", "1"])
            .current_dir(report.path())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = said.lines().collect();
    let generated = lines
        .iter()
        .position(|l| l.trim() == "Test cases:")
        .and_then(|i| lines.get(i + 1))
        .map_or("no count", |l| l.trim())
        .to_string();
    println!("schemathesis: {generated}");
    // The stateful phase's own count: scenarios (chains of linked calls) and links used.
    let stateful: Vec<&str> = lines
        .iter()
        .filter(|l| l.contains("Scenarios:") || l.contains("API Links:"))
        .map(|l| l.trim())
        .collect();
    println!("schemathesis, stateful phase: {}", stateful.join("; "));
    assert!(!stateful.is_empty(), "the stateful phase ran: {said}");
    assert!(out.status.success(), "{said}");
    // A run that generated little tested little: every operation gets its examples.
    let count: u64 = generated
        .split(|c: char| !c.is_ascii_digit())
        .find(|n| !n.is_empty())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(count >= MIN_TEST_CASES, "only {count} test cases: {said}");
    assert!(!said.contains("Server error"), "{said}");
    drop(app);
}

/// Rows of every table that a write makes, and the store's objects.
async fn snapshot(app: &App) -> Vec<(String, i64)> {
    let mut counts = Vec::new();
    for table in [
        "bases",
        "recipes",
        "partitions",
        "eval_sets",
        "jobs",
        "models",
        "scores",
        "sweeps",
        "validations",
        "searches",
        "tokens",
    ] {
        let n: i64 = sqlx::query_scalar(&format!("select count(*) from {table}"))
            .fetch_one(&app.pool)
            .await
            .unwrap();
        counts.push((table.to_string(), n));
    }
    let objects = app.store.list("").await.unwrap().len() as i64;
    counts.push(("objects".to_string(), objects));
    counts
}

#[tokio::test]
async fn schemathesis_with_a_read_token_or_none_finds_every_write_refused_and_nothing_changed() {
    let (app, second, _admin) = seeded().await;
    let read = token(&app.pool, Scope::Read).await;
    let before = snapshot(&app).await;
    // With a read token, 403; also 401 where the fuzzer drops or garbles the header.
    let cases: [(&str, Option<String>, &[u64]); 2] = [
        (
            "a read token",
            Some(format!("Authorization: Bearer {read}")),
            &[403, 401],
        ),
        ("no token", None, &[401]),
    ];
    for (who, header, refused) in cases {
        let url = second.url();
        let report = tempfile::tempdir().unwrap();
        let har = report.path().join("run.har");
        let cli = format!("{}/schemathesis", tools());
        let (out, har) = tokio::task::spawn_blocking(move || {
            let mut run = Command::new(cli);
            run.args(["run", &format!("{url}/v1/openapi.json")])
                // Every write: each method but GET (and the probes' HEAD).
                .args(["--include-method-regex", "^(POST|PUT|PATCH|DELETE)$"])
                .args(["--checks", "not_a_server_error"])
                .args(["--phases", "examples,coverage,fuzzing"])
                .args(["--max-examples", "10", "--max-time", "30"])
                .args(["--seed", "2024", "--workers", "1"])
                .args(["--report", "har", "--report-har-path"])
                .arg(&har)
                .current_dir(report.path());
            if let Some(header) = header {
                run.args(["--header", &header]);
            }
            (run.output().unwrap(), std::fs::read_to_string(&har))
        })
        .await
        .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{who}: {said}");
        let har: Value =
            serde_json::from_str(&har.unwrap_or_else(|e| panic!("{e}: {said}"))).unwrap();
        let entries = har["log"]["entries"].as_array().unwrap();
        let (mut writes, mut first) = (0, 0);
        for entry in entries {
            let method = entry["request"]["method"].as_str().unwrap();
            let status = entry["response"]["status"].as_u64().unwrap_or(0);
            // Not the document itself, nor a method the path does not take (405: the
            // coverage phase tries those too).
            let text = entry["response"]["content"]["text"].as_str().unwrap_or("");
            if method == "GET" || method == "HEAD" || text.contains("\"method_not_allowed\"") {
                continue;
            }
            writes += 1;
            assert!(
                refused.contains(&status),
                "{who}: {method} {} answered {status}: {}",
                entry["request"]["url"],
                entry["response"]["content"]["text"]
            );
            first += u64::from(status == refused[0]);
        }
        println!(
            "schemathesis with {who}: {writes} writes refused, {first} with {}",
            refused[0]
        );
        assert!(writes >= 200, "{who}: only {writes} writes: {said}");
        assert!(first * 2 >= writes, "{who}: mostly {refused:?}");
    }
    assert_eq!(snapshot(&app).await, before, "nothing changed");
}
