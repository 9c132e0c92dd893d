//! Helpers shared by the integration tests, one module per job:
//!
//! - [`server`]: the server binary on a free port, ready when it says so (sd_notify), its log;
//! - [`turns`]: tests that load the whole machine run alone, the others side by side;
//! - [`http`]: a raw HTTP/1.1 client (requests, uploads, response parsing);
//! - [`fixtures`]: the fixture caches, scratch copies of them, temporary directories;
//! - [`nix`]: the real Nix clients (2.8 and 2.35), each with its own configuration;
//! - [`os`]: what the kernel says about a process or a connection, and the open-file limit;
//! - [`wait`]: polling a condition with a deadline.

pub mod fixtures;
pub mod http;
pub mod nix;
pub mod os;
pub mod server;
pub mod turns;
pub mod wait;

pub use fixtures::*;
pub use http::*;
pub use nix::*;
pub use os::*;
pub use server::*;
pub use turns::*;
pub use wait::*;
