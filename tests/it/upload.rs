//! Uploads and signing at the HTTP level: authentication, validation, limits, crashes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::*;

const TOKEN: &str = "test-token-1";

/// A copy of `fixture` served with uploads on (token file beside it), plus extra flags.
fn upload_server(fixture: &str, extra: &[&str]) -> (TempDir, TempDir, Server) {
    let dir = copy_fixture(fixture);
    let secrets = TempDir::new("secrets");
    let tokens = secrets.path().join("tokens");
    std::fs::write(&tokens, format!("# CI\n{TOKEN}\n")).unwrap();
    let mut args = vec!["--upload-token-file", tokens.to_str().unwrap()];
    args.extend_from_slice(extra);
    let server = Server::start(dir.path(), &args);
    (dir, secrets, server)
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

#[test]
fn uploads_are_off_by_default() {
    let server = Server::start(&fixtures().join("cache-xz"), &[]);
    let r = put(server.port, "/nar/x.nar", b"abc", Some(&bearer()));
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("GET, HEAD"));
}

#[test]
fn credentials_are_required_and_checked() {
    let (dir, _s, server) = upload_server("cache-xz", &[]);
    let before = listing(dir.path());
    let nar = b"nar bytes".to_vec();
    let path = format!("/nar/{}.nar", nix32_sha256(&nar));
    for auth in [None, Some("Bearer wrong"), Some("Basic bml4Ondyb25n")] {
        let r = put(server.port, &path, &nar, auth);
        assert_eq!(r.status, 401, "{auth:?}");
        assert_eq!(
            r.header("WWW-Authenticate"),
            Some("Basic realm=\"nix-binary-cache\"")
        );
    }
    assert_eq!(listing(dir.path()), before, "refused uploads wrote nothing");
    // nix:test-token-1 in Basic, as Nix sends it from a netrc file.
    let r = put(
        server.port,
        &path,
        &nar,
        Some("Basic bml4OnRlc3QtdG9rZW4tMQ=="),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(server.get(&path).body, nar);
    let r = request(server.port, "OPTIONS", "/", &[]);
    assert_eq!(r.header("Allow"), Some("GET, HEAD, PUT"));
}

#[test]
fn nar_must_hash_to_its_name() {
    let (dir, _s, server) = upload_server("cache-xz", &[]);
    let before = listing(dir.path());
    let path = format!("/nar/{}.nar.xz", nix32_sha256(b"the real bytes"));
    let r = put(server.port, &path, b"other bytes", Some(&bearer()));
    assert_eq!(r.status, 400);
    assert!(r.text().contains("hashes to"), "{}", r.text());
    assert_eq!(listing(dir.path()), before);
    assert_eq!(server.get(&path).status, 404);
}

#[test]
fn narinfo_is_checked_and_served_at_once() {
    let (dir, _s, server) = upload_server("cache-xz", &["--rescan-interval", "3600"]);
    let m = manifest();
    let hash = &m["TOP"]["/nix/store/".len()..][..32];
    let original = std::fs::read_to_string(dir.path().join(format!("{hash}.narinfo"))).unwrap();
    std::fs::remove_file(dir.path().join(format!("{hash}.narinfo"))).unwrap();
    let path = format!("/{hash}.narinfo");
    wait_for_revalidation();
    assert_eq!(server.get(&path).status, 404);

    // Refused: malformed, wrong store path, NAR missing, FileSize wrong.
    let other = format!("/{}.narinfo", "1".repeat(32));
    let url = original
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap();
    let no_nar = original.replace(url, &format!("nar/{}.nar.xz", "0".repeat(52)));
    let size_line = original
        .lines()
        .find(|l| l.starts_with("FileSize: "))
        .unwrap();
    let bad_size = original.replace(size_line, "FileSize: 1");
    for (target, body, says) in [
        (&path, "junk".to_string(), "malformed"),
        (&other, original.clone(), "does not match"),
        (&path, no_nar, "not in the cache"),
        (&path, bad_size, "FileSize 1"),
    ] {
        let r = put(server.port, target, body.as_bytes(), Some(&bearer()));
        assert_eq!(r.status, 400, "{says}");
        assert!(r.text().contains(says), "{}", r.text());
    }
    assert_eq!(server.get(&path).status, 404);

    let r = put(server.port, &path, original.as_bytes(), Some(&bearer()));
    assert_eq!(r.status, 200);
    assert_eq!(
        server.get(&path).text(),
        original,
        "served on the next request"
    );
    // Overwrite (as `nix store sign` does) with a valid narinfo.
    let sig = "someone-1:".to_string() + &"A".repeat(86) + "==";
    let resigned = format!("{original}Sig: {sig}\n");
    assert_eq!(
        put(server.port, &path, resigned.as_bytes(), Some(&bearer())).status,
        200
    );
    assert_eq!(server.get(&path).text(), resigned);

    // What Nix 2.34/2.35 would refuse is refused here too, so every client can read the cache.
    for (bad, says) in [
        (format!("{original}Sig: someone-1:c2lnbmF0dXJl\n"), "Sig"),
        (format!("{original}Sig: no-colon\n"), "Sig"),
        (
            original.replace("Compression: xz", "Compression: fancy"),
            "Compression",
        ),
    ] {
        let r = put(server.port, &path, bad.as_bytes(), Some(&bearer()));
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.text().contains(says), "{}", r.text());
    }
    assert_eq!(server.get(&path).text(), resigned, "unchanged by refusals");
}

