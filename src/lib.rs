//! A Nix binary cache server: serves the directory `nix copy --to file://DIR` writes, over HTTP,
//! to the real Nix client.
//!
//! What an application uses:
//! - [`Cache`] opens a cache directory, keeps an in-memory narinfo index fresh, and answers a
//!   request ([`Cache::handle`], on our own view of it: [`http::request::Request`]).
//! - [`Mount`] places a cache under a path prefix inside any `tiny_http` application, and
//!   `server` runs the standalone server with its worker pool; both go through the same
//!   pipeline.
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

//! The crate is layered as folders; imports point down only:
//!
//! ```text
//! server  threads, listeners, the engine glue (the binary's standalone server)
//!   http  what a request is answered: Cache, Mount, Response, conditional requests, metrics
//!  store  the cache directory: files, the narinfo index, uploads, temporary files
//!    nix  pure formats: nix32, narinfo, nix-cache-info, the cache's paths, signing
//!     os  every libc call, behind safe functions
//! ```
//!
//! `ops` (verify, gc) works on a directory beside the server, on `store` and `nix`.

#![deny(unsafe_code)]

pub mod http;
pub mod nix;
pub mod ops;
#[allow(unsafe_code)]
pub mod os;
#[cfg(feature = "engine")]
pub mod server;
pub mod store;

pub use http::{Body, Cache, Config, Mount, Response, Tokens, UploadConfig};
pub use nix::cache_info::CacheInfo;
pub use store::{REVALIDATE_AFTER, ScanStats, WatchMode};
