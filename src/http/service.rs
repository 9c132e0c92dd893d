//! The one request pipeline: a request view ([`Request`]) is routed once ([`Target`]) and
//! answered ([`Cache::handle`]); the answer is written, logged and counted by `Cache::finish`.
//!
//! The standalone server and a [`crate::Mount`] both enter it through `Mount::serve`; they
//! differ only in where an admitted upload reads its body (the server gives it a thread of its
//! own).

use std::io;
use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

use crate::http::Cache;
use crate::http::conditional::conditional;
use crate::http::landing;
use crate::http::metrics::Kind;
use crate::http::request::{Method, Request};
use crate::http::response::{Body, Response};
use crate::http::send;
use crate::nix::layout::{FileKind, Route, RouteError, route};
use crate::store::encoding::Encoding;
use crate::store::files;
use crate::store::index::{Lookup, fnv1a};
use crate::store::upload::{Stored, Target as UploadTarget};

/// How long clients and proxies may keep each kind of answer.
pub(crate) mod max_age {
    /// NARs are named by their hash: they never change.
    pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
    /// narinfo and nix-cache-info may be re-signed or replaced.
    pub const SHORT: &str = "public, max-age=60";
    /// Listings, logs and realisations belong to one store path but may be re-uploaded.
    pub const MEDIUM: &str = "public, max-age=3600";
    /// A missing path may be pushed a moment later.
    pub const MISS: &str = "public, max-age=5";
    pub const NONE: &str = "no-store";
}

/// What a request path asks for, decided once from the decoded path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// `/`: the landing page.
    Landing,
    Route(Route<'a>),
    /// Clean characters, but nothing a cache holds: 404.
    NotFound,
    /// Characters, escapes or segments Nix never sends: 400.
    BadPath,
}

impl<'a> Target<'a> {
    /// Routes `path` (as sent, query removed), given its decoded form.
    pub fn of(path: &str, decoded: &'a Result<std::borrow::Cow<'_, str>, RouteError>) -> Self {
        if path == "/" {
            return Target::Landing;
        }
        let Ok(decoded) = decoded else {
            return Target::BadPath;
        };
        match route(decoded) {
            Ok(route) => Target::Route(route),
            Err(RouteError::NotFound) => Target::NotFound,
            Err(RouteError::BadPath) => Target::BadPath,
        }
    }

    /// The metrics label.
    pub fn kind(&self) -> Kind {
        match self {
            Target::Landing => Kind::Landing,
            Target::Route(Route::CacheInfo) => Kind::CacheInfo,
            Target::Route(Route::NarInfo(_)) => Kind::NarInfo,
            Target::Route(Route::File(FileKind::Nar, _)) => Kind::Nar,
            Target::Route(Route::File(FileKind::Listing, _)) => Kind::Listing,
            Target::Route(Route::File(FileKind::Log, _)) => Kind::Log,
            Target::Route(Route::File(FileKind::Realisation | FileKind::BuildTrace, _)) => {
                Kind::Realisation
            }
            Target::Route(Route::File(FileKind::DebugInfo, _)) => Kind::DebugInfo,
            Target::NotFound | Target::BadPath => Kind::Other,
        }
    }
}

/// What [`Cache::handle`] decided.
#[derive(Debug)]
pub enum Answer {
    /// The response, ready to be written.
    Ready(Response),
    /// A PUT from a token holder: its body is to be read and stored ([`Upload`]).
    Upload(Upload),
}

/// An admitted upload: who sent it and how its body is encoded. Owns what it needs, so that it
/// can run on another thread than the request's.
#[derive(Debug)]
pub struct Upload {
    who: Arc<str>,
    encoding: Encoding,
    /// The path as sent (query removed), and with its query string for log lines.
    path: String,
    path_and_query: String,
    declared: Option<u64>,
}

