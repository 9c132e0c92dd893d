//! Keeps the narinfo index in step with the cache directory.
//!
//! Two threads:
//! - **rescan**: the first scan at start (all cores), then a rescan every interval (one thread
//!   at nice 19) and whenever the watcher asks for one. Each rescan reloads `nix-cache-info` too.
//! - **watch** (inotify mode only): applies every create, rename, rewrite and delete of a
//!   `<hash>.narinfo` to the index as the kernel reports it. On a queue overflow, or when the
//!   directory itself is replaced, moved or removed, the index falls back to looking at the disk
//!   and a full rescan runs; once it has swapped its map in, misses are answered from memory
//!   again. The watch is placed before the scan starts, so nothing can slip between the two.
//!
//! The parent directory is watched too, so that `mv cache cache.old && mkdir cache` (or a
//! symbolic link switched to another directory) is noticed at once.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::os::inotify::{self, Event, Inotify};
use crate::store::index::{Index, narinfo_hash};

/// How the index learns about changes on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatchMode {
    /// inotify, unless the directory is on a filesystem whose changes it may not see.
    #[default]
    Auto,
    /// inotify: misses answered from memory.
    Inotify,
    /// No watch: every miss looks at the disk, every hit is re-checked once a second. For
    /// NFS and other shared filesystems written by other hosts.
    Poll,
}

impl std::str::FromStr for WatchMode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "auto" => Ok(WatchMode::Auto),
            "inotify" => Ok(WatchMode::Inotify),
            "poll" => Ok(WatchMode::Poll),
            _ => Err(()),
        }
    }
}

/// Default rescan interval when nothing is watched: rescans only keep totals and listings
/// complete, lookups look at the disk themselves.
pub const POLL_RESCAN: Duration = Duration::from_secs(60);
/// Default rescan interval under inotify: only a safety net.
pub const INOTIFY_RESCAN: Duration = Duration::from_secs(3600);

/// Events on the cache directory that the index cares about.
const ROOT_MASK: u32 = inotify::IN_CREATE
    | inotify::IN_CLOSE_WRITE
    | inotify::IN_MOVED_TO
    | inotify::IN_MOVED_FROM
    | inotify::IN_DELETE
    | inotify::IN_ATTRIB
    | inotify::IN_DELETE_SELF
    | inotify::IN_MOVE_SELF
    | inotify::IN_ONLYDIR;
/// Events on the parent: something new takes the cache directory's name.
const PARENT_MASK: u32 = inotify::IN_CREATE | inotify::IN_MOVED_TO | inotify::IN_ONLYDIR;
/// The directory itself is gone from under its watch.
const ROOT_GONE: u32 =
    inotify::IN_DELETE_SELF | inotify::IN_MOVE_SELF | inotify::IN_IGNORED | inotify::IN_UNMOUNT;

/// A full scan to run: `epoch` is set when it should end the fall-through to the disk.
#[derive(Debug, Clone, Copy)]
pub struct RescanRequest {
    pub epoch: Option<u64>,
}

/// Called before every scan and when `nix-cache-info` changes; false once the cache is gone.
pub type Hook = Arc<dyn Fn() -> bool + Send + Sync>;

/// The mode actually in use, after `Auto` was resolved.
pub fn resolve(mode: WatchMode, root: &Path) -> WatchMode {
    let shared = inotify::filesystem_type(root)
        .ok()
        .and_then(inotify::shared_filesystem_name);
    match (mode, shared) {
        (WatchMode::Auto, Some(fs)) => {
            log::info!(
                "{} is on {fs}, where inotify misses changes made by other hosts: every \
                 narinfo miss looks at the disk (--watch poll); pass --watch inotify if only \
                 this host writes it",
                root.display()
            );
            WatchMode::Poll
        }
        (WatchMode::Auto, None) => WatchMode::Inotify,
        (WatchMode::Inotify, Some(fs)) => {
            log::warn!(
                "{} is on {fs}: changes made by other hosts are not reported to inotify and \
                 stay invisible until the next rescan (--watch poll avoids that)",
                root.display()
            );
            WatchMode::Inotify
        }
        (mode, _) => mode,
    }
}

