//! Mounting the cache inside another tiny_http application.
//!
//! `cargo run --manifest-path examples/embed/Cargo.toml -- CACHE_DIR [PORT]` serves the application's own `/hello` route
//! and the binary cache under `/cache`, so Nix can use `http://127.0.0.1:PORT/cache`.

use nix_binary_cache::{Cache, Config, Mount};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: embed CACHE_DIR [PORT]");
    let port = args.next().unwrap_or_else(|| "8080".into());

    let cache = Cache::open(Config::new(dir)).expect("open the cache directory");
    let mount = Mount::new("/cache", cache);

    let server = tiny_http::Server::http(format!("127.0.0.1:{port}")).expect("listen");
    println!("listening on http://{}", server.server_addr());
    for request in server.incoming_requests() {
        // The cache takes what is below /cache and hands everything else back.
        let Some(request) = mount.try_serve(request) else {
            continue;
        };
        let answer = match request.url() {
            "/hello" => tiny_http::Response::from_string("hello from the host application\n"),
            _ => tiny_http::Response::from_string("not found\n").with_status_code(404),
        };
        let _ = request.respond(answer);
    }
}
