//! The in-memory narinfo index: every `<hash>.narinfo` of the cache, ready to serve.
//!
//! The disk stays the truth; how the index keeps up with it depends on the watch mode (see
//! `watch.rs`). While an inotify watch reports every change ([`Index::is_watched`]), a lookup
//! is a look in memory and nothing else: a miss costs no system call and a hit needs no check.
//! Otherwise (poll mode, before the first scan has finished, after a queue overflow until the
//! rescan it causes) lookups fall through to the disk: a hit is checked with one `lstat` at
//! most once per [`REVALIDATE_AFTER`], a miss looks for the file, so nothing is ever a wrong
//! 404. Rescans ([`Index::rescan`]) build a new map off to the side, reusing every entry whose
//! file did not change, and swap it in.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rayon::prelude::*;

use crate::nix::narinfo::NarInfo;
use crate::nix::nix32;
use crate::nix::signing::{self, SigningKey};
use crate::store::files::{self, Version};

/// Key of the map: the 20 bytes behind a 32-character store hash.
pub(crate) type Key = [u8; 20];

/// One `<hash>.narinfo` known to be in the directory. Its contents are read on first use, or
/// by the background read that follows a scan: a scan itself only lists names, so that every
/// path is known (and every miss can be answered from memory) within a second or so even at a
/// million narinfos. An entry is never changed once read: a change on disk replaces it.
///
/// `repr(C)` keeps the key and the served time first, on the cache line that also holds the
/// `Arc`'s counts: a lookup compares the key and clones the `Arc`, and with the key after the
/// contents (where the compiler put it) every hit missed the cache twice in `Index::get`
/// (`perf annotate`: 85% of its samples on those two loads at c=1000, 100,000 narinfos).
#[derive(Debug)]
#[repr(C)]
pub struct Entry {
    /// The store hash the entry is filed under.
    key: Key,
    /// When it was last served, in Unix seconds (0: not since it was loaded); for gc's
    /// least-recently-used order, see [`crate::store::served_times`].
    served_unix: AtomicU64,
    /// The file as read; `None` if it could not be served when it was read (gone,
    /// malformed, unreadable: the log says which).
    content: OnceLock<Option<Content>>,
}

/// A narinfo file's bytes and what the server needs to know about them.
#[derive(Debug)]
#[repr(C)]
struct Content {
    /// What clients get: the bytes plus our signatures, made on first use and kept. First:
    /// it is what a hit reads.
    served: OnceLock<Served>,
    raw: Arc<[u8]>,
    /// Version of the file the bytes were read from.
    version: Version,
    /// Size of the NAR file (`FileSize`), for totals on the landing page and in metrics.
    file_size: u64,
    /// When the file was last found unchanged on disk ([`Clock`]).
    checked_ms: AtomicU64,
}

impl Entry {
    fn unread(key: Key) -> Entry {
        Entry {
            key,
            content: OnceLock::new(),
            served_unix: AtomicU64::new(0),
        }
    }

    fn read(key: Key, content: Content) -> Entry {
        Entry {
            key,
            content: OnceLock::from(Some(content)),
            served_unix: AtomicU64::new(0),
        }
    }

    /// The contents, if they have been read and can be served.
    fn loaded(&self) -> Option<&Content> {
        self.content.get().and_then(Option::as_ref)
    }

    /// When the file was last modified (for `Last-Modified`).
    pub fn mtime(&self) -> SystemTime {
        self.loaded()
            .map_or(SystemTime::UNIX_EPOCH, |c| c.version.mtime)
    }
}

/// When lookups fall through to the disk (poll mode): how long a narinfo found unchanged is
/// served without looking again. An `lstat` per hit was 9% of the server's CPU under load; a
/// rewritten or removed file is noticed within this time instead of at once (clients and
/// proxies may keep a narinfo 60 s anyway). Uploads through this server refresh their entry
/// immediately.
pub const REVALIDATE_AFTER: Duration = Duration::from_secs(1);

/// A cheap, monotonic clock in milliseconds for `Content::checked_ms`. Tests move it forward
/// by hand ([`Clock::advance`]); otherwise it is the time since the process's first call.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    #[cfg(test)]
    skew_ms: AtomicU64,
}

