//! Slow clients at scale: a thousand connections that send their request one byte a second and
//! a hundred clients that read a large NAR at about 1 KB/s must not delay a fresh client's
//! narinfo request, and the timeouts must close what they hold.
//!
//! These tests run alone (`support::turns`: they would load the same two cores) and need ~1,100
//! descriptors, so the test raises its own open-file limit. Figures are printed to stderr
//! (`cargo test --test it slow_clients:: -- --nocapture` shows them).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::*;

const SLOWLORIS: usize = 1000;
const SLOW_READERS: usize = 100;
/// Far more than a socket's buffers on both sides can hold, so a slow reader keeps the server's
/// send blocked for the whole test.
const NAR_SIZE: u64 = 16 << 20;

/// A copy of cache-xz plus a large NAR (sparse: no disk, read like any file). Returns the
/// directory, a narinfo path and the NAR path.
fn cache_with_big_nar() -> (TempDir, String, String) {
    let dir = copy_fixture("cache-xz");
    let nar = format!("/nar/{}.nar", "3".repeat(52));
    std::fs::File::create(dir.path().join(&nar[1..]))
        .unwrap()
        .set_len(NAR_SIZE)
        .unwrap();
    let m = manifest();
    let hash = &m["TOP"]["/nix/store/".len()..][..32];
    (dir, format!("/{hash}.narinfo"), nar)
}

/// One slowloris connection: it sends a request that never ends, one byte at a time.
struct Loris {
    stream: TcpStream,
    opened: Instant,
    sent: usize,
    /// When the server closed it, counted from `opened`.
    closed: Option<Duration>,
}

/// The bytes a slowloris sends, one a second: a request line, then a header that never ends.
fn loris_byte(i: usize) -> u8 {
    const START: &[u8] = b"GET /nix-cache-info HTTP/1.1\r\nX-Slow: ";
    START.get(i).copied().unwrap_or(b'a')
}

fn open_slowloris(port: u16, n: usize) -> Vec<Loris> {
    (0..n)
        .map(|i| {
            let mut stream = TcpStream::connect(("127.0.0.1", port))
                .unwrap_or_else(|e| panic!("slowloris connection {i}: {e}"));
            stream.write_all(&[loris_byte(0)]).unwrap();
            stream.set_nonblocking(true).unwrap();
            Loris {
                stream,
                opened: Instant::now(),
                sent: 1,
                closed: None,
            }
        })
        .collect()
}

