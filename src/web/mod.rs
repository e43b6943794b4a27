//! The dashboard: pages served at `/` by the same process, drawn in the browser from the
//! REST API (`/v1/…`), so a page shows exactly what the API answers and needs no data of its
//! own. One HTML shell for every page, one script, one style sheet and Apache ECharts for the
//! plots, all embedded in the binary: no CDN, no network beyond this server, no build step.
//! The shell and assets hold no data and are open to all; the API calls the pages make carry
//! the token the visitor gives (kept in the browser), and are checked like any other.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

/// The pinned ECharts build (`scripts/web-vendor.sh` refreshes it).
pub const ECHARTS: &str = "/assets/echarts-6.1.0.min.js";

/// The page shell, with the job kinds the server registers (the jobs page's filter).
static SHELL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    include_str!("index.html").replace("{kinds}", &crate::jobs::names().join(","))
});
const APP_JS: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");
const ECHARTS_JS: &[u8] = include_bytes!("vendor/echarts-6.1.0.min.js");

/// The dashboard's pages, each served the same shell (the script draws the page the path
/// names).
pub const PAGES: &[&str] = &[
    "/",
    "/partitions",
    "/partitions/{key}",
    "/models/{id}",
    "/jobs",
    "/explorer",
    "/leaderboard",
    "/heatmap",
    "/sweeps",
    "/sweeps/{id}",
    "/searches",
    "/searches/{id}",
    "/validations",
];

/// Whether `path` is a dashboard page or asset: open, since it holds no data.
pub fn is_public(path: &str) -> bool {
    path == "/"
        || path.starts_with("/assets/")
        || PAGES.iter().skip(1).any(|page| {
            let prefix = page.split("/{").next().unwrap_or(page);
            path == prefix || (page.contains('{') && path.starts_with(&format!("{prefix}/")))
        })
}

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new()
        .route(
            "/assets/app.js",
            get(|| asset(APP_JS, "text/javascript", REVALIDATE)),
        )
        .route(
            "/assets/style.css",
            get(|| asset(STYLE, "text/css", REVALIDATE)),
        )
        .route(
            ECHARTS,
            get(|| asset(ECHARTS_JS, "text/javascript", FOREVER)),
        );
    for page in PAGES {
        router = router.route(page, get(|| async { Html(SHELL.as_str()) }));
    }
    router
}

/// The script and style sheet change with the binary: browsers check them again each load.
const REVALIDATE: &str = "no-cache";
/// ECharts' path names its version: cached for good.
const FOREVER: &str = "public, max-age=31536000, immutable";

async fn asset(
    body: impl Into<axum::body::Body>,
    content_type: &'static str,
    cache: &'static str,
) -> Response {
    let mut response = body.into().into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
