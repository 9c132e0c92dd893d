//! Mounting a cache under a path prefix, so that it can live inside another tiny_http server.

use std::time::Instant;

use tiny_http::Request;

use crate::http::Cache;
use crate::http::request::split_url;
use crate::http::response::Response;
use crate::http::send;
use crate::http::service::{Answer, Exchange, Upload};
use crate::http::status;

/// A cache answering below `prefix` (`""` for the root, or e.g. `"/cache"`).
#[derive(Clone)]
pub struct Mount {
    prefix: String,
    cache: Cache,
}

impl Mount {
    /// `prefix` is normalised to start with `/` and not end with one; `"/"` means the root.
    pub fn new(prefix: &str, cache: Cache) -> Mount {
        let trimmed = prefix.trim_end_matches('/');
        let prefix = if trimmed.is_empty() || trimmed.starts_with('/') {
            trimmed.to_string()
        } else {
            format!("/{trimmed}")
        };
        Mount { prefix, cache }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The path inside the cache, if `path` (query string removed) is below the prefix.
    fn below<'p>(&self, path: &'p str) -> Option<&'p str> {
        let rest = path.strip_prefix(self.prefix.as_str())?;
        if rest.starts_with('/') {
            Some(rest)
        } else if rest.is_empty() {
            Some("/")
        } else {
            None // "/cachex" is not below "/cache".
        }
    }

    /// Serves `request` if its path is below the prefix and returns `None`; otherwise gives
    /// the request back untouched, for the application's own routes. Uploads are read on the
    /// caller's thread.
    pub fn try_serve(&self, request: Request) -> Option<Request> {
        self.serve(request, false, false, PendingUpload::run)
    }

    /// The entry of the one pipeline, for `try_serve` and the standalone server: splits the
    /// URL once, answers `/metrics` and `/health` first if `status_endpoints`, then anything
    /// below the prefix through `Cache::begin`. Gives back a request that is neither.
    pub(crate) fn serve(
        &self,
        request: Request,
        close: bool,
        status_endpoints: bool,
        run_upload: impl FnOnce(PendingUpload),
    ) -> Option<Request> {
        let step = {
            let (path, query) = split_url(request.url());
            let status = status_endpoints
                .then(|| status::response(&self.cache, path))
                .flatten();
            match (status, self.below(path)) {
                (Some(response), _) => Step::Status(response),
                (None, Some(path)) => {
                    let view = crate::http::request::Request::new(&request, path, query);
                    let (exchange, answer) = self.cache.begin(&view, close);
                    Step::Begun(exchange, answer)
                }
                (None, None) => Step::Outside,
            }
        };
        // The view borrowed the request; from here on the request itself is consumed.
        match step {
            Step::Status(response) => {
                send::send_logged(request, response, close, Instant::now(), |_| {});
            }
            Step::Begun(exchange, Answer::Ready(response)) => {
                finish(&self.cache, request, response, exchange);
            }
            // The caller decides on which thread the body is read.
            Step::Begun(exchange, Answer::Upload(upload)) => run_upload(PendingUpload {
                cache: self.cache.clone(),
                request,
                upload,
                exchange,
            }),
            Step::Outside => return Some(request),
        }
        None
    }
}

/// An admitted upload with its request, waiting for [`PendingUpload::run`] on a thread chosen by
/// the caller of `Mount::serve`.
pub(crate) struct PendingUpload {
    cache: Cache,
    request: Request,
    upload: Upload,
    exchange: Exchange,
}

impl PendingUpload {
    /// Reads the body, stores it and writes the answer.
    pub fn run(mut self) {
        let response = self
            .cache
            .store_upload(&self.upload, self.request.as_reader());
        finish(&self.cache, self.request, response, self.exchange);
    }
}

/// Writes `response` to what [`Cache::begin`] started, logs the access line and counts it in
/// the metrics once it is out.
fn finish(cache: &Cache, request: Request, response: Response, exchange: Exchange) {
    let status = response.status;
    let close = cache.settle(&exchange, status);
    let start = exchange.start();
    let cache = cache.clone();
    send::send_logged(request, response, close, start, move |sent| {
        cache.count(&exchange, status, sent.map_or(0, |s| s.body_bytes));
    });
}

/// Where a request went, decided while its view is alive.
enum Step {
    Status(Response),
    Begun(Exchange, Answer),
    Outside,
}
