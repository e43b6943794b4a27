//! The chaos run's clients: the pool built, then a loop of requests spread over its API
//! servers, each asked again while unanswered or answered 503; what they saw.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::servers::PARTITIONS;

/// What the client loop saw.
#[derive(Default)]
pub struct Seen {
    pub requests: AtomicU64,
    pub unavailable: AtomicU64,
    pub other_5xx: AtomicU64,
    /// Requests that went unanswered (a server killed under them, or down), by route.
    pub unanswered: std::sync::Mutex<BTreeMap<String, u64>>,
    pub uploaded: std::sync::Mutex<Vec<String>>,
    /// The ids of the sweeps answered 201.
    pub sweeps: std::sync::Mutex<Vec<String>>,
    pub bad: std::sync::Mutex<Vec<String>>,
}

/// Sends `request`: `Ok(None)` when it went unanswered (a server being restarted),
/// `Ok(Some(status, body))` for a 503 or a status in `expected`, and an error naming the
/// request and its answer for anything else (a 401, a 4xx to a valid request, another 5xx).
pub async fn call(
    seen: &Seen,
    request: reqwest::RequestBuilder,
    expected: &[u16],
) -> Result<Option<(u16, Value)>> {
    seen.requests.fetch_add(1, Ordering::Relaxed);
    let built = request.try_clone().and_then(|r| r.build().ok());
    let described = built.as_ref().map_or("a request".to_string(), |r| {
        format!("{} {}", r.method(), r.url())
    });
    let Ok(response) = request.timeout(Duration::from_secs(30)).send().await else {
        // The route: the method and the path's first two segments.
        let route = built.as_ref().map_or("?".to_string(), |r| {
            let path: Vec<&str> = r.url().path().split('/').take(3).collect();
            format!("{} {}", r.method(), path.join("/"))
        });
        *seen.unanswered.lock().unwrap().entry(route).or_default() += 1;
        return Ok(None);
    };
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status == 503 {
        seen.unavailable.fetch_add(1, Ordering::Relaxed);
    } else if !expected.contains(&status) {
        if status >= 500 {
            seen.other_5xx.fetch_add(1, Ordering::Relaxed);
        }
        seen.bad
            .lock()
            .unwrap()
            .push(format!("{described}: {status} {body}"));
        bail!("{described} answered {status}, which a valid request should not: {body}");
    }
    Ok(Some((status, body)))
}

pub fn corpus() -> Result<Vec<(String, String)>> {
    let dir = PathBuf::from(std::env::var("MIXPOOL_CORPUS").context("MIXPOOL_CORPUS")?);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "jsonl"));
    files.sort();
    let mut parts = Vec::new();
    // Two partitions per domain where there are few domains.
    for round in 0..2 {
        for path in &files {
            if parts.len() == PARTITIONS {
                return Ok(parts);
            }
            let text = std::fs::read_to_string(path)?;
            let docs: String = text
                .lines()
                .skip(round * 40)
                .take(40)
                .map(|l| format!("{l}\n"))
                .collect();
            let stem = path.file_stem().unwrap().to_string_lossy();
            parts.push((format!("{stem}-{round}"), docs));
        }
    }
    Ok(parts)
}

/// The base, the recipe and the partitions, each asked again while it goes unanswered or
/// answers 503, until it is answered 2xx; the tries go to the servers in turn.
pub async fn build(
    client: &reqwest::Client,
    urls: &[String],
    parts: &[(String, String)],
    seen: &Seen,
) -> Result<()> {
    let mut tries = 0usize;
    let mut url = || {
        tries += 1;
        urls[tries % urls.len()].clone()
    };
    let base = json!({"name": "tiny", "preset": "tiny", "seed": 7});
    let recipe = json!({"name": "unit", "tokens": 48 * 1024, "batch_tokens": 2048,
        "micro_batch": 8, "seq_len": 128, "checkpoint_every": 4});
    for (path, body) in [("/v1/bases", base), ("/v1/recipes", recipe)] {
        loop {
            let request = client
                .post(format!("{}{path}", url()))
                .body(body.to_string());
            // A 409: an earlier try was stored though its answer was lost.
            match call(seen, request, &[200, 201, 409]).await? {
                Some((200 | 201, _)) => break,
                Some((409, b)) if b["error"]["code"] == "name_taken" => break,
                Some((409, b)) => bail!("POST {path}: 409 {b}"),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    for (name, text) in parts {
        loop {
            let request = client
                .post(format!("{}/v1/partitions?name={name}", url()))
                .body(text.clone());
            if let Some((200 | 201, _)) = call(seen, request, &[200, 201]).await? {
                seen.uploaded.lock().unwrap().push(name.clone());
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// The clients: the pool built, then until `done` a loop of uploads (eval sets, so that they
/// add no training), scores that wait for their job, sweeps of three partitions, and
/// listings, each request to the servers in turn.
pub async fn clients(
    seen: Arc<Seen>,
    done: Arc<AtomicBool>,
    urls: Vec<String>,
    parts: Vec<(String, String)>,
    client: reqwest::Client,
) -> Result<()> {
    build(&client, &urls, &parts, &seen).await?;
    let mut turn = 0usize;
    let mut url = || {
        turn += 1;
        urls[turn % urls.len()].clone()
    };
    let mut extra = 0;
    while !done.load(Ordering::SeqCst) {
        // Large enough (about 60 kB) that a kill can land while one is being sent.
        let name = format!("extra-{extra}");
        let text: String = (0..400)
            .map(|i| format!("{{\"text\": \"an extra document, number {extra}, line {i}\"}}\n"))
            .collect();
        // Asked again while unanswered or 503, as a client does.
        for _ in 0..50 {
            let request = client
                .post(format!("{}/v1/eval-sets?name={name}", url()))
                .body(text.clone());
            match call(&seen, request, &[200, 201]).await? {
                Some((200 | 201, _)) => {
                    seen.uploaded.lock().unwrap().push(name.clone());
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        let (a, b, c) = (
            &parts[extra % PARTITIONS].0,
            &parts[(extra + 1) % PARTITIONS].0,
            &parts[(extra + 2) % PARTITIONS].0,
        );
        // Waits up to 3 s for its job: not trained yet (409), still queued (202), scored (200).
        let score = format!(
            "{}/v1/score?partitions={a},{b}&eval={name}&wait=3&train=false",
            url()
        );
        call(&seen, client.get(score), &[200, 202, 409]).await?;
        if extra % 4 == 0 {
            let sweep = json!({"partitions": [a, b, c], "sizes": [2, 3],
                "eval_sets": ["extra-0"], "train": false});
            let request = client
                .post(format!("{}/v1/sweeps", url()))
                .body(sweep.to_string());
            // Created (201), or its unit models are not all trained yet (409).
            if let Some((201, body)) = call(&seen, request, &[201, 409]).await? {
                let id = body["id"].as_str().unwrap_or_default().to_string();
                seen.sweeps.lock().unwrap().push(id);
            }
        }
        let jobs = format!("{}/v1/jobs?limit=20", url());
        call(&seen, client.get(jobs), &[200]).await?;
        let partitions = format!("{}/v1/partitions", url());
        call(&seen, client.get(partitions), &[200]).await?;
        extra += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
