//! HTTP-level tests against the real binary on a free port: routes, headers, ranges,
//! conditional requests, hostile paths, freshness of the index, CLI errors and shutdown.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// The hash part and NAR URL of one narinfo in `cache`.
fn first_narinfo(cache: &Path) -> (String, String, String) {
    let m = manifest();
    let top = &m["TOP"];
    let hash = top.trim_start_matches("/nix/store/")[..32].to_string();
    let text = std::fs::read_to_string(cache.join(format!("{hash}.narinfo"))).unwrap();
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_string();
    (hash, url, text)
}

#[test]
fn nix_cache_info_is_served_and_priority_overrides() {
    let root = fixtures().join("cache-xz");
    let server = Server::start(&root, &[]);
    let r = server.get("/nix-cache-info");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("text/x-nix-cache-info"));
    // The fixture's file (as `nix copy --to file://` writes it: StoreDir only) with the
    // documented defaults added, so that Nix does not rank the cache at priority 0.
    assert_eq!(
        r.text(),
        format!(
            "{}WantMassQuery: 1\nPriority: 40\n",
            std::fs::read_to_string(root.join("nix-cache-info")).unwrap()
        )
    );

    let server = Server::start(&root, &["--priority", "12"]);
    let text = server.get("/nix-cache-info").text();
    assert!(
        text.contains("StoreDir: /nix/store\n") && text.ends_with("Priority: 12\n"),
        "{text}"
    );
}

#[test]
fn missing_nix_cache_info_is_synthesized() {
    let dir = copy_fixture("cache-xz");
    std::fs::remove_file(dir.path().join("nix-cache-info")).unwrap();
    let server = Server::start(dir.path(), &[]);
    let r = server.get("/nix-cache-info");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"
    );
}

#[test]
fn a_linked_nix_cache_info_is_not_followed() {
    let dir = copy_fixture("cache-xz");
    let outside = TempDir::new("outside");
    let secret = outside.path().join("hostname");
    std::fs::write(&secret, "StoreDir: /not/the/cache\nsecret-host\n").unwrap();
    std::fs::remove_file(dir.path().join("nix-cache-info")).unwrap();
    std::os::unix::fs::symlink(&secret, dir.path().join("nix-cache-info")).unwrap();
    let server = Server::start(dir.path(), &[]);
    let text = server.get("/nix-cache-info").text();
    assert_eq!(
        text,
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"
    );
    // The log comes through a pipe: it may trail the server's readiness a little.
    assert!(
        server.wait_for_log("a symbolic link, not followed", Duration::from_secs(5)),
        "{}",
        server.log()
    );
}

#[test]
fn narinfo_hit_head_and_miss() {
    let root = fixtures().join("cache-xz");
    let (hash, _, text) = first_narinfo(&root);
    let server = Server::start(&root, &[]);

    let r = server.get(&format!("/{hash}.narinfo"));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), text);
    assert_eq!(r.header("Content-Type"), Some("text/x-nix-narinfo"));
    assert_eq!(r.header("Cache-Control"), Some("public, max-age=60"));
    assert!(r.header("ETag").is_some() && r.header("Last-Modified").is_some());

    let h = request(server.port, "HEAD", &format!("/{hash}.narinfo"), &[]);
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty());
    assert_eq!(
        h.header("Content-Length"),
        Some(text.len().to_string().as_str())
    );
    assert_eq!(h.header("ETag"), r.header("ETag"));

    let miss = server.get("/00000000000000000000000000000000.narinfo");
    assert_eq!(miss.status, 404);
    assert_eq!(miss.header("Cache-Control"), Some("public, max-age=5"));
    assert_eq!(
        request(
            server.port,
            "HEAD",
            "/00000000000000000000000000000000.narinfo",
            &[]
        )
        .status,
        404
    );
}

