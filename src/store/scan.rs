//! Reading the narinfos of a cache directory for the operator's commands (`verify`, `gc`):
//! every `*.narinfo` listed, read without touching its access time, size-capped, parsed, and
//! checked to name its own store path. (The server's index reads them its own way, tuned for
//! a million files: `index.rs`.)

use std::collections::HashSet;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::nix::layout;
use crate::nix::narinfo::NarInfo;
use crate::nix::nix32;
use crate::store::files::{self, MAX_METADATA_BYTES};

/// A narinfo file that cannot be used; `verify` reports it, `gc` keeps its NAR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broken {
    /// It could not be read (permissions, I/O error).
    Unreadable { file: PathBuf, error: String },
    /// It does not parse, or is not a regular file.
    Malformed { file: PathBuf, reason: String },
    /// Its `StorePath` hash differs from its file name.
    WrongStorePath { file: PathBuf, store_path: String },
}

impl Broken {
    /// The narinfo file.
    pub fn file(&self) -> &Path {
        match self {
            Broken::Unreadable { file, .. }
            | Broken::Malformed { file, .. }
            | Broken::WrongStorePath { file, .. } => file,
        }
    }
}

/// A narinfo that parsed and names its own path, with owned fields.
#[derive(Debug, Clone)]
pub struct NarInfoFile {
    /// The 32-character store hash: the file name stem.
    pub hash: String,
    pub file: PathBuf,
    pub store_path: String,
    pub url: String,
    pub file_hash: Option<String>,
    pub file_size: Option<u64>,
    /// Base names of referenced paths, self-references left out.
    pub references: Vec<String>,
}

impl NarInfoFile {
    /// `nar/…` relative to the root, if the URL is one the server serves as a NAR.
    pub fn nar_rel(&self) -> Option<String> {
        layout::nar_rel(&self.url)
    }

    /// Hash parts of the referenced paths (parsing checked each is a store base name).
    pub fn reference_hashes(&self) -> impl Iterator<Item = &str> {
        self.references
            .iter()
            .filter_map(|r| r.get(..nix32::STORE_HASH_LEN))
    }
}

/// All `*.narinfo` files of a cache.
#[derive(Debug, Default)]
pub struct Scan {
    /// The good ones, sorted by hash.
    pub entries: Vec<NarInfoFile>,
    /// One per broken file (malformed, wrong StorePath, unreadable).
    pub broken: Vec<Broken>,
    /// `nar/…` paths named by `URL:` lines of broken files: not strays, whatever else is wrong.
    pub salvaged_urls: HashSet<String>,
}

/// How one narinfo file turned out.
enum Loaded {
    Good(NarInfoFile),
    Broken(Broken, Option<String>),
    /// Removed between listing and reading.
    Gone,
}

/// Reads every `*.narinfo` in `root`, in parallel.
pub fn scan_narinfos(root: &Path, store_dir: &str) -> io::Result<Scan> {
    let names: Vec<String> = files::list_dir(root)?
        .into_iter()
        .filter_map(|(name, _)| name.to_str().map(str::to_string))
        .filter(|name| name.ends_with(".narinfo"))
        .collect();
    let loaded: Vec<Loaded> = names
        .par_iter()
        .map(|name| load_narinfo(&root.join(name), name, store_dir))
        .collect();

    let mut scan = Scan::default();
    for item in loaded {
        match item {
            Loaded::Good(entry) => scan.entries.push(entry),
            Loaded::Broken(problem, url) => {
                scan.broken.push(problem);
                scan.salvaged_urls
                    .extend(url.as_deref().and_then(layout::nar_rel));
            }
            Loaded::Gone => {}
        }
    }
    Ok(scan)
}

fn load_narinfo(path: &Path, name: &str, store_dir: &str) -> Loaded {
    let malformed = |reason: &str, url: Option<String>| {
        let file = path.to_path_buf();
        let reason = reason.to_string();
        Loaded::Broken(Broken::Malformed { file, reason }, url)
    };
    let hash = name.strip_suffix(".narinfo").unwrap_or(name);
    if !nix32::is_store_hash(hash) {
        return malformed("the name is not <32-character store hash>.narinfo", None);
    }
    let bytes = match read_small(path) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => match std::fs::symlink_metadata(path) {
            Err(e) if files::is_absent(&e) => return Loaded::Gone,
            _ => return malformed("not a regular file; links are not followed", None),
        },
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return malformed(&e.to_string(), None),
        Err(e) => return unreadable(path, &e),
    };
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            return malformed(
                "not UTF-8",
                salvage_url(&String::from_utf8_lossy(e.as_bytes())),
            );
        }
    };
    let info = match NarInfo::parse(&text, store_dir) {
        Ok(info) => info,
        Err(e) => return malformed(&e.0, salvage_url(&text)),
    };
    if info.store_hash() != hash {
        let problem = Broken::WrongStorePath {
            file: path.to_path_buf(),
            store_path: info.store_path.to_string(),
        };
        return Loaded::Broken(problem, Some(info.url.to_string()));
    }
    Loaded::Good(owned_entry(path, hash, &info))
}

fn unreadable(path: &Path, e: &io::Error) -> Loaded {
    let file = path.to_path_buf();
    let problem = Broken::Unreadable {
        file,
        error: e.to_string(),
    };
    Loaded::Broken(problem, None)
}

fn owned_entry(path: &Path, hash: &str, info: &NarInfo<'_>) -> NarInfoFile {
    NarInfoFile {
        hash: hash.to_string(),
        file: path.to_path_buf(),
        store_path: info.store_path.to_string(),
        url: info.url.to_string(),
        file_hash: info.file_hash.map(str::to_string),
        file_size: info.file_size,
        references: info
            .references
            .iter()
            .filter(|r| !r.starts_with(hash))
            .map(|r| r.to_string())
            .collect(),
    }
}

/// Reads a narinfo-sized file; `Ok(None)` if absent or not a regular file. Larger than
/// [`MAX_METADATA_BYTES`] is an `InvalidData` error: no real narinfo comes near it.
fn read_small(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let Some((file, meta)) = files::open_untouched(path)? else {
        return Ok(None);
    };
    if meta.len() > MAX_METADATA_BYTES {
        let msg = format!("larger than {MAX_METADATA_BYTES} bytes, not a narinfo");
        return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_METADATA_BYTES).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// The `URL:` value of a narinfo that does not parse, so its NAR is not called a stray.
fn salvage_url(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .map(|u| u.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salvaged_urls_keep_nars_of_broken_narinfos() {
        let text = "StorePath: junk\nURL: nar/abc.nar.xz\n";
        assert_eq!(salvage_url(text).as_deref(), Some("nar/abc.nar.xz"));
        assert_eq!(
            layout::nar_rel("nar/abc.nar.xz").as_deref(),
            Some("nar/abc.nar.xz")
        );
        assert_eq!(layout::nar_rel("../etc/passwd"), None);
        assert_eq!(layout::nar_rel("log/x"), None);
    }
}
