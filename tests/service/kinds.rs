//! Every list of job kind names is the one the kinds are registered in: the database's check,
//! the API's filter and its document, the dashboard's filter, the worker's `--kinds` and the
//! queue query the Kubernetes workers scale on.

use std::collections::BTreeSet;

use reqwest::StatusCode;

use crate::app::spawn_app_with;

/// The quoted words of `text` ('a', 'b' → {a, b}).
fn quoted(text: &str) -> BTreeSet<String> {
    text.split('\'')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn every_list_of_job_kinds_is_the_registration_list() {
    let app = spawn_app_with(Default::default()).await;
    let names: BTreeSet<String> = mixpool::jobs::names()
        .into_iter()
        .map(String::from)
        .collect();
    assert!(
        names.contains("train") && names.contains("search"),
        "{names:?}"
    );

    let check: String = sqlx::query_scalar(
        "select pg_get_constraintdef(oid) from pg_constraint where conname = 'jobs_kind_check'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(quoted(&check), names, "the database's check: {check}");

    let (status, doc) = app.get("/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let kind = doc["paths"]["/v1/jobs"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "kind")
        .unwrap_or_else(|| panic!("no kind parameter: {doc}"));
    let documented: BTreeSet<String> = serde_json::from_value(kind["schema"]["enum"].clone())
        .unwrap_or_else(|e| panic!("{e}: {kind}"));
    assert_eq!(documented, names, "the API document");
    for name in &names {
        let (status, body) = app.get(&format!("/v1/jobs?kind={name}")).await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
    }
    let (status, body) = app.get("/v1/jobs?kind=merge").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        names.iter().all(|n| message.contains(n.as_str())),
        "{message}"
    );

    let (status, page) = app.text("/jobs").await;
    assert_eq!(status, StatusCode::OK);
    let listed = page
        .split("data-kinds=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no data-kinds: {page}"));
    let listed: BTreeSet<String> = listed.split(',').map(String::from).collect();
    assert_eq!(listed, names, "the dashboard's filter");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mixpool"))
        .args(["worker", "--kinds", "merge"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(out.status.code(), Some(2), "{said}");
    let offered = said
        .split("possible values: ")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .unwrap_or_else(|| panic!("no possible values: {said}"));
    let offered: BTreeSet<String> = offered.split(", ").map(String::from).collect();
    assert_eq!(offered, names, "the worker's --kinds");

    // The queue depth KEDA scales the Kubernetes workers on counts every kind.
    let scaling = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes/scaling.yaml"
    ))
    .unwrap();
    let counted = scaling
        .split("kind in (")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no kind list in the KEDA query: {scaling}"));
    assert_eq!(quoted(counted), names, "the KEDA query");
}