/// Starts the rescan thread (which begins with the first scan) and, in inotify mode, the
/// watch. `mode` comes from [`resolve`]; returns the mode in use (poll if inotify failed).
/// `interval` zero: no periodic rescans. `prepare` runs on the rescan thread once every path is
/// known, before the files are read (the cache's clean-up of stale upload temporaries, which
/// lists the same directory and would otherwise delay readiness).
pub fn start(
    index: &Arc<Index>,
    mode: WatchMode,
    interval: Duration,
    hook: Hook,
    prepare: Box<dyn FnOnce() + Send>,
) -> WatchMode {
    let (tx, rx) = mpsc::channel();
    let mut mode = mode;
    let mut first = RescanRequest { epoch: None };
    if mode == WatchMode::Inotify {
        match Watcher::new(index, tx.clone(), hook.clone()) {
            Ok(mut watcher) => {
                // Watch first, scan second: a change during the scan is either seen by the
                // scan or reported afterwards.
                first.epoch = watcher.establish(index, false);
                if let Err(e) = spawn("watch", move || watcher.run()) {
                    log::error!("could not start the watch thread: {e}; polling instead");
                    mode = WatchMode::Poll;
                    first.epoch = None;
                }
            }
            Err(e) => {
                index.counters.watch_losses.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "cannot use inotify ({e}; raise fs.inotify.max_user_instances if it says \
                     too many open files): every narinfo miss looks at the disk instead"
                );
                mode = WatchMode::Poll;
            }
        }
    }
    let weak = Arc::downgrade(index);
    let spawned = spawn("rescan", move || {
        rescan_loop(weak, rx, tx, first, interval, hook, prepare);
    });
    if let Err(e) = spawned {
        log::error!("could not start the rescan thread: {e}; narinfo lookups use the disk");
        index.first_scan_ended();
    }
    mode
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(drop)
}

/// The rescan thread. Holds `_keep` (a sender) so that `rx` never reports "disconnected"
/// while the index lives; it ends when the index is dropped or the hook says the cache is gone.
fn rescan_loop(
    index: Weak<Index>,
    rx: Receiver<RescanRequest>,
    _keep: Sender<RescanRequest>,
    first: RescanRequest,
    interval: Duration,
    hook: Hook,
    prepare: Box<dyn FnOnce() + Send>,
) {
    let mut prepare = Some(prepare);
    // Background work must never make a request wait: it runs at the lowest priority, the
    // periodic rescan's checks on one thread, the reading of new files on every core.
    let low = background_pool(1, |_| "rescan-worker".into());
    let readers = background_pool(
        std::thread::available_parallelism().map_or(2, |n| n.get()),
        |i| format!("index-reader-{i}"),
    );
    let pools = Pools {
        checks: low.as_ref(),
        reads: readers.as_ref(),
    };
    let mut next = Some((first, true));
    // Wake up now and then even without rescans, to notice that the cache was dropped.
    let tick = if interval.is_zero() {
        Duration::from_secs(5)
    } else {
        interval.min(Duration::from_secs(5))
    };
    let mut due = Instant::now() + interval;
    loop {
        let (mut request, urgent) = match next.take() {
            Some(r) => r,
            None => match rx.recv_timeout(tick) {
                Ok(r) => (r, true),
                Err(RecvTimeoutError::Timeout) if !interval.is_zero() && Instant::now() >= due => {
                    (RescanRequest { epoch: None }, false)
                }
                Err(RecvTimeoutError::Timeout) => {
                    if index.strong_count() == 0 {
                        return;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            },
        };
        // Several requests queued up: one scan answers them all (the newest epoch counts).
        while let Ok(r) = rx.try_recv() {
            request.epoch = r.epoch.max(request.epoch);
        }
        let Some(index) = index.upgrade() else { return };
        if !hook() {
            return;
        }
        due = Instant::now() + interval;
        run_rescan(&index, request, urgent, &pools, prepare.take());
    }
}

/// Thread pools for background work (`None`: rayon's global pool).
#[derive(Default)]
pub struct Pools<'a> {
    /// The unchanged-file checks of periodic rescans.
    pub checks: Option<&'a rayon::ThreadPool>,
    /// Reading files not read yet.
    pub reads: Option<&'a rayon::ThreadPool>,
}

fn background_pool(
    threads: usize,
    name: impl FnMut(usize) -> String + 'static,
) -> Option<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(name)
        .start_handler(|_| lower_thread_priority())
        .build()
        .map_err(|e| log::warn!("no background thread pool ({e}); using every core"))
        .ok()
}

