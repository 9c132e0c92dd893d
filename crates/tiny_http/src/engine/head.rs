//! Parsing a request head (RFC 9112) with `httparse`, and deciding its framing.
//!
//! Everything here is pure: bytes in, a parsed head or the status to refuse it with out. The
//! rules are strict on purpose: an ambiguity in framing is how requests get smuggled.

use std::net::SocketAddr;

use ascii::AsciiString;

use crate::common::{HTTPVersion, Header, HeaderField, Method};

/// Limits on what a client may send before its request is refused.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Request line plus headers, in bytes (431, or 414 when the request line alone is longer).
    pub max_bytes: usize,
    /// Header lines (431).
    pub max_headers: usize,
}

/// The most header lines any configuration may allow.
pub const MAX_HEADER_SLOTS: usize = 256;

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A request head that passed every check.
#[derive(Debug)]
pub struct Head {
    pub method: Method,
    /// Origin form (`/path?query`), also for absolute-form targets.
    pub url: String,
    pub version: HTTPVersion,
    pub headers: Vec<Header>,
    pub framing: Framing,
    /// The client wants the connection kept after this request.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a go-ahead before sending the body.
    pub expect_continue: bool,
    /// Bytes of the head, which the body (if any) follows.
    pub len: usize,
}

/// Why a head was refused: the status to answer with before closing the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
}

const fn refuse(status: u16, reason: &'static str) -> Refusal {
    Refusal { status, reason }
}

/// Parses `buf`: `Ok(None)` while the head is incomplete (and within limits).
pub fn parse(buf: &[u8], limits: HeadLimits) -> Result<Option<Head>, Refusal> {
    // On the stack: parsing runs for every request, and again as a head arrives in pieces.
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADER_SLOTS];
    let mut request =
        httparse::Request::new(&mut slots[..limits.max_headers.min(MAX_HEADER_SLOTS)]);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= limits.max_bytes => len,
        Ok(httparse::Status::Complete(_)) | Ok(httparse::Status::Partial) => {
            if buf.len() <= limits.max_bytes {
                return Ok(None);
            }
            return Err(too_large(buf, limits.max_bytes));
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refuse(431, "too many header lines"));
        }
        Err(httparse::Error::Version) => {
            return Err(refuse(505, "only HTTP/1.0 and HTTP/1.1 are served"));
        }
        Err(_) => return Err(refuse(400, "malformed request head")),
    };
    let method = request.method.unwrap_or_default();
    let method: Method = method
        .parse()
        .map_err(|_| refuse(400, "malformed method"))?;
    let version = HTTPVersion(1, request.version.unwrap_or(1));
    let url = origin_form(request.path.unwrap_or_default(), &method)?;
    let mut headers = Vec::with_capacity(request.headers.len());
    for h in request.headers.iter() {
        let field = HeaderField::from_bytes(h.name.as_bytes())
            .map_err(|_| refuse(400, "malformed header name"))?;
        let value = AsciiString::from_ascii(h.value)
            .map_err(|_| refuse(400, "header values must be ASCII"))?;
        headers.push(Header { field, value });
    }
    let framing = framing(&headers, &version)?;
    if version == HTTPVersion(1, 1) && !headers.iter().any(|h| h.field.equiv("Host")) {
        return Err(refuse(400, "HTTP/1.1 requests need a Host header"));
    }
    if headers.iter().filter(|h| h.field.equiv("Host")).count() > 1 {
        return Err(refuse(400, "more than one Host header"));
    }
    let keep_alive = keep_alive(&headers, &version);
    let expect_continue = version == HTTPVersion(1, 1)
        && headers.iter().any(|h| {
            h.field.equiv("Expect") && h.value.as_str().eq_ignore_ascii_case("100-continue")
        });
    Ok(Some(Head {
        method,
        url,
        version,
        headers,
        framing,
        keep_alive,
        expect_continue,
        len,
    }))
}

/// 414 when even the request line does not fit, 431 otherwise.
fn too_large(buf: &[u8], max: usize) -> Refusal {
    let line_fits = buf[..max.min(buf.len())].contains(&b'\n');
    if line_fits {
        refuse(431, "request head too large")
    } else {
        refuse(414, "request target too long")
    }
}

/// The target in origin form. Absolute form (`http://host/path`, which proxies send and
/// RFC 9112 says servers must accept) loses its scheme and authority.
fn origin_form(target: &str, method: &Method) -> Result<String, Refusal> {
    if target.starts_with('/') {
        return Ok(target.to_string());
    }
    if target == "*" && *method == Method::Options {
        return Ok(target.to_string());
    }
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &target[7..]
    } else if lower.starts_with("https://") {
        &target[8..]
    } else {
        return Err(refuse(
            400,
            "request target must be a path or an absolute URL",
        ));
    };
    let path_start = rest.find(['/', '?']).unwrap_or(rest.len());
    if path_start == 0 {
        return Err(refuse(400, "absolute URL without a host"));
    }
    let path = &rest[path_start..];
    Ok(if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    })
}

