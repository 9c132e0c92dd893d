//! `Request::upgrade` hands over the connection with the bytes the client sent right behind
//! its request, which the engine had already read into its buffer.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

#[test]
fn bytes_sent_with_the_upgrade_request_reach_the_new_protocol() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tiny_http::Server::with_limits(listener, tiny_http::Limits::default()).unwrap();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // One write: the request and the first bytes of the new protocol arrive together.
    client
        .write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly bytes|")
        .unwrap();
    let request = server.recv().unwrap();
    let response = tiny_http::Response::empty(101);
    let mut upgraded = request.upgrade("echo", response);
    // On another thread: if the early bytes were lost, the read would wait forever.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut got = [0u8; 12];
        let read = upgraded.read_exact(&mut got).map(|()| got);
        let _ = tx.send(read.map(|got| (got, upgraded)));
    });
    let (got, mut upgraded) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the bytes sent with the request never reached the upgraded stream")
        .unwrap();
    assert_eq!(&got, b"early bytes|");
    upgraded.write_all(b"pong").unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !seen.ends_with(b"pong") {
        let n = client.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed before pong: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
}
