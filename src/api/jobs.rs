use axum::Json;
use axum::extract::{Path, State};

use super::{ApiError, AppState, parse_uuid};
use crate::registry::jobs::{self, Job};

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
