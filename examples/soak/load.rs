//! The soak's load: its clients' fixed cycle of requests, timed by route, and the pool's
//! seeding.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::servers::Pool;

/// Every answer, by route: latencies in seconds, and the 5xx.
#[derive(Default)]
pub struct Seen {
    pub latencies: Mutex<BTreeMap<&'static str, Vec<f64>>>,
    pub requests: AtomicU64,
    pub server_errors: AtomicU64,
    /// The first few 5xx and unexpected answers, for the report.
    pub bad: Mutex<Vec<String>>,
}

impl Seen {
    /// Sends `request`, timed under `route`; the status and the body. A 5xx or a status
    /// outside `expected` is kept for the report.
    pub async fn call(
        &self,
        route: &'static str,
        request: reqwest::RequestBuilder,
        expected: &[u16],
    ) -> Option<(u16, Value)> {
        let started = Instant::now();
        let answer = request.timeout(Duration::from_secs(60)).send().await;
        let answer = match answer {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.json().await.unwrap_or(Value::Null);
                Ok((status, body))
            }
            Err(e) => Err(e),
        };
        self.record(route, started.elapsed());
        match answer {
            Ok((status, body)) => {
                if status >= 500 {
                    self.server_errors.fetch_add(1, Ordering::Relaxed);
                }
                if status >= 500 || !expected.contains(&status) {
                    self.complain(format!("{route}: {status} {body}"));
                }
                Some((status, body))
            }
            Err(e) => {
                self.complain(format!("{route}: {e}"));
                None
            }
        }
    }

    pub fn record(&self, route: &'static str, took: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut latencies = self.latencies.lock().unwrap();
        latencies.entry(route).or_default().push(took.as_secs_f64());
    }

    pub fn complain(&self, what: String) {
        let mut bad = self.bad.lock().unwrap();
        if bad.len() < 20 {
            bad.push(what);
        }
    }
}

/// The corpus's documents (JSONL lines), by domain file.
pub struct Corpus(pub Vec<Vec<String>>);

