//! Receiving files a client PUTs, as `nix copy --to http://…` does.
//!
//! Each body is streamed into a temporary file beside its final name and only renamed into place
//! once it is complete and checked: a NAR must hash to the name it is stored under, a narinfo must
//! parse, name its own store path and point to a NAR the cache already holds, and every body must
//! have exactly its declared `Content-Length`. Nothing is ever deleted; an existing narinfo only
//! gains signatures (store paths are immutable, see [`crate::store::immutable`]), and other files are
//! only replaced by ones that passed the same checks.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::nix::cache_info::CacheInfo;
use crate::nix::layout::{FileKind, Route};
use crate::nix::narinfo::NarInfo;
use crate::nix::nix32;
use crate::store::encoding::Encoding;
use crate::store::files::MAX_METADATA_BYTES;
use crate::store::immutable::Replacement;
use crate::store::tempfile::TempFile;

/// Largest decoded `.ls` or log accepted from a compressed upload (below `--max-upload-size`
/// if that is smaller): a few kilobytes of compressed zeros must not fill the disk.
pub const MAX_DECODED_BYTES: u64 = 256 << 20;

/// What a successful upload stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    CacheInfo,
    NarInfo { hash: String },
    File { kind: FileKind, bytes: u64 },
}

/// Why an upload was refused; each maps to a 4xx (or 507 for a full disk) with this message.
#[derive(Debug)]
pub enum UploadError {
    /// The body does not fit the cache: 400 with the reason.
    Invalid(String),
    /// Larger than allowed: 413.
    TooLarge(u64),
    /// `nix-cache-info` exists already: 409.
    Conflict(String),
    /// A `Content-Encoding` we do not decode, or on a path that must not have one: 415.
    Unsupported(String),
    /// The client went away or the disk failed mid-way: nothing was kept.
    Io(io::Error),
}

impl UploadError {
    pub fn status(&self) -> u16 {
        match self {
            UploadError::Invalid(_) => 400,
            UploadError::TooLarge(_) => 413,
            UploadError::Conflict(_) => 409,
            UploadError::Unsupported(_) => 415,
            UploadError::Io(e) if e.raw_os_error() == Some(libc::ENOSPC) => 507,
            UploadError::Io(e) if e.raw_os_error() == Some(libc::EDQUOT) => 507,
            // The body itself was at fault: malformed chunks, cut short, or stalled.
            UploadError::Io(e) if e.kind() == io::ErrorKind::InvalidData => 400,
            UploadError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => 400,
            UploadError::Io(e) if e.kind() == io::ErrorKind::TimedOut => 408,
            UploadError::Io(_) => 500,
        }
    }

    /// A PUT to a path that routes to nothing a cache holds: 400.
    pub fn not_a_cache_path(path: &str) -> UploadError {
        UploadError::Invalid(format!("{path} is not a path Nix stores in a cache"))
    }

    pub fn message(&self) -> String {
        match self {
            UploadError::Invalid(why) => why.clone(),
            UploadError::TooLarge(max) => format!("body larger than the limit of {max} bytes"),
            UploadError::Conflict(why) | UploadError::Unsupported(why) => why.clone(),
            UploadError::Io(e) if self.status() == 507 => {
                format!("no space left to store the upload: {e}")
            }
            UploadError::Io(e) => format!("upload not stored: {e}"),
        }
    }
}

impl From<io::Error> for UploadError {
    /// A body that does not decode ([`Encoding::decoder`]) is the client's mistake: 400.
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::InvalidData {
            UploadError::Invalid(e.to_string())
        } else {
            UploadError::Io(e)
        }
    }
}

/// Where and how uploads are written.
pub struct Target<'a> {
    pub root: &'a Path,
    pub store_dir: &'a str,
    /// Largest body accepted for NARs, logs and listings.
    pub max_body: u64,
}

