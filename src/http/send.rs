//! Writes a [`Response`] onto a `tiny_http` request.
//!
//! We write the head ourselves: always `Content-Length`, the whole head and a small body in one
//! write. With our connection engine (feature `engine`, on by default) a file body goes out
//! with `sendfile` and the response completes in the engine, which reports the outcome later;
//! with an ordinary tiny_http 0.12 (an application embedding a [`crate::Mount`]) the body is
//! copied through tiny_http's writer.

use std::cell::RefCell;
use std::io::{self, Write};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tiny_http::{Method, Request};

use crate::http::response::{Body, Response, reason};

/// What was sent, for the access log and metrics.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub status: u16,
    /// Body bytes actually written.
    pub body_bytes: u64,
    /// True if the body went out through `sendfile`.
    pub zero_copy: bool,
}

/// Sends `response`; once it is written whole (or abandoned), writes the access line (client,
/// method, path, status, body bytes, duration since `start`, `sendfile` or `aborted: why`) and
/// calls `finished` with what was sent (`None` if it was abandoned). That may happen later, on
/// another thread, when the client reads slowly.
pub fn send_logged(
    request: Request,
    response: Response,
    close: bool,
    start: Instant,
    finished: impl FnOnce(Option<Sent>) + Send + 'static,
) {
    if !log::log_enabled!(target: "access", log::Level::Info) {
        // No access log: skip copying the method, URL and address for it.
        send(request, response, close, move |r| finished(r.ok()));
        return;
    }
    let method = request.method().clone();
    let url = request.url().to_string();
    let client = request
        .remote_addr()
        .map_or_else(|| "-".to_string(), |p| p.ip().to_string());
    let status = response.status;
    send(request, response, close, move |result| match result {
        Ok(sent) => {
            log::info!(
                target: "access",
                "{client} {method} {url} {} {} {:.1}ms{}",
                sent.status,
                sent.body_bytes,
                start.elapsed().as_secs_f64() * 1000.0,
                if sent.zero_copy { " sendfile" } else { "" },
            );
            finished(Some(sent));
        }
        Err(e) => {
            log::info!(target: "access", "{client} {method} {url} {status} aborted: {e}");
            finished(None);
        }
    });
}

/// How a request wants its connection handled after this response: every `Connection` header
/// counts (as the engine decides it), token by token, without copying them.
pub fn wants_close(request: &Request) -> bool {
    let tokens = || {
        request
            .headers()
            .iter()
            .filter(|h| h.field.equiv("Connection"))
            .flat_map(|h| h.value.as_str().split(','))
            .map(str::trim)
    };
    if tokens().any(|t| t.eq_ignore_ascii_case("close")) {
        return true;
    }
    request.http_version() == &tiny_http::HTTPVersion(1, 0)
        && !tokens().any(|t| t.eq_ignore_ascii_case("keep-alive"))
}

/// Writes `response` for `request` and calls `done` with the outcome. `close` adds
/// `Connection: close` (shutdown, refusals).
pub fn send(
    request: Request,
    response: Response,
    close: bool,
    done: impl FnOnce(io::Result<Sent>) + Send + 'static,
) {
    let head_only = request.method() == &Method::Head;
    let close = close || wants_close(&request);
    // An HTTP/1.0 connection persists only if the answer says so (RFC 9112, 9.3); one that
    // did not ask for keep-alive is closed (`wants_close`).
    let http10 = request.http_version() == &tiny_http::HTTPVersion(1, 0);
    let connection = match (close, http10) {
        (true, _) => Some("close"),
        (false, true) => Some("keep-alive"),
        (false, false) => None,
    };
    let mut head = Vec::with_capacity(256 + small_body_len(&response.body, head_only));
    write_head(&mut head, &response, connection);
    let body = if head_only {
        Body::Empty
    } else {
        response.body
    };
    write_out(request, head, body, close, response.status, done);
}

