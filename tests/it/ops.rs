//! The operator commands as a library: `verify` on clean and deliberately broken caches, and
//! `gc` plans and deletions, always checked to leave a cache that verifies clean.

use std::collections::BTreeMap;
use std::fs::{File, FileTimes};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::support::{BIN, Server, TempDir, copy_fixture, fixtures, manifest};
use nix_binary_cache::ops::gc::{self, GcPolicy, Reason};
use nix_binary_cache::ops::verify::{Problem, Progress, Report, VerifyOptions, verify};

const DAY: Duration = Duration::from_secs(24 * 3600);
const STRAY_NAR: &str = "nar/0000000000000000000000000000000000000000000000000000.nar.xz";

/// The 32-character hashes of TOP, MID and BASE (TOP → MID → BASE).
fn hashes() -> [String; 3] {
    let m = manifest();
    ["TOP", "MID", "BASE"].map(|k| {
        let path = &m[k];
        let base = path.rsplit('/').next().unwrap();
        base[..32].to_string()
    })
}

fn run_verify(root: &Path, quick: bool) -> Report {
    let options = VerifyOptions {
        quick,
        ..VerifyOptions::default()
    };
    verify(root, &options, &mut |_| {}).unwrap()
}

fn describe(report: &Report) -> String {
    let lines: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    lines.join("\n")
}

fn assert_clean(root: &Path) {
    let report = run_verify(root, false);
    assert!(
        report.is_clean(),
        "{}:\n{}",
        root.display(),
        describe(&report)
    );
}

fn narinfo(root: &Path, hash: &str) -> PathBuf {
    root.join(format!("{hash}.narinfo"))
}

/// The NAR file a narinfo points to.
fn nar_of(root: &Path, hash: &str) -> PathBuf {
    let text = std::fs::read_to_string(narinfo(root, hash)).unwrap();
    let url = text.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
    root.join(url)
}

/// Sets a file's access and modification times `ago` into the past.
fn age(path: &Path, ago: Duration) {
    let t = SystemTime::now() - ago;
    let file = File::options().write(true).open(path).unwrap();
    file.set_times(FileTimes::new().set_accessed(t).set_modified(t))
        .unwrap();
}

/// Ages a store path: its narinfo and its NAR.
fn age_path(root: &Path, hash: &str, ago: Duration) {
    age(&nar_of(root, hash), ago);
    age(&narinfo(root, hash), ago);
}

/// Every file under `dir` with its length and mtime, to see what changed.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            out.extend(snapshot(&entry.path()));
        } else {
            out.insert(entry.path(), (meta.len(), meta.modified().unwrap()));
        }
    }
    out
}

fn older_than(days: u64) -> GcPolicy {
    GcPolicy {
        older_than: Some(DAY * days as u32),
        max_size: None,
    }
}

// ---- verify ----

#[test]
fn fixture_caches_verify_clean_with_progress() {
    for name in ["cache-xz", "cache-zstd", "cache-signed"] {
        let root = fixtures().join(name);
        let mut ticks: Vec<Progress> = Vec::new();
        let report = verify(&root, &VerifyOptions::default(), &mut |p| ticks.push(p)).unwrap();
        assert!(report.is_clean(), "{name}:\n{}", describe(&report));
        assert_eq!((report.narinfos, report.nars_hashed), (3, 3), "{name}");
        let nar_bytes: u64 = hashes()
            .iter()
            .map(|h| std::fs::metadata(nar_of(&root, h)).unwrap().len())
            .sum();
        assert_eq!(report.bytes_hashed, nar_bytes, "{name}");

        let (first, last) = (ticks[0], *ticks.last().unwrap());
        assert_eq!((first.nars_done, first.bytes_done), (0, 0), "{name}");
        assert_eq!((last.nars_done, last.nars_total), (3, 3), "{name}");
        assert_eq!((last.bytes_done, last.bytes_total), (nar_bytes, nar_bytes));

        let quick = run_verify(&root, true);
        assert!(quick.is_clean() && quick.nars_hashed == 0, "{name}");
    }
}

