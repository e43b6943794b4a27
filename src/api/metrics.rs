//! `GET /metrics`: Prometheus text from the `prometheus` crate, one registry per server.
//! This server's own work — requests by route and status (latency histograms), score
//! answers by outcome, database and store errors — and the pool as the registry holds it at
//! each scrape: jobs by kind and state, unit models by state, pool sizes, the duration and
//! queue wait of jobs finished since this server started, the heartbeat age of running jobs,
//! and what each worker's cache of model weights did, as the workers last reported it.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use super::error::Errors;
use super::{ApiError, AppState};
use crate::registry::metrics as registry;

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
    fn label(self) -> &'static str {
        match self {
            Outcome::Cached => "cached",
            Outcome::Computed => "computed",
            Outcome::Pending => "pending",
            Outcome::ModelsNotReady => "models_not_ready",
            Outcome::Error => "error",
            Outcome::Training => "training",
        }
    }
}

/// Past this many scores answered 202 and not asked for again, the set starts over.
const MAX_AWAITED: usize = 100_000;

/// Seconds: from a cached answer to a long training job.
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0, 14400.0,
];

/// This server's metrics.
pub struct Metrics {
    registry: Registry,
    answers: IntCounterVec,
    requests: HistogramVec,
    backend_errors: IntCounterVec,
    jobs: IntGaugeVec,
    unit_models: IntGaugeVec,
    /// Bases, partitions, eval sets, stored scores.
    sizes: [IntGauge; 4],
    job_seconds: HistogramVec,
    queue_wait: HistogramVec,
    heartbeat_age: IntGaugeVec,
    /// Workers' cache counters (hits, misses, bytes fetched, evictions) and cache sizes.
    cache: [IntCounterVec; 4],
    cache_bytes: IntGaugeVec,
    /// Jobs finished (and started) after these instants are still to be observed.
    seen: Mutex<(DateTime<Utc>, DateTime<Utc>)>,
    /// Scores this server answered 202 for, by key: the answer that later finds them stored
    /// counts as computed.
    awaited: Mutex<HashSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(BUCKETS.to_vec());
            let h = HistogramVec::new(opts, labels).expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("registered once");
            h
        };
        let answers = counter(
            "mixpool_score_answers_total",
            "Score answers given by this server, by outcome.",
            &["outcome"],
        );
        for outcome in [
            Outcome::Cached,
            Outcome::Computed,
            Outcome::Pending,
            Outcome::ModelsNotReady,
            Outcome::Error,
            Outcome::Training,
        ] {
            answers.with_label_values(&[outcome.label()]);
        }
        let backend_errors = counter(
            "mixpool_backend_errors_total",
            "Requests answered 503 because the database or the object store failed.",
            &["backend"],
        );
        for backend in ["database", "store"] {
            backend_errors.with_label_values(&[backend]);
        }
        let now = Utc::now();
        Metrics {
            answers,
            requests: histogram(
                "mixpool_http_request_duration_seconds",
                "Requests by method, route and status.",
                &["method", "route", "status"],
            ),
            backend_errors,
            jobs: gauge(
                "mixpool_jobs",
                "Jobs by kind and state.",
                &["kind", "state"],
            ),
            unit_models: gauge("mixpool_unit_models", "Unit models by state.", &["state"]),
            sizes: [
                ("mixpool_bases", "Base models."),
                ("mixpool_partitions", "Partitions."),
                ("mixpool_eval_sets", "Evaluation sets."),
                ("mixpool_scores", "Scores computed and kept."),
            ]
            .map(|(name, help)| {
                let g = IntGauge::new(name, help).expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("registered once");
                g
            }),
            job_seconds: histogram(
                "mixpool_job_duration_seconds",
                "Jobs finished since this server started, from start to end, by kind and state.",
                &["kind", "state"],
            ),
            queue_wait: histogram(
                "mixpool_job_queue_wait_seconds",
                "Jobs started since this server started, from queued to first start, by kind.",
                &["kind"],
            ),
            heartbeat_age: gauge(
                "mixpool_worker_heartbeat_age_seconds",
                "Seconds since each running job's worker last renewed its lease.",
                &["worker", "kind"],
            ),
            cache: [
                (
                    "mixpool_worker_cache_hits_total",
                    "Model weights a worker read from its cache, since it started.",
                ),
                (
                    "mixpool_worker_cache_misses_total",
                    "Model weights a worker fetched from the store, since it started.",
                ),
                (
                    "mixpool_worker_cache_fetched_bytes_total",
                    "Bytes of model weights a worker fetched from the store, since it started.",
                ),
                (
                    "mixpool_worker_cache_evictions_total",
                    "Files a worker removed from its cache to keep within its bound.",
                ),
            ]
            .map(|(name, help)| counter(name, help, &["worker"])),
            cache_bytes: gauge(
                "mixpool_worker_cache_bytes",
                "Bytes each worker's cache of model weights holds.",
                &["worker"],
            ),
            registry,
            seen: Mutex::new((now, now)),
            awaited: Mutex::default(),
        }
    }
}

