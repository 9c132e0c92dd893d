//! Writing files so that readers never see them half-written.
//!
//! A new file is written under a hidden temporary name in its final directory, flushed to disk,
//! and renamed into place; a crash or a client that goes away leaves at most a temporary, which
//! the next start removes. Temporary names carry the host and process that made them, so a
//! replica sharing the directory never removes another live replica's upload.
//!
//! What is committed is world-readable (files 0644, directories 0755), as `nix copy --to
//! file://` makes them, whatever the umask: a replica running under another uid (or a unit with
//! `UMask=0027`) must be able to serve what this one stored.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

const PREFIX: &str = ".nbc-upload.";
const SUFFIX: &str = ".tmp";

/// Temporaries of processes on other hosts are only removed once this old.
const FOREIGN_TEMP_AGE: Duration = Duration::from_secs(24 * 3600);

/// Mode of every stored file and created directory: readable by all, as Nix writes caches.
pub const FILE_MODE: u32 = 0o644;
pub const DIR_MODE: u32 = 0o755;

/// A file being written; removed on drop unless [`TempFile::commit`] renamed it into place.
pub struct TempFile {
    file: File,
    path: PathBuf,
    committed: bool,
}

impl TempFile {
    /// Creates a new temporary in `dir` (the directory of the final file).
    pub fn create_in(dir: &Path) -> io::Result<TempFile> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}.{}.{n}{SUFFIX}", hostname(), std::process::id());
        let path = dir.join(name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        // fchmod is not subject to the umask, unlike the mode given to open.
        let temp = TempFile {
            file,
            path,
            committed: false,
        };
        temp.file
            .set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
        Ok(temp)
    }

    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Flushes the data to disk, renames the file to `target` and flushes the directory, so the
    /// new name survives a power cut.
    pub fn commit(mut self, target: &Path) -> io::Result<()> {
        self.file.flush()?;
        self.file.sync_all()?;
        std::fs::rename(&self.path, target)?;
        self.committed = true;
        if let Some(dir) = target.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Like [`TempFile::commit`], but only if `target` does not exist yet: `link(2)` never
    /// replaces a file, so of two writers racing to create the same name (on this host or
    /// another sharing the directory) exactly one succeeds; the other gets `AlreadyExists`.
    pub fn commit_new(self, target: &Path) -> io::Result<()> {
        self.file.sync_all()?;
        std::fs::hard_link(&self.path, target)?;
        // Dropping `self` removes the temporary name; the linked one stays.
        drop(self);
        if let Some(dir) = target.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// Creates `dir` and any missing parents with mode 0755 whatever the umask (as `nix copy` does);
/// directories that already exist are left as they are.
pub fn create_dirs(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent)?;
    }
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)),
        // Another upload made it meanwhile.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes leftover temporaries in `dir`: those of this host whose process is gone, and those of
/// other hosts older than a day. Returns how many were removed.
pub fn clean_stale(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let host = hostname();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(middle) = name
            .strip_prefix(PREFIX)
            .and_then(|s| s.strip_suffix(SUFFIX))
        else {
            continue;
        };
        // middle = host.pid.counter; the host name itself may contain dots.
        let mut parts = middle.rsplitn(3, '.');
        let (_counter, pid, from) = (parts.next(), parts.next(), parts.next());
        let stale = if from == Some(host.as_str()) {
            pid.and_then(|p| p.parse::<i32>().ok())
                .is_some_and(|p| !process_alive(p))
        } else {
            entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| {
                SystemTime::now().duration_since(t).unwrap_or_default() > FOREIGN_TEMP_AGE
            })
        };
        if stale && std::fs::remove_file(entry.path()).is_ok() {
            log::info!("removed stale upload temporary {}", entry.path().display());
            removed += 1;
        }
    }
    removed
}

fn process_alive(pid: i32) -> bool {
    crate::os::process::process_alive(pid)
}