/// One request between its start and its access line: what it was for, when it began, and how
/// its connection ends.
#[derive(Debug)]
pub(crate) struct Exchange {
    start: Instant,
    kind: Kind,
    /// Ask the client to close the connection after the response (shutdown, refusals).
    close: bool,
    /// A PUT to a cache taking uploads: a refusal is counted as such and closes the connection.
    upload: bool,
}

/// An admitted upload with its request, waiting for [`PendingUpload::run`] on a thread chosen by
/// the caller of [`Cache::serve`].
pub(crate) struct PendingUpload {
    cache: Cache,
    request: tiny_http::Request,
    upload: Upload,
    exchange: Exchange,
}

impl PendingUpload {
    /// Reads the body, stores it and writes the answer.
    pub fn run(mut self) {
        let response = self.cache.store_upload(&self.upload, &mut self.request);
        self.cache.finish(self.request, response, self.exchange);
    }
}

impl Cache {
    /// Begins the exchange for one request (the in-flight gauge, its start time), routes it
    /// once and answers it. `close` asks the client to close the connection afterwards.
    pub(crate) fn begin(&self, request: &Request<'_>, close: bool) -> (Exchange, Answer) {
        let start = self.request_started();
        let (kind, answer) = self.handle(request);
        let exchange = Exchange {
            start,
            kind,
            close,
            upload: request.method == Method::Put && self.accepts_uploads(),
        };
        (exchange, answer)
    }

    /// Ends what [`Cache::begin`] started: writes a ready answer, or hands an admitted upload to
    /// `run_upload`, which decides on which thread its body is read.
    pub(crate) fn complete(
        &self,
        request: tiny_http::Request,
        exchange: Exchange,
        answer: Answer,
        run_upload: impl FnOnce(PendingUpload),
    ) {
        match answer {
            Answer::Ready(response) => self.finish(request, response, exchange),
            Answer::Upload(upload) => run_upload(PendingUpload {
                cache: self.clone(),
                request,
                upload,
                exchange,
            }),
        }
    }

    /// Marks a request as begun, for the in-flight gauge and its latency.
    fn request_started(&self) -> Instant {
        self.metrics().request_started();
        Instant::now()
    }

    /// Routes `request` once and answers it; the metrics label comes with the answer.
    pub fn handle(&self, request: &Request<'_>) -> (Kind, Answer) {
        let target = Target::of(request.path, &request.decoded);
        let answer = match request.method {
            Method::Get | Method::Head => Answer::Ready(self.answer(request, target)),
            Method::Put if self.accepts_uploads() => self.admit_upload(request),
            Method::Put | Method::Other => Answer::Ready(self.method_not_allowed()),
        };
        (target.kind(), answer)
    }

    /// Writes `response`, logs the access line and counts it in the metrics once it is out.
    fn finish(&self, request: tiny_http::Request, response: Response, exchange: Exchange) {
        let Exchange {
            start,
            kind,
            mut close,
            upload,
        } = exchange;
        let status = response.status;
        if upload && status >= 400 {
            self.metrics().upload_refused(status);
            // A refused body may be unread: closing is cheaper than draining it.
            close = true;
        }
        let cache = self.clone();
        send::send_logged(request, response, close, start, move |sent| {
            let bytes = sent.map_or(0, |s| s.body_bytes);
            cache.metrics().request_finished(kind, status, bytes);
            cache.metrics().observe_latency(kind, start.elapsed());
        });
    }

    /// A GET or HEAD.
    fn answer(&self, request: &Request<'_>, target: Target<'_>) -> Response {
        let result = match target {
            Target::Landing => return self.landing(request),
            Target::BadPath => return bad_path(),
            Target::NotFound => Ok(not_found()),
            Target::Route(Route::CacheInfo) => Ok(self.cache_info()),
            Target::Route(Route::NarInfo(hash)) => self.narinfo(hash),
            Target::Route(Route::File(kind, rel)) => self.file(kind, rel),
        };
        match result {
            Ok(response) => conditional(response, &request.headers),
            Err(e) => {
                log::error!("{}: {e}", request.path);
                Response::text(
                    500,
                    "the server could not read this file; the operator's log says why",
                )
                .header("Cache-Control", max_age::NONE)
            }
        }
    }

