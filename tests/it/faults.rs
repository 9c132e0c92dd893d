//! Faults under a running server: a full disk during uploads, the cache directory replaced or
//! removed, files damaged after they were indexed or while they are being sent.
//!
//! (A server killed mid-upload and restarted is `tests/it/upload.rs`,
//! `killed_mid_upload_then_restarted_cleans_temporaries`; a narinfo removed or rewritten after
//! indexing is `tests/it/http.rs`, `index_follows_the_disk_without_waiting_for_a_rescan`.)

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

const TOKEN: &str = "test-token-1";

/// PUT with a body on a fresh connection. The server may answer (and stop reading) before the
/// whole body is sent, so a failed write is not an error here: the answer is what counts.
fn put(port: u16, path: &str, body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let wrote = s.write_all(body);
    let mut out = Vec::new();
    let read = s.read_to_end(&mut out);
    let mut replies = parse_replies(&out, false);
    assert!(
        !replies.is_empty(),
        "no answer to PUT {path} (writing the body: {wrote:?}, reading: {read:?})"
    );
    replies.remove(0)
}

/// The narinfos of a cache directory: (hash, text, URL of the NAR).
fn narinfos(dir: &Path) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let hash = name.strip_suffix(".narinfo")?.to_string();
            let text = std::fs::read_to_string(dir.join(&name)).unwrap();
            let url = text
                .lines()
                .find_map(|l| l.strip_prefix("URL: "))
                .unwrap()
                .to_string();
            Some((hash, text, url))
        })
        .collect();
    out.sort();
    out
}

/// Bytes free on the file system holding `path`.
fn free_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs with a NUL-terminated path and a zeroed struct it fills in.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(c.as_ptr(), &mut st), 0);
        st.f_bavail * st.f_frsize
    }
}

/// Fails if any access-log line of the server shows a 5xx status.
fn assert_no_5xx(server: &Server) {
    assert_no_5xx_but(server, None);
}

/// Like `assert_no_5xx`, but `/health` may say 503 (it does while the directory is gone).
fn assert_no_5xx_except_health(server: &Server) {
    assert_no_5xx_but(server, Some("/health"));
}

fn assert_no_5xx_but(server: &Server, allowed_path: Option<&str>) {
    let log = server.log();
    let bad: Vec<&str> = log
        .lines()
        .filter(|line| !allowed_path.is_some_and(|p| line.contains(&format!(" GET {p} "))))
        .filter(|line| {
            // "... [access] CLIENT METHOD PATH STATUS ..."
            let words: Vec<&str> = line.split_whitespace().collect();
            words
                .iter()
                .position(|w| *w == "[access]")
                .and_then(|i| words.get(i + 4))
                .is_some_and(|status| status.starts_with('5'))
        })
        .collect();
    assert!(bad.is_empty(), "5xx answers: {bad:#?}");
}

/// A small tmpfs mounted on a fresh directory, unmounted when dropped (also when a test fails).
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        // SAFETY: geteuid cannot fail.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "this test needs root: it mounts a {size} tmpfs (mount -t tmpfs) to fill a disk; \
             run the tests as root"
        );
        let dir = TempDir::new("tmpfs");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs -o size={size} tmpfs {} failed: {}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a test failed with something open): detach it now, freed when closed.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