#[test]
fn limits_size_and_concurrency() {
    let (dir, _s, server) = upload_server(
        "cache-xz",
        &["--max-upload-size", "64K", "--max-uploads", "1"],
    );
    let big = vec![7u8; 128 << 10];
    let path = format!("/nar/{}.nar", nix32_sha256(&big));
    let r = put(server.port, &path, &big, Some(&bearer()));
    assert_eq!(r.status, 413);

    // Hold the only upload slot with a body that has not finished arriving. (tiny_http reads
    // bodies of 1 KiB or less before handing the request over, so this one is larger.)
    let small = vec![1u8; 32 << 10];
    let slow_path = format!("/nar/{}.nar", nix32_sha256(&small));
    let mut slow = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(slow, "PUT {slow_path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n", bearer(), small.len()).unwrap();
    slow.write_all(&small[..100]).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || upload_in_progress(dir.path())),
        "the first upload never took the place"
    );
    // A second upload waits for the place instead of getting 503 (Lix never retries a PUT).
    let other = vec![2u8; 32 << 10];
    let other_path = format!("/nar/{}.nar", nix32_sha256(&other));
    let port = server.port;
    let (queued_path, queued_body) = (other_path.clone(), other.clone());
    let queued = std::thread::spawn(move || put(port, &queued_path, &queued_body, Some(&bearer())));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !queued.is_finished(),
        "the second upload waits for the place"
    );
    assert!(
        !dir.path().join(&other_path[1..]).exists(),
        "and is not stored before the first is done"
    );
    // Downloads are not held up meanwhile.
    assert_eq!(server.get("/nix-cache-info").status, 200);
    slow.write_all(&small[100..]).unwrap();
    let mut answer = String::new();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = slow.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        std::fs::read(dir.path().join(&slow_path[1..])).unwrap(),
        small
    );
    let r = queued.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        std::fs::read(dir.path().join(&other_path[1..])).unwrap(),
        other
    );
    // No PUT was answered 503 (an access line's status; "waited 503 ms" in a debug line is not
    // one).
    let refused = server
        .log()
        .lines()
        .any(|l| l.contains("[access]") && l.contains(" PUT ") && l.contains(" 503 "));
    assert!(!refused, "{}", server.log());
}

