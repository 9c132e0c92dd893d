//! HTTP semantics: what a request to a cache is answered, independent of sockets and threads.
//!
//! The one pipeline: `request` makes our own view of a `tiny_http` request once; `service`
//! routes it once and answers ([`Cache::handle`]), applying `conditional` requests and
//! `range`s; `send` writes the [`Response`] and the access line. [`Mount`] is the entry, for
//! the standalone server and for any `tiny_http` application embedding a cache. Upload tokens
//! (`auth`), upload places (`slots`), the landing page, `/metrics` and `/health` live here too.

pub(crate) mod auth;
pub(crate) mod cache;
pub(crate) mod conditional;
pub(crate) mod error;
pub(crate) mod landing;
pub(crate) mod metrics;
pub(crate) mod mount;
pub mod range;
pub mod request;
pub(crate) mod response;
pub(crate) mod send;
pub mod service;
pub(crate) mod slots;
pub(crate) mod status;

pub use auth::Tokens;
pub use cache::{Cache, Config, UploadConfig};
pub use metrics::Kind;
pub use mount::Mount;
pub use response::{Body, Response};