impl Corpus {
    pub fn open() -> Result<Corpus> {
        let dir = PathBuf::from(std::env::var("MIXPOOL_CORPUS").context("MIXPOOL_CORPUS")?);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.retain(|p| p.extension().is_some_and(|e| e == "jsonl"));
        files.sort();
        ensure!(files.len() >= 2, "{}: too few domains", dir.display());
        let mut domains = Vec::new();
        // Documents cut to their first 1,500 characters: the soak is of the service, so its
        // evaluations stay short.
        for file in files {
            let text = std::fs::read_to_string(&file)?;
            let mut docs = Vec::new();
            for line in text.lines() {
                let doc: Value = serde_json::from_str(line)?;
                let text: String = doc["text"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(1500)
                    .collect();
                docs.push(json!({ "text": text }).to_string());
            }
            domains.push(docs);
        }
        Ok(Corpus(domains))
    }

    /// `lines` documents of domain `domain`, from document `skip` on (wrapping around).
    fn text(&self, domain: usize, skip: usize, lines: usize) -> String {
        let all = &self.0[domain % self.0.len()];
        (0..lines.min(all.len()))
            .map(|i| format!("{}\n", all[(skip + i) % all.len()]))
            .collect()
    }
}

/// The pool's first partitions (one per domain, trained before the load starts), its eval
/// set `held`, and a cached score.
pub async fn seed(pool: &Pool, corpus: &Corpus, seen: &Seen) -> Result<Vec<String>> {
    let (client, url) = (&pool.client, &pool.url);
    let base = json!({"name": "tiny", "preset": "tiny", "seed": 7});
    let recipe = json!({"name": "unit", "tokens": 32 * 1024, "batch_tokens": 2048,
        "micro_batch": 8, "seq_len": 128});
    for (path, body) in [("/v1/bases", base), ("/v1/recipes", recipe)] {
        let request = client.post(format!("{url}{path}")).body(body.to_string());
        ensure!(
            seen.call("POST seed", request, &[201])
                .await
                .is_some_and(|(s, _)| s == 201),
            "seeding {path}"
        );
    }
    let mut names = Vec::new();
    for domain in 0..corpus.0.len().min(4) {
        let name = format!("seed-{domain}");
        let request = client
            .post(format!("{url}/v1/partitions?name={name}"))
            .body(corpus.text(domain, 0, 60));
        ensure!(
            seen.call("POST seed", request, &[201]).await.is_some(),
            "uploading {name}"
        );
        names.push(name);
    }
    let held = corpus.text(0, 500, 20);
    let request = client
        .post(format!("{url}/v1/eval-sets?name=held"))
        .body(held);
    seen.call("POST seed", request, &[201]).await;
    // Trained, and the first pair scored (so that asking again is a cache hit).
    let score = format!(
        "{url}/v1/score?partitions={},{}&eval=held&wait=30",
        names[0], names[1]
    );
    let started = Instant::now();
    loop {
        let answer = seen.call("GET seed", client.get(&score), &[200, 202]).await;
        match answer {
            Some((200, _)) => break,
            Some((202, _)) if started.elapsed() < Duration::from_secs(900) => {}
            other => bail!("the seed score: {other:?}"),
        }
    }
    Ok(names)
}

/// One client: a fixed cycle of requests, one every `PACE`, until `done`.
pub async fn client(
    id: usize,
    pool: Arc<(reqwest::Client, String)>,
    corpus: Arc<Corpus>,
    seen: Arc<Seen>,
    trained: Arc<Mutex<Vec<String>>>,
    done: Arc<AtomicBool>,
) {
    let (client, url) = (&pool.0, &pool.1);
    let mut step = 0usize;
    while !done.load(Ordering::SeqCst) {
        let names = trained.lock().unwrap().clone();
        let n = names.len();
        let (a, b, c) = (
            &names[step % n],
            &names[(step + 1) % n],
            &names[(step + 2) % n],
        );
        let unique = id * 1_000_000 + step;
        match step % 20 {
            // Reads: scores from the cache and listings.
            0 | 4 | 8 | 12 | 16 => {
                let score = format!(
                    "{url}/v1/score?partitions={},{}&eval=held",
                    names[0], names[1]
                );
                seen.call("GET /v1/score (cached)", client.get(score), &[200])
                    .await;
            }
            1 | 9 | 17 => {
                let list = format!("{url}/v1/partitions?limit=50");
                seen.call("GET /v1/partitions", client.get(list), &[200])
                    .await;
            }
            2 | 10 | 18 => {
                let list = format!("{url}/v1/jobs?limit=20");
                seen.call("GET /v1/jobs", client.get(list), &[200]).await;
            }
            3 | 11 => {
                let page = format!("{url}/v1/overview");
                seen.call("GET /v1/overview", client.get(page), &[200])
                    .await;
            }
            5 | 13 => {
                let page = format!("{url}/v1/leaderboard?eval=held&limit=20");
                seen.call("GET /v1/leaderboard", client.get(page), &[200])
                    .await;
            }
            6 => {
                let page = format!("{url}/v1/sweeps?limit=10");
                seen.call("GET /v1/sweeps", client.get(page), &[200]).await;
            }
            // A new score (weights never asked before), its job's events followed to the end.
            7 | 15 => {
                let w = 1 + unique % 997;
                let score = format!(
                    "{url}/v1/score?partitions={a},{b}&weights={w},{}&eval=held&wait=0",
                    1000 - w
                );
                let answer = seen
                    .call("GET /v1/score (new)", client.get(score), &[200, 202])
                    .await;
                if let Some((202, body)) = answer
                    && let Some(job) = body["job"]["id"].as_str()
                {
                    follow(&seen, client, &format!("{url}/v1/jobs/{job}/events")).await;
                }
            }
            // Uploads: an eval set; every 200th step of the first client, a partition.
            14 => {
                let text = corpus.text(unique, unique * 7, 10);
                let upload = format!("{url}/v1/eval-sets?name=soak-{unique}");
                let request = client.post(upload).body(text);
                // 200: another client sent the same documents first.
                seen.call("POST /v1/eval-sets", request, &[200, 201]).await;
            }
            19 if id == 0 && step % 200 == 19 => {
                let text = corpus.text(unique, unique * 13, 60);
                let name = format!("soak-{unique}");
                let upload = format!("{url}/v1/partitions?name={name}");
                let request = client.post(upload).body(text);
                if let Some((201, _)) = seen.call("POST /v1/partitions", request, &[201]).await {
                    let trained = trained.clone();
                    let (client, url) = (client.clone(), url.clone());
                    // Scored and swept once trained.
                    tokio::spawn(async move {
                        if ready(&client, &url, &name).await {
                            trained.lock().unwrap().push(name);
                        }
                    });
                }
            }
            // A sweep of three partitions, every other cycle.
            19 if step % 40 == 19 => {
                let sweep = json!({"partitions": [a, b, c], "sizes": [2, 3],
                    "eval_sets": ["held"], "train": false});
                let request = client
                    .post(format!("{url}/v1/sweeps"))
                    .body(sweep.to_string());
                seen.call("POST /v1/sweeps", request, &[201]).await;
            }
            _ => {
                let health = format!("{url}/readyz");
                seen.call("GET /readyz", client.get(health), &[200]).await;
            }
        }
        step += 1;
        tokio::time::sleep(PACE).await;
    }
}

/// The pause between a client's requests.
const PACE: Duration = Duration::from_millis(100);

/// Reads a job's server-sent events until the stream ends (the job did), timed as a route.
async fn follow(seen: &Seen, client: &reqwest::Client, url: &str) {
    let started = Instant::now();
    let route = "GET /v1/jobs/{id}/events (to the end)";
    match client
        .get(url)
        .timeout(Duration::from_secs(300))
        .send()
        .await
    {
        Ok(response) if response.status() == 200 => {
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                if let Err(e) = chunk {
                    seen.complain(format!("{route}: {e}"));
                    break;
                }
            }
            seen.record(route, started.elapsed());
        }
        Ok(response) => {
            let status = response.status().as_u16();
            if status >= 500 {
                seen.server_errors.fetch_add(1, Ordering::Relaxed);
            }
            seen.record(route, started.elapsed());
            seen.complain(format!("{route}: {status}"));
        }
        Err(e) => seen.complain(format!("{route}: {e}")),
    }
}

/// Waits until the partition's unit model is ready (false if it failed).
async fn ready(client: &reqwest::Client, url: &str, name: &str) -> bool {
    loop {
        let one: Value = match client
            .get(format!("{url}/v1/partitions/{name}"))
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        match one["models"][0]["state"].as_str() {
            Some("ready") => return true,
            Some("failed" | "cancelled") => return false,
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}
