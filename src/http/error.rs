//! Every answer that is not the resource asked for, in one place: each [`Refusal`] has its
//! status, its wording and how long it may be kept. The service decides which; this file says
//! what the client gets.

use crate::http::response::Response;
use crate::http::service::max_age;
use crate::store::upload::UploadError;

/// Why a request gets no resource.
#[derive(Debug)]
pub enum Refusal {
    /// Characters, escapes or segments no Nix client sends: 400.
    BadPath,
    /// Nothing here: 404, which a proxy may keep a few seconds (it may be pushed soon).
    NotFound,
    /// A NAR that is not here: 404 kept by nobody (a proxy keeping it would hide the NAR once
    /// pushed; only pushers and clients of a damaged cache ask).
    NarNotFound,
    /// Not GET or HEAD (or PUT when uploads are on): 405 with `Allow`.
    MethodNotAllowed { uploads: bool },
    /// A PUT without a valid token: 401.
    Unauthorized,
    /// A PUT body in a `Content-Encoding` we do not decode: 415.
    UnsupportedEncoding(String),
    /// Every upload place stayed busy: 503, retry in a second.
    Busy,
    /// The upload itself was refused: its status and message (see [`UploadError`]).
    Upload(UploadError),
    /// A file could not be read: 500; the operator's log says why, the client is not told.
    Unreadable,
}

impl Refusal {
    /// The response the client gets.
    pub fn response(&self) -> Response {
        match self {
            Refusal::BadPath => Response::text(
                400,
                "malformed path: only the characters Nix uses in cache paths are allowed",
            )
            .header("Cache-Control", max_age::NONE),
            Refusal::NotFound => {
                Response::text(404, "not in this cache").header("Cache-Control", max_age::MISS)
            }
            Refusal::NarNotFound => {
                Response::text(404, "not in this cache").header("Cache-Control", max_age::NONE)
            }
            Refusal::MethodNotAllowed { uploads } => {
                let allow = if *uploads {
                    "GET, HEAD, PUT"
                } else {
                    "GET, HEAD"
                };
                Response::text(405, &format!("allowed methods: {allow}"))
                    .header("Allow", allow)
                    .header("Cache-Control", max_age::NONE)
            }
            Refusal::Unauthorized => Response::text(
                401,
                "uploads need a valid token (HTTP Basic password or Bearer)",
            )
            .header("WWW-Authenticate", "Basic realm=\"nix-binary-cache\"")
            .header("Cache-Control", max_age::NONE),
            Refusal::UnsupportedEncoding(name) => Response::text(
                415,
                &format!(
                    "Content-Encoding {name} is not decoded here; use br, xz, zstd, gzip, \
                     bzip2 or none"
                ),
            )
            .header("Cache-Control", max_age::NONE),
            Refusal::Busy => Response::text(503, "every upload place stayed busy; retry shortly")
                .header("Retry-After", "1")
                .header("Cache-Control", max_age::NONE),
            Refusal::Upload(e) => {
                Response::text(e.status(), &e.message()).header("Cache-Control", max_age::NONE)
            }
            Refusal::Unreadable => Response::text(
                500,
                "the server could not read this file; the operator's log says why",
            )
            .header("Cache-Control", max_age::NONE),
        }
    }
}