#[test]
fn flipped_bytes_are_a_hash_mismatch_that_quick_does_not_read() {
    let cache = copy_fixture("cache-xz");
    let [top, ..] = hashes();
    let nar = nar_of(cache.path(), &top);
    let mut bytes = std::fs::read(&nar).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&nar, bytes).unwrap();

    let report = run_verify(cache.path(), false);
    assert_eq!(report.problems.len(), 1, "{}", describe(&report));
    let Problem::HashMismatch {
        nar: found,
        expected,
        actual,
        ..
    } = &report.problems[0]
    else {
        panic!("{}", describe(&report));
    };
    assert_eq!(found, &nar);
    assert_ne!(expected, actual);
    let line = report.problems[0].to_string();
    assert!(line.contains(&*nar.to_string_lossy()) && line.contains("corrupt"));

    assert!(run_verify(cache.path(), true).is_clean());
}

#[test]
fn truncated_nar_is_a_size_mismatch() {
    let cache = copy_fixture("cache-zstd");
    let [top, ..] = hashes();
    let nar = nar_of(cache.path(), &top);
    let len = std::fs::metadata(&nar).unwrap().len();
    File::options()
        .write(true)
        .open(&nar)
        .unwrap()
        .set_len(len - 100)
        .unwrap();

    for quick in [false, true] {
        let report = run_verify(cache.path(), quick);
        assert_eq!(report.problems.len(), 1, "{}", describe(&report));
        assert!(
            matches!(&report.problems[0],
                Problem::SizeMismatch { nar: n, expected, actual, .. }
                    if n == &nar && *expected == len && *actual == len - 100),
            "{}",
            describe(&report)
        );
    }
}

#[test]
fn missing_nar_is_reported() {
    let cache = copy_fixture("cache-xz");
    let [_, mid, _] = hashes();
    let nar = nar_of(cache.path(), &mid);
    std::fs::remove_file(&nar).unwrap();

    let report = run_verify(cache.path(), false);
    let expected = Problem::MissingNar {
        narinfo: narinfo(cache.path(), &mid),
        nar,
    };
    assert_eq!(report.problems, [expected], "{}", describe(&report));
}

#[test]
fn a_missing_reference_breaks_the_closure() {
    let cache = copy_fixture("cache-xz");
    let [_, mid, base] = hashes();
    let base_nar = nar_of(cache.path(), &base);
    std::fs::remove_file(narinfo(cache.path(), &base)).unwrap();

    let report = run_verify(cache.path(), false);
    let base_name = manifest()["BASE"].rsplit('/').next().unwrap().to_string();
    let expected = [
        Problem::MissingReference {
            narinfo: narinfo(cache.path(), &mid),
            reference: base_name,
        },
        Problem::StrayNar { file: base_nar },
    ];
    assert_eq!(report.problems, expected, "{}", describe(&report));
    assert!(
        report.problems[0]
            .to_string()
            .contains("closure is incomplete")
    );
}

#[test]
fn a_malformed_narinfo_is_reported_and_its_nar_is_no_stray() {
    let cache = copy_fixture("cache-signed");
    let [top, ..] = hashes();
    let file = narinfo(cache.path(), &top);
    let text = std::fs::read_to_string(&file).unwrap();
    let broken = text.replace("NarSize: ", "NarSize: lots");
    assert_ne!(text, broken);
    std::fs::write(&file, broken).unwrap();

    let report = run_verify(cache.path(), false);
    let [Problem::MalformedNarInfo { file: f, reason }] = &report.problems[..] else {
        panic!("one malformed narinfo expected:\n{}", describe(&report));
    };
    assert!(f == &file && reason.contains("NarSize"), "{f:?}: {reason}");
    assert_eq!(report.narinfos, 3);
}

#[test]
fn garbage_narinfos_are_problems_not_crashes() {
    let cache = copy_fixture("cache-xz");
    let [top, mid, _] = hashes();
    // Binary junk, an oversized file, and a good narinfo under another path's name.
    let junk = cache
        .path()
        .join("00000000000000000000000000000000.narinfo");
    std::fs::write(&junk, [0xff, 0xfe, 0, b'\n']).unwrap();
    let huge = cache
        .path()
        .join("11111111111111111111111111111111.narinfo");
    std::fs::write(&huge, vec![b'x'; 2 << 20]).unwrap();
    let misnamed = cache
        .path()
        .join("22222222222222222222222222222222.narinfo");
    std::fs::copy(narinfo(cache.path(), &top), &misnamed).unwrap();
    let odd_name = cache.path().join("not-a-hash.narinfo");
    std::fs::copy(narinfo(cache.path(), &mid), &odd_name).unwrap();

    let report = run_verify(cache.path(), false);
    let files: Vec<&Path> = report.problems.iter().map(|p| p.file()).collect();
    assert_eq!(
        files,
        [&junk, &huge, &misnamed, &odd_name],
        "{}",
        describe(&report)
    );
    assert!(matches!(report.problems[2], Problem::WrongStorePath { .. }));
    assert!(describe(&report).contains("not UTF-8"));
}

