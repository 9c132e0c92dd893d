//! The one request pipeline: a request view ([`Request`]) is routed once ([`Target`]) and
//! answered ([`Cache::handle`]); `http/mount.rs` writes the answer and this module counts it.
//!
//! The standalone server and a [`crate::Mount`] both enter it through `Mount::serve`; they
//! differ only in where an admitted upload reads its body (the server gives it a thread of its
//! own). No `tiny_http` type is seen here: the request arrives as our view, an upload's body as
//! a reader.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

use crate::http::Cache;
use crate::http::conditional::conditional;
use crate::http::error::Refusal;
use crate::http::landing;
use crate::http::metrics::Kind;
use crate::http::request::{Method, Request};
use crate::http::response::{Body, Response};
use crate::nix::layout::{FileKind, OwnedRoute, Route, RouteError, route};
use crate::store::encoding::Encoding;
use crate::store::files;
use crate::store::index::{Lookup, fnv1a};
use crate::store::upload::{Stored, Target as UploadTarget, UploadError};

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
    /// Where the body goes, as [`Target::of`] routed the path; `None`: nowhere a cache holds
    /// (refused once the body's turn comes, as before routing moved here).
    route: Option<OwnedRoute>,
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

impl Exchange {
    /// When the request began, for its access line.
    pub(crate) fn start(&self) -> Instant {
        self.start
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
            Method::Put if self.accepts_uploads() => self.admit_upload(request, target),
            Method::Put | Method::Other => Answer::Ready(self.method_not_allowed()),
        };
        (target.kind(), answer)
    }

    /// Before the answer with `status` is written: counts a refused upload, and says whether
    /// the connection closes after it.
    pub(crate) fn settle(&self, exchange: &Exchange, status: u16) -> bool {
        if exchange.upload && status >= 400 {
            self.metrics().upload_refused(status);
            // A refused body may be unread: closing is cheaper than draining it.
            return true;
        }
        exchange.close
    }

    /// Once the answer with `status` is out (`body_bytes` of it, 0 if abandoned): counts it
    /// and its latency.
    pub(crate) fn count(&self, exchange: &Exchange, status: u16, body_bytes: u64) {
        let kind = exchange.kind;
        self.metrics().request_finished(kind, status, body_bytes);
        self.metrics()
            .observe_latency(kind, exchange.start.elapsed());
    }

    /// A GET or HEAD.
    fn answer(&self, request: &Request<'_>, target: Target<'_>) -> Response {
        let result = match target {
            Target::Landing => return self.landing(request),
            Target::BadPath => return Refusal::BadPath.response(),
            Target::NotFound => Ok(not_found()),
            Target::Route(Route::CacheInfo) => Ok(self.cache_info()),
            Target::Route(Route::NarInfo(hash)) => self.narinfo(hash),
            Target::Route(Route::File(kind, rel)) => self.file(kind, rel),
        };
        match result {
            Ok(response) => conditional(response, &request.headers),
            Err(e) => {
                log::error!("{}: {e}", request.path);
                Refusal::Unreadable.response()
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
        let uploads = self.accepts_uploads();
        Refusal::MethodNotAllowed { uploads }.response()
    }

    /// Checks who sent a PUT and how its body is encoded, before any of it is read.
    fn admit_upload(&self, request: &Request<'_>, target: Target<'_>) -> Answer {
        let Some(config) = self.uploads() else {
            return Answer::Ready(self.method_not_allowed());
        };
        let Some(who) = config.tokens.who(request.headers.authorization) else {
            return Answer::Ready(Refusal::Unauthorized.response());
        };
        let encoding = match Encoding::parse(request.headers.content_encoding) {
            Ok(encoding) => encoding,
            Err(name) => {
                return Answer::Ready(Refusal::UnsupportedEncoding(name).response());
            }
        };
        let route = match target {
            Target::Route(route) => Some(route.into()),
            Target::Landing | Target::NotFound | Target::BadPath => None,
        };
        Answer::Upload(Upload {
            who,
            encoding,
            route,
            path: request.path.to_string(),
            path_and_query: request.path_and_query().to_string(),
            declared: request.body_length,
        })
    }

    /// Stores the body of an admitted PUT, read from `body`, once an upload place is free.
    pub(crate) fn store_upload(&self, upload: &Upload, body: &mut dyn Read) -> Response {
        let Some(config) = self.uploads() else {
            return self.method_not_allowed();
        };
        let Upload {
            who,
            encoding,
            route,
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
            return Refusal::Busy.response();
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
        let stored = match route {
            Some(route) => target.store(route.as_route(), *declared, *encoding, body),
            None => Err(UploadError::not_a_cache_path(path)),
        };
        match stored {
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
                Refusal::Upload(e).response()
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
            Ok(None) if kind == FileKind::Nar => return Ok(Refusal::NarNotFound.response()),
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

/// 404, which a proxy may keep a few seconds.
pub(crate) fn not_found() -> Response {
    Refusal::NotFound.response()
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

#[cfg(test)]
mod tests {
    //! The answer logic with fake requests: no socket, no thread.

    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::http::{Config, Tokens, UploadConfig};
    use crate::store::WatchMode;

    const HASH: &str = "6ll6zs2rb9av0iylc29c154xzi53g46a";
    const NAR: &str = "/nar/1ryggfzwgm2znw8mqrwf5q3q21dghcaw1n0l3y9k3cfbkk94gnrj.nar.xz";
    const NAR_LEN: u64 = 284;

    /// A cache in a directory of its own, removed at the end.
    struct Scratch {
        dir: PathBuf,
        cache: Cache,
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn scratch(tag: &str, uploads: bool) -> Scratch {
        let dir = std::env::temp_dir().join(format!("nbc-service-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("nar")).unwrap();
        std::fs::write(dir.join("nix-cache-info"), "StoreDir: /nix/store\n").unwrap();
        std::fs::write(
            dir.join(format!("{HASH}.narinfo")),
            format!(
                "StorePath: /nix/store/{HASH}-fixture\nURL: {}\nCompression: xz\n\
                 FileHash: sha256:1ryggfzwgm2znw8mqrwf5q3q21dghcaw1n0l3y9k3cfbkk94gnrj\n\
                 FileSize: {NAR_LEN}\n\
                 NarHash: sha256:1dkwm6fia7rwkgwkwlwqszbxwx5jh4vdwfz71fzk3s155k4yccv4\n\
                 NarSize: 648\nReferences: \n",
                &NAR[1..]
            ),
        )
        .unwrap();
        std::fs::write(dir.join(&NAR[1..]), vec![7u8; NAR_LEN as usize]).unwrap();
        let mut config = Config::new(&dir);
        config.watch = WatchMode::Poll;
        config.rescan_interval = Some(Duration::ZERO);
        if uploads {
            config.uploads = Some(UploadConfig::new(Tokens::parse("ci:secret\n")));
        }
        let cache = Cache::open(config).unwrap();
        Scratch { dir, cache }
    }

    /// The answer to a request that gets one at once.
    fn ask(cache: &Cache, method: Method, url: &str, headers: &[(&str, &str)]) -> (Kind, Response) {
        match cache.handle(&Request::fake(method, url, headers)) {
            (kind, Answer::Ready(response)) => (kind, response),
            (_, Answer::Upload(u)) => panic!("{url}: admitted as an upload: {u:?}"),
        }
    }

    fn get(cache: &Cache, url: &str, headers: &[(&str, &str)]) -> Response {
        ask(cache, Method::Get, url, headers).1
    }

    fn text(response: &Response) -> &str {
        match &response.body {
            Body::Bytes(data, range) => std::str::from_utf8(&data[range.clone()]).unwrap(),
            other => panic!("not in memory: {other:?}"),
        }
    }

    #[test]
    fn the_method_is_refused_before_the_path_is_looked_at() {
        let s = scratch("methods", false);
        for (method, url) in [(Method::Other, "/../x"), (Method::Put, "/nix-cache-info")] {
            let (kind, r) = ask(&s.cache, method, url, &[]);
            assert_eq!(r.status, 405, "{url}");
            assert_eq!(r.get_header("Allow"), Some("GET, HEAD"));
            assert_eq!(text(&r), "allowed methods: GET, HEAD\n");
            assert_eq!(r.get_header("Cache-Control"), Some("no-store"));
            let expected = if url == "/../x" {
                Kind::Other
            } else {
                Kind::CacheInfo
            };
            assert_eq!(kind, expected, "the label still comes from the route");
        }
        let s = scratch("methods-put", true);
        let r = ask(&s.cache, Method::Other, "/nix-cache-info", &[]).1;
        assert_eq!(
            (r.status, r.get_header("Allow")),
            (405, Some("GET, HEAD, PUT"))
        );
    }

    #[test]
    fn malformed_paths_are_400_and_paths_a_cache_cannot_hold_404() {
        let s = scratch("paths", false);
        for url in [
            "/a/../b",
            "/log/a%2Fb",
            "/log/a%zz",
            "/x\\y",
            "nix-cache-info",
        ] {
            let (kind, r) = ask(&s.cache, Method::Get, url, &[]);
            assert_eq!(r.status, 400, "{url}");
            assert_eq!(kind, Kind::Other, "{url}");
            assert!(text(&r).starts_with("malformed path"), "{url}");
        }
        let (kind, r) = ask(&s.cache, Method::Get, "/robots.txt", &[]);
        assert_eq!((kind, r.status), (Kind::Other, 404));
        assert_eq!(r.get_header("Cache-Control"), Some("public, max-age=5"));
        assert_eq!(text(&r), "not in this cache\n");

        // Routed but absent: a narinfo miss may be cached briefly, a NAR miss not at all.
        let missing = format!("/{}.narinfo", "0".repeat(32));
        let (kind, r) = ask(&s.cache, Method::Get, &missing, &[]);
        assert_eq!((kind, r.status), (Kind::NarInfo, 404));
        assert_eq!(r.get_header("Cache-Control"), Some("public, max-age=5"));
        let missing = format!("/nar/{}.nar.xz", "0".repeat(52));
        let (kind, r) = ask(&s.cache, Method::Head, &missing, &[]);
        assert_eq!((kind, r.status), (Kind::Nar, 404));
        assert_eq!(r.get_header("Cache-Control"), Some("no-store"));
    }

    #[test]
    fn a_query_string_does_not_change_the_route() {
        let s = scratch("query", false);
        let (kind, r) = ask(&s.cache, Method::Get, "/?utm=x", &[]);
        assert_eq!((kind, r.status), (Kind::Landing, 200));
        assert_eq!(
            r.get_header("Content-Type"),
            Some("text/html; charset=utf-8")
        );
        let (kind, r) = ask(&s.cache, Method::Get, "/nix-cache-info?x=1", &[]);
        assert_eq!((kind, r.status), (Kind::CacheInfo, 200));
        assert!(text(&r).contains("StoreDir: /nix/store\n"));
    }

    #[test]
    fn if_none_match_and_if_modified_since_answer_304_with_validators_only() {
        let s = scratch("conditional", false);
        let url = format!("/{HASH}.narinfo");
        let full = get(&s.cache, &url, &[]);
        assert_eq!(full.status, 200);
        assert!(text(&full).starts_with(&format!("StorePath: /nix/store/{HASH}-fixture\n")));
        let etag = full.get_header("ETag").unwrap().to_string();
        let last_modified = full.get_header("Last-Modified").unwrap().to_string();

        let weak = format!("W/{etag}");
        let listed = format!("\"other\", {etag}");
        for inm in [etag.as_str(), weak.as_str(), listed.as_str(), "*"] {
            let r = get(&s.cache, &url, &[("If-None-Match", inm)]);
            assert_eq!(r.status, 304, "{inm}");
            assert!(r.body.is_empty());
            let names: Vec<_> = r.headers.iter().map(|(n, _)| *n).collect();
            assert_eq!(names, ["Cache-Control", "ETag", "Last-Modified"]);
        }
        let r = get(&s.cache, &url, &[("If-None-Match", "\"other\"")]);
        assert_eq!(r.status, 200);
        // If-None-Match wins over If-Modified-Since.
        let r = get(
            &s.cache,
            &url,
            &[
                ("If-None-Match", "\"other\""),
                ("If-Modified-Since", &last_modified),
            ],
        );
        assert_eq!(r.status, 200);

        let r = get(&s.cache, &url, &[("If-Modified-Since", &last_modified)]);
        assert_eq!(r.status, 304);
        let r = get(
            &s.cache,
            &url,
            &[("If-Modified-Since", "Thu, 01 Jan 1970 00:00:00 GMT")],
        );
        assert_eq!(r.status, 200);
        let r = get(&s.cache, &url, &[("If-Modified-Since", "not a date")]);
        assert_eq!(r.status, 200);
    }

    #[test]
    fn ranges_slice_the_file_unless_if_range_says_it_changed() {
        let s = scratch("ranges", false);
        let full = get(&s.cache, NAR, &[]);
        assert_eq!((full.status, full.body.len()), (200, NAR_LEN));
        assert_eq!(full.get_header("Accept-Ranges"), Some("bytes"));
        let etag = full.get_header("ETag").unwrap().to_string();

        let r = get(&s.cache, NAR, &[("Range", "bytes=10-19")]);
        assert_eq!((r.status, r.body.len()), (206, 10));
        assert_eq!(r.get_header("Content-Range"), Some("bytes 10-19/284"));
        assert!(matches!(
            r.body,
            Body::File {
                offset: 10,
                len: 10,
                ..
            }
        ));

        let r = get(&s.cache, NAR, &[("Range", "bytes=284-")]);
        assert_eq!((r.status, r.body.len()), (416, 0));
        assert_eq!(r.get_header("Content-Range"), Some("bytes */284"));

        let r = get(
            &s.cache,
            NAR,
            &[("Range", "bytes=0-0"), ("If-Range", "\"stale\"")],
        );
        assert_eq!((r.status, r.body.len()), (200, NAR_LEN));
        let r = get(
            &s.cache,
            NAR,
            &[("Range", "bytes=0-0"), ("If-Range", &etag)],
        );
        assert_eq!((r.status, r.body.len()), (206, 1));

        // In-memory bodies are sliced the same way.
        let r = get(
            &s.cache,
            &format!("/{HASH}.narinfo"),
            &[("Range", "bytes=0-9")],
        );
        assert_eq!((r.status, text(&r)), (206, "StorePath:"));
    }

    #[test]
    fn uploads_are_admitted_by_token_and_encoding_before_any_body_is_read() {
        let s = scratch("uploads", true);
        let url = format!("/{HASH}.narinfo");
        for auth in [None, Some("Bearer wrong"), Some("Basic !!!")] {
            let headers: Vec<_> = auth.map(|a| ("Authorization", a)).into_iter().collect();
            let (kind, r) = ask(&s.cache, Method::Put, &url, &headers);
            assert_eq!((kind, r.status), (Kind::NarInfo, 401), "{auth:?}");
            assert_eq!(
                r.get_header("WWW-Authenticate"),
                Some("Basic realm=\"nix-binary-cache\"")
            );
        }
        let auth = ("Authorization", "Bearer secret");
        let (_, r) = ask(
            &s.cache,
            Method::Put,
            &url,
            &[auth, ("Content-Encoding", "compress")],
        );
        assert_eq!(r.status, 415);
        assert!(text(&r).starts_with("Content-Encoding compress is not decoded here"));

        let request = Request::fake(Method::Put, "/x/../y?q", &[auth]);
        match s.cache.handle(&request) {
            (Kind::Other, Answer::Upload(u)) => {
                assert_eq!(
                    (u.path.as_str(), u.path_and_query.as_str()),
                    ("/x/../y", "/x/../y?q")
                );
                assert_eq!(&*u.who, "ci");
                // Routed to nothing: refused with a 400 once its turn comes.
                assert_eq!(u.route, None);
            }
            (kind, other) => panic!("{kind:?} {other:?}"),
        }

        // The route found here is the one the body is stored by, decoded once.
        let log = format!("/log/{HASH}-a%2B%2B.drv");
        let admitted = [
            (url.as_str(), OwnedRoute::NarInfo(HASH.to_string())),
            (
                log.as_str(),
                OwnedRoute::File(FileKind::Log, format!("log/{HASH}-a++.drv")),
            ),
        ];
        for (path, route) in admitted {
            let request = Request::fake(Method::Put, path, &[auth]);
            match s.cache.handle(&request) {
                (_, Answer::Upload(u)) => assert_eq!(u.route, Some(route), "{path}"),
                (kind, other) => panic!("{path}: {kind:?} {other:?}"),
            }
        }
    }
}
