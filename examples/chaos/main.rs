//! The chaos run (`make chaos`): a small pool built twice from the same base, recipe and
//! partitions — once undisturbed, once by two worker processes that are SIGKILLed at random
//! moments while PostgreSQL is restarted twice (once as a crash) and the S3 server once,
//! under a loop of client requests — then checked: every job succeeded exactly once, every
//! unit model's weights equal the undisturbed run's, no 5xx but 503 reached a client,
//! nothing uploaded with a 2xx is missing, and `mixpool fsck` is clean.
//!
//! Needs `MIXPOOL_BIN` (the mixpool binary), `MIXPOOL_CORPUS` and `MIXPOOL_WEED` (the
//! SeaweedFS binary that `scripts/s3.sh` installs). It starts its own PostgreSQL
//! (`scripts/chaos-postgres.sh`) and its own S3 server, on ports of their own, so that it
//! can restart them, and makes its own admin token. Any answer it does not expect (a 401, a
//! 4xx to a valid request) fails the run at once with the response, and the whole run has a
//! deadline. Usage: `chaos [KILLS] [SEED] [DEADLINE_MINUTES]`; with fewer than 6 kills
//! (the short form `make test` runs) PostgreSQL restarts once, as a crash.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

mod servers;

use servers::{PARTITIONS, Pool, S3Server, bin, s3_endpoint};

/// What the client loop saw.
#[derive(Default)]
struct Seen {
    requests: AtomicU64,
    unavailable: AtomicU64,
    other_5xx: AtomicU64,
    refused: AtomicU64,
    uploaded: std::sync::Mutex<Vec<String>>,
    bad: std::sync::Mutex<Vec<String>>,
}