#[test]
fn nar_is_served_whole_with_caching_headers() {
    let root = fixtures().join("cache-xz");
    let (_, url, _) = first_narinfo(&root);
    let bytes = std::fs::read(root.join(&url)).unwrap();
    let server = Server::start(&root, &[]);
    let r = server.get(&format!("/{url}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, bytes);
    assert_eq!(r.header("Content-Type"), Some("application/x-nix-nar"));
    assert_eq!(r.header("Accept-Ranges"), Some("bytes"));
    assert_eq!(
        r.header("Cache-Control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(
        r.header("Content-Encoding"),
        None,
        "a NAR must never carry Content-Encoding"
    );
    assert!(server.wait_for_log(
        &format!("GET /{url} 200 {} ", bytes.len()),
        Duration::from_secs(2)
    ));
    // A missing NAR is asked for by pushers just before they upload it: no proxy may keep
    // that 404, or the NAR stays hidden behind it once pushed.
    let missing = format!("/nar/{}.nar.xz", "0".repeat(52));
    let r = server.get(&missing);
    assert_eq!(r.status, 404);
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
}

#[test]
fn ranges_partial_suffix_open_and_unsatisfiable() {
    let root = fixtures().join("cache-xz");
    let (_, url, _) = first_narinfo(&root);
    let bytes = std::fs::read(root.join(&url)).unwrap();
    let n = bytes.len();
    let server = Server::start(&root, &[]);
    let path = format!("/{url}");
    let get = |range: &str| request(server.port, "GET", &path, &[("Range", range)]);

    let r = get("bytes=0-9");
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &bytes[..10]);
    assert_eq!(
        r.header("Content-Range"),
        Some(format!("bytes 0-9/{n}").as_str())
    );

    let r = get("bytes=-5");
    assert_eq!((r.status, r.body.as_slice()), (206, &bytes[n - 5..]));

    let r = get(&format!("bytes={}-", n - 100));
    assert_eq!((r.status, r.body.as_slice()), (206, &bytes[n - 100..]));

    let r = get(&format!("bytes={n}-"));
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("Content-Range"),
        Some(format!("bytes */{n}").as_str())
    );

    // Several ranges: the whole body, which RFC 9110 allows.
    let r = get("bytes=0-1,4-5");
    assert_eq!((r.status, r.body.len()), (200, n));
}

#[test]
fn conditional_requests_answer_304() {
    let root = fixtures().join("cache-xz");
    let (hash, url, _) = first_narinfo(&root);
    let server = Server::start(&root, &[]);
    for path in [
        format!("/{hash}.narinfo"),
        format!("/{url}"),
        "/nix-cache-info".to_string(),
    ] {
        let r = server.get(&path);
        let etag = r.header("ETag").unwrap().to_string();
        let again = request(server.port, "GET", &path, &[("If-None-Match", &etag)]);
        assert_eq!(again.status, 304, "{path}");
        assert!(again.body.is_empty());
        assert_eq!(again.header("ETag"), Some(etag.as_str()));
        let other = request(server.port, "GET", &path, &[("If-None-Match", "\"other\"")]);
        assert_eq!(other.status, 200, "{path}");
        if let Some(lm) = r.header("Last-Modified") {
            let since = request(server.port, "GET", &path, &[("If-Modified-Since", lm)]);
            assert_eq!(since.status, 304, "{path}");
            let old = "Thu, 01 Jan 1970 00:00:00 GMT";
            assert_eq!(
                request(server.port, "GET", &path, &[("If-Modified-Since", old)]).status,
                200
            );
        }
    }
}

#[test]
fn listings_logs_realisations_and_debuginfo() {
    let dir = copy_fixture("cache-zstd");
    let m = manifest();
    let top_hash = &m["TOP"]["/nix/store/".len()..][..32];
    let drv = m["TOP_DRV"].trim_start_matches("/nix/store/").to_string();
    let doi = "sha256:1h9kn9hj1j745kchafr3vi3hdp04zfhfgbc5dcvhkx5hfh2njr54!out.doi";
    std::fs::create_dir_all(dir.path().join("realisations")).unwrap();
    std::fs::write(dir.path().join("realisations").join(doi), "{\"id\":\"x\"}").unwrap();
    std::fs::create_dir_all(dir.path().join("debuginfo")).unwrap();
    std::fs::write(
        dir.path().join("debuginfo/0123abcd"),
        "{\"archive\":\"../nar/x\"}",
    )
    .unwrap();
    let server = Server::start(dir.path(), &[]);

    let ls = server.get(&format!("/{top_hash}.ls"));
    assert_eq!(ls.status, 200);
    assert_eq!(ls.header("Content-Type"), Some("application/json"));
    assert!(ls.text().contains("\"entries\""), "{}", ls.text());

    let log = server.get(&format!("/log/{drv}"));
    assert_eq!(log.status, 200);
    assert_eq!(
        log.header("Content-Type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        log.body,
        std::fs::read(dir.path().join("log").join(&drv)).unwrap()
    );

    let r = server.get(&format!("/realisations/{doi}"));
    assert_eq!((r.status, r.text().as_str()), (200, "{\"id\":\"x\"}"));
    assert_eq!(server.get("/debuginfo/0123abcd").status, 200);
    assert_eq!(server.get("/debuginfo/0123abce").status, 404);
}

#[test]
fn other_methods_get_405_with_allow() {
    let server = Server::start(&fixtures().join("cache-xz"), &[]);
    for method in ["PUT", "POST", "DELETE", "PATCH", "OPTIONS"] {
        let r = request(
            server.port,
            method,
            "/nix-cache-info",
            &[("Content-Length", "0")],
        );
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("Allow"), Some("GET, HEAD"));
    }
}

#[test]
fn hostile_paths_never_leave_the_cache() {
    let dir = copy_fixture("cache-xz");
    let root = dir.path();
    // A link inside the cache that points outside, and a linked directory that leads outside.
    std::os::unix::fs::symlink(
        "/etc/passwd",
        root.join("nar/0000000000000000000000000000000000000000000000000000.nar"),
    )
    .unwrap();
    let outside = TempDir::new("outside");
    std::fs::write(
        outside
            .path()
            .join("11111111111111111111111111111111-secret.drv"),
        "secret",
    )
    .unwrap();
    std::fs::remove_dir_all(root.join("log")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("log")).unwrap();
    let server = Server::start(root, &[]);

    let cases = [
        "/../../../../etc/passwd",
        "/nar/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/nar/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/nar/%252e%252e/etc/passwd",
        "/nar/..%5c..%5cetc%5cpasswd",
        "/nar\\..\\..\\etc\\passwd",
        "/nar/%00.nar",
        "/nar/%c0%ae%c0%ae/etc/passwd",
        "/etc/passwd",
        "//etc/passwd",
        "/nar//etc/passwd",
        "/nar/0000000000000000000000000000000000000000000000000000.nar",
        "/log/11111111111111111111111111111111-secret.drv",
    ];
    for path in cases {
        let r = request(server.port, "GET", path, &[]);
        assert!(matches!(r.status, 400 | 404), "{path}: {}", r.status);
        let text = r.text();
        assert!(
            !text.contains("root:") && !text.contains("secret"),
            "{path} leaked: {text}"
        );
    }
    // A NUL byte and a raw high byte in the request line itself.
    for raw in [
        &b"GET /nar/\0 HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        b"GET /\xc0\xae\xc0\xae/etc/passwd HTTP/1.1\r\nConnection: close\r\n\r\n",
    ] {
        let out = raw_exchange(server.port, raw);
        assert!(!String::from_utf8_lossy(&out).contains("root:"));
    }
    // Still serving.
    assert_eq!(server.get("/nix-cache-info").status, 200);
}

#[test]
fn index_follows_the_disk_without_waiting_for_a_rescan() {
    let dir = copy_fixture("cache-xz");
    let root = dir.path();
    let (hash, _, text) = first_narinfo(root);
    let moved = TempDir::new("moved");
    std::fs::rename(root.join(format!("{hash}.narinfo")), moved.path().join("x")).unwrap();
    std::fs::write(
        root.join("00000000000000000000000000000000.narinfo"),
        "garbage\n",
    )
    .unwrap();
    let server = Server::start(root, &["--rescan-interval", "3600"]);
    assert!(
        server.wait_for_log("indexed 2 narinfo files", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    assert!(server.log().contains("(1 skipped)"), "{}", server.log());
    assert!(
        server
            .log()
            .contains("00000000000000000000000000000000.narinfo: skipped, malformed")
    );

    let path = format!("/{hash}.narinfo");
    assert_eq!(server.get(&path).status, 404);
    // Appears on disk (as `nix copy --to file://` does, by rename): served as soon as the watch
    // reports it, long before any rescan (tests/it/index_watch.rs holds it to 100 ms).
    std::fs::rename(moved.path().join("x"), root.join(format!("{hash}.narinfo"))).unwrap();
    let appeared = Instant::now();
    let r = loop {
        let r = server.get(&path);
        if r.status == 200 || appeared.elapsed() > Duration::from_secs(2) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!((r.status, r.text()), (200, text.clone()));
    // Rewritten: the old bytes for at most REVALIDATE_AFTER, then the new ones.
    let changed = text.replace("Compression: xz", "Compression: xz\nFuture: 1");
    std::fs::write(root.join("tmp"), &changed).unwrap();
    std::fs::rename(root.join("tmp"), root.join(format!("{hash}.narinfo"))).unwrap();
    wait_for_revalidation();
    assert_eq!(server.get(&path).text(), changed);
    // Removed: no longer served once revalidated.
    std::fs::remove_file(root.join(format!("{hash}.narinfo"))).unwrap();
    wait_for_revalidation();
    assert_eq!(server.get(&path).status, 404);
    assert_eq!(
        server
            .get("/00000000000000000000000000000000.narinfo")
            .status,
        404
    );
}

#[test]
fn background_rescan_picks_up_new_files() {
    let dir = copy_fixture("cache-xz");
    let server = Server::start(dir.path(), &["--rescan-interval", "1"]);
    let (hash, _, text) = first_narinfo(dir.path());
    let fresh = format!("{}.narinfo", "1".repeat(32));
    std::fs::write(
        dir.path().join(&fresh),
        text.replace(&hash, &"1".repeat(32)),
    )
    .unwrap();
    assert!(
        server.wait_for_log("rescan: 4 entries", Duration::from_secs(5)),
        "{}",
        server.log()
    );
}

#[test]
fn keep_alive_and_pipelining_answer_in_order() {
    let root = fixtures().join("cache-xz");
    let (hash, url, text) = first_narinfo(&root);
    let nar = std::fs::read(root.join(&url)).unwrap();
    let server = Server::start(&root, &[]);
    let raw = format!(
        "GET /{url} HTTP/1.1\r\nHost: x\r\n\r\nGET /{hash}.narinfo HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /nope HTTP/1.1\r\nHost: x\r\n\r\nGET /nix-cache-info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let replies = parse_replies(&raw_exchange(server.port, raw.as_bytes()), false);
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 404, 200]);
    assert_eq!(replies[0].body, nar);
    assert_eq!(replies[1].text(), text);
    assert_eq!(replies[3].header("Connection"), Some("close"));

    // HTTP/1.0 without keep-alive gets its answer and a closed connection.
    let out = raw_exchange(server.port, b"GET /nix-cache-info HTTP/1.0\r\n\r\n");
    let replies = parse_replies(&out, false);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].header("Connection"), Some("close"));

    // `close` in a second Connection header counts too (the first one said keep-alive): the
    // answer says so, and the connection is closed after it.
    let out = raw_exchange(
        server.port,
        b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
    );
    let replies = parse_replies(&out, false);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].header("Connection"), Some("close"));
}

