//! `gc`: removes old or least recently used paths from a cache without ever breaking a closure.
//!
//! [`plan`] decides, [`execute`] deletes; a dry run is a plan alone.
//!
//! **When a path was last used** is, when the server keeps a served-times file (see
//! [`crate::store::served_times`]; `gc --state-file`, by default the unit's `StateDirectory=`), the
//! latest of the time it last served the narinfo and the narinfo's and NAR's modification times
//! (when it was pushed). Without such a file gc falls back to file times, and says so:
//! the latest of its NAR's access and modification times and
//! its narinfo's modification time. The access time is the "used" part: every download reads the
//! NAR (`sendfile` updates it like `read`). It is only as good as the mount allows: with the
//! default `relatime` an access time moves at most once a day for a file read again and again,
//! so recency is coarse, to a day; with `noatime` only modification times remain, i.e. when the
//! path was uploaded. The narinfo's access time is left out on purpose: the server answers
//! narinfo requests from memory and reads the files only when it (re)builds its index, so their
//! access times record server starts, not clients. `verify` and `gc` read files with `O_NOATIME`
//! where the kernel permits (file owner or root) so as not to disturb these times.
//!
//! **Closure safety**: a narinfo is never kept when its NAR or the narinfo of one of its
//! references is removed, so removing a path removes everything that references it,
//! transitively. With `max_size` this can free more than needed; the plan says how much.
//! NARs that no kept narinfo points to are removed as well (strays from earlier mishaps too, once
//! an hour old: Nix uploads a NAR before its narinfo, so a younger one may be an upload in
//! progress), and so are the `<hash>.ls` listings of removed paths. Build logs, realisations,
//! debug info and temporaries are left alone: they are small, and logs belong to derivations,
//! not to store paths. A narinfo that does not parse is left alone with the NAR it names.
//!
//! **While the server runs**: narinfos go first (referrers before what they reference), so a
//! client is never pointed at a NAR about to go and every narinfo still served keeps its
//! closure at each step; then listings, then NARs. A client already downloading a NAR that is
//! deleted finishes its download: on Linux an open file stays readable until closed. The server
//! notices a deleted narinfo on the next request for it. A NAR or listing that changed since the
//! plan, or whose narinfo was pushed again meanwhile, is kept. What gc cannot see is a new
//! narinfo, pushed while it runs, that references a path it removes; run `verify` afterwards if
//! uploads may have happened at the same time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::fs::Metadata;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rayon::prelude::*;

mod delete;
mod select;

use delete::{remove, remove_unless_pushed};
use select::{Selection, stray_nars};

use crate::nix::layout::nar_rel;
use crate::ops::verify::Problem;
use crate::store::files::{self, Version, in_file, list_dir};
use crate::store::scan::{self, Broken, NarInfoFile};
use crate::store::served_times::ServedTimes;
use crate::store::tempfile::temporary;

/// A narinfo-less NAR younger than this may be an upload whose narinfo is still to come.
const STRAY_GRACE: Duration = Duration::from_secs(3600);

/// What to remove; at least one limit must be set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcPolicy {
    /// Remove paths not used for longer than this (`--older-than DAYS`).
    pub older_than: Option<Duration>,
    /// Then remove least recently used paths until narinfos, listings and NARs of the paths
    /// kept take at most this many bytes (`--max-size SIZE`).
    pub max_size: Option<u64>,
}

/// Why a path is removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Not used for longer than `older_than`.
    Old,
    /// Among the least recently used while the cache was over `max_size`.
    LeastRecentlyUsed,
    /// It references the path with this store hash, which is removed.
    Referrer { of: String },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Old => f.write_str("not used for longer than --older-than"),
            Reason::LeastRecentlyUsed => f.write_str("least recently used, cache over --max-size"),
            Reason::Referrer { of } => write!(f, "references {of}, which is removed"),
        }
    }
}

/// One file to delete, as it was when planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    pub path: PathBuf,
    pub bytes: u64,
    version: Version,
}

/// One store path to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPath {
    /// The 32-character store hash (the narinfo's file name stem).
    pub hash: String,
    pub store_path: String,
    pub last_used: SystemTime,
    pub reason: Reason,
    /// What removing it frees: its narinfo, listing and NAR (unless a kept path shares the NAR).
    pub bytes: u64,
    pub narinfo: PlannedFile,
    pub listing: Option<PlannedFile>,
    /// `None` when the NAR is already missing, or shared with a path that stays.
    pub nar: Option<PlannedFile>,
}

