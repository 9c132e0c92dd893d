//! Writing files so that readers never see them half-written.
//!
//! A new file is written under a hidden temporary name in its final directory, flushed to disk,
//! and renamed into place; a crash or a client that goes away leaves at most a temporary, which
//! the next start removes. Temporary names carry the host and process that made them, so a
//! replica sharing the directory never removes another live replica's upload.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

const PREFIX: &str = ".nbc-upload.";
const SUFFIX: &str = ".tmp";

/// Temporaries of processes on other hosts are only removed once this old.
const FOREIGN_TEMP_AGE: Duration = Duration::from_secs(24 * 3600);

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
        Ok(TempFile {
            file,
            path,
            committed: false,
        })
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
    if pid == std::process::id() as i32 {
        return true;
    }
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// This host's name, from gethostname(2) (works where /proc/sys is hidden, as under systemd's
/// `ProcSubset=pid`).
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; the kernel writes a NUL-terminated name.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let len = buf.iter().position(|&b| b == 0).unwrap_or(0);
    let name = String::from_utf8_lossy(&buf[..len]).replace(['/', '.'], "_");
    if ok && !name.is_empty() {
        name
    } else {
        "localhost".to_string()
    }
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
}