#[test]
fn a_full_disk_refuses_uploads_cleanly_and_serving_goes_on() {
    let tmpfs = Tmpfs::mount("4m");
    let cache = tmpfs.path().join("cache");
    copy_dir(&fixtures().join("cache-xz"), &cache);
    let secrets = TempDir::new("secrets");
    let tokens = secrets.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    // One narinfo is taken out, to be uploaded while the disk is full and again afterwards.
    let infos = narinfos(&cache);
    let (held_hash, held_text, _) = infos[0].clone();
    let (kept_hash, kept_text, kept_url) = infos[1].clone();
    std::fs::remove_file(cache.join(format!("{held_hash}.narinfo"))).unwrap();
    let server = Server::start(
        &cache,
        &[
            "--upload-token-file",
            tokens.to_str().unwrap(),
            "--rescan-interval",
            "3600",
        ],
    );
    let before = listing(&cache);
    let free_before = free_bytes(&cache);

    // 1. A NAR larger than the space left: the disk fills up half-way through the body.
    let big: Vec<u8> = (0..6u32 << 20).map(|i| (i % 251) as u8).collect();
    let big_path = format!("/nar/{}.nar", nix32_sha256(&big));
    let r = put(server.port, &big_path, &big);
    assert_eq!(r.status, 507, "{}", r.text());
    assert!(r.text().contains("no space left"), "{}", r.text());
    assert_eq!(listing(&cache), before, "no partial file, no temporary");
    assert!(
        free_bytes(&cache) + (64 << 10) >= free_before,
        "the temporary's space was given back: {} then {} bytes free",
        free_before,
        free_bytes(&cache)
    );
    assert_eq!(server.get(&big_path).status, 404);

    // 2. The disk completely full: a small NAR and a narinfo are refused the same way.
    let filler_path = tmpfs.path().join("filler");
    let mut filler = std::fs::File::create(&filler_path).unwrap();
    let chunk = vec![0xffu8; 64 << 10];
    loop {
        match filler.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    drop(filler);
    let small = vec![42u8; 100 << 10];
    let small_path = format!("/nar/{}.nar", nix32_sha256(&small));
    let r = put(server.port, &small_path, &small);
    assert_eq!(r.status, 507, "{}", r.text());
    let held_path = format!("/{held_hash}.narinfo");
    let r = put(server.port, &held_path, held_text.as_bytes());
    assert_eq!(r.status, 507, "{}", r.text());
    assert_eq!(listing(&cache), before, "no partial file, no temporary");

    // 3. Downloads are served as before while the disk is full.
    let r = server.get(&format!("/{kept_hash}.narinfo"));
    assert_eq!((r.status, r.text()), (200, kept_text.clone()));
    let r = server.get(&format!("/{kept_url}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, std::fs::read(cache.join(&kept_url)).unwrap());
    assert_eq!(server.get(&held_path).status, 404);
    assert_eq!(server.get(&small_path).status, 404);
    assert_eq!(server.get("/nix-cache-info").status, 200);
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.contains("nbc_upload_rejections_total{status=\"507\"} 3"),
        "{metrics}"
    );

    // 4. Space again: the same uploads go through.
    std::fs::remove_file(&filler_path).unwrap();
    assert_eq!(put(server.port, &small_path, &small).status, 200);
    assert_eq!(
        put(server.port, &held_path, held_text.as_bytes()).status,
        200
    );
    let r = server.get(&held_path);
    assert_eq!((r.status, r.text()), (200, held_text.clone()));
    assert_eq!(server.get(&small_path).body, small);
    let mut expected = before.clone();
    expected.push((held_path[1..].to_string(), held_text.len() as u64));
    expected.push((small_path[1..].to_string(), small.len() as u64));
    expected.sort();
    assert_eq!(
        listing(&cache),
        expected,
        "exactly the two uploads, no temporary"
    );
    drop(server);
}

#[test]
fn cache_directory_replaced_while_running() {
    let parent = TempDir::new("replaced");
    let dir = parent.path().join("cache");
    copy_dir(&fixtures().join("cache-xz"), &dir);
    // No background rescans: whatever is served after the swap comes from the per-request check.
    let server = Server::start(&dir, &["--rescan-interval", "3600"]);
    let old = narinfos(&dir);
    for (hash, text, url) in &old {
        assert_eq!(server.get(&format!("/{hash}.narinfo")).text(), *text);
        assert_eq!(server.get(&format!("/{url}")).status, 200);
    }

    // `mv DIR DIR.old && mkdir DIR`, filled with another cache: the same store paths compressed
    // with zstd (other NAR names, other narinfo bytes), minus one, plus one of its own.
    std::fs::rename(&dir, parent.path().join("cache.old")).unwrap();
    copy_dir(&fixtures().join("cache-zstd"), &dir);
    std::fs::write(
        dir.join("nix-cache-info"),
        "StoreDir: /nix/store\nPriority: 7\n",
    )
    .unwrap();
    let new = narinfos(&dir);
    let (gone_hash, _, _) = &old[0];
    std::fs::remove_file(dir.join(format!("{gone_hash}.narinfo"))).unwrap();
    let (model_hash, model_text, _) = &new[1];
    let fresh_hash = "1".repeat(32);
    let fresh_text = model_text.replace(model_hash.as_str(), &fresh_hash);
    std::fs::write(dir.join(format!("{fresh_hash}.narinfo")), &fresh_text).unwrap();

    wait_for_revalidation();
    // Only in the old directory: gone.
    let r = server.get(&format!("/{gone_hash}.narinfo"));
    assert_eq!(r.status, 404, "{}", r.text());
    // In both: the new directory's bytes, after one revalidation period.
    for (hash, text, _) in &new[1..] {
        let r = server.get(&format!("/{hash}.narinfo"));
        assert_eq!((r.status, r.text()), (200, text.clone()), "{hash}");
    }
    // Only in the new directory: served at once.
    let r = server.get(&format!("/{fresh_hash}.narinfo"));
    assert_eq!((r.status, r.text()), (200, fresh_text));
    // NARs: the old ones are gone, the new ones served.
    for (_, _, url) in &old {
        let r = server.get(&format!("/{url}"));
        assert_eq!(r.status, 404, "{url}");
        assert_eq!(r.header("Cache-Control"), Some("no-store"));
    }
    for (_, _, url) in &new {
        let r = server.get(&format!("/{url}"));
        assert_eq!(r.status, 200, "{url}");
        assert_eq!(r.body, std::fs::read(dir.join(url)).unwrap());
    }
    let info = server.get("/nix-cache-info");
    let health = server.get("/health");
    eprintln!(
        "after the swap: nix-cache-info {} {:?}; /health {} {:?}",
        info.status,
        info.text(),
        health.status,
        health.text()
    );
    assert_eq!(info.status, 200);
    assert_eq!(health.status, 200);
    assert_no_5xx(&server);
}

#[test]
fn cache_directory_removed_while_running() {
    let parent = TempDir::new("removed");
    let dir = parent.path().join("cache");
    copy_dir(&fixtures().join("cache-zstd"), &dir);
    let server = Server::start(&dir, &["--rescan-interval", "1"]);
    let infos = narinfos(&dir);
    let mut paths = vec![format!("/{}.narinfo", "1".repeat(32))];
    for (hash, _, url) in &infos {
        paths.push(format!("/{hash}.narinfo"));
        paths.push(format!("/{hash}.ls"));
        paths.push(format!("/{url}"));
    }
    for p in &paths[1..] {
        assert_eq!(server.get(p).status, 200, "{p} before");
    }

    std::fs::remove_dir_all(&dir).unwrap();
    wait_for_revalidation();
    let check_all = |when: &str| {
        for p in &paths {
            let r = server.get(p);
            assert_eq!(r.status, 404, "{p} {when}: {}", r.text());
        }
        // nix-cache-info is kept in memory (200 today); whatever it is, never a 5xx.
        for p in ["/nix-cache-info", "/", "/metrics", "/log/nope.drv"] {
            let r = server.get(p);
            assert!(r.status < 500, "{p} {when}: {} {}", r.status, r.text());
        }
    };
    check_all("at once after rm -rf");
    // A background rescan of the missing directory fails, and the server goes on.
    assert!(
        server.wait_for_log(
            &format!("rescan of {} failed", dir.display()),
            Duration::from_secs(5)
        ),
        "no failed rescan logged:\n{}",
        server.log()
    );
    check_all("after a failed rescan");
    let health = server.get("/health");
    eprintln!(
        "cache directory removed: /health {} {:?}; rescan: {:?}",
        health.status,
        health.text(),
        server.log().lines().find(|l| l.contains("rescan of"))
    );
    // The one 5xx on purpose: a load balancer must stop sending clients here.
    assert_eq!(health.status, 503, "{}", health.text());
    assert!(
        health.text().contains("cache directory"),
        "{}",
        health.text()
    );

    // Put back: served again without a restart, as soon as the watch has seen the new
    // directory (a moment on a loaded machine).
    copy_dir(&fixtures().join("cache-zstd"), &dir);
    for p in &paths[1..] {
        let mut status = 0;
        eventually(Duration::from_secs(10), || {
            status = server.get(p).status;
            status == 200
        });
        assert_eq!(status, 200, "{p} once restored");
    }
    assert_eq!(server.get("/health").status, 200);
    assert_no_5xx_except_health(&server);
}

#[test]
fn narinfo_and_nar_damaged_after_indexing() {
    let dir = copy_fixture("cache-xz");
    let root = dir.path();
    let server = Server::start(root, &["--rescan-interval", "3600"]);
    let infos = narinfos(root);
    for (hash, _, url) in &infos {
        assert_eq!(server.get(&format!("/{hash}.narinfo")).status, 200);
        assert_eq!(server.get(&format!("/{url}")).status, 200);
    }
    let [(a, a_text, a_url), (b, _, _), (c, c_text, c_url)] = &infos[..] else {
        panic!("three narinfos in cache-xz: {infos:?}");
    };

    // A narinfo cut in half (in place, as a crashed non-atomic writer leaves it), or emptied.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(root.join(format!("{a}.narinfo")))
        .unwrap();
    f.set_len(a_text.len() as u64 / 2).unwrap();
    drop(f);
    std::fs::File::create(root.join(format!("{b}.narinfo"))).unwrap();
    wait_for_revalidation();
    for h in [a, b] {
        let r = server.get(&format!("/{h}.narinfo"));
        assert_eq!(r.status, 404, "{h}: {}", r.text());
    }
    assert!(
        server
            .log()
            .contains(&format!("{a}.narinfo: skipped, malformed")),
        "{}",
        server.log()
    );

    // A NAR deleted under its narinfo: the narinfo is still served, the NAR is a 404 that no
    // proxy keeps.
    std::fs::remove_file(root.join(c_url)).unwrap();
    assert_eq!(server.get(&format!("/{c}.narinfo")).text(), *c_text);
    let r = server.get(&format!("/{c_url}"));
    assert_eq!(r.status, 404);
    assert_eq!(r.header("Cache-Control"), Some("no-store"));

    // A NAR truncated before the request: served as it now is, its length announced truly
    // (the client's hash check rejects it).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(root.join(a_url))
        .unwrap();
    f.set_len(10).unwrap();
    drop(f);
    let r = server.get(&format!("/{a_url}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Length"), Some("10"));
    assert_eq!(r.body.len(), 10);
    assert_no_5xx(&server);
}

/// A NAR truncated on disk while a slow client downloads it: the transfer must end with a short
/// body and a closed connection (never a hang), and the server goes on serving.
#[test]
fn nar_truncated_during_a_download_ends_the_transfer() {
    const SIZE: u64 = 16 << 20;
    const CUT: u64 = 1 << 20;
    let dir = copy_fixture("cache-xz");
    let name = format!("nar/{}.nar", "4".repeat(52));
    let file: PathBuf = dir.path().join(&name);
    std::fs::File::create(&file).unwrap().set_len(SIZE).unwrap();
    // Default timeouts: the end of the transfer must not wait for the 60 s idle timeout.
    let server = Server::start(dir.path(), &[]);

    let mut client = connect_with_small_rcvbuf(server.port, SMALL_RCVBUF);
    // Keep-alive, as Nix does: only the server can end this response early.
    write!(client, "GET /{name} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut received = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    // Slowly: 16 KiB every 20 ms until 256 KiB have arrived.
    while received.len() < 256 << 10 {
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0, "closed early");
        received.extend_from_slice(&buf[..n]);
        std::thread::sleep(Duration::from_millis(20));
    }
    let head_end = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head")
        + 4;
    let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.contains(&format!("Content-Length: {SIZE}\r\n")),
        "{head}"
    );

    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(CUT)
        .unwrap();
    let cut_at = Instant::now();
    let limit = Duration::from_secs(10);
    let mut body = (received.len() - head_end) as u64;
    let ended = loop {
        match client.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => body += n as u64,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if cut_at.elapsed() > limit {
                    break false;
                }
            }
            Err(_) => break true, // reset
        }
    };
    let took = cut_at.elapsed();
    eprintln!("truncated mid-download: ended {ended} after {took:?} with {body} of {SIZE} bytes");
    assert!(
        ended,
        "the download of a truncated NAR was still open {limit:?} after the cut, {body} of \
         {SIZE} body bytes received; log:\n{}",
        server.log()
    );
    assert!(body < SIZE, "short body: {body}");
    assert!(
        server.wait_for_log(&format!("GET /{name} 200 aborted"), Duration::from_secs(2)),
        "{}",
        server.log()
    );
    // Still serving, the NAR as it now is.
    let r = server.get(&format!("/{name}"));
    assert_eq!((r.status, r.body.len() as u64), (200, CUT));
    assert_eq!(server.get("/nix-cache-info").status, 200);
}

