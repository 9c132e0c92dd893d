//! The narinfo index follows the directory: paths copied in with the real Nix client
//! (`nix copy --to file://`), removed, or a whole directory replaced are served (or not)
//! within 100 ms, from memory, under `--watch inotify`; `--watch poll` looks at the disk.
//! The inotify queue overflow is tested in `src/watch.rs` (an injected overflow event).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;

/// The longest a change on disk may take to reach the answers.
const WITHIN: Duration = Duration::from_millis(100);

/// A value from `/metrics`.
fn metric(server: &Server, name: &str) -> u64 {
    let text = server.get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

fn status(server: &Server, hash: &str) -> u16 {
    server.get(&format!("/{hash}.narinfo")).status
}

/// Watches for a file to appear (`want_present`) or vanish while the server is asked for its
/// narinfo every 2 ms; returns how long after the file changed on disk the server's answer
/// changed too (measured from the moment this test saw the change, so a slow test thread
/// makes it shorter, never longer). Both loops run until `deadline`.
fn lag_after_change(
    server: &Server,
    file: &Path,
    hash: &str,
    want_present: bool,
    deadline: Duration,
    change: impl FnOnce() + Send,
) -> Duration {
    let seen_on_disk: Arc<Mutex<Option<Instant>>> = Arc::default();
    let want_status = if want_present { 200 } else { 404 };
    let end = Instant::now() + deadline;
    std::thread::scope(|s| {
        let seen = seen_on_disk.clone();
        let poller = s.spawn(move || {
            while Instant::now() < end {
                if file.exists() == want_present {
                    seen.lock().unwrap().get_or_insert_with(Instant::now);
                    return;
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        });
        let changer = s.spawn(change);
        let mut served_at = None;
        while Instant::now() < end {
            let asked = Instant::now();
            if status(server, hash) == want_status {
                served_at = Some(asked);
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        changer.join().unwrap();
        poller.join().unwrap();
        let served_at = served_at.unwrap_or_else(|| {
            panic!(
                "{hash}.narinfo never answered {want_status} within {deadline:?}; log:\n{}",
                server.log()
            )
        });
        let seen = seen_on_disk
            .lock()
            .unwrap()
            .expect("the change was seen on disk");
        served_at.saturating_duration_since(seen)
    })
}

fn nix_copy(from: &str, to: &Path, paths: &[&str]) {
    let to = format!("file://{}", to.display());
    let mut args = vec!["copy", "--no-check-sigs", "--from", from, "--to", &to];
    args.extend_from_slice(paths);
    Nix::new(Client::V2_8).ok(&args);
}

fn hash_of(store_path: &str) -> String {
    store_path.rsplit('/').next().unwrap()[..32].to_string()
}

#[test]
fn nix_copy_into_the_directory_is_served_within_100ms_and_removal_too() {
    let served = TempDir::new("watched");
    std::fs::copy(
        fixtures().join("cache-zstd/nix-cache-info"),
        served.path().join("nix-cache-info"),
    )
    .unwrap();
    let server = Server::start(served.path(), &["--watch", "inotify"]);
    assert_eq!(metric(&server, "nbc_watch_inotify"), 1);
    assert_eq!(metric(&server, "nbc_index_watched"), 1, "{}", server.log());
    assert_eq!(metric(&server, "nbc_index_complete"), 1);
    assert_eq!(metric(&server, "nbc_index_read"), 1);

    let m = manifest();
    let top = hash_of(&m["TOP"]);
    assert_eq!(status(&server, &top), 404);
    let source = format!("file://{}", fixtures().join("cache-zstd").display());
    let file = served.path().join(format!("{top}.narinfo"));
    let lag = lag_after_change(&server, &file, &top, true, Duration::from_secs(60), || {
        nix_copy(&source, served.path(), &[&m["TOP"]])
    });
    eprintln!("nix copy --to file://: served {lag:?} after the narinfo appeared");
    assert!(lag <= WITHIN, "served {lag:?} after the rename");
    // The whole closure, with the bytes Nix wrote; learnt from inotify, not from the disk.
    for path in m["CLOSURE"].split(' ') {
        let hash = hash_of(path);
        let r = server.get(&format!("/{hash}.narinfo"));
        let on_disk = std::fs::read(served.path().join(format!("{hash}.narinfo"))).unwrap();
        assert_eq!((r.status, r.body), (200, on_disk), "{path}");
    }
    assert!(metric(&server, "nbc_watch_events_total") >= 3);
    assert_eq!(metric(&server, "nbc_index_watched"), 1);

    // Removed (as `gc` does): no longer served within 100 ms.
    let lag = lag_after_change(&server, &file, &top, false, Duration::from_secs(10), || {
        std::fs::remove_file(&file).unwrap()
    });
    eprintln!("removed: 404 {lag:?} after the narinfo vanished");
    assert!(lag <= WITHIN, "still served {lag:?} after the removal");
    assert_eq!(metric(&server, "nbc_watch_overflows_total"), 0);
}

#[test]
fn a_replaced_directory_is_watched_again() {
    let parent = TempDir::new("replaced-watch");
    let dir = parent.path().join("cache");
    copy_dir(&fixtures().join("cache-xz"), &dir);
    let server = Server::start(&dir, &["--watch", "inotify", "--rescan-interval", "0"]);
    let m = manifest();
    let (top, mid) = (hash_of(&m["TOP"]), hash_of(&m["MID"]));
    assert_eq!(status(&server, &top), 200);

    // `mv cache cache.old && mkdir cache`, filled with another cache that lacks TOP.
    std::fs::rename(&dir, parent.path().join("cache.old")).unwrap();
    copy_dir(&fixtures().join("cache-zstd"), &dir);
    std::fs::remove_file(dir.join(format!("{top}.narinfo"))).unwrap();
    let zstd_mid = std::fs::read(dir.join(format!("{mid}.narinfo"))).unwrap();

    // Noticed without any periodic rescan: the new directory's bytes, TOP gone.
    let end = Instant::now() + Duration::from_secs(10);
    while metric(&server, "nbc_index_watched") == 0
        || server.get(&format!("/{mid}.narinfo")).body != zstd_mid
    {
        assert!(Instant::now() < end, "not picked up:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status(&server, &top), 404);
    assert!(metric(&server, "nbc_watch_losses_total") >= 1);
    assert!(
        server.log().contains("was moved or removed") || server.log().contains("was replaced"),
        "{}",
        server.log()
    );

    // The new directory is the one watched now: a file renamed into it is reported.
    let events = metric(&server, "nbc_watch_events_total");
    let file = dir.join(format!("{top}.narinfo"));
    let text = std::fs::read(fixtures().join(format!("cache-zstd/{top}.narinfo"))).unwrap();
    let lag = lag_after_change(&server, &file, &top, true, Duration::from_secs(10), || {
        std::fs::write(dir.join("top.tmp"), &text).unwrap();
        std::fs::rename(dir.join("top.tmp"), &file).unwrap();
    });
    assert!(lag <= WITHIN, "served {lag:?} after the rename");
    assert!(metric(&server, "nbc_watch_events_total") > events);
}

#[test]
fn poll_mode_looks_at_the_disk_for_every_miss() {
    let dir = copy_fixture("cache-xz");
    let m = manifest();
    let top = hash_of(&m["TOP"]);
    let file = dir.path().join(format!("{top}.narinfo"));
    let text = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    let server = Server::start(dir.path(), &["--watch", "poll", "--rescan-interval", "0"]);
    assert_eq!(metric(&server, "nbc_watch_inotify"), 0);
    assert_eq!(metric(&server, "nbc_index_watched"), 0);
    assert_eq!(status(&server, &top), 404);

    // No watch tells this server anything: the very first request after the rename finds the
    // file, because a miss looks at the disk.
    std::fs::write(dir.path().join("top.tmp"), &text).unwrap();
    std::fs::rename(dir.path().join("top.tmp"), &file).unwrap();
    let r = server.get(&format!("/{top}.narinfo"));
    assert_eq!((r.status, r.body), (200, text));
    assert_eq!(metric(&server, "nbc_watch_events_total"), 0);
    assert_eq!(
        metric(&server, "nbc_rescans_total"),
        1,
        "only the first scan ran"
    );
}