    fn landing(&self, request: &Request<'_>) -> Response {
        let (scheme, host) = landing::origin(&request.headers, self.trusts_proxy_headers());
        let info = self.store().info();
        let public_keys = self.store().public_keys();
        let page = landing::render(&landing::Facts {
            host,
            scheme,
            cache_info: &info.text,
            paths: self.len(),
            nar_bytes: self.total_nar_bytes(),
            public_keys: &public_keys,
            uploads: self.accepts_uploads(),
        });
        Response::new(200, Body::bytes(page.into_bytes()))
            .header("Content-Type", "text/html; charset=utf-8")
            .header("Cache-Control", max_age::SHORT)
    }

    fn method_not_allowed(&self) -> Response {
        let allow = if self.accepts_uploads() {
            "GET, HEAD, PUT"
        } else {
            "GET, HEAD"
        };
        Response::text(405, &format!("allowed methods: {allow}"))
            .header("Allow", allow)
            .header("Cache-Control", max_age::NONE)
    }

    /// Checks who sent a PUT and how its body is encoded, before any of it is read.
    fn admit_upload(&self, request: &Request<'_>) -> Answer {
        let Some(config) = self.uploads() else {
            return Answer::Ready(self.method_not_allowed());
        };
        let Some(who) = config.tokens.who(request.headers.authorization) else {
            return Answer::Ready(
                Response::text(
                    401,
                    "uploads need a valid token (HTTP Basic password or Bearer)",
                )
                .header("WWW-Authenticate", "Basic realm=\"nix-binary-cache\"")
                .header("Cache-Control", max_age::NONE),
            );
        };
        let encoding = match Encoding::parse(request.headers.content_encoding) {
            Ok(encoding) => encoding,
            Err(name) => {
                return Answer::Ready(
                    Response::text(
                        415,
                        &format!(
                            "Content-Encoding {name} is not decoded here; use br, xz, zstd, \
                             gzip, bzip2 or none"
                        ),
                    )
                    .header("Cache-Control", max_age::NONE),
                );
            }
        };
        Answer::Upload(Upload {
            who,
            encoding,
            path: request.path.to_string(),
            path_and_query: request.path_and_query().to_string(),
            declared: request.body_length,
        })
    }

    /// Stores the body of an admitted PUT once an upload place is free.
    fn store_upload(&self, upload: &Upload, request: &mut tiny_http::Request) -> Response {
        let Some(config) = self.uploads() else {
            return self.method_not_allowed();
        };
        let Upload {
            who,
            encoding,
            path,
            path_and_query,
            declared,
        } = upload;
        // Waits for a place without reading the body: the client is held back by TCP.
        let Some(slot) = self.upload_slots().acquire(config.max_wait) else {
            log::warn!(
                "PUT {path_and_query}: no upload place freed in {}s (--max-uploads {} all busy)",
                config.max_wait.as_secs(),
                config.max_concurrent
            );
            return Response::text(503, "every upload place stayed busy; retry shortly")
                .header("Retry-After", "1")
                .header("Cache-Control", max_age::NONE);
        };
        if !slot.waited.is_zero() {
            log::debug!(
                "PUT {path_and_query}: waited {} ms for an upload place",
                slot.waited.as_millis()
            );
        }
        let store_dir = self.store().info().store_dir.clone();
        let target = UploadTarget {
            root: self.root(),
            store_dir: &store_dir,
            max_body: config.max_body,
        };
        match target.store(path, *declared, *encoding, request.as_reader()) {
            Ok(stored) => {
                let bytes = match stored {
                    Stored::File { bytes, .. } => bytes,
                    _ => declared.unwrap_or(0),
                };
                self.metrics().upload_stored(who, bytes);
                self.store().note_stored(&stored);
                // Who pushed what: the token's name, never the token.
                log::info!("stored {path} ({bytes} bytes) for token {who}");
                Response::text(200, "stored").header("Cache-Control", max_age::NONE)
            }
            Err(e) => {
                log::warn!("upload of {path} for token {who} refused: {}", e.message());
                Response::text(e.status(), &e.message()).header("Cache-Control", max_age::NONE)
            }
        }
    }

