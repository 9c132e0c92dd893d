//! The fixture caches (`tests/fixtures`, built by scripts/make-fixture.sh), scratch copies of
//! them, and temporary directories.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// `tests/fixtures/manifest.env`, written by scripts/make-fixture.sh.
pub fn manifest() -> HashMap<String, String> {
    let text = std::fs::read_to_string(fixtures().join("manifest.env")).expect("manifest.env");
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("nbc-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A writable copy of one of the fixture caches.
pub fn copy_fixture(name: &str) -> TempDir {
    let tmp = TempDir::new(name);
    copy_dir(&fixtures().join(name), tmp.path());
    tmp
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every file below `dir` (hidden temporaries included), relative, with its size, sorted: to
/// prove that a refused or failed upload changed nothing.
pub fn listing(dir: &Path) -> Vec<(String, u64)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, u64)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            } else {
                let len = e.metadata().unwrap().len();
                out.push((p.strip_prefix(base).unwrap().display().to_string(), len));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// True while an upload is being written below `dir`: its temporary (`.nbc-upload.*`, see
/// src/atomic.rs) exists from the moment the upload holds one of the places until it ends.
pub fn upload_in_progress(dir: &Path) -> bool {
    listing(dir)
        .iter()
        .any(|(name, _)| name.contains(".nbc-upload."))
}

/// The nix32 sha256 of `bytes`: the name a NAR upload must carry.
pub fn nix32_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    nix_binary_cache::nix::nix32::encode(&sha2::Sha256::digest(bytes))
}
