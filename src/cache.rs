//! A cache directory and the answers it gives: the heart of the library.
//!
//! [`Cache::answer`] turns a method, path and headers into a [`Response`]; it knows nothing of
//! sockets, so everything a client can observe is unit-testable. [`Cache::serve`] adds the
//! network side: it writes the answer onto a `tiny_http` request and logs the access line.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, UNIX_EPOCH};

use tiny_http::{Header, Method, Request};

use crate::atomic;
use crate::auth::Tokens;
use crate::cache_info::CacheInfo;
use crate::encoding::Encoding;
use crate::files;
use crate::index::{Index, Lookup, ScanStats, fnv1a};
use crate::landing;
use crate::metrics::{Gauges, Kind, Metrics};
use crate::range::{self, RangeAnswer};
use crate::response::{Body, Response};
use crate::route::{FileKind, Route, RouteError, decode, route};
use crate::send;
use crate::served_times::{self, Recorder};
use crate::signing::SigningKey;
use crate::slots::UploadSlots;
use crate::upload::{Stored, Target};
use crate::watch::WatchMode;

/// How to open a cache directory.
#[derive(Debug, Clone)]
pub struct Config {
    /// The directory `nix copy --to file://…` wrote.
    pub root: PathBuf,
    /// Overrides `Priority:` in `nix-cache-info`.
    pub priority: Option<u32>,
    /// How often the index is rebuilt from disk; zero turns background rescans off. `None`:
    /// every hour under inotify (a safety net), every minute in poll mode.
    pub rescan_interval: Option<Duration>,
    /// How the index learns about changes on disk.
    pub watch: WatchMode,
    /// Accept PUT uploads from holders of these tokens; `None` keeps the cache read-only.
    pub uploads: Option<UploadConfig>,
    /// Keys every served narinfo is signed with (in addition to the signatures it has).
    pub sign_keys: Vec<SigningKey>,
    /// Where to save when each narinfo was last served, for `gc` (see [`crate::served_times`]).
    pub served_times_file: Option<PathBuf>,
    /// Serve `nar/`, `log/`… that are symbolic links leading outside the cache (e.g. NARs on
    /// another disk); off by default, and `verify` reports such links unless told the same.
    pub allow_linked_dirs: bool,
    /// Believe `X-Forwarded-Proto`/`X-Forwarded-Host` for the landing page's URLs (only behind a
    /// proxy that sets them).
    pub trust_proxy_headers: bool,
}

impl Config {
    pub fn new(root: impl Into<PathBuf>) -> Config {
        Config {
            root: root.into(),
            priority: None,
            rescan_interval: None,
            watch: WatchMode::Auto,
            uploads: None,
            sign_keys: Vec::new(),
            served_times_file: None,
            allow_linked_dirs: false,
            trust_proxy_headers: false,
        }
    }
}

/// Who may upload, and how much.
#[derive(Debug, Clone)]
pub struct UploadConfig {
    pub tokens: Tokens,
    /// Largest NAR, log or listing accepted, in bytes.
    pub max_body: u64,
    /// Uploads running at once; more wait for a place (see [`crate::slots`]).
    pub max_concurrent: usize,
    /// How long an upload waits for a place before it gets 503 with `Retry-After`. Below
    /// curl's 300 s stall limit, which would otherwise end the waiting client's request.
    pub max_wait: Duration,
}

impl UploadConfig {
    pub const DEFAULT_MAX_BODY: u64 = 16 << 30;
    pub const DEFAULT_MAX_CONCURRENT: usize = 8;
    pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(120);

    pub fn new(tokens: Tokens) -> UploadConfig {
        UploadConfig {
            tokens,
            max_body: Self::DEFAULT_MAX_BODY,
            max_concurrent: Self::DEFAULT_MAX_CONCURRENT,
            max_wait: Self::DEFAULT_MAX_WAIT,
        }
    }
}

