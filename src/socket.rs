//! Reaching the client's TCP socket behind a `tiny_http` request, for zero-copy file bodies.
//!
//! tiny_http hands out its response writer only as a `Box<dyn Write>`, which hides the socket, so
//! `sendfile` cannot be used through it. The socket is still one of this process's descriptors:
//! we find the descriptor whose peer address is the request's remote address, and work on our own
//! duplicate of it. The connection stays open while we hold tiny_http's writer, and a live TCP
//! connection's address pair is unique, so the duplicate is that connection's socket. (Two
//! connections from the *same* client address to two local addresses of ours could be confused,
//! but both lead to the same client, which is the only party that could arrange it.)

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Last descriptor seen for each peer, so that a keep-alive connection is found without a scan.
static KNOWN: Mutex<Option<HashMap<SocketAddr, RawFd>>> = Mutex::new(None);

/// Seconds a transfer may make no progress before it is aborted (SO_SNDTIMEO).
static STALL_SECS: AtomicU64 = AtomicU64::new(60);

/// Sets how long a client may read nothing before its transfer is aborted.
pub fn set_stall_timeout(timeout: std::time::Duration) {
    STALL_SECS.store(timeout.as_secs().max(1), Ordering::Relaxed);
}

/// Upper bound on remembered peers; past it the memo starts afresh.
const MAX_KNOWN: usize = 4096;

/// A duplicate of the socket connected to `peer`, if this process holds one.
pub fn find(peer: SocketAddr) -> Option<TcpStream> {
    let cached = KNOWN
        .lock()
        .ok()?
        .as_ref()
        .and_then(|m| m.get(&peer).copied());
    if let Some(fd) = cached
        && let Some(stream) = dup_if_peer(fd, peer)
    {
        return Some(stream);
    }
    let (fd, stream) = scan(peer)?;
    let mut known = KNOWN.lock().ok()?;
    let map = known.get_or_insert_with(HashMap::new);
    if map.len() >= MAX_KNOWN {
        map.clear();
    }
    map.insert(peer, fd);
    Some(stream)
}

/// Looks through `/proc/self/fd` for a socket connected to `peer`.
fn scan(peer: SocketAddr) -> Option<(RawFd, TcpStream)> {
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path()).is_ok_and(|target| {
            target
                .as_os_str()
                .as_encoded_bytes()
                .starts_with(b"socket:")
        });
        if is_socket && let Some(stream) = dup_if_peer(fd, peer) {
            return Some((fd, stream));
        }
    }
    None
}

/// Duplicates `fd` and keeps the duplicate only if it is a TCP socket whose peer is `peer`.
fn dup_if_peer(fd: RawFd, peer: SocketAddr) -> Option<TcpStream> {
    // SAFETY: `fd` is only borrowed for the `F_DUPFD_CLOEXEC` inside `try_clone_to_owned`. If it
    // was closed meanwhile the call fails with EBADF; if the number was reused, the peer check
    // below rejects the duplicate. Nothing is read or written through `fd` itself.
    let owned: OwnedFd = unsafe { BorrowedFd::borrow_raw(fd) }
        .try_clone_to_owned()
        .ok()?;
    let stream = TcpStream::from(owned);
    (stream.peer_addr().ok()? == peer).then_some(stream)
}

/// Sends `head` and then `len` bytes of `file` from `offset` on `socket`, with the kernel's
/// zero-copy path: `MSG_MORE` holds the head back so that it leaves in one segment with the
/// first file bytes, and `sendfile(2)` moves the body from the page cache to the socket.
/// (std's `io::copy` uses `sendfile` only towards pipes, not sockets, so we call it here.)
pub fn send_head_and_file(
    socket: &mut TcpStream,
    head: &[u8],
    file: &mut File,
    offset: u64,
    len: u64,
) -> io::Result<u64> {
    let stall = std::time::Duration::from_secs(STALL_SECS.load(Ordering::Relaxed));
    socket.set_write_timeout(Some(stall))?;
    send_more(socket, head)?;
    sendfile_all(socket, file, offset, len)?;
    Ok(len)
}

/// `sendfile(2)` until `len` bytes from `offset` are sent.
fn sendfile_all(socket: &TcpStream, file: &File, offset: u64, len: u64) -> io::Result<()> {
    let mut pos = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    let mut left = len;
    while left > 0 {
        // Linux moves at most 0x7fff_f000 bytes per call.
        let chunk = left.min(0x7fff_f000) as usize;
        // SAFETY: both descriptors are owned by live objects; `pos` is a valid off_t the kernel
        // advances by the bytes sent.
        let n = unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut pos, chunk) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                // SO_SNDTIMEO expired: the client stopped reading.
                io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client stopped reading",
                    ));
                }
                _ => return Err(e),
            }
        }
        if n == 0 {
            // The file shrank under us: the client must not take a short body for a whole one.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than announced",
            ));
        }
        left -= n as u64;
    }
    Ok(())
}

/// `send(2)` with `MSG_MORE` until all of `buf` is queued.
fn send_more(socket: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: the pointer and length come from a live slice; the descriptor is owned by
        // `socket` for the duration of the call.
        let n = unsafe {
            libc::send(
                socket.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_MORE | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn finds_the_accepted_socket_by_peer_and_sends_a_file() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_accepted, peer) = listener.accept().unwrap();

        let mut found = find(peer).expect("socket found");
        assert_eq!(found.peer_addr().unwrap(), peer);

        let path = std::env::temp_dir().join(format!("nbc-socket-test-{}", std::process::id()));
        File::create(&path)
            .unwrap()
            .write_all(b"0123456789")
            .unwrap();
        let mut file = File::open(&path).unwrap();
        let sent = send_head_and_file(&mut found, b"HEAD:", &mut file, 2, 5).unwrap();
        assert_eq!(sent, 5);
        drop(found);
        drop(_accepted);
        let mut got = String::new();
        client.read_to_string(&mut got).unwrap();
        assert_eq!(got, "HEAD:23456");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn unknown_peer_is_not_found() {
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(find(nobody).is_none());
    }
}
