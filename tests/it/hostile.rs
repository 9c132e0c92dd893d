//! Hostile clients, one test per finding of issue 11 ("a connection engine fit for the open
//! network"): each sends what broke, starved or fooled the old thread-per-connection layer
//! and checks what the server must do instead. Every test drives the real binary over raw
//! sockets on loopback.
//!
//! Time bounds are generous (a loaded 2-core machine) but each one is far below what the old
//! layer took. The tests with thousands of connections run alone (`support::turns`).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::support::*;

const TOKEN: &str = "hostile-token";

/// `n` keep-alive connections that each sent one request (all at once) and got its 200.
fn answered_connections(port: u16, n: usize) -> Vec<TcpStream> {
    let mut open = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        s.write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        open.push(s);
    }
    for (i, s) in open.iter_mut().enumerate() {
        let status = read_reply(s, Duration::from_secs(20)).map(|r| r.status);
        assert_eq!(status, Some(200), "connection {i}");
    }
    open
}

/// A loopback port nothing listens on (for `--metrics ADDR`).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).unwrap()
}

/// Reads the first complete response (head, and the body its Content-Length announces) off
/// `stream`, waiting up to `within`; `None` if none arrived whole.
fn read_reply(stream: &mut TcpStream, within: Duration) -> Option<Reply> {
    let deadline = Instant::now() + within;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(reply) = complete_reply(&bytes) {
            return Some(reply);
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return complete_reply(&bytes),
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return complete_reply(&bytes),
        }
    }
}

/// The first response in `bytes` if it is all there.
fn complete_reply(bytes: &[u8]) -> Option<Reply> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let reply = parse_replies(bytes, false).into_iter().next()?;
    let len = reply
        .header("Content-Length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    (reply.status < 200 || bytes.len() >= end + 4 + len).then_some(reply)
}

/// Reads (and keeps) everything until the server closes the connection or `within` passes;
/// the time it took to close, or `None` if it stayed open.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, Option<Duration>) {
    let start = Instant::now();
    let deadline = start + within;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return (bytes, None);
        };
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (bytes, Some(start.elapsed())),
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            // A reset is a close too.
            Err(_) => return (bytes, Some(start.elapsed())),
        }
    }
}

/// Sends `raw` on a new connection and returns the first response (within 10 s).
fn exchange(port: u16, raw: &[u8]) -> Option<Reply> {
    let mut stream = connect(port);
    stream.write_all(raw).unwrap();
    read_reply(&mut stream, Duration::from_secs(10))
}

/// A fresh `GET path` must be answered 200 within `within`.
fn assert_served(port: u16, path: &str, within: Duration) {
    let start = Instant::now();
    let mut stream = connect(port);
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let reply = read_reply(&mut stream, within);
    let took = start.elapsed();
    let status = reply.map(|r| r.status);
    assert_eq!(
        status,
        Some(200),
        "GET {path} was not answered within {within:?} (took {took:?})"
    );
}

/// A copy of cache-xz served with uploads on (token file beside it), plus extra flags.
fn upload_server(extra: &[&str]) -> (TempDir, TempDir, Server) {
    let dir = copy_fixture("cache-xz");
    let secrets = TempDir::new("secrets");
    let tokens = secrets.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let mut args = vec!["--upload-token-file", tokens.to_str().unwrap()];
    args.extend_from_slice(extra);
    let server = Server::start(dir.path(), &args);
    (dir, secrets, server)
}

/// The first narinfo of the fixture (TOP): its URL path and its text.
fn top_narinfo(dir: &std::path::Path) -> (String, String) {
    let m = manifest();
    let hash = &m["TOP"]["/nix/store/".len()..][..32];
    let text = std::fs::read_to_string(dir.join(format!("{hash}.narinfo"))).unwrap();
    (format!("/{hash}.narinfo"), text)
}