/// RFC 9112 section 6: chunked (and only chunked) or one valid Content-Length; anything
/// ambiguous is refused, since a proxy in front might frame it differently.
fn framing(headers: &[Header], version: &HTTPVersion) -> Result<Framing, Refusal> {
    let mut te = headers
        .iter()
        .filter(|h| h.field.equiv("Transfer-Encoding"));
    let mut cl = headers.iter().filter(|h| h.field.equiv("Content-Length"));
    match (te.next(), cl.next()) {
        (Some(_), Some(_)) => Err(refuse(400, "both Transfer-Encoding and Content-Length")),
        (Some(first), None) => {
            if *version == HTTPVersion(1, 0) {
                return Err(refuse(400, "Transfer-Encoding in an HTTP/1.0 request"));
            }
            let codings: Vec<String> = std::iter::once(first)
                .chain(te)
                .flat_map(|h| h.value.as_str().split(','))
                .map(|c| c.trim().to_ascii_lowercase())
                .collect();
            match codings.as_slice() {
                [only] if only == "chunked" => Ok(Framing::Chunked),
                _ if codings.iter().any(|c| c != "chunked") => {
                    Err(refuse(501, "the only transfer coding accepted is chunked"))
                }
                _ => Err(refuse(400, "chunked applied more than once")),
            }
        }
        (None, Some(first)) => {
            if cl.next().is_some() {
                return Err(refuse(400, "more than one Content-Length"));
            }
            let value = first.value.as_str();
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(refuse(400, "Content-Length must be a decimal number"));
            }
            let n: u64 = value
                .parse()
                .map_err(|_| refuse(400, "Content-Length out of range"))?;
            Ok(if n == 0 {
                Framing::None
            } else {
                Framing::Length(n)
            })
        }
        (None, None) => Ok(Framing::None),
    }
}

/// HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 closes unless told to keep it.
fn keep_alive(headers: &[Header], version: &HTTPVersion) -> bool {
    let tokens = || {
        headers
            .iter()
            .filter(|h| h.field.equiv("Connection"))
            .flat_map(|h| h.value.as_str().split(','))
            .map(str::trim)
    };
    if tokens().any(|t| t.eq_ignore_ascii_case("close")) {
        return false;
    }
    *version == HTTPVersion(1, 1) || tokens().any(|t| t.eq_ignore_ascii_case("keep-alive"))
}

/// A whole response for a refused head, with `Connection: close`.
pub fn refusal_response(refusal: Refusal) -> Vec<u8> {
    let reason = crate::common::StatusCode(refusal.status).default_reason_phrase();
    let body = format!("{}\n", refusal.reason);
    format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n{body}",
        refusal.status,
        body.len()
    )
    .into_bytes()
}

/// For the logs: who sent what we refused.
pub fn describe(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "-".to_string(), |p| p.ip().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_bytes: 16 * 1024,
        max_headers: 64,
    };

    fn ok(text: &str) -> Head {
        parse(text.as_bytes(), LIMITS).unwrap().unwrap()
    }

    fn status(text: &str) -> u16 {
        parse(text.as_bytes(), LIMITS).unwrap_err().status
    }

    #[test]
    fn plain_get_keeps_alive() {
        let head = ok("GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(head.url, "/nix-cache-info");
        assert_eq!(head.framing, Framing::None);
        assert!(head.keep_alive);
    }

    #[test]
    fn incomplete_head_waits() {
        assert!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n", LIMITS)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn bare_lf_lines_are_accepted() {
        let head = ok("GET /a HTTP/1.1\nHost: x\n\n");
        assert_eq!(head.url, "/a");
    }

    #[test]
    fn absolute_form_becomes_origin_form() {
        assert_eq!(
            ok("GET http://h:1/x?y HTTP/1.1\r\nHost: h\r\n\r\n").url,
            "/x?y"
        );
        assert_eq!(ok("GET http://h HTTP/1.1\r\nHost: h\r\n\r\n").url, "/");
        assert_eq!(status("GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
        assert_eq!(status("GET ftp://h/x HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
    }

    #[test]
    fn other_versions_get_505() {
        assert_eq!(status("GET / HTTP/2.0\r\nHost: x\r\n\r\n"), 505);
        assert_eq!(status("GET / HTTP/1.2\r\nHost: x\r\n\r\n"), 505);
    }

    #[test]
    fn control_characters_in_the_target_are_refused() {
        assert_eq!(status("GET /a\x1b[31m HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    }

    #[test]
    fn content_length_must_be_one_plain_number() {
        let cl = |v: &str| format!("PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: {v}\r\n\r\n");
        assert_eq!(ok(&cl("67")).framing, Framing::Length(67));
        assert_eq!(
            ok(&cl("18446744073709551615")).framing,
            Framing::Length(u64::MAX)
        );
        for bad in [
            "abc",
            "67, 67",
            "-1",
            "+5",
            "",
            "18446744073709551616",
            "0x10",
        ] {
            assert_eq!(status(&cl(bad)), 400, "Content-Length: {bad}");
        }
        let twice = "PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n";
        assert_eq!(status(twice), 400);
    }

    #[test]
    fn only_chunked_is_a_transfer_coding() {
        let te = |v: &str| format!("PUT /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {v}\r\n\r\n");
        assert_eq!(ok(&te("chunked")).framing, Framing::Chunked);
        assert_eq!(ok(&te("Chunked ")).framing, Framing::Chunked);
        assert_eq!(status(&te("gzip")), 501);
        assert_eq!(status(&te("gzip, chunked")), 501);
        assert_eq!(status(&te("chunked, chunked")), 400);
        let both =
            "PUT /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(status(both), 400);
        let http10 = "PUT /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(status(http10), 400);
    }

    #[test]
    fn limits_give_431_and_414() {
        let long_target = format!("GET /{} HTTP/1.1\r\n", "a".repeat(20_000));
        assert_eq!(status(&long_target), 414);
        let long_value = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}", "v".repeat(20_000));
        assert_eq!(status(&long_value), 431);
        let many: String = (0..100).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")),
            431
        );
    }

    #[test]
    fn http11_needs_one_host() {
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
        assert!(!ok("GET / HTTP/1.0\r\n\r\n").keep_alive);
    }

    #[test]
    fn connection_tokens() {
        assert!(!ok("GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, Close\r\n\r\n").keep_alive);
        assert!(ok("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    }

    #[test]
    fn expect_continue_is_seen() {
        let head =
            ok("PUT /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
        assert!(head.expect_continue);
    }
}
