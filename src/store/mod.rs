//! The cache directory on disk: opening its files safely, the in-memory narinfo index and how it
//! follows the disk, storing uploads, temporary files, and when each narinfo was last served.
//!
//! Below `http/` and above `nix/` (formats) and `os/` (system calls): nothing here knows about
//! requests or responses. `Store` is an open cache directory.

pub(crate) mod cache_info;
pub(crate) mod encoding;
pub(crate) mod files;
pub(crate) mod immutable;
pub(crate) mod index;
pub mod keys;
pub(crate) mod scan;
pub mod served_times;
pub(crate) mod tempfile;
pub(crate) mod upload;
pub(crate) mod watch;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Duration;

use crate::nix::cache_info::CacheInfo;
use crate::nix::signing::SigningKey;
use index::Index;
use served_times::Recorder;
use upload::Stored;

pub use index::{REVALIDATE_AFTER, ScanStats};
pub use watch::{INOTIFY_RESCAN, POLL_RESCAN, WatchMode};

/// How to open a cache directory (the store's part of [`crate::Config`]).
pub(crate) struct Options {
    pub root: PathBuf,
    pub priority: Option<u32>,
    pub rescan_interval: Option<Duration>,
    pub watch: WatchMode,
    pub sign_keys: Vec<SigningKey>,
    pub served_times_file: Option<PathBuf>,
    pub allow_linked_dirs: bool,
    /// Uploads will write here: check that they can.
    pub writable: bool,
}

/// An open cache directory: cheap to clone and share between threads.
#[derive(Clone)]
pub(crate) struct Store {
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
    watch: OnceLock<WatchMode>,
    /// Reloads `nix-cache-info`; called by the index's threads.
    hook: watch::Hook,
    /// `trusted-public-keys` entries of the signing keys, for the landing page.
    public_keys: RwLock<Vec<String>>,
    served_times: Option<Recorder>,
    allow_linked_dirs: bool,
}

impl Store {
    /// Opens `options.root`, reads its `nix-cache-info`, indexes every narinfo and, unless the
    /// interval is zero, starts the background rescan.
    pub fn open(options: Options) -> io::Result<Store> {
        let meta = std::fs::metadata(&options.root).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cache directory {}: {e}", options.root.display()),
            )
        })?;
        if !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", options.root.display()),
            ));
        }
        let canonical_root = std::fs::canonicalize(&options.root)?;
        crate::os::process_stats::note_start();
        if options.writable {
            upload::check_writable(&options.root)?;
        }
        let info = cache_info::load(&options.root, options.priority)?;
        let index = Arc::new(Index::new(
            &options.root,
            &info.store_dir,
            options.sign_keys.clone(),
        ));
        let weak_index = Arc::downgrade(&index);
        let shared = Arc::new_cyclic(|weak: &Weak<Shared>| {
            // The index's threads reload nix-cache-info through this; it never keeps the cache
            // alive.
            let weak = weak.clone();
            let hook: watch::Hook = Arc::new(move || match weak.upgrade() {
                Some(shared) => {
                    shared.reload_info();
                    true
                }
                None => false,
            });
            Shared {
                root: options.root.clone(),
                canonical_root,
                priority: options.priority,
                info: RwLock::new(Arc::new(info)),
                index,
                watch: OnceLock::new(),
                hook,
                public_keys: RwLock::new(
                    options
                        .sign_keys
                        .iter()
                        .map(SigningKey::public_key)
                        .collect(),
                ),
                allow_linked_dirs: options.allow_linked_dirs,
                served_times: options.served_times_file.clone().map(Recorder::open),
            }
        });
        // Serving starts now; the first scan runs in the background and lookups fall through
        // to the disk until it is done (see `watch.rs`).
        let index = weak_index.upgrade().expect("the cache holds its index");
        let mode = watch::resolve(options.watch, &options.root);
        let interval = options.rescan_interval.unwrap_or(match mode {
            WatchMode::Poll => watch::POLL_RESCAN,
            _ => watch::INOTIFY_RESCAN,
        });
        // Listing a million names takes a while: the clean-up runs once every path is known,
        // in the background (it only removes temporaries of processes that are gone).
        let root = options.root.clone();
        let prepare = Box::new(move || {
            for dir in ["", "nar", "log", "realisations", "debuginfo"] {
                tempfile::clean_stale(&root.join(dir));
            }
            // build-trace-v2/ holds one directory per derivation, where its uploads write.
            if let Ok(entries) = std::fs::read_dir(root.join("build-trace-v2")) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        tempfile::clean_stale(&entry.path());
                    }
                }
            }
        });
        let mode = watch::start(&index, mode, interval, shared.hook.clone(), prepare);
        let _ = shared.watch.set(mode);
        if let Some(recorder) = &shared.served_times {
            log::info!(
                "recording when narinfos are served in {}",
                recorder.file().display()
            );
            start_saving_served_times(Arc::downgrade(&shared));
        }
        Ok(Store { shared })
    }

    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// The in-memory narinfo index.
    pub fn index(&self) -> &Index {
        &self.shared.index
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

    /// Rebuilds the index now (the background threads do this on their own).
    pub fn rescan(&self) -> io::Result<ScanStats> {
        self.shared.reload_info();
        self.shared.index.rescan(None)
    }

    /// The watch mode in use: `Inotify` or `Poll` (`Auto` resolved).
    pub fn watch_mode(&self) -> WatchMode {
        self.shared.watch.get().copied().unwrap_or(WatchMode::Poll)
    }

    /// Saves when each narinfo was last served, if a file was configured.
    pub fn save_served_times(&self) {
        self.shared.save_served_times();
    }

    /// Signs narinfos with `keys` from now on; the index is rebuilt for it.
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

    /// The `trusted-public-keys` entries of the signing keys.
    pub fn public_keys(&self) -> Vec<String> {
        let public_keys = self.shared.public_keys.read().map(|k| k.clone());
        public_keys.unwrap_or_default()
    }

    /// The current `nix-cache-info` (replaced by rescans and uploads).
    pub fn info(&self) -> Arc<CacheInfo> {
        self.shared.info()
    }

    /// Makes a stored narinfo or nix-cache-info visible without waiting for a rescan.
    pub fn note_stored(&self, stored: &Stored) {
        match stored {
            Stored::NarInfo { hash } => {
                if let Err(e) = self.shared.index.refresh(hash) {
                    log::warn!("{hash}.narinfo stored but not indexed: {e}");
                }
            }
            Stored::CacheInfo => {
                if let Ok(info) = cache_info::load(&self.shared.root, self.shared.priority) {
                    *self.shared.info.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(info);
                }
            }
            Stored::File { .. } => {}
        }
    }

    /// True if the directory holding `path` resolves inside the cache root, so that a linked
    /// `nar/` or `log/` cannot lead elsewhere. (The file itself is opened without following links.)
    pub fn stays_inside(&self, path: &Path) -> bool {
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

    fn info(&self) -> Arc<CacheInfo> {
        self.info.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads `nix-cache-info` again (before every rescan, and when inotify reports a change).
    fn reload_info(&self) {
        match cache_info::load(&self.root, self.priority) {
            Ok(info) => *self.info.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(info),
            Err(e) => log::warn!(
                "{}/nix-cache-info: {e}; keeping the previous one",
                self.root.display()
            ),
        }
    }
}

/// Saves the served times every [`served_times::SAVE_EVERY`]; ends when the store is dropped.
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
