//! The real Nix client (Debian's nix-bin) against the running server. These tests never skip:
//! without `nix` on PATH they fail and say what to install.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CONF: &str = "experimental-features = nix-command\nsandbox = false\nbuild-users-group =\n\
substituters =\nnarinfo-cache-positive-ttl = 0\nnarinfo-cache-negative-ttl = 0\n";

/// A Nix client with its own config and its own narinfo cache (so no answer is remembered
/// from another test).
struct Nix {
    home: TempDir,
}

impl Nix {
    fn new() -> Nix {
        let found = Command::new("nix").arg("--version").output();
        match found {
            Ok(out) if out.status.success() => {}
            _ => panic!(
                "the real Nix client is required: install Debian's nix-bin \
                 (`apt-get install -y nix-bin`, as root) or run `make test`, which does"
            ),
        }
        let home = TempDir::new("nix");
        std::fs::create_dir_all(home.path().join("conf")).unwrap();
        std::fs::write(home.path().join("conf/nix.conf"), CONF).unwrap();
        Nix { home }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nix");
        cmd.args(args)
            .env("NIX_CONF_DIR", self.home.path().join("conf"))
            .env("XDG_CACHE_HOME", self.home.path().join("cache"))
            .env("HOME", self.home.path())
            .stdin(Stdio::null());
        cmd
    }

    /// Runs nix and returns its output, whatever the exit status.
    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run nix")
    }

    /// Runs nix, failing the test with nix's stderr if it fails; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "nix {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A fresh chroot store to copy into.
    fn store(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }
}

fn closure() -> Vec<String> {
    manifest()["CLOSURE"]
        .split(' ')
        .map(str::to_string)
        .collect()
}

