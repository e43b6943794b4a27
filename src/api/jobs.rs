use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, Q, decode_cursor, parse_uuid};
use crate::registry::jobs::{self, Job};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// queued, running, succeeded, failed or cancelled.
    state: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

/// `GET /v1/jobs[?state=][&limit=][&cursor=]`: newest first.
pub async fn list_jobs(
    State(state): State<AppState>,
    Q(params): Q<ListParams>,
) -> Result<Json<Value>, ApiError> {
    const STATES: &[&str] = &["queued", "running", "succeeded", "failed", "cancelled"];
    if let Some(s) = params.state.as_deref()
        && !STATES.contains(&s)
    {
        return Err(ApiError::bad_request(
            "invalid_state",
            format!("state {s:?}: use one of {}", STATES.join(", ")),
        ));
    }
    let limit = params.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be between 1 and 500",
        ));
    }
    let before = match params.cursor.as_deref() {
        None => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| {
            ApiError::bad_request("invalid_cursor", "cursor is not one this server gave")
        })?),
    };
    let rows = jobs::list(&state.pool, params.state.as_deref(), before, limit).await?;
    let next = (rows.len() as i64 == limit)
        .then(|| {
            rows.last()
                .map(|j| super::encode_cursor(j.created_at, j.id))
        })
        .flatten();
    Ok(Json(json!({ "items": rows, "next": next })))
}

pub async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let id = parse_uuid(&id)
        .ok_or_else(|| ApiError::bad_request("invalid_id", format!("{id:?} is not a job id")))?;
    jobs::get(&state.pool, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("job {id}")))
}

pub async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let id = parse_uuid(&id)
        .ok_or_else(|| ApiError::bad_request("invalid_id", format!("{id:?} is not a job id")))?;
    jobs::cancel(&state.pool, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("job {id}")))
}