/// The name of a NAR of the fixture, as a URL path.
fn fixture_nar(dir: &std::path::Path) -> String {
    let name = std::fs::read_dir(dir.join("nar"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .min()
        .unwrap();
    format!("/nar/{name}")
}

/// A copy of cache-xz with a large sparse NAR (no disk, read like any file).
fn cache_with_big_nar(size: u64) -> (TempDir, String) {
    let dir = copy_fixture("cache-xz");
    let nar = format!("/nar/{}.nar", "3".repeat(52));
    std::fs::File::create(dir.path().join(&nar[1..]))
        .unwrap()
        .set_len(size)
        .unwrap();
    (dir, nar)
}

/// A thread count and resident memory (KiB) of a process, from /proc.
fn threads(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// Bytes the server's sockets on `server_port` hold unacknowledged or unsent (the `tx_queue`
/// column of /proc/net/tcp), summed.
fn server_send_queues(server_port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{server_port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() > 4 && f[1].ends_with(&local) && f[3] == "01").then(|| {
                let tx = f[4].split(':').next().unwrap_or("0");
                u64::from_str_radix(tx, 16).unwrap_or(0)
            })
        })
        .sum()
}

/// Closes `stream` with a reset instead of a FIN (SO_LINGER with a zero timeout).
fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a descriptor `stream` owns, with a valid pointer and length.
    let r = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(stream);
}

