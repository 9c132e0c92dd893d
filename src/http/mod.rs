//! HTTP semantics: what a request to a cache is answered, independent of sockets and threads.
//!
//! [`Cache`] answers; [`Mount`] places it under a path prefix in any `tiny_http` application;
//! [`Response`] is the answer as a value, written onto a `tiny_http` request by `send`. Conditional
//! requests, ranges, upload tokens, the landing page and `/metrics` live here too.

pub(crate) mod auth;
pub(crate) mod cache;
pub(crate) mod landing;
pub(crate) mod metrics;
pub(crate) mod mount;
pub mod range;
pub(crate) mod response;
pub(crate) mod send;
pub(crate) mod slots;

pub use auth::Tokens;
pub use cache::{Cache, Config, UploadConfig};
pub use mount::Mount;
pub use response::{Body, Response};