/// The engine's way: head and small bodies buffered, files by `sendfile`, and the rest of a
/// response the socket cannot take now left to the engine.
#[cfg(feature = "engine")]
fn write_out(
    request: Request,
    mut head: Vec<u8>,
    body: Body,
    close: bool,
    status: u16,
    done: impl FnOnce(io::Result<Sent>) + Send + 'static,
) {
    let head_len = head.len() as u64;
    let zero_copy = matches!(&body, Body::File { len, .. } if *len > 0);
    let mut writer = request.into_response_writer();
    if close {
        writer.close_after();
    }
    writer.on_done(move |result| {
        done(result.map(|written| Sent {
            status,
            body_bytes: written.saturating_sub(head_len),
            zero_copy,
        }))
    });
    let queued = match body {
        Body::File { file, offset, len } if len > 0 => writer
            .send_bytes(head)
            .and_then(|()| writer.send_file(file, offset, len)),
        Body::Bytes(data, range) => {
            head.extend_from_slice(&data[range]);
            writer.send_bytes(head)
        }
        _ => writer.send_bytes(head),
    };
    if let Err(e) = queued {
        log::debug!("queueing a response failed: {e}");
    }
    writer.finish();
}

/// Through an ordinary tiny_http's writer: the body is copied.
#[cfg(not(feature = "engine"))]
fn write_out(
    request: Request,
    mut head: Vec<u8>,
    body: Body,
    _close: bool,
    status: u16,
    done: impl FnOnce(io::Result<Sent>) + Send + 'static,
) {
    let mut writer = request.into_writer();
    let result = (|| {
        let body_bytes = match body {
            Body::File {
                mut file,
                offset,
                len,
            } => {
                writer.write_all(&head)?;
                copy_file(&mut file, offset, len, &mut writer)?
            }
            Body::Bytes(data, range) => {
                let n = range.len() as u64;
                head.extend_from_slice(&data[range]);
                writer.write_all(&head)?;
                n
            }
            Body::Empty => {
                writer.write_all(&head)?;
                0
            }
        };
        writer.flush()?;
        Ok(Sent {
            status,
            body_bytes,
            zero_copy: false,
        })
    })();
    done(result);
}

fn small_body_len(body: &Body, head_only: bool) -> usize {
    match body {
        Body::Bytes(_, r) if !head_only => r.len(),
        _ => 0,
    }
}

/// Status line and headers, ending with the blank line; `connection` is the `Connection`
/// header's value, if one is sent.
fn write_head(out: &mut Vec<u8>, response: &Response, connection: Option<&str>) {
    let status = response.status;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason(status));
    out.extend_from_slice(b"Server: nix-binary-cache\r\nDate: ");
    with_date(|d| out.extend_from_slice(d.as_bytes()));
    out.extend_from_slice(b"\r\n");
    for (name, value) in &response.headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    // 1xx and 304 carry no body and, for 304, no length of the body they stand for.
    if status != 304 && status >= 200 {
        let _ = write!(out, "Content-Length: {}\r\n", response.body.len());
    }
    if let Some(value) = connection {
        let _ = write!(out, "Connection: {value}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The `Date` header value, formatted at most once a second per thread.
fn with_date(f: impl FnOnce(&str)) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.0 != secs {
            *cell = (secs, httpdate::fmt_http_date(now));
        }
        f(&cell.1);
    });
}

/// Copies `len` bytes of `file` from `offset` in large chunks (no `sendfile` without the engine).
#[cfg(not(feature = "engine"))]
fn copy_file(
    file: &mut std::fs::File,
    offset: u64,
    len: u64,
    out: &mut dyn Write,
) -> io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than announced",
            ));
        }
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_has_length_and_close() {
        let r = Response::text(404, "no such path").header("Cache-Control", "max-age=5");
        let mut out = Vec::new();
        write_head(&mut out, &r, Some("close"));
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("\r\nContent-Length: 13\r\n"));
        assert!(text.contains("\r\nCache-Control: max-age=5\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn kept_alive_http10_is_told_so() {
        let mut out = Vec::new();
        write_head(&mut out, &Response::text(200, "x"), Some("keep-alive"));
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\r\nConnection: keep-alive\r\n"), "{text}");
    }

    #[test]
    fn not_modified_has_no_length() {
        let mut out = Vec::new();
        write_head(&mut out, &Response::new(304, Body::Empty), None);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("Content-Length"));
        assert!(!text.contains("Connection"));
    }
}
