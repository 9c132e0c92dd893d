//! A cache as HTTP sees it: the open directory ([`Store`]) plus what serving it needs (upload
//! tokens and places, metrics, the proxy policy). How it answers is in `service.rs`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::http::auth::Tokens;
use crate::http::metrics::{Gauges, Metrics};
use crate::http::slots::UploadSlots;
use crate::nix::signing::SigningKey;
use crate::store::{self, ScanStats, Store, WatchMode};

/// How to open a cache directory.
#[derive(Debug, Clone)]
pub struct Config {
    /// The directory `nix copy --to file://…` wrote.
    pub root: PathBuf,
    /// Overrides `Priority:` in `nix-cache-info`.
    pub priority: Option<u32>,
    /// How often the index is rebuilt from disk; zero turns background rescans off. `None`:
    /// the watch mode's default (`INOTIFY_RESCAN`, a safety net, or `POLL_RESCAN`, in
    /// `store/watch.rs`).
    pub rescan_interval: Option<Duration>,
    /// How the index learns about changes on disk.
    pub watch: WatchMode,
    /// Accept PUT uploads from holders of these tokens; `None` keeps the cache read-only.
    pub uploads: Option<UploadConfig>,
    /// Keys every served narinfo is signed with (in addition to the signatures it has).
    pub sign_keys: Vec<SigningKey>,
    /// Where to save when each narinfo was last served, for `gc` (see [`crate::store::served_times`]).
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
            watch: WatchMode::default(),
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
    /// Uploads running at once; more wait for a place (see `http/slots.rs`).
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
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    uploads: Option<UploadConfig>,
    upload_slots: UploadSlots,
    metrics: Metrics,
    trust_proxy_headers: bool,
    /// Open connections of each listener serving this cache, for `/metrics`.
    connection_gauges: Mutex<Vec<ConnectionGauge>>,
}

type ConnectionGauge = Box<dyn Fn() -> usize + Send + Sync>;

impl Cache {
    /// Opens `config.root`, reads its `nix-cache-info`, indexes every narinfo and, unless the
    /// interval is zero, starts the background rescan.
    pub fn open(config: Config) -> io::Result<Cache> {
        let store = Store::open(store::Options {
            root: config.root,
            priority: config.priority,
            rescan_interval: config.rescan_interval,
            watch: config.watch,
            sign_keys: config.sign_keys,
            served_times_file: config.served_times_file,
            allow_linked_dirs: config.allow_linked_dirs,
            writable: config.uploads.is_some(),
        })?;
        Ok(Cache {
            inner: Arc::new(Inner {
                store,
                upload_slots: UploadSlots::new(
                    config.uploads.as_ref().map_or(1, |u| u.max_concurrent),
                ),
                uploads: config.uploads,
                metrics: Metrics::default(),
                trust_proxy_headers: config.trust_proxy_headers,
                connection_gauges: Mutex::new(Vec::new()),
            }),
        })
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub(crate) fn uploads(&self) -> Option<&UploadConfig> {
        self.inner.uploads.as_ref()
    }

    pub(crate) fn upload_slots(&self) -> &UploadSlots {
        &self.inner.upload_slots
    }

    pub(crate) fn trusts_proxy_headers(&self) -> bool {
        self.inner.trust_proxy_headers
    }

    pub fn root(&self) -> &Path {
        self.store().root()
    }

    /// Number of narinfo files in the index.
    pub fn len(&self) -> usize {
        self.store().len()
    }

    /// Why this cache cannot serve right now, if it cannot: its directory is gone or unreadable
    /// (every path would be a 404, and Nix would build from source instead).
    pub fn unhealthy(&self) -> Option<String> {
        self.store().unhealthy()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of NAR files the indexed narinfos point to (their `FileSize`).
    pub fn total_nar_bytes(&self) -> u64 {
        self.store().index().total_file_size()
    }

    pub fn last_scan(&self) -> ScanStats {
        self.store().index().last_scan()
    }

    /// Rebuilds the index now (the background threads do this on their own).
    pub fn rescan(&self) -> io::Result<ScanStats> {
        self.store().rescan()
    }

    /// True once the first scan of the directory has ended. Until then every narinfo request
    /// looks at the disk, so answers are right but cost more.
    pub fn is_indexed(&self) -> bool {
        self.store().index().first_scan_done()
    }

    /// Blocks until the first scan has ended (for readiness notifications).
    pub fn wait_until_indexed(&self) {
        self.store().index().wait_first_scan()
    }

    /// Blocks until every file of the first scan has been read (the log's `indexed` line).
    pub fn wait_until_read(&self) {
        self.store().index().wait_first_read()
    }

    /// The watch mode in use: `Inotify` or `Poll` (`Auto` resolved).
    pub fn watch_mode(&self) -> WatchMode {
        self.store().watch_mode()
    }

    /// Saves when each narinfo was last served, if a file was configured (also done every
    /// minute in the background; call it before exiting).
    pub fn save_served_times(&self) {
        self.store().save_served_times();
    }

    /// Signs narinfos with `keys` from now on (`SIGHUP`); the index is rebuilt for it.
    pub fn set_sign_keys(&self, keys: Vec<SigningKey>) -> io::Result<ScanStats> {
        self.store().set_sign_keys(keys)
    }

    /// The upload tokens, shared: [`Tokens::reload`] on them takes effect at once.
    pub fn upload_tokens(&self) -> Option<&Tokens> {
        self.uploads().map(|u| &u.tokens)
    }

    /// True if PUT uploads are enabled.
    pub fn accepts_uploads(&self) -> bool {
        self.inner.uploads.is_some()
    }

    /// Adds a source of the open-connection count reported in `/metrics` (one per listener).
    pub fn add_connection_gauge(&self, count: impl Fn() -> usize + Send + Sync + 'static) {
        self.inner
            .connection_gauges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(count));
    }

    /// `GET /metrics`: Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let scan = self.last_scan();
        let index = self.store().index();
        let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        self.inner.metrics.render(Gauges {
            index_entries: self.len(),
            nar_bytes: self.total_nar_bytes(),
            last_scan_seconds: scan.duration.as_secs_f64(),
            last_scan_unix: scan.finished_unix,
            skipped_narinfos: scan.skipped,
            open_connections: self
                .inner
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
}