/// `plain` compressed the way a Nix client compresses a metadata upload.
fn compress(encoding: &str, plain: &[u8]) -> Vec<u8> {
    match encoding {
        "br" => {
            let mut out = Vec::new();
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(plain).unwrap();
            drop(w);
            out
        }
        "xz" => {
            let mut w = lzma_rust2::XzWriter::new(Vec::new(), Default::default()).unwrap();
            w.write_all(plain).unwrap();
            w.finish().unwrap()
        }
        "zstd" => {
            ruzstd::encoding::compress_to_vec(plain, ruzstd::encoding::CompressionLevel::Fastest)
        }
        "gzip" => {
            let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            w.write_all(plain).unwrap();
            w.finish().unwrap()
        }
        "bzip2" => {
            let mut w = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
            w.write_all(plain).unwrap();
            w.finish().unwrap()
        }
        _ => plain.to_vec(),
    }
}

#[test]
fn compressed_metadata_is_stored_plain() {
    let (dir, _s, server) = upload_server("cache-xz", &["--rescan-interval", "3600"]);
    let m = manifest();
    let hash = &m["TOP"]["/nix/store/".len()..][..32];
    let narinfo_file = dir.path().join(format!("{hash}.narinfo"));
    let narinfo = std::fs::read_to_string(&narinfo_file).unwrap();
    let drv = m["TOP_DRV"].trim_start_matches("/nix/store/").to_string();
    let auth = bearer();
    for encoding in ["br", "xz", "zstd", "gzip", "bzip2", "none", "identity"] {
        std::fs::remove_file(&narinfo_file).unwrap();
        let listing = format!(
            "{{\"version\":1,\"root\":{{\"type\":\"regular\",\"size\":{}}}}}",
            encoding.len()
        );
        let log = format!("build log compressed with {encoding}\n").repeat(50);
        for (path, plain, file) in [
            (
                format!("/{hash}.narinfo"),
                narinfo.clone(),
                format!("{hash}.narinfo"),
            ),
            (format!("/{hash}.ls"), listing, format!("{hash}.ls")),
            (format!("/log/{drv}"), log, format!("log/{drv}")),
        ] {
            let body = compress(encoding, plain.as_bytes());
            let headers = [
                ("Authorization", auth.as_str()),
                ("Content-Encoding", encoding),
            ];
            let r = put_with(server.port, &path, &body, &headers);
            assert_eq!(r.status, 200, "{encoding} {path}: {}", r.text());
            assert_eq!(
                std::fs::read_to_string(dir.path().join(&file)).unwrap(),
                plain,
                "{encoding} {path}: stored as plain bytes"
            );
            let served = server.get(&path);
            assert_eq!(served.text(), plain, "{encoding} {path}");
            assert_eq!(served.header("Content-Encoding"), None, "{encoding} {path}");
        }
    }
}