/// A burst of keep-alive connections opened at once must all be answered while every one of
/// them stays open. tiny_http 0.12's connection pool could leave a connection queued behind
/// busy ones (see vendor/tiny_http/PATCHES.md): it then waited until another client hung up.
#[test]
fn a_burst_of_open_connections_is_answered_at_once() {
    use std::io::{Read, Write};
    let root = fixtures().join("cache-xz");
    let server = Server::start(&root, &[]);
    for round in 0..5 {
        let mut conns: Vec<std::net::TcpStream> = (0..24)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap())
            .collect();
        for c in &mut conns {
            c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            c.write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
        }
        for (i, c) in conns.iter_mut().enumerate() {
            let mut head = [0u8; 12];
            let got = c.read_exact(&mut head);
            assert!(
                got.is_ok() && head.starts_with(b"HTTP/1.1 200"),
                "round {round}, connection {i} of 24 was not answered within 3 s: {got:?}"
            );
        }
        // Every connection is still open here: none could free a thread for another.
        drop(conns);
    }
}

#[test]
fn large_nar_streams_with_flat_memory() {
    let dir = copy_fixture("cache-xz");
    let name = format!("nar/{}.nar", "2".repeat(52));
    let size: u64 = 512 << 20;
    // Sparse: costs no disk, but is read like any file.
    std::fs::File::create(dir.path().join(&name))
        .unwrap()
        .set_len(size)
        .unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    use std::io::{Read, Write};
    write!(
        stream,
        "GET /{name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert!(total > size, "got {total} bytes");
    let (_, peak_kib) = memory_kib(server.pid());
    assert!(
        peak_kib < 64 * 1024,
        "peak RSS {peak_kib} KiB while sending a {size}-byte NAR"
    );
    assert!(server.wait_for_log(&format!("200 {size} "), Duration::from_secs(2)));
    assert!(
        server.log().contains(" sendfile"),
        "NAR bodies go out with sendfile"
    );
}

#[test]
fn cli_mistakes_exit_2_with_one_line() {
    let fixture = fixtures().join("cache-xz");
    let file = fixture.join("nix-cache-info");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![], "missing PATH"),
        (vec!["/nonexistent/cache"], "/nonexistent/cache"),
        (vec![file.to_str().unwrap()], "is not a directory"),
        (
            vec![
                fixture.to_str().unwrap(),
                "--bind",
                "127.0.0.1",
                "-p",
                &busy_port,
            ],
            "already in use",
        ),
        (
            vec!["--frobnicate", fixture.to_str().unwrap()],
            "frobnicate",
        ),
        (
            vec!["--threads", "many", fixture.to_str().unwrap()],
            "invalid thread count",
        ),
        (
            vec!["-p", "99999", fixture.to_str().unwrap()],
            "invalid port",
        ),
    ];
    for (args, says) in cases {
        let out = Command::new(BIN)
            .args(&args)
            .env_remove("NIX_BINARY_CACHE_PATH")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let error_lines: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(error_lines.len(), 1, "{args:?}: {stderr}");
        assert!(error_lines[0].contains(says), "{args:?}: {stderr}");
    }
    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(
        help.status.success()
            && String::from_utf8_lossy(&help.stdout).contains("--rescan-interval")
    );
    let version = Command::new(BIN).arg("-V").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("nix-binary-cache "));
}