/// What [`execute`] would delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    root: PathBuf,
    /// Paths to remove, in deletion order: every path before the paths it references.
    pub paths: Vec<PlannedPath>,
    /// NARs no narinfo points to, at least an hour old.
    pub strays: Vec<PlannedFile>,
    /// Bytes all of it frees.
    pub bytes: u64,
    /// Narinfos, listings and NARs of valid paths, plus the strays: before and after.
    pub size_before: u64,
    pub size_after: u64,
    /// Narinfos that do not parse or name another path: left alone, with the NARs they name
    /// (run `verify`).
    pub skipped: Vec<PathBuf>,
    /// What "last used" was judged by.
    pub recency: Recency,
}

/// Where [`plan`] learned when paths were last used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recency {
    /// The server's record of when it served each narinfo (paths it holds: `known`).
    Served { known: usize },
    /// File access and modification times: no served-times record was given.
    FileTimes,
}

/// What [`execute`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    pub narinfos: usize,
    pub listings: usize,
    pub nars: usize,
    /// Bytes actually freed.
    pub bytes: u64,
    /// Files already gone when their turn came (not an error).
    pub vanished: usize,
    /// Files kept because they changed since the plan or their narinfo was pushed again.
    pub kept: usize,
}

/// Decides what to remove from the cache at `root`, judging use by file times; deletes nothing.
pub fn plan(root: &Path, policy: &GcPolicy, now: SystemTime) -> io::Result<Plan> {
    plan_with(root, policy, now, None)
}

/// Like [`plan`], with the server's record of when it served each narinfo, if there is one.
pub fn plan_with(
    root: &Path,
    policy: &GcPolicy,
    now: SystemTime,
    served: Option<&ServedTimes>,
) -> io::Result<Plan> {
    if policy.older_than.is_none() && policy.max_size.is_none() {
        let msg = "gc needs --older-than DAYS or --max-size SIZE (or both); \
                   without a limit it would remove nothing";
        return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    }
    let info = crate::store::cache_info::load(root, None)
        .map_err(|e| in_file(&root.join("nix-cache-info"), e))?;
    let scan = scan::scan_narinfos(root, &info.store_dir)?;
    // A narinfo gc cannot read may still be served: its NAR must not look like a stray.
    if let Some(p) = scan
        .broken
        .iter()
        .find(|b| matches!(b, Broken::Unreadable { .. }))
    {
        let p = Problem::from(p.clone());
        let msg = format!("{p}; gc must read every narinfo: run it as the cache's owner");
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, msg));
    }
    let candidates = gather(root, scan.entries, served)?;

    let mut selection = Selection::new(&candidates, &scan.salvaged_urls);
    let size_before = selection.size;
    if let Some(age) = policy.older_than {
        selection.remove_older_than(age, now);
    }
    if let Some(max) = policy.max_size {
        selection.shrink_to(max);
    }
    let paths = selection.planned_paths(&scan.salvaged_urls);

    let mut pointed: HashSet<&str> = candidates.iter().filter_map(|c| c.nar_rel()).collect();
    pointed.extend(scan.salvaged_urls.iter().map(String::as_str));
    let strays = stray_nars(root, &pointed, now)?;

    let stray_bytes: u64 = strays.iter().map(|s| s.bytes).sum();
    let bytes = paths.iter().map(|p| p.bytes).sum::<u64>() + stray_bytes;
    let size_before = size_before + stray_bytes;
    Ok(Plan {
        root: root.to_path_buf(),
        paths,
        strays,
        bytes,
        size_before,
        size_after: size_before.saturating_sub(bytes),
        skipped: scan.broken.iter().map(|p| p.file().to_path_buf()).collect(),
        recency: match served {
            Some(times) => Recency::Served { known: times.len() },
            None => Recency::FileTimes,
        },
    })
}

