//! Our own view of a request, made once from the `tiny_http` request: below this module no
//! `tiny_http` type is seen, and `Request::fake` builds one for unit tests.
//!
//! The view borrows everything (no copy, no allocation unless the path has percent-escapes):
//! it is made for every request on the hot path.

use std::borrow::Cow;

use crate::nix::layout::{self, RouteError};

/// The methods this server tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Put,
    /// Anything else: answered 405.
    Other,
}

/// The request headers the answers depend on; the first of each name counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Headers<'a> {
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: Option<&'a str>,
    pub if_range: Option<&'a str>,
    pub range: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
    pub host: Option<&'a str>,
    pub x_forwarded_proto: Option<&'a str>,
    pub x_forwarded_host: Option<&'a str>,
}

impl<'a> Headers<'a> {
    /// Picks the headers we use out of a request's, in one pass.
    fn collect(headers: &'a [tiny_http::Header]) -> Headers<'a> {
        let mut out = Headers::default();
        for header in headers {
            out.note(header.field.as_str().as_str(), header.value.as_str());
        }
        out
    }

    /// Records `value` under `name` (case-insensitive) if it is one we use and not yet seen.
    fn note(&mut self, name: &str, value: &'a str) {
        // The length picks the candidate, so each header costs about one comparison.
        let slot = match name.len() {
            4 if name.eq_ignore_ascii_case("Host") => &mut self.host,
            5 if name.eq_ignore_ascii_case("Range") => &mut self.range,
            8 if name.eq_ignore_ascii_case("If-Range") => &mut self.if_range,
            13 if name.eq_ignore_ascii_case("If-None-Match") => &mut self.if_none_match,
            13 if name.eq_ignore_ascii_case("Authorization") => &mut self.authorization,
            16 if name.eq_ignore_ascii_case("Content-Encoding") => &mut self.content_encoding,
            16 if name.eq_ignore_ascii_case("X-Forwarded-Host") => &mut self.x_forwarded_host,
            17 if name.eq_ignore_ascii_case("If-Modified-Since") => &mut self.if_modified_since,
            17 if name.eq_ignore_ascii_case("X-Forwarded-Proto") => &mut self.x_forwarded_proto,
            _ => return,
        };
        slot.get_or_insert(value);
    }
}

/// One request to a cache, its path relative to where the cache is mounted.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: Method,
    /// The path as sent, without the query string (for messages and the landing page check).
    pub path: &'a str,
    /// The path with its percent-escapes undone (see [`layout::decode`]), or why it cannot be.
    pub decoded: Result<Cow<'a, str>, RouteError>,
    pub query: Option<&'a str>,
    pub headers: Headers<'a>,
    /// The body's length as the client declared it (`Content-Length`).
    pub body_length: Option<u64>,
}

/// Splits a request target into its path and query string.
pub fn split_url(url: &str) -> (&str, Option<&str>) {
    match url.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (url, None),
    }
}

impl<'a> Request<'a> {
    /// The view of `request`, whose path below the mount point is `path` (query removed).
    pub fn new(request: &'a tiny_http::Request, path: &'a str, query: Option<&'a str>) -> Self {
        let method = match request.method() {
            tiny_http::Method::Get => Method::Get,
            tiny_http::Method::Head => Method::Head,
            tiny_http::Method::Put => Method::Put,
            _ => Method::Other,
        };
        Request {
            method,
            path,
            decoded: layout::decode(path),
            query,
            headers: Headers::collect(request.headers()),
            body_length: request.body_length().map(|n| n as u64),
        }
    }

    /// A request made up for tests: `url` may carry a query string; `headers` are
    /// `(name, value)` pairs.
    #[cfg(test)]
    pub fn fake(method: Method, url: &'a str, headers: &[(&str, &'a str)]) -> Self {
        let (path, query) = split_url(url);
        let mut view = Headers::default();
        for (name, value) in headers {
            view.note(name, value);
        }
        Request {
            method,
            path,
            decoded: layout::decode(path),
            query,
            headers: view,
            body_length: None,
        }
    }

    /// The path and query string as sent, for log lines.
    pub fn path_and_query(&self) -> PathAndQuery<'_> {
        PathAndQuery(self.path, self.query)
    }
}

/// Displays a path with its query string, if it had one.
pub struct PathAndQuery<'a>(&'a str, Option<&'a str>);

impl std::fmt::Display for PathAndQuery<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.1 {
            Some(query) => write!(f, "{}?{query}", self.0),
            None => f.write_str(self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_each_header_counts_whatever_its_case() {
        let r = Request::fake(
            Method::Get,
            "/x.narinfo?a=b",
            &[
                ("range", "bytes=0-1"),
                ("RANGE", "bytes=5-6"),
                ("If-None-Match", "\"t\""),
                ("authorization", "Bearer s"),
                ("X-Forwarded-Host", "h"),
                ("User-Agent", "curl"),
            ],
        );
        assert_eq!(r.path, "/x.narinfo");
        assert_eq!(r.query, Some("a=b"));
        assert_eq!(r.headers.range, Some("bytes=0-1"));
        assert_eq!(r.headers.if_none_match, Some("\"t\""));
        assert_eq!(r.headers.authorization, Some("Bearer s"));
        assert_eq!(r.headers.x_forwarded_host, Some("h"));
        assert_eq!(r.headers.content_encoding, None);
        assert_eq!(r.path_and_query().to_string(), "/x.narinfo?a=b");
    }

    #[test]
    fn the_path_is_decoded_once_and_refused_if_it_cannot_be() {
        let r = Request::fake(Method::Get, "/log/a%2Bb.drv", &[]);
        assert_eq!(r.decoded.as_deref(), Ok("/log/a+b.drv"));
        let r = Request::fake(Method::Get, "/log/a%2Fb.drv", &[]);
        assert_eq!(r.decoded, Err(RouteError::BadPath));
    }
}