#[test]
fn sigterm_finishes_in_flight_work_and_exits() {
    let dir = copy_fixture("cache-xz");
    let name = format!("nar/{}.nar", "3".repeat(52));
    let size: u64 = 64 << 20;
    std::fs::File::create(dir.path().join(&name))
        .unwrap()
        .set_len(size)
        .unwrap();
    let mut server = Server::start(dir.path(), &[]);

    // A download in progress that reads slowly, so it is still running at SIGTERM.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    use std::io::{Read, Write};
    write!(stream, "GET /{name} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut first = [0u8; 4096];
    stream.read_exact(&mut first).unwrap();

    let start = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &server.pid().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    let header_end = first.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(
        (first.len() - header_end + rest.len()) as u64,
        size,
        "the in-flight download completed"
    );

    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(start.elapsed() < Duration::from_secs(12));
    assert!(server.log().contains("stopped"));
    // New connections are refused once stopped.
    assert!(std::net::TcpStream::connect(("127.0.0.1", server.port)).is_err());
}

#[test]
fn metrics_health_and_landing_page() {
    let key = fixtures().join("keys/test-key.sec");
    let server = Server::start(
        &fixtures().join("cache-xz"),
        &["--sign-key", key.to_str().unwrap()],
    );
    let (hash, url, _) = first_narinfo(&fixtures().join("cache-xz"));
    server.get(&format!("/{hash}.narinfo"));
    server.get(&format!("/{url}"));
    server.get("/00000000000000000000000000000000.narinfo");

    let health = server.get("/health");
    assert_eq!(
        (health.status, health.text().trim()),
        (200, "ok: 3 narinfos indexed")
    );
    // A large body is counted when its transfer thread finishes, just after the client has it.
    let counted = "nbc_requests_total{kind=\"nar\",status=\"200\"} 1";
    let mut metrics = server.get("/metrics");
    for _ in 0..100 {
        if metrics.text().lines().any(|l| l == counted) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        metrics = server.get("/metrics");
    }
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = metrics.text();
    for line in [
        "nbc_requests_total{kind=\"narinfo\",status=\"200\"} 1",
        "nbc_requests_total{kind=\"narinfo\",status=\"404\"} 1",
        "nbc_requests_total{kind=\"nar\",status=\"200\"} 1",
        "nbc_index_entries 3",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    let nar_len = std::fs::metadata(fixtures().join("cache-xz").join(&url))
        .unwrap()
        .len();
    assert!(
        text.contains(&format!("nbc_sent_bytes_total{{kind=\"nar\"}} {nar_len}\n")),
        "{text}"
    );

    let page = request(server.port, "GET", "/", &[("Host", "cache.example:8080")]);
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    let html = page.text();
    assert!(html.contains("<td id=\"paths\">3</td>"), "{html}");
    assert!(html.contains(&manifest()["PUBLIC_KEY"]));
    assert!(html.contains("substituters = http://cache.example:8080"));
}

#[test]
fn metrics_can_move_or_go_and_access_log_can_be_silenced() {
    let root = fixtures().join("cache-xz");
    let server = Server::start(&root, &["--metrics", "off", "--access-log", "off"]);
    assert_eq!(server.get("/metrics").status, 404);
    assert_eq!(server.get("/nix-cache-info").status, 200);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!server.log().contains("[access]"), "{}", server.log());

    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ops_port = free.local_addr().unwrap().port();
    drop(free);
    let ops_addr = format!("127.0.0.1:{ops_port}");
    let server = Server::start(&root, &["--metrics", &ops_addr]);
    assert_eq!(server.get("/metrics").status, 404, "not on the main port");
    let r = request(ops_port, "GET", "/metrics", &[]);
    assert_eq!(r.status, 200);
    assert!(r.text().contains("nbc_index_entries 3"));
    assert_eq!(request(ops_port, "GET", "/health", &[]).status, 200);
    assert_eq!(request(ops_port, "GET", "/nix-cache-info", &[]).status, 404);
}

#[test]
fn socket_activation_and_readiness_notification() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    // Two sockets, as a .socket unit with two ListenStream= lines passes them.
    let listeners: Vec<std::net::TcpListener> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let dir = TempDir::new("notify");
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let fds = [listeners[0].as_raw_fd(), listeners[1].as_raw_fd()];
    let mut cmd = Command::new("/bin/sh");
    cmd.args([
        "-c",
        "LISTEN_PID=$$ LISTEN_FDS=2 exec \"$0\" \"$1\" --log-level warn",
        BIN,
    ])
    .arg(fixtures().join("cache-xz"))
    .env("NOTIFY_SOCKET", &notify_path)
    .stderr(std::process::Stdio::null());
    // SAFETY: only dup2/close between fork and exec: socket activation passes fds 3 and 4.
    // Going through 100 and 101 keeps either source from being overwritten before it is
    // copied, and dup2 leaves the copies without FD_CLOEXEC.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in fds.into_iter().enumerate() {
                if libc::dup2(fd, 100 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for i in 0..2 {
                if libc::dup2(100 + i, 3 + i) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(100 + i);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut buf = [0u8; 256];
    let mut next = |what: &str| match notify.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(e) => {
            let _ = child.kill();
            panic!("no {what} ({e})");
        }
    };
    // First the addresses served, both passed sockets in order; then READY=1 once every
    // narinfo is listed, and X_INDEXED=1 once every one is read.
    let listen = next("X_LISTEN=");
    assert_eq!(
        listen,
        format!("X_LISTEN=127.0.0.1:{} 127.0.0.1:{}", ports[0], ports[1])
    );
    let msg = next("READY=1");
    assert!(msg.starts_with("READY=1\n"), "{msg}");
    assert_eq!(next("X_INDEXED=1"), "X_INDEXED=1");
    drop(listeners); // Only the child's copies remain.
    for port in ports {
        assert_eq!(request(port, "GET", "/nix-cache-info", &[]).status, 200);
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let n = notify.recv(&mut buf).expect("STOPPING=1 from the server");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(child.wait().unwrap().success());
}

#[test]
fn verify_and_gc_from_the_command_line() {
    let out = Command::new(BIN)
        .args(["verify"])
        .arg(fixtures().join("cache-xz"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("3 narinfos checked, 3 NARs hashed"),
        "{stdout}"
    );

    let dir = copy_fixture("cache-xz");
    let (_, url, _) = first_narinfo(dir.path());
    std::fs::write(dir.path().join(&url), b"corrupted").unwrap();
    let out = Command::new(BIN)
        .arg("verify")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let before = std::fs::read_dir(dir.path()).unwrap().count();
    let out = Command::new(BIN)
        .args(["gc", "--max-size", "0", "--dry-run"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("dry run: nothing removed"),
        "{stdout}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), before);
    let out = Command::new(BIN)
        .args(["gc", "--max-size", "0"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let narinfos = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".narinfo")
        })
        .count();
    assert_eq!(narinfos, 0);
    let out = Command::new(BIN)
        .args(["gc"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn slow_and_idle_connections_are_closed_and_do_not_delay_others() {
    use std::io::{Read, Write};
    let root = fixtures().join("cache-xz");
    let (hash, _, _) = first_narinfo(&root);
    let server = Server::start(&root, &["--header-timeout", "1", "--idle-timeout", "2"]);
    // 200 connections that start a request and never finish it.
    let mut slow: Vec<std::net::TcpStream> = (0..200)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
            s.write_all(b"GET /nix-cache-info HTTP/1.1\r\nHo").unwrap();
            s
        })
        .collect();
    // A keep-alive client that makes one request, then goes quiet.
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(idle, "GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut first = [0u8; 64];
    let _ = idle.read(&mut first).unwrap();

    let start = Instant::now();
    assert_eq!(server.get(&format!("/{hash}.narinfo")).status, 200);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "fresh request took {:?}",
        start.elapsed()
    );

    // All are closed by the server within their timeouts plus a sweep or two.
    let deadline = Duration::from_secs(6);
    for s in slow.iter_mut().chain(std::iter::once(&mut idle)) {
        s.set_read_timeout(Some(deadline)).unwrap();
        let mut buf = [0u8; 4096];
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break false;
                }
                Err(_) => break true, // Reset by the server.
                Ok(_) => continue,    // A 408 or the rest of a response may come first.
            }
        };
        assert!(closed, "connection still open after {deadline:?}");
    }
    assert!(
        start.elapsed() < deadline + Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(server.get("/nix-cache-info").status, 200, "still serving");
}

#[test]
fn percent_encoded_paths_are_served_like_raw_ones() {
    let dir = copy_fixture("cache-zstd");
    let m = manifest();
    let top_hash = &m["TOP"]["/nix/store/".len()..][..32];
    let h = "4q1c78ism9fv0myqldmih68c6yjmpi2d";
    std::fs::write(
        dir.path().join(format!("log/{h}-libfoo++-1.0.drv")),
        "plus log",
    )
    .unwrap();
    let doi = "sha256:1h9kn9hj1j745kchafr3vi3hdp04zfhfgbc5dcvhkx5hfh2njr54";
    std::fs::create_dir_all(dir.path().join("realisations")).unwrap();
    std::fs::write(dir.path().join(format!("realisations/{doi}!out.doi")), "{}").unwrap();
    let trace_dir = dir.path().join(format!("build-trace-v2/{h}-g++-1.0.drv"));
    std::fs::create_dir_all(&trace_dir).unwrap();
    std::fs::write(trace_dir.join("out.doi"), "{\"trace\":1}").unwrap();
    let server = Server::start(dir.path(), &[]);

    // (as Nix 2.32+ sends it, as 2.8-2.31 and Lix send it)
    let nar_url = std::fs::read_to_string(dir.path().join(format!("{top_hash}.narinfo")))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("URL: ").map(str::to_string))
        .unwrap();
    let pairs = [
        (
            format!("/log/{h}-libfoo%2B%2B-1.0.drv"),
            format!("/log/{h}-libfoo++-1.0.drv"),
        ),
        (
            format!("/realisations/{doi}%21out.doi"),
            format!("/realisations/{doi}!out.doi"),
        ),
        (
            format!("/build-trace-v2/{h}-g%2B%2B-1.0.drv/out.doi"),
            format!("/build-trace-v2/{h}-g++-1.0.drv/out.doi"),
        ),
        (
            format!("/{top_hash}%2Enarinfo"),
            format!("/{top_hash}.narinfo"),
        ),
        (
            format!("/{}", nar_url.replace(".nar", "%2Enar")),
            format!("/{nar_url}"),
        ),
        (
            "/nix%2Dcache%2Dinfo".to_string(),
            "/nix-cache-info".to_string(),
        ),
    ];
    for (encoded, raw) in &pairs {
        let a = server.get(encoded);
        let b = server.get(raw);
        assert_eq!(a.status, 200, "{encoded}: {}", a.text());
        assert_eq!(
            (a.status, &a.body),
            (b.status, &b.body),
            "{encoded} vs {raw}"
        );
        assert_eq!(a.header("ETag"), b.header("ETag"), "{encoded}");
        let head = request(server.port, "HEAD", encoded, &[]);
        assert_eq!(head.status, 200, "HEAD {encoded}");
    }
    // A query string is not part of the name, escaped or not.
    let q = server.get(&format!("/log/{h}-libfoo%2B%2B-1.0.drv?x=%2F"));
    assert_eq!(q.text(), "plus log");
    // Escaped but absent: 404; escapes that hide a separator or a second layer: 400.
    assert_eq!(server.get(&format!("/log/{h}-nope%2B.drv")).status, 404);
    for bad in [
        format!("/log/{h}-a%2Fb.drv"),
        format!("/log/{h}-a%252B.drv"),
        format!("/log/{h}-a%2.drv"),
        "/build-trace-v2/%2E%2E/out.doi".to_string(),
    ] {
        assert_eq!(server.get(&bad).status, 400, "{bad}");
    }
}

#[test]
fn reads_never_need_credentials_and_etags_stay_put() {
    let dir = copy_fixture("cache-xz");
    let tokens = TempDir::new("tokens");
    std::fs::write(tokens.path().join("t"), "secret-token\n").unwrap();
    let key = fixtures().join("keys/test-key.sec");
    let server = Server::start(
        dir.path(),
        &[
            "--upload-token-file",
            tokens.path().join("t").to_str().unwrap(),
            "--sign-key",
            key.to_str().unwrap(),
        ],
    );
    let m = manifest();
    let top_hash = &m["TOP"]["/nix/store/".len()..][..32];
    let drv = m["TOP_DRV"].trim_start_matches("/nix/store/");
    let paths = [
        "/nix-cache-info".to_string(),
        format!("/{top_hash}.narinfo"),
        format!("/log/{drv}"),
        format!("/{}.narinfo", "0".repeat(32)),
    ];
    // Uploads on, wrong or no credentials: a read is never 401/403/407 (2.35 treats those as
    // fatal), never 429, never carries Content-Encoding (2.8-2.30 fail on `identity`).
    for path in &paths {
        for auth in [None, Some("Basic d3Jvbmc6d3Jvbmc="), Some("Bearer wrong")] {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| ("Authorization", a)).into_iter().collect();
            for method in ["GET", "HEAD"] {
                let r = request(server.port, method, path, &headers);
                assert!(
                    matches!(r.status, 200 | 404),
                    "{method} {path} {auth:?}: {}",
                    r.status
                );
                assert_eq!(r.header("Content-Encoding"), None, "{method} {path}");
                assert_eq!(r.header("WWW-Authenticate"), None, "{method} {path}");
            }
        }
    }
    // Lix aborts a resumed download whose ETag changed: an unchanged file keeps its ETag,
    // including a narinfo signed on the fly, and across a restart.
    let etags = |server: &Server| -> Vec<Option<String>> {
        paths[..3]
            .iter()
            .map(|p| server.get(p).header("ETag").map(str::to_string))
            .collect()
    };
    let first = etags(&server);
    assert!(first.iter().all(Option::is_some), "{first:?}");
    assert_eq!(etags(&server), first);
    drop(server);
    let again = Server::start(dir.path(), &["--sign-key", key.to_str().unwrap()]);
    assert_eq!(etags(&again), first, "same ETags after a restart");
}