#[test]
fn stray_nars_and_temporaries_are_listed() {
    let cache = copy_fixture("cache-xz");
    let root = cache.path();
    std::fs::write(root.join(STRAY_NAR), b"stray").unwrap();
    let ours = root.join("nar/.nbc-upload.otherhost.12.0.tmp");
    let nix = root.join("kkafqq118sd9ik0pwm1z46lb3gj66hih.narinfo.tmp.4242.1");
    let logs_nix = root.join("log/x.drv.tmp");
    for f in [&ours, &nix, &logs_nix] {
        std::fs::write(f, b"partial").unwrap();
    }

    let report = run_verify(root, false);
    let expected = [
        Problem::NixTemporary { file: nix },
        Problem::NixTemporary { file: logs_nix },
        Problem::UploadTemporary { file: ours },
        Problem::StrayNar {
            file: root.join(STRAY_NAR),
        },
    ];
    assert_eq!(report.problems, expected, "{}", describe(&report));
    assert!(report.problems[3].to_string().contains("`gc` removes it"));
}

// ---- gc ----

#[test]
fn gc_needs_a_limit() {
    let cache = copy_fixture("cache-xz");
    let e = gc::plan(cache.path(), &GcPolicy::default(), SystemTime::now()).unwrap_err();
    assert!(
        e.to_string().contains("--older-than DAYS or --max-size"),
        "{e}"
    );
}

#[test]
fn gc_older_than_removes_old_paths_and_their_referrers() {
    let cache = copy_fixture("cache-xz");
    let root = cache.path();
    let [top, mid, base] = hashes();
    let (top_nar, mid_nar) = (nar_of(root, &top), nar_of(root, &mid));
    age_path(root, &mid, DAY * 40);
    let logs = snapshot(&root.join("log"));

    let plan = gc::plan(root, &older_than(30), SystemTime::now()).unwrap();
    let removed: Vec<(&str, &Reason)> = plan
        .paths
        .iter()
        .map(|p| (p.hash.as_str(), &p.reason))
        .collect();
    let referrer = Reason::Referrer { of: mid.clone() };
    assert_eq!(removed, [(&*top, &referrer), (&*mid, &Reason::Old)]);
    assert_eq!(plan.paths[0].store_path, manifest()["TOP"]);
    assert!(plan.strays.is_empty() && plan.skipped.is_empty());
    let freed: u64 = [
        &top_nar,
        &mid_nar,
        &narinfo(root, &top),
        &narinfo(root, &mid),
    ]
    .iter()
    .map(|f| std::fs::metadata(f).unwrap().len())
    .sum();
    assert_eq!(plan.bytes, freed);
    assert_eq!(plan.size_after, plan.size_before - freed);

    let outcome = gc::execute(root, &plan).unwrap();
    assert_eq!(
        (outcome.narinfos, outcome.nars, outcome.bytes),
        (2, 2, freed)
    );
    assert_eq!((outcome.vanished, outcome.kept), (0, 0));
    for gone in [narinfo(root, &top), narinfo(root, &mid), top_nar, mid_nar] {
        assert!(!gone.exists(), "{} should be gone", gone.display());
    }
    assert!(narinfo(root, &base).exists() && nar_of(root, &base).exists());
    assert_eq!(snapshot(&root.join("log")), logs, "logs are left alone");
    assert_clean(root);
}

#[test]
fn gc_older_than_keeps_what_old_paths_reference() {
    let cache = copy_fixture("cache-xz");
    let root = cache.path();
    let [top, ..] = hashes();
    age_path(root, &top, DAY * 40);

    let plan = gc::plan(root, &older_than(30), SystemTime::now()).unwrap();
    let removed: Vec<&str> = plan.paths.iter().map(|p| p.hash.as_str()).collect();
    assert_eq!(removed, [&*top]);
    gc::execute(root, &plan).unwrap();
    assert_clean(root);
    assert_eq!(run_verify(root, false).narinfos, 2);
}

