//! Opening files inside the cache without following links out of it.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::SystemTime;

/// Opens a regular file for reading. Missing files, symbolic links (which could point outside
/// the cache) and anything that is not a regular file all count as absent: `Ok(None)`.
pub fn open_regular(path: &Path) -> io::Result<Option<(File, Metadata)>> {
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if is_absent(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    Ok(meta.is_file().then_some((file, meta)))
}

/// Errors that mean "nothing servable here" rather than a fault of the server.
pub fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::ENXIO)
    )
}

/// What identifies one version of a file: a rename or rewrite changes at least one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub len: u64,
    pub mtime: SystemTime,
    pub ino: u64,
}

impl Version {
    pub fn of(meta: &Metadata) -> Version {
        Version {
            len: meta.len(),
            mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            ino: meta.ino(),
        }
    }
}

/// The version of a regular file, without following a final symbolic link; `None` if absent.
pub fn version(path: &Path) -> io::Result<Option<Version>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => Ok(Some(Version::of(&m))),
        Ok(_) => Ok(None),
        Err(e) if is_absent(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Largest narinfo or `nix-cache-info` accepted (uploads) or read (verify, gc); real ones are
/// a few hundred bytes.
pub const MAX_METADATA_BYTES: u64 = 1 << 20;

/// Opens a regular file for reading without following links and, where permitted, without
/// updating its access time (gc reads atimes as "last used").
pub fn open_untouched(path: &Path) -> io::Result<Option<(File, Metadata)>> {
    let open = |extra: i32| {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | extra)
            .open(path)
    };
    // O_NOATIME is refused (EPERM) on files of other users unless we are root.
    let opened = match open(libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
        other => other,
    };
    match opened {
        Ok(file) => {
            let meta = file.metadata()?;
            Ok(meta.is_file().then_some((file, meta)))
        }
        Err(e) if is_absent(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The entries of a directory with their types (links not followed), sorted by name.
pub fn list_dir(dir: &Path) -> io::Result<Vec<(std::ffi::OsString, std::fs::FileType)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| in_file(dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| in_file(dir, e))?;
        let Ok(kind) = entry.file_type() else {
            continue; // Removed meanwhile.
        };
        out.push((entry.file_name(), kind));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Adds the file name to an error, so the operator knows which file to look at.
pub fn in_file(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_directories_are_absent() {
        let dir = std::env::temp_dir().join(format!("nbc-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("real"), b"x").unwrap();
        let _ = std::fs::remove_file(dir.join("link"));
        std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap();

        assert!(open_regular(&dir.join("real")).unwrap().is_some());
        assert!(open_regular(&dir.join("link")).unwrap().is_none());
        assert!(open_regular(&dir).unwrap().is_none());
        assert!(open_regular(&dir.join("missing")).unwrap().is_none());
        assert!(open_regular(&dir.join("real/below")).unwrap().is_none());
        assert!(version(&dir.join("link")).unwrap().is_none());
        assert_eq!(version(&dir.join("real")).unwrap().unwrap().len, 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
