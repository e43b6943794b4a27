use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::error::Errors;
use super::{ApiError, AppState};

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Object, description = "alive")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the database and the object store both answer.
#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, body = Object, description = "the database and the store answer"), Errors))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    crate::registry::ping(&state.pool)
        .await
        .map_err(|e| ApiError::Unavailable {
            backend: super::error::Backend::Database,
            cause: e.to_string(),
        })?;
    state.store.ready().await?;
    Ok(Json(json!({ "status": "ready" })))
}
