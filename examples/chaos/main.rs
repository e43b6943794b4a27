//! The chaos run (`make chaos`): a small pool built twice from the same base, recipe and
//! partitions — once undisturbed, once behind two API servers on one database and store by
//! two worker processes, under a loop of client requests spread over both servers (uploads,
//! scores that wait for their job, sweeps, listings), while one kill in four SIGKILLs an API
//! server and the others a worker (each started again at once), PostgreSQL is restarted twice
//! (once as a crash) and the S3 server once — then checked: every job succeeded, no unit
//! model was trained twice, every unit model's weights equal the undisturbed run's, no 5xx but
//! 503 reached a client, nothing uploaded with a 2xx is missing, every sweep created is whole
//! and scored, and `mixpool fsck` is clean (and clean again once `--repair --grace 0` removed
//! what uploads cut off by kills left behind).
//!
//! Needs `MIXPOOL_BIN` (the mixpool binary), `MIXPOOL_CORPUS` and `MIXPOOL_WEED` (the
//! SeaweedFS binary that `scripts/s3.sh` installs). It starts its own PostgreSQL
//! (`scripts/chaos-postgres.sh`) and its own S3 server, on ports of their own, so that it
//! can restart them, and makes its own admin token. Any answer it does not expect (a 401, a
//! 4xx to a valid request) fails the run at once with the response, and the whole run has a
//! deadline. Usage: `chaos [KILLS] [SEED] [DEADLINE_MINUTES]` (100 kills by default); with
//! fewer than 6 kills (the short form `make test` runs) PostgreSQL restarts once, as a crash.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

mod clients;
mod servers;

use clients::{Seen, build, clients, corpus};
use servers::{PARTITIONS, Pool, S3Server, bin, s3_endpoint};

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

/// `mixpool fsck --json ARGS` on the pool: its report.
fn fsck(pool: &Pool, args: &[&str]) -> Result<Value> {
    let out = Command::new(bin())
        .args(["fsck", "--json"])
        .args(args)
        .env("DATABASE_URL", &pool.database)
        .env("MIXPOOL_STORE", &pool.store)
        .env("AWS_ENDPOINT_URL", s3_endpoint())
        .env("AWS_ACCESS_KEY_ID", "mixpool")
        .env("AWS_SECRET_ACCESS_KEY", "mixpool-secret")
        .env("AWS_REGION", "us-east-1")
        .output()?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "fsck {args:?}: exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
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
    let kills: usize = args.get(1).map_or(Ok(100), |a| a.parse())?;
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
    let reference = Pool::start("reference", admin, 1, 2, false).await?;
    build(&reference.client, &reference.urls, &parts, &quiet).await?;
    let want = weights(&reference, Duration::from_secs(900)).await?;
    drop(reference);
    eprintln!("undisturbed: {} unit models trained", want.len());

    // The disturbed run: two API servers behind one database and store, the clients' requests
    // spread over both.
    let seen = Arc::new(Seen::default());
    let mut pool = Pool::start("chaos", admin, 2, 2, false).await?;
    let done = Arc::new(AtomicBool::new(false));
    let clients = tokio::spawn(clients(
        seen.clone(),
        done.clone(),
        pool.urls.clone(),
        parts.clone(),
        pool.client.clone(),
    ));

    let mut rng = Rng(seed | 1);
    let (mut pg_restarts, mut s3_restarts, mut api_kills) = (0, 0, 0);
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
        // One kill in four is of an API server's, the two in turn; the others of workers.
        if k % 4 == 1 {
            pool.kill_api(api_kills % pool.apis.len())?;
            api_kills += 1;
        } else {
            let i = rng.below(pool.workers.len() as u64) as usize;
            pool.kill_worker(i)?;
        }
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
    let got = match got {
        Ok(got) => got,
        // The state of things in the error itself, which is what a log's tail keeps.
        Err(e) => bail!("{e}\n{}", diagnose(&pool, s3).await),
    };
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
    // Every sweep answered 201 is there and scored all its mixtures; a sweep whose answer
    // was lost to a kill is whole too (it and its jobs are written in one transaction).
    let acknowledged = seen.sweeps.lock().unwrap().clone();
    let sweeps: Vec<(String, String)> = sqlx::query_as(
        "select s.id::text, coalesce(string_agg(distinct j.state, ','), 'no jobs')
         from sweeps s left join sweep_jobs sj on sj.sweep_id = s.id
         left join jobs j on j.id = sj.job_id group by s.id",
    )
    .fetch_all(&db)
    .await?;
    for id in &acknowledged {
        if !sweeps.iter().any(|(s, _)| s == id) {
            failures.push(format!("sweep {id} was created (201) but is missing"));
        }
    }
    for (id, states) in &sweeps {
        if states != "succeeded" && states != "no jobs" {
            failures.push(format!("sweep {id}: jobs {states}"));
        }
    }

    // fsck as it runs in production (uploads younger than an hour may be in flight: left
    // alone, counted), then, since nothing is in flight now, with no grace: the debris of
    // uploads cut off by kills is repaired, and the check after it is clean.
    let first = fsck(&pool, &[])?;
    let repair = fsck(&pool, &["--repair", "--grace", "0"])?;
    let last = fsck(&pool, &["--grace", "0"])?;
    for (what, report) in [("fsck", &first), ("fsck --grace 0 after --repair", &last)] {
        if report["problems"].as_array().is_none_or(|p| !p.is_empty()) {
            failures.push(format!("{what}: {report}"));
        }
    }
    let repaired = repair["problems"].as_array().map_or(0, Vec::len);
    let unanswered = seen.unanswered.lock().unwrap().clone();
    let summary = format!(
        "kills {kills} ({api_kills} of an API server, two of them behind one database), \
         PostgreSQL restarts {pg_restarts} (the last one a crash), S3 restarts {s3_restarts}\n\
         requests {}, 503s {}, other 5xx {}, unanswered {} ({unanswered:?})\n\
         uploads kept {}/{}, sweeps created {} (all scored: {})\n\
         unit models {} equal to the undisturbed run's: {}; job attempts {attempts} for {} jobs\n\
         fsck: {} objects, {} problems, {} left alone as in flight; \
         --repair --grace 0 removed {repaired}; then {} problems",
        seen.requests.load(Ordering::Relaxed),
        seen.unavailable.load(Ordering::Relaxed),
        seen.other_5xx.load(Ordering::Relaxed),
        unanswered.values().sum::<u64>(),
        uploaded.len() - failures.iter().filter(|f| f.contains("is missing")).count(),
        uploaded.len(),
        sweeps.len(),
        !failures.iter().any(|f| f.starts_with("sweep")),
        want.len(),
        !failures.iter().any(|f| f.contains("undisturbed")),
        jobs.iter().map(|(_, _, n)| n).sum::<i64>(),
        first["objects"],
        first["problems"].as_array().map_or(0, Vec::len),
        first["in_flight"],
        last["problems"].as_array().map_or(0, Vec::len),
    );
    if !failures.is_empty() {
        bail!("{summary}\nFAILED:\n  {}", failures.join("\n  "));
    }
    Ok(format!("{summary}\nall checks hold"))
}
