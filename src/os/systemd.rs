//! systemd integration without libsystemd: socket activation (`sd_listen_fds`) and readiness
//! notification (`sd_notify`).
//!
//! Both follow the protocols documented in `sd_listen_fds(3)` and `sd_notify(3)`:
//!
//! - Socket activation: systemd passes the sockets of `nix-binary-cache.socket` as file
//!   descriptors 3, 4, … and sets `LISTEN_PID` to the service's pid and `LISTEN_FDS` to their
//!   count. [`listen_fds`] checks that each one is a listening TCP socket and hands it back as a
//!   [`TcpListener`].
//! - Notification: with `Type=notify`, systemd sets `NOTIFY_SOCKET` to an `AF_UNIX` datagram
//!   socket (a path, or `@name` for the abstract namespace). [`notify`] sends one datagram such as
//!   `"READY=1\nSTATUS=serving 123 paths"` or `"STOPPING=1"`.
//!
//! - Two variables of our own (sd_notify(3) accepts any assignment; the `X_` prefix keeps
//!   ours apart from systemd's): [`listening`] (`X_LISTEN=`), the addresses served, sent as soon
//!   as they are bound, and [`INDEXED`] (`X_INDEXED=1`), sent after `READY=1` once every narinfo
//!   of the first scan has been read. systemd ignores both; a supervisor or a test harness that
//!   started the server on port 0 learns its address and when its index is complete without
//!   reading the log.
//!
//! Outside systemd both are no-ops: [`listen_fds`] returns no sockets and [`notify`] returns
//! `Ok(false)`.
//!
//! The environment is only read, never changed: `std::env::remove_var` is `unsafe` (it races
//! with any other thread reading the environment), and a safe library function cannot promise
//! that no other thread exists. Leaving the variables is harmless: `LISTEN_PID` names this
//! process, so a child process ignores `LISTEN_FDS` (the sockets are also close-on-exec, so a
//! child does not even have them); a second [`listen_fds`] call in this process is refused
//! rather than taking ownership of the same descriptors twice. A child process started by the
//! server would inherit `NOTIFY_SOCKET`; the server starts none.

use std::ffi::OsStr;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Set once [`listen_fds`] has taken ownership of the passed descriptors.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The listening sockets systemd passed to this process (socket activation), in the order of the
/// socket unit's `ListenStream=` lines; empty if the process was not socket-activated.
///
/// Each socket is checked to be a listening TCP socket (an error names the first one that is
/// not), marked close-on-exec, and put in blocking mode (what `accept` loops expect, whatever
/// the socket unit's `NonBlocking=` says).
///
/// The descriptors are owned by the returned listeners, so this succeeds with sockets only
/// once per process.
///
/// # Errors
/// `LISTEN_PID` or `LISTEN_FDS` is not a number; a passed descriptor is not a listening TCP
/// socket (the message names it, e.g. "fd 3 passed by systemd is not a listening TCP socket: it
/// is a datagram (UDP) socket, not a stream socket"); or the sockets were already taken by an
/// earlier call.
pub fn listen_fds() -> io::Result<Vec<TcpListener>> {
    let pid = std::env::var_os("LISTEN_PID");
    let fds = std::env::var_os("LISTEN_FDS");
    let range = listen_fds_from(
        env_str("LISTEN_PID", pid.as_deref())?,
        env_str("LISTEN_FDS", fds.as_deref())?,
        std::process::id(),
    )?;
    if range.is_empty() {
        return Ok(Vec::new());
    }
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::other(
            "the sockets passed by systemd (LISTEN_FDS) were already taken by an earlier call",
        ));
    }
    // SAFETY: systemd passed these descriptors to this process for it to own (LISTEN_PID is our
    // pid), nothing else in the program claims descriptors it did not open itself, and TAKEN
    // makes sure they are wrapped at most once.
    let result = unsafe { take_listeners(range) };
    if result.is_err() {
        // Nothing was taken: a failed call leaves the descriptors open and unowned.
        TAKEN.store(false, Ordering::SeqCst);
    }
    result
}

/// Sends `state` to the service manager (`sd_notify`), e.g. `"READY=1"`,
/// `"READY=1\nSTATUS=serving 123 paths"`, `"RELOADING=1"` or `"STOPPING=1"`.
///
/// Returns `Ok(false)` if `NOTIFY_SOCKET` is unset (not started by systemd, or not
/// `Type=notify`), `Ok(true)` once the datagram is sent.
///
/// # Errors
/// `NOTIFY_SOCKET` is neither an absolute path nor `@name`, or sending failed (e.g. the socket
/// does not exist); the message starts with `NOTIFY_SOCKET=<value>: `.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        None => Ok(false),
        Some(socket) if socket.is_empty() => Ok(false),
        Some(socket) => notify_to(&socket, state).map(|()| true),
    }
}