#[test]
fn compressed_uploads_that_are_bombs_or_garbage_leave_nothing() {
    let (dir, _s, server) = upload_server(
        "cache-xz",
        &["--rescan-interval", "3600", "--max-upload-size", "1M"],
    );
    let m = manifest();
    let hash = &m["TOP"]["/nix/store/".len()..][..32];
    let drv = m["TOP_DRV"].trim_start_matches("/nix/store/").to_string();
    std::fs::remove_file(dir.path().join(format!("{hash}.narinfo"))).unwrap();
    std::fs::remove_file(dir.path().join("log").join(&drv)).unwrap();
    let before = listing(dir.path());
    let auth = bearer();
    let zeros = vec![b'0'; 2 << 20];
    for encoding in ["br", "xz", "zstd", "gzip", "bzip2"] {
        let bomb = compress(encoding, &zeros);
        assert!(bomb.len() < 64 << 10, "{encoding}: {} bytes", bomb.len());
        let mut garbage = compress(encoding, b"StorePath: /nix/store/x\n".repeat(20).as_slice());
        let mid = garbage.len() / 2;
        garbage[mid..].iter_mut().for_each(|b| *b ^= 0x5a);
        for path in [
            format!("/{hash}.narinfo"),
            format!("/log/{drv}"),
            format!("/{hash}.ls"),
        ] {
            let headers = [
                ("Authorization", auth.as_str()),
                ("Content-Encoding", encoding),
            ];
            let r = put_with(server.port, &path, &bomb, &headers);
            assert_eq!(r.status, 413, "{encoding} bomb {path}: {}", r.text());
            let r = put_with(server.port, &path, &garbage, &headers);
            assert_eq!(r.status, 400, "{encoding} garbage {path}: {}", r.text());
            assert!(r.text().contains(encoding), "{}", r.text());
        }
    }
    assert_eq!(
        listing(dir.path()),
        before,
        "nothing kept, no temporary left"
    );

    // A NAR's compression is its narinfo's business: never decoded, never stored re-encoded.
    let nar = b"nar bytes".to_vec();
    let nar_path = format!("/nar/{}.nar", nix32_sha256(&nar));
    for encoding in ["gzip", "zstd"] {
        let headers = [
            ("Authorization", auth.as_str()),
            ("Content-Encoding", encoding),
        ];
        let r = put_with(server.port, &nar_path, &compress(encoding, &nar), &headers);
        assert_eq!(r.status, 415, "{}", r.text());
    }
    // An encoding nobody decodes here.
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Encoding", "lz4"),
    ];
    let r = put_with(server.port, &format!("/log/{drv}"), b"x", &headers);
    assert_eq!(r.status, 415, "{}", r.text());
    assert_eq!(listing(dir.path()), before);
}

