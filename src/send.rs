//! Writes a [`Response`] onto a `tiny_http` request.
//!
//! tiny_http's own `respond` switches to chunked encoding above 32 KiB and copies bodies in 8 KiB
//! pieces, so we take its raw writer and write the response ourselves: always `Content-Length`,
//! the whole head and a small body in one `write`, and file bodies with `sendfile`. Writing
//! through tiny_http's writer first also keeps pipelined responses in order, since that writer
//! waits for the previous response on the connection to finish.

use std::cell::RefCell;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tiny_http::{Method, Request};

use crate::response::{Body, Response, reason};
use crate::socket;

/// What was sent, for the access log and metrics.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub status: u16,
    /// Body bytes actually written.
    pub body_bytes: u64,
    /// True if the body went out through `sendfile`.
    pub zero_copy: bool,
}

/// Sends `response` and writes the access line: client, method, path, status, body bytes,
/// duration since `start`, and whether the body went out with `sendfile`.
pub fn send_logged(
    request: Request,
    response: Response,
    close: bool,
    start: Instant,
) -> Option<Sent> {
    if !log::log_enabled!(target: "access", log::Level::Info) {
        // No access log: skip copying the method, URL and address for it.
        return send(request, response, close).ok();
    }
    let method = request.method().clone();
    let url = request.url().to_string();
    let client = request
        .remote_addr()
        .map_or_else(|| "-".to_string(), |p| p.ip().to_string());
    let status = response.status;
    match send(request, response, close) {
        Ok(sent) => {
            log::info!(
                target: "access",
                "{client} {method} {url} {} {} {:.1}ms{}",
                sent.status,
                sent.body_bytes,
                start.elapsed().as_secs_f64() * 1000.0,
                if sent.zero_copy { " sendfile" } else { "" },
            );
            Some(sent)
        }
        Err(e) => {
            log::info!(target: "access", "{client} {method} {url} {status} aborted: {e}");
            None
        }
    }
}

/// How a request wants its connection handled after this response.
pub fn wants_close(request: &Request) -> bool {
    let connection = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Connection"))
        .map(|h| h.value.as_str().to_ascii_lowercase());
    let http10 = request.http_version() == &tiny_http::HTTPVersion(1, 0);
    match connection {
        Some(v) if v.contains("close") => true,
        Some(v) => http10 && !v.contains("keep-alive"),
        None => http10,
    }
}

/// Writes `response` for `request`. `close` adds `Connection: close` (shutdown, HTTP/1.0).
pub fn send(request: Request, response: Response, close: bool) -> io::Result<Sent> {
    let head_only = request.method() == &Method::Head;
    let close = close || wants_close(&request);
    let peer = request.remote_addr().copied();
    let mut head = Vec::with_capacity(256 + small_body_len(&response.body, head_only));
    write_head(&mut head, &response, close);

    let mut writer = request.into_writer();
    let status = response.status;
    let body_len = response.body.len();
    match response.body {
        Body::File {
            mut file,
            offset,
            len,
        } if !head_only && len > 0 => {
            // Wait for our turn on the connection (pipelining) before touching the socket.
            writer.flush()?;
            if let Some(mut sock) = peer.and_then(socket::find) {
                let sent = socket::send_head_and_file(&mut sock, &head, &mut file, offset, len);
                let n = sent.inspect_err(|_| {
                    // The client was promised Content-Length bytes it will not get: end the
                    // connection so it sees a short body now, instead of waiting on a
                    // keep-alive connection for bytes that never come.
                    let _ = sock.shutdown(std::net::Shutdown::Both);
                })?;
                return Ok(Sent {
                    status,
                    body_bytes: n,
                    zero_copy: true,
                });
            }
            writer.write_all(&head)?;
            let n = copy_file(&mut file, offset, len, &mut writer)?;
            writer.flush()?;
            Ok(Sent {
                status,
                body_bytes: n,
                zero_copy: false,
            })
        }
        Body::Bytes(data, range) if !head_only => {
            head.extend_from_slice(&data[range]);
            writer.write_all(&head)?;
            writer.flush()?;
            Ok(Sent {
                status,
                body_bytes: body_len,
                zero_copy: false,
            })
        }
        _ => {
            writer.write_all(&head)?;
            writer.flush()?;
            Ok(Sent {
                status,
                body_bytes: 0,
                zero_copy: false,
            })
        }
    }
}

fn small_body_len(body: &Body, head_only: bool) -> usize {
    match body {
        Body::Bytes(_, r) if !head_only => r.len(),
        _ => 0,
    }
}

/// Status line and headers, ending with the blank line.
fn write_head(out: &mut Vec<u8>, response: &Response, close: bool) {
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
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
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

/// Fallback when the socket cannot be reached: copy in large chunks.
fn copy_file(
    file: &mut std::fs::File,
    offset: u64,
    len: u64,
    out: &mut dyn Write,
) -> io::Result<u64> {
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
        write_head(&mut out, &r, true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("\r\nContent-Length: 13\r\n"));
        assert!(text.contains("\r\nCache-Control: max-age=5\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn not_modified_has_no_length() {
        let mut out = Vec::new();
        write_head(&mut out, &Response::new(304, Body::Empty), false);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("Content-Length"));
        assert!(!text.contains("Connection"));
    }
}
