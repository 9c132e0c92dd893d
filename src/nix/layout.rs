//! Maps a request path to what the cache holds, refusing anything that could leave the cache.
//!
//! Nix 2.32+ percent-encodes each path segment (`libfoo%2B%2B-1.0.drv`), older clients and Lix
//! do not: [`decode`] undoes exactly one layer of escapes, segment by segment, and [`route`] then
//! checks every decoded segment against the characters Nix itself writes, so no `..`, no second
//! layer of escapes, no backslashes and no absolute paths ever reach the file system.

use std::borrow::Cow;

use crate::nix::narinfo::{check_base_name, is_store_name_char};
use crate::nix::nix32;

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

/// A [`Route`] that owns its path, for work that outlives the request it was routed from (an
/// upload's body is read on a thread of its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedRoute {
    CacheInfo,
    NarInfo(String),
    File(FileKind, String),
}

impl OwnedRoute {
    pub fn as_route(&self) -> Route<'_> {
        match self {
            OwnedRoute::CacheInfo => Route::CacheInfo,
            OwnedRoute::NarInfo(hash) => Route::NarInfo(hash),
            OwnedRoute::File(kind, rel) => Route::File(*kind, rel),
        }
    }
}

impl From<Route<'_>> for OwnedRoute {
    fn from(route: Route<'_>) -> OwnedRoute {
        match route {
            Route::CacheInfo => OwnedRoute::CacheInfo,
            Route::NarInfo(hash) => OwnedRoute::NarInfo(hash.to_owned()),
            Route::File(kind, rel) => OwnedRoute::File(kind, rel.to_owned()),
        }
    }
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
    /// `build-trace-v2/<drv base name>/<output>.doi` (Nix 2.35+, replaces `realisations/`)
    BuildTrace,
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

/// Undoes one layer of percent-encoding in a request path (query string already removed).
///
/// Each segment is decoded on its own, so an escaped `/` (`%2F`) cannot create a segment and
/// is refused, as are malformed escapes and escapes that do not decode to UTF-8. What is left
/// after decoding must still pass [`route`], which refuses `%` (a second layer), NUL, `..`.
/// A path without `%` is returned as it is, without copying.
pub fn decode(path: &str) -> Result<Cow<'_, str>, RouteError> {
    if !path.contains('%') {
        return Ok(Cow::Borrowed(path));
    }
    if path.len() > MAX_PATH {
        return Err(RouteError::BadPath);
    }
    let mut out = Vec::with_capacity(path.len());
    let mut bytes = path.bytes();
    while let Some(c) = bytes.next() {
        if c != b'%' {
            out.push(c);
            continue;
        }
        let hi = bytes.next().and_then(hex_value);
        let lo = bytes.next().and_then(hex_value);
        let (Some(hi), Some(lo)) = (hi, lo) else {
            return Err(RouteError::BadPath);
        };
        let decoded = hi << 4 | lo;
        if decoded == b'/' {
            return Err(RouteError::BadPath);
        }
        out.push(decoded);
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| RouteError::BadPath)
}

fn hex_value(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Routes a decoded request path (see [`decode`]; query string removed), e.g. `/nar/abc.nar.xz`.
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
        "build-trace-v2" if is_build_trace_name(name) => FileKind::BuildTrace,
        _ => return Err(RouteError::NotFound),
    };
    Ok(Route::File(kind, rel))
}

/// The characters that may appear anywhere in a decoded path this server answers.
/// `%` is absent on purpose: after [`decode`], an escape left over is a second layer, which Nix
/// never sends, so it is an attack or a mistake.
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

