//! Maps a request path to what the cache holds, refusing anything that could leave the cache.
//!
//! Every segment is checked against the characters Nix itself writes, so no `..`, no percent
//! escapes, no backslashes and no absolute paths ever reach the file system.

use crate::narinfo::{check_base_name, is_store_name_char};
use crate::nix32;

/// What a valid request path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/nix-cache-info`
    CacheInfo,
    /// `/<hash>.narinfo`, with the 32-character hash.
    NarInfo(&'a str),
    /// A file served as stored: its kind and its path relative to the cache root.
    File(FileKind, &'a str),
}

/// The kinds of files served straight from disk; each has its own content type and caching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `nar/<filehash>.nar[.xz|.zst|…]`
    Nar,
    /// `<hash>.ls`, the JSON listing of a NAR.
    Listing,
    /// `log/<drv base name>`
    Log,
    /// `realisations/<drv output id>.doi` (content-addressed derivations)
    Realisation,
    /// `debuginfo/<build-id>`
    DebugInfo,
}

/// Why a path was not routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// Clean characters but nothing the cache could hold: 404.
    NotFound,
    /// Characters or segments Nix never sends (`..`, `%`, `\`, NUL…): 400.
    BadPath,
}

/// Longest request path accepted; Nix's longest (a log name) is about 250 bytes.
const MAX_PATH: usize = 1024;

/// Routes a request path (query string already removed), e.g. `/nar/abc.nar.xz`.
pub fn route(path: &str) -> Result<Route<'_>, RouteError> {
    if path.len() > MAX_PATH || !path.bytes().all(is_path_char) {
        return Err(RouteError::BadPath);
    }
    let Some(rel) = path.strip_prefix('/') else {
        return Err(RouteError::BadPath);
    };
    if rel.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(RouteError::BadPath);
    }
    if rel == "nix-cache-info" {
        return Ok(Route::CacheInfo);
    }
    if let Some(hash) = rel.strip_suffix(".narinfo") {
        return nix32::is_store_hash(hash)
            .then_some(Route::NarInfo(hash))
            .ok_or(RouteError::NotFound);
    }
    if let Some(hash) = rel.strip_suffix(".ls") {
        return nix32::is_store_hash(hash)
            .then_some(Route::File(FileKind::Listing, rel))
            .ok_or(RouteError::NotFound);
    }
    let (dir, name) = rel.split_once('/').ok_or(RouteError::NotFound)?;
    let kind = match dir {
        "nar" if is_nar_name(name) => FileKind::Nar,
        "log" if check_base_name(name).is_ok() => FileKind::Log,
        "realisations" if is_realisation_name(name) => FileKind::Realisation,
        "debuginfo" if is_build_id(name) => FileKind::DebugInfo,
        _ => return Err(RouteError::NotFound),
    };
    Ok(Route::File(kind, rel))
}

/// The characters that may appear anywhere in a path this server answers.
/// `%` is absent on purpose: Nix never escapes, so an escape is an attack or a mistake.
fn is_path_char(c: u8) -> bool {
    is_store_name_char(c) || matches!(c, b'/' | b'!' | b':')
}

/// `<filehash>.nar` plus an optional compression suffix; Nix names the file by its nix32 hash.
fn is_nar_name(name: &str) -> bool {
    let Some((stem, suffix)) = name.split_once(".nar") else {
        return false;
    };
    let suffix_ok = suffix.is_empty()
        || suffix.strip_prefix('.').is_some_and(|s| {
            !s.is_empty() && s.len() <= 8 && s.bytes().all(|c| c.is_ascii_alphanumeric())
        });
    !stem.is_empty() && stem.len() <= 128 && nix32::is_nix32(stem.as_bytes()) && suffix_ok
}

/// `sha256:<hash>!<output>.doi`, the id of a content-addressed derivation output.
fn is_realisation_name(name: &str) -> bool {
    let Some(id) = name.strip_suffix(".doi") else {
        return false;
    };
    let Some((drv_hash, output)) = id.split_once('!') else {
        return false;
    };
    let hash_ok = drv_hash.split_once(':').is_some_and(|(algo, h)| {
        algo.bytes().all(|c| c.is_ascii_alphanumeric())
            && nix32::is_nix32(h.as_bytes())
            && !h.is_empty()
    });
    hash_ok
        && !output.is_empty()
        && !output.starts_with('.')
        && output.bytes().all(is_store_name_char)
}

/// An ELF build id: lower-case hex, as Nix writes it under `debuginfo/`.
fn is_build_id(name: &str) -> bool {
    (2..=128).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use FileKind::*;

    const H: &str = "4q1c78ism9fv0myqldmih68c6yjmpi2d";

    #[test]
    fn routes_what_nix_asks_for() {
        assert_eq!(route("/nix-cache-info"), Ok(Route::CacheInfo));
        assert_eq!(route(&format!("/{H}.narinfo")), Ok(Route::NarInfo(H)));
        let ls = format!("/{H}.ls");
        assert_eq!(route(&ls), Ok(Route::File(Listing, &ls[1..])));
        for nar in [
            "/nar/174d8j893kxa5cy28pvwp1c6v6phi5gzriajqm4l2ghpb0rxdzgk.nar.xz",
            "/nar/174d8j893kxa5cy28pvwp1c6v6phi5gzriajqm4l2ghpb0rxdzgk.nar",
            "/nar/174d8j893kxa5cy28pvwp1c6v6phi5gzriajqm4l2ghpb0rxdzgk.nar.zst",
        ] {
            assert_eq!(route(nar), Ok(Route::File(Nar, &nar[1..])), "{nar}");
        }
        let log = format!("/log/{H}-hello-2.12.drv");
        assert_eq!(route(&log), Ok(Route::File(Log, &log[1..])));
        let doi =
            "/realisations/sha256:1h9kn9hj1j745kchafr3vi3hdp04zfhfgbc5dcvhkx5hfh2njr54!out.doi";
        assert_eq!(route(doi), Ok(Route::File(Realisation, &doi[1..])));
        let dbg = "/debuginfo/0123456789abcdef0123456789abcdef01234567";
        assert_eq!(route(dbg), Ok(Route::File(DebugInfo, &dbg[1..])));
    }

    #[test]
    fn unknown_clean_paths_are_not_found() {
        for p in [
            "/",
            "/index.html",
            "/nar/",
            "/nar/xyz.tar",
            "/nar/eeee.nar",
            "/short.narinfo",
            &format!("/{H}e.narinfo"),
            "/log/not-a-drv",
            "/etc/passwd",
            "/nar/a.nar.toolongsuffix",
            "/debuginfo/XYZ",
            "/realisations/x.doi",
        ] {
            assert_eq!(route(p), Err(RouteError::NotFound), "{p}");
        }
    }

    #[test]
    fn hostile_paths_are_bad_requests() {
        for p in [
            "/../etc/passwd",
            "/nar/../../etc/passwd",
            "/nar/%2e%2e/x",
            "/%2e%2e/etc/passwd",
            "/nar\\..\\x",
            "/nar/a.nar\0",
            "nix-cache-info",
            "//etc/passwd/..",
            "/./nix-cache-info",
            "/nar/caf\u{e9}.nar",
            "/a b",
            &format!("/{}", "a".repeat(2000)),
        ] {
            assert_eq!(route(p), Err(RouteError::BadPath), "{p:?}");
        }
    }
}
