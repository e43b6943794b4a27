//! `mixpool jobs ls|watch`: the queue as a table, and live progress bars — one job from its
//! server-sent events, or every active job.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Subcommand;
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::Value;

use super::Server;
use super::api::Api;
use super::pool::{ListArgs, all, day, print_list, text};

#[derive(Subcommand)]
pub enum JobsCommand {
    /// The queue, newest first.
    Ls {
        /// Only jobs in this state: queued, running, succeeded, failed, cancelled.
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Follow a job until it ends (exit 0 when it succeeds, 1 otherwise), or with no id
    /// every queued and running job until none is left.
    Watch {
        /// The job's id (default: every queued and running job).
        id: Option<String>,
        #[command(flatten)]
        server: Server,
    },
}

pub async fn jobs(command: JobsCommand) -> Result<()> {
    match command {
        JobsCommand::Ls { state, list } => {
            let path = match &state {
                Some(s) => format!("/v1/jobs?state={s}"),
                None => "/v1/jobs".into(),
            };
            let header = [
                "id", "kind", "state", "progress", "attempts", "message", "created",
            ];
            print_list(&list, &path, &header, |j| {
                let progress = j["progress"]
                    .as_f64()
                    .map_or("–".into(), |p| format!("{:.0}%", 100.0 * p));
                let message = match j["state"].as_str() {
                    Some("failed") => text(&j["error"]),
                    _ => text(&j["message"]),
                };
                vec![
                    text(&j["id"]),
                    text(&j["kind"]),
                    text(&j["state"]),
                    progress,
                    format!("{}/{}", j["attempts"], j["max_attempts"]),
                    message,
                    day(&j["created_at"]),
                ]
            })
            .await
        }
        JobsCommand::Watch {
            id: Some(id),
            server,
        } => watch_one(&Api::new(&server)?, &id).await,
        JobsCommand::Watch { id: None, server } => watch_all(&Api::new(&server)?).await,
    }
}

fn bar(bars: &MultiProgress, job: &Value) -> ProgressBar {
    let bar = bars.add(ProgressBar::new(1000));
    bar.set_style(
        ProgressStyle::with_template("{prefix:24} [{bar:30}] {percent:>3}% {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let id = job["id"].as_str().unwrap_or_default();
    bar.set_prefix(format!(
        "{} {}",
        text(&job["kind"]),
        id.get(..8).unwrap_or(id)
    ));
    bar
}

/// Shows a job's state on its bar (or as a line when stderr is not a terminal).
fn show(bar: &ProgressBar, job: &Value, lines: bool) {
    let fraction = job["progress"].as_f64().unwrap_or(0.0);
    bar.set_position((fraction * 1000.0) as u64);
    let mut message = match job["message"].as_str() {
        Some(m) => m.to_string(),
        None => text(&job["state"]),
    };
    if let Some(loss) = job["loss"].as_f64() {
        message.push_str(&format!(" loss {loss:.4}"));
    }
    // Without a terminal, a line when something changed.
    if lines && bar.message() != message {
        eprintln!(
            "{} {} {:.0}% {message}",
            bar.prefix(),
            text(&job["state"]),
            100.0 * fraction
        );
    }
    bar.set_message(message);
}

fn is_final(job: &Value) -> bool {
    matches!(
        job["state"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

/// Follows `GET /v1/jobs/{id}/events`; reconnects when the server restarts.
async fn watch_one(api: &Api, id: &str) -> Result<()> {
    let lines = !std::io::stderr().is_terminal();
    let bars = MultiProgress::new();
    if lines {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let first = api.get(&format!("/v1/jobs/{id}")).await?;
    let bar = bar(&bars, &first);
    let mut last = first;
    while !is_final(&last) {
        let response = api
            .http()
            .get(format!("{}/v1/jobs/{id}/events", api.url))
            .send()
            .await;
        let Ok(response) = response.and_then(|r| r.error_for_status()) else {
            // The server restarts: ask again in a moment (a 503 or lost connection).
            tokio::time::sleep(Duration::from_secs(1)).await;
            last = api.get(&format!("/v1/jobs/{id}")).await?;
            continue;
        };
        let mut stream = response.bytes_stream();
        let mut buffer = String::new();
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { break };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                let data: String = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if event.lines().any(|l| l == "event: job")
                    && let Ok(job) = serde_json::from_str::<Value>(&data)
                {
                    show(&bar, &job, lines);
                    last = job;
                }
            }
        }
    }
    bar.finish();
    match last["state"].as_str() {
        Some("succeeded") => {
            println!("job {id} succeeded");
            Ok(())
        }
        state => bail!(
            "job {id} {}: {}",
            state.unwrap_or("ended"),
            last["error"].as_str().unwrap_or("no error recorded")
        ),
    }
}

/// A bar per queued or running job, polled every second, until none is left.
async fn watch_all(api: &Api) -> Result<()> {
    let lines = !std::io::stderr().is_terminal();
    let bars = MultiProgress::new();
    if lines {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut shown: HashMap<String, ProgressBar> = HashMap::new();
    loop {
        let mut active = all(api, "/v1/jobs?state=running", 500).await?;
        active.extend(all(api, "/v1/jobs?state=queued", 500).await?);
        if active.is_empty() && shown.is_empty() {
            println!("no queued or running jobs");
            return Ok(());
        }
        let ids: Vec<String> = active.iter().map(|j| text(&j["id"])).collect();
        for (id, bar) in shown.iter() {
            if !ids.contains(id) {
                let job = api.get(&format!("/v1/jobs/{id}")).await?;
                show(bar, &job, lines);
                bar.finish();
            }
        }
        shown.retain(|id, _| ids.contains(id));
        if active.is_empty() {
            return Ok(());
        }
        for job in &active {
            let bar = shown
                .entry(text(&job["id"]))
                .or_insert_with(|| bar(&bars, job));
            show(bar, job, lines);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
