//! The soak run (`make soak`): one `serve --no-worker` and two worker processes on the
//! machine's PostgreSQL and a file store, under a steady mix of requests for `MINUTES`
//! (default 30) — uploads of eval sets and, now and then, of partitions (which train),
//! scores answered from the cache and new ones (whose job events a client follows to the
//! end), sweeps, and listings. Every minute it prints the requests per second, the 5xx, the
//! server's and the workers' resident memory, the server's open file descriptors and the
//! database's connections; at the end, the latency per route (p50, p99, max), and it fails
//! when a 5xx was answered, when the server's memory at the end is more than 10% above its
//! value after five minutes, or when its file descriptors or the database's connections grew.
//!
//! Needs `MIXPOOL_BIN` (the mixpool binary) and `MIXPOOL_CORPUS`. Usage:
//! `soak [MINUTES] [CLIENTS]` (4 clients by default).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use comfy_table::Table;
use futures::StreamExt;
use serde_json::{Value, json};

#[path = "../chaos/servers.rs"]
#[allow(dead_code)] // the S3 server is the chaos run's
mod servers;

use servers::Pool;

/// The machine's PostgreSQL (`scripts/postgres.sh` starts one where none answers).
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

/// Every answer, by route: latencies in seconds, and the 5xx.
#[derive(Default)]
struct Seen {
    latencies: Mutex<BTreeMap<&'static str, Vec<f64>>>,
    requests: AtomicU64,
    server_errors: AtomicU64,
    /// The first few 5xx and unexpected answers, for the report.
    bad: Mutex<Vec<String>>,
}