/// Drives all slowloris connections from one thread: each gets one more byte a second (a tenth
/// of them every 100 ms), and `poll` notices at once when the server closes one. `closed`
/// counts the closed ones as they go. Returns the connections when `stop` is set.
fn drive_slowloris(
    mut conns: Vec<Loris>,
    stop: Arc<AtomicBool>,
    closed: Arc<AtomicUsize>,
) -> JoinHandle<Vec<Loris>> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut tick = 0u32;
        let mut buf = [0u8; 1024];
        while !stop.load(Ordering::SeqCst) {
            for (i, c) in conns.iter_mut().enumerate() {
                if i % 10 != tick as usize % 10 || c.closed.is_some() {
                    continue;
                }
                match c.stream.write(&[loris_byte(c.sent)]) {
                    Ok(n) => c.sent += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => {
                        c.closed = Some(c.opened.elapsed());
                        closed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            tick += 1;
            let next_tick = start + Duration::from_millis(100) * tick;
            // Until the next tick: wait for any connection to become readable (EOF or reset).
            loop {
                let now = Instant::now();
                if now >= next_tick || stop.load(Ordering::SeqCst) {
                    break;
                }
                let open: Vec<usize> = (0..conns.len())
                    .filter(|&i| conns[i].closed.is_none())
                    .collect();
                let mut fds: Vec<libc::pollfd> = open
                    .iter()
                    .map(|&i| libc::pollfd {
                        fd: conns[i].stream.as_raw_fd(),
                        events: libc::POLLIN | libc::POLLRDHUP,
                        revents: 0,
                    })
                    .collect();
                let wait = (next_tick - now).as_millis().max(1) as i32;
                // SAFETY: `fds` is a valid array of its length for the duration of the call.
                let ready =
                    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait) };
                if ready <= 0 {
                    continue;
                }
                for (k, pfd) in fds.iter().enumerate() {
                    if pfd.revents == 0 {
                        continue;
                    }
                    let c = &mut conns[open[k]];
                    let gone = loop {
                        match c.stream.read(&mut buf) {
                            Ok(0) => break true,
                            Ok(_) => continue, // e.g. a 408 before the close
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                            Err(_) => break true,
                        }
                    };
                    if gone {
                        c.closed = Some(c.opened.elapsed());
                        closed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }
        conns
    })
}

/// One client downloading the big NAR at about 1 KB/s.
struct SlowReader {
    stream: TcpStream,
    received: Vec<u8>,
    total: u64,
    ended: bool,
}

fn open_slow_readers(port: u16, nar: &str, n: usize) -> Vec<SlowReader> {
    (0..n)
        .map(|_| {
            let mut stream = connect_with_small_rcvbuf(port, SMALL_RCVBUF);
            // Keep-alive, as Nix does.
            write!(stream, "GET {nar} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            stream.set_nonblocking(true).unwrap();
            SlowReader {
                stream,
                received: Vec::new(),
                total: 0,
                ended: false,
            }
        })
        .collect()
}

/// Reads at most 100 bytes from each reader every 100 ms, from one thread.
fn drive_slow_readers(
    mut readers: Vec<SlowReader>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<SlowReader>> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut tick = 0u32;
        let mut buf = [0u8; 100];
        while !stop.load(Ordering::SeqCst) {
            for r in readers.iter_mut().filter(|r| !r.ended) {
                match r.stream.read(&mut buf) {
                    Ok(0) => r.ended = true,
                    Ok(n) => {
                        r.total += n as u64;
                        if r.received.len() < 4096 {
                            r.received.extend_from_slice(&buf[..n]);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => r.ended = true,
                }
            }
            tick += 1;
            let next = start + Duration::from_millis(100) * tick;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        readers
    })
}

/// `nbc_requests_in_flight` from /metrics.
fn in_flight(server: &Server) -> i64 {
    server
        .get("/metrics")
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("nbc_requests_in_flight "))
        .and_then(|v| v.trim().parse().ok())
        .expect("nbc_requests_in_flight in /metrics")
}

#[test]
fn a_thousand_slowloris_and_a_hundred_slow_readers_do_not_delay_a_fresh_narinfo_get() {
    let _turn = one_at_a_time();
    raise_open_file_limit((SLOWLORIS + SLOW_READERS + 200) as u64);
    let (dir, narinfo, nar) = cache_with_big_nar();
    // Default timeouts (30 s for headers, 60 s for stalls): nothing is closed during the test.
    let server = Server::start(dir.path(), &[]);

    let opening = Instant::now();
    let lorises = open_slowloris(server.port, SLOWLORIS);
    let readers = open_slow_readers(server.port, &nar, SLOW_READERS);
    let opened_in = opening.elapsed();
    let stop = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicUsize::new(0));
    let loris_thread = drive_slowloris(lorises, stop.clone(), closed.clone());
    let reader_thread = drive_slow_readers(readers, stop.clone());
    // Every download under way (the server counts it in flight until its body is sent).
    let mut busy = in_flight(&server);
    while busy < SLOW_READERS as i64 && opening.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
        busy = in_flight(&server);
    }
    let all_busy_in = opening.elapsed();

    // A fresh connection for a narinfo every ~200 ms for 8 s, while the load is on.
    let mut latencies = Vec::new();
    let end = Instant::now() + Duration::from_secs(8);
    while Instant::now() < end {
        let t = Instant::now();
        let r = request(server.port, "GET", &narinfo, &[]);
        let took = t.elapsed();
        assert_eq!(r.status, 200, "{}", r.text());
        latencies.push(took);
        std::thread::sleep(Duration::from_millis(200).saturating_sub(took));
    }
    let busy_at_end = in_flight(&server);
    stop.store(true, Ordering::SeqCst);
    let lorises = loris_thread.join().unwrap();
    let readers = reader_thread.join().unwrap();

    // The load was real: every slowloris still open and dripping, every download running.
    let still_open = lorises.iter().filter(|c| c.closed.is_none()).count();
    let min_sent = lorises.iter().map(|c| c.sent).min().unwrap_or(0);
    assert_eq!(
        still_open,
        SLOWLORIS,
        "slowloris connections closed early: {}",
        SLOWLORIS - still_open
    );
    assert!(min_sent >= 8, "a slowloris sent only {min_sent} bytes");
    for (i, r) in readers.iter().enumerate() {
        assert!(
            r.received.starts_with(b"HTTP/1.1 200 "),
            "reader {i}: {:?}",
            String::from_utf8_lossy(&r.received[..r.received.len().min(200)])
        );
        assert!(!r.ended, "reader {i}: the download ended");
        assert!(r.total < NAR_SIZE, "reader {i} got the whole NAR");
    }
    assert!(
        busy >= SLOW_READERS as i64 && busy_at_end >= SLOW_READERS as i64,
        "the server had {busy} then {busy_at_end} requests in flight, not the {SLOW_READERS} downloads"
    );

    let max = latencies.iter().max().copied().unwrap_or_default();
    let mut sorted = latencies.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    let (min_read, max_read) = readers.iter().fold((u64::MAX, 0), |(lo, hi), r| {
        (lo.min(r.total), hi.max(r.total))
    });
    eprintln!(
        "slow load: {SLOWLORIS} slowloris + {SLOW_READERS} slow readers opened in {opened_in:?}, all downloading after {all_busy_in:?}; \
         {} fresh narinfo GETs: median {median:?}, max {max:?}; \
         readers got {min_read}..{max_read} bytes each; {busy}/{busy_at_end} requests in flight",
        latencies.len()
    );
    assert!(
        max < Duration::from_secs(1),
        "a fresh narinfo GET took {max:?} under slow load: {latencies:?}"
    );
    drop(lorises);
    drop(readers);
    assert_eq!(server.get(&narinfo).status, 200, "still serving");
}

