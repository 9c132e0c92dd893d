//! A Nix binary cache server: serves the directory `nix copy --to file://DIR` writes, over HTTP,
//! to the real Nix client.
//!
//! The library has two layers:
//! - [`Cache`] opens a cache directory, keeps an in-memory narinfo index fresh, and turns a
//!   request into a [`Response`] ([`Cache::answer`]) or writes it onto a `tiny_http` request
//!   ([`Cache::serve`]).
//! - [`Mount`] places a cache under a path prefix inside any `tiny_http` application, and
//!   [`server`] runs the standalone server with its worker pool.
//!
//! ```no_run
//! use nix_binary_cache::{Cache, Config, Mount};
//!
//! let cache = Cache::open(Config::new("/srv/cache")).unwrap();
//! let mount = Mount::new("/cache", cache);
//! let server = tiny_http::Server::http("127.0.0.1:8080").unwrap();
//! for request in server.incoming_requests() {
//!     if let Some(request) = mount.try_serve(request) {
//!         let _ = request.respond(tiny_http::Response::from_string("my own route"));
//!     }
//! }
//! ```

mod atomic;
pub mod auth;
mod cache;
mod cache_info;
pub mod encoding;
mod files;
pub mod gc;
mod immutable;
mod index;
mod inotify;
mod landing;
pub mod metrics;
mod mount;
pub mod narinfo;
pub mod nix32;
mod process_stats;
pub mod range;
mod response;
pub mod route;
pub mod send;
pub mod served_times;
#[cfg(feature = "engine")]
pub mod server;
pub mod signing;
pub mod slots;
pub mod systemd;
pub mod upload;
pub mod verify;
mod watch;

pub use auth::Tokens;
pub use cache::{Cache, Config, UploadConfig};
pub use cache_info::CacheInfo;
pub use index::{REVALIDATE_AFTER, ScanStats};
pub use mount::Mount;
pub use response::{Body, Response};
pub use watch::WatchMode;
