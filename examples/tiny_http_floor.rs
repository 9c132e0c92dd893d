//! The floor of our architecture, for `scripts/bench.sh`: tiny_http with a fixed worker pool
//! answering every request with one constant, narinfo-sized response from memory. No routing,
//! no index, no disk, no logging: whatever this costs per request, nix-binary-cache cannot cost
//! less, so its ratio to nginx bounds what any optimisation of our own code can reach.
//!
//! ```text
//! cargo run --release --example tiny_http_floor -- PORT [THREADS]
//! ```

use std::io::Write;
use std::sync::Arc;

fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = match args.next().map(|a| a.parse()) {
        Some(Ok(port)) => port,
        _ => {
            eprintln!("usage: tiny_http_floor PORT [THREADS]");
            std::process::exit(2);
        }
    };
    let default_threads = std::thread::available_parallelism().map_or(2, |n| n.get() * 2);
    let threads: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(default_threads.max(4));

    // Same shape as a narinfo answer: status line, a few headers, about 1 KB of body.
    let body = vec![b'x'; 1000];
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nServer: floor\r\nContent-Type: text/x-nix-narinfo\r\n\
         Cache-Control: public, max-age=60\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    let response: Arc<[u8]> = response.into();

    let server = match tiny_http::Server::http(("127.0.0.1", port)) {
        Ok(server) => Arc::new(server),
        Err(e) => {
            eprintln!("tiny_http_floor: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("tiny_http_floor: serving on http://127.0.0.1:{port} with {threads} workers");
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let server = server.clone();
            let response = response.clone();
            std::thread::spawn(move || {
                while let Ok(request) = server.recv() {
                    let mut writer = request.into_writer();
                    let _ = writer.write_all(&response).and_then(|()| writer.flush());
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
}