#[test]
fn short_timeouts_close_slowloris_connections_and_stalled_downloads() {
    let _turn = one_at_a_time();
    raise_open_file_limit((SLOWLORIS + 200) as u64);
    let (dir, narinfo, nar) = cache_with_big_nar();
    const TIMEOUT: u64 = 3;
    let t = TIMEOUT.to_string();
    let server = Server::start(
        dir.path(),
        &[
            "--header-timeout",
            &t,
            "--idle-timeout",
            &t,
            "--stall-timeout",
            &t,
        ],
    );

    let lorises = open_slowloris(server.port, SLOWLORIS);
    let stop = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicUsize::new(0));
    let loris_thread = drive_slowloris(lorises, stop.clone(), closed.clone());

    // A download whose client reads nothing at all after sending its request.
    let mut stalled = connect_with_small_rcvbuf(server.port, SMALL_RCVBUF);
    let client_port = stalled.local_addr().unwrap().port();
    write!(stalled, "GET {nar} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let asked = Instant::now();
    assert_eq!(
        server_side_state(server.port, client_port),
        Some(1),
        "the server's end is ESTABLISHED"
    );

    // Watch both: the slowloris connections closing (the driver thread counts them), and the
    // stalled download: when the server logs its abort, and when the server's end of the
    // connection leaves ESTABLISHED (shut down or closed).
    let aborted_line = format!("GET {nar} 200 aborted");
    let deadline = asked + Duration::from_secs(25);
    let (mut aborted, mut released) = (None, None);
    while Instant::now() < deadline
        && (closed.load(Ordering::SeqCst) < SLOWLORIS || released.is_none() || aborted.is_none())
    {
        if aborted.is_none() && server.log().contains(&aborted_line) {
            aborted = Some(asked.elapsed());
        }
        if released.is_none() && server_side_state(server.port, client_port) != Some(1) {
            released = Some(asked.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    let lorises = loris_thread.join().unwrap();

    let open: Vec<usize> = (0..lorises.len())
        .filter(|&i| lorises[i].closed.is_none())
        .collect();
    assert!(
        open.is_empty(),
        "{} of {SLOWLORIS} slowloris connections still open after {:?}",
        open.len(),
        asked.elapsed()
    );
    let times: Vec<Duration> = lorises.iter().filter_map(|c| c.closed).collect();
    let first = times.iter().min().copied().unwrap_or_default();
    let last = times.iter().max().copied().unwrap_or_default();
    let header = Duration::from_secs(TIMEOUT);
    assert!(
        first + Duration::from_millis(50) >= header,
        "a slowloris was closed after {first:?}, before the header timeout"
    );
    // The engine's sweeper looks every 100 ms; on a loaded machine allow well over that.
    assert!(
        last <= header + Duration::from_millis(2500),
        "a slowloris was closed only after {last:?} (header timeout {header:?})"
    );

    // The stalled download: the server gave up on it, then let go of the connection.
    let stall = Duration::from_secs(TIMEOUT);
    let Some(aborted) = aborted else {
        panic!(
            "the stalled download was not aborted {:?} after the request (stall timeout \
             {stall:?}); log:\n{}",
            asked.elapsed(),
            server.log()
        );
    };
    assert!(
        aborted >= stall,
        "aborted after {aborted:?}, before the stall timeout"
    );
    let Some(released) = released else {
        panic!(
            "the server still holds the stalled download's connection {:?} after the request, \
             {aborted:?} after it aborted the transfer",
            asked.elapsed()
        );
    };
    // Released when the transfer is abandoned (the engine closes it at once), at the latest
    // an idle timeout later.
    assert!(
        released <= aborted + Duration::from_secs(TIMEOUT) + Duration::from_millis(2500),
        "the stalled download's connection was released {released:?} after the request, \
         {aborted:?} after the abort"
    );
    // The client, reading again, gets what was queued and then the end: a short body.
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    let ended = loop {
        match stalled.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got += n as u64,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break false;
            }
            Err(_) => break true,
        }
    };
    assert!(ended, "the stalled download's connection did not end");
    assert!(got < NAR_SIZE, "a short body: {got} bytes");
    eprintln!(
        "timeouts {TIMEOUT} s: {SLOWLORIS} slowloris closed between {first:?} and {last:?} after \
         connecting; stalled download aborted {aborted:?} and its connection released \
         {released:?} after the request ({got} bytes had been queued)"
    );
    assert_eq!(server.get(&narinfo).status, 200, "still serving");
}

/// Threads and VmRSS (KiB) of a process.
fn threads_and_rss(pid: u32) -> (u64, u64) {
    (
        proc_status_field(pid, "Threads:"),
        proc_status_field(pid, "VmRSS:"),
    )
}

/// Reads one whole response (head and Content-Length body) off a keep-alive connection.
fn read_one_response(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if got.len() >= end + 4 + len {
                return got;
            }
        }
        let n = stream.read(&mut buf).expect("read a response");
        assert!(n > 0, "connection closed mid-response");
        got.extend_from_slice(&buf[..n]);
    }
}

