//! Fuzzes the narinfo parser on arbitrary UTF-8, and checks what an accepted narinfo promises.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nix_binary_cache::nix::narinfo::NarInfo;
use nix_binary_cache::nix::nix32;

const STORE_DIR: &str = "/nix/store";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(info) = NarInfo::parse(text, STORE_DIR) else {
        return;
    };

    // The store hash names the narinfo file and keys the index.
    let hash = info.store_hash();
    assert!(nix32::is_store_hash(hash), "store hash {hash:?}");
    assert!(
        nix32::store_hash_key(hash).is_some(),
        "store hash {hash:?} does not decode"
    );

    // The URL is joined to the cache root by clients: it must stay relative and inside.
    let url = info.url;
    assert!(!url.is_empty(), "empty URL accepted");
    assert!(!url.starts_with('/'), "absolute URL {url:?}");
    assert!(
        !url.split(['/', '?']).any(|seg| seg == ".."),
        "URL {url:?} has a '..' segment"
    );

    // Every reference and the deriver are plain store path base names.
    for r in info.references.iter().chain(info.deriver.iter()) {
        assert!(!r.is_empty() && !r.contains('/'), "reference {r:?}");
        let hash = r.get(..nix32::STORE_HASH_LEN).unwrap_or_default();
        assert!(nix32::is_store_hash(hash), "reference {r:?}");
    }

    // Signing may refuse the narinfo, but must never panic on one the parser accepted.
    if let Ok(fp) = nix_binary_cache::nix::signing::fingerprint(&info, STORE_DIR) {
        assert!(fp.starts_with("1;/nix/store/"), "fingerprint {fp:?}");
    }
});