/// No panic anywhere in the server's log.
fn assert_no_panic(server: &Server) {
    let log = server.log();
    assert!(
        !log.contains("panicked"),
        "the server panicked:\n{}",
        log.lines()
            .filter(|l| l.contains("panicked"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// One request used to kill the server: a GET declaring an enormous body.

#[test]
fn enormous_content_length_on_a_get_is_answered_and_service_goes_on() {
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let server = Server::start(
        &fixtures().join("cache-xz"),
        &["--threads", "2", "--metrics", &metrics],
    );
    for (port, path) in [(server.port, "/nix-cache-info"), (metrics_port, "/metrics")] {
        for length in ["100000000000000", "18446744073709551615"] {
            // More than --threads of them: no worker may be lost to one.
            for round in 0..4 {
                let raw =
                    format!("GET {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n");
                let reply = exchange(port, raw.as_bytes());
                let status = reply.map(|r| r.status);
                assert!(
                    status.is_some_and(|s| s < 500),
                    "GET {path} with Content-Length {length} (round {round}) on port {port}: \
                     {status:?}"
                );
            }
            assert_served(port, path, Duration::from_secs(10));
        }
    }
    assert_no_panic(&server);
}

// Four connections used to stop all service.

#[test]
fn bodies_that_never_come_do_not_stop_service() {
    let server = Server::start(&fixtures().join("cache-xz"), &["--threads", "2"]);
    // Twice --threads of them, held open while others are served.
    let held: Vec<TcpStream> = (0..4)
        .flat_map(|_| ["GET /nix-cache-info", "PUT /nar/x.nar"])
        .map(|line| {
            let mut s = connect(server.port);
            write!(
                s,
                "{line} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nonly this"
            )
            .unwrap();
            s
        })
        .collect();
    for _ in 0..4 {
        assert_served(server.port, "/nix-cache-info", Duration::from_secs(5));
    }
    drop(held);
}

#[test]
fn a_client_pipelining_without_reading_does_not_stop_service() {
    let dir = copy_fixture("cache-xz");
    let (narinfo, _) = top_narinfo(dir.path());
    let server = Server::start(dir.path(), &["--threads", "2"]);
    // Its answers (tens of MB) cannot fit the socket buffers of either side.
    let stream = connect_with_small_rcvbuf(server.port, SMALL_RCVBUF);
    let mut writer = stream.try_clone().unwrap();
    let request = format!("GET {narinfo} HTTP/1.1\r\nHost: x\r\n\r\n");
    let pipelined = request.repeat(40_000);
    let pusher = std::thread::spawn(move || {
        // Blocks once the server stops reading; ends when the socket is shut down below.
        let _ = writer.write_all(pipelined.as_bytes());
    });
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..4 {
        assert_served(server.port, &narinfo, Duration::from_secs(5));
    }
    let _ = stream.shutdown(Shutdown::Both);
    pusher.join().unwrap();
}

#[test]
fn http_2_request_line_gets_505_and_the_connection_closes() {
    let server = Server::start(&fixtures().join("cache-xz"), &[]);
    let mut stream = connect(server.port);
    stream
        .write_all(b"GET /nix-cache-info HTTP/2.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let (bytes, closed) = read_until_closed(&mut stream, Duration::from_secs(10));
    let replies = parse_replies(&bytes, false);
    assert_eq!(
        replies.iter().map(|r| r.status).collect::<Vec<_>>(),
        [505],
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(closed.is_some(), "the connection was left open");
    assert_served(server.port, "/nix-cache-info", Duration::from_secs(5));
}

// A connection used to cost a thread, and finding its socket a scan of /proc/self/fd.

/// Median time of `n` NAR GETs, each on a fresh connection.
fn fresh_nar_get_median(port: u16, nar: &str, n: usize) -> Duration {
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let start = Instant::now();
            let reply = request(port, "GET", nar, &[]);
            assert_eq!(reply.status, 200);
            start.elapsed()
        })
        .collect();
    times.sort();
    times[n / 2]
}

#[test]
fn ten_thousand_idle_connections_hold_no_threads_little_memory_and_no_latency() {
    const IDLE: usize = 10_000;
    let _turn = one_at_a_time();
    raise_open_file_limit(IDLE as u64 + 500);
    let dir = copy_fixture("cache-xz");
    let nar = fixture_nar(dir.path());
    let server = Server::start(dir.path(), &["--access-log", "off"]);
    let pid = server.pid();
    let baseline = fresh_nar_get_median(server.port, &nar, 21);
    let threads_before = threads(pid);
    let (rss_before, _) = memory_kib(pid);

    // Keep-alive connections that made one request each, then went quiet.
    let idle = answered_connections(server.port, IDLE);
    std::thread::sleep(Duration::from_millis(500));

    let threads_after = threads(pid);
    let (rss_after, _) = memory_kib(pid);
    let loaded = fresh_nar_get_median(server.port, &nar, 21);
    let rss_growth_mib = rss_after.saturating_sub(rss_before) / 1024;
    eprintln!(
        "{IDLE} idle connections: threads {threads_before} -> {threads_after}, RSS \
         {rss_before} -> {rss_after} KiB, fresh NAR GET median {baseline:?} -> {loaded:?}"
    );
    assert!(
        threads_after <= 40,
        "{threads_after} threads with {IDLE} idle connections"
    );
    assert!(
        rss_growth_mib <= 48,
        "RSS grew {rss_growth_mib} MiB with {IDLE} idle connections"
    );
    let bound = (baseline * 3).max(Duration::from_millis(25));
    assert!(
        loaded <= bound,
        "a fresh NAR GET took {loaded:?} with {IDLE} idle connections ({baseline:?} without)"
    );
    drop(idle);
}

/// A pids cgroup holding one process, with its task limit: the way a container or systemd's
/// `TasksMax=` caps a service's threads. Removed (the process moved back out) when dropped.
struct TaskLimit {
    dir: std::path::PathBuf,
    parent: std::path::PathBuf,
    pid: u32,
}

impl TaskLimit {
    /// Moves `pid` into a new pids cgroup (v1 `/sys/fs/cgroup/pids`, or v2) whose limit is the
    /// number of tasks it has now: it cannot start one more thread.
    fn freeze_threads(pid: u32) -> TaskLimit {
        let v1 = std::path::Path::new("/sys/fs/cgroup/pids");
        let v2 = std::path::Path::new("/sys/fs/cgroup");
        let parent = if v1.join("cgroup.procs").exists() {
            v1.to_path_buf()
        } else {
            let controllers =
                std::fs::read_to_string(v2.join("cgroup.subtree_control")).unwrap_or_default();
            assert!(
                controllers.split_whitespace().any(|c| c == "pids"),
                "this test needs a writable pids cgroup (run the tests as root, with cgroup v1's \
                 pids hierarchy or cgroup v2's pids controller enabled in /sys/fs/cgroup)"
            );
            v2.to_path_buf()
        };
        let dir = parent.join(format!("nbc-hostile-{}-{pid}", std::process::id()));
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("creating the pids cgroup {}: {e}", dir.display()));
        let limit = TaskLimit { dir, parent, pid };
        std::fs::write(limit.dir.join("cgroup.procs"), pid.to_string()).unwrap();
        let current = std::fs::read_to_string(limit.dir.join("pids.current")).unwrap();
        std::fs::write(limit.dir.join("pids.max"), current.trim()).unwrap();
        limit
    }

    /// How often a task could not be created because of the limit.
    fn refusals(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("pids.events"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("max "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    }
}

impl Drop for TaskLimit {
    fn drop(&mut self) {
        let _ = std::fs::write(self.parent.join("cgroup.procs"), self.pid.to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn a_server_that_cannot_start_threads_keeps_serving() {
    const CONNECTIONS: usize = 2000;
    let _turn = one_at_a_time();
    raise_open_file_limit(CONNECTIONS as u64 + 200);
    let (_dir, _secrets, server) = upload_server(&["--threads", "2", "--access-log", "off"]);
    let limit = TaskLimit::freeze_threads(server.pid());
    // Many connections at once, each answered, and kept open.
    let open = answered_connections(server.port, CONNECTIONS);
    // An upload wants a thread of its own; without one it must still be served.
    let nar = b"uploaded without a thread".to_vec();
    let path = format!("/nar/{}.nar", nix32_sha256(&nar));
    let auth = format!("Bearer {TOKEN}");
    assert_eq!(put(server.port, &path, &nar, Some(&auth)).status, 200);
    assert!(
        limit.refusals() > 0,
        "the task limit was never reached: the test proved nothing"
    );
    assert_served(server.port, &path, Duration::from_secs(5));
    assert_served(server.port, "/nix-cache-info", Duration::from_secs(5));
    assert_no_panic(&server);
    drop(open);
}

// The request head had no limits.

#[test]
fn endless_request_lines_are_refused_and_memory_stays_bounded() {
    let _turn = one_at_a_time();
    let server = Server::start(&fixtures().join("cache-xz"), &[]);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let mut stream = connect(server.port);
            let mut writer = stream.try_clone().unwrap();
            let pusher = std::thread::spawn(move || {
                let mut line = b"GET /".to_vec();
                line.resize(1 << 20, b'a');
                for _ in 0..20 {
                    if writer.write_all(&line).is_err() {
                        return;
                    }
                }
            });
            let reader =
                std::thread::spawn(move || read_until_closed(&mut stream, Duration::from_secs(30)));
            (pusher, reader)
        })
        .collect();
    for (pusher, reader) in clients {
        let (bytes, closed) = reader.join().unwrap();
        pusher.join().unwrap();
        let statuses: Vec<u16> = parse_replies(&bytes, false)
            .iter()
            .map(|r| r.status)
            .collect();
        assert!(
            statuses == [414] || statuses == [431],
            "an endless request line got {statuses:?}"
        );
        assert!(closed.is_some(), "the connection was left open");
    }
    let (_, peak) = memory_kib(server.pid());
    assert!(
        peak < 64 * 1024,
        "the server's memory peaked at {peak} KiB for 4 endless request lines"
    );
    assert_served(server.port, "/nix-cache-info", Duration::from_secs(5));
}

/// Sends `raw` whole (from a thread, since the server may stop reading) and returns the
/// statuses of what came back, and whether the connection was closed.
fn send_big(port: u16, raw: Vec<u8>) -> (Vec<u16>, bool) {
    let mut stream = connect(port);
    let mut writer = stream.try_clone().unwrap();
    let pusher = std::thread::spawn(move || {
        let _ = writer.write_all(&raw);
    });
    let (bytes, closed) = read_until_closed(&mut stream, Duration::from_secs(15));
    let _ = stream.shutdown(Shutdown::Both);
    pusher.join().unwrap();
    let statuses = parse_replies(&bytes, false)
        .iter()
        .map(|r| r.status)
        .collect();
    (statuses, closed.is_some())
}

#[test]
fn ten_thousand_headers_get_431() {
    let server = Server::start(&fixtures().join("cache-xz"), &[]);
    let mut raw = String::from("GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n");
    for i in 0..10_000 {
        raw.push_str(&format!("X-{i}: 1\r\n"));
    }
    raw.push_str("\r\n");
    let (statuses, closed) = send_big(server.port, raw.into_bytes());
    assert_eq!(statuses, [431]);
    assert!(closed, "the connection was left open");
}

#[test]
fn a_megabyte_header_value_gets_431() {
    let server = Server::start(&fixtures().join("cache-xz"), &[]);
    let raw = format!(
        "GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "v".repeat(1 << 20)
    );
    let (statuses, closed) = send_big(server.port, raw.into_bytes());
    assert_eq!(statuses, [431]);
    assert!(closed, "the connection was left open");
}

// Request framing was lax.

/// Sends `raw` (keep-alive, no `Connection: close`) and returns every response that came back
/// before the server closed the connection, which it must do within 10 s.
fn refused(port: u16, raw: &str) -> Vec<Reply> {
    let mut stream = connect(port);
    stream.write_all(raw.as_bytes()).unwrap();
    let (bytes, closed) = read_until_closed(&mut stream, Duration::from_secs(10));
    assert!(
        closed.is_some(),
        "the connection stayed open after: {raw:?}\ngot: {}",
        String::from_utf8_lossy(&bytes)
    );
    parse_replies(&bytes, false)
}

fn statuses(replies: &[Reply]) -> Vec<u16> {
    replies.iter().map(|r| r.status).collect()
}

#[test]
fn transfer_codings_other_than_chunked_get_501() {
    let server = Server::start(&fixtures().join("cache-xz"), &[]);
    for coding in ["gzip", "gzip, chunked", "identity"] {
        let raw = format!(
            "GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {coding}\r\n\r\n\
             0\r\n\r\n"
        );
        let replies = refused(server.port, &raw);
        assert_eq!(statuses(&replies), [501], "Transfer-Encoding: {coding}");
        assert_eq!(replies[0].header("Connection"), Some("close"));
    }
}

#[test]
fn transfer_encoding_with_content_length_gets_400() {
    let server = Server::start(&fixtures().join("cache-xz"), &[]);
    let raw = "GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
               Content-Length: 5\r\n\r\n0\r\n\r\n";
    let replies = refused(server.port, raw);
    assert_eq!(statuses(&replies), [400]);
    assert_eq!(replies[0].header("Connection"), Some("close"));
}

#[test]
fn invalid_content_lengths_get_400_and_close() {
    let server = Server::start(&fixtures().join("cache-xz"), &[]);
    for value in ["abc", "67, 67", "-1", "1e3", ""] {
        let raw =
            format!("GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\n");
        let replies = refused(server.port, &raw);
        assert_eq!(statuses(&replies), [400], "Content-Length: {value:?}");
        assert_eq!(replies[0].header("Connection"), Some("close"));
    }
    let twice = "GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\
                 Content-Length: 0\r\n\r\n";
    assert_eq!(statuses(&refused(server.port, twice)), [400]);
}

/// A request hidden in a body, which must never be answered as a request of its own.
const SMUGGLED: &str = "GET /smuggled-canary.narinfo HTTP/1.1\r\nHost: x\r\n\r\n";

fn chunk(data: &str) -> String {
    format!("{:x}\r\n{data}\r\n", data.len())
}

/// Reads what the server sends for `within` (or until it closes): all its responses.
fn replies_for(stream: &mut TcpStream, within: Duration) -> Vec<Reply> {
    let (bytes, _) = read_until_closed(stream, within);
    parse_replies(&bytes, false)
}

#[test]
fn a_chunked_body_on_a_get_is_not_run_as_a_request() {
    let server = Server::start(&fixtures().join("cache-xz"), &[]);
    let raw = format!(
        "GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
        chunk(SMUGGLED)
    );
    let mut stream = connect(server.port);
    stream.write_all(raw.as_bytes()).unwrap();
    let replies = replies_for(&mut stream, Duration::from_secs(3));
    assert_eq!(statuses(&replies), [200], "one request, one response");
    // The connection is still usable: the body was skipped, not parsed.
    let mut again = connect(server.port);
    again
        .write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_reply(&mut again, Duration::from_secs(5)).map(|r| r.status),
        Some(200)
    );
    assert!(
        !server.log().contains("smuggled-canary"),
        "the body ran as a request:\n{}",
        server.log()
    );
}

#[test]
fn an_unauthenticated_chunked_put_gets_401_and_its_body_is_never_a_request() {
    let (dir, _secrets, server) = upload_server(&[]);
    let before = listing(dir.path());
    let raw = format!(
        "PUT /nar/{}.nar HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
        "1".repeat(52),
        chunk(SMUGGLED)
    );
    let replies = refused(server.port, &raw);
    assert_eq!(statuses(&replies), [401], "one request, one response");
    assert_eq!(replies[0].header("Connection"), Some("close"));
    assert!(
        !server.log().contains("smuggled-canary"),
        "the body ran as a request:\n{}",
        server.log()
    );
    assert_eq!(listing(dir.path()), before);
}

#[test]
fn connection_close_is_honoured_after_refusals() {
    let (_dir, _secrets, server) = upload_server(&[]);
    // A refused upload closes even though the client asked to keep the connection, so that
    // its unread body is never read as the next request.
    let raw = format!(
        "PUT /nar/{}.nar HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
        "1".repeat(52),
        SMUGGLED.len()
    );
    let replies = refused(server.port, &raw);
    assert_eq!(statuses(&replies), [401]);
    assert_eq!(replies[0].header("Connection"), Some("close"));
    // A client's own `Connection: close` on a 404 is honoured too.
    let replies = refused(
        server.port,
        "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /nix-cache-info HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(statuses(&replies), [404]);
    assert!(!server.log().contains("smuggled-canary"));
}

// Bodies were not checked for length.

/// A narinfo upload whose body is cut before `References:`; `chunked` frames it in one chunk
/// that announces the whole narinfo. The client then closes its side.
fn upload_cut_narinfo(chunked: bool) {
    let (dir, _secrets, server) = upload_server(&["--rescan-interval", "3600"]);
    let (path, text) = top_narinfo(dir.path());
    std::fs::remove_file(dir.path().join(&path[1..])).unwrap();
    wait_for_revalidation();
    assert_eq!(server.get(&path).status, 404);
    let before = listing(dir.path());
    let cut = &text[..text.find("References:").unwrap()];
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    // The announced length is that of a narinfo with many references: more than the old
    // layer read ahead whole (1 KiB) before handing the request over.
    let announced = text.len() + 4096;
    let raw = if chunked {
        format!(
            "PUT {path} HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n{announced:x}\r\n{cut}"
        )
    } else {
        format!("PUT {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {announced}\r\n\r\n{cut}")
    };
    let mut stream = connect(server.port);
    stream.write_all(raw.as_bytes()).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let (bytes, _) = read_until_closed(&mut stream, Duration::from_secs(15));
    let replies = parse_replies(&bytes, false);
    assert_eq!(
        statuses(&replies),
        [400],
        "a cut upload: {}",
        String::from_utf8_lossy(&bytes)
    );
    assert_eq!(server.get(&path).status, 404, "the cut narinfo is served");
    assert_eq!(listing(dir.path()), before, "the cut narinfo left files");
}

#[test]
fn an_upload_cut_short_is_not_stored() {
    upload_cut_narinfo(false);
}

#[test]
fn a_chunked_upload_cut_inside_a_chunk_is_not_stored() {
    upload_cut_narinfo(true);
}

// Refusals used to wait for the body.

#[test]
fn an_unauthenticated_put_is_refused_at_once_without_100_continue() {
    let (_dir, _secrets, server) = upload_server(&[]);
    let path = format!("/nar/{}.nar", "1".repeat(52));
    // With Expect: the go-ahead must not come; without: the 401 must not wait for the body.
    for expect in ["Expect: 100-continue\r\n", ""] {
        let mut stream = connect(server.port);
        write!(
            stream,
            "PUT {path} HTTP/1.1\r\nHost: x\r\n{expect}Content-Length: 1000000000000\r\n\r\n"
        )
        .unwrap();
        if expect.is_empty() {
            stream.write_all(&[b'x'; 4096]).unwrap();
        }
        let reply = read_reply(&mut stream, Duration::from_secs(5)).map(|r| r.status);
        assert_eq!(reply, Some(401), "{expect:?}");
    }
}

#[test]
fn an_oversized_authenticated_upload_gets_413_without_100_continue() {
    let (_dir, _secrets, server) = upload_server(&["--max-upload-size", "1M"]);
    let path = format!("/nar/{}.nar", "1".repeat(52));
    let mut stream = connect(server.port);
    write!(
        stream,
        "PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Expect: 100-continue\r\nContent-Length: 1000000000\r\n\r\n"
    )
    .unwrap();
    let reply = read_reply(&mut stream, Duration::from_secs(5));
    assert_eq!(reply.as_ref().map(|r| r.status), Some(413), "{reply:?}");
    assert_eq!(reply.unwrap().header("Connection"), Some("close"));
}

// Timeouts did not do what they said.

#[test]
fn a_kept_alive_connection_is_closed_at_the_idle_timeout_not_the_header_timeout() {
    let server = Server::start(
        &fixtures().join("cache-xz"),
        &["--header-timeout", "2", "--idle-timeout", "6"],
    );
    let mut stream = connect(server.port);
    stream
        .write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_reply(&mut stream, Duration::from_secs(5)).map(|r| r.status),
        Some(200)
    );
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(20));
    let closed = closed.expect("never closed");
    assert!(
        closed >= Duration::from_millis(4500) && closed <= Duration::from_secs(12),
        "closed {closed:?} after the response (header timeout 2 s, idle timeout 6 s)"
    );
}

#[test]
fn a_client_that_reads_nothing_is_cut_at_the_stall_timeout() {
    let (dir, nar) = cache_with_big_nar(256 << 20);
    let server = Server::start(dir.path(), &["--stall-timeout", "2"]);
    let mut stream = connect_with_small_rcvbuf(server.port, SMALL_RCVBUF);
    let client_port = stream.local_addr().unwrap().port();
    let start = Instant::now();
    write!(stream, "GET {nar} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let cut = loop {
        if server_side_state(server.port, client_port) != Some(1) {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the transfer was never cut"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        cut >= Duration::from_millis(1500) && cut <= Duration::from_secs(6),
        "a client that read nothing was cut after {cut:?} (stall timeout 2 s)"
    );
    assert!(
        server.wait_for_log("aborted", Duration::from_secs(5)),
        "the abandoned transfer is not in the access log"
    );
}

#[test]
fn a_stalled_upload_releases_its_slot_at_the_stall_timeout() {
    let (dir, _secrets, server) = upload_server(&["--max-uploads", "1", "--stall-timeout", "2"]);
    // The first upload announces 100 kB, sends 10 bytes and stalls.
    let mut stalled = connect(server.port);
    write!(
        stalled,
        "PUT /nar/{}.nar HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: 100000\r\n\r\n0123456789",
        "1".repeat(52)
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || upload_in_progress(dir.path())),
        "the first upload never took the place"
    );
    let start = Instant::now();
    let nar = b"the second upload".to_vec();
    let path = format!("/nar/{}.nar", nix32_sha256(&nar));
    // The second upload waits for the place (issue 12: no 503 for a PUT) and gets it when the
    // stalled one is abandoned at its stall timeout.
    let status = put(server.port, &path, &nar, Some(&format!("Bearer {TOKEN}"))).status;
    let took = start.elapsed();
    assert_eq!(status, 200, "the second upload after {took:?}");
    assert!(
        took >= Duration::from_millis(1000),
        "the slot was not held while the first upload stalled: answered after {took:?}"
    );
    assert!(took <= Duration::from_secs(10), "released after {took:?}");
    let first = read_reply(&mut stalled, Duration::from_secs(5)).map(|r| r.status);
    assert!(
        first.is_none_or(|s| s >= 400),
        "the stalled upload got {first:?}"
    );
    assert_eq!(server.get(&path).body, nar);
    assert!(
        !dir.path()
            .join(format!("nar/{}.nar", "1".repeat(52)))
            .exists()
    );
}

#[test]
fn over_a_thousand_non_reading_downloads_do_not_stop_narinfo_service() {
    const READERS: usize = 1100;
    let _turn = one_at_a_time();
    raise_open_file_limit(READERS as u64 + 200);
    let (dir, nar) = cache_with_big_nar(64 << 20);
    let (narinfo, _) = top_narinfo(dir.path());
    let server = Server::start(dir.path(), &["--access-log", "off"]);
    let readers: Vec<TcpStream> = (0..READERS)
        .map(|_| {
            let mut s = connect_with_small_rcvbuf(server.port, SMALL_RCVBUF);
            write!(s, "GET {nar} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..5 {
        assert_served(server.port, &narinfo, Duration::from_secs(3));
    }
    // What they pin in the kernel stays small: unbounded, a thousand of them took every
    // socket's send buffer to megabytes, reached the host's `tcp_mem` limit and stalled all
    // TCP on it.
    let queued = server_send_queues(server.port);
    let per_reader = queued / READERS as u64;
    eprintln!("{READERS} non-reading downloads: {queued} bytes queued by the server");
    assert!(
        per_reader <= 1 << 20,
        "the server queues {per_reader} bytes per client that reads nothing"
    );
    drop(readers);
}

// Smaller findings.

#[test]
fn connections_reset_after_their_request_cause_no_panic() {
    let _turn = one_at_a_time();
    let server = Server::start(&fixtures().join("cache-xz"), &[]);
    for _ in 0..500 {
        let mut s = connect(server.port);
        s.write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        reset(s);
    }
    assert_served(server.port, "/nix-cache-info", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    assert_no_panic(&server);
}

#[test]
fn control_characters_in_the_target_are_refused_and_never_logged() {
    let server = Server::start(&fixtures().join("cache-xz"), &[]);
    let targets = [
        "/nix-cache-info\n127.0.0.1 GET /forged-canary 200",
        "/nix-cache-info\x1b[2Kforged-canary",
        "/nix-cache-info\rforged-canary",
    ];
    let answers: Vec<(Option<u16>, bool)> = targets
        .iter()
        .map(|target| {
            let mut stream = connect(server.port);
            write!(stream, "GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let (bytes, closed) = read_until_closed(&mut stream, Duration::from_secs(10));
            let status = parse_replies(&bytes, false).first().map(|r| r.status);
            (status, closed.is_some())
        })
        .collect();
    assert_served(server.port, "/nix-cache-info", Duration::from_secs(5));
    let log = server.log();
    assert!(
        !log.contains("forged-canary") && !log.contains('\x1b'),
        "a control character reached the log:\n{log}"
    );
    for (target, answer) in targets.iter().zip(answers) {
        assert_eq!(
            answer,
            (Some(400), true),
            "target {target:?}: status, closed"
        );
    }
}

#[test]
fn status_415_goes_out_with_its_reason_phrase() {
    let (_dir, _secrets, server) = upload_server(&[]);
    let nar = b"compressed by the client".to_vec();
    let mut raw = format!(
        "PUT /nar/{}.nar HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Encoding: gzip\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        nix32_sha256(&nar),
        nar.len()
    )
    .into_bytes();
    raw.extend_from_slice(&nar);
    let bytes = raw_exchange(server.port, &raw);
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.starts_with("HTTP/1.1 415 Unsupported Media Type\r\n"),
        "{text}"
    );
}

#[test]
fn bad_chunk_syntax_in_an_upload_is_a_400() {
    let (dir, _secrets, server) = upload_server(&[]);
    let before = listing(dir.path());
    for body in [
        "zz\r\nabc\r\n0\r\n\r\n",
        "3\r\nabcXY0\r\n\r\n",
        "fffffffffffffffffffff\r\nabc\r\n",
    ] {
        let raw = format!(
            "PUT /nar/{}.nar HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}",
            "1".repeat(52)
        );
        let reply = exchange(server.port, raw.as_bytes()).map(|r| r.status);
        assert_eq!(reply, Some(400), "body {body:?}");
    }
    assert_eq!(listing(dir.path()), before);
}

#[test]
fn an_absolute_form_target_is_served() {
    let server = Server::start(&fixtures().join("cache-xz"), &[]);
    let plain = server.get("/nix-cache-info");
    let absolute = request(
        server.port,
        "GET",
        &format!("http://127.0.0.1:{}/nix-cache-info", server.port),
        &[],
    );
    assert_eq!(absolute.status, 200, "{}", absolute.text());
    assert_eq!(absolute.body, plain.body);
}

#[test]
fn bare_lf_requests_are_answered_at_once() {
    let server = Server::start(&fixtures().join("cache-xz"), &["--header-timeout", "20"]);
    let mut stream = connect(server.port);
    let start = Instant::now();
    stream
        .write_all(b"GET /nix-cache-info HTTP/1.1\nHost: x\n\n")
        .unwrap();
    let reply = read_reply(&mut stream, Duration::from_secs(5)).map(|r| r.status);
    assert_eq!(reply, Some(200), "after {:?}", start.elapsed());
}
