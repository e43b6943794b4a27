use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::Value;

use super::error::Errors;
use super::{ApiError, AppState, Page, Q, parse_uuid};
use crate::registry::jobs::{self, Job};

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// queued, running, succeeded, failed or cancelled.
    state: Option<String>,
    /// A job kind (`pretrain`, `train`, `score`, …: the document lists them).
    kind: Option<String>,
    /// Rows per page, 1 to 500 (default 50).
    limit: Option<i64>,
    /// The `next` value of the previous page.
    cursor: Option<String>,
}

/// `GET /v1/jobs[?state=][&kind=][&limit=][&cursor=]`: newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListParams),
    responses((status = 200, description = "`{items, next}`: jobs, newest first", body = Object), Errors))]
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
    let kind = match params.kind.as_deref() {
        None => None,
        Some(k) => {
            Some(crate::jobs::parse_kind(k).map_err(|e| ApiError::bad_request("invalid_kind", e))?)
        }
    };
    let page = Page::parse(params.limit, params.cursor.as_deref())?;
    let rows = jobs::list(
        &state.pool,
        params.state.as_deref(),
        kind,
        page.before,
        page.limit,
    )
    .await?;
    Ok(page.answer(&rows, |j| (j.created_at, j.id)))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "the job's id")),
    responses((status = 200, body = Object, description = "the job: state, progress, message, loss, result, error"), Errors))]
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

#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = String, Path, description = "the job's id")),
    security(("bearer" = [])),
    responses((status = 200, body = Object, description = "the job, cancelled or to stop at its next progress report"), Errors))]
pub async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let id = parse_uuid(&id)
        .ok_or_else(|| ApiError::bad_request("invalid_id", format!("{id:?} is not a job id")))?;
    let job = crate::service::cancel::job(&state.pool, id).await?;
    Ok(Json(job))
}
