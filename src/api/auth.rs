//! Who may call what. Writes (every method but GET and HEAD) need a token with the `write`
//! scope, `/v1/admin/…` one with `admin`; reads are open unless the server closes them
//! (`open_reads = false`), when they need `read`. `/healthz`, `/readyz` and the dashboard's
//! pages and assets (which hold no data) are always open.
//! A missing, malformed, unknown or revoked token is 401; a token without the scope, 403.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::Errors;
use super::{ApiError, AppState};
use crate::registry::tokens::{self, Scope};

/// The scope a request needs, or `None` when it is open.
pub fn needed(method: &Method, path: &str, open_reads: bool) -> Option<Scope> {
    if path == "/healthz" || path == "/readyz" {
        None
    } else if crate::web::is_public(path) && (method == Method::GET || method == Method::HEAD) {
        // The dashboard's pages and assets hold no data; the calls they make are checked.
        None
    } else if path.starts_with("/v1/admin/") {
        Some(Scope::Admin)
    } else if method == Method::GET || method == Method::HEAD {
        (!open_reads).then_some(Scope::Read)
    } else {
        Some(Scope::Write)
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// `GET /v1/whoami`: the token the request carries (`null` without one; 401 for one that is
/// not valid) and whether reads are open, so that a client can fail before a long upload.
#[utoipa::path(get, path = "/v1/whoami", tag = "auth",
    responses((status = 200, body = Object, description = "`{token, open_reads}`"), Errors))]
pub async fn whoami(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let token = match bearer(&headers) {
        None => None,
        Some(text) => match tokens::verify(&state.pool, text).await {
            Ok(Some(token)) => Some(token),
            Ok(None) => return invalid(),
            Err(e) => return ApiError::from(e).into_response(),
        },
    };
    Json(serde_json::json!({ "token": token, "open_reads": state.open_reads })).into_response()
}

pub async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(scope) = needed(request.method(), request.uri().path(), state.open_reads) else {
        return next.run(request).await;
    };
    let what = format!("{} {}", request.method(), request.uri().path());
    let Some(text) = bearer(request.headers()) else {
        return unauthorized(format!(
            "{what} needs a token with the {scope} scope: send `Authorization: Bearer <token>` \
             (`mixpool token create` makes one)"
        ));
    };
    let token = match tokens::verify(&state.pool, text).await {
        Ok(Some(token)) => token,
        Ok(None) => return invalid(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    if token.scope < scope {
        return ApiError::status(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "the token {:?} has the {} scope; {what} needs {scope}",
                token.name, token.scope
            ),
        )
        .into_response();
    }
    next.run(request).await
}

fn invalid() -> Response {
    unauthorized(
        "the token is not valid: unknown, revoked or mistyped (a token reads mpt_<id>_<secret>)"
            .into(),
    )
}

fn unauthorized(message: String) -> Response {
    let mut response =
        ApiError::status(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_need_write_admin_needs_admin_reads_follow_the_setting() {
        let post = Method::POST;
        assert_eq!(needed(&post, "/v1/partitions", true), Some(Scope::Write));
        assert_eq!(
            needed(&Method::DELETE, "/v1/partitions/a", true),
            Some(Scope::Write)
        );
        assert_eq!(needed(&Method::GET, "/v1/score", true), None);
        assert_eq!(needed(&Method::GET, "/v1/score", false), Some(Scope::Read));
        assert_eq!(
            needed(&Method::GET, "/v1/admin/fsck", true),
            Some(Scope::Admin)
        );
        assert_eq!(needed(&Method::GET, "/healthz", false), None);
        assert_eq!(needed(&Method::GET, "/readyz", false), None);
        assert!(Scope::Admin > Scope::Write && Scope::Write > Scope::Read);
    }

    #[test]
    fn the_dashboards_pages_and_assets_are_open_but_its_data_is_not() {
        for path in [
            "/",
            "/partitions",
            "/partitions/a",
            "/models/x",
            "/sweeps/y",
            "/assets/app.js",
        ] {
            assert_eq!(needed(&Method::GET, path, false), None, "{path}");
            assert_eq!(
                needed(&Method::POST, path, false),
                Some(Scope::Write),
                "{path}"
            );
        }
        for path in [
            "/v1/overview",
            "/v1/partitions",
            "/metrics",
            "/partitionsx",
            "/jobs/1/x",
        ] {
            assert_eq!(
                needed(&Method::GET, path, false),
                Some(Scope::Read),
                "{path}"
            );
        }
    }
}