/// Deletes what `plan` lists: narinfos first, then listings, then NARs.
pub fn execute(root: &Path, plan: &Plan) -> io::Result<Outcome> {
    if plan.root != root {
        let msg = format!(
            "the gc plan was made for {}, not {}",
            plan.root.display(),
            root.display()
        );
        return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    }
    let mut outcome = Outcome::default();
    for path in &plan.paths {
        // Unconditionally: removing a narinfo never breaks another's closure in this order.
        let removed = remove(&path.narinfo, false)?;
        outcome.count(removed, |o| &mut o.narinfos);
    }
    for path in &plan.paths {
        remove_unless_pushed(path, path.listing.as_ref(), &mut outcome, |o| {
            &mut o.listings
        })?;
    }
    for path in &plan.paths {
        remove_unless_pushed(path, path.nar.as_ref(), &mut outcome, |o| &mut o.nars)?;
    }
    for stray in &plan.strays {
        let removed = remove(stray, true)?;
        outcome.count(removed, |o| &mut o.nars);
    }
    Ok(outcome)
}

// ---- Gathering ----

/// A valid path with the files that belong to it.
struct Candidate {
    entry: NarInfoFile,
    narinfo: PlannedFile,
    listing: Option<PlannedFile>,
    /// `nar/…`, when the URL is a NAR path the server serves.
    nar_rel: Option<String>,
    /// The NAR file, when it exists.
    nar: Option<PlannedFile>,
    last_used: SystemTime,
}

impl Candidate {
    /// The NAR's path relative to the root, if the file exists.
    fn nar_rel(&self) -> Option<&str> {
        self.nar.as_ref().and(self.nar_rel.as_deref())
    }

    /// Bytes of the files only this path has: narinfo and listing.
    fn own_bytes(&self) -> u64 {
        self.narinfo.bytes + self.listing.as_ref().map_or(0, |l| l.bytes)
    }
}

/// Looks up the files and times of every valid path, in parallel; sorted least recent first.
fn gather(
    root: &Path,
    entries: Vec<NarInfoFile>,
    served: Option<&ServedTimes>,
) -> io::Result<Vec<Candidate>> {
    let found: io::Result<Vec<Option<Candidate>>> = entries
        .into_par_iter()
        .map(|entry| gather_one(root, entry, served))
        .collect();
    let mut candidates: Vec<Candidate> = found?.into_iter().flatten().collect();
    candidates.sort_by(|a, b| (a.last_used, &a.entry.hash).cmp(&(b.last_used, &b.entry.hash)));
    Ok(candidates)
}

/// `None` if the narinfo vanished since the scan.
fn gather_one(
    root: &Path,
    entry: NarInfoFile,
    served: Option<&ServedTimes>,
) -> io::Result<Option<Candidate>> {
    let Some((narinfo, narinfo_meta)) = stat(&entry.file)? else {
        return Ok(None);
    };
    let listing = stat(&root.join(format!("{}.ls", entry.hash)))?.map(|(f, _)| f);
    // Only a URL the server serves as a NAR is ever deleted: nothing outside nar/.
    let nar_rel = nar_rel(&entry.url);
    let nar = match &nar_rel {
        Some(rel) => stat(&root.join(rel))?,
        None => None,
    };
    let mut last_used = modified(&narinfo_meta);
    if let Some((_, meta)) = &nar {
        last_used = last_used.max(modified(meta));
    }
    match served {
        // The server's record: access times, which a read-only mount never updates, are out.
        Some(times) => {
            let secs = times.get(&entry.hash).unwrap_or(0);
            last_used = last_used.max(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        }
        None => {
            if let Some((_, meta)) = &nar {
                last_used = last_used.max(accessed(meta));
            }
        }
    }
    Ok(Some(Candidate {
        entry,
        narinfo,
        listing,
        nar_rel,
        nar: nar.map(|(f, _)| f),
        last_used,
    }))
}

/// A regular file's size and version (links not followed); `None` if absent or not a file.
fn stat(path: &Path) -> io::Result<Option<(PlannedFile, Metadata)>> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => {
            let file = PlannedFile {
                path: path.to_path_buf(),
                bytes: meta.len(),
                version: Version::of(&meta),
            };
            Ok(Some((file, meta)))
        }
        Ok(_) => Ok(None),
        Err(e) if files::is_absent(&e) => Ok(None),
        Err(e) => Err(in_file(path, e)),
    }
}

fn modified(meta: &Metadata) -> SystemTime {
    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)
}

fn accessed(meta: &Metadata) -> SystemTime {
    meta.accessed().unwrap_or(SystemTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_without_limits_is_refused() {
        let e = plan(
            Path::new("/nonexistent"),
            &GcPolicy::default(),
            SystemTime::now(),
        );
        let e = e.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("--older-than"), "{e}");
    }
}
