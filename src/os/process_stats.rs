//! The process's own figures for `/metrics`: resident memory, open descriptors, threads.
//!
//! Read from `/proc/self` when `/metrics` is asked for (a few small reads); this works under the
//! shipped unit's `ProcSubset=pid`, which hides the rest of `/proc`. A figure that cannot be
//! read is left out rather than reported as 0.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// What `/proc/self` says now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub threads: Option<u64>,
    /// When the process started (first asked: at start, see [`note_start`]), Unix seconds.
    pub start_unix: f64,
}

static START: OnceLock<f64> = OnceLock::new();

/// Remembers now as the process's start time (called when a cache is opened, i.e. at start;
/// `/proc/stat`, whose boot time would turn the kernel's start tick into a date, is hidden by
/// `ProcSubset=pid`).
pub fn note_start() {
    START.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    });
}

pub fn read() -> ProcessStats {
    note_start();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    ProcessStats {
        resident_bytes: field("VmRSS:").map(|kib| kib * 1024),
        threads: field("Threads:"),
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64),
        start_unix: START.get().copied().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_of_this_process() {
        let before = read();
        let files: Vec<_> = (0..5)
            .map(|_| std::fs::File::open("/proc/self/status"))
            .collect();
        let after = read();
        assert!(after.open_fds.unwrap() >= before.open_fds.unwrap() + 5);
        assert!(after.resident_bytes.unwrap() > 1 << 20);
        assert!(after.threads.unwrap() >= 1);
        assert!(after.start_unix > 1.6e9 && after.start_unix == before.start_unix);
        drop(files);
    }
}
