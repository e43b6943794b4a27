//! `GET /metrics`: Prometheus text — the pool and the queue from the registry, and this
//! server's score answers.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::{ApiError, AppState};

/// This server's counters since it started.
#[derive(Default)]
pub struct Counters {
    scores_from_cache: AtomicU64,
    scores_computed: AtomicU64,
}

impl Counters {
    /// Counts a score answer: `cached` when no job ran for it.
    pub fn score_answered(&self, cached: bool) {
        let counter = if cached {
            &self.scores_from_cache
        } else {
            &self.scores_computed
        };
        counter.fetch_add(1, Ordering::Relaxed);
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
    let c = &state.metrics;
    family(
        &mut out,
        "mixpool_score_answers_total",
        "counter",
        "Score answers given by this server.",
    );
    let _ = writeln!(
        out,
        "mixpool_score_answers_total{{cached=\"true\"}} {}\n\
         mixpool_score_answers_total{{cached=\"false\"}} {}",
        c.scores_from_cache.load(Ordering::Relaxed),
        c.scores_computed.load(Ordering::Relaxed),
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}
