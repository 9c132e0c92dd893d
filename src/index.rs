//! The in-memory narinfo index: every `<hash>.narinfo` of the cache, ready to serve.
//!
//! The disk stays the truth. A hit is checked against the file's version with one `lstat` (at
//! most once per [`REVALIDATE_AFTER`]), so a narinfo rewritten or removed on disk is noticed
//! within a second; a miss tries the file once, so a path copied in a moment ago is served at
//! once. Rescans (see [`Index::rescan`]) only keep the map complete for listings, gc and
//! metrics; they build a new map off to the side, reusing every entry whose file did not
//! change, and swap it in.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::files::{self, Version};
use crate::narinfo::NarInfo;
use crate::nix32;
use crate::signing::{self, SigningKey};

/// Key of the map: the 20 bytes behind a 32-character store hash.
pub(crate) type Key = [u8; 20];

/// One narinfo file, as read from disk.
#[derive(Debug)]
pub struct Entry {
    /// The store hash the entry is filed under.
    key: Key,
    /// The file's bytes.
    raw: Arc<[u8]>,
    /// Version of the file the bytes were read from.
    pub version: Version,
    /// Size of the NAR file (`FileSize`), for totals on the landing page and in metrics.
    pub file_size: u64,
    /// What clients get: the bytes plus our signatures, made on first use and kept.
    served: OnceLock<Served>,
    /// When the file was last found unchanged on disk ([`clock_ms`]).
    checked_ms: AtomicU64,
    /// When it was last served, in Unix seconds (0: not since it was loaded); for gc's
    /// least-recently-used order, see [`crate::served_times`].
    served_unix: AtomicU64,
}

/// How long a narinfo found unchanged on disk is served without looking again. An `lstat` per
/// hit was 9% of the server's CPU under load; a rewritten or removed file is now noticed within
/// this time instead of at once (clients and proxies may keep a narinfo 60 s anyway). Uploads
/// through this server refresh their entry immediately.
pub const REVALIDATE_AFTER: Duration = Duration::from_secs(1);

/// Milliseconds since the first call: a cheap, monotonic clock for [`Entry::checked_ms`].
fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
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