#[test]
fn percent_encoded_uploads_and_build_traces() {
    let (dir, _s, server) = upload_server("cache-xz", &[]);
    let hash = "4q1c78ism9fv0myqldmih68c6yjmpi2d";
    let auth = bearer();
    // Nix 2.32+ escapes `+` and `!`; older clients send them raw: both land on one file.
    let log = b"log of libfoo++\n";
    let r = put(
        server.port,
        &format!("/log/{hash}-libfoo%2B%2B-1.0.drv"),
        log,
        Some(&auth),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let file = dir.path().join(format!("log/{hash}-libfoo++-1.0.drv"));
    assert_eq!(std::fs::read(&file).unwrap(), log);
    assert_eq!(
        server.get(&format!("/log/{hash}-libfoo++-1.0.drv")).body,
        log
    );

    let doi = "sha256:1h9kn9hj1j745kchafr3vi3hdp04zfhfgbc5dcvhkx5hfh2njr54";
    let r = put(
        server.port,
        &format!("/realisations/{doi}%21out.doi"),
        b"{}",
        Some(&auth),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        dir.path()
            .join(format!("realisations/{doi}!out.doi"))
            .exists()
    );

    // build-trace-v2 (2.35): one directory per derivation, one file per output.
    let trace = b"{\"outPath\":\"x\"}";
    let path = format!("/build-trace-v2/{hash}-g%2B%2B-1.0.drv/out.doi");
    let r = put(server.port, &path, trace, Some(&auth));
    assert_eq!(r.status, 200, "{}", r.text());
    let stored = dir
        .path()
        .join(format!("build-trace-v2/{hash}-g++-1.0.drv/out.doi"));
    assert_eq!(std::fs::read(&stored).unwrap(), trace);
    let got = server.get(&path);
    assert_eq!((got.status, got.body.as_slice()), (200, &trace[..]));
    assert_eq!(got.header("Content-Type"), Some("application/json"));

    // Escapes cannot smuggle a path out: refused, nothing written.
    let before = listing(dir.path());
    for bad in [
        "/log/..%2F..%2Fescape",
        "/build-trace-v2/%2e%2e/out.doi",
        &format!("/log/{hash}-x%252Fy.drv"),
        &format!("/build-trace-v2/{hash}-x.drv%2Fout.doi"),
    ] {
        let r = put(server.port, bad, b"x", Some(&auth));
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    assert_eq!(listing(dir.path()), before);
}

#[test]
fn client_gone_mid_upload_leaves_nothing_visible() {
    let (dir, _s, server) = upload_server("cache-xz", &[]);
    let before = listing(dir.path());
    let body = vec![3u8; 1 << 20];
    let path = format!("/nar/{}.nar", nix32_sha256(&body));
    {
        let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        write!(
            s,
            "PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n",
            bearer(),
            body.len()
        )
        .unwrap();
        s.write_all(&body[..300_000]).unwrap();
        // Dropped once the server is writing it.
        assert!(eventually(Duration::from_secs(10), || upload_in_progress(
            dir.path()
        )));
    } // Dropped: the connection closes half-way.
    assert!(
        server.wait_for_log("upload of", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    assert_eq!(
        listing(dir.path()),
        before,
        "no partial file and no temporary left"
    );
    assert_eq!(server.get(&path).status, 404);
}

#[test]
fn killed_mid_upload_then_restarted_cleans_temporaries() {
    let body = vec![5u8; 1 << 20];
    killed_mid_upload(&format!("/nar/{}.nar", nix32_sha256(&body)), &body, |_| {});
    // build-trace-v2/ uploads write in a directory per derivation: cleaned too.
    let drv = "4q1c78ism9fv0myqldmih68c6yjmpi2d-x.drv";
    killed_mid_upload(&format!("/build-trace-v2/{drv}/out.doi"), &body, |root| {
        std::fs::create_dir_all(root.join("build-trace-v2").join(drv)).unwrap()
    });
}

fn killed_mid_upload(path: &str, body: &[u8], prepare: impl Fn(&std::path::Path)) {
    let (dir, secrets, mut server) = upload_server("cache-xz", &[]);
    prepare(dir.path());
    let before = listing(dir.path());
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n",
        bearer(),
        body.len()
    )
    .unwrap();
    s.write_all(&body[..500_000]).unwrap();
    eventually(Duration::from_secs(10), || upload_in_progress(dir.path()));
    server.child.kill().unwrap(); // SIGKILL: no cleanup of its own.
    server.child.wait().unwrap();
    let during = listing(dir.path());
    assert!(
        during.iter().any(|(n, _)| n.contains(".nbc-upload.")),
        "a temporary was being written: {during:?}"
    );
    assert!(
        !during.iter().any(|(n, _)| n == &path[1..]),
        "never under its final name"
    );

    let tokens = secrets.path().join("tokens");
    let restarted = Server::start(
        dir.path(),
        &["--upload-token-file", tokens.to_str().unwrap()],
    );
    assert!(
        restarted.wait_for_log("removed stale upload temporary", Duration::from_secs(5)),
        "{}",
        restarted.log()
    );
    assert_eq!(listing(dir.path()), before);
}

#[test]
fn signing_adds_one_signature_per_key() {
    let m = manifest();
    let key = fixtures().join("keys/test-key.sec");
    let hash = &m["TOP"]["/nix/store/".len()..][..32];
    // Unsigned cache: our signature is added, identical to the one Nix made.
    let server = Server::start(
        &fixtures().join("cache-xz"),
        &["--sign-key", key.to_str().unwrap()],
    );
    assert!(
        server.wait_for_log(
            &format!("trusted-public-keys = {}", m["PUBLIC_KEY"]),
            Duration::from_secs(5)
        ),
        "{}",
        server.log()
    );
    let signed =
        std::fs::read_to_string(fixtures().join(format!("cache-signed/{hash}.narinfo"))).unwrap();
    assert_eq!(server.get(&format!("/{hash}.narinfo")).text(), signed);
    // Already signed by that key: unchanged, no duplicate.
    let server = Server::start(
        &fixtures().join("cache-signed"),
        &["--sign-key", key.to_str().unwrap()],
    );
    let text = server.get(&format!("/{hash}.narinfo")).text();
    assert_eq!(text.matches("Sig: test-cache-1:").count(), 1);
}

#[test]
fn bad_keys_and_token_files_stop_the_start() {
    let root = fixtures().join("cache-xz");
    let secrets = TempDir::new("bad");
    let public = fixtures().join("keys/test-key.pub");
    let empty = secrets.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    for (args, says) in [
        (vec!["--sign-key", "/nonexistent/key"], "does not exist"),
        (vec!["--sign-key", public.to_str().unwrap()], "secret key"),
        (
            vec!["--upload-token-file", "/nonexistent/tokens"],
            "upload token file",
        ),
        (
            vec!["--upload-token-file", empty.to_str().unwrap()],
            "holds no token",
        ),
    ] {
        let out = std::process::Command::new(BIN)
            .arg(&root)
            .args(["-p", "0", "--bind", "127.0.0.1"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// The narinfo of the fixture's top path in `dir`, and its URL path.
fn top_narinfo(dir: &std::path::Path) -> (String, String) {
    let hash = &manifest()["TOP"]["/nix/store/".len()..][..32];
    let text = std::fs::read_to_string(dir.join(format!("{hash}.narinfo"))).unwrap();
    (text, format!("/{hash}.narinfo"))
}

#[test]
fn a_stored_path_only_gains_signatures() {
    let (dir, _s, server) = upload_server("cache-xz", &["--rescan-interval", "3600"]);
    let (original, path) = top_narinfo(dir.path());
    let before = listing(dir.path());
    let size = original
        .lines()
        .find(|l| l.starts_with("NarSize: "))
        .unwrap();
    let refs = original
        .lines()
        .find(|l| l.starts_with("References: "))
        .unwrap();
    for (changed, field) in [
        (original.replace(size, "NarSize: 1"), "NarSize"),
        (original.replace(refs, "References: "), "References"),
    ] {
        let r = put(server.port, &path, changed.as_bytes(), Some(&bearer()));
        assert_eq!(r.status, 409, "{field}: {}", r.text());
        assert!(r.text().contains(field), "{}", r.text());
    }
    assert_eq!(listing(dir.path()), before, "nothing changed, no temporary");
    assert_eq!(server.get(&path).text(), original);
    // The same narinfo again is fine, and so are added signatures, which are merged.
    let r = put(server.port, &path, original.as_bytes(), Some(&bearer()));
    assert_eq!(r.status, 200, "{}", r.text());
    // Well-formed signatures (64 bytes in base64): newer Nix refuses other shapes.
    let one = format!(
        "{original}Sig: one-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\n"
    );
    let two = format!(
        "{original}Sig: two-1:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA==\n"
    );
    for body in [&one, &two] {
        assert_eq!(
            put(server.port, &path, body.as_bytes(), Some(&bearer())).status,
            200
        );
    }
    assert_eq!(
        server.get(&path).text(),
        format!(
            "{original}Sig: one-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\nSig: two-1:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA==\n"
        )
    );
    assert!(server.log().contains("refused: "), "{}", server.log());
}

#[test]
fn named_tokens_are_logged_and_counted_and_sighup_reloads_them() {
    let dir = copy_fixture("cache-xz");
    let secrets = TempDir::new("named");
    let tokens = secrets.path().join("tokens");
    std::fs::write(&tokens, "ci:secret-of-ci\n").unwrap();
    let server = Server::start(
        dir.path(),
        &["--upload-token-file", tokens.to_str().unwrap()],
    );
    let nar = |tag: &str| {
        let body = format!("nar of {tag}").into_bytes();
        (format!("/nar/{}.nar", nix32_sha256(&body)), body)
    };
    let (path, body) = nar("ci");
    assert_eq!(
        put(server.port, &path, &body, Some("Bearer secret-of-ci")).status,
        200
    );
    assert!(
        server.wait_for_log("for token ci", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.contains("nbc_uploads_total{token=\"ci\"} 1\n"),
        "{metrics}"
    );

    // SIGHUP: the new file replaces the old tokens; the server keeps running.
    std::fs::write(&tokens, "deploy:secret-of-deploy\n").unwrap();
    server.reload();
    assert!(
        server.wait_for_log("1 upload tokens loaded", Duration::from_secs(10)),
        "{}",
        server.log()
    );
    let (path, body) = nar("deploy");
    assert_eq!(
        put(server.port, &path, &body, Some("Bearer secret-of-ci")).status,
        401
    );
    assert_eq!(
        put(server.port, &path, &body, Some("Bearer secret-of-deploy")).status,
        200
    );
    assert!(server.wait_for_log("for token deploy", Duration::from_secs(5)));

    // A broken file keeps the previous set, and the log says why.
    std::fs::write(&tokens, "# emptied by mistake\n").unwrap();
    server.reload();
    assert!(
        server.wait_for_log(
            "keeping the previous upload tokens",
            Duration::from_secs(10)
        ),
        "{}",
        server.log()
    );
    let (path, body) = nar("after");
    assert_eq!(
        put(server.port, &path, &body, Some("Bearer secret-of-deploy")).status,
        200
    );
    let log = server.log();
    assert!(
        !log.contains("secret-of-ci") && !log.contains("secret-of-deploy"),
        "a token was logged:\n{log}"
    );
}

#[test]
fn sighup_reloads_the_signing_keys() {
    let secrets = TempDir::new("keys");
    let key = secrets.path().join("key");
    std::fs::copy(fixtures().join("keys/test-key.sec"), &key).unwrap();
    let server = Server::start(
        &fixtures().join("cache-xz"),
        &["--sign-key", key.to_str().unwrap()],
    );
    let (_, path) = top_narinfo(&fixtures().join("cache-xz"));
    assert!(server.get(&path).text().contains("Sig: test-cache-1:"));
    // A broken key file: the old key stays.
    std::fs::write(&key, "not a key\n").unwrap();
    server.reload();
    assert!(
        server.wait_for_log("keeping the previous signing keys", Duration::from_secs(10)),
        "{}",
        server.log()
    );
    assert!(server.get(&path).text().contains("Sig: test-cache-1:"));
    // A new key: narinfos are signed with it instead.
    let out = std::process::Command::new("nix-store")
        .args(["--generate-binary-cache-key", "other-key-1"])
        .arg(&key)
        .arg(secrets.path().join("pub"))
        .output()
        .expect("nix-store from Debian's nix-bin (make test installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.reload();
    assert!(
        server.wait_for_log("signing keys reloaded", Duration::from_secs(10)),
        "{}",
        server.log()
    );
    let text = server.get(&path).text();
    assert!(
        text.contains("Sig: other-key-1:") && !text.contains("test-cache-1"),
        "{text}"
    );
}

#[test]
fn uploads_are_world_readable_under_the_units_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("umask");
    let secrets = TempDir::new("umask-secrets");
    let tokens = secrets.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let server = Server::start_with_umask(
        dir.path(),
        &["--upload-token-file", tokens.to_str().unwrap()],
        "0027",
    );
    let body = b"a nar in a new cache".to_vec();
    let path = format!("/nar/{}.nar", nix32_sha256(&body));
    assert_eq!(put(server.port, &path, &body, Some(&bearer())).status, 200);
    let log_path = format!("/log/{}-x.drv", "0".repeat(32));
    assert_eq!(
        put(server.port, &log_path, b"log", Some(&bearer())).status,
        200
    );
    let mode = |rel: &str| {
        std::fs::metadata(dir.path().join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&path[1..]), 0o644);
    assert_eq!(mode(&log_path[1..]), 0o644);
    assert_eq!(mode("nar"), 0o755);
    assert_eq!(mode("log"), 0o755);
}

#[test]
fn nix_store_sign_over_http_adds_a_signature() {
    let (dir, secrets, server) = upload_server("cache-xz", &["--rescan-interval", "3600"]);
    let (unsigned, path) = top_narinfo(dir.path());
    let nix = Nix::new(Client::V2_8);
    let netrc = secrets.path().join("netrc");
    std::fs::write(
        &netrc,
        format!("machine 127.0.0.1 login nix password {TOKEN}\n"),
    )
    .unwrap();
    let key = fixtures().join("keys/test-key.sec");
    let out = nix.run(&[
        "store",
        "sign",
        "--netrc-file",
        netrc.to_str().unwrap(),
        "--store",
        &server.url(),
        "--key-file",
        key.to_str().unwrap(),
        &manifest()["TOP"],
    ]);
    assert!(
        out.status.success(),
        "nix store sign: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Exactly what Nix itself wrote into the signed fixture: the old text plus its Sig line.
    let signed = std::fs::read_to_string(fixtures().join(format!("cache-signed{path}"))).unwrap();
    assert_ne!(unsigned, signed);
    assert_eq!(server.get(&path).text(), signed);
    assert_eq!(top_narinfo(dir.path()).0, signed);
    // Nix now trusts the path with the key.
    let out = nix.run(&[
        "store",
        "verify",
        "--no-contents",
        "--store",
        &server.url(),
        "--trusted-public-keys",
        &manifest()["PUBLIC_KEY"],
        &manifest()["TOP"],
    ]);
    assert!(
        out.status.success(),
        "nix store verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn uploads_on_a_read_only_directory_fail_at_start() {
    let secrets = TempDir::new("ro");
    let tokens = secrets.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    // /proc: a directory where no file can be created, even by root (who ignores modes).
    let out = std::process::Command::new(BIN)
        .args(["/proc", "-p", "0", "--bind", "127.0.0.1"])
        .args(["--upload-token-file", tokens.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("uploads are enabled but /proc is not writable")
            && stderr.contains("ReadWritePaths=/proc"),
        "{stderr}"
    );
}

#[test]
fn an_upload_waits_for_a_place_longer_than_the_stall_timeout() {
    // Waiting for a place is not a stall: the body is left unread on purpose.
    let (dir, _s, server) =
        upload_server("cache-xz", &["--max-uploads", "1", "--stall-timeout", "1"]);
    let holder = vec![4u8; 32 << 10];
    let holder_path = format!("/nar/{}.nar", nix32_sha256(&holder));
    let mut slow = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(slow, "PUT {holder_path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n", bearer(), holder.len()).unwrap();
    slow.write_all(&holder[..1000]).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || upload_in_progress(dir.path())),
        "the holder never took the place"
    );

    let queued_body = vec![6u8; 32 << 10];
    let queued_path = format!("/nar/{}.nar", nix32_sha256(&queued_body));
    let port = server.port;
    let (p, b) = (queued_path.clone(), queued_body.clone());
    let queued = std::thread::spawn(move || put(port, &p, &b, Some(&bearer())));
    // The holder trickles its body (progress, so it is not cut off) for three stall timeouts.
    let mut sent = 1000;
    for _ in 0..12 {
        std::thread::sleep(Duration::from_millis(250));
        slow.write_all(&holder[sent..sent + 100]).unwrap();
        sent += 100;
    }
    assert!(!queued.is_finished(), "still waiting for the place");
    slow.write_all(&holder[sent..]).unwrap();
    let mut answer = String::new();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = slow.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let r = queued.join().unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.text(), server.log());
    assert_eq!(
        std::fs::read(dir.path().join(&queued_path[1..])).unwrap(),
        queued_body
    );
}