impl Metrics {
    pub fn score_answered(&self, outcome: Outcome) {
        self.answers.with_label_values(&[outcome.label()]).inc();
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

    /// Reads the pool's state into the gauges, and observes the jobs that finished or
    /// started since the last scrape.
    async fn refresh(&self, pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
        let counts = registry::counts(pool).await?;
        self.jobs.reset();
        for (kind, state, n) in counts.jobs {
            self.jobs.with_label_values(&[&kind, &state]).set(n);
        }
        self.unit_models.reset();
        for (state, n) in counts.unit_models {
            self.unit_models.with_label_values(&[&state]).set(n);
        }
        for (gauge, n) in self.sizes.iter().zip(counts.sizes) {
            gauge.set(n);
        }
        self.heartbeat_age.reset();
        for (worker, kind, age) in counts.running {
            self.heartbeat_age
                .with_label_values(&[&worker, &kind])
                .set(age as i64);
        }
        // As each worker seen in the last minute last reported them.
        for counter in &self.cache {
            counter.reset();
        }
        self.cache_bytes.reset();
        for (worker, fetched, bytes) in crate::registry::workers::caches(pool, 60.0).await? {
            let values = [
                fetched.hits,
                fetched.misses,
                fetched.bytes_fetched,
                fetched.evictions,
            ];
            for (counter, value) in self.cache.iter().zip(values) {
                counter.with_label_values(&[&worker]).inc_by(value);
            }
            self.cache_bytes
                .with_label_values(&[&worker])
                .set(bytes as i64);
        }
        // Each job observed once: the watermarks move to the newest instant read.
        let (finished_after, started_after) = *self.seen.lock().unwrap();
        let finished = registry::finished_since(pool, finished_after).await?;
        let started = registry::started_since(pool, started_after).await?;
        let mut seen = self.seen.lock().unwrap();
        for (kind, state, seconds, at) in finished {
            if at > seen.0 {
                self.job_seconds
                    .with_label_values(&[&kind, &state])
                    .observe(seconds.max(0.0));
                seen.0 = at;
            }
        }
        for (kind, seconds, at) in started {
            if at > seen.1 {
                self.queue_wait
                    .with_label_values(&[&kind])
                    .observe(seconds.max(0.0));
                seen.1 = at;
            }
        }
        Ok(())
    }
}

/// Times every routed request, by method, route (the pattern, not the path) and status.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    let metrics = &state.metrics;
    metrics
        .requests
        .with_label_values(&[&method, &route, response.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    if let Some(backend) = response.extensions().get::<super::error::Backend>() {
        metrics
            .backend_errors
            .with_label_values(&[backend.as_str()])
            .inc();
    }
    response
}

#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, content_type = "text/plain", body = String, description = "Prometheus text"), Errors))]
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    state.metrics.refresh(&state.pool).await?;
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&state.metrics.registry.gather(), &mut out)
        .map_err(ApiError::internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            TextEncoder::new().format_type().to_string(),
        )],
        out,
    ))
}