/// One rescan with its log lines: list the directory (at once when `urgent`, else on the
/// low-priority pool), end the fall-through to the disk if `request` says so, then read the
/// files not read yet in the background.
pub fn run_rescan(
    index: &Index,
    request: RescanRequest,
    urgent: bool,
    pools: &Pools,
    prepare: Option<Box<dyn FnOnce() + Send>>,
) {
    let first = !index.first_scan_done();
    let start = Instant::now();
    let scanned = index.rescan(if urgent { None } else { pools.checks });
    let s = match scanned {
        Ok(s) => s,
        Err(e) => {
            log::error!(
                "rescan of {} failed: {e}; narinfo lookups look at the disk meanwhile",
                index.root().display()
            );
            if first {
                index.first_scan_ended();
            }
            if let Some(prepare) = prepare {
                prepare();
            }
            return;
        }
    };
    if let Some(epoch) = request.epoch {
        index.trust_after(epoch);
    }
    if first {
        log::info!(
            "listed {} narinfo files in {} in {:.3}s: every path is known, the files are read \
             in the background",
            s.entries,
            index.root().display(),
            s.duration.as_secs_f64()
        );
        index.first_scan_ended();
    }
    if let Some(prepare) = prepare {
        prepare();
    }
    let (read, skipped) = index.read_all(pools.reads);
    index.note_skipped(skipped);
    let entries = s.entries - skipped;
    if first {
        crate::store::index::give_back_free_memory();
        index.first_read_ended();
        log::info!(
            "indexed {entries} narinfo files in {} ({skipped} skipped) in {:.3}s",
            index.root().display(),
            start.elapsed().as_secs_f64()
        );
        return;
    }
    let line = format!(
        "rescan: {entries} entries ({} unchanged, {read} read, {skipped} skipped) in {:.3}s",
        s.reused,
        start.elapsed().as_secs_f64()
    );
    if request.epoch.is_some() {
        log::info!("{line}; misses are answered from memory again");
    } else {
        log::debug!("{line}");
    }
}

/// The inotify side: one instance, watches on the cache directory and its parent.
pub struct Watcher {
    index: Weak<Index>,
    inotify: Inotify,
    rescans: Sender<RescanRequest>,
    /// Reloads `nix-cache-info`.
    hook: Hook,
    root: PathBuf,
    /// The cache directory's name in its parent.
    root_name: OsString,
    root_wd: Option<i32>,
    parent_wd: Option<i32>,
    /// When to try watching the directory again after losing it.
    retry_at: Option<Instant>,
    buf: Vec<u8>,
}

impl Watcher {
    pub fn new(
        index: &Arc<Index>,
        rescans: Sender<RescanRequest>,
        hook: Hook,
    ) -> std::io::Result<Watcher> {
        let root = index.root().to_path_buf();
        Ok(Watcher {
            index: Arc::downgrade(index),
            inotify: Inotify::new()?,
            rescans,
            hook,
            root_name: root.file_name().map(OsString::from).unwrap_or_default(),
            root,
            root_wd: None,
            parent_wd: None,
            retry_at: None,
            buf: vec![0; inotify::EVENT_BUFFER],
        })
    }

    /// Watches the directory (and its parent); on success returns the epoch of the rescan
    /// that must follow, and asks for that rescan if `request` is set.
    pub fn establish(&mut self, index: &Index, request: bool) -> Option<u64> {
        if self.parent_wd.is_none()
            && let Some(parent) = self.root.parent()
        {
            // A relative root's parent is "" (the working directory).
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            self.parent_wd = self.inotify.add_watch(parent, PARENT_MASK).ok();
        }
        match self.inotify.add_watch(&self.root, ROOT_MASK) {
            Ok(wd) => {
                self.root_wd = Some(wd);
                self.retry_at = None;
                let epoch = index.distrust();
                if request {
                    log::info!("watching {} again; rescanning it", self.root.display());
                    let _ = self.rescans.send(RescanRequest { epoch: Some(epoch) });
                }
                Some(epoch)
            }
            Err(e) => {
                if self.retry_at.is_none() {
                    index.counters.watch_losses.fetch_add(1, Ordering::Relaxed);
                    let hint = if e.raw_os_error() == Some(libc::ENOSPC) {
                        " (the watch limit: raise fs.inotify.max_user_watches)"
                    } else {
                        ""
                    };
                    log::warn!(
                        "cannot watch {}: {e}{hint}; narinfo lookups look at the disk until it \
                         can be watched (retrying every second)",
                        self.root.display()
                    );
                }
                self.retry_at = Some(Instant::now() + Duration::from_secs(1));
                None
            }
        }
    }