/// An open cache: cheap to clone and share between worker threads.
#[derive(Clone)]
pub struct Cache {
    shared: Arc<Shared>,
}

struct Shared {
    root: PathBuf,
    /// `root` with every link resolved: files must resolve below it.
    canonical_root: PathBuf,
    priority: Option<u32>,
    info: RwLock<Arc<CacheInfo>>,
    index: Arc<Index>,
    /// The watch mode in use (`Auto` resolved).
    watch: std::sync::OnceLock<WatchMode>,
    /// Reloads `nix-cache-info`; called by the index's threads.
    hook: crate::watch::Hook,
    uploads: Option<UploadConfig>,
    upload_slots: UploadSlots,
    /// `trusted-public-keys` entries of the signing keys, for the landing page.
    public_keys: RwLock<Vec<String>>,
    metrics: Metrics,
    served_times: Option<Recorder>,
    allow_linked_dirs: bool,
    trust_proxy_headers: bool,
    /// Open connections of each listener serving this cache, for `/metrics`.
    connection_gauges: Mutex<Vec<ConnectionGauge>>,
}

type ConnectionGauge = Box<dyn Fn() -> usize + Send + Sync>;

/// How long clients and proxies may keep each kind of answer.
mod max_age {
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

impl Cache {
    /// Opens `config.root`, reads its `nix-cache-info`, indexes every narinfo and, unless the
    /// interval is zero, starts the background rescan.
    pub fn open(config: Config) -> io::Result<Cache> {
        let meta = std::fs::metadata(&config.root).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cache directory {}: {e}", config.root.display()),
            )
        })?;
        if !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", config.root.display()),
            ));
        }
        let canonical_root = std::fs::canonicalize(&config.root)?;
        crate::process_stats::note_start();
        if config.uploads.is_some() {
            crate::upload::check_writable(&config.root)?;
        }
        let info = CacheInfo::load(&config.root, config.priority)?;
        let index = Arc::new(Index::new(
            &config.root,
            &info.store_dir,
            config.sign_keys.clone(),
        ));
        let weak_index = Arc::downgrade(&index);
        let shared = Arc::new_cyclic(|weak: &Weak<Shared>| {
            // The index's threads reload nix-cache-info through this; it never keeps the cache
            // alive.
            let weak = weak.clone();
            let hook: crate::watch::Hook = Arc::new(move || match weak.upgrade() {
                Some(shared) => {
                    shared.reload_info();
                    true
                }
                None => false,
            });
            Shared {
                root: config.root.clone(),
                canonical_root,
                priority: config.priority,
                info: RwLock::new(Arc::new(info)),
                index,
                watch: std::sync::OnceLock::new(),
                hook,
                uploads: config.uploads.clone(),
                upload_slots: UploadSlots::new(
                    config.uploads.as_ref().map_or(1, |u| u.max_concurrent),
                ),
                public_keys: RwLock::new(
                    config
                        .sign_keys
                        .iter()
                        .map(SigningKey::public_key)
                        .collect(),
                ),
                metrics: Metrics::default(),
                allow_linked_dirs: config.allow_linked_dirs,
                trust_proxy_headers: config.trust_proxy_headers,
                served_times: config.served_times_file.clone().map(Recorder::open),
                connection_gauges: Mutex::new(Vec::new()),
            }
        });
        // Serving starts now; the first scan runs in the background and lookups fall through
        // to the disk until it is done (see `watch.rs`).
        let index = weak_index.upgrade().expect("the cache holds its index");
        let mode = crate::watch::resolve(config.watch, &config.root);
        let interval = config.rescan_interval.unwrap_or(match mode {
            WatchMode::Poll => crate::watch::POLL_RESCAN,
            _ => crate::watch::INOTIFY_RESCAN,
        });
        // Listing a million names takes a while: the clean-up runs once every path is known,
        // in the background (it only removes temporaries of processes that are gone).
        let root = config.root.clone();
        let prepare = Box::new(move || {
            for dir in ["", "nar", "log", "realisations", "debuginfo"] {
                atomic::clean_stale(&root.join(dir));
            }
            // build-trace-v2/ holds one directory per derivation, where its uploads write.
            if let Ok(entries) = std::fs::read_dir(root.join("build-trace-v2")) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        atomic::clean_stale(&entry.path());
                    }
                }
            }
        });
        let mode = crate::watch::start(&index, mode, interval, shared.hook.clone(), prepare);
        let _ = shared.watch.set(mode);
        if let Some(recorder) = &shared.served_times {
            log::info!(
                "recording when narinfos are served in {}",
                recorder.file().display()
            );
            start_saving_served_times(Arc::downgrade(&shared));
        }
        Ok(Cache { shared })
    }

    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// Number of narinfo files in the index.
    pub fn len(&self) -> usize {
        self.shared.index.len()
    }

    /// Why this cache cannot serve right now, if it cannot: its directory is gone or unreadable
    /// (every path would be a 404, and Nix would build from source instead).
    pub fn unhealthy(&self) -> Option<String> {
        let root = &self.shared.root;
        match std::fs::read_dir(root) {
            Ok(_) => None,
            Err(e) => Some(format!("cache directory {}: {e}", root.display())),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of NAR files the indexed narinfos point to (their `FileSize`).
    pub fn total_nar_bytes(&self) -> u64 {
        self.shared.index.total_file_size()
    }

    pub fn last_scan(&self) -> ScanStats {
        self.shared.index.last_scan()
    }

    /// Rebuilds the index now (the background threads do this on their own).
    pub fn rescan(&self) -> io::Result<ScanStats> {
        self.shared.reload_info();
        self.shared.index.rescan(None)
    }

    /// True once the first scan of the directory has ended. Until then every narinfo request
    /// looks at the disk, so answers are right but cost more.
    pub fn is_indexed(&self) -> bool {
        self.shared.index.first_scan_done()
    }

    /// Blocks until the first scan has ended (for readiness notifications).
    pub fn wait_until_indexed(&self) {
        self.shared.index.wait_first_scan()
    }

    /// Blocks until every file of the first scan has been read (the log's `indexed` line).
    pub fn wait_until_read(&self) {
        self.shared.index.wait_first_read()
    }

    /// The watch mode in use: `Inotify` or `Poll` (`Auto` resolved).
    pub fn watch_mode(&self) -> WatchMode {
        self.shared.watch.get().copied().unwrap_or(WatchMode::Poll)
    }

    /// Saves when each narinfo was last served, if a file was configured (also done every
    /// minute in the background; call it before exiting).
    pub fn save_served_times(&self) {
        self.shared.save_served_times();
    }

    /// Signs narinfos with `keys` from now on (`SIGHUP`); the index is rebuilt for it.
    pub fn set_sign_keys(&self, keys: Vec<SigningKey>) -> io::Result<ScanStats> {
        let public: Vec<String> = keys.iter().map(SigningKey::public_key).collect();
        let stats = self.shared.index.set_sign_keys(keys)?;
        *self
            .shared
            .public_keys
            .write()
            .unwrap_or_else(|e| e.into_inner()) = public;
        Ok(stats)
    }

    /// The upload tokens, shared: [`Tokens::reload`] on them takes effect at once.
    pub fn upload_tokens(&self) -> Option<&Tokens> {
        self.shared.uploads.as_ref().map(|u| &u.tokens)
    }

    /// Answers one request, `path` being relative to where the cache is mounted (`/nar/…`).
    pub fn answer(&self, method: &Method, path: &str, headers: &[Header]) -> Response {
        if !matches!(method, Method::Get | Method::Head) {
            return self.method_not_allowed();
        }
        let path = path.split_once('?').map_or(path, |(p, _query)| p);
        if path == "/" {
            return self.landing(headers);
        }
        let Ok(decoded) = decode(path) else {
            return bad_path();
        };
        let result = match route(&decoded) {
            Ok(Route::CacheInfo) => Ok(self.cache_info()),
            Ok(Route::NarInfo(hash)) => self.narinfo(hash),
            Ok(Route::File(kind, rel)) => self.file(kind, rel),
            Err(RouteError::NotFound) => Ok(not_found()),
            Err(RouteError::BadPath) => return bad_path(),
        };
        match result {
            Ok(response) => conditional(response, headers),
            Err(e) => {
                log::error!("{path}: {e}");
                Response::text(
                    500,
                    "the server could not read this file; the operator's log says why",
                )
                .header("Cache-Control", max_age::NONE)
            }
        }
    }

    /// Answers `request` and writes the response; `path` is the part after the mount prefix.
    /// `close` asks the client to close the connection (used while shutting down).
    pub fn serve(&self, mut request: Request, path: &str, close: bool) {
        let start = self.request_started();
        if request.method() == &Method::Put {
            let response = self.upload(&mut request, path);
            if response.status >= 400 {
                self.shared.metrics.upload_refused(response.status);
            }
            // A refused body may be unread: closing is cheaper than draining it.
            let close = close || response.status >= 400;
            self.respond(request, response, close, start, Kind::of(path));
            return;
        }
        let response = self.answer(request.method(), path, request.headers());
        self.respond(request, response, close, start, Kind::of(path));
    }

    /// Marks a request as begun, for the in-flight gauge; pair it with [`Cache::respond`].
    pub fn request_started(&self) -> Instant {
        self.shared.metrics.request_started();
        Instant::now()
    }

    /// Writes `response`, logs the access line and counts it in the metrics once it is out.
    pub fn respond(
        &self,
        request: Request,
        response: Response,
        close: bool,
        start: Instant,
        kind: Kind,
    ) {
        let status = response.status;
        let shared = self.shared.clone();
        send::send_logged(request, response, close, start, move |sent| {
            let bytes = sent.map_or(0, |s| s.body_bytes);
            shared.metrics.request_finished(kind, status, bytes);
            shared.metrics.observe_latency(kind, start.elapsed());
        });
    }

    /// Adds a source of the open-connection count reported in `/metrics` (one per listener).
    pub fn add_connection_gauge(&self, count: impl Fn() -> usize + Send + Sync + 'static) {
        self.shared
            .connection_gauges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(count));
    }

    /// `GET /metrics`: Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let scan = self.last_scan();
        let index = &self.shared.index;
        let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        self.shared.metrics.render(Gauges {
            index_entries: self.len(),
            nar_bytes: self.total_nar_bytes(),
            last_scan_seconds: scan.duration.as_secs_f64(),
            last_scan_unix: scan.finished_unix,
            skipped_narinfos: scan.skipped,
            open_connections: self
                .shared
                .connection_gauges
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|count| count())
                .sum(),
            index_complete: index.first_scan_done(),
            index_read: index.first_read_done(),
            index_watched: index.is_watched(),
            watch_inotify: self.watch_mode() == WatchMode::Inotify,
            watch_events: count(&index.counters.watch_events),
            watch_overflows: count(&index.counters.overflows),
            watch_losses: count(&index.counters.watch_losses),
            rescans: count(&index.counters.rescans),
        })
    }

    fn landing(&self, headers: &[Header]) -> Response {
        let (scheme, host) = landing::origin(headers, self.shared.trust_proxy_headers);
        let info = self.shared.info();
        let public_keys = self.shared.public_keys.read().map(|k| k.clone());
        let public_keys = public_keys.unwrap_or_default();
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

    /// True if PUT uploads are enabled.
    pub fn accepts_uploads(&self) -> bool {
        self.shared.uploads.is_some()
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

    /// Stores the body of a PUT after checking who sent it and how much is already running.
    fn upload(&self, request: &mut Request, path: &str) -> Response {
        let Some(config) = &self.shared.uploads else {
            return self.method_not_allowed();
        };
        let Some(who) = config.tokens.who(request.headers()) else {
            return Response::text(
                401,
                "uploads need a valid token (HTTP Basic password or Bearer)",
            )
            .header("WWW-Authenticate", "Basic realm=\"nix-binary-cache\"")
            .header("Cache-Control", max_age::NONE);
        };
        let encoding = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Content-Encoding"))
            .map(|h| h.value.as_str());
        let encoding = match Encoding::parse(encoding) {
            Ok(encoding) => encoding,
            Err(name) => {
                return Response::text(
                    415,
                    &format!(
                        "Content-Encoding {name} is not decoded here; use br, xz, zstd, gzip, \
                         bzip2 or none"
                    ),
                )
                .header("Cache-Control", max_age::NONE);
            }
        };
        // Waits for a place without reading the body: the client is held back by TCP.
        let Some(slot) = self.shared.upload_slots.acquire(config.max_wait) else {
            log::warn!(
                "PUT {path}: no upload place freed in {}s (--max-uploads {} all busy)",
                config.max_wait.as_secs(),
                config.max_concurrent
            );
            return Response::text(503, "every upload place stayed busy; retry shortly")
                .header("Retry-After", "1")
                .header("Cache-Control", max_age::NONE);
        };
        if !slot.waited.is_zero() {
            log::debug!(
                "PUT {path}: waited {} ms for an upload place",
                slot.waited.as_millis()
            );
        }
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let store_dir = self.shared.info().store_dir.clone();
        let target = Target {
            root: &self.shared.root,
            store_dir: &store_dir,
            max_body: config.max_body,
        };
        let declared = request.body_length().map(|n| n as u64);
        match target.store(path, declared, encoding, request.as_reader()) {
            Ok(stored) => {
                let bytes = match stored {
                    Stored::File { bytes, .. } => bytes,
                    _ => declared.unwrap_or(0),
                };
                self.shared.metrics.upload_stored(&who, bytes);
                self.after_upload(&stored);
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

    /// Makes a stored narinfo or nix-cache-info visible without waiting for a rescan.
    fn after_upload(&self, stored: &Stored) {
        match stored {
            Stored::NarInfo { hash } => {
                if let Err(e) = self.shared.index.refresh(hash) {
                    log::warn!("{hash}.narinfo stored but not indexed: {e}");
                }
            }
            Stored::CacheInfo => {
                if let Ok(info) = CacheInfo::load(&self.shared.root, self.shared.priority) {
                    *self.shared.info.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(info);
                }
            }
            Stored::File { .. } => {}
        }
    }

    fn cache_info(&self) -> Response {
        let info = self.shared.info();
        let etag = fnv1a(info.text.as_bytes());
        Response::new(200, Body::bytes(info.text.as_bytes()))
            .header("Content-Type", "text/x-nix-cache-info")
            .header("Cache-Control", max_age::SHORT)
            .header("ETag", format!("\"{etag:016x}\""))
    }

    fn narinfo(&self, hash: &str) -> io::Result<Response> {
        match self.shared.index.get(hash) {
            Ok(Lookup::Found(entry)) => {
                let served = self.shared.index.served(&entry);
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
        let path = self.shared.root.join(rel);
        if !self.stays_inside(&path) {
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

    /// True if the directory holding `path` resolves inside the cache root, so that a linked
    /// `nar/` or `log/` cannot lead elsewhere. (The file itself is opened without following links.)
    fn stays_inside(&self, path: &Path) -> bool {
        let Some(dir) = path.parent() else {
            return false;
        };
        if dir == self.shared.root || self.shared.allow_linked_dirs {
            return true;
        }
        match std::fs::canonicalize(dir) {
            Ok(real) => real.starts_with(&self.shared.canonical_root),
            Err(_) => true, // A missing directory: opening the file will say "absent".
        }
    }
}

impl Shared {
    fn save_served_times(&self) {
        if let Some(recorder) = &self.served_times
            && let Err(e) = recorder.save(&self.index)
        {
            log::warn!(
                "could not save served times to {}: {e}; gc will see older times",
                recorder.file().display()
            );
        }
    }

    /// The current `nix-cache-info` (replaced by rescans and uploads).
    fn info(&self) -> Arc<CacheInfo> {
        self.info.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads `nix-cache-info` again (before every rescan, and when inotify reports a change).
    fn reload_info(&self) {
        match CacheInfo::load(&self.root, self.priority) {
            Ok(info) => *self.info.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(info),
            Err(e) => log::warn!(
                "{}/nix-cache-info: {e}; keeping the previous one",
                self.root.display()
            ),
        }
    }
}

/// Saves the served times every [`served_times::SAVE_EVERY`]; ends when the cache is dropped.
fn start_saving_served_times(shared: Weak<Shared>) {
    let spawned = std::thread::Builder::new()
        .name("served-times".into())
        .spawn(move || {
            loop {
                std::thread::sleep(served_times::SAVE_EVERY);
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                shared.save_served_times();
            }
        });
    if let Err(e) = spawned {
        log::error!("could not start saving served times: {e}; they are saved at exit only");
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

fn not_found() -> Response {
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

/// Applies `If-None-Match`, `If-Modified-Since`, `Range` and `If-Range` to a 200 response.
fn conditional(response: Response, headers: &[Header]) -> Response {
    if response.status != 200 {
        return response;
    }
    let header = |name: &'static str| {
        headers
            .iter()
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.as_str())
    };
    let etag = response.get_header("ETag");
    let last_modified = response.get_header("Last-Modified");

    let not_modified = match (header("If-None-Match"), header("If-Modified-Since")) {
        (Some(inm), _) => etag.is_some_and(|tag| etag_matches(inm, tag)),
        (None, Some(ims)) => last_modified.is_some_and(|lm| not_newer(lm, ims)),
        (None, None) => false,
    };
    if not_modified {
        let mut r = Response::new(304, Body::Empty);
        r.headers = response
            .headers
            .into_iter()
            .filter(|(n, _)| matches!(*n, "ETag" | "Last-Modified" | "Cache-Control"))
            .collect();
        return r;
    }

    let total = response.body.len();
    let range_applies = match header("If-Range") {
        Some(cond) => Some(cond) == etag || Some(cond) == last_modified,
        None => true,
    };
    let answer = match header("Range") {
        Some(spec) if range_applies => range::parse(spec, total),
        _ => RangeAnswer::Full,
    };
    match answer {
        RangeAnswer::Full => response.header("Accept-Ranges", "bytes"),
        RangeAnswer::Partial { start, len } => {
            let Response { headers, body, .. } = response;
            let mut r = Response {
                status: 206,
                headers,
                body: body.slice(start, len),
            };
            r.headers.push((
                "Content-Range",
                format!("bytes {start}-{}/{total}", start + len - 1).into(),
            ));
            r.header("Accept-Ranges", "bytes")
        }
        RangeAnswer::Unsatisfiable => Response::new(416, Body::Empty)
            .header("Content-Range", format!("bytes */{total}"))
            .header("Cache-Control", max_age::NONE),
    }
}

/// `If-None-Match`: `*` or a list of tags; weak comparison, as RFC 9110 asks for GET.
fn etag_matches(header: &str, etag: &str) -> bool {
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_string();
    header.trim() == "*" || header.split(',').any(|t| bare(t) == bare(etag))
}

/// True if the resource (modified at `last_modified`) is not newer than `since`.
fn not_newer(last_modified: &str, since: &str) -> bool {
    match (
        httpdate::parse_http_date(last_modified),
        httpdate::parse_http_date(since),
    ) {
        (Ok(lm), Ok(since)) => lm <= since,
        _ => false,
    }
}
