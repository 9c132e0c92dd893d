//! Nix's own formats, pure: no I/O (one exception left: `signing` reads key files), no
//! `unsafe`, fuzzed (`fuzz/`).
//!
//! Everything here turns bytes into values and back: the base-32 alphabet, `.narinfo` and
//! `nix-cache-info` text, which paths a binary cache holds, and ed25519 narinfo signatures.

pub mod cache_info;
pub mod hash;
pub mod layout;
pub mod narinfo;
pub mod nix32;
pub mod signing;