/// The notification naming the addresses the server listens on, in order:
/// `X_LISTEN=127.0.0.1:8080 [::1]:8080` (each one as [`std::net::SocketAddr`] prints and parses
/// it, separated by spaces).
pub fn listening(addrs: &[std::net::SocketAddr]) -> String {
    let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    format!("X_LISTEN={}", addrs.join(" "))
}

/// The notification that every narinfo of the first scan has been read (the log's `indexed`
/// line): sent after `READY=1`, which already comes once every narinfo is listed. Never sent if
/// the first scan failed (the log says why; requests look at the disk meanwhile).
pub const INDEXED: &str = "X_INDEXED=1";

/// A variable's value as UTF-8 (systemd only ever writes ASCII digits into these).
fn env_str<'a>(name: &str, value: Option<&'a OsStr>) -> io::Result<Option<&'a str>> {
    value
        .map(|v| {
            v.to_str()
                .ok_or_else(|| invalid(format!("{name}={} is not a number", v.to_string_lossy())))
        })
        .transpose()
}

/// The descriptors passed to process `our_pid`, given the values of `LISTEN_PID` and
/// `LISTEN_FDS`: an empty range if the variables are absent or `LISTEN_PID` names another
/// process (the variables were inherited from a socket-activated parent).
fn listen_fds_from(
    pid: Option<&str>,
    fds: Option<&str>,
    our_pid: u32,
) -> io::Result<std::ops::Range<RawFd>> {
    let none = LISTEN_FDS_START..LISTEN_FDS_START;
    let Some(pid) = pid else { return Ok(none) };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| invalid(format!("LISTEN_PID={pid} is not a number")))?;
    if pid != our_pid {
        return Ok(none);
    }
    let Some(fds) = fds else { return Ok(none) };
    let n: RawFd = fds
        .trim()
        .parse()
        .map_err(|_| invalid(format!("LISTEN_FDS={fds} is not a number")))?;
    if n < 0 {
        return Err(invalid(format!("LISTEN_FDS={fds} is negative")));
    }
    let end = LISTEN_FDS_START
        .checked_add(n)
        .ok_or_else(|| invalid(format!("LISTEN_FDS={fds} is too large")))?;
    Ok(LISTEN_FDS_START..end)
}

/// Checks every descriptor in `fds` and, only if all are listening TCP sockets, takes
/// ownership of them.
///
/// # Safety
/// Each descriptor in `fds` must be open and owned by no one else; on success the returned
/// listeners own (and eventually close) them. On error nothing is taken.
unsafe fn take_listeners(fds: impl Iterator<Item = RawFd> + Clone) -> io::Result<Vec<TcpListener>> {
    for fd in fds.clone() {
        // SAFETY: the caller guarantees `fd` is open; it is only borrowed for this check.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        check_listening_tcp(borrowed).map_err(|why| {
            io::Error::new(
                why.kind(),
                format!("fd {fd} passed by systemd is not a listening TCP socket: {why}"),
            )
        })?;
    }
    fds.map(|fd| {
        // SAFETY: the caller hands over ownership of `fd`.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        set_cloexec(&owned).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("fd {fd} passed by systemd: FD_CLOEXEC: {e}"),
            )
        })?;
        let listener = TcpListener::from(owned);
        listener.set_nonblocking(false).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("fd {fd} passed by systemd: blocking mode: {e}"),
            )
        })?;
        Ok(listener)
    })
    .collect()
}

