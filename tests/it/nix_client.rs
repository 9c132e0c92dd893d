//! The real Nix clients against the running server: Debian's nix-bin (Nix 2.8, `nix` on PATH)
//! and Nix 2.35.2 (`/opt/nix-2.35/bin/nix`, from `../shared/nix-2.35`). Every test common to
//! both runs once per client (`<test>::nix_2_8`, `<test>::nix_2_35`); the tests of what only
//! newer clients do run with 2.35. They never skip: a missing client fails and says what to
//! install (`make test` installs both).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// Runs `$body(client)` as two tests, `$name::nix_2_8` and `$name::nix_2_35`.
macro_rules! both_clients {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn nix_2_8() {
                super::$name(super::Client::V2_8)
            }
            #[test]
            fn nix_2_35() {
                super::$name(super::Client::V2_35)
            }
        }
    )*};
}

both_clients!(
    path_info_lists_the_closure_over_http,
    copy_whole_closure_into_a_fresh_store_and_verify,
    store_ls_and_cat_over_http,
    build_log_over_http,
    signed_cache_is_trusted_only_with_its_key,
    path_copied_in_while_running_is_visible_within_a_second,
    cache_mounted_under_a_prefix_in_another_application,
    push_with_nix_copy_to_http_then_pull_with_our_signatures,
    push_with_a_wrong_token_fails_and_changes_nothing,
    two_concurrent_pushes_of_the_same_closure_both_succeed,
);

fn closure() -> Vec<String> {
    manifest()["CLOSURE"]
        .split(' ')
        .map(str::to_string)
        .collect()
}

fn path_info_lists_the_closure_over_http(client: Client) {
    let nix = Nix::new(client);
    let server = Server::start(&fixtures().join("cache-xz"), &[]);
    let top = &manifest()["TOP"];
    let out = nix.ok(&["path-info", "--store", &server.url(), "-r", top]);
    let mut got: Vec<&str> = out.lines().collect();
    got.sort();
    let mut want = closure();
    want.sort();
    assert_eq!(got, want);
}

fn copy_whole_closure_into_a_fresh_store_and_verify(client: Client) {
    let nix = Nix::new(client);
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

fn store_ls_and_cat_over_http(client: Client) {
    let nix = Nix::new(client);
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
        // Nix 2.8 reads the NAR for `ls` even when a .ls listing exists (served, see tests/it/http.rs).
    }
}

fn build_log_over_http(client: Client) {
    let nix = Nix::new(client);
    let m = manifest();
    let server = Server::start(&fixtures().join("cache-xz"), &[]);
    let log = nix.ok(&["log", "--store", &server.url(), &m["TOP"]]);
    let drv = m["TOP_DRV"].trim_start_matches("/nix/store/");
    let on_disk = std::fs::read_to_string(fixtures().join("cache-xz/log").join(drv)).unwrap();
    assert_eq!(log.trim_end(), on_disk.trim_end());
    // The access line is written once the answer is out and reaches us through the server's
    // stderr pipe, possibly after the client has exited.
    let line = format!("GET /log/{drv} 200");
    assert!(
        server.wait_for_log(&line, Duration::from_secs(10)),
        "{line}:\n{}",
        server.log()
    );
}

fn signed_cache_is_trusted_only_with_its_key(client: Client) {
    let nix = Nix::new(client);
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
    // 2.8: "lacks a valid signature"; 2.35: "lacks a signature by a trusted key".
    assert!(
        stderr.contains("lacks a valid signature")
            || stderr.contains("lacks a signature by a trusted key"),
        "{stderr}"
    );
}

