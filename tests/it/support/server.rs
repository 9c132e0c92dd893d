//! The server binary on a free loopback port, started and stopped by the tests.
//!
//! Readiness is machine-readable: the harness binds a unix datagram socket of its own and
//! starts the server with `NOTIFY_SOCKET` naming it, as systemd does with `Type=notify`. The
//! server sends `X_LISTEN=ADDR` once it listens, `READY=1` once every narinfo is listed and
//! `X_INDEXED=1` once every one has been read (src/systemd.rs); [`Server::start`] returns after
//! the last. Nothing waits on the log or sleeps: a server that exits early closes its stderr,
//! and the thread reading it says so on the same socket.

use std::io::{BufRead, BufReader};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::http::{Reply, request};
use super::turns::{Turn, shared_turn};

pub const BIN: &str = env!("CARGO_BIN_EXE_nix-binary-cache");

/// How long a server may take to listen and read its index (a loaded 2-core machine).
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Sent to the harness's notification socket by the thread reading the server's stderr when
/// that ends: the server exited (or closed stderr), so no notification will come any more.
const STDERR_CLOSED: &str = "X_TEST_STDERR_CLOSED=1";

/// The server binary running on a free loopback port; killed when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
    log: Arc<Log>,
    /// The notification socket stays bound while the server runs: it notifies on SIGHUP and
    /// on stop too, and a vanished socket would make it log a warning.
    notifications: Notifications,
    /// Held while the server runs, so that a test that needs the machine alone waits for it.
    _turn: Turn,
}

impl Server {
    /// Starts `nix-binary-cache ROOT -p 0 --bind 127.0.0.1 EXTRA…` and waits until it listens
    /// and its index is complete.
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

    /// `SIGHUP`, returning once the server has reloaded (`RELOADING=1`, then `READY=1`).
    pub fn reload(&self) {
        self.signal("HUP");
        let deadline = Instant::now() + START_TIMEOUT;
        for expected in ["RELOADING=1", "READY=1"] {
            loop {
                match self.notifications.next(deadline) {
                    Some(message) if message == expected => break,
                    Some(message) if message == STDERR_CLOSED => {
                        panic!("the server exited on SIGHUP; log:\n{}", self.log())
                    }
                    Some(_) => continue,
                    None => panic!("no {expected} after SIGHUP; log:\n{}", self.log()),
                }
            }
        }
    }

    /// A sample without labels from `/metrics` on the main port, e.g.
    /// `metric("nbc_connections_open")` (that request's own connection included).
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").text();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    }

    /// Starts `command` (the server binary, or a wrapper that execs it) like [`Server::start`].
    pub fn start_command(mut command: Command, root: &Path, extra: &[&str]) -> Server {
        let turn = shared_turn();
        let notifications = Notifications::bind();
        let mut child = command
            .arg(root)
            .args(["-p", "0", "--bind", "127.0.0.1", "--log-level", "debug"])
            .args(extra)
            .env("NOTIFY_SOCKET", notifications.env_value())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start server");
        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        let closed = notifications.name.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.push(&line);
            }
            sink.end();
            Notifications::send(&closed, STDERR_CLOSED);
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let mut port = None;
        let mut ready = false;
        let failure = loop {
            let Some(message) = notifications.next(deadline) else {
                break format!("no X_INDEXED=1 within {START_TIMEOUT:?}");
            };
            for line in message.lines() {
                if let Some(addrs) = line.strip_prefix("X_LISTEN=") {
                    port = addrs
                        .split(' ')
                        .next()
                        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                        .map(|a| a.port());
                }
                ready |= line == "READY=1";
            }
            if message == STDERR_CLOSED {
                break "the server exited".to_string();
            }
            if message == "X_INDEXED=1" {
                match port {
                    Some(_) if ready => break String::new(),
                    _ => break format!("X_INDEXED=1 before X_LISTEN= and READY=1 ({port:?})"),
                }
            }
        };
        let Some(port) = port.filter(|_| failure.is_empty()) else {
            let _ = child.kill();
            let _ = child.wait();
            // The reader thread drains the pipe once the server is gone.
            log.wait(Duration::from_secs(5), |log| log.ended);
            panic!("server did not start: {failure}; log:\n{}", log.text());
        };
        Server {
            child,
            port,
            log,
            notifications,
            _turn: turn,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.text()
    }

    /// Waits until the log contains `needle` (up to `timeout`), woken by each new line.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        self.log.wait(timeout, |log| log.text.contains(needle))
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

/// The server's stderr as it comes, and a signal for each new line and for its end.
#[derive(Default)]
struct Log {
    state: Mutex<LogState>,
    changed: Condvar,
}

#[derive(Default)]
struct LogState {
    text: String,
    ended: bool,
}

impl Log {
    fn push(&self, line: &str) {
        let mut state = self.state.lock().unwrap();
        state.text.push_str(line);
        state.text.push('\n');
        self.changed.notify_all();
    }

    fn end(&self) {
        self.state.lock().unwrap().ended = true;
        self.changed.notify_all();
    }

    fn text(&self) -> String {
        self.state.lock().unwrap().text.clone()
    }

    /// Waits until `done(log)` holds or the deadline passes; returns the last check.
    fn wait(&self, timeout: Duration, done: impl Fn(&LogState) -> bool) -> bool {
        let end = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap();
        loop {
            if done(&state) {
                return true;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self.changed.wait_timeout(state, left).unwrap().0;
        }
    }
}

/// The harness's end of `NOTIFY_SOCKET`: a datagram socket in the abstract namespace (nothing
/// to clean up), one per server.
struct Notifications {
    socket: UnixDatagram,
    name: String,
}

impl Notifications {
    fn bind() -> Notifications {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let name = format!("nbc-test-notify-{}-{n}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr)
            .unwrap_or_else(|e| panic!("binding the notification socket @{name}: {e}"));
        Notifications { socket, name }
    }

    /// The value of `NOTIFY_SOCKET` for the server.
    fn env_value(&self) -> String {
        format!("@{}", self.name)
    }

    /// The next notification, or `None` once `deadline` has passed.
    fn next(&self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        self.socket.set_read_timeout(Some(left)).unwrap();
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("reading the notification socket: {e}"),
        }
    }

    /// Sends `message` to the socket named `name`, as the server would.
    fn send(name: &str, message: &str) {
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        if let Ok(socket) = UnixDatagram::unbound() {
            let _ = socket.send_to_addr(message.as_bytes(), &addr);
        }
    }
}

/// Waits until the server looks at a narinfo on disk again: a hit is served from memory for
/// `REVALIDATE_AFTER` after its last check.
pub fn wait_for_revalidation() {
    std::thread::sleep(nix_binary_cache::REVALIDATE_AFTER + Duration::from_millis(100));
}