/// `Ok` if `fd` is a listening TCP socket (IPv4 or IPv6), else an error saying what it is.
fn check_listening_tcp(fd: BorrowedFd<'_>) -> io::Result<()> {
    // fstat first, so that a regular file or pipe gets a clearer message than ENOTSOCK.
    // SAFETY: an all-zero `stat` is a valid value, and fstat only writes to it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the duration of the borrow; `st` is a valid out-pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &raw mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        let what = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => "a regular file",
            libc::S_IFDIR => "a directory",
            libc::S_IFIFO => "a pipe",
            libc::S_IFCHR => "a character device",
            libc::S_IFBLK => "a block device",
            _ => "not a socket",
        };
        return Err(invalid(format!("it is {what}")));
    }
    let domain = sockopt(fd, libc::SO_DOMAIN)?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        let what = match domain {
            libc::AF_UNIX => "AF_UNIX".to_string(),
            libc::AF_NETLINK => "AF_NETLINK".to_string(),
            libc::AF_PACKET => "AF_PACKET".to_string(),
            other => format!("address family {other}"),
        };
        return Err(invalid(format!("it is an {what} socket, not IPv4 or IPv6")));
    }
    let kind = sockopt(fd, libc::SO_TYPE)?;
    if kind != libc::SOCK_STREAM {
        let what = match kind {
            libc::SOCK_DGRAM => "a datagram (UDP) socket".to_string(),
            libc::SOCK_SEQPACKET => "a SOCK_SEQPACKET socket".to_string(),
            libc::SOCK_RAW => "a raw socket".to_string(),
            other => format!("a socket of type {other}"),
        };
        return Err(invalid(format!("it is {what}, not a stream socket")));
    }
    let protocol = sockopt(fd, libc::SO_PROTOCOL)?;
    if protocol != libc::IPPROTO_TCP {
        return Err(invalid(format!(
            "it is a stream socket of protocol {protocol}, not TCP"
        )));
    }
    if sockopt(fd, libc::SO_ACCEPTCONN)? == 0 {
        return Err(invalid(
            "it is a TCP socket that is not listening".to_string(),
        ));
    }
    Ok(())
}

/// An integer `SOL_SOCKET` option.
fn sockopt(fd: BorrowedFd<'_>, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len: libc::socklen_t = 4; // size_of::<c_int>()
    // SAFETY: `value` and `len` are valid out-pointers of the size `len` says.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

fn set_cloexec(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD on an open descriptor we own; no pointers involved.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFD);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        if flags & libc::FD_CLOEXEC == 0
            && libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags | libc::FD_CLOEXEC) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends `state` as one datagram to the socket named by a `NOTIFY_SOCKET` value: an absolute
/// path, or `@name` for a socket in the abstract namespace.
fn notify_to(socket: &OsStr, state: &str) -> io::Result<()> {
    let bytes = socket.as_bytes();
    let addr = match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
        Some(b'/') => SocketAddr::from_pathname(socket),
        _ => {
            return Err(invalid(format!(
                "NOTIFY_SOCKET={} is neither an absolute path nor an abstract socket (@name)",
                socket.to_string_lossy()
            )));
        }
    }
    .map_err(|e| annotate(socket, &e))?;
    let datagram = UnixDatagram::unbound().map_err(|e| annotate(socket, &e))?;
    let sent = datagram
        .send_to_addr(state.as_bytes(), &addr)
        .map_err(|e| annotate(socket, &e))?;
    if sent != state.len() {
        return Err(annotate(
            socket,
            &io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {sent} of {} bytes", state.len()),
            ),
        ));
    }
    Ok(())
}

