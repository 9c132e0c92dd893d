//! `verify`: checks that a cache directory is whole, the way a client would find it.
//!
//! A client that trusts this cache needs every narinfo to parse and name its own path, its NAR
//! to be there with the size and hash the narinfo promises, and every reference to have a
//! narinfo too (else `nix copy` of the closure fails half-way). Files nothing points to are
//! wasted space, so they are listed as well. Every finding is a [`Problem`] naming the file;
//! only a cache directory that cannot be listed at all is an error.
//!
//! NARs are hashed in parallel (rayon), streamed through a 1 MiB buffer, and opened with
//! `O_NOATIME` where the kernel allows it (owner or root), so that a verify run does not make
//! every NAR look recently used to [`crate::ops::gc`].

mod hashing;
mod problem;

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use hashing::{Hashed, hash_all};
pub use problem::Problem;

use crate::nix::{hash, nix32};
use crate::store::files::{self, in_file, list_dir};
use crate::store::scan::{NarInfoFile, scan_narinfos};
use crate::store::tempfile::{Temporary, temporary};

/// What to check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Check NAR sizes only, without reading them (`--quick`).
    pub quick: bool,
    /// Accept `nar/`, `log/`… that are symbolic links leading outside the cache, as the server
    /// does with `--allow-linked-dirs`; without it both refuse them.
    pub allow_linked_dirs: bool,
}

/// Where the hashing phase stands; sent before the first NAR, as NARs are read and after each.
/// Never sent when there is nothing to hash (`quick`, or no NARs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub nars_done: usize,
    pub nars_total: usize,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Everything wrong, roughly in file order; empty for a whole cache.
    pub problems: Vec<Problem>,
    /// `*.narinfo` files examined (including the broken ones).
    pub narinfos: usize,
    /// NAR files read and hashed (0 with `quick`).
    pub nars_hashed: usize,
    pub bytes_hashed: u64,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks the cache at `root`; `progress` is called on this thread during the hashing phase.
pub fn verify(
    root: &Path,
    options: &VerifyOptions,
    progress: &mut dyn FnMut(Progress),
) -> io::Result<Report> {
    if !root.is_dir() {
        let msg = format!(
            "{} is not a directory: give the cache directory (the one `nix copy --to file://DIR` \
             wrote)",
            root.display()
        );
        return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    }
    let info = crate::store::cache_info::load(root, None)
        .map_err(|e| in_file(&root.join("nix-cache-info"), e))?;
    let scan = scan_narinfos(root, &info.store_dir)?;
    let mut report = Report {
        narinfos: scan.entries.len() + scan.broken.len(),
        ..Report::default()
    };
    // A cache gc emptied still has its nix-cache-info and nar/; a directory with neither is
    // not a cache at all (a wrong path, an unmounted disk): verifying it "clean" would mislead.
    let looks_like_a_cache = root.join("nix-cache-info").exists() || root.join("nar").exists();
    if report.narinfos == 0 && !looks_like_a_cache {
        let msg = format!(
            "{} holds no *.narinfo file, nix-cache-info or nar/: nothing to verify; is it the \
             cache directory (the one `nix copy --to file://DIR` wrote)?",
            root.display()
        );
        return Err(io::Error::new(io::ErrorKind::NotFound, msg));
    }
    if !options.allow_linked_dirs {
        report.problems.extend(linked_dirs(root));
    }
    report
        .problems
        .extend(scan.broken.iter().cloned().map(Problem::from));

    let present: HashSet<&str> = scan.entries.iter().map(|e| e.hash.as_str()).collect();
    let mut jobs = HashMap::new();
    for entry in &scan.entries {
        report.problems.extend(missing_references(entry, &present));
        let problem = check_nar(root, entry, options.quick, &mut jobs);
        report.problems.extend(problem);
    }

    let mut jobs: Vec<HashJob> = jobs.into_values().collect();
    jobs.sort_by(|a, b| a.nar.cmp(&b.nar));
    for (job, result) in hash_all(jobs, progress) {
        judge_hash(&job, result, &mut report);
    }

    let mut pointed: HashSet<String> = scan.entries.iter().filter_map(|e| e.nar_rel()).collect();
    pointed.extend(scan.salvaged_urls.iter().cloned());
    report.problems.extend(strays(root, &pointed)?);
    Ok(report)
}