impl Target<'_> {
    /// Stores `body` (the request body, `declared` bytes on the wire if the client said,
    /// compressed with `encoding`) where `route` (the request path, routed once by `http/`)
    /// says.
    pub fn store(
        &self,
        route: Route<'_>,
        declared: Option<u64>,
        encoding: Encoding,
        body: &mut dyn Read,
    ) -> Result<Stored, UploadError> {
        let mut limit = match route {
            Route::CacheInfo | Route::NarInfo(_) => MAX_METADATA_BYTES,
            Route::File(..) => self.max_body,
        };
        if declared.is_some_and(|n| n > limit) {
            return Err(UploadError::TooLarge(limit));
        }
        let compressible = matches!(
            route,
            Route::NarInfo(_) | Route::File(FileKind::Listing | FileKind::Log, _)
        );
        if encoding != Encoding::Plain {
            if !compressible {
                return Err(UploadError::Unsupported(format!(
                    "Content-Encoding {} is accepted on .narinfo, .ls and log/ uploads only; \
                     a NAR's compression is stated in its narinfo: upload its bytes as stored",
                    encoding.name()
                )));
            }
            limit = limit.min(MAX_DECODED_BYTES);
        }
        let body = &mut encoding.decoder(body)?;
        // Content-Length counts the encoded bytes on the wire; what is checked against it below
        // is the decoded text, so only a plain body is compared (the connection engine already
        // refuses an encoded body shorter than its Content-Length, and the decoder a cut stream).
        let declared = declared.filter(|_| encoding == Encoding::Plain);
        match route {
            Route::CacheInfo => self.store_cache_info(body, declared),
            Route::NarInfo(hash) => self.store_narinfo(hash, declared, body),
            Route::File(FileKind::Nar, rel) => self.store_nar(rel, body, limit, declared),
            Route::File(kind, rel) => {
                let bytes = self.store_file(rel, body, limit, declared, |_| Ok(()))?;
                Ok(Stored::File { kind, bytes })
            }
        }
    }

    fn store_cache_info(
        &self,
        body: &mut dyn Read,
        declared: Option<u64>,
    ) -> Result<Stored, UploadError> {
        let target = self.root.join("nix-cache-info");
        if target.exists() {
            return Err(UploadError::Conflict(
                "this cache already has a nix-cache-info".into(),
            ));
        }
        let text = read_text(body, MAX_METADATA_BYTES, declared)?;
        let info = CacheInfo::from_text(&text, None);
        if info.store_dir != self.store_dir {
            return Err(UploadError::Invalid(format!(
                "StoreDir {} differs from this cache's {}",
                info.store_dir, self.store_dir
            )));
        }
        self.write_bytes(&target, text.as_bytes())?;
        Ok(Stored::CacheInfo)
    }

    fn store_narinfo(
        &self,
        hash: &str,
        declared: Option<u64>,
        body: &mut dyn Read,
    ) -> Result<Stored, UploadError> {
        let text = read_text(body, MAX_METADATA_BYTES, declared)?;
        let info = NarInfo::parse(&text, self.store_dir)
            .map_err(|e| UploadError::Invalid(format!("malformed narinfo: {e}")))?;
        info.check_strict()
            .map_err(|e| UploadError::Invalid(format!("narinfo newer Nix would refuse: {e}")))?;
        if info.store_hash() != hash {
            return Err(UploadError::Invalid(format!(
                "StorePath {} does not match {hash}.narinfo",
                info.store_path
            )));
        }
        if info.nar_size == 0 {
            // Nix itself refuses such a narinfo as corrupt.
            return Err(UploadError::Invalid(
                "malformed narinfo: NarSize 0 (Nix rejects it)".into(),
            ));
        }
        self.check_nar_present(&info)?;
        self.commit_narinfo(&self.root.join(format!("{hash}.narinfo")), &text, &info)?;
        Ok(Stored::NarInfo {
            hash: hash.to_string(),
        })
    }

    /// Writes a checked narinfo unless the cache holds one for another content of the same
    /// store path (see [`crate::store::immutable`]): a new one is created without ever replacing a file
    /// that appeared meanwhile, an existing one only gains the upload's new signatures.
    fn commit_narinfo(&self, target: &Path, text: &str, info: &NarInfo) -> Result<(), UploadError> {
        // One narinfo commit at a time in this process: reading the old file and writing the new
        // one must not interleave with another upload of the same path. (They are tiny.)
        static COMMIT: Mutex<()> = Mutex::new(());
        let _one = COMMIT.lock().unwrap_or_else(|e| e.into_inner());
        // Two rounds at most: a file that appears between the look and the link is compared.
        for _ in 0..2 {
            let old = match crate::store::files::open_regular(target)? {
                Some((mut file, _)) => {
                    let mut bytes = Vec::new();
                    file.read_to_end(&mut bytes)?;
                    // Not UTF-8: malformed, like a file that does not parse.
                    String::from_utf8(bytes).ok()
                }
                // Something that is not a regular file (a link, which is never served): replaced.
                None if std::fs::symlink_metadata(target).is_ok() => None,
                None => {
                    let dir = ensure_dir(target)?;
                    let mut temp = TempFile::create_in(&dir)?;
                    temp.file().write_all(text.as_bytes())?;
                    match temp.commit_new(target) {
                        // Another writer created it meanwhile: compare with that one.
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                        done => return Ok(done?),
                    }
                }
            };
            // A file naming another path is as unservable as one that does not parse.
            let parsed = old.as_deref().map(|t| {
                NarInfo::parse(t, self.store_dir)
                    .ok()
                    .filter(|i| i.store_hash() == info.store_hash())
                    .map(|i| (t, i))
            });
            let Some(Some((old_text, old_info))) = parsed else {
                // A stored narinfo that does not parse (or is not a file) is not served: a valid
                // one may repair it.
                log::warn!("{}: replacing a malformed narinfo", target.display());
                return self.write_bytes(target, text.as_bytes());
            };
            return match crate::store::immutable::replace(old_text, &old_info, info) {
                Ok(Replacement::Keep) => Ok(()),
                Ok(Replacement::Write(merged)) => self.write_bytes(target, merged.as_bytes()),
                Err(why) => Err(UploadError::Conflict(why)),
            };
        }
        Err(UploadError::Conflict(format!(
            "{}.narinfo changed while this upload was compared with it; retry",
            info.store_hash()
        )))
    }

    /// The narinfo is the commit point of an upload: its NAR must already be here, whole.
    fn check_nar_present(&self, info: &NarInfo) -> Result<(), UploadError> {
        let url = info.url.split('?').next().unwrap_or(info.url);
        let rel = match crate::nix::layout::nar_rel(url) {
            Some(rel) => rel,
            None => {
                return Err(UploadError::Invalid(format!(
                    "URL {} is not a NAR path (nar/<hash>.nar…)",
                    info.url
                )));
            }
        };
        let missing = || {
            UploadError::Invalid(format!(
                "the NAR {rel} is not in the cache: upload it before the narinfo"
            ))
        };
        let version = crate::store::files::version(&self.root.join(&rel))?.ok_or_else(missing)?;
        if let Some(size) = info.file_size
            && size != version.len
        {
            return Err(UploadError::Invalid(format!(
                "FileSize {size} but {rel} has {} bytes",
                version.len
            )));
        }
        Ok(())
    }

    fn store_nar(
        &self,
        rel: &str,
        body: &mut dyn Read,
        limit: u64,
        declared: Option<u64>,
    ) -> Result<Stored, UploadError> {
        // nar/<52-char nix32 sha256 of the file>.nar[.ext]
        let name = rel.trim_start_matches("nar/");
        let stem = name.split('.').next().unwrap_or_default();
        if stem.len() != nix32::SHA256_LEN {
            return Err(UploadError::Invalid(format!(
                "{rel}: a NAR must be named by the nix32 sha256 of its bytes"
            )));
        }
        let mut hasher = Sha256::new();
        let sizes = (limit, declared);
        let bytes = self.store_file_hashing(rel, body, sizes, true, &mut hasher, |digest| {
            let actual = nix32::encode(digest);
            if actual == stem {
                Ok(())
            } else {
                Err(UploadError::Invalid(format!(
                    "{rel}: body hashes to sha256:{actual}, not to its name"
                )))
            }
        })?;
        Ok(Stored::File {
            kind: FileKind::Nar,
            bytes,
        })
    }

    fn store_file(
        &self,
        rel: &str,
        body: &mut dyn Read,
        limit: u64,
        declared: Option<u64>,
        check: impl FnOnce(&[u8]) -> Result<(), UploadError>,
    ) -> Result<u64, UploadError> {
        let sizes = (limit, declared);
        self.store_file_hashing(rel, body, sizes, false, &mut Sha256::new(), check)
    }

    /// Streams `body` into a temporary beside `rel`, hashing it, and commits it if it has
    /// exactly the declared length (`sizes`: the limit and the `Content-Length`, if any) and
    /// `check` accepts the digest. A `content_addressed` file (named by its hash, which `check`
    /// verified) that is already in place is left as it is.
    fn store_file_hashing(
        &self,
        rel: &str,
        body: &mut dyn Read,
        (limit, declared): (u64, Option<u64>),
        content_addressed: bool,
        hasher: &mut Sha256,
        check: impl FnOnce(&[u8]) -> Result<(), UploadError>,
    ) -> Result<u64, UploadError> {
        let target = self.root.join(rel);
        let dir = ensure_dir(&target)?;
        let mut temp = TempFile::create_in(&dir)?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            total += n as u64;
            if total > limit {
                return Err(UploadError::TooLarge(limit));
            }
            hasher.update(&buf[..n]);
            temp.file().write_all(&buf[..n])?;
        }
        check_length(total, declared)?;
        // What is committed is what reached the disk, not only what was written to the file.
        temp.file().sync_all()?;
        if temp.file().metadata()?.len() != total {
            return Err(UploadError::Io(io::Error::other(
                "the stored file's size differs from the bytes received",
            )));
        }
        check(&hasher.finalize_reset())?;
        if content_addressed
            && crate::store::files::version(&target)?.is_some_and(|v| v.len == total)
        {
            // The name is the content's hash, just checked: the file there is this one.
            // Keeping it spares readers (on NFS, other hosts' open downloads) a replaced file.
            return Ok(total);
        }
        temp.commit(&target)?;
        Ok(total)
    }

    fn write_bytes(&self, target: &Path, bytes: &[u8]) -> Result<(), UploadError> {
        let dir = ensure_dir(target)?;
        let mut temp = TempFile::create_in(&dir)?;
        temp.file().write_all(bytes)?;
        temp.commit(target)?;
        Ok(())
    }
}