impl Clock {
    fn now_ms(&self) -> u64 {
        static START: OnceLock<Instant> = OnceLock::new();
        let now = START.get_or_init(Instant::now).elapsed().as_millis() as u64;
        #[cfg(test)]
        let now = now + self.skew_ms.load(Ordering::Relaxed);
        now
    }

    /// Moves this clock forward by `by`.
    #[cfg(test)]
    pub(crate) fn advance(&self, by: Duration) {
        self.skew_ms
            .fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }
}

/// An element of the index: an entry, hashed and compared by its key. A set of these needs one
/// pointer per slot, where a map from key to entry needed 32 bytes (at a million narinfos the
/// table has 2^21 slots: 16 MiB instead of 64).
#[derive(Debug)]
struct Slot(Arc<Entry>);

impl std::borrow::Borrow<Key> for Slot {
    fn borrow(&self) -> &Key {
        &self.0.key
    }
}

impl std::hash::Hash for Slot {
    // Must hash exactly as the `Key` it borrows as.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.key.hash(state);
    }
}

impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for Slot {}

/// The keys are the 20 bytes of a hash already: their first 8 bytes are as good a hash as
/// SipHash would make of them, for a fraction of the cost (SipHash was 3% of a scan). Only
/// files in the directory are inserted, so a client cannot choose colliding keys.
#[derive(Default, Clone, Copy)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 20]` hashes as its length (a usize, through `write_usize`) then its bytes.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
    fn write_usize(&mut self, _len: usize) {}
}

type Map = HashSet<Slot, std::hash::BuildHasherDefault<KeyHasher>>;

/// The bytes sent for a narinfo and their entity tag.
#[derive(Debug, Clone)]
pub struct Served {
    pub body: Arc<[u8]>,
    /// Stable across restarts and replicas with the same keys.
    pub etag: u64,
}

impl Served {
    fn of(body: Arc<[u8]>) -> Served {
        Served {
            etag: fnv1a(&body),
            body,
        }
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    Found(Arc<Entry>),
    /// No such narinfo (or it is malformed, which the log says): the client moves on.
    Missing,
}

/// Figures from one scan, for the log and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanStats {
    pub entries: usize,
    pub skipped: usize,
    pub reused: usize,
    pub duration: Duration,
    /// When the scan finished, in seconds since the Unix epoch.
    pub finished_unix: u64,
}

/// The narinfo index of one cache directory.
pub struct Index {
    root: PathBuf,
    store_dir: String,
    /// Replaced on `SIGHUP` by [`Index::set_sign_keys`].
    sign_keys: RwLock<Arc<[SigningKey]>>,
    map: RwLock<Map>,
    /// Malformed files already warned about, so that each is reported once per version.
    broken: Mutex<HashMap<Key, Version>>,
    last_scan: Mutex<ScanStats>,
    /// True while a watch reports every change of the directory and the map holds all of it:
    /// a lookup then answers from memory alone, a miss included. False before the first scan
    /// has finished, after a queue overflow until the rescan it causes, while the directory is
    /// not watched, and always in poll mode: lookups then fall through to the disk.
    watched: AtomicBool,
    /// Bumped whenever the map stops being trustworthy; a rescan started before grants nothing.
    trust_epoch: Mutex<u64>,
    /// Held by every "read the file, then change the map" (fall-through lookups, watch events,
    /// uploads, the swap of a rescan), so that an older read never overwrites a newer one.
    /// While a rescan reads the directory it also collects the keys changed meanwhile: the
    /// rescan reads them again after its swap.
    writes: Mutex<Option<Vec<Key>>>,
    /// One rescan at a time.
    scanning: Mutex<()>,
    /// Entries the last scan found but nobody has read yet, in directory order (reading them
    /// in that order keeps the filesystem's lookups local): for [`Index::read_all`].
    to_read: Mutex<Vec<Arc<Entry>>>,
    /// Set once the first scan has ended (successfully or not), for readiness.
    first_scan: (Mutex<bool>, Condvar),
    /// Set once every file the first scan listed has been read.
    first_read: AtomicBool,
    pub counters: Counters,
    /// Decides when a narinfo served from memory is checked on disk again.
    pub(crate) clock: Clock,
}