#[test]
fn gc_max_size_that_forces_base_out_removes_its_whole_closure() {
    let cache = copy_fixture("cache-zstd");
    let root = cache.path();
    let [top, mid, base] = hashes();
    age_path(root, &base, DAY * 3);
    age_path(root, &mid, DAY * 2);
    age_path(root, &top, DAY);
    let before = snapshot(root);
    let cached: u64 = before
        .iter()
        .filter(|(p, _)| !p.starts_with(root.join("log")) && !p.ends_with("nix-cache-info"))
        .map(|(_, (len, _))| len)
        .sum();

    let policy = GcPolicy {
        older_than: None,
        max_size: Some(cached - 1),
    };
    let plan = gc::plan(root, &policy, SystemTime::now()).unwrap();
    assert_eq!(plan.size_before, cached);
    let removed: Vec<(&str, &Reason)> = plan
        .paths
        .iter()
        .map(|p| (p.hash.as_str(), &p.reason))
        .collect();
    let (of_mid, of_base) = (
        Reason::Referrer { of: mid.clone() },
        Reason::Referrer { of: base.clone() },
    );
    assert_eq!(
        removed,
        [
            (&*top, &of_mid),
            (&*mid, &of_base),
            (&*base, &Reason::LeastRecentlyUsed)
        ],
        "referrers are deleted before what they reference"
    );
    assert!(
        plan.paths
            .iter()
            .all(|p| p.listing.is_some() && p.nar.is_some())
    );
    assert_eq!(
        (plan.bytes, plan.size_after),
        (cached, 0),
        "overshoot is reported"
    );

    let outcome = gc::execute(root, &plan).unwrap();
    assert_eq!(
        (outcome.narinfos, outcome.listings, outcome.nars),
        (3, 3, 3)
    );
    assert_eq!(outcome.bytes, cached);
    assert!(
        std::fs::read_dir(root.join("nar"))
            .unwrap()
            .next()
            .is_none()
    );
    assert_eq!(snapshot(&root.join("log")).len(), 3);
    assert_clean(root);
}

#[test]
fn gc_max_size_removes_least_recently_used_first() {
    let cache = copy_fixture("cache-xz");
    let root = cache.path();
    let [top, mid, base] = hashes();
    // TOP is the oldest by mtime, but its NAR was downloaded an hour ago: atime counts.
    age_path(root, &top, DAY * 10);
    let t = SystemTime::now() - Duration::from_secs(3600);
    let top_nar = File::options()
        .write(true)
        .open(nar_of(root, &top))
        .unwrap();
    top_nar.set_times(FileTimes::new().set_accessed(t)).unwrap();
    age_path(root, &mid, DAY * 5);
    age_path(root, &base, DAY * 4);

    let probe = gc::plan(root, &older_than(10_000), SystemTime::now()).unwrap();
    let policy = GcPolicy {
        older_than: None,
        max_size: Some(probe.size_before - 1),
    };
    let plan = gc::plan(root, &policy, SystemTime::now()).unwrap();
    // MID is least recently used; TOP references it, so it goes too. BASE stays.
    let removed: Vec<&str> = plan.paths.iter().map(|p| p.hash.as_str()).collect();
    assert_eq!(removed, [&*top, &*mid]);
    assert!(plan.size_after < probe.size_before);
    gc::execute(root, &plan).unwrap();
    assert!(narinfo(root, &base).exists());
    assert_clean(root);
}

#[test]
fn gc_dry_run_deletes_nothing() {
    let cache = copy_fixture("cache-xz");
    let root = cache.path();
    for h in hashes() {
        age_path(root, &h, DAY * 100);
    }
    std::fs::write(root.join(STRAY_NAR), b"stray").unwrap();
    age(&root.join(STRAY_NAR), DAY);
    let before = snapshot(root);

    let plan = gc::plan(root, &older_than(30), SystemTime::now()).unwrap();
    assert_eq!((plan.paths.len(), plan.strays.len()), (3, 1));
    assert_eq!(snapshot(root), before);
}

