//! A raw HTTP/1.1 client: one request per connection, uploads, and a parser for whatever bytes
//! came back (several responses, HEAD, 304).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request on a fresh connection (`Connection: close`), returning the parsed response.
pub fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("Host")) {
        raw.push_str("Host: 127.0.0.1\r\n");
    }
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    let bytes = raw_exchange(port, raw.as_bytes());
    let mut replies = parse_replies(&bytes, method == "HEAD");
    assert_eq!(replies.len(), 1, "expected one response to {method} {path}");
    replies.remove(0)
}

/// Writes `raw` on a new connection and reads until the server closes it.
pub fn raw_exchange(port: u16, raw: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

/// PUT with a body on a fresh connection.
pub fn put(port: u16, path: &str, body: &[u8], auth: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
    put_with(port, path, body, &headers)
}

/// PUT with a body and extra headers on a fresh connection.
pub fn put_with(port: u16, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Reply {
    let mut raw = format!(
        "PUT {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    let mut bytes = raw.into_bytes();
    bytes.extend_from_slice(body);
    parse_replies(&raw_exchange(port, &bytes), false).remove(0)
}

/// Splits a byte stream into responses, using Content-Length (no body for HEAD/304).
pub fn parse_replies(mut bytes: &[u8], head: bool) -> Vec<Reply> {
    let mut replies = Vec::new();
    while let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        let head_text = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let mut lines = head_text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        let body_len = if head || status == 304 { 0 } else { len };
        let start = end + 4;
        let stop = (start + body_len).min(bytes.len());
        replies.push(Reply {
            status,
            headers,
            body: bytes[start..stop].to_vec(),
        });
        bytes = &bytes[stop..];
    }
    replies
}

/// Receive buffer for clients that read slowly (the kernel doubles it): small enough that a
/// large response cannot sit in the socket buffers.
pub const SMALL_RCVBUF: i32 = 4096;

/// A connection to 127.0.0.1:`port` whose receive buffer was made small before connecting (so
/// that the window it advertises stays small too).
pub fn connect_with_small_rcvbuf(port: u16, rcvbuf: i32) -> TcpStream {
    // SAFETY: plain socket calls on a descriptor owned by `stream` from its creation on; the
    // option and address pointers are valid for the lengths given.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream: TcpStream = std::os::fd::FromRawFd::from_raw_fd(fd);
        let r = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&rcvbuf as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
        assert_eq!(r, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
            },
            sin_zero: [0; 8],
        };
        let r = libc::connect(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(r, 0, "connect: {}", std::io::Error::last_os_error());
        stream
    }
}