/// `<drv base name>/<output>.doi`: the build trace of one output of a derivation (Nix 2.35+).
fn is_build_trace_name(name: &str) -> bool {
    let Some((drv, file)) = name.split_once('/') else {
        return false;
    };
    let Some(output) = file.strip_suffix(".doi") else {
        return false;
    };
    drv.ends_with(".drv")
        && check_base_name(drv).is_ok()
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

/// `nar/…` for a narinfo URL the server would serve as a NAR, else `None`.
pub fn nar_rel(url: &str) -> Option<String> {
    let path = format!("/{url}");
    match route(&path) {
        Ok(Route::File(FileKind::Nar, rel)) => Some(rel.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FileKind::*;

    const H: &str = "4q1c78ism9fv0myqldmih68c6yjmpi2d";

    #[test]
    fn an_owned_route_gives_back_the_same_route() {
        let log = format!("/log/{H}-a.drv");
        for path in ["/nix-cache-info", &format!("/{H}.narinfo"), &log] {
            let routed = route(path).unwrap();
            assert_eq!(OwnedRoute::from(routed).as_route(), routed, "{path}");
        }
    }

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
        let trace = format!("/build-trace-v2/{H}-hello-2.12.drv/out.doi");
        assert_eq!(route(&trace), Ok(Route::File(BuildTrace, &trace[1..])));
    }

    /// `route(decode(path))`, as the server does it; owned for comparison.
    fn decoded_route(path: &str) -> Result<(FileKind, String), RouteError> {
        let decoded = decode(path)?;
        match route(&decoded)? {
            Route::File(kind, rel) => Ok((kind, rel.to_string())),
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn percent_encoded_segments_are_decoded_once() {
        // What Nix 2.32+ sends for `libfoo++-1.0`, `a=b` and a realisation id.
        let log = format!("/log/{H}-libfoo%2B%2B-1.0.drv");
        assert_eq!(
            decoded_route(&log),
            Ok((Log, format!("log/{H}-libfoo++-1.0.drv")))
        );
        let log = format!("/log/{H}-a%3db-1.0.drv");
        assert_eq!(
            decoded_route(&log),
            Ok((Log, format!("log/{H}-a=b-1.0.drv")))
        );
        let doi =
            "/realisations/sha256:1h9kn9hj1j745kchafr3vi3hdp04zfhfgbc5dcvhkx5hfh2njr54%21out.doi";
        assert_eq!(
            decoded_route(doi),
            Ok((
                Realisation,
                "realisations/sha256:1h9kn9hj1j745kchafr3vi3hdp04zfhfgbc5dcvhkx5hfh2njr54!out.doi"
                    .to_string()
            ))
        );
        let trace = format!("/build-trace-v2/{H}-g%2B%2B.drv/out.doi");
        assert_eq!(
            decoded_route(&trace),
            Ok((BuildTrace, format!("build-trace-v2/{H}-g++.drv/out.doi")))
        );
        // Escaped plain characters decode to themselves; a path without `%` is not copied.
        assert_eq!(
            decode("/nix%2Dcache%2Dinfo").as_deref(),
            Ok("/nix-cache-info")
        );
        assert!(matches!(decode("/nix-cache-info"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn escapes_cannot_smuggle_what_raw_paths_cannot() {
        for p in [
            "/nar/%2e%2e/x",      // `..` as a segment
            "/%2e%2e/etc/passwd", // idem at the root
            "/log%2f..%2fetc",    // an escaped `/` never makes a segment
            "/log/%2F",           // idem
            "/nar/a.nar%00",      // NUL
            "/log/a%252e%252e",   // a second layer: `%2e` is left, `%` refused
            "/log/%",             // malformed escapes
            "/log/%4",
            "/log/%zz",
            "/log/%c3%28",        // not UTF-8
            "/nar/caf%C3%A9.nar", // UTF-8 but not a character Nix writes
            "/nar%5c..%5cx",      // backslash
            "/log/x%20y",         // space
            "/log/a%3Fb",         // `?` decoded is a name character…
        ] {
            let got = decode(p).and_then(|d| route(&d).map(|_| ()));
            let want = if p == "/log/a%3Fb" {
                Err(RouteError::NotFound) // …but `a?b` is no drv name: not found, not an error.
            } else {
                Err(RouteError::BadPath)
            };
            assert_eq!(got, want, "{p:?}");
        }
        let long = format!("/log/{}", "%41".repeat(400));
        assert_eq!(decode(&long), Err(RouteError::BadPath));
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
            "/build-trace-v2/x.drv/out.doi",
            &format!("/build-trace-v2/{H}-x.drv/.out.doi"),
            &format!("/build-trace-v2/{H}-x.drv/out"),
            &format!("/build-trace-v2/{H}-x/out.doi"),
            &format!("/build-trace-v2/{H}-x.drv/a/out.doi"),
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