#[test]
fn path_info_lists_the_closure_over_http() {
    let nix = Nix::new();
    let server = Server::start(&fixtures().join("cache-xz"), &[]);
    let top = &manifest()["TOP"];
    let out = nix.ok(&["path-info", "--store", &server.url(), "-r", top]);
    let mut got: Vec<&str> = out.lines().collect();
    got.sort();
    let mut want = closure();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn copy_whole_closure_into_a_fresh_store_and_verify() {
    let nix = Nix::new();
    for cache in ["cache-xz", "cache-zstd"] {
        let server = Server::start(&fixtures().join(cache), &[]);
        let m = manifest();
        let store = nix.store(cache);
        let store = store.to_str().unwrap();
        nix.ok(&[
            "copy",
            "--no-check-sigs",
            "--from",
            &server.url(),
            "--to",
            store,
            &m["TOP"],
        ]);
        for path in closure() {
            assert!(
                Path::new(store).join(path.trim_start_matches('/')).exists(),
                "{path} copied"
            );
        }
        nix.ok(&[
            "store",
            "verify",
            "--store",
            store,
            "--no-trust",
            "-r",
            &m["TOP"],
        ]);
        // The executable bit and the file with a space survive the trip.
        let top = Path::new(store).join(m["TOP"].trim_start_matches('/'));
        let exe = std::fs::metadata(top.join(&m["TOP_EXE_FILE"])).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(exe.permissions().mode() & 0o111, 0o111);
        assert!(top.join(&m["TOP_SPACED_FILE"]).exists());
        let log = server.log();
        assert!(
            log.contains(" sendfile"),
            "NARs went out with sendfile:\n{log}"
        );
    }
}

#[test]
fn store_ls_and_cat_over_http() {
    let nix = Nix::new();
    let m = manifest();
    for cache in ["cache-zstd", "cache-xz"] {
        let server = Server::start(&fixtures().join(cache), &[]);
        let listing = nix.ok(&["store", "ls", "--store", &server.url(), "-R", &m["TOP"]]);
        assert!(
            listing.contains(&m["TOP_SPACED_FILE"]),
            "{cache}: {listing}"
        );
        assert!(listing.contains(&m["TOP_SYMLINK"]), "{cache}: {listing}");
        let spaced = format!("{}/{}", m["TOP"], m["TOP_SPACED_FILE"]);
        let text = nix.ok(&["store", "cat", "--store", &server.url(), &spaced]);
        let on_disk =
            std::fs::read_to_string(fixtures().join("../../scripts/fixture.nix")).unwrap();
        assert!(
            !text.is_empty() && on_disk.contains(text.trim()),
            "{cache}: {text:?}"
        );
        // Nix 2.8 reads the NAR for `ls` even when a .ls listing exists (served, see tests/http.rs).
    }
}

#[test]
fn build_log_over_http() {
    let nix = Nix::new();
    let m = manifest();
    let server = Server::start(&fixtures().join("cache-xz"), &[]);
    let log = nix.ok(&["log", "--store", &server.url(), &m["TOP"]]);
    let drv = m["TOP_DRV"].trim_start_matches("/nix/store/");
    let on_disk = std::fs::read_to_string(fixtures().join("cache-xz/log").join(drv)).unwrap();
    assert_eq!(log.trim_end(), on_disk.trim_end());
    assert!(server.log().contains(&format!("GET /log/{drv} 200")));
}

#[test]
fn signed_cache_is_trusted_only_with_its_key() {
    let nix = Nix::new();
    let m = manifest();
    let server = Server::start(&fixtures().join("cache-signed"), &[]);
    let good = format!("trusted-public-keys = {}", m["PUBLIC_KEY"]);
    let store = nix.store("signed");
    let out = copy_trusting(
        &nix,
        &m["PUBLIC_KEY"],
        &server.url(),
        store.to_str().unwrap(),
        &m["TOP"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(good.contains("test-cache-1:"));

    let other = "other-cache-1:djNPOTsoQVImLUkw3nZz543GoqomIBYynwySLJ6/yNo=";
    let refused = nix.store("refused");
    let out = copy_trusting(
        &nix,
        other,
        &server.url(),
        refused.to_str().unwrap(),
        &m["TOP"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lacks a valid signature"), "{stderr}");
}

/// Adds a small file with unique content to the local store and returns its store path.
fn fresh_store_path(nix: &Nix, tag: &str) -> String {
    let file = nix.home.path().join(tag);
    let stamp = format!("{tag} {:?} {}", Instant::now(), std::process::id());
    std::fs::write(&file, stamp).unwrap();
    let out = Command::new("nix-store")
        .arg("--add")
        .arg(&file)
        .env("NIX_CONF_DIR", nix.home.path().join("conf"))
        .output()
        .expect("nix-store --add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn path_copied_in_while_running_is_visible_within_a_second() {
    let nix = Nix::new();
    let dir = copy_fixture("cache-xz");
    let server = Server::start(dir.path(), &["--rescan-interval", "3600"]);
    let path = fresh_store_path(&nix, "pushed-live");
    // Asked before it exists: a miss (the client is told not to remember misses).
    assert!(
        !nix.run(&["path-info", "--store", &server.url(), &path])
            .status
            .success()
    );

    nix.ok(&[
        "copy",
        "--to",
        &format!("file://{}", dir.path().display()),
        &path,
    ]);
    let copied = Instant::now();
    let mut seen = false;
    while copied.elapsed() < Duration::from_secs(1) {
        if nix
            .run(&["path-info", "--store", &server.url(), &path])
            .status
            .success()
        {
            seen = true;
            break;
        }
    }
    assert!(seen, "{path} not visible over HTTP within 1 s of nix copy");
    let store = nix.store("live");
    nix.ok(&[
        "copy",
        "--no-check-sigs",
        "--from",
        &server.url(),
        "--to",
        store.to_str().unwrap(),
        &path,
    ]);
}

/// The `embed` example: the cache mounted at /cache inside another tiny_http application.
struct Embedded(Child, u16);

impl Drop for Embedded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_embed_example(root: &Path) -> Embedded {
    // A crate of its own on crates.io's tiny_http (examples/embed), built by `make build`.
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/embed/debug/embed");
    assert!(
        bin.exists(),
        "{} missing: run `make build` (make test does), which builds examples/embed",
        bin.display()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .arg(root)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "embed example did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Embedded(child, port)
}

#[test]
fn cache_mounted_under_a_prefix_in_another_application() {
    let nix = Nix::new();
    let m = manifest();
    let app = start_embed_example(&fixtures().join("cache-zstd"));
    let hello = request(app.1, "GET", "/hello", &[]);
    assert_eq!(
        (hello.status, hello.text().as_str()),
        (200, "hello from the host application\n")
    );
    assert_eq!(
        request(app.1, "GET", "/nix-cache-info", &[]).status,
        404,
        "only below /cache"
    );

    let url = format!("http://127.0.0.1:{}/cache", app.1);
    let store = nix.store("embedded");
    nix.ok(&[
        "copy",
        "--no-check-sigs",
        "--from",
        &url,
        "--to",
        store.to_str().unwrap(),
        &m["TOP"],
    ]);
    nix.ok(&[
        "store",
        "verify",
        "--store",
        store.to_str().unwrap(),
        "--no-trust",
        "-r",
        &m["TOP"],
    ]);
    let listing = nix.ok(&["store", "ls", "--store", &url, "-R", &m["TOP"]]);
    assert!(listing.contains(&m["TOP_SPACED_FILE"]));
}

/// `nix store verify --sigs-needed 1` of the closure of `top` in the store at `url`,
/// trusting only `key`.
fn verify_sigs(nix: &Nix, url: &str, key: &str, top: &str) -> Output {
    nix.run(&[
        "store",
        "verify",
        "--store",
        url,
        "--option",
        "trusted-public-keys",
        key,
        "--sigs-needed",
        "1",
        "-r",
        top,
    ])
}

/// `nix copy` of `path` from `from` into `to` with `require-sigs`, trusting only `key`.
fn copy_trusting(nix: &Nix, key: &str, from: &str, to: &str, path: &str) -> Output {
    nix.run(&[
        "copy",
        "--option",
        "require-sigs",
        "true",
        "--option",
        "trusted-public-keys",
        key,
        "--from",
        from,
        "--to",
        to,
        path,
    ])
}

/// A cache directory served with uploads on, signing with the test key.
struct Writable {
    dir: TempDir,
    server: Server,
    netrc: PathBuf,
}

fn writable_cache(nix: &Nix, token_in_netrc: &str) -> Writable {
    let dir = TempDir::new("writable");
    let secrets = nix.home.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("tokens"), "push-token\n").unwrap();
    let netrc = secrets.join("netrc");
    std::fs::write(
        &netrc,
        format!("machine 127.0.0.1 login nix password {token_in_netrc}\n"),
    )
    .unwrap();
    let key = fixtures().join("keys/test-key.sec");
    let server = Server::start(
        dir.path(),
        &[
            "--upload-token-file",
            secrets.join("tokens").to_str().unwrap(),
            "--sign-key",
            key.to_str().unwrap(),
        ],
    );
    Writable { dir, server, netrc }
}

/// Puts the fixture closure into the local store (as a CI machine that built it would have it).
fn import_fixture_closure(nix: &Nix) {
    let fixture = format!("file://{}", fixtures().join("cache-xz").display());
    nix.ok(&[
        "copy",
        "--no-check-sigs",
        "--from",
        &fixture,
        &manifest()["TOP"],
    ]);
}

#[test]
fn push_with_nix_copy_to_http_then_pull_with_our_signatures() {
    let nix = Nix::new();
    let m = manifest();
    import_fixture_closure(&nix);
    let cache = writable_cache(&nix, "push-token");
    let url = cache.server.url();
    let netrc = cache.netrc.to_str().unwrap();
    nix.ok(&[
        "copy",
        "--option",
        "netrc-file",
        netrc,
        "--to",
        &url,
        &m["TOP"],
    ]);
    for path in closure() {
        let hash = &path["/nix/store/".len()..][..32];
        assert!(
            cache.dir.path().join(format!("{hash}.narinfo")).exists(),
            "{path} pushed"
        );
    }
    let log = cache.server.log();
    assert!(
        log.contains("PUT /nar/") && log.contains(".narinfo 200"),
        "{log}"
    );

    // Pulled back into a fresh store, trusting only our key: the signatures are ours.
    let store = nix.store("pulled");
    let out = copy_trusting(
        &nix,
        &m["PUBLIC_KEY"],
        &url,
        store.to_str().unwrap(),
        &m["TOP"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = verify_sigs(&nix, &url, &m["PUBLIC_KEY"], &m["TOP"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other = "other-cache-1:djNPOTsoQVImLUkw3nZz543GoqomIBYynwySLJ6/yNo=";
    let out = verify_sigs(&nix, &url, other, &m["TOP"]);
    assert!(
        !out.status.success(),
        "verification with another key must fail"
    );
}

#[test]
fn push_with_a_wrong_token_fails_and_changes_nothing() {
    let nix = Nix::new();
    import_fixture_closure(&nix);
    let cache = writable_cache(&nix, "wrong-token");
    let before: Vec<_> = std::fs::read_dir(cache.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let out = nix.run(&[
        "copy",
        "--option",
        "netrc-file",
        cache.netrc.to_str().unwrap(),
        "--to",
        &cache.server.url(),
        &manifest()["TOP"],
    ]);
    assert!(!out.status.success(), "push with a wrong token must fail");
    let after: Vec<_> = std::fs::read_dir(cache.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after);
    assert!(
        cache.server.log().contains(" 401 "),
        "{}",
        cache.server.log()
    );
}

#[test]
fn two_concurrent_pushes_of_the_same_closure_both_succeed() {
    let nix = Nix::new();
    let m = manifest();
    import_fixture_closure(&nix);
    let cache = writable_cache(&nix, "push-token");
    let url = cache.server.url();
    let pushes: Vec<_> = (0..2)
        .map(|i| {
            // Separate client caches, so neither skips paths because of the other's answers.
            // Nix's default negative TTL, not the test config's 0: with 0, Nix 2.8.0 checks
            // each path again just before uploading it and, if the other push stored it
            // meanwhile, drains the shared multi-path NAR stream and fails with "coroutine has
            // finished" without sending a request (a client bug: BinaryCacheStore::addToStore
            // calls narSource.drain(); upstream removed that in 7363dcd, Nix 2.35).
            let mut cmd = nix.command(&[
                "copy",
                "--option",
                "narinfo-cache-negative-ttl",
                "3600",
                "--option",
                "netrc-file",
                cache.netrc.to_str().unwrap(),
                "--to",
                &url,
                &m["TOP"],
            ]);
            cmd.env("XDG_CACHE_HOME", nix.home.path().join(format!("cache-{i}")));
            cmd.stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in pushes {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            cache.server.log()
        );
    }
    let out = verify_sigs(&nix, &url, &m["PUBLIC_KEY"], &m["TOP"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let leftovers: Vec<_> = std::fs::read_dir(cache.dir.path().join("nar"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
