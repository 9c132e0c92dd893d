//! Store paths are immutable: what may replace a narinfo the cache already has.
//!
//! A narinfo vouches for one store path's contents, and the server signs what it serves with its
//! own key: letting any token holder overwrite it with other contents would make the server sign
//! whatever they pushed. So an existing narinfo may only be replaced by one describing the same
//! path in the same file (same `StorePath`, `NarHash`, `NarSize`, `References`, `URL` and
//! `FileHash`). Such an upload may bring signatures (`nix store sign --store http://…` uploads
//! the narinfo with its new `Sig:` line): those are added to the stored file, whose other lines
//! stay as they were. Signatures are only ever added, never dropped.

use std::collections::BTreeSet;

use crate::nix::hash;
use crate::nix::narinfo::NarInfo;

/// What to do with an upload of a narinfo that already exists.
#[derive(Debug, PartialEq, Eq)]
pub enum Replacement {
    /// Nothing new (an identical re-upload, or only signatures already there): keep the file.
    Keep,
    /// The stored text with the upload's new signatures appended.
    Write(String),
}

/// Decides whether `new` may replace `old` (both parsed narinfos; `old_text` is the stored file).
/// `Err` says which field differs, for the 409 answer.
pub fn replace(old_text: &str, old: &NarInfo, new: &NarInfo) -> Result<Replacement, String> {
    let differs = |field: &str, a: &str, b: &str| {
        Err(format!(
            "{} is already in this cache with another {field} ({a} here, {b} uploaded); \
             store paths are immutable: only signatures may be added",
            old.store_path
        ))
    };
    if old.store_path != new.store_path {
        return differs("StorePath", old.store_path, new.store_path);
    }
    if !same_hash(old.nar_hash, new.nar_hash) {
        return differs("NarHash", old.nar_hash, new.nar_hash);
    }
    if old.nar_size != new.nar_size {
        return differs(
            "NarSize",
            &old.nar_size.to_string(),
            &new.nar_size.to_string(),
        );
    }
    let refs =
        |i: &NarInfo| -> BTreeSet<String> { i.references.iter().map(|r| r.to_string()).collect() };
    if refs(old) != refs(new) {
        let show = |i: &NarInfo| format!("{:?}", i.references.join(" "));
        return differs("References", &show(old), &show(new));
    }
    if old.url != new.url {
        return differs("URL", old.url, new.url);
    }
    match (old.file_hash, new.file_hash) {
        (Some(a), Some(b)) if !same_hash(a, b) => return differs("FileHash", a, b),
        (Some(a), None) => return differs("FileHash", a, "none"),
        (None, Some(b)) => return differs("FileHash", "none", b),
        _ => {}
    }
    let added: Vec<&str> = new
        .sigs
        .iter()
        .filter(|sig| !old.sigs.contains(sig))
        .copied()
        .collect();
    if added.is_empty() {
        return Ok(Replacement::Keep);
    }
    let mut text = old_text.to_string();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    for sig in added {
        text.push_str("Sig: ");
        text.push_str(sig);
        text.push('\n');
    }
    Ok(Replacement::Write(text))
}

/// Two spellings of a hash (nix32, base16, base64, SRI) name the same digest.
fn same_hash(a: &str, b: &str) -> bool {
    a == b
        || matches!(
            (hash::sha256_digest(a), hash::sha256_digest(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORE: &str = "/nix/store";
    const OLD: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cache-signed/6ll6zs2rb9av0iylc29c154xzi53g46a.narinfo"
    ));

    fn check(new_text: &str) -> Result<Replacement, String> {
        let old = NarInfo::parse(OLD, STORE).unwrap();
        let new = NarInfo::parse(new_text, STORE).unwrap();
        replace(OLD, &old, &new)
    }

    fn line(key: &str) -> &'static str {
        OLD.lines()
            .find(|l| l.starts_with(&format!("{key}: ")))
            .unwrap()
    }

    #[test]
    fn identical_or_fewer_signatures_keep_the_file() {
        assert_eq!(check(OLD), Ok(Replacement::Keep));
        let unsigned: String = OLD
            .lines()
            .filter(|l| !l.starts_with("Sig: "))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(check(&unsigned), Ok(Replacement::Keep), "no signature lost");
    }

    #[test]
    fn new_signatures_are_added_to_the_stored_text() {
        let new = format!("{OLD}Sig: other-1:c2ln\n");
        assert_eq!(
            check(&new),
            Ok(Replacement::Write(format!("{OLD}Sig: other-1:c2ln\n")))
        );
        // A Deriver changed by the uploader is not taken over: only signatures are.
        let new = format!("{}Sig: other-1:c2ln\n", OLD.replace(line("Deriver"), ""));
        let Ok(Replacement::Write(text)) = check(&new.replace("\n\n", "\n")) else {
            panic!()
        };
        assert!(text.starts_with(OLD));
    }

    #[test]
    fn any_other_difference_is_refused_naming_the_field() {
        let nar_hash = line("NarHash");
        let mut digits: Vec<char> = nar_hash.chars().collect();
        let last = digits.len() - 1;
        digits[last] = if digits[last] == '0' { '1' } else { '0' };
        let other_hash: String = digits.into_iter().collect();
        let cases = [
            (OLD.replace(nar_hash, &other_hash), "NarHash"),
            (OLD.replace(line("NarSize"), "NarSize: 1"), "NarSize"),
            (
                OLD.replace(line("References"), "References: "),
                "References",
            ),
            (
                OLD.replace(line("URL"), &format!("URL: nar/{}.nar", "1".repeat(52))),
                "URL",
            ),
            (OLD.replace(line("FileHash"), ""), "FileHash"),
        ];
        for (text, field) in cases {
            let text = text.replace("\n\n", "\n");
            let e = check(&text).unwrap_err();
            assert!(e.contains(field) && e.contains("immutable"), "{field}: {e}");
        }
    }

    #[test]
    fn another_spelling_of_the_same_hash_is_the_same() {
        // The same NarHash in base16 instead of nix32.
        let nix32 = line("NarHash").trim_start_matches("NarHash: sha256:");
        let mut digest = [0u8; 32];
        crate::nix::nix32::decode_into(nix32.as_bytes(), &mut digest).unwrap();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let new = OLD.replace(nix32, &hex);
        assert_eq!(check(&new), Ok(Replacement::Keep));
    }
}
