//! The integration tests: one binary, one module per area, all driving the real server binary
//! (or the library's operator commands) through the helpers in [`support`].
//!
//! Run one area with `cargo test --test it hostile::`, one test with its full name
//! (`cargo test --test it http::conditional_requests_answer_304`).

mod support;

mod faults;
mod hostile;
mod http;
mod index_watch;
mod nix_client;
mod ops;
mod slow_clients;
mod upload;
