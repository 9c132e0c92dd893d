//! An HTTP response as this server builds it, independent of how it is written to the socket.
//!
//! Handlers return a [`Response`]; [`crate::http::send`] turns it into bytes. Keeping the two apart lets
//! the routing and caching rules be unit-tested without a network.

use std::borrow::Cow;
use std::fs::File;
use std::sync::Arc;

/// A response body. Files stay files so that they can go out with `sendfile`.
#[derive(Debug)]
pub enum Body {
    Empty,
    /// Bytes held in memory (narinfo, nix-cache-info, error text), possibly a slice of them.
    Bytes(Arc<[u8]>, std::ops::Range<usize>),
    /// `len` bytes of an open file, starting at `offset`.
    File {
        file: File,
        offset: u64,
        len: u64,
    },
}

impl Body {
    pub fn bytes(data: impl Into<Arc<[u8]>>) -> Body {
        let data = data.into();
        let len = data.len();
        Body::Bytes(data, 0..len)
    }

    pub fn len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Bytes(_, r) => r.len() as u64,
            Body::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Narrows the body to `len` bytes from `start` (already checked against `len()`).
    pub fn slice(self, start: u64, len: u64) -> Body {
        match self {
            Body::Empty => Body::Empty,
            Body::Bytes(data, r) => {
                let s = r.start + start as usize;
                Body::Bytes(data, s..s + len as usize)
            }
            Body::File { file, offset, .. } => Body::File {
                file,
                offset: offset + start,
                len,
            },
        }
    }
}

/// Status, headers and body. `Content-Length`, `Date`, `Server` and `Connection` are added when
/// the response is written, so handlers never set them.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    pub body: Body,
}

impl Response {
    pub fn new(status: u16, body: Body) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body,
        }
    }

    /// A short plain-text answer, used for errors: the text says what went wrong.
    pub fn text(status: u16, text: &str) -> Response {
        let mut body = text.as_bytes().to_vec();
        body.push(b'\n');
        Response::new(status, Body::bytes(body)).header("Content-Type", "text/plain; charset=utf-8")
    }

    /// Sets a header, replacing an earlier value of the same name.
    pub fn header(mut self, name: &'static str, value: impl Into<Cow<'static, str>>) -> Response {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name, value.into()));
        self
    }

    pub fn get_header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }
}

/// The reason phrase for the status codes this server sends.
pub fn reason(status: u16) -> &'static str {
    // tiny_http's table covers every registered status (415, 431, 505 …); one list, not two.
    tiny_http::StatusCode(status).default_reason_phrase()
}
