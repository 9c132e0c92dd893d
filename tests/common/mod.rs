//! Helpers shared by the integration tests: a server process on a free port, a raw HTTP
//! client, scratch copies of the fixture caches, and the fixture manifest.
#![allow(dead_code)] // Each test file uses a different subset.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_nix-binary-cache");

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// `tests/fixtures/manifest.env`, written by scripts/make-fixture.sh.
pub fn manifest() -> HashMap<String, String> {
    let text = std::fs::read_to_string(fixtures().join("manifest.env")).expect("manifest.env");
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("nbc-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A writable copy of one of the fixture caches.
pub fn copy_fixture(name: &str) -> TempDir {
    let tmp = TempDir::new(name);
    copy_dir(&fixtures().join(name), tmp.path());
    tmp
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The server binary running on a free loopback port; killed when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `nix-binary-cache ROOT -p 0 --bind 127.0.0.1 EXTRA…` and waits until it listens.
    pub fn start(root: &Path, extra: &[&str]) -> Server {
        Server::start_command(Command::new(BIN), root, extra)
    }

    /// Like [`Server::start`], with the open-file limit (soft and hard) set to `limit`.
    pub fn start_with_fd_limit(root: &Path, extra: &[&str], limit: u32) -> Server {
        let mut sh = Command::new("/bin/sh");
        sh.args([
            "-c",
            &format!("ulimit -n {limit} && exec \"$0\" \"$@\""),
            BIN,
        ]);
        Server::start_command(sh, root, extra)
    }

    /// Like [`Server::start`], with the file creation mask set to `umask` (octal, e.g. "0027"
    /// as the shipped unit's `UMask=`).
    pub fn start_with_umask(root: &Path, extra: &[&str], umask: &str) -> Server {
        let mut sh = Command::new("/bin/sh");
        sh.args(["-c", &format!("umask {umask} && exec \"$0\" \"$@\""), BIN]);
        Server::start_command(sh, root, extra)
    }

    /// Sends `signal` (e.g. "HUP") to the server.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Starts `command` (the server binary, or a wrapper that execs it) like [`Server::start`].
    pub fn start_command(mut command: Command, root: &Path, extra: &[&str]) -> Server {
        let mut child = command
            .arg(root)
            .args(["-p", "0", "--bind", "127.0.0.1", "--log-level", "debug"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start server");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line
                    .split("serving ")
                    .nth(1)
                    .and_then(|l| l.split(" on http://").nth(1))
                {
                    let port = rest
                        .split_whitespace()
                        .next()
                        .and_then(|a| a.rsplit(':').next()?.parse::<u16>().ok());
                    let _ = tx.send(port);
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(port)) => port,
            other => {
                let _ = child.kill();
                panic!(
                    "server did not start ({other:?}); log:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        let server = Server { child, port, log };
        // Requests are served while the first scan runs (from the disk); the tests that look
        // at counts, metrics or the log expect the index to be complete.
        assert!(
            server.wait_for_log("indexed ", Duration::from_secs(20)),
            "the first scan did not finish; log:\n{}",
            server.log()
        );
        server
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle` (up to `timeout`).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn get(&self, path: &str) -> Reply {
        request(self.port, "GET", path, &[])
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

/// One numeric field of /proc/PID/status (`"VmRSS:"`, `"Threads:"` …); 0 if absent.
pub fn proc_status_field(pid: u32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Resident and peak memory of a process, in KiB, from /proc.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    (
        proc_status_field(pid, "VmRSS:"),
        proc_status_field(pid, "VmHWM:"),
    )
}

/// TCP state of the server's end of the connection from `client_port` to `server_port`, from
/// /proc/net/tcp: `Some(1)` is ESTABLISHED; anything else means the server shut it down or
/// closed it (FIN_WAIT1 while its FIN waits behind unread data), `None` that it is gone.
pub fn server_side_state(server_port: u16, client_port: u16) -> Option<u8> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port_of = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 3 && port_of(f[1]) == Some(server_port) && port_of(f[2]) == Some(client_port))
            .then(|| u8::from_str_radix(f[3], 16).unwrap_or(0))
    })
}

/// Tests that open thousands of connections or load the cores run one at a time (within one
/// test binary).
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Raises this process's soft open-file limit to its hard limit (the server does the same for
/// itself); fails clearly if that is below `need`.
pub fn raise_open_file_limit(need: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    assert!(
        limit.rlim_cur >= need,
        "this test needs {need} open files but the hard limit is {} (ulimit -Hn)",
        limit.rlim_max
    );
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

/// Every file below `dir` (hidden temporaries included), relative, with its size, sorted: to
/// prove that a refused or failed upload changed nothing.
pub fn listing(dir: &Path) -> Vec<(String, u64)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, u64)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            } else {
                let len = e.metadata().unwrap().len();
                out.push((p.strip_prefix(base).unwrap().display().to_string(), len));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The nix32 sha256 of `bytes`: the name a NAR upload must carry.
pub fn nix32_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    nix_binary_cache::nix::nix32::encode(&sha2::Sha256::digest(bytes))
}

/// Waits until the server looks at a narinfo on disk again: a hit is served from memory for
/// `REVALIDATE_AFTER` after its last check.
pub fn wait_for_revalidation() {
    std::thread::sleep(nix_binary_cache::REVALIDATE_AFTER + Duration::from_millis(100));
}