// ---- Checks of one narinfo ----

fn missing_references<'a>(
    entry: &'a NarInfoFile,
    present: &'a HashSet<&str>,
) -> impl Iterator<Item = Problem> + 'a {
    entry
        .references
        .iter()
        .filter(|r| {
            r.get(..nix32::STORE_HASH_LEN)
                .is_none_or(|h| !present.contains(h))
        })
        .map(|r| Problem::MissingReference {
            narinfo: entry.file.clone(),
            reference: r.clone(),
        })
}

/// One NAR to hash, and what the narinfos pointing to it expect.
struct HashJob {
    nar: PathBuf,
    len: u64,
    expected: Vec<(PathBuf, Expected)>,
}

/// A `FileHash` the hashing can compare against.
struct Expected {
    /// As written in the narinfo.
    written: String,
    nix32: String,
}

/// Checks that the NAR exists with the right size, and queues it for hashing unless `quick`.
fn check_nar(
    root: &Path,
    entry: &NarInfoFile,
    quick: bool,
    jobs: &mut HashMap<String, HashJob>,
) -> Option<Problem> {
    let narinfo = entry.file.clone();
    let Some(rel) = entry.nar_rel() else {
        let url = entry.url.clone();
        return Some(Problem::BadUrl { narinfo, url });
    };
    let nar = root.join(&rel);
    let meta = match std::fs::symlink_metadata(&nar) {
        Ok(meta) if meta.is_file() => meta,
        Ok(_) => return Some(Problem::MissingNar { narinfo, nar }),
        Err(e) if files::is_absent(&e) => return Some(Problem::MissingNar { narinfo, nar }),
        Err(e) => {
            return Some(Problem::Unreadable {
                file: nar,
                error: e.to_string(),
            });
        }
    };
    if let Some(expected) = entry.file_size.filter(|&size| size != meta.len()) {
        let actual = meta.len();
        return Some(Problem::SizeMismatch {
            narinfo,
            nar,
            expected,
            actual,
        });
    }
    if quick {
        return None;
    }
    // Nix may leave FileHash out; then there is nothing to compare with.
    let file_hash = entry.file_hash.as_deref()?;
    let Some(expected) = parse_expected(file_hash) else {
        let file_hash = file_hash.to_string();
        return Some(Problem::UncheckableHash { narinfo, file_hash });
    };
    let job = jobs.entry(rel).or_insert_with(|| HashJob {
        nar,
        len: meta.len(),
        expected: Vec::new(),
    });
    job.expected.push((narinfo, expected));
    None
}

/// `sha256:` with 52 nix32 or 64 hexadecimal digits (Nix writes nix32).
fn parse_expected(file_hash: &str) -> Option<Expected> {
    let digest = file_hash.strip_prefix("sha256:")?;
    let nix32 = if digest.len() == nix32::SHA256_LEN && nix32::is_nix32(digest.as_bytes()) {
        digest.to_string()
    } else {
        nix32::encode(&hash::decode_hex32(digest)?)
    };
    let written = file_hash.to_string();
    Some(Expected { written, nix32 })
}