fn annotate(socket: &OsStr, e: &io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("NOTIFY_SOCKET={}: {e}", socket.to_string_lossy()),
    )
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpStream, UdpSocket};
    use std::os::fd::{AsFd, IntoRawFd};
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;
    use std::sync::atomic::AtomicUsize;

    /// A directory of its own for each test, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "nix-binary-cache-systemd-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn notify_to_a_path_socket() {
        let dir = TempDir::new();
        let path = dir.0.join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1\nSTATUS=serving 123 paths").unwrap();
        assert_eq!(receive(&server), "READY=1\nSTATUS=serving 123 paths");
        notify_to(path.as_os_str(), "STOPPING=1").unwrap();
        assert_eq!(receive(&server), "STOPPING=1");
    }

    #[test]
    fn notify_to_an_abstract_socket() {
        let name = format!("nix-binary-cache-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(OsStr::new(&format!("@{name}")), "READY=1").unwrap();
        assert_eq!(receive(&server), "READY=1");
    }

    #[test]
    fn listening_names_every_address_so_that_it_parses_back() {
        let addrs: Vec<std::net::SocketAddr> = vec![
            "127.0.0.1:8080".parse().unwrap(),
            "[::1]:41234".parse().unwrap(),
        ];
        let state = listening(&addrs);
        assert_eq!(state, "X_LISTEN=127.0.0.1:8080 [::1]:41234");
        let dir = TempDir::new();
        let path = dir.0.join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), &state).unwrap();
        let received = receive(&server);
        let parsed: Vec<std::net::SocketAddr> = received
            .strip_prefix("X_LISTEN=")
            .unwrap()
            .split(' ')
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(parsed, addrs);
        assert_eq!(listening(&addrs[..1]), "X_LISTEN=127.0.0.1:8080");
        notify_to(path.as_os_str(), INDEXED).unwrap();
        assert_eq!(receive(&server), "X_INDEXED=1");
    }

    #[test]
    fn notify_errors_name_the_socket() {
        let e = notify_to(OsStr::new("relative/notify"), "READY=1").unwrap_err();
        assert!(
            e.to_string()
                .contains("NOTIFY_SOCKET=relative/notify is neither"),
            "{e}"
        );
        let dir = TempDir::new();
        let missing = dir.0.join("missing");
        let e = notify_to(missing.as_os_str(), "READY=1").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(
            e.to_string()
                .starts_with(&format!("NOTIFY_SOCKET={}: ", missing.display())),
            "{e}"
        );
    }

    #[test]
    fn not_activated() {
        let empty = |r: io::Result<std::ops::Range<RawFd>>| r.unwrap().is_empty();
        assert!(empty(listen_fds_from(None, None, 42)));
        assert!(empty(listen_fds_from(None, Some("2"), 42)));
        // Inherited from a socket-activated parent: not ours.
        assert!(empty(listen_fds_from(Some("41"), Some("2"), 42)));
        assert!(empty(listen_fds_from(Some("41"), Some("junk"), 42)));
        assert!(empty(listen_fds_from(Some("42"), None, 42)));
        assert!(empty(listen_fds_from(Some("42"), Some("0"), 42)));
    }

    #[test]
    fn activated() {
        assert_eq!(listen_fds_from(Some("42"), Some("1"), 42).unwrap(), 3..4);
        assert_eq!(listen_fds_from(Some("42"), Some("3"), 42).unwrap(), 3..6);
    }

    #[test]
    fn bad_variables_are_named() {
        let msg = |pid, fds| {
            listen_fds_from(Some(pid), Some(fds), 42)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(msg("42", "x"), "LISTEN_FDS=x is not a number");
        assert_eq!(msg("42", "-1"), "LISTEN_FDS=-1 is negative");
        assert_eq!(
            msg("42", "2147483647"),
            "LISTEN_FDS=2147483647 is too large"
        );
        assert_eq!(msg("pid", "1"), "LISTEN_PID=pid is not a number");
    }

    #[test]
    fn the_real_environment_is_not_activated() {
        // The test runner is not socket-activated; nothing in these tests sets LISTEN_PID.
        assert!(listen_fds().unwrap().is_empty());
    }

    #[test]
    fn a_listening_tcp_socket_passes() {
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        check_listening_tcp(v4.as_fd()).unwrap();
        if let Ok(v6) = TcpListener::bind("[::1]:0") {
            check_listening_tcp(v6.as_fd()).unwrap();
        }
    }

    #[test]
    fn other_descriptors_are_rejected() {
        let why = |fd: BorrowedFd<'_>| check_listening_tcp(fd).unwrap_err().to_string();

        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(
            why(udp.as_fd()),
            "it is a datagram (UDP) socket, not a stream socket"
        );

        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(why(file.as_fd()), "it is a regular file");

        let dir = TempDir::new();
        let unix = UnixListener::bind(dir.0.join("stream")).unwrap();
        assert_eq!(
            why(unix.as_fd()),
            "it is an AF_UNIX socket, not IPv4 or IPv6"
        );

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(
            why(client.as_fd()),
            "it is a TCP socket that is not listening"
        );
    }

    #[test]
    fn taking_a_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let fd = listener.into_raw_fd();
        // Clear close-on-exec, as systemd leaves it.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        // SAFETY: `fd` was just released by `into_raw_fd`.
        let mut taken = unsafe { take_listeners(std::iter::once(fd)) }.unwrap();
        let listener = taken.pop().unwrap();
        assert_eq!(listener.local_addr().unwrap(), addr);
        let flags = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        // Blocking again: accept waits for (and gets) the connection.
        let _client = TcpStream::connect(addr).unwrap();
        listener.accept().unwrap();
    }

    #[test]
    fn a_bad_descriptor_takes_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (a, b) = (listener.as_raw_fd(), udp.as_raw_fd());
        // SAFETY: the check fails on `b` before anything is wrapped, so nothing is taken.
        let e = unsafe { take_listeners([a, b].into_iter()) }.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "fd {b} passed by systemd is not a listening TCP socket: \
                 it is a datagram (UDP) socket, not a stream socket"
            )
        );
        // Both are still open and owned by their original owners.
        listener.local_addr().unwrap();
        udp.local_addr().unwrap();
    }
}