    fn cache_info(&self) -> Response {
        let info = self.store().info();
        let etag = fnv1a(info.text.as_bytes());
        Response::new(200, Body::bytes(info.text.as_bytes()))
            .header("Content-Type", "text/x-nix-cache-info")
            .header("Cache-Control", max_age::SHORT)
            .header("ETag", format!("\"{etag:016x}\""))
    }

    fn narinfo(&self, hash: &str) -> io::Result<Response> {
        let index = self.store().index();
        match index.get(hash) {
            Ok(Lookup::Found(entry)) => {
                let served = index.served(&entry);
                let len = served.body.len();
                Ok(Response::new(200, Body::Bytes(served.body, 0..len))
                    .header("Content-Type", "text/x-nix-narinfo")
                    .header("Cache-Control", max_age::SHORT)
                    .header("ETag", format!("\"{:016x}\"", served.etag))
                    .header("Last-Modified", httpdate::fmt_http_date(entry.mtime())))
            }
            Ok(Lookup::Missing) => Ok(not_found()),
            Err(e) if is_denied(&e) => Ok(denied(hash, &e)),
            Err(e) => Err(e),
        }
    }

    fn file(&self, kind: FileKind, rel: &str) -> io::Result<Response> {
        let path = self.root().join(rel);
        if !self.store().stays_inside(&path) {
            log::warn!("{rel}: refused, its directory leads outside the cache");
            return Ok(not_found());
        }
        let (file, meta) = match files::open_regular(&path) {
            Ok(Some(found)) => found,
            // Only a pusher (HEAD before PUT) or a client of a damaged cache asks for a NAR
            // that is not here; a proxy keeping that answer would hide the NAR once pushed.
            Ok(None) if kind == FileKind::Nar => {
                return Ok(not_found().header("Cache-Control", max_age::NONE));
            }
            Ok(None) => return Ok(not_found()),
            Err(e) if is_denied(&e) => return Ok(denied(rel, &e)),
            Err(e) => return Err(e),
        };
        let (content_type, cache_control) = match kind {
            FileKind::Nar => ("application/x-nix-nar", max_age::IMMUTABLE),
            FileKind::Listing => ("application/json", max_age::MEDIUM),
            FileKind::Log => ("text/plain; charset=utf-8", max_age::MEDIUM),
            FileKind::Realisation | FileKind::BuildTrace | FileKind::DebugInfo => {
                ("application/json", max_age::MEDIUM)
            }
        };
        let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
        let secs = mtime.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Ok(Response::new(
            200,
            Body::File {
                file,
                offset: 0,
                len: meta.len(),
            },
        )
        .header("Content-Type", content_type)
        .header("Cache-Control", cache_control)
        .header("ETag", format!("\"{secs:x}-{:x}\"", meta.len()))
        .header("Last-Modified", httpdate::fmt_http_date(mtime)))
    }
}

/// A path no Nix client sends: characters outside Nix's, a second layer of escapes, `..`.
fn bad_path() -> Response {
    Response::text(
        400,
        "malformed path: only the characters Nix uses in cache paths are allowed",
    )
    .header("Cache-Control", max_age::NONE)
}

/// 404, which a proxy may keep a few seconds.
pub(crate) fn not_found() -> Response {
    Response::text(404, "not in this cache").header("Cache-Control", max_age::MISS)
}

fn is_denied(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::PermissionDenied
}

/// An unreadable file is the operator's problem, but for the client it is simply not here:
/// a 404 lets Nix try its next substituter instead of failing the build.
fn denied(what: &str, e: &io::Error) -> Response {
    log::warn!("{what}: {e}; check the file's permissions");
    not_found()
}