/// The quickest of five fresh-connection GETs of a small NAR.
fn fresh_nar_get(server: &Server, nar: &str) -> Duration {
    (0..5)
        .map(|_| {
            let asked = Instant::now();
            let reply = server.get(nar);
            assert_eq!(reply.status, 200);
            asked.elapsed()
        })
        .min()
        .unwrap()
}

/// The engine's promise for idle connections: 10,000 kept-alive connections (each after one
/// request) hold no thread and little memory, and a fresh NAR GET meanwhile is as quick as
/// without them (within max(10 ms, 2x)).
#[test]
fn ten_thousand_idle_keep_alive_connections_cost_no_threads() {
    const IDLE: usize = 10_000;
    let _turn = one_at_a_time();
    raise_open_file_limit(IDLE as u64 + 100);
    let dir = copy_fixture("cache-xz");
    let nar = std::fs::read_dir(dir.path().join("nar"))
        .unwrap()
        .map(|e| format!("/nar/{}", e.unwrap().file_name().to_string_lossy()))
        .next()
        .unwrap();
    let server = Server::start(dir.path(), &["--access-log", "off"]);
    let before = fresh_nar_get(&server, &nar);
    let (threads_before, rss_before) = threads_and_rss(server.pid());

    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        stream
            .write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: test\r\n\r\n")
            .unwrap();
        read_one_response(&mut stream);
        idle.push(stream);
    }
    let (threads, rss) = threads_and_rss(server.pid());
    let during = fresh_nar_get(&server, &nar);
    eprintln!(
        "{IDLE} idle keep-alive connections: threads {threads_before} -> {threads}, \
         RSS {rss_before} -> {rss} KiB (+{} KiB), fresh NAR GET {before:?} -> {during:?}",
        rss.saturating_sub(rss_before)
    );
    assert!(
        threads <= 40,
        "{threads} threads with {IDLE} idle connections"
    );
    assert!(
        rss.saturating_sub(rss_before) <= 48 * 1024,
        "RSS grew by {} KiB with {IDLE} idle connections",
        rss.saturating_sub(rss_before)
    );
    let allowed = (before * 2).max(Duration::from_millis(10));
    assert!(
        during <= allowed,
        "a fresh NAR GET took {during:?} with {IDLE} idle connections, {before:?} without"
    );
    // They are still open and served (kept alive, not dropped).
    for stream in idle.iter_mut().step_by(1000) {
        stream
            .write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: test\r\n\r\n")
            .unwrap();
        assert!(read_one_response(stream).starts_with(b"HTTP/1.1 200"));
    }
}
