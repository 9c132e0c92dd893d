//! Regressions found by a review of the edge-triggered engine, the pollers and the batched
//! `epoll_wait` (2026-11-30): each test failed before its fix. They measure waits in seconds,
//! with margins for a loaded machine, and run one at a time.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One test at a time: each measures how long requests wait for free threads.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn server_with(limits: tiny_http::Limits) -> (Arc<tiny_http::Server>, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (
        Arc::new(tiny_http::Server::with_limits(listener, limits).unwrap()),
        port,
    )
}

fn server(pollers: usize) -> (Arc<tiny_http::Server>, u16) {
    server_with(tiny_http::Limits {
        pollers,
        ..tiny_http::Limits::default()
    })
}

/// `threads` workers answering "done", after sleeping `slow` for `/slow`.
fn serve_slow(server: &Arc<tiny_http::Server>, threads: usize, slow: Duration) {
    for _ in 0..threads {
        let server = server.clone();
        std::thread::spawn(move || {
            while let Ok(request) = server.recv() {
                if request.url() == "/slow" {
                    std::thread::sleep(slow);
                }
                let _ = request.respond(tiny_http::Response::from_string("done"));
            }
        });
    }
}

/// Opens `n` kept-alive connections (one request each, answered), then sends `/slow` on all of
/// them at once: for each, how long after the burst its answer ended and whether it came.
fn slow_burst(port: u16, n: usize) -> Vec<(Duration, bool)> {
    let mut conns: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    for c in &mut conns {
        write!(c, "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut b = [0u8; 256];
        assert!(c.read(&mut b).unwrap() > 0);
    }
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    for c in &mut conns {
        write!(
            c,
            "GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
    }
    let readers: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                let mut s = String::new();
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let _ = c.read_to_string(&mut s);
                (started.elapsed(), s.ends_with("done"))
            })
        })
        .collect();
    readers.into_iter().map(|r| r.join().unwrap()).collect()
}

fn get(port: u16, path: &str) -> (Duration, String) {
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let mut answer = String::new();
    let r = s.read_to_string(&mut answer);
    (started.elapsed(), format!("{r:?} {answer:?}"))
}

