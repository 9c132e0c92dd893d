//! When each narinfo was last served: the "recently used" that `gc` needs.
//!
//! File access times cannot say it: the server answers narinfo requests from memory, and under
//! the shipped unit the cache is mounted read-only, where Linux never updates access times. So
//! the server notes the time in the index entry it serves (one relaxed atomic store, at most once
//! a second per entry), and a background thread merges those times into a small state file every
//! [`SAVE_EVERY`] and at a clean stop. `gc` reads the file (several, for several replicas).
//!
//! The file is text, one `<32-character store hash> <Unix seconds>` line per narinfo ever served
//! and still in the cache, written to a temporary and renamed over the old one: a reader never
//! sees half of it, and a crash loses at most the last interval.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::nix::nix32;
use crate::store::index::{Index, Key};
use crate::store::tempfile::TempFile;

/// How often the server saves the times it recorded.
pub const SAVE_EVERY: Duration = Duration::from_secs(60);

/// The file name used in a state directory (`StateDirectory=` under systemd).
pub const FILE_NAME: &str = "served-times";

const HEADER: &str =
    "# nix-binary-cache: when each narinfo was last served (store hash, Unix seconds)\n";

/// Last-served times by store hash, as saved in the state file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServedTimes {
    times: HashMap<Key, u64>,
}

impl ServedTimes {
    /// Reads a state file; `Ok(None)` if there is none.
    pub fn load(path: &Path) -> io::Result<Option<ServedTimes>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
        Ok(Some(ServedTimes::parse(&text)))
    }

    /// Lines that do not parse are skipped: a damaged file costs recency, never a gc run.
    pub fn parse(text: &str) -> ServedTimes {
        let times = text
            .lines()
            .filter_map(|line| {
                let (hash, secs) = line.split_once(' ')?;
                Some((nix32::store_hash_key(hash)?, secs.trim().parse().ok()?))
            })
            .collect();
        ServedTimes { times }
    }

    /// When the narinfo with this store hash was last served, if it ever was.
    pub fn get(&self, hash: &str) -> Option<u64> {
        self.times.get(&nix32::store_hash_key(hash)?).copied()
    }

    pub fn len(&self) -> usize {
        self.times.len()
    }

    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    /// Keeps the later time of each path from `other` too (several replicas' files).
    pub fn merge(&mut self, other: ServedTimes) {
        for (key, secs) in other.times {
            let t = self.times.entry(key).or_default();
            *t = (*t).max(secs);
        }
    }

    fn render(&self) -> String {
        let mut lines: Vec<String> = self
            .times
            .iter()
            .map(|(key, secs)| format!("{} {secs}\n", nix32::encode(key)))
            .collect();
        lines.sort_unstable();
        let mut out = String::with_capacity(HEADER.len() + lines.len() * 44);
        out.push_str(HEADER);
        lines.iter().for_each(|l| out.push_str(l));
        out
    }

    /// Writes the file atomically (temporary beside it, fsync, rename).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut temp = TempFile::create_in(dir)?;
        temp.file().write_all(self.render().as_bytes())?;
        temp.commit(path)
    }
}

/// The server's side: the state file and everything recorded so far.
pub(crate) struct Recorder {
    file: PathBuf,
    times: Mutex<ServedTimes>,
}

impl Recorder {
    /// Starts from what `file` already holds (times of earlier runs). A file that cannot be
    /// read costs the earlier times, not the start: the log says so, and saving replaces it.
    pub fn open(file: PathBuf) -> Recorder {
        let times = ServedTimes::load(&file).unwrap_or_else(|e| {
            log::warn!("{e}; starting a new record of served times");
            None
        });
        Recorder {
            file,
            times: Mutex::new(times.unwrap_or_default()),
        }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Merges the times noted in `index` and writes the file. Paths no longer in the index (gc
    /// removed them) are dropped, unless the index is empty (being rebuilt, or the directory
    /// is gone for a moment). Returns how many paths the file holds.
    pub fn save(&self, index: &Index) -> io::Result<usize> {
        let served = index.served_times();
        let mut times = self.times.lock().unwrap_or_else(|e| e.into_inner());
        if !served.is_empty() {
            let present: std::collections::HashSet<Key> = served.iter().map(|(k, _)| *k).collect();
            times.times.retain(|k, _| present.contains(k));
        }
        for (key, secs) in served {
            if secs > 0 {
                let t = times.times.entry(key).or_default();
                *t = (*t).max(secs);
            }
        }
        times.save(&self.file)?;
        Ok(times.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_times_read_back_and_merge_keeping_the_later() {
        let dir = std::env::temp_dir().join(format!("nbc-served-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(FILE_NAME);
        assert_eq!(ServedTimes::load(&path).unwrap(), None);
        let a = "kkafqq118sd9ik0pwm1z46lb3gj66hih";
        let b = "6ll6zs2rb9av0iylc29c154xzi53g46a";
        let mut times = ServedTimes::parse(&format!("{a} 100\n{b} 5\ngarbage\nzz 1\n"));
        assert_eq!(
            (times.get(a), times.get(b), times.len()),
            (Some(100), Some(5), 2)
        );
        times.save(&path).unwrap();
        let read = ServedTimes::load(&path).unwrap().unwrap();
        assert_eq!(read, times);
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains(&format!("{a} 100\n"))
        );
        times.merge(ServedTimes::parse(&format!("{a} 50\n{b} 7\n")));
        assert_eq!((times.get(a), times.get(b)), (Some(100), Some(7)));
        // Only the file itself: the temporary was renamed.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
