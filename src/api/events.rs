//! What the API hears from the registry: job notifications (to wake requests waiting on a
//! job, and live job events over SSE) and registry changes (to forget cached answers).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::error::Errors;
use super::score_cache::ScoreCache;
use super::{ApiError, AppState, parse_uuid};
use crate::registry::jobs::{self, Job};

/// How often a waiting request looks at its job even without a notification (one may be
/// missed while the listener reconnects), and how often live events look for progress.
const POLL: Duration = Duration::from_millis(500);

/// Fans the registry's notifications out to the requests of this server.
pub struct Events {
    tx: broadcast::Sender<String>,
}

impl Events {
    /// Starts listening on the registry's channels; the task runs as long as the server.
    pub fn listen(pool: PgPool, cache: Arc<ScoreCache>) -> Arc<Self> {
        let (tx, _) = broadcast::channel(1024);
        let events = Arc::new(Events { tx });
        let sender = events.tx.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = relay(&pool, &cache, &sender).await {
                    tracing::warn!("registry notifications: {e}; listening again in 1 s");
                }
                // Whatever was said meanwhile is unheard: cached answers may be stale.
                cache.clear();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        events
    }

    /// Waits until job `id` reaches a final state or `deadline` passes; returns the job as
    /// it then is (`None` when there is no such job).
    pub async fn wait_for_job(
        &self,
        pool: &PgPool,
        id: uuid::Uuid,
        deadline: Instant,
    ) -> Result<Option<Job>, sqlx::Error> {
        let mut heard = self.tx.subscribe();
        let done = format!("done:{id}");
        loop {
            let job = jobs::get(pool, id).await?;
            match &job {
                Some(j) if !is_final(&j.state) && Instant::now() < deadline => {}
                _ => return Ok(job),
            }
            let _ = tokio::time::timeout_at(deadline.min(Instant::now() + POLL), async {
                loop {
                    match heard.recv().await {
                        Ok(message) if message == done => return,
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            })
            .await;
        }
    }
}

/// Relays notifications until the connection fails.
async fn relay(
    pool: &PgPool,
    cache: &ScoreCache,
    sender: &broadcast::Sender<String>,
) -> Result<(), sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.ignore_pool_close_event(true);
    listener
        .listen_all([jobs::CHANNEL, crate::registry::CHANGES])
        .await?;
    loop {
        let notification = listener
            .try_recv()
            .await?
            .ok_or_else(|| sqlx::Error::Protocol("the notification connection was lost".into()))?;
        if notification.channel() == crate::registry::CHANGES {
            cache.clear();
        }
        // Nobody listening is fine.
        let _ = sender.send(notification.payload().to_string());
    }
}

fn is_final(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled")
}

/// One event of `GET /v1/jobs/{id}/events` (a schema only: the stream is written by axum's
/// `Sse`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct JobEvent {
    /// `job`, or `shutdown` when the server stops before the job ends.
    event: String,
    /// For `job`: the job as `GET /v1/jobs/{id}` answers it, as JSON text.
    data: String,
}

/// `GET /v1/jobs/{id}/events`: server-sent events, one `job` event with the whole job each
/// time it changes (state, progress, loss), ending after its final state, or with a
/// `shutdown` event when the server stops first.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs", params(("id" = String, Path, description = "the job's id")),
    responses((status = 200, content_type = "text/event-stream", body = JobEvent, description = "`job` events until the job ends, or a last `shutdown` event"), Errors))]
pub async fn job_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = parse_uuid(&id)
        .ok_or_else(|| ApiError::bad_request("invalid_id", format!("{id:?} is not a job id")))?;
    let first = jobs::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {id}")))?;
    struct Watch {
        state: AppState,
        id: uuid::Uuid,
        last: Option<Job>,
        ended: bool,
    }
    let watch = Watch {
        state,
        id,
        last: None,
        ended: false,
    };
    let stream = futures::stream::unfold(
        (watch, Some(first)),
        |(mut w, mut next): (Watch, Option<Job>)| async move {
            if w.ended {
                return None;
            }
            loop {
                if let Some(job) = next.take() {
                    let changed = w.last.as_ref().is_none_or(|last| {
                        (last.updated_at, &last.state) != (job.updated_at, &job.state)
                    });
                    if changed {
                        w.ended = is_final(&job.state);
                        let event = Event::default().event("job").json_data(&job).ok()?;
                        w.last = Some(job);
                        return Some((Ok(event), (w, None)));
                    }
                }
                if w.state.is_stopping() {
                    w.ended = true;
                    let event = Event::default().event("shutdown").json_data(json!({
                        "job": w.id,
                        "message": "the server is shutting down; reconnect to follow the job",
                    }));
                    return Some((Ok(event.ok()?), (w, None)));
                }
                let deadline = Instant::now() + POLL;
                // The job's final state (or the server stopping) wakes this at once;
                // progress shows within POLL.
                match w.state.wait_for_job(w.id, deadline).await {
                    Ok(Some(job)) => next = Some(job),
                    Ok(None) => return None,
                    Err(e) => {
                        tracing::warn!(job = %w.id, "job events: {e}");
                        tokio::time::sleep(POLL).await;
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