/// A thread that answered and then does slow work must not count as a poller (it did, and the
/// only other thread stayed parked: /other waited for the slow work).
#[test]
fn a_thread_busy_after_answering_is_replaced_by_a_parked_one() {
    let _turn = one_at_a_time();
    let (server, port) = server(1);
    for _ in 0..2 {
        let server = server.clone();
        std::thread::spawn(move || {
            while let Ok(request) = server.recv() {
                let after = request.url() == "/after";
                let _ = request.respond(tiny_http::Response::from_string("done"));
                if after {
                    std::thread::sleep(Duration::from_secs(8));
                }
            }
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    let (t, a) = get(port, "/after");
    eprintln!("/after: {t:?} {a}");
    let (t, a) = get(port, "/other");
    eprintln!("/other: {t:?} {a}");
    server.unblock();
    assert!(t < Duration::from_secs(4), "/other waited {t:?}");
}

/// A thread serving an upgraded connection must not count as a poller.
#[test]
fn a_thread_serving_an_upgrade_is_replaced_by_a_parked_one() {
    let _turn = one_at_a_time();
    let (server, port) = server(1);
    for _ in 0..2 {
        let server = server.clone();
        std::thread::spawn(move || {
            while let Ok(request) = server.recv() {
                if request.url() == "/ws" {
                    let resp = tiny_http::Response::empty(101);
                    let mut s = request.upgrade("x", resp);
                    let mut b = [0u8; 1];
                    let _ = s.read(&mut b); // serve the upgraded connection until it closes
                } else {
                    let _ = request.respond(tiny_http::Response::from_string("done"));
                }
            }
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut ws = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        ws,
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
    )
    .unwrap();
    let mut b = [0u8; 12];
    ws.read_exact(&mut b).unwrap();
    eprintln!("ws: {:?}", String::from_utf8_lossy(&b));
    let (t, a) = get(port, "/other");
    eprintln!("/other: {t:?} {a}");
    server.unblock();
    drop(ws);
    assert!(t < Duration::from_secs(4), "/other waited {t:?}");
}

/// A thread that looked once with `try_recv` and went away must not count as a poller (the one
/// worker parked for good).
#[test]
fn a_thread_gone_after_try_recv_does_not_keep_the_worker_parked() {
    let _turn = one_at_a_time();
    let (server, port) = server(1);
    assert!(server.try_recv().unwrap().is_none());
    {
        let server = server.clone();
        std::thread::spawn(move || {
            while let Ok(request) = server.recv() {
                let _ = request.respond(tiny_http::Response::from_string("done"));
            }
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    let (t, a) = get(port, "/other");
    eprintln!("/other: {t:?} {a}");
    server.unblock();
    assert!(a.contains("done"), "no answer after {t:?}");
}

/// A burst of slow requests with as many idle threads as requests: every thread must take one
/// (only the batch taker and one woken thread worked through the queue; the rest slept).
#[test]
fn a_burst_of_slow_requests_spreads_over_every_idle_thread() {
    let _turn = one_at_a_time();
    const N: usize = 8;
    let (server, port) = server(N);
    serve_slow(&server, N, Duration::from_millis(2000));
    std::thread::sleep(Duration::from_millis(300));
    let mut worst = Duration::ZERO;
    for round in 0..2 {
        let times = slow_burst(port, N);
        eprintln!("round {round}: {times:?}");
        worst = worst.max(times.iter().map(|t| t.0).max().unwrap());
    }
    server.unblock();
    // Two handlers in a row on one thread would take 4 s.
    assert!(
        worst < Duration::from_millis(3500),
        "worst {worst:?} for {N} 2 s requests on {N} threads"
    );
}

/// Same burst, handlers outlasting the idle deadline: no request may sit in the shared queue
/// until the sweeper closes its connection unanswered while threads sleep.
#[test]
fn a_queued_request_is_not_closed_unanswered_while_threads_sleep() {
    let _turn = one_at_a_time();
    const N: usize = 8;
    let (server, port) = server_with(tiny_http::Limits {
        pollers: N,
        idle_timeout: Duration::from_millis(1500),
        ..tiny_http::Limits::default()
    });
    serve_slow(&server, N, Duration::from_millis(3000));
    std::thread::sleep(Duration::from_millis(300));
    let mut lost = 0;
    for round in 0..2 {
        let answers = slow_burst(port, N);
        eprintln!("round {round}: {answers:?}");
        lost += answers.iter().filter(|a| !a.1).count();
        std::thread::sleep(Duration::from_millis(3500));
    }
    server.unblock();
    assert_eq!(
        lost, 0,
        "requests closed unanswered while {N} threads were free"
    );
}

/// A client that sends its request and its FIN together: the read that takes the request does
/// not fill its room, yet the end of stream is still unread and no new edge will come for it.
/// The connection must close after the answer (it stayed open until the idle timeout).
#[test]
fn a_half_close_sent_with_the_request_closes_after_the_answer() {
    let _turn = one_at_a_time();
    let (server, port) = server(1);
    {
        let server = server.clone();
        std::thread::spawn(move || {
            while let Ok(request) = server.recv() {
                let _ = request.respond(tiny_http::Response::from_string("done"));
            }
        });
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut kept = 0;
    let mut clients = vec![];
    for _ in 0..10 {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        std::thread::sleep(Duration::from_millis(50)); // accepted, edge consumed, idle
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut s = String::new();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let r = c.read_to_string(&mut s);
        // Ok: the server closed after EOF; Err(WouldBlock): it kept the connection open.
        if r.is_err() {
            kept += 1;
        }
        clients.push(c);
    }
    eprintln!(
        "open after 10 half-closed clients: {} (kept by read timeout: {kept})",
        server.num_connections()
    );
    server.unblock();
    assert_eq!(kept, 0);
}

/// After a request whose body the handler read, the kept-alive connection keeps the idle
/// deadline (it got the header deadline, and was closed after 1 s instead of 5).
#[test]
fn a_body_read_keeps_the_idle_timeout() {
    let _turn = one_at_a_time();
    let (server, port) = server_with(tiny_http::Limits {
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(5),
        ..tiny_http::Limits::default()
    });
    {
        let server = server.clone();
        std::thread::spawn(move || {
            while let Ok(mut request) = server.recv() {
                let mut body = Vec::new();
                let _ = request.as_reader().read_to_end(&mut body);
                let _ = request.respond(tiny_http::Response::from_string("done"));
            }
        });
    }
    let mut ok = vec![];
    for with_body in [false, true] {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        if with_body {
            c.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
                .unwrap();
        } else {
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        }
        let mut b = [0u8; 512];
        assert!(c.read(&mut b).unwrap() > 0);
        std::thread::sleep(Duration::from_millis(2000)); // idle, well under idle_timeout
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let n = c.read(&mut b).unwrap_or(0);
        eprintln!("with_body={with_body}: second request answered: {}", n > 0);
        ok.push(n > 0);
    }
    server.unblock();
    assert_eq!(ok, [true, true]);
}