/// Fails unless a file can be created in `root`: with uploads enabled, a read-only cache
/// directory (a read-only mount, a unit without `ReadWritePaths=`, wrong owner) is a mistake to
/// report at start, not at the first push.
pub fn check_writable(root: &Path) -> io::Result<()> {
    TempFile::create_in(root).map(drop).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "uploads are enabled but {} is not writable: {e} (give the server's user write \
                 access; under systemd add ReadWritePaths={})",
                root.display(),
                root.display()
            ),
        )
    })
}

/// Creates the directory of `target` (e.g. `nar/` in a new cache), world-readable, and returns it.
fn ensure_dir(target: &Path) -> io::Result<PathBuf> {
    let dir = target.parent().map(Path::to_path_buf).unwrap_or_default();
    crate::store::tempfile::create_dirs(&dir)?;
    Ok(dir)
}

/// A body that ended before (or went past) its `Content-Length` is incomplete: never stored.
fn check_length(received: u64, declared: Option<u64>) -> Result<(), UploadError> {
    match declared {
        Some(n) if n != received => Err(UploadError::Invalid(format!(
            "body has {received} bytes but Content-Length said {n}: nothing stored"
        ))),
        _ => Ok(()),
    }
}

/// Reads a small UTF-8 body, refusing more than `limit` bytes or a length other than `declared`.
fn read_text(
    body: &mut dyn Read,
    limit: u64,
    declared: Option<u64>,
) -> Result<String, UploadError> {
    let mut bytes = Vec::new();
    body.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(UploadError::TooLarge(limit));
    }
    check_length(bytes.len() as u64, declared)?;
    String::from_utf8(bytes).map_err(|_| UploadError::Invalid("body is not UTF-8 text".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::layout;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nbc-upload-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn target(root: &Path) -> Target<'_> {
        Target {
            root,
            store_dir: "/nix/store",
            max_body: 1 << 20,
        }
    }

    /// Routes `path` as `http/` does before it calls [`Target::store`].
    trait StoreAt {
        fn store_at(
            &self,
            path: &str,
            declared: Option<u64>,
            encoding: Encoding,
            body: &mut dyn Read,
        ) -> Result<Stored, UploadError>;
    }

    impl StoreAt for Target<'_> {
        fn store_at(
            &self,
            path: &str,
            declared: Option<u64>,
            encoding: Encoding,
            body: &mut dyn Read,
        ) -> Result<Stored, UploadError> {
            let decoded = layout::decode(path);
            match decoded.as_deref().map(layout::route) {
                Ok(Ok(route)) => self.store(route, declared, encoding, body),
                _ => Err(UploadError::not_a_cache_path(path)),
            }
        }
    }

    fn nar_name(bytes: &[u8]) -> String {
        format!("nar/{}.nar.xz", nix32::encode(&Sha256::digest(bytes)))
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn nar_then_narinfo() {
        let root = scratch("ok");
        let t = target(&root);
        let nar = b"some nar bytes".to_vec();
        let name = nar_name(&nar);
        let stored = t
            .store_at(
                &format!("/{name}"),
                Some(nar.len() as u64),
                Encoding::Plain,
                &mut &nar[..],
            )
            .unwrap();
        assert_eq!(
            stored,
            Stored::File {
                kind: FileKind::Nar,
                bytes: nar.len() as u64
            }
        );
        assert_eq!(std::fs::read(root.join(&name)).unwrap(), nar);

        let hash = "4q1c78ism9fv0myqldmih68c6yjmpi2d";
        let info = format!(
            "StorePath: /nix/store/{hash}-x\nURL: {name}\nCompression: xz\nFileSize: {}\n\
             NarHash: sha256:1h9kn9hj1j745kchafr3vi3hdp04zfhfgbc5dcvhkx5hfh2njr54\nNarSize: 5\nReferences: \n",
            nar.len()
        );
        let stored = t
            .store_at(
                &format!("/{hash}.narinfo"),
                None,
                Encoding::Plain,
                &mut info.as_bytes(),
            )
            .unwrap();
        assert_eq!(stored, Stored::NarInfo { hash: hash.into() });
        assert_eq!(
            files_in(&root),
            vec![format!("{hash}.narinfo"), "nar".into()]
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_nar_already_stored_is_kept_in_place() {
        use std::os::unix::fs::MetadataExt;
        let root = scratch("again");
        let t = target(&root);
        let nar = b"the same nar twice".to_vec();
        let name = nar_name(&nar);
        let upload = || {
            t.store_at(&format!("/{name}"), None, Encoding::Plain, &mut &nar[..])
                .unwrap();
            std::fs::metadata(root.join(&name)).unwrap().ino()
        };
        let first = upload();
        // Same inode: a download already reading the first copy is not cut off by a rename.
        assert_eq!(upload(), first);
        assert_eq!(
            files_in(&root.join("nar")),
            vec![name.trim_start_matches("nar/")]
        );
        // A damaged copy (wrong length) is replaced by the verified upload.
        std::fs::write(root.join(&name), b"short").unwrap();
        let replaced = upload();
        assert_eq!(std::fs::read(root.join(&name)).unwrap(), nar);
        assert_ne!(replaced, first);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn refusals_leave_nothing_behind() {
        let root = scratch("refuse");
        let t = target(&root);
        let nar = b"real bytes".to_vec();
        let wrong = nar_name(b"other bytes");
        let e = t
            .store_at(&format!("/{wrong}"), None, Encoding::Plain, &mut &nar[..])
            .unwrap_err();
        assert_eq!(e.status(), 400, "{}", e.message());
        assert!(e.message().contains("hashes to"));

        let big = vec![0u8; 2 << 20];
        let e = t
            .store_at(
                &format!("/{}", nar_name(&big)),
                None,
                Encoding::Plain,
                &mut &big[..],
            )
            .unwrap_err();
        assert_eq!(e.status(), 413);
        let e = t
            .store_at(
                &format!("/{}", nar_name(&big)),
                Some(big.len() as u64),
                Encoding::Plain,
                &mut &big[..],
            )
            .unwrap_err();
        assert_eq!(e.status(), 413);

        let hash = "4q1c78ism9fv0myqldmih68c6yjmpi2d";
        let orphan = format!(
            "StorePath: /nix/store/{hash}-x\nURL: nar/{}.nar\nNarHash: sha256:1h9kn9hj1j745kchafr3vi3hdp04zfhfgbc5dcvhkx5hfh2njr54\nNarSize: 5\n",
            "0".repeat(52)
        );
        let e = t
            .store_at(
                &format!("/{hash}.narinfo"),
                None,
                Encoding::Plain,
                &mut orphan.as_bytes(),
            )
            .unwrap_err();
        assert!(e.message().contains("not in the cache"), "{}", e.message());
        let other = "0000000000000000000000000000000a";
        let e = t
            .store_at(
                &format!("/{other}.narinfo"),
                None,
                Encoding::Plain,
                &mut orphan.as_bytes(),
            )
            .unwrap_err();
        assert!(e.message().contains("does not match"), "{}", e.message());
        let e = t
            .store_at(
                &format!("/{hash}.narinfo"),
                None,
                Encoding::Plain,
                &mut &b"junk"[..],
            )
            .unwrap_err();
        assert!(e.message().contains("malformed"), "{}", e.message());
        let e = t
            .store_at("/../etc/passwd", None, Encoding::Plain, &mut &b"x"[..])
            .unwrap_err();
        assert_eq!(e.status(), 400);
        let e = t
            .store_at("/nar/0123.nar", None, Encoding::Plain, &mut &b"x"[..])
            .unwrap_err();
        assert!(e.message().contains("nix32 sha256"), "{}", e.message());

        // Only the (empty) nar/ directory may exist: no file, no temporary.
        for entry in std::fs::read_dir(&root).unwrap() {
            let entry = entry.unwrap();
            assert_eq!(entry.file_name(), "nar");
            assert!(files_in(&entry.path()).is_empty());
        }
        std::fs::remove_dir_all(root).unwrap();
    }

    /// A NAR and a narinfo for it, stored; returns the narinfo text and its upload path.
    fn stored_path(t: &Target, nar: &[u8]) -> (String, String) {
        let name = nar_name(nar);
        t.store_at(&format!("/{name}"), None, Encoding::Plain, &mut &nar[..])
            .unwrap();
        let hash = "4q1c78ism9fv0myqldmih68c6yjmpi2d";
        let info = format!(
            "StorePath: /nix/store/{hash}-x\nURL: {name}\nCompression: xz\nFileSize: {}\n\
             NarHash: sha256:1h9kn9hj1j745kchafr3vi3hdp04zfhfgbc5dcvhkx5hfh2njr54\nNarSize: 5\nReferences: \n",
            nar.len()
        );
        let path = format!("/{hash}.narinfo");
        t.store_at(&path, None, Encoding::Plain, &mut info.as_bytes())
            .unwrap();
        (info, path)
    }

    #[test]
    fn a_stored_narinfo_only_gains_signatures() {
        let root = scratch("immutable");
        let t = target(&root);
        let (info, path) = stored_path(&t, b"first nar");
        let file = root.join(path.trim_start_matches('/'));
        // Same path, another NAR: refused, file unchanged, no temporary left.
        let other_nar = b"second nar".to_vec();
        let other_name = nar_name(&other_nar);
        t.store_at(
            &format!("/{other_name}"),
            None,
            Encoding::Plain,
            &mut &other_nar[..],
        )
        .unwrap();
        let other = info
            .replace(&nar_name(b"first nar"), &other_name)
            .replace("FileSize: 9", "FileSize: 10");
        let e = t
            .store_at(&path, None, Encoding::Plain, &mut other.as_bytes())
            .unwrap_err();
        assert_eq!(e.status(), 409, "{}", e.message());
        assert!(e.message().contains("URL"), "{}", e.message());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), info);
        // The same again: accepted, nothing changes.
        t.store_at(&path, None, Encoding::Plain, &mut info.as_bytes())
            .unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), info);
        // With a signature: added.
        // A well-formed signature (64 bytes in base64): newer Nix refuses other shapes.
        let signed = format!(
            "{info}Sig: k-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\n"
        );
        t.store_at(&path, None, Encoding::Plain, &mut signed.as_bytes())
            .unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), signed);
        // Without it again: the signature stays.
        t.store_at(&path, None, Encoding::Plain, &mut info.as_bytes())
            .unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), signed);
        assert!(files_in(&root).iter().all(|n| !n.starts_with(".nbc")));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn an_unservable_stored_narinfo_may_be_repaired() {
        let root = scratch("repair");
        let t = target(&root);
        let (info, path) = stored_path(&t, b"a nar");
        let file = root.join(path.trim_start_matches('/'));
        let other_path = info.replace("4q1c78ism9fv0myqldmih68c6yjmpi2d", &"1".repeat(32));
        for broken in ["junk".to_string(), other_path] {
            std::fs::write(&file, broken).unwrap();
            t.store_at(&path, None, Encoding::Plain, &mut info.as_bytes())
                .unwrap();
            assert_eq!(std::fs::read_to_string(&file).unwrap(), info);
        }
        // A link in its place (never served) is replaced by the file, not written through.
        let outside = root.join("outside");
        std::fs::write(&outside, "x").unwrap();
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(&outside, &file).unwrap();
        t.store_at(&path, None, Encoding::Plain, &mut info.as_bytes())
            .unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "x");
        assert!(std::fs::symlink_metadata(&file).unwrap().is_file());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_body_shorter_or_longer_than_declared_is_not_stored() {
        let root = scratch("length");
        let t = target(&root);
        let nar = b"twelve bytes".to_vec();
        let name = nar_name(&nar);
        for declared in [nar.len() as u64 + 1, nar.len() as u64 - 1] {
            let e = t
                .store_at(
                    &format!("/{name}"),
                    Some(declared),
                    Encoding::Plain,
                    &mut &nar[..],
                )
                .unwrap_err();
            assert_eq!(e.status(), 400);
            assert!(e.message().contains("Content-Length"), "{}", e.message());
        }
        let e = t
            .store_at(
                "/log/4q1c78ism9fv0myqldmih68c6yjmpi2d-x.drv",
                Some(100),
                Encoding::Plain,
                &mut &b"short log"[..],
            )
            .unwrap_err();
        assert!(e.message().contains("Content-Length"), "{}", e.message());
        assert!(files_in(&root.join("nar")).is_empty());
        assert!(files_in(&root.join("log")).is_empty());
        let (info, path) = stored_path(&t, &nar);
        std::fs::remove_file(root.join(path.trim_start_matches('/'))).unwrap();
        let e = t
            .store_at(
                &path,
                Some(info.len() as u64 + 5),
                Encoding::Plain,
                &mut info.as_bytes(),
            )
            .unwrap_err();
        assert!(e.message().contains("Content-Length"), "{}", e.message());
        assert!(!files_in(&root).iter().any(|n| n.ends_with(".narinfo")));
        let zero = info.replace("NarSize: 5", "NarSize: 0");
        let e = t
            .store_at(&path, None, Encoding::Plain, &mut zero.as_bytes())
            .unwrap_err();
        assert!(e.message().contains("NarSize 0"), "{}", e.message());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn nix_cache_info_only_once() {
        let root = scratch("info");
        let t = target(&root);
        t.store_at(
            "/nix-cache-info",
            None,
            Encoding::Plain,
            &mut &b"StoreDir: /nix/store\n"[..],
        )
        .unwrap();
        let e = t
            .store_at(
                "/nix-cache-info",
                None,
                Encoding::Plain,
                &mut &b"StoreDir: /nix/store\n"[..],
            )
            .unwrap_err();
        assert_eq!(e.status(), 409);
        std::fs::remove_file(root.join("nix-cache-info")).unwrap();
        let e = t
            .store_at(
                "/nix-cache-info",
                None,
                Encoding::Plain,
                &mut &b"StoreDir: /gnu/store\n"[..],
            )
            .unwrap_err();
        assert_eq!(e.status(), 400);
        std::fs::remove_dir_all(root).unwrap();
    }
}
