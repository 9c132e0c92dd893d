//! Fuzzes the request path decoder and router: whatever it accepts must be safe to join to the cache root.

#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use nix_binary_cache::nix::nix32;
use nix_binary_cache::nix::layout::{Route, decode, route};

/// The checks every relative path handed to the file system must pass.
fn assert_contained(rel: &str, input: &str) {
    assert!(!rel.is_empty(), "{input:?}: empty path");
    assert!(!rel.starts_with('/'), "{input:?}: absolute {rel:?}");
    for bad in ['%', '\\', '\0'] {
        assert!(!rel.contains(bad), "{input:?}: {rel:?} contains {bad:?}");
    }
    // `..` may appear inside a name (Nix allows `a..b`), never as a segment of its own.
    for seg in rel.split('/') {
        assert!(
            !matches!(seg, "" | "." | ".."),
            "{input:?}: {rel:?} has segment {seg:?}"
        );
    }
    let root = Path::new("/root");
    let joined = root.join(rel);
    assert!(
        joined.starts_with(root),
        "{input:?}: {joined:?} left the root"
    );
    let mut components = joined.components();
    assert_eq!(components.next(), Some(Component::RootDir), "{input:?}");
    assert_eq!(
        components.next(),
        Some(Component::Normal("root".as_ref())),
        "{input:?}"
    );
    for c in components {
        assert!(
            matches!(c, Component::Normal(_)),
            "{input:?}: {joined:?} has component {c:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    // As the server does: one layer of percent-decoding, then the strict checks.
    let Ok(decoded) = decode(raw) else {
        return;
    };
    let path: &str = &decoded;
    match route(path) {
        Ok(Route::CacheInfo) => assert_eq!(path, "/nix-cache-info"),
        Ok(Route::NarInfo(hash)) => {
            assert!(nix32::is_store_hash(hash), "{path:?}: hash {hash:?}");
            assert_contained(&format!("{hash}.narinfo"), path);
            assert_eq!(path, format!("/{hash}.narinfo"));
        }
        Ok(Route::File(_, rel)) => {
            assert_contained(rel, path);
            assert_eq!(&path[1..], rel, "rel is not the path without its '/'");
        }
        Err(_) => {}
    }
});
