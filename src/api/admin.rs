//! `/v1/admin/…`: operators' views (admin scope).

use axum::Json;
use axum::extract::State;

use super::error::Errors;
use super::{ApiError, AppState};
use crate::fsck::{self, Report};

/// `GET /v1/admin/fsck`: `mixpool fsck` without repairs: every object a row names exists
/// with its sha256, orphans, ready models without weights, expired leases.
#[utoipa::path(get, path = "/v1/admin/fsck", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Object, description = "`{objects, bytes, in_flight, problems}`"), Errors))]
pub async fn fsck(State(state): State<AppState>) -> Result<Json<Report>, ApiError> {
    fsck::check(&state.pool, &state.store, false, fsck::IN_FLIGHT)
        .await
        .map(Json)
        .map_err(|e| match e.downcast::<sqlx::Error>() {
            Ok(e) => ApiError::from(e),
            Err(e) => match e.downcast::<crate::store::StoreError>() {
                Ok(e) => ApiError::from(e),
                Err(e) => ApiError::internal(e.into_boxed_dyn_error()),
            },
        })
}