/// What the watcher and the rescans did, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// narinfo changes reported by inotify and applied.
    pub watch_events: AtomicU64,
    /// Times the kernel's event queue overflowed (each one causes a full rescan).
    pub overflows: AtomicU64,
    /// Full scans of the directory finished (the first one included).
    pub rescans: AtomicU64,
    /// Times the directory could not be watched or stopped being watched (replaced, removed,
    /// watch limit reached).
    pub watch_losses: AtomicU64,
}

/// Why one file could not be indexed.
enum LoadError {
    Absent,
    Io(io::Error),
    /// Why, and the version of the file that said so.
    Malformed(String, Version),
}

impl Index {
    pub fn new(root: &Path, store_dir: &str, sign_keys: Vec<SigningKey>) -> Index {
        Index {
            root: root.to_path_buf(),
            store_dir: store_dir.to_string(),
            sign_keys: RwLock::new(sign_keys.into()),
            map: RwLock::new(Map::default()),
            broken: Mutex::new(HashMap::new()),
            last_scan: Mutex::new(ScanStats::default()),
            watched: AtomicBool::new(false),
            trust_epoch: Mutex::new(0),
            writes: Mutex::new(None),
            scanning: Mutex::new(()),
            to_read: Mutex::new(Vec::new()),
            first_scan: (Mutex::new(false), Condvar::new()),
            first_read: AtomicBool::new(false),
            counters: Counters::default(),
            clock: Clock::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn len(&self) -> usize {
        self.read_map().len()
    }

    pub fn last_scan(&self) -> ScanStats {
        *lock(&self.last_scan)
    }

    /// True once the first scan has ended: the map holds every narinfo (unless it failed,
    /// which the log says; lookups fall through to the disk then).
    pub fn first_scan_done(&self) -> bool {
        *lock(&self.first_scan.0)
    }

    /// True once every file the first scan listed has been read (memory is at its steady
    /// state; the log's `indexed` line).
    pub fn first_read_done(&self) -> bool {
        self.first_read.load(Ordering::Relaxed)
    }

    /// Marks every file of the first scan as read.
    pub fn first_read_ended(&self) {
        self.first_read.store(true, Ordering::Relaxed);
        // Under the first scan's lock, so that a waiter cannot miss it (see `wait_first_read`).
        let _scan = lock(&self.first_scan.0);
        self.first_scan.1.notify_all();
    }

    /// Blocks until every file of the first scan has been read.
    pub fn wait_first_read(&self) {
        let mut scan = lock(&self.first_scan.0);
        while !self.first_read_done() {
            scan = self
                .first_scan
                .1
                .wait(scan)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Blocks until the first scan has ended.
    pub fn wait_first_scan(&self) {
        let mut done = lock(&self.first_scan.0);
        while !*done {
            done = self
                .first_scan
                .1
                .wait(done)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// True while misses are answered from memory (see [`Index::watched`]'s field).
    pub fn is_watched(&self) -> bool {
        self.watched.load(Ordering::Acquire)
    }

    /// Sum of `FileSize` over all entries read so far (bytes of NAR files the cache serves).
    pub fn total_file_size(&self) -> u64 {
        self.read_map()
            .iter()
            .filter_map(|s| s.0.loaded())
            .map(|c| c.file_size)
            .sum()
    }

    fn read_map(&self) -> std::sync::RwLockReadGuard<'_, Map> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_map(&self) -> std::sync::RwLockWriteGuard<'_, Map> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }

    fn path_of(&self, hash: &str) -> PathBuf {
        self.root.join(format!("{hash}.narinfo"))
    }

    /// The narinfo for a 32-character store hash. While the directory is watched this is a
    /// look in memory and nothing else (plus one read of the file the first time, unless the
    /// background read got to it first); otherwise the disk decides (see `watched`).
    pub fn get(&self, hash: &str) -> io::Result<Lookup> {
        let Some(key) = nix32::store_hash_key(hash) else {
            return Ok(Lookup::Missing);
        };
        let cached = self.read_map().get(&key).map(|s| s.0.clone());
        if self.is_watched() {
            return Ok(match cached {
                Some(entry) if self.content(&entry)?.is_some() => Lookup::Found(entry),
                _ => Lookup::Missing,
            });
        }
        self.get_from_disk(key, hash, cached)
    }

    /// Reads the file again and updates the map: after this server stored it.
    pub fn refresh(&self, hash: &str) -> io::Result<Lookup> {
        let Some(key) = nix32::store_hash_key(hash) else {
            return Ok(Lookup::Missing);
        };
        self.reload(key, hash, true)
    }

    /// A change inotify reported for `<hash>.narinfo`. `warn` is false for a file just
    /// created, which its writer may not have filled yet (its close is reported too).
    pub fn apply_event(&self, hash: &str, warn: bool) {
        let Some(key) = nix32::store_hash_key(hash) else {
            return;
        };
        self.counters.watch_events.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.reload(key, hash, warn) {
            log::warn!("{}: {e}; not served", self.path_of(hash).display());
        }
    }

    /// The entry's contents, read now if nobody has yet.
    /// A file gone or malformed is remembered as `None` (a change on disk brings a new entry);
    /// an I/O error (no descriptor left, permissions) is not remembered: the next use tries
    /// again, so a passing shortage never hides a path for good.
    fn content<'a>(&self, entry: &'a Entry) -> io::Result<Option<&'a Content>> {
        if let Some(known) = entry.content.get() {
            return Ok(known.as_ref());
        }
        let hash = nix32::encode(&entry.key);
        let path = self.path_of(&hash);
        let read = match self.load(&hash, &path) {
            Ok(content) => Some(content),
            Err(LoadError::Absent) => None,
            Err(LoadError::Malformed(why, version)) => {
                self.warn_malformed(entry.key, version, &path, &why);
                None
            }
            Err(LoadError::Io(e)) => return Err(e),
        };
        // Two requests may read at once: the first to finish is kept, both are the same file.
        let _ = entry.content.set(read);
        Ok(entry.content.get().and_then(Option::as_ref))
    }

    /// A lookup while misses cannot be trusted: a hit is checked against the file's version
    /// with one `lstat` (at most once per [`REVALIDATE_AFTER`]); a miss looks for the file, so
    /// that a path copied in a moment ago is served at once. Only a change takes the lock.
    fn get_from_disk(
        &self,
        key: Key,
        hash: &str,
        cached: Option<Arc<Entry>>,
    ) -> io::Result<Lookup> {
        let now = self.clock.now_ms();
        let path = self.path_of(hash);
        let Some(entry) = cached else {
            return match files::version(&path)? {
                None => Ok(Lookup::Missing),
                Some(_) => self.reload(key, hash, true),
            };
        };
        let fresh = entry.content.get().is_none();
        let Some(content) = self.content(&entry)? else {
            // Unreadable when it was read: look again.
            return self.reload(key, hash, true);
        };
        if fresh
            || now.saturating_sub(content.checked_ms.load(Ordering::Relaxed))
                < REVALIDATE_AFTER.as_millis() as u64
        {
            return Ok(Lookup::Found(entry));
        }
        match files::version(&path)? {
            Some(v) if v == content.version => {
                content.checked_ms.store(now, Ordering::Relaxed);
                Ok(Lookup::Found(entry))
            }
            _ => self.reload(key, hash, true),
        }
    }

    /// Reads `<hash>.narinfo` and puts what it says into the map, under the write lock.
    fn reload(&self, key: Key, hash: &str, warn: bool) -> io::Result<Lookup> {
        let mut writes = lock(&self.writes);
        let path = self.path_of(hash);
        let result = match self.load(hash, &path) {
            Ok(content) => {
                let entry = Arc::new(Entry::read(key, content));
                self.write_map().replace(Slot(entry.clone()));
                Ok(Lookup::Found(entry))
            }
            Err(LoadError::Absent) => {
                self.write_map().remove(&key);
                Ok(Lookup::Missing)
            }
            Err(LoadError::Malformed(why, version)) => {
                self.write_map().remove(&key);
                if warn {
                    self.warn_malformed(key, version, &path, &why);
                }
                Ok(Lookup::Missing)
            }
            Err(LoadError::Io(e)) => {
                self.write_map().remove(&key);
                Err(e)
            }
        };
        if let Some(changed) = writes.as_mut() {
            changed.push(key);
        }
        result
    }

    fn warn_malformed(&self, key: Key, version: Version, path: &Path, why: &str) {
        if lock(&self.broken).insert(key, version) != Some(version) {
            log::warn!("{}: skipped, malformed narinfo: {why}", path.display());
        }
    }

    /// The bytes to send for `entry` (found by [`Index::get`]): signed with our keys the first
    /// time, then kept. Notes the time, for [`Index::served_times`].
    pub fn served(&self, entry: &Entry) -> Served {
        let now = unix_now();
        // To the minute (gc works in days): most hits then only read the entry, where a store
        // on every hit dirtied a cache line per request (4.6% of the server's samples in `perf`
        // at c=1000 over 100,000 narinfos).
        if now >= entry.served_unix.load(Ordering::Relaxed) + SERVED_RESOLUTION_SECS {
            entry.served_unix.store(now, Ordering::Relaxed);
        }
        match entry.loaded() {
            Some(c) => c.served.get_or_init(|| self.sign(&c.raw)).clone(),
            None => Served::of(Arc::from(&b""[..])), // Never: `get` only returns read entries.
        }
    }

    /// Every entry's key and when it was last served (0 if not since it was loaded).
    pub(crate) fn served_times(&self) -> Vec<(Key, u64)> {
        self.read_map()
            .iter()
            .map(|s| (s.0.key, s.0.served_unix.load(Ordering::Relaxed)))
            .collect()
    }

    fn keys(&self) -> Arc<[SigningKey]> {
        self.sign_keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Signs with `keys` from now on. Every entry's signed bytes were made with the old keys:
    /// each is replaced by one with the same file contents and no signed bytes yet (no file is
    /// read again, and no lookup meanwhile misses what the map holds).
    // See `rescan` for why the set's key type is fine.
    #[allow(clippy::mutable_key_type)]
    pub fn set_sign_keys(&self, keys: Vec<SigningKey>) -> io::Result<ScanStats> {
        let unsigned = keys.is_empty();
        *self.sign_keys.write().unwrap_or_else(|e| e.into_inner()) = keys.into();
        let _writes = lock(&self.writes);
        let mut map = self.write_map();
        let fresh: Map = map
            .drain()
            .map(|Slot(old)| match old.loaded() {
                Some(c) => {
                    let served = OnceLock::new();
                    if unsigned {
                        let _ = served.set(Served::of(c.raw.clone()));
                    }
                    let entry = Entry::read(
                        old.key,
                        Content {
                            raw: c.raw.clone(),
                            version: c.version,
                            file_size: c.file_size,
                            served,
                            checked_ms: AtomicU64::new(c.checked_ms.load(Ordering::Relaxed)),
                        },
                    );
                    let last = old.served_unix.load(Ordering::Relaxed);
                    entry.served_unix.store(last, Ordering::Relaxed);
                    Slot(Arc::new(entry))
                }
                // Not read yet (or unservable): nothing was signed.
                None => Slot(old),
            })
            .collect();
        *map = fresh;
        Ok(self.last_scan())
    }

    fn sign(&self, raw: &Arc<[u8]>) -> Served {
        let keys = self.keys();
        if keys.is_empty() {
            return Served::of(raw.clone());
        }
        // `load` only keeps files that are UTF-8 and parse.
        let text = std::str::from_utf8(raw).unwrap_or_default();
        let signed = NarInfo::parse(text, &self.store_dir)
            .map_err(|e| e.to_string())
            .and_then(|info| {
                signing::sign_narinfo(text, &info, &keys, &self.store_dir)
                    .map_err(|e| e.to_string())
            });
        match signed {
            Ok(signed) => Served::of(Arc::from(signed.into_bytes())),
            Err(why) => {
                log::warn!("serving a narinfo unsigned: {why}");
                Served::of(raw.clone())
            }
        }
    }

    /// Reads and checks one narinfo file: `openat`, `statx`, one `read`, `close`.
    fn load(&self, hash: &str, path: &Path) -> Result<Content, LoadError> {
        let (mut file, meta) = files::open_regular(path)
            .map_err(LoadError::Io)?
            .ok_or(LoadError::Absent)?;
        let version = Version::of(&meta);
        // Exactly the length fstat gave: one read(2), not a second one to find the end. A file
        // that grew meanwhile has a new version, which the next lookup notices.
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        (&mut file)
            .take(meta.len())
            .read_to_end(&mut bytes)
            .map_err(LoadError::Io)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| LoadError::Malformed("not UTF-8".into(), version))?;
        let info = NarInfo::parse(&text, &self.store_dir)
            .map_err(|e| LoadError::Malformed(e.0, version))?;
        if info.store_hash() != hash {
            return Err(LoadError::Malformed(
                format!("StorePath {} does not match the file name", info.store_path),
                version,
            ));
        }
        let file_size = info.file_size.unwrap_or(0);
        let raw: Arc<[u8]> = Arc::from(text.into_bytes());
        let served = OnceLock::new();
        if self.keys().is_empty() {
            // Nothing to add: serve the file's bytes, no second copy.
            let _ = served.set(Served::of(raw.clone()));
        }
        Ok(Content {
            raw,
            version,
            file_size,
            served,
            checked_ms: AtomicU64::new(self.clock.now_ms()),
        })
    }

    /// Makes lookups fall through to the disk until a rescan started after this call ends;
    /// returns the epoch to hand to that rescan ([`Index::trust_after`]).
    pub fn distrust(&self) -> u64 {
        let mut epoch = lock(&self.trust_epoch);
        *epoch += 1;
        self.watched.store(false, Ordering::Release);
        *epoch
    }

    /// Called when a rescan that began at `epoch` has swapped its map in: unless the directory
    /// stopped being trustworthy meanwhile, misses are answered from memory from now on.
    pub fn trust_after(&self, epoch: u64) {
        let current = lock(&self.trust_epoch);
        if *current == epoch {
            self.watched.store(true, Ordering::Release);
        }
    }

    /// Lists the directory into a fresh map and swaps it in: one `getdents` per few hundred
    /// names and no file read. An entry already held is kept if its file did not change (one
    /// `lstat` each, in parallel on `pool`, rayon's global pool when `None`); new and changed
    /// files are read later ([`Index::read_all`]) or on first use. Requests keep being
    /// answered meanwhile.
    // A `Slot` hashes only its entry's key, which never changes; the cells inside an entry
    // (contents read later, last check) do not take part in hashing or equality.
    #[allow(clippy::mutable_key_type)]
    pub fn rescan(&self, pool: Option<&rayon::ThreadPool>) -> io::Result<ScanStats> {
        let _one_at_a_time = lock(&self.scanning);
        let start = Instant::now();
        *lock(&self.writes) = Some(Vec::new());
        let built = self.scan_directory(pool);
        let mut writes = lock(&self.writes);
        let changed = writes.take().unwrap_or_default();
        let (mut map, mut stats) = built?;
        // Files changed while the directory was listed: what the scan saw may be older than
        // what an event or a lookup already put into the old map.
        for key in changed {
            let hash = nix32::encode(&key);
            match self.load(&hash, &self.path_of(&hash)) {
                Ok(content) => {
                    map.replace(Slot(Arc::new(Entry::read(key, content))));
                }
                Err(_) => {
                    map.remove(&key);
                }
            }
        }
        stats.entries = map.len();
        let old = std::mem::replace(&mut *self.write_map(), map);
        drop(writes);
        drop(old); // Freed outside the locks.
        stats.duration = start.elapsed();
        stats.finished_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        *lock(&self.last_scan) = stats;
        self.counters.rescans.fetch_add(1, Ordering::Relaxed);
        Ok(stats)
    }

    /// Records how many files the read after a scan dropped (for the skipped-narinfos gauge).
    pub fn note_skipped(&self, skipped: usize) {
        let mut last = lock(&self.last_scan);
        last.skipped = skipped;
        last.entries = last.entries.saturating_sub(skipped);
    }

    /// Marks the first scan as ended, for [`Index::wait_first_scan`].
    pub fn first_scan_ended(&self) {
        *lock(&self.first_scan.0) = true;
        self.first_scan.1.notify_all();
    }

    /// Lists the directory into a new map, [`SCAN_CHUNK`] names at a time.
    #[allow(clippy::mutable_key_type)]
    fn scan_directory(&self, pool: Option<&rayon::ThreadPool>) -> io::Result<(Map, ScanStats)> {
        let mut stats = ScanStats::default();
        let mut names = std::fs::read_dir(&self.root)?;
        let mut listed: Vec<Key> = Vec::with_capacity(SCAN_CHUNK);
        let mut known = Vec::with_capacity(SCAN_CHUNK);
        // Entries kept as they were, and entries to read. The map is built at the end, at its
        // final size: growing it while listing rehashed every entry again and again.
        let mut kept = Vec::new();
        let mut to_read = Vec::new();
        loop {
            listed.clear();
            for entry in names.by_ref() {
                let entry = entry?;
                let name = entry.file_name();
                if let Some(key) = narinfo_hash(name.as_encoded_bytes())
                    .and_then(|h| nix32::store_hash_key(std::str::from_utf8(h).ok()?))
                {
                    listed.push(key);
                    if listed.len() == SCAN_CHUNK {
                        break;
                    }
                }
            }
            if listed.is_empty() {
                break;
            }
            known.clear();
            {
                let old_map = self.read_map();
                for key in &listed {
                    match old_map.get(key) {
                        // Read before: kept if the file is unchanged (checked below).
                        Some(old) if old.0.content.get().is_some() => known.push(old.0.clone()),
                        // Never read: nothing to compare, it is read when needed.
                        Some(old) => {
                            to_read.push(old.0.clone());
                            stats.reused += 1;
                        }
                        None => to_read.push(Arc::new(Entry::unread(*key))),
                    }
                }
            }
            let check = || -> Vec<Arc<Entry>> {
                known
                    .par_iter()
                    .map(|old| {
                        self.unchanged(old)
                            .unwrap_or_else(|| Arc::new(Entry::unread(old.key)))
                    })
                    .collect()
            };
            let checked = match pool {
                Some(pool) => pool.install(check),
                None => check(),
            };
            for (entry, old) in checked.into_iter().zip(&known) {
                if Arc::ptr_eq(&entry, old) {
                    stats.reused += 1;
                    kept.push(entry);
                } else {
                    to_read.push(entry);
                }
            }
        }
        let mut map = Map::with_capacity_and_hasher(kept.len() + to_read.len(), Default::default());
        for entry in kept.into_iter().chain(to_read.iter().cloned()) {
            map.replace(Slot(entry));
        }
        *lock(&self.to_read) = to_read;
        Ok((map, stats))
    }

    /// `old` itself if its file has not changed since it was read (one `lstat`).
    fn unchanged(&self, old: &Arc<Entry>) -> Option<Arc<Entry>> {
        let content = old.loaded()?;
        let path = self.path_of(&nix32::encode(&old.key));
        match files::version(&path) {
            Ok(Some(v)) if v == content.version => {
                content
                    .checked_ms
                    .store(self.clock.now_ms(), Ordering::Relaxed);
                Some(old.clone())
            }
            _ => None,
        }
    }

    /// Reads every entry the last scan left unread, [`SCAN_CHUNK`] at a time on `pool`, and
    /// drops those that cannot be served (each malformed file is logged once). Returns how
    /// many were read and how many were dropped.
    pub fn read_all(&self, pool: Option<&rayon::ThreadPool>) -> (usize, usize) {
        let todo = std::mem::take(&mut *lock(&self.to_read));
        let read = || -> Vec<Arc<Entry>> {
            todo.par_chunks(SCAN_CHUNK)
                .flat_map_iter(|chunk| {
                    chunk
                        .iter()
                        .filter(|e| match self.content(e) {
                            Ok(content) => content.is_none(),
                            Err(err) => {
                                // Kept, unread: the first request for it tries again.
                                let hash = nix32::encode(&e.key);
                                log::warn!("{}: not read: {err}", self.path_of(&hash).display());
                                false
                            }
                        })
                        .cloned()
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let broken = match pool {
            Some(pool) => pool.install(read),
            None => read(),
        };
        let _writes = lock(&self.writes);
        let mut map = self.write_map();
        for entry in &broken {
            // Only if nothing newer took its place meanwhile.
            if map
                .get(&entry.key)
                .is_some_and(|s| Arc::ptr_eq(&s.0, entry))
            {
                map.remove(&entry.key);
            }
        }
        (todo.len(), broken.len())
    }
}

/// Names read from the directory per batch of a scan: enough to keep every core busy, small
/// enough that a scan's temporaries stay far below the index's own size.
const SCAN_CHUNK: usize = 4096;

/// The store hash of a `<hash>.narinfo` file name (Nix's temporaries do not match).
pub fn narinfo_hash(name: &[u8]) -> Option<&[u8; 32]> {
    let hash = name.strip_suffix(b".narinfo")?;
    let hash: &[u8; 32] = hash.try_into().ok()?;
    nix32::is_nix32(hash).then_some(hash)
}

/// Locks a mutex, going on after a panic elsewhere (the data stays consistent: every writer
/// finishes its change before anything can panic).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How finely the last-served time of a narinfo is kept.
const SERVED_RESOLUTION_SECS: u64 = 60;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// FNV-1a, 64 bits: a stable, cheap fingerprint for entity tags.
pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Returns the heap's free pages to the kernel. A scan's temporaries (a million file names and
/// results, about 50 MiB at a million narinfos) are freed when it ends, but glibc keeps freed
/// memory mapped: without this, RSS would stay that much above what the index holds. Called
/// after the first scan only: trimming holds malloc's locks, which requests also need, and a
/// periodic rescan reuses the same memory next time anyway.
pub(crate) fn give_back_free_memory() {
    crate::os::process::malloc_trim();
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "6ll6zs2rb9av0iylc29c154xzi53g46a";

    fn narinfo(deriver: &str) -> String {
        format!(
            "StorePath: /nix/store/{HASH}-fixture-mid\n\
             URL: nar/1ryggfzwgm2znw8mqrwf5q3q21dghcaw1n0l3y9k3cfbkk94gnrj.nar.xz\n\
             Compression: xz\n\
             FileHash: sha256:1ryggfzwgm2znw8mqrwf5q3q21dghcaw1n0l3y9k3cfbkk94gnrj\n\
             FileSize: 284\n\
             NarHash: sha256:1dkwm6fia7rwkgwkwlwqszbxwx5jh4vdwfz71fzk3s155k4yccv4\n\
             NarSize: 648\n\
             References: \n\
             Deriver: {deriver}\n"
        )
    }

    /// The body served for HASH now, or `None` for a miss.
    fn served(index: &Index) -> Option<String> {
        match index.get(HASH).unwrap() {
            Lookup::Found(entry) => {
                Some(String::from_utf8(index.served(&entry).body.to_vec()).unwrap())
            }
            Lookup::Missing => None,
        }
    }

    #[test]
    fn a_hit_is_checked_on_disk_again_only_after_revalidate_after() {
        let dir = std::env::temp_dir().join(format!("nbc-index-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{HASH}.narinfo"));
        let first = narinfo("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x.drv");
        std::fs::write(&file, &first).unwrap();
        // Not watched: lookups fall through to the disk, as in poll mode.
        let index = Index::new(&dir, "/nix/store", Vec::new());
        assert!(!index.is_watched());
        assert_eq!(served(&index).as_deref(), Some(first.as_str()));

        // Rewritten (another length, so another version): within REVALIDATE_AFTER the entry
        // read a moment ago is served without a look at the disk.
        let second = narinfo("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-longer-name.drv");
        std::fs::write(&file, &second).unwrap();
        assert_eq!(served(&index).as_deref(), Some(first.as_str()));
        index.clock.advance(REVALIDATE_AFTER);
        assert_eq!(served(&index).as_deref(), Some(second.as_str()));

        // Removed: still a hit until the next check, then a miss.
        std::fs::remove_file(&file).unwrap();
        assert_eq!(served(&index).as_deref(), Some(second.as_str()));
        index.clock.advance(REVALIDATE_AFTER);
        assert_eq!(served(&index), None);

        // A miss is never remembered: a file copied in is found at once.
        std::fs::write(&file, &first).unwrap();
        assert_eq!(served(&index).as_deref(), Some(first.as_str()));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
