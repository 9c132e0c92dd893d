//! Only as many threads as cores wait for events; a handler that blocks lets a parked thread
//! take its place (engine/pollers.rs). Here one poller is allowed and two threads serve: the
//! first request's handler blocks for 10 s, and the second client must still be answered soon.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn get(port: u16, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s
}

#[test]
fn a_blocked_handler_does_not_stop_the_other_connections() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let limits = tiny_http::Limits {
        pollers: 1,
        ..tiny_http::Limits::default()
    };
    let server = Arc::new(tiny_http::Server::with_limits(listener, limits).unwrap());
    for _ in 0..2 {
        let server = server.clone();
        std::thread::spawn(move || {
            while let Ok(request) = server.recv() {
                if request.url() == "/block" {
                    std::thread::sleep(Duration::from_secs(10));
                }
                let _ = request.respond(tiny_http::Response::from_string("done"));
            }
        });
    }
    let _blocked = get(port, "/block");
    // Let the polling thread take the blocking request (and the other park) first.
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let mut answer = String::new();
    let mut other = get(port, "/other");
    other
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    other.read_to_string(&mut answer).unwrap();
    assert!(answer.ends_with("done"), "no answer: {answer:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered only after {:?}: the parked thread was not let in",
        started.elapsed()
    );
    server.unblock();
}