#[test]
fn gc_removes_stray_nars_but_leaves_logs_young_strays_and_temporaries() {
    let cache = copy_fixture("cache-xz");
    let root = cache.path();
    let stray = root.join(STRAY_NAR);
    std::fs::write(&stray, b"no narinfo points here").unwrap();
    age(&stray, Duration::from_secs(2 * 3600));
    let young = root.join("nar/1111111111111111111111111111111111111111111111111111.nar.xz");
    std::fs::write(&young, b"an upload whose narinfo is still to come").unwrap();
    let temp = root.join("nar/.nbc-upload.otherhost.12.0.tmp");
    std::fs::write(&temp, b"partial").unwrap();
    age(&temp, DAY * 2);
    let unrelated_log = root.join("log/00000000000000000000000000000000-unrelated.drv");
    std::fs::write(&unrelated_log, b"build log").unwrap();
    age(&unrelated_log, DAY * 400);

    let plan = gc::plan(root, &older_than(30), SystemTime::now()).unwrap();
    assert!(plan.paths.is_empty());
    let strays: Vec<&Path> = plan.strays.iter().map(|s| s.path.as_path()).collect();
    assert_eq!(strays, [&stray]);

    let outcome = gc::execute(root, &plan).unwrap();
    assert_eq!((outcome.nars, outcome.bytes), (1, 22));
    assert!(!stray.exists());
    assert!(young.exists() && temp.exists() && unrelated_log.exists());
}

#[test]
fn gc_leaves_malformed_narinfos_and_their_nars_alone() {
    let cache = copy_fixture("cache-xz");
    let root = cache.path();
    let [top, ..] = hashes();
    let file = narinfo(root, &top);
    let nar = nar_of(root, &top);
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("NarSize: ", "NarSize: -")).unwrap();
    age_path(root, &top, DAY * 40);

    let plan = gc::plan(root, &older_than(30), SystemTime::now()).unwrap();
    assert!(plan.paths.is_empty() && plan.strays.is_empty(), "{plan:?}");
    assert_eq!(plan.skipped, std::slice::from_ref(&file));
    gc::execute(root, &plan).unwrap();
    assert!(file.exists() && nar.exists());
}

#[test]
fn gc_execute_takes_vanished_files_in_stride_and_checks_the_root() {
    let cache = copy_fixture("cache-xz");
    let root = cache.path();
    let [top, ..] = hashes();
    age_path(root, &top, DAY * 40);
    let plan = gc::plan(root, &older_than(30), SystemTime::now()).unwrap();

    let other = copy_fixture("cache-xz");
    let e = gc::execute(other.path(), &plan).unwrap_err();
    assert!(e.to_string().contains("plan was made for"), "{e}");

    std::fs::remove_file(nar_of(root, &top)).unwrap();
    let outcome = gc::execute(root, &plan).unwrap();
    assert_eq!(
        (outcome.narinfos, outcome.nars, outcome.vanished),
        (1, 0, 1)
    );
    assert_clean(root);
}

// ---- served times (gc's least recently used), the command line, linked directories ----

