//! `GET /metrics`: Prometheus text — the pool and the queue from the registry, and this
//! server's score answers.

use std::collections::HashSet;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::{ApiError, AppState};

/// How a score request was answered.
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    /// From a stored score no job of this client computed.
    Cached,
    /// By a job this request (or its earlier 202) waited on.
    Computed,
    /// 202: the job is still running.
    Pending,
    /// 409: unit models missing (`train=false`) or failed.
    ModelsNotReady,
    /// Any other error.
    Error,
    /// 202: unit models queued or training first.
    Training,
}

impl Outcome {
    const ALL: [(Outcome, &'static str); 6] = [
        (Outcome::Cached, "cached"),
        (Outcome::Computed, "computed"),
        (Outcome::Pending, "pending"),
        (Outcome::ModelsNotReady, "models_not_ready"),
        (Outcome::Error, "error"),
        (Outcome::Training, "training"),
    ];
}

/// Past this many scores answered 202 and not asked for again, the set starts over.
const MAX_AWAITED: usize = 100_000;

/// This server's counters since it started.
#[derive(Default)]
pub struct Counters {
    answers: [AtomicU64; 6],
    /// Scores this server answered 202 for, by key: the answer that later finds them stored
    /// counts as computed.
    awaited: Mutex<HashSet<String>>,
}

impl Counters {
    pub fn score_answered(&self, outcome: Outcome) {
        self.answers[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Remembers a score answered 202.
    pub fn await_later(&self, key: String) {
        let mut awaited = self.awaited.lock().unwrap();
        if awaited.len() >= MAX_AWAITED {
            awaited.clear();
        }
        awaited.insert(key);
    }

    /// Whether the score was answered 202 before (and forgets it).
    pub fn awaited(&self, key: &str) -> bool {
        self.awaited.lock().unwrap().remove(key)
    }
}

pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let jobs: Vec<(String, String, i64)> =
        sqlx::query_as("select kind, state, count(*) from jobs group by kind, state order by 1, 2")
            .fetch_all(&state.pool)
            .await?;
    let models: Vec<(String, i64)> =
        sqlx::query_as("select state, count(*) from models group by state order by 1")
            .fetch_all(&state.pool)
            .await?;
    let (bases, partitions, eval_sets, scores): (i64, i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from bases), (select count(*) from partitions),
                (select count(*) from eval_sets), (select count(*) from scores)",
    )
    .fetch_one(&state.pool)
    .await?;

    let mut out = String::new();
    family(&mut out, "mixpool_jobs", "gauge", "Jobs by kind and state.");
    for (kind, job_state, n) in &jobs {
        let _ = writeln!(
            out,
            "mixpool_jobs{{kind=\"{kind}\",state=\"{job_state}\"}} {n}"
        );
    }
    family(
        &mut out,
        "mixpool_unit_models",
        "gauge",
        "Unit models by state.",
    );
    for (model_state, n) in &models {
        let _ = writeln!(out, "mixpool_unit_models{{state=\"{model_state}\"}} {n}");
    }
    for (name, help, n) in [
        ("mixpool_bases", "Base models.", bases),
        ("mixpool_partitions", "Partitions.", partitions),
        ("mixpool_eval_sets", "Evaluation sets.", eval_sets),
        ("mixpool_scores", "Scores computed and kept.", scores),
    ] {
        family(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {n}");
    }
    family(
        &mut out,
        "mixpool_score_answers_total",
        "counter",
        "Score answers given by this server, by outcome.",
    );
    for (outcome, label) in Outcome::ALL {
        let n = state.metrics.answers[outcome as usize].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "mixpool_score_answers_total{{outcome=\"{label}\"}} {n}"
        );
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}