/// Adds a small file with unique content to the local store and returns its store path.
fn fresh_store_path(nix: &Nix, tag: &str) -> String {
    let file = nix.home.path().join(tag);
    let stamp = format!("{tag} {:?} {}", Instant::now(), std::process::id());
    std::fs::write(&file, stamp).unwrap();
    let out = Command::new(nix.client.program("nix-store"))
        .arg("--add")
        .arg(&file)
        .env("NIX_CONF_DIR", nix.home.path().join("conf"))
        .env("XDG_CACHE_HOME", nix.home.path().join("cache"))
        .env("HOME", nix.home.path())
        .output()
        .expect("nix-store --add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn path_copied_in_while_running_is_visible_within_a_second(client: Client) {
    let nix = Nix::new(client);
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
struct Embedded {
    child: Child,
    port: u16,
    /// Held while it runs, like a [`Server`]'s (see `support::turns`).
    _turn: Turn,
}

impl Drop for Embedded {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_embed_example(root: &Path) -> Embedded {
    let turn = shared_turn();
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
    Embedded {
        child,
        port,
        _turn: turn,
    }
}

fn cache_mounted_under_a_prefix_in_another_application(client: Client) {
    let nix = Nix::new(client);
    let m = manifest();
    let app = start_embed_example(&fixtures().join("cache-zstd"));
    let hello = request(app.port, "GET", "/hello", &[]);
    assert_eq!(
        (hello.status, hello.text().as_str()),
        (200, "hello from the host application\n")
    );
    assert_eq!(
        request(app.port, "GET", "/nix-cache-info", &[]).status,
        404,
        "only below /cache"
    );

    let url = format!("http://127.0.0.1:{}/cache", app.port);
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
    writable_cache_with(nix, token_in_netrc, &[])
}

/// [`writable_cache`] with extra server flags.
fn writable_cache_with(nix: &Nix, token_in_netrc: &str, extra: &[&str]) -> Writable {
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
    let mut args = vec![
        "--upload-token-file".to_string(),
        secrets.join("tokens").to_str().unwrap().to_string(),
        "--sign-key".into(),
        key.to_str().unwrap().to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(dir.path(), &args);
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

fn push_with_nix_copy_to_http_then_pull_with_our_signatures(client: Client) {
    let nix = Nix::new(client);
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

fn push_with_a_wrong_token_fails_and_changes_nothing(client: Client) {
    let nix = Nix::new(client);
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

fn two_concurrent_pushes_of_the_same_closure_both_succeed(client: Client) {
    let nix = Nix::new(client);
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

// ---- What only newer clients do: Nix 2.35 (and, for cross-reading, 2.8 beside it) ----

impl Nix {
    /// `nix build` of a Nix expression into this client's own store; returns the output path.
    fn build(&self, expr: &str) -> (String, String) {
        let out = self.run(&[
            "build",
            "--impure",
            "--no-link",
            "--print-out-paths",
            "--expr",
            expr,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "nix build {expr}:\n{stderr}");
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(path.starts_with("/nix/store/"), "{path:?}\n{stderr}");
        (path, stderr)
    }

    /// `nix copy --to URL PATH` with this cache's netrc.
    fn push(&self, cache: &Writable, url_options: &str, path: &str) -> Output {
        let url = format!("{}{url_options}", cache.server.url());
        self.run(&[
            "copy",
            "--option",
            "netrc-file",
            cache.netrc.to_str().unwrap(),
            "--to",
            &url,
            path,
        ])
    }
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A derivation built by `/bin/sh` that writes `script`'s output to `$out`.
fn sh_derivation(name: &str, script: &str, extra: &str) -> String {
    format!(
        "derivation {{ name = \"{name}\"; system = builtins.currentSystem; builder = \"/bin/sh\"; \
         args = [\"-c\" \"{script}\"]; {extra} }}"
    )
}

/// The narinfo files of `dir`, which must all be plain text a Nix 2.8 client can parse.
fn narinfos_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "narinfo"))
        .collect()
}

#[test]
fn nix_2_35_pushes_compressed_metadata_that_every_client_reads() {
    let nix = Nix::new(Client::V2_35);
    let old = Nix::new(Client::V2_8);
    let m = manifest();
    import_fixture_closure(&nix);
    // (narinfo, listing, NAR) compressions: every Content-Encoding 2.35 sends for metadata
    // (`none` included), and every NAR compression 2.8 can read too.
    for (narinfo_c, ls_c, nar_c) in [
        ("br", "xz", "zstd"),
        ("xz", "gzip", "xz"),
        ("zstd", "bzip2", "bzip2"),
        ("gzip", "br", "none"),
        ("bzip2", "none", "br"),
    ] {
        let cache = writable_cache(&nix, "push-token");
        let options = format!(
            "?compression={nar_c}&write-nar-listing=true&narinfo-compression={narinfo_c}\
             &ls-compression={ls_c}"
        );
        assert_ok(&nix.push(&cache, &options, &m["TOP"]), &options);
        let log = cache.server.log();
        assert!(!log.contains(" 415 ") && !log.contains(" 400 "), "{log}");
        for path in closure() {
            let hash = &path["/nix/store/".len()..][..32];
            let narinfo =
                std::fs::read_to_string(cache.dir.path().join(format!("{hash}.narinfo"))).unwrap();
            assert!(narinfo.starts_with("StorePath: "), "{options}: {narinfo:?}");
            let ls = std::fs::read_to_string(cache.dir.path().join(format!("{hash}.ls"))).unwrap();
            assert!(ls.starts_with('{'), "{options}: {ls:?}");
        }
        assert_eq!(narinfos_in(cache.dir.path()).len(), closure().len());
        // Read back by both clients, trusting only our key.
        for (reader, tag) in [(&nix, "2.35"), (&old, "2.8")] {
            let store = reader.store(&format!("pulled-{narinfo_c}-{tag}"));
            let out = copy_trusting(
                reader,
                &m["PUBLIC_KEY"],
                &cache.server.url(),
                store.to_str().unwrap(),
                &m["TOP"],
            );
            assert_ok(
                &out,
                &format!("Nix {tag} reading a cache pushed with {options}"),
            );
        }
    }
}

#[test]
fn nix_2_35_copy_log_with_compression_and_nix_log_of_a_plus_name() {
    let nix = Nix::new(Client::V2_35);
    let expr = sh_derivation("libfoo++-1.0", "echo building libfoo++; echo hi > $out", "");
    let (path, _) = nix.build(&expr);
    let cache = writable_cache(&nix, "push-token");
    assert_ok(&nix.push(&cache, "", &path), "nix copy");
    let drv = std::fs::read_dir(cache.dir.path())
        .unwrap()
        .find_map(|e| {
            let text = std::fs::read_to_string(e.unwrap().path()).ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix("Deriver: ").map(str::to_string))
        })
        .expect("a narinfo with a Deriver");
    assert!(drv.ends_with("-libfoo++-1.0.drv"), "{drv}");
    let stored = cache.dir.path().join("log").join(&drv);
    for compression in ["zstd", "br", "xz", "gzip", "bzip2"] {
        let _ = std::fs::remove_file(&stored);
        let to = format!("{}?log-compression={compression}", cache.server.url());
        let netrc = cache.netrc.to_str().unwrap();
        let out = nix.run(&[
            "store",
            "copy-log",
            "--option",
            "netrc-file",
            netrc,
            "--to",
            &to,
            &path,
        ]);
        assert_ok(&out, &format!("copy-log with {compression}"));
        let plain = std::fs::read_to_string(&stored).unwrap();
        assert!(
            plain.contains("building libfoo++"),
            "{compression}: {plain:?}"
        );
    }
    // 2.35 asks for `libfoo%2B%2B-1.0.drv`, 2.8 for `libfoo++-1.0.drv`: both get the log.
    for reader in [Nix::new(Client::V2_35), Nix::new(Client::V2_8)] {
        let log = reader.ok(&["log", "--store", &cache.server.url(), &path]);
        assert!(
            log.contains("building libfoo++"),
            "{:?}: {log:?}",
            reader.client
        );
    }
    let server_log = cache.server.log();
    let escaped = drv.replace('+', "%2B");
    assert!(
        server_log.contains(&format!("GET /log/{escaped} 200"))
            && server_log.contains(&format!("GET /log/{drv} 200")),
        "{server_log}"
    );
}

#[test]
fn nix_2_35_pushes_a_big_closure_through_few_upload_places_and_2_8_reads_it() {
    let nix = Nix::new(Client::V2_35);
    let leaves = 28;
    let expr = format!(
        "let leaf = i: {}; leaves = builtins.genList leaf {leaves}; in {}",
        // 1 MB each, incompressible: uploads long enough to overlap.
        sh_derivation(
            "leaf-${toString i}",
            "head -c 1000000 /dev/urandom > $out; echo leaf ${toString i} >> $out",
            ""
        ),
        sh_derivation("many-top", "echo ${toString leaves} > $out", "")
    );
    let (top, _) = nix.build(&expr);
    // 2.35 uploads in parallel (here as many paths at once as the machine has cores, at least
    // 2): with a single place, the others must wait for it.
    let cache = writable_cache_with(&nix, "push-token", &["--max-uploads", "1"]);
    let started = Instant::now();
    assert_ok(&nix.push(&cache, "?compression=none", &top), "nix copy");
    let took = started.elapsed();
    let log = cache.server.log();
    assert_eq!(narinfos_in(cache.dir.path()).len(), leaves + 1, "{log}");
    assert!(!log.contains(" 503 "), "no upload was refused:\n{log}");
    assert!(
        log.contains("for an upload place"),
        "some uploads had to wait for a place (in {took:?}):\n{log}"
    );
    // Read by Nix 2.8 with require-sigs, trusting only our key.
    let old = Nix::new(Client::V2_8);
    let m = manifest();
    let store = old.store("from-2.35");
    let out = copy_trusting(
        &old,
        &m["PUBLIC_KEY"],
        &cache.server.url(),
        store.to_str().unwrap(),
        &top,
    );
    assert_ok(&out, "Nix 2.8 reading what 2.35 pushed");
    let refs = std::fs::read_to_string(Path::new(store.to_str().unwrap()).join(&top[1..])).unwrap();
    assert_eq!(refs.split_whitespace().count(), leaves);
    let other = "other-cache-1:djNPOTsoQVImLUkw3nZz543GoqomIBYynwySLJ6/yNo=";
    let refused = old.store("refused");
    let out = copy_trusting(
        &old,
        other,
        &cache.server.url(),
        refused.to_str().unwrap(),
        &top,
    );
    assert!(!out.status.success(), "another key must not be trusted");
}

#[test]
fn nix_2_8_pushes_and_nix_2_35_reads_trusting_only_our_key() {
    let old = Nix::new(Client::V2_8);
    let m = manifest();
    import_fixture_closure(&old);
    let cache = writable_cache(&old, "push-token");
    assert_ok(&old.push(&cache, "", &m["TOP"]), "Nix 2.8 push");
    let nix = Nix::new(Client::V2_35);
    let store = nix.store("from-2.8");
    let out = copy_trusting(
        &nix,
        &m["PUBLIC_KEY"],
        &cache.server.url(),
        store.to_str().unwrap(),
        &m["TOP"],
    );
    assert_ok(&out, "Nix 2.35 reading what 2.8 pushed");
    let out = verify_sigs(&nix, &cache.server.url(), &m["PUBLIC_KEY"], &m["TOP"]);
    assert_ok(&out, "Nix 2.35 verifying our signatures");
    let other = "other-cache-1:djNPOTsoQVImLUkw3nZz543GoqomIBYynwySLJ6/yNo=";
    let refused = nix.store("refused");
    let out = copy_trusting(
        &nix,
        other,
        &cache.server.url(),
        refused.to_str().unwrap(),
        &m["TOP"],
    );
    assert!(!out.status.success(), "another key must not be trusted");
}

/// Builds `expr` in a fresh 2.35 store that substitutes only from `url`, trusting only our key;
/// returns the build's stderr after checking it substituted instead of building.
fn substitute_ca(url: &str, expr: &str, want: &str) -> String {
    let reader = Nix::new(Client::V2_35);
    let (path, stderr) = {
        let out = reader.run(&[
            "build",
            "--impure",
            "--no-link",
            "--print-out-paths",
            "--option",
            "substituters",
            url,
            "--option",
            "require-sigs",
            "true",
            "--option",
            "trusted-public-keys",
            &manifest()["PUBLIC_KEY"],
            "--expr",
            expr,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        (
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            stderr,
        )
    };
    assert_eq!(path, want, "{stderr}");
    assert!(
        !stderr.contains("building '"),
        "substituted, not built:\n{stderr}"
    );
    assert!(stderr.contains("copying path"), "{stderr}");
    stderr
}

#[test]
fn nix_2_35_content_addressed_path_both_ways() {
    let nix = Nix::new(Client::V2_35);
    let expr = sh_derivation(
        "ca-thing",
        "echo building ca; echo ca-content > $out",
        "__contentAddressed = true; outputHashMode = \"recursive\"; outputHashAlgo = \"sha256\";",
    );
    let (path, _) = nix.build(&expr);
    let drv = nix.ok(&[
        "eval",
        "--impure",
        "--raw",
        "--expr",
        &format!("({expr}).drvPath"),
    ]);
    let installable = format!("{drv}^out");

    // Pushed over HTTP (PUT build-trace-v2/<drv>/out.doi), substituted over HTTP.
    let cache = writable_cache(&nix, "push-token");
    assert_ok(
        &nix.push(&cache, "", &installable),
        "nix copy of a CA output",
    );
    let drv_name = drv.trim_start_matches("/nix/store/");
    let trace = cache
        .dir
        .path()
        .join(format!("build-trace-v2/{drv_name}/out.doi"));
    assert!(trace.exists(), "{}", cache.server.log());
    substitute_ca(&cache.server.url(), &expr, &path);
    assert!(
        cache
            .server
            .log()
            .contains(&format!("GET /build-trace-v2/{drv_name}/out.doi 200"))
    );

    // Written by `nix copy --to file://`, served read-only, substituted over HTTP.
    let dir = TempDir::new("ca-file");
    nix.ok(&[
        "copy",
        "--to",
        &format!("file://{}", dir.path().display()),
        &installable,
    ]);
    let key = fixtures().join("keys/test-key.sec");
    let server = Server::start(dir.path(), &["--sign-key", key.to_str().unwrap()]);
    substitute_ca(&server.url(), &expr, &path);
    assert!(
        server.log().contains("/build-trace-v2/"),
        "{}",
        server.log()
    );
}