    /// The watch thread: waits for events and applies them until the index is dropped.
    fn run(mut self) {
        let mut events = Vec::new();
        loop {
            let ready = match self.inotify.wait(Duration::from_secs(1)) {
                Ok(ready) => ready,
                Err(e) => {
                    log::error!("inotify wait failed: {e}; rescanning every second instead");
                    std::thread::sleep(Duration::from_secs(1));
                    false
                }
            };
            let Some(index) = self.index.upgrade() else {
                return;
            };
            if ready {
                events.clear();
                if let Err(e) = self.inotify.read_events(&mut self.buf, &mut events) {
                    log::warn!("reading inotify events failed: {e}; treating it as an overflow");
                    events.push(Event::overflow());
                }
                self.handle(&index, &events);
            }
            if self.retry_at.is_some_and(|t| Instant::now() >= t) {
                self.establish(&index, true);
            }
        }
    }

    /// Applies one batch of events to the index.
    pub fn handle(&mut self, index: &Index, events: &[Event]) {
        let mut overflowed = false;
        for ev in events {
            if ev.mask & inotify::IN_Q_OVERFLOW != 0 {
                overflowed = true;
            } else if Some(ev.wd) == self.root_wd {
                if ev.mask & ROOT_GONE != 0 {
                    self.lose_root(index, "was moved or removed");
                } else if let Some(hash) = narinfo_hash(&ev.name) {
                    let hash = std::str::from_utf8(hash).unwrap_or_default();
                    index.apply_event(hash, ev.mask & inotify::IN_CREATE == 0);
                } else if ev.name == b"nix-cache-info" && ev.mask & inotify::IN_CREATE == 0 {
                    (self.hook)();
                }
            } else if Some(ev.wd) == self.parent_wd {
                if ev.name == self.root_name.as_bytes() {
                    self.lose_root(index, "was replaced");
                    self.establish(index, true);
                } else if ev.mask & inotify::IN_IGNORED != 0 {
                    self.parent_wd = None;
                }
            }
            // Anything else comes from a watch already given up (the old directory).
        }
        if overflowed {
            index.counters.overflows.fetch_add(1, Ordering::Relaxed);
            let epoch = index.distrust();
            log::warn!(
                "inotify event queue overflowed (raise fs.inotify.max_queued_events if this \
                 repeats): rescanning {}; narinfo lookups look at the disk until it is done",
                self.root.display()
            );
            let _ = self.rescans.send(RescanRequest { epoch: Some(epoch) });
        }
    }

    /// The watched directory is no longer the one at the cache path.
    fn lose_root(&mut self, index: &Index, why: &str) {
        let Some(wd) = self.root_wd.take() else {
            return;
        };
        self.inotify.remove_watch(wd);
        index.distrust();
        index.counters.watch_losses.fetch_add(1, Ordering::Relaxed);
        log::warn!(
            "cache directory {} {why}: narinfo lookups look at the disk until it is watched again",
            self.root.display()
        );
        self.retry_at = Some(Instant::now());
    }

    /// Reads and drops every queued event, as an overflowing kernel would: for tests.
    #[cfg(test)]
    fn drop_queued_events(&mut self) {
        let mut lost = Vec::new();
        let _ = self.inotify.read_events(&mut self.buf, &mut lost);
    }

    /// Reads and applies every queued event: for tests.
    #[cfg(test)]
    fn apply_queued_events(&mut self, index: &Index) {
        let mut events = Vec::new();
        self.inotify
            .read_events(&mut self.buf, &mut events)
            .unwrap();
        self.handle(index, &events);
    }
}