/// This host's name (see [`crate::os::process::hostname`]), made safe for a file name.
fn hostname() -> String {
    let name = crate::os::process::hostname()
        .map(|n| String::from_utf8_lossy(&n).replace(['/', '.'], "_"))
        .unwrap_or_default();
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    }
}

/// Which kind of temporary a file name is, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporary {
    /// `.nbc-upload.<host>.<pid>.<n>.tmp`, written by this server (see [`TempFile`]).
    Upload,
    /// `<name>.tmp` or `<name>.tmp.<pid>[.<n>]`, written by Nix's `file://` store.
    Nix,
}

pub fn temporary(name: &str) -> Option<Temporary> {
    if name.starts_with(".nbc-upload.") && name.ends_with(".tmp") {
        return Some(Temporary::Upload);
    }
    // Only Nix's own pattern: a log named `…-foo.tmpl.drv` is not a temporary.
    let nix_suffix = name.rsplit_once(".tmp.").is_some_and(|(_, tail)| {
        !tail.is_empty() && tail.bytes().all(|c| c.is_ascii_digit() || c == b'.')
    });
    (name.ends_with(".tmp") || nix_suffix).then_some(Temporary::Nix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nbc-atomic-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn commit_renames_and_drop_cleans_up() {
        let dir = scratch("commit");
        let mut t = TempFile::create_in(&dir).unwrap();
        t.file().write_all(b"hello").unwrap();
        t.commit(&dir.join("final")).unwrap();
        assert_eq!(std::fs::read(dir.join("final")).unwrap(), b"hello");

        let mut t = TempFile::create_in(&dir).unwrap();
        t.file().write_all(b"partial").unwrap();
        drop(t);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("final")]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn committed_files_and_new_dirs_are_world_readable_whatever_the_umask() {
        let dir = scratch("modes");
        let old = crate::os::process::set_umask(0o077);
        let sub = dir.join("a/b");
        create_dirs(&sub).unwrap();
        let mut t = TempFile::create_in(&sub).unwrap();
        t.file().write_all(b"x").unwrap();
        t.commit(&sub.join("f")).unwrap();
        crate::os::process::set_umask(old);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sub.join("f")), 0o644);
        assert_eq!(mode(&sub), 0o755);
        assert_eq!(mode(&dir.join("a")), 0o755);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn commit_new_never_replaces() {
        let dir = scratch("new");
        let target = dir.join("f");
        let mut t = TempFile::create_in(&dir).unwrap();
        t.file().write_all(b"first").unwrap();
        t.commit_new(&target).unwrap();
        let mut t = TempFile::create_in(&dir).unwrap();
        t.file().write_all(b"second").unwrap();
        let e = t.commit_new(&target).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&target).unwrap(), b"first");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary left"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let dir = scratch("stale");
        let host = hostname();
        // pid 0x7fffffff cannot exist; our own pid is alive; another host's fresh file is kept.
        let dead = dir.join(format!("{PREFIX}{host}.2147483647.0{SUFFIX}"));
        let alive = dir.join(format!("{PREFIX}{host}.{}.0{SUFFIX}", std::process::id()));
        let foreign = dir.join(format!("{PREFIX}other.host.12.0{SUFFIX}"));
        for p in [&dead, &alive, &foreign] {
            std::fs::write(p, b"x").unwrap();
        }
        assert_eq!(clean_stale(&dir), 1);
        assert!(!dead.exists() && alive.exists() && foreign.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn temporaries_are_told_apart_from_names_that_merely_contain_tmp() {
        assert_eq!(
            temporary(".nbc-upload.host.12.0.tmp"),
            Some(Temporary::Upload)
        );
        assert_eq!(temporary("abc.narinfo.tmp.123"), Some(Temporary::Nix));
        assert_eq!(temporary("abc.nar.xz.tmp.123.4"), Some(Temporary::Nix));
        assert_eq!(temporary("abc.tmp"), Some(Temporary::Nix));
        assert_eq!(temporary("x-config.tmpl.drv"), None);
        assert_eq!(temporary("x-a.tmp.b.drv"), None);
        assert_eq!(temporary("abc.narinfo"), None);
    }
}
