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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use comfy_table::Table;

#[path = "../chaos/servers.rs"]
#[allow(dead_code)] // the S3 server is the chaos run's
mod servers;

mod load;

use load::{Corpus, Seen, client, seed};
use servers::Pool;

/// The machine's PostgreSQL (`scripts/postgres.sh` starts one where none answers).
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

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
