//! The cache directory on disk: opening its files safely, the in-memory narinfo index and how it
//! follows the disk, storing uploads, temporary files, and when each narinfo was last served.
//!
//! Below `http/` and above `nix/` (formats) and `os/` (system calls): nothing here knows about
//! requests or responses.

pub(crate) mod cache_info;
pub(crate) mod encoding;
pub(crate) mod files;
pub(crate) mod immutable;
pub(crate) mod index;
pub mod served_times;
pub(crate) mod tempfile;
pub(crate) mod upload;
pub(crate) mod watch;

pub use index::{REVALIDATE_AFTER, ScanStats};
pub use watch::WatchMode;