/// Records one hashed NAR in the report, with a problem for each narinfo it disappoints.
fn judge_hash(job: &HashJob, result: Hashed, report: &mut Report) {
    let (digest, len) = match result {
        Ok(Some(hashed)) => hashed,
        Ok(None) => {
            // Removed since its size was checked (a concurrent gc, say).
            let missing = job.expected.iter().map(|(narinfo, _)| Problem::MissingNar {
                narinfo: narinfo.clone(),
                nar: job.nar.clone(),
            });
            report.problems.extend(missing);
            return;
        }
        Err(e) => {
            let file = job.nar.clone();
            let error = e.to_string();
            report.problems.push(Problem::Unreadable { file, error });
            return;
        }
    };
    report.nars_hashed += 1;
    report.bytes_hashed += len;
    let actual = nix32::encode(&digest);
    let mismatches = job
        .expected
        .iter()
        .filter(|(_, expected)| expected.nix32 != actual)
        .map(|(narinfo, expected)| Problem::HashMismatch {
            narinfo: narinfo.clone(),
            nar: job.nar.clone(),
            expected: expected.written.clone(),
            actual: format!("sha256:{actual}"),
        });
    report.problems.extend(mismatches);
}

/// Subdirectories the server would refuse: links that resolve outside the cache (a link to a
/// place inside it is fine, as for the server).
fn linked_dirs(root: &Path) -> Vec<Problem> {
    let Ok(real_root) = std::fs::canonicalize(root) else {
        return Vec::new();
    };
    ["nar", "log", "realisations", "debuginfo"]
        .iter()
        .map(|d| root.join(d))
        .filter(|dir| std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()))
        .filter_map(|dir| {
            let target = std::fs::canonicalize(&dir).ok()?;
            (!target.starts_with(&real_root)).then_some(Problem::LinkedDir { dir, target })
        })
        .collect()
}

// ---- Strays ----

/// Temporaries in the root and its subdirectories, and files in `nar/` nothing points to.
fn strays(root: &Path, pointed: &HashSet<String>) -> io::Result<Vec<Problem>> {
    let mut problems = Vec::new();
    for (name, kind) in list_dir(root)? {
        let path = root.join(&name);
        // A linked nar/ is listed too (reported above unless allowed).
        if kind.is_dir() || (kind.is_symlink() && path.is_dir()) {
            let is_nar_dir = name == "nar";
            problems.extend(strays_in(&path, is_nar_dir.then_some(pointed)));
        } else if let Some(problem) = name.to_str().and_then(|n| temporary_problem(n, &path)) {
            problems.push(problem);
        }
    }
    Ok(problems)
}

/// Temporaries in one subdirectory; with `pointed` (for `nar/`), unreferenced files too.
fn strays_in(dir: &Path, pointed: Option<&HashSet<String>>) -> Vec<Problem> {
    let entries = match list_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            let file = dir.to_path_buf();
            return vec![Problem::Unreadable {
                file,
                error: e.to_string(),
            }];
        }
    };
    let mut problems = Vec::new();
    for (name, kind) in entries {
        let path = dir.join(&name);
        let name = name.to_string_lossy();
        if let Some(problem) = temporary_problem(&name, &path) {
            problems.push(problem);
        } else if let Some(pointed) = pointed
            && !kind.is_dir()
            && !pointed.contains(&format!("nar/{name}"))
        {
            problems.push(Problem::StrayNar { file: path });
        }
    }
    problems
}

fn temporary_problem(name: &str, path: &Path) -> Option<Problem> {
    let file = path.to_path_buf();
    match temporary(name)? {
        Temporary::Upload => Some(Problem::UploadTemporary { file }),
        Temporary::Nix => Some(Problem::NixTemporary { file }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_hashes_in_nix32_and_hex_compare_alike() {
        // sha256 of the empty string.
        let nix32 = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(
            parse_expected(&format!("sha256:{nix32}")).unwrap().nix32,
            nix32
        );
        assert_eq!(
            parse_expected(&format!("sha256:{hex}")).unwrap().nix32,
            nix32
        );
        assert!(parse_expected("sha512:abc").is_none());
        assert!(parse_expected("sha256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=").is_none());
        assert!(parse_expected(&format!("sha256:{}", "é".repeat(32))).is_none());
    }
}