/// More clients than descriptors: the ones past the limit wait or fail, but the server keeps
/// accepting once descriptors are free again. (tiny_http 0.12 panicked in its accept thread on
/// the first "Too many open files" and never accepted again: vendor/tiny_http/PATCHES.md.)
#[test]
fn running_out_of_descriptors_does_not_stop_accepting() {
    use std::net::TcpStream;
    let root = fixtures().join("cache-xz");
    let server = Server::start_with_fd_limit(&root, &[], 64);
    // One descriptor per connection: 40 connections fit in 64 with the process's own files.
    let mut open: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(("127.0.0.1", server.port)).unwrap())
        .collect();
    // All 40 accepted (the metrics request is the 41st connection).
    assert!(
        eventually(Duration::from_secs(10), || server
            .metric("nbc_connections_open")
            >= 41.0),
        "the 40 connections were not all accepted"
    );
    let fds = std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .unwrap()
        .count();
    assert!(
        fds < 64,
        "{fds} descriptors for 40 connections: more than one each?"
    );
    // Now past the limit: accept(2) fails with EMFILE while these are open.
    open.extend((0..60).filter_map(|_| TcpStream::connect(("127.0.0.1", server.port)).ok()));
    let fds_in_use = || {
        std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
            .unwrap()
            .count()
    };
    eventually(Duration::from_secs(10), || fds_in_use() >= 60);
    let fds = fds_in_use();
    assert!(
        fds >= 60,
        "only {fds} descriptors in use: the limit was not reached"
    );
    drop(open);
    // Descriptors are free again: a new client is served.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = server.get("/nix-cache-info");
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not served after the clients left"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
