//! Every `libc` call of the crate, each behind a safe function with its `SAFETY` note.
//!
//! The rest of the crate denies `unsafe_code`; what it needs from the kernel that std does not
//! offer (inotify, systemd's sockets, signals, the open file limit, thread priority…) is here.

pub(crate) mod inotify;
#[cfg(feature = "engine")]
pub(crate) mod net;
pub(crate) mod process;
pub(crate) mod process_stats;
mod signals;
pub mod systemd;

pub use process::raise_open_file_limit;
pub use signals::{SIGHUP, StopSignals};