/// Sends `request`: `Ok(None)` when it went unanswered (a server being restarted),
/// `Ok(Some(status, body))` for a 503 or a status in `expected`, and an error naming the
/// request and its answer for anything else (a 401, a 4xx to a valid request, another 5xx).
async fn call(
    seen: &Seen,
    request: reqwest::RequestBuilder,
    expected: &[u16],
) -> Result<Option<(u16, Value)>> {
    seen.requests.fetch_add(1, Ordering::Relaxed);
    let described = request
        .try_clone()
        .and_then(|r| r.build().ok())
        .map_or("a request".to_string(), |r| {
            format!("{} {}", r.method(), r.url())
        });
    let Ok(response) = request.timeout(Duration::from_secs(30)).send().await else {
        seen.refused.fetch_add(1, Ordering::Relaxed);
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

fn corpus() -> Result<Vec<(String, String)>> {
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
/// answers 503, until it is answered 2xx.
async fn build(
    client: &reqwest::Client,
    url: &str,
    parts: &[(String, String)],
    seen: &Seen,
) -> Result<()> {
    let base = json!({"name": "tiny", "preset": "tiny", "seed": 7});
    let recipe = json!({"name": "unit", "tokens": 48 * 1024, "batch_tokens": 2048,
        "micro_batch": 8, "seq_len": 128, "checkpoint_every": 4});
    for (path, body) in [("/v1/bases", base), ("/v1/recipes", recipe)] {
        loop {
            let request = client.post(format!("{url}{path}")).body(body.to_string());
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
                .post(format!("{url}/v1/partitions?name={name}"))
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

/// Unit model weights by partition name, once all are ready (or an error after `limit`).
async fn weights(pool: &Pool, limit: Duration) -> Result<BTreeMap<String, String>> {
    let client = &pool.client;
    let started = Instant::now();
    loop {
        let page = client
            .get(format!("{}/v1/partitions?limit=100", pool.url))
            .send()
            .await;
        if let Ok(page) = page
            && page.status() == 200
        {
            let page: Value = page.json().await.unwrap_or(Value::Null);
            let mut all = BTreeMap::new();
            let items = page["items"].as_array().cloned().unwrap_or_default();
            for p in &items {
                let name = p["name"].as_str().unwrap_or_default();
                let request = client.get(format!("{}/v1/partitions/{name}", pool.url));
                let one: Value = match request.send().await {
                    Ok(r) => r.json().await.unwrap_or(Value::Null),
                    Err(_) => Value::Null,
                };
                if let Some(sha) = one["models"][0]["weights_sha256"].as_str()
                    && one["models"][0]["state"] == "ready"
                {
                    all.insert(name.to_string(), sha.to_string());
                }
            }
            if all.len() == items.len() && all.len() >= PARTITIONS {
                return Ok(all);
            }
        }
        ensure!(
            started.elapsed() < limit,
            "{}: the unit models were not all trained in {limit:?}",
            pool.name
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What a stuck run looks like: the jobs, the S3 server, the end of the workers' log.
async fn diagnose(pool: &Pool, s3: &mut S3Server) -> String {
    let mut out = String::new();
    if let Ok(db) = sqlx::PgPool::connect(&pool.database).await {
        let jobs: Vec<(String, String, i32, i32, f32, Option<String>)> = sqlx::query_as(
            "select kind, state, attempts, strikes, progress, error from jobs order by created_at",
        )
        .fetch_all(&db)
        .await
        .unwrap_or_default();
        for job in jobs {
            out += &format!("job {job:?}\n");
        }
    }
    let alive = s3.process.as_mut().map(|p| p.try_wait().ok().flatten());
    out += &format!("S3 server exited: {alive:?}\n");
    let log = std::fs::read_to_string(pool.data.path().join("workers.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    for line in &lines[lines.len().saturating_sub(15)..] {
        out += &format!("{line}\n");
    }
    out
}

fn script(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    ensure!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A small deterministic generator for the fault schedule (a seed makes a run repeatable).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let kills: usize = args.get(1).map_or(Ok(20), |a| a.parse())?;
    let seed: u64 = args.get(2).map_or(Ok(2024), |a| a.parse())?;
    let deadline: u64 = args.get(3).map_or(Ok(40), |a| a.parse())?;
    let started = Instant::now();
    let admin = script(&["scripts/chaos-postgres.sh", "start"])?;
    let mut s3 = S3Server::start().await?;
    let result = tokio::time::timeout(
        Duration::from_secs(deadline * 60),
        run(&admin, &mut s3, kills, seed),
    )
    .await
    .unwrap_or_else(|_| {
        Err(anyhow::anyhow!(
            "the chaos run passed its deadline of {deadline} minutes"
        ))
    });
    drop(s3);
    let _ = script(&["scripts/chaos-postgres.sh", "stop"]);
    let summary = result?;
    println!("{summary}");
    println!("chaos run: {:.0} s in all", started.elapsed().as_secs_f64());
    Ok(())
}

async fn run(admin: &str, s3: &mut S3Server, kills: usize, seed: u64) -> Result<String> {
    let parts = corpus()?;
    ensure!(
        parts.len() == PARTITIONS,
        "need {PARTITIONS} partitions from the corpus"
    );

    // The undisturbed run.
    let quiet = Seen::default();
    let reference = Pool::start("reference", admin, 2).await?;
    build(&reference.client, &reference.url, &parts, &quiet).await?;
    let want = weights(&reference, Duration::from_secs(900)).await?;
    drop(reference);
    eprintln!("undisturbed: {} unit models trained", want.len());

    // The disturbed run.
    let seen = Arc::new(Seen::default());
    let mut pool = Pool::start("chaos", admin, 2).await?;
    let done = Arc::new(AtomicBool::new(false));
    // Clients: the pool built, then a loop of reads, scores and extra uploads.
    let clients = {
        let (seen, done, url, parts, client) = (
            seen.clone(),
            done.clone(),
            pool.url.clone(),
            parts.clone(),
            pool.client.clone(),
        );
        tokio::spawn(async move {
            build(&client, &url, &parts, &seen).await?;
            let mut extra = 0;
            while !done.load(Ordering::SeqCst) {
                // Extra uploads are eval sets, so that they add no training.
                let name = format!("extra-{extra}");
                let text = format!("{{\"text\": \"an extra document, number {extra}\"}}\n");
                // Retried on a 503, as a client does.
                for _ in 0..50 {
                    let request = client
                        .post(format!("{url}/v1/eval-sets?name={name}"))
                        .body(text.clone());
                    match call(&seen, request, &[200, 201]).await? {
                        Some((200 | 201, _)) => {
                            seen.uploaded.lock().unwrap().push(name);
                            break;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
                let (a, b) = (
                    &parts[extra % PARTITIONS].0,
                    &parts[(extra + 1) % PARTITIONS].0,
                );
                let score =
                    format!("{url}/v1/score?partitions={a},{b}&eval=extra-0&wait=0&train=false");
                // Not trained yet (409), queued (202) or scored (200).
                call(&seen, client.get(score), &[200, 202, 409]).await?;
                call(&seen, client.get(format!("{url}/v1/jobs?limit=20")), &[200]).await?;
                call(&seen, client.get(format!("{url}/v1/partitions")), &[200]).await?;
                extra += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(())
        })
    };

    let mut rng = Rng(seed | 1);
    let (mut pg_restarts, mut s3_restarts) = (0, 0);
    // Two PostgreSQL restarts (the second a crash), or in the short form one crash.
    let pg_at = if kills < 6 {
        vec![kills / 3]
    } else {
        vec![kills / 3, 2 * kills / 3]
    };
    for k in 0..kills {
        tokio::time::sleep(Duration::from_millis(500 + rng.below(2500))).await;
        if clients.is_finished() {
            // The clients stop early only on an answer they did not expect.
            break;
        }
        let i = rng.below(pool.workers.len() as u64) as usize;
        pool.kill_worker(i)?;
        if pg_at.contains(&k) {
            let how = if pg_restarts + 1 < pg_at.len() {
                "fast"
            } else {
                "immediate"
            };
            script(&["scripts/chaos-postgres.sh", "restart", how])?;
            pg_restarts += 1;
        }
        if k == kills / 2 {
            s3.restart().await?;
            s3_restarts += 1;
        }
    }
    if clients.is_finished() {
        clients.await??;
        bail!("the clients stopped early");
    }
    let got = weights(&pool, Duration::from_secs(300)).await;
    done.store(true, Ordering::SeqCst);
    clients.await??;
    if got.is_err() {
        eprintln!("{}", diagnose(&pool, s3).await);
    }
    let got = got?;
    // The score jobs the clients queued last run to their end too.
    let db = sqlx::PgPool::connect(&pool.database).await?;
    let drained = Instant::now();
    while sqlx::query_scalar::<_, i64>(
        "select count(*) from jobs where state in ('queued', 'running')",
    )
    .fetch_one(&db)
    .await?
        > 0
    {
        ensure!(
            drained.elapsed() < Duration::from_secs(300),
            "the queue did not drain"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The checks.
    let mut failures = Vec::new();
    let trained: BTreeMap<_, _> = got
        .iter()
        .filter(|(n, _)| !n.starts_with("extra-"))
        .collect();
    for (name, sha) in &want {
        if trained.get(name).map(|s| s.as_str()) != Some(sha.as_str()) {
            failures.push(format!(
                "{name}: weights {:?}, undisturbed {sha}",
                trained.get(name)
            ));
        }
    }
    let jobs: Vec<(String, String, i64)> =
        sqlx::query_as("select kind, state, count(*) from jobs group by 1, 2 order by 1, 2")
            .fetch_all(&db)
            .await?;
    for (kind, state, n) in &jobs {
        if state != "succeeded" {
            failures.push(format!("{n} {kind} jobs {state}"));
        }
    }
    let twice: i64 = sqlx::query_scalar(
        "select count(*) from (select payload->>'model' from jobs
         where kind = 'train' and state = 'succeeded' group by 1 having count(*) > 1) t",
    )
    .fetch_one(&db)
    .await?;
    if twice > 0 {
        failures.push(format!("{twice} unit models trained by two jobs"));
    }
    let attempts: i64 = sqlx::query_scalar("select coalesce(sum(attempts), 0) from jobs")
        .fetch_one(&db)
        .await?;
    let uploaded = seen.uploaded.lock().unwrap().clone();
    let names: Vec<String> =
        sqlx::query_scalar("select name from partitions union all select name from eval_sets")
            .fetch_all(&db)
            .await?;
    for name in &uploaded {
        if !names.contains(name) {
            failures.push(format!("{name} was uploaded (2xx) but is missing"));
        }
    }
    for bad in seen.bad.lock().unwrap().iter().take(5) {
        failures.push(format!("a 5xx other than 503: {bad}"));
    }
    let fsck = Command::new(bin())
        .args(["fsck", "--json"])
        .env("DATABASE_URL", &pool.database)
        .env("MIXPOOL_STORE", &pool.store)
        .env("AWS_ENDPOINT_URL", s3_endpoint())
        .env("AWS_ACCESS_KEY_ID", "mixpool")
        .env("AWS_SECRET_ACCESS_KEY", "mixpool-secret")
        .env("AWS_REGION", "us-east-1")
        .output()?;
    let report: Value = serde_json::from_slice(&fsck.stdout).unwrap_or(Value::Null);
    let problems = report["problems"].as_array().map_or(0, Vec::len);
    if fsck.status.code() != Some(0) {
        failures.push(format!("fsck: exit {:?}, {report}", fsck.status.code()));
    }
    let summary = format!(
        "kills {kills}, PostgreSQL restarts {pg_restarts} (the last one a crash), S3 restarts {s3_restarts}; \
         requests {}, 503s {}, other 5xx {}, unanswered {}; uploads kept {}/{}; \
         unit models {} equal to the undisturbed run's: {}; job attempts {attempts} for {} jobs; \
         fsck: {} objects, {problems} problems",
        seen.requests.load(Ordering::Relaxed),
        seen.unavailable.load(Ordering::Relaxed),
        seen.other_5xx.load(Ordering::Relaxed),
        seen.refused.load(Ordering::Relaxed),
        uploaded.len() - failures.iter().filter(|f| f.contains("is missing")).count(),
        uploaded.len(),
        want.len(),
        !failures.iter().any(|f| f.contains("undisturbed")),
        jobs.iter().map(|(_, _, n)| n).sum::<i64>(),
        report["objects"],
    );
    if !failures.is_empty() {
        bail!("{summary}\nFAILED:\n  {}", failures.join("\n  "));
    }
    Ok(format!("{summary}\nall checks hold"))
}
