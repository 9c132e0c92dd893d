//! What `verify` reports: one [`Problem`] per thing wrong, each a line for the operator.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::store::scan::Broken;

/// One thing wrong with the cache. `Display` gives a one-line description for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A file that could not be read (permissions, I/O error).
    Unreadable { file: PathBuf, error: String },
    /// A narinfo that does not parse (or is not a regular file): the server skips it.
    MalformedNarInfo { file: PathBuf, reason: String },
    /// A narinfo whose `StorePath` hash differs from its file name: Nix would reject it.
    WrongStorePath { file: PathBuf, store_path: String },
    /// A narinfo whose `URL` is not a `nar/<filehash>.nar[.ext]` path the server serves.
    BadUrl { narinfo: PathBuf, url: String },
    /// The NAR a narinfo points to is absent (or not a regular file).
    MissingNar { narinfo: PathBuf, nar: PathBuf },
    /// The NAR's length differs from the narinfo's `FileSize`.
    SizeMismatch {
        narinfo: PathBuf,
        nar: PathBuf,
        expected: u64,
        actual: u64,
    },
    /// The NAR's sha256 differs from the narinfo's `FileHash`.
    HashMismatch {
        narinfo: PathBuf,
        nar: PathBuf,
        expected: String,
        actual: String,
    },
    /// A `FileHash` in a form verify cannot compare (not sha256 in nix32 or hexadecimal).
    UncheckableHash { narinfo: PathBuf, file_hash: String },
    /// A reference without a valid narinfo in the cache: the closure is incomplete.
    MissingReference { narinfo: PathBuf, reference: String },
    /// A file under `nar/` that no narinfo points to.
    StrayNar { file: PathBuf },
    /// A `.nbc-upload.*.tmp` file left by an interrupted upload to this server.
    UploadTemporary { file: PathBuf },
    /// A `*.tmp` / `*.tmp.<pid>[.<n>]` file left by an interrupted `nix copy --to file://`.
    NixTemporary { file: PathBuf },
    /// `nar/`, `log/`… is a symbolic link leading outside the cache, which the server refuses
    /// (404 for every file in it) unless started with `--allow-linked-dirs`.
    LinkedDir { dir: PathBuf, target: PathBuf },
}

impl Problem {
    /// The file the problem is about (for a NAR problem: the narinfo that points to it).
    pub fn file(&self) -> &Path {
        match self {
            Problem::Unreadable { file, .. }
            | Problem::MalformedNarInfo { file, .. }
            | Problem::WrongStorePath { file, .. }
            | Problem::StrayNar { file }
            | Problem::UploadTemporary { file }
            | Problem::NixTemporary { file } => file,
            Problem::LinkedDir { dir, .. } => dir,
            Problem::BadUrl { narinfo, .. }
            | Problem::MissingNar { narinfo, .. }
            | Problem::SizeMismatch { narinfo, .. }
            | Problem::HashMismatch { narinfo, .. }
            | Problem::UncheckableHash { narinfo, .. }
            | Problem::MissingReference { narinfo, .. } => narinfo,
        }
    }
}

impl From<Broken> for Problem {
    fn from(broken: Broken) -> Problem {
        match broken {
            Broken::Unreadable { file, error } => Problem::Unreadable { file, error },
            Broken::Malformed { file, reason } => Problem::MalformedNarInfo { file, reason },
            Broken::WrongStorePath { file, store_path } => {
                Problem::WrongStorePath { file, store_path }
            }
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::LinkedDir { dir, target } => write!(
                f,
                "{}: a symbolic link to {}, outside the cache: the server answers 404 for every \
                 file in it; move it into the cache, or run the server and verify with \
                 --allow-linked-dirs",
                dir.display(),
                target.display()
            ),
            Problem::Unreadable { file, error } => {
                write!(f, "{}: cannot be read: {error}", file.display())
            }
            Problem::MalformedNarInfo { file, reason } => write!(
                f,
                "{}: malformed narinfo ({reason}); the server skips it: fix or delete it",
                file.display()
            ),
            Problem::WrongStorePath { file, store_path } => write!(
                f,
                "{}: StorePath {store_path} does not match the file name; Nix rejects it: \
                 rename or delete the file",
                file.display()
            ),
            Problem::BadUrl { narinfo, url } => write!(
                f,
                "{}: URL {url:?} is not a nar/<filehash>.nar[.ext] path this server serves",
                narinfo.display()
            ),
            Problem::MissingNar { narinfo, nar } => write!(
                f,
                "{}: its NAR {} is missing or not a regular file; clients get a 404: \
                 copy the path again or delete the narinfo",
                narinfo.display(),
                nar.display()
            ),
            Problem::SizeMismatch {
                narinfo,
                nar,
                expected,
                actual,
            } => write!(
                f,
                "{}: {actual} bytes, but {} says FileSize {expected}; truncated or replaced: \
                 copy the path again",
                nar.display(),
                narinfo.display()
            ),
            Problem::HashMismatch {
                narinfo,
                nar,
                expected,
                actual,
            } => write!(
                f,
                "{}: hash is {actual}, but {} says FileHash {expected}; the file is corrupt: \
                 copy the path again",
                nar.display(),
                narinfo.display()
            ),
            Problem::UncheckableHash { narinfo, file_hash } => write!(
                f,
                "{}: FileHash {file_hash} is not sha256 in nix32 or hexadecimal; its NAR was \
                 not hashed",
                narinfo.display()
            ),
            Problem::MissingReference { narinfo, reference } => write!(
                f,
                "{}: references {reference}, which has no valid narinfo here; the closure is \
                 incomplete: copy that path too",
                narinfo.display()
            ),
            Problem::StrayNar { file } => write!(
                f,
                "{}: no narinfo points to this NAR; `gc` removes it",
                file.display()
            ),
            Problem::UploadTemporary { file } => write!(
                f,
                "{}: left by an interrupted upload; the server removes its own at start, \
                 safe to delete when no upload is running",
                file.display()
            ),
            Problem::NixTemporary { file } => write!(
                f,
                "{}: temporary left by an interrupted nix copy; safe to delete when no \
                 nix copy is running",
                file.display()
            ),
        }
    }
}
