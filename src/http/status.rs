//! The status endpoints: `/metrics` (Prometheus) and `/health`, on the main listener
//! (`--metrics main`) or on one of their own.

use crate::http::Cache;
use crate::http::response::Response;

/// `/metrics` and `/health` (200 once the index is built, which `Cache::open` finished before
/// anything listens, and while the cache directory can be read; 503 when it cannot); `None` for
/// any other path (query string already removed).
pub(crate) fn response(cache: &Cache, path: &str) -> Option<Response> {
    match path {
        "/metrics" => Some(
            Response::text(200, cache.metrics_text().trim_end())
                .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                .header("Cache-Control", "no-store"),
        ),
        "/health" => Some(
            match cache.unhealthy() {
                None => Response::text(200, &format!("ok: {} narinfos indexed", cache.len())),
                // A load balancer should send clients elsewhere.
                Some(why) => Response::text(503, &format!("unhealthy: {why}")),
            }
            .header("Cache-Control", "no-store"),
        ),
        _ => None,
    }
}