/// Gives the calling thread the lowest scheduling priority (nice 19): it gets the CPU only
/// when request threads leave some. Linux applies `setpriority` to a thread id as a thread's own.
fn lower_thread_priority() {
    if let Err(e) = crate::os::process::lower_thread_priority() {
        // Under systemd, a SystemCallFilter= without setpriority does this (the shipped unit
        // allows it): background index work then competes with requests at normal priority.
        log::warn!(
            "could not lower the rescan thread's priority to nice 19: {}; background index work \
             runs at normal priority",
            e
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::index::Lookup;

    const STORE: &str = "/nix/store";

    fn narinfo(hash: &str) -> String {
        format!(
            "StorePath: {STORE}/{hash}-x\nURL: nar/{n}.nar\nCompression: none\n\
             NarHash: sha256:{n}\nNarSize: 1\nReferences: \n",
            n = "1".repeat(52)
        )
    }

    fn write(dir: &Path, hash: &str) {
        let tmp = dir.join(format!(".tmp-{hash}"));
        std::fs::write(&tmp, narinfo(hash)).unwrap();
        std::fs::rename(tmp, dir.join(format!("{hash}.narinfo"))).unwrap();
    }

    fn found(index: &Index, hash: &str) -> bool {
        matches!(index.get(hash).unwrap(), Lookup::Found(_))
    }

    /// An overflow (injected: the events before it are dropped, as the kernel drops them)
    /// makes lookups fall through to the disk, and the rescan it asks for brings the map back
    /// in step and ends the fall-through.
    #[test]
    fn an_overflow_leads_to_a_rescan() {
        let dir = std::env::temp_dir().join(format!("nbc-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = ("a".repeat(32), "b".repeat(32));
        write(&dir, &a);

        let index = Arc::new(Index::new(&dir, STORE, Vec::new()));
        let (tx, rx) = mpsc::channel();
        let mut watcher = Watcher::new(&index, tx, Arc::new(|| true)).unwrap();
        let epoch = watcher.establish(&index, false).unwrap();
        run_rescan(
            &index,
            RescanRequest { epoch: Some(epoch) },
            true,
            &Pools::default(),
            None,
        );
        assert!(index.is_watched() && found(&index, &a));

        // A change reported normally is in the map at once.
        write(&dir, &b);
        watcher.apply_queued_events(&index);
        assert!(found(&index, &b));
        std::fs::remove_file(dir.join(format!("{b}.narinfo"))).unwrap();
        watcher.apply_queued_events(&index);
        assert!(!found(&index, &b));

        // A change whose event is lost: trusting the map would answer a wrong 404.
        write(&dir, &b);
        watcher.drop_queued_events();
        assert!(
            !found(&index, &b),
            "the map cannot know about the lost event"
        );
        watcher.handle(&index, &[Event::overflow()]);
        assert!(!index.is_watched());
        assert!(
            found(&index, &b),
            "falls through to the disk after the overflow"
        );
        assert_eq!(index.counters.overflows.load(Ordering::Relaxed), 1);

        let request = rx.try_recv().expect("the overflow asks for a rescan");
        let rescans = index.counters.rescans.load(Ordering::Relaxed);
        run_rescan(&index, request, true, &Pools::default(), None);
        assert_eq!(index.counters.rescans.load(Ordering::Relaxed), rescans + 1);
        assert!(
            index.is_watched(),
            "memory is trusted again after the rescan"
        );
        assert!(found(&index, &a) && found(&index, &b));
        assert_eq!(index.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Before the first scan has ended nothing is known from memory: a lookup looks at the
    /// disk, so a path not yet listed is found, never a wrong 404.
    #[test]
    fn lookups_before_the_first_scan_look_at_the_disk() {
        let dir = std::env::temp_dir().join(format!("nbc-watch-early-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = ("a".repeat(32), "b".repeat(32));
        write(&dir, &a);
        let index = Index::new(&dir, STORE, Vec::new());
        assert!(!index.first_scan_done() && !index.is_watched());
        assert!(found(&index, &a));
        assert!(!found(&index, &b));
        write(&dir, &b);
        assert!(
            found(&index, &b),
            "written after the first look: found on the next"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A rescan that began before the directory stopped being trustworthy ends nothing.
    #[test]
    fn a_stale_rescan_grants_no_trust() {
        let dir = std::env::temp_dir().join(format!("nbc-watch-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let index = Index::new(&dir, STORE, Vec::new());
        let old = index.distrust();
        let _new = index.distrust();
        run_rescan(
            &index,
            RescanRequest { epoch: Some(old) },
            true,
            &Pools::default(),
            None,
        );
        assert!(!index.is_watched());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn modes_parse() {
        assert_eq!("poll".parse(), Ok(WatchMode::Poll));
        assert_eq!("inotify".parse(), Ok(WatchMode::Inotify));
        assert_eq!("auto".parse(), Ok(WatchMode::Auto));
        assert!("sometimes".parse::<WatchMode>().is_err());
    }
}