/// Runs the binary with `args`; (exit status, stdout, stderr).
fn run_bin(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(BIN).args(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// Stops the server with SIGTERM and waits for it (a clean stop saves the served times).
fn stop(mut server: Server) {
    server.signal("TERM");
    server.child.wait().unwrap();
}

#[test]
fn gc_takes_last_use_from_what_the_server_served() {
    let cache = copy_fixture("cache-xz");
    let root = cache.path();
    let [top, mid, base] = hashes();
    for h in [&top, &mid, &base] {
        age_path(root, h, DAY * 30);
    }
    let state = TempDir::new("state");
    let file = state.path().join("served-times");
    // Nix asks for every narinfo of a closure it substitutes: all three are used today.
    let server = Server::start(root, &["--state-file", file.to_str().unwrap()]);
    for h in [&top, &mid, &base] {
        assert_eq!(server.get(&format!("/{h}.narinfo")).status, 200);
    }
    stop(server);
    let times = nix_binary_cache::store::served_times::ServedTimes::load(&file)
        .unwrap()
        .expect("the server saved its served times at exit");
    assert_eq!(
        times.len(),
        3,
        "{}",
        std::fs::read_to_string(&file).unwrap()
    );

    // File times alone say all three are 30 days old: all would go.
    let now = SystemTime::now();
    let by_files = gc::plan(root, &older_than(10), now).unwrap();
    assert_eq!(by_files.paths.len(), 3);
    assert_eq!(by_files.recency, gc::Recency::FileTimes);
    // The server's record says they were served just now: nothing goes.
    let by_record = gc::plan_with(root, &older_than(10), now, Some(&times)).unwrap();
    assert!(by_record.paths.is_empty(), "{:?}", by_record.paths);
    assert_eq!(by_record.recency, gc::Recency::Served { known: 3 });
    // Ten days later with --older-than 9.5 days (fractions work): all of them.
    let later = now + DAY * 10;
    let policy = GcPolicy {
        older_than: Some(Duration::from_secs_f64(9.5 * 86400.0)),
        max_size: None,
    };
    let plan = gc::plan_with(root, &policy, later, Some(&times)).unwrap();
    assert_eq!(plan.paths.len(), 3);

    // The command says which it used.
    let (code, out, err) = run_bin(&[
        "gc",
        root.to_str().unwrap(),
        "--older-than",
        "10",
        "--dry-run",
        "--state-file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("when the server last served each narinfo (3 paths"),
        "{out}"
    );
    assert!(out.contains("0 paths"), "{out}");
    let missing = state.path().join("none");
    let (code, out, err) = run_bin(&[
        "gc",
        root.to_str().unwrap(),
        "--older-than",
        "0.5",
        "--dry-run",
        "--state-file",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("file access and modification times"), "{out}");
    assert!(out.contains("3 paths"), "{out}");
}

#[test]
fn verify_and_gc_help_and_pointless_targets() {
    for sub in ["verify", "gc"] {
        let (code, out, _) = run_bin(&[sub, "--help"]);
        assert_eq!(code, 0);
        assert!(out.contains(&format!("nix-binary-cache {sub}")), "{out}");
    }
    let empty = TempDir::new("empty");
    let (code, _, err) = run_bin(&["verify", empty.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("holds no *.narinfo file"), "{err}");
    let file = empty.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let (code, _, err) = run_bin(&["verify", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not a directory"), "{err}");
    let (code, _, err) = run_bin(&["verify", "/c", "--frobnicate"]);
    assert_eq!(code, 2);
    assert!(err.contains("verify --help"), "{err}");
}

#[test]
fn verify_and_the_server_agree_about_a_linked_nar_dir() {
    let cache = copy_fixture("cache-xz");
    let root = cache.path();
    let elsewhere = TempDir::new("other-disk");
    std::fs::rename(root.join("nar"), elsewhere.path().join("nar")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path().join("nar"), root.join("nar")).unwrap();
    let [top, ..] = hashes();
    let nar = nar_of(root, &top);
    let nar_url = format!("/{}", nar.strip_prefix(root).unwrap().display());

    // By default both refuse it: verify says so, the server answers 404.
    let report = run_verify(root, true);
    assert!(
        report
            .problems
            .iter()
            .any(|p| matches!(p, Problem::LinkedDir { .. })),
        "{}",
        describe(&report)
    );
    assert!(describe(&report).contains("--allow-linked-dirs"));
    let server = Server::start(root, &[]);
    assert_eq!(server.get(&nar_url).status, 404);
    drop(server);

    // With the flag both accept it.
    let options = VerifyOptions {
        quick: false,
        allow_linked_dirs: true,
    };
    let report = verify(root, &options, &mut |_| {}).unwrap();
    assert!(report.is_clean(), "{}", describe(&report));
    let server = Server::start(root, &["--allow-linked-dirs"]);
    let reply = server.get(&nar_url);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, std::fs::read(&nar).unwrap());
}

#[test]
fn the_rescan_thread_runs_at_nice_19() {
    let server = Server::start(&fixtures().join("cache-xz"), &["--rescan-interval", "1"]);
    let tasks = format!("/proc/{}/task", server.pid());
    let nice_of = |name: &str| -> Option<i64> {
        std::fs::read_dir(&tasks).ok()?.flatten().find_map(|task| {
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            if comm.trim() != name {
                return None;
            }
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // Fields after the ")" that ends the command name: state is field 3, nice 19.
            let rest = stat.rsplit_once(')')?.1;
            rest.split_whitespace().nth(16)?.parse().ok()
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // The thread has its name from birth; it lowers itself a moment later.
    while nice_of("rescan-worker") != Some(19) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(nice_of("rescan-worker"), Some(19), "{}", server.log());
    assert_eq!(nice_of("rescan"), Some(0), "only the worker is lowered");
    assert!(
        !server.log().contains("could not lower"),
        "{}",
        server.log()
    );
}

#[test]
fn metrics_operators_expect() {
    let cache = copy_fixture("cache-xz");
    std::fs::write(
        cache.path().join(format!("{}.narinfo", "1".repeat(32))),
        "not a narinfo\n",
    )
    .unwrap();
    let server = Server::start(cache.path(), &[]);
    let [top, ..] = hashes();
    for _ in 0..3 {
        assert_eq!(server.get(&format!("/{top}.narinfo")).status, 200);
    }
    let text = server.get("/metrics").text();
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(
        value("nbc_request_duration_seconds_count{kind=\"narinfo\"} "),
        3.0
    );
    assert_eq!(
        value("nbc_request_duration_seconds_bucket{kind=\"narinfo\",le=\"+Inf\"} "),
        3.0
    );
    assert!(text.contains("# TYPE nbc_request_duration_seconds histogram\n"));
    assert_eq!(value("nbc_index_skipped_narinfos "), 1.0);
    let rss = value("process_resident_memory_bytes ");
    assert!(rss > 1e6 && rss < 1e9, "{rss}");
    assert!(value("process_open_fds ") >= 3.0);
    assert!(value("process_threads ") >= 4.0);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let start = value("process_start_time_seconds ");
    assert!(start <= now && start > now - 60.0, "{start} vs {now}");
}

/// A seccomp filter that makes `setpriority` fail with EPERM, as the unit's
/// `SystemCallFilter=~@resources` did before it allowed the call again; installed in the child
/// between fork and exec.
fn deny_setpriority(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let filter = [
        stmt(load, 4), // seccomp_data.arch
        jump(AUDIT_ARCH_X86_64, 0, 3),
        stmt(load, 0), // seccomp_data.nr
        jump(libc::SYS_setpriority as u32, 0, 1),
        stmt(libc::BPF_RET, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(libc::BPF_RET, libc::SECCOMP_RET_ALLOW),
    ];
    // Written for x86_64 (this machine): elsewhere the filter allows everything and the test
    // fails, it does not pass by accident.
    // SAFETY: only async-signal-safe prctl calls between fork and exec; `filter` outlives them
    // (the closure owns it).
    unsafe {
        command.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn a_rescan_that_cannot_lower_its_priority_says_so_as_a_warning() {
    let mut command = std::process::Command::new(BIN);
    deny_setpriority(&mut command);
    let server = Server::start_command(command, &fixtures().join("cache-xz"), &[]);
    assert!(
        server.wait_for_log(
            "could not lower the rescan thread's priority",
            Duration::from_secs(10)
        ),
        "{}",
        server.log()
    );
    let line = server
        .log()
        .lines()
        .find(|l| l.contains("could not lower"))
        .unwrap()
        .to_string();
    assert!(line.contains("WARN"), "{line}");
    assert_eq!(server.get("/nix-cache-info").status, 200, "serving goes on");
}

#[test]
fn landing_page_trusts_proxy_headers_only_when_told_and_flags_an_unsigned_cache() {
    let forwarded = [
        ("Host", "10.0.0.5:8080"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "cache.example.org"),
    ];
    let root = fixtures().join("cache-xz");
    let plain = Server::start(&root, &[]);
    let page = crate::support::request(plain.port, "GET", "/", &forwarded).text();
    assert!(
        page.contains("substituters = http://10.0.0.5:8080 "),
        "{page}"
    );
    assert!(
        page.contains("id=\"unsigned\"") && page.contains("require-sigs"),
        "{page}"
    );

    let key = fixtures().join("keys/test-key.sec");
    let behind_proxy = Server::start(
        &root,
        &["--trust-proxy-headers", "--sign-key", key.to_str().unwrap()],
    );
    let page = crate::support::request(behind_proxy.port, "GET", "/", &forwarded).text();
    assert!(
        page.contains("substituters = https://cache.example.org "),
        "{page}"
    );
    assert!(!page.contains("id=\"unsigned\""), "{page}");
}
