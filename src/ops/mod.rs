//! The operator's commands on a cache directory, run by the binary's `verify` and `gc`.

pub mod gc;
pub mod verify;