type Map = HashSet<Slot>;

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
            map: RwLock::new(Map::new()),
            broken: Mutex::new(HashMap::new()),
            last_scan: Mutex::new(ScanStats::default()),
        }
    }

    pub fn len(&self) -> usize {
        self.read_map().len()
    }

    pub fn last_scan(&self) -> ScanStats {
        *self.last_scan.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sum of `FileSize` over all entries (bytes of NAR files the cache serves).
    pub fn total_file_size(&self) -> u64 {
        self.read_map().iter().map(|s| s.0.file_size).sum()
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

    /// The narinfo for a 32-character store hash, checked against the disk unless it was
    /// checked less than [`REVALIDATE_AFTER`] ago.
    pub fn get(&self, hash: &str) -> io::Result<Lookup> {
        self.lookup(hash, false)
    }

    /// Like [`Index::get`], but always reads the disk: after this server stored the file.
    pub fn refresh(&self, hash: &str) -> io::Result<Lookup> {
        self.lookup(hash, true)
    }

    fn lookup(&self, hash: &str, force: bool) -> io::Result<Lookup> {
        let Some(key) = nix32::store_hash_key(hash) else {
            return Ok(Lookup::Missing);
        };
        let cached = self.read_map().get(&key).map(|s| s.0.clone());
        let now = clock_ms();
        if let Some(entry) = &cached
            && !force
            && now.saturating_sub(entry.checked_ms.load(Ordering::Relaxed))
                < REVALIDATE_AFTER.as_millis() as u64
        {
            return Ok(Lookup::Found(entry.clone()));
        }
        let path = self.path_of(hash);
        if let Some(entry) = cached {
            match files::version(&path)? {
                Some(v) if v == entry.version => {
                    entry.checked_ms.store(now, Ordering::Relaxed);
                    return Ok(Lookup::Found(entry));
                }
                Some(_) => {} // Rewritten on disk: load it again below.
                None => {
                    self.write_map().remove(&key);
                    return Ok(Lookup::Missing);
                }
            }
        }
        match self.load(key, hash, &path) {
            Ok(entry) => {
                self.write_map().replace(Slot(entry.clone()));
                Ok(Lookup::Found(entry))
            }
            Err(LoadError::Absent) => {
                self.write_map().remove(&key);
                Ok(Lookup::Missing)
            }
            Err(LoadError::Malformed(why, _)) => {
                self.write_map().remove(&key);
                log::warn!("{}: skipped, malformed narinfo: {why}", path.display());
                Ok(Lookup::Missing)
            }
            Err(LoadError::Io(e)) => Err(e),
        }
    }

    /// The bytes to send for `entry`: signed with our keys the first time, then kept. Notes the
    /// time, for [`Index::served_times`].
    pub fn served(&self, entry: &Entry) -> Served {
        let now = unix_now();
        // A load first: the cache line stays shared while the second has not changed.
        if entry.served_unix.load(Ordering::Relaxed) != now {
            entry.served_unix.store(now, Ordering::Relaxed);
        }
        entry.served.get_or_init(|| self.sign(&entry.raw)).clone()
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

    /// Signs with `keys` from now on. Every entry's signed bytes were made with the old keys,
    /// so the map is emptied and rebuilt from disk (lookups meanwhile read their file).
    pub fn set_sign_keys(&self, keys: Vec<SigningKey>) -> io::Result<ScanStats> {
        *self.sign_keys.write().unwrap_or_else(|e| e.into_inner()) = keys.into();
        self.write_map().clear();
        self.rescan()
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

    /// Reads and checks one narinfo file.
    fn load(&self, key: Key, hash: &str, path: &Path) -> Result<Arc<Entry>, LoadError> {
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
        Ok(Arc::new(Entry {
            key,
            raw,
            version,
            file_size,
            served,
            checked_ms: AtomicU64::new(clock_ms()),
            served_unix: AtomicU64::new(0),
        }))
    }

    /// Builds a fresh map from the directory and swaps it in. Unchanged files are not read
    /// again; requests keep being answered from the old map meanwhile.
    // A `Slot` hashes only its entry's key, which never changes; the cells inside an entry
    // (signature cache, last check) do not take part in hashing or equality.
    #[allow(clippy::mutable_key_type)]
    pub fn rescan(&self) -> io::Result<ScanStats> {
        let start = Instant::now();
        let names = self.list_narinfo_hashes()?;
        let results: Vec<(Option<Arc<Entry>>, bool)> = names
            .par_iter()
            .filter_map(|hash| self.scan_one(hash))
            .collect();

        let mut map = Map::with_capacity(results.len());
        let mut stats = ScanStats::default();
        for (entry, reused) in results {
            match entry {
                Some(e) => {
                    map.replace(Slot(e));
                    stats.reused += reused as usize;
                }
                None => stats.skipped += 1,
            }
        }
        stats.entries = map.len();
        let old = std::mem::replace(&mut *self.write_map(), map);
        drop(old); // Freed outside the lock.
        stats.duration = start.elapsed();
        stats.finished_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        *self.last_scan.lock().unwrap_or_else(|e| e.into_inner()) = stats;
        Ok(stats)
    }

    /// One file of a scan: `(entry or None if skipped, reused?)`; `None` if it vanished.
    fn scan_one(&self, hash: &str) -> Option<(Option<Arc<Entry>>, bool)> {
        let key = nix32::store_hash_key(hash)?;
        let path = self.path_of(hash);
        let old = self.read_map().get(&key).map(|s| s.0.clone());
        // Only an entry we already hold needs the extra `lstat`: a new file is simply read (its
        // version comes from the open file), which keeps the first scan to one path lookup.
        if let Some(old) = old {
            match files::version(&path) {
                Ok(Some(v)) if v == old.version => {
                    old.checked_ms.store(clock_ms(), Ordering::Relaxed);
                    return Some((Some(old), true));
                }
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(e) => {
                    log::warn!("{}: skipped: {e}", path.display());
                    return Some((None, false));
                }
            }
        }
        match self.load(key, hash, &path) {
            Ok(entry) => Some((Some(entry), false)),
            Err(LoadError::Absent) => None,
            Err(LoadError::Malformed(why, version)) => {
                let mut broken = self.broken.lock().unwrap_or_else(|e| e.into_inner());
                if broken.insert(key, version) != Some(version) {
                    log::warn!("{}: skipped, malformed narinfo: {why}", path.display());
                }
                Some((None, false))
            }
            Err(LoadError::Io(e)) => {
                log::warn!("{}: skipped: {e}", path.display());
                Some((None, false))
            }
        }
    }

    /// Hash parts of all `<hash>.narinfo` names in the root (Nix's temporaries are not matched).
    fn list_narinfo_hashes(&self) -> io::Result<Vec<String>> {
        let mut hashes = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(hash) = name.strip_suffix(".narinfo")
                && nix32::is_store_hash(hash)
            {
                hashes.push(hash.to_string());
            }
        }
        Ok(hashes)
    }
}

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
    // SAFETY: malloc_trim only releases memory that malloc itself holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}