impl Seen {
    /// Sends `request`, timed under `route`; the status and the body. A 5xx or a status
    /// outside `expected` is kept for the report.
    async fn call(
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

    fn record(&self, route: &'static str, took: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut latencies = self.latencies.lock().unwrap();
        latencies.entry(route).or_default().push(took.as_secs_f64());
    }

    fn complain(&self, what: String) {
        let mut bad = self.bad.lock().unwrap();
        if bad.len() < 20 {
            bad.push(what);
        }
    }
}

/// The corpus's documents (JSONL lines), by domain file.
struct Corpus(Vec<Vec<String>>);

impl Corpus {
    fn open() -> Result<Corpus> {
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
async fn seed(pool: &Pool, corpus: &Corpus, seen: &Seen) -> Result<Vec<String>> {
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
async fn client(
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

/// A process's resident memory in MB and its open file descriptors.
fn process(pid: u32) -> (f64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss_kb / 1024.0, fds)
}

/// One minute's figures.
struct Minute {
    requests: u64,
    server_errors: u64,
    server_mb: f64,
    workers_mb: Vec<f64>,
    server_fds: usize,
    connections: i64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let minutes: u64 = args.get(1).map_or(Ok(30), |a| a.parse())?;
    let clients: usize = args.get(2).map_or(Ok(4), |a| a.parse())?;
    let corpus = Arc::new(Corpus::open()?);
    let mut pool = Pool::start("soak", POSTGRES, 1, 2, true).await?;
    let seen = Arc::new(Seen::default());
    let seeded = Instant::now();
    let names = seed(&pool, &corpus, &seen).await?;
    eprintln!(
        "soak: seeded {} partitions in {:.0} s; {minutes} minutes of {clients} clients",
        names.len(),
        seeded.elapsed().as_secs_f64()
    );
    *seen.latencies.lock().unwrap() = BTreeMap::new();
    seen.requests.store(0, Ordering::SeqCst);
    let db = sqlx::PgPool::connect(&format!("{POSTGRES}/postgres")).await?;
    let database = format!("chaos_{}", pool.name);

    let done = Arc::new(AtomicBool::new(false));
    let trained = Arc::new(Mutex::new(names));
    let target = Arc::new((pool.client.clone(), pool.url.clone()));
    let tasks: Vec<_> = (0..clients)
        .map(|id| {
            tokio::spawn(client(
                id,
                target.clone(),
                corpus.clone(),
                seen.clone(),
                trained.clone(),
                done.clone(),
            ))
        })
        .collect();

    let mut table = Table::new();
    table.set_header([
        "minute",
        "requests/s",
        "5xx",
        "server RSS MB",
        "workers RSS MB",
        "server fds",
        "db connections",
        "partitions",
    ]);
    let mut rows: Vec<Minute> = Vec::new();
    let started = Instant::now();
    let mut last = 0;
    for minute in 1..=minutes {
        let next = started + Duration::from_secs(60 * minute);
        tokio::time::sleep_until(next.into()).await;
        let requests = seen.requests.load(Ordering::SeqCst);
        let (server_mb, server_fds) = process(pool.apis[0].process.id());
        let workers_mb = pool.workers.iter().map(|w| process(w.id()).0).collect();
        let connections: i64 =
            sqlx::query_scalar("select count(*) from pg_stat_activity where datname = $1")
                .bind(&database)
                .fetch_one(&db)
                .await?;
        let row = Minute {
            requests: requests - last,
            server_errors: seen.server_errors.load(Ordering::SeqCst),
            server_mb,
            workers_mb,
            server_fds,
            connections,
        };
        last = requests;
        let partitions = trained.lock().unwrap().len();
        let cells = vec![
            minute.to_string(),
            format!("{:.1}", row.requests as f64 / 60.0),
            row.server_errors.to_string(),
            format!("{:.0}", row.server_mb),
            row.workers_mb
                .iter()
                .map(|m| format!("{m:.0}"))
                .collect::<Vec<_>>()
                .join(" / "),
            row.server_fds.to_string(),
            row.connections.to_string(),
            partitions.to_string(),
        ];
        eprintln!("soak: {}", cells.join("  "));
        table.add_row(cells);
        rows.push(row);
        if let Some(exited) = pool
            .workers
            .iter_mut()
            .chain([&mut pool.apis[0].process])
            .find_map(|p| p.try_wait().ok().flatten())
        {
            bail!("a process of the pool exited: {exited}");
        }
    }
    done.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await?;
    }

    let mut routes = Table::new();
    routes.set_header(["route", "requests", "p50 ms", "p99 ms", "max ms"]);
    for (route, latencies) in seen.latencies.lock().unwrap().iter_mut() {
        latencies.sort_by(f64::total_cmp);
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize] * 1e3;
        routes.add_row([
            route.to_string(),
            latencies.len().to_string(),
            format!("{:.1}", at(0.5)),
            format!("{:.1}", at(0.99)),
            format!("{:.1}", at(1.0)),
        ]);
    }
    println!("{table}");
    println!("{routes}");
    let requests = seen.requests.load(Ordering::SeqCst);
    println!(
        "soak: {minutes} minutes, {requests} requests ({:.1}/s), {} answered 5xx",
        requests as f64 / started.elapsed().as_secs_f64(),
        seen.server_errors.load(Ordering::SeqCst)
    );

    // The checks: against minute 5 (the first minute when the run is shorter).
    let mut failures = Vec::new();
    let (first, end) = (&rows[rows.len().min(5) - 1], rows.last().expect("a minute"));
    if seen.server_errors.load(Ordering::SeqCst) > 0 {
        failures.push("5xx answers".to_string());
    }
    if end.server_mb > first.server_mb * 1.10 {
        failures.push(format!(
            "the server's memory grew from {:.0} MB to {:.0} MB",
            first.server_mb, end.server_mb
        ));
    }
    // A few descriptors and connections come and go with the requests in flight.
    if end.server_fds > first.server_fds + 8 {
        failures.push(format!(
            "the server's open files grew from {} to {}",
            first.server_fds, end.server_fds
        ));
    }
    let most = rows.iter().map(|r| r.connections).max().unwrap_or(0);
    if end.connections > first.connections + 4 {
        failures.push(format!(
            "database connections grew from {} to {} (most {most})",
            first.connections, end.connections
        ));
    }
    for bad in seen.bad.lock().unwrap().iter() {
        println!("unexpected: {bad}");
    }
    if !failures.is_empty() {
        bail!("the soak failed: {}", failures.join("; "));
    }
    println!("soak: all checks hold");
    Ok(())
}
