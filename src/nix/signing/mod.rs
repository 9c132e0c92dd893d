//! ed25519 signing of narinfos, using the key files and signatures the Nix client itself uses.
//!
//! With `require-sigs = true` (the default), a Nix client accepts a narinfo only if it has a
//! `Sig: name:base64` line made by a key in its `trusted-public-keys`. The signature covers a
//! *fingerprint* of the path ([`fingerprint`]) rather than the narinfo text, so lines can be added
//! or moved without breaking it. Keys are the files `nix key generate-secret` writes, and ed25519
//! is deterministic, so a signature made here is the exact `Sig:` line Nix would have written.

mod key;

use std::collections::BTreeSet;
use std::fmt;

pub use key::{KeyError, KeyProblem, MAX_KEY_FILE_LEN, PublicKey, SigningKey};

use crate::nix::hash::{self, DigestError};
use crate::nix::narinfo::{NarInfo, is_well_formed_sig};
use crate::nix::nix32;

/// The message Nix signs for a store path:
/// `1;<StorePath>;sha256:<nix32 NarHash>;<NarSize>;<reference paths, sorted, comma-separated>`.
///
/// The NarHash is re-rendered in nix32 whatever encoding the narinfo used, and references become
/// full paths under `store_dir` (no trailing '/'), sorted and deduplicated, because Nix builds
/// the fingerprint from its own sorted set of paths, not from the narinfo text.
pub fn fingerprint(info: &NarInfo, store_dir: &str) -> Result<String, FingerprintError> {
    let refuse = |problem| FingerprintError {
        store_path: info.store_path.to_owned(),
        nar_hash: info.nar_hash.to_owned(),
        problem,
    };
    // Nix refuses too: a size of 0 means "unknown", and signing it would vouch for nothing.
    if info.nar_size == 0 {
        return Err(refuse(FingerprintProblem::ZeroNarSize));
    }
    let digest = hash::sha256_digest(info.nar_hash).map_err(|e| {
        refuse(match e {
            DigestError::NotSha256 => FingerprintProblem::NotSha256,
            DigestError::Bad(why) => FingerprintProblem::BadDigest(why),
        })
    })?;
    let references: BTreeSet<String> = info
        .references
        .iter()
        .map(|r| format!("{store_dir}/{r}"))
        .collect();
    Ok(format!(
        "1;{};sha256:{};{};{}",
        info.store_path,
        nix32::encode(&digest),
        info.nar_size,
        references.into_iter().collect::<Vec<_>>().join(",")
    ))
}

/// Why a narinfo cannot be signed; the message names the store path and what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FingerprintError {
    pub store_path: String,
    pub nar_hash: String,
    pub problem: FingerprintProblem,
}

/// What stands in the way of a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FingerprintProblem {
    /// `NarSize: 0`, which Nix uses for "unknown".
    ZeroNarSize,
    /// The NarHash uses another algorithm; Nix only signs sha256 NAR hashes.
    NotSha256,
    /// The NarHash says sha256 but its digest does not decode to 32 bytes.
    BadDigest(&'static str),
}

impl fmt::Display for FingerprintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (path, hash) = (&self.store_path, &self.nar_hash);
        match &self.problem {
            FingerprintProblem::ZeroNarSize => write!(
                f,
                "cannot sign {path}: its narinfo has NarSize 0, which Nix treats as unknown and \
                 refuses to sign; put the real NAR size in the narinfo"
            ),
            FingerprintProblem::NotSha256 => write!(
                f,
                "cannot sign {path}: NarHash {hash:?} is not a sha256 hash, and Nix only signs \
                 sha256 NAR hashes"
            ),
            FingerprintProblem::BadDigest(why) => write!(
                f,
                "cannot sign {path}: NarHash {hash:?} is not a valid sha256 hash ({why})"
            ),
        }
    }
}

impl std::error::Error for FingerprintError {}

/// Returns `text` (the narinfo `info` was parsed from) with a `Sig:` line appended for each key
/// whose name has no signature yet. Existing `Sig:` lines are kept as they are: a second signing
/// changes nothing, and signatures by other keys survive; malformed ones, which make Nix 2.34+
/// refuse the narinfo, are dropped. Nothing to add or drop returns `text` unchanged, even for a
/// narinfo that could not be signed.
pub fn sign_narinfo(
    text: &str,
    info: &NarInfo,
    keys: &[SigningKey],
    store_dir: &str,
) -> Result<String, FingerprintError> {
    let mut signed: Vec<&str> = info
        .sigs
        .iter()
        .filter(|sig| is_well_formed_sig(sig))
        .filter_map(|sig| sig.split_once(':').map(|(name, _)| name))
        .collect();
    let mut missing = Vec::new();
    for key in keys {
        // A name repeated in `keys` is signed once: Nix trusts one key per name anyway.
        if !signed.contains(&key.name()) {
            signed.push(key.name());
            missing.push(key);
        }
    }
    let malformed = info.sigs.iter().any(|sig| !is_well_formed_sig(sig));
    if missing.is_empty() && !malformed {
        return Ok(text.to_owned());
    }

    let fingerprint = fingerprint(info, store_dir)?;
    let mut out = String::with_capacity(text.len() + missing.len() * 128);
    // A malformed `Sig:` line makes Nix 2.34+ refuse the whole narinfo: a narinfo we rewrite
    // drops it (it could never verify anyway), keeping every other line as it was.
    for line in text.split_inclusive('\n') {
        let bad_sig = line
            .strip_prefix("Sig: ")
            .is_some_and(|sig| !is_well_formed_sig(sig.trim_end_matches('\n')));
        if !bad_sig {
            out.push_str(line);
        }
    }
    // Every line must end with '\n'; Nix's parser rejects a last line without one.
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    for key in missing {
        out.push_str("Sig: ");
        out.push_str(&key.sign(fingerprint.as_bytes()));
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use key::BASE64;
    use std::path::Path;

    macro_rules! fixture {
        ($path:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/",
                $path
            ))
        };
    }

    const STORE: &str = "/nix/store";
    const SECRET: &str = fixture!("keys/test-key.sec");
    const PUBLIC: &str = fixture!("keys/test-key.pub");

    /// (unsigned narinfo from `cache-xz`, the same narinfo signed by Nix in `cache-signed`).
    const PAIRS: [(&str, &str); 3] = [
        (
            fixture!("cache-xz/6ll6zs2rb9av0iylc29c154xzi53g46a.narinfo"),
            fixture!("cache-signed/6ll6zs2rb9av0iylc29c154xzi53g46a.narinfo"),
        ),
        (
            fixture!("cache-xz/k4xpmqvg9i98lysjxjaylm51m1sjki3m.narinfo"),
            fixture!("cache-signed/k4xpmqvg9i98lysjxjaylm51m1sjki3m.narinfo"),
        ),
        (
            fixture!("cache-xz/kkafqq118sd9ik0pwm1z46lb3gj66hih.narinfo"),
            fixture!("cache-signed/kkafqq118sd9ik0pwm1z46lb3gj66hih.narinfo"),
        ),
    ];

    /// `cache-xz/6ll6….narinfo`, whose NarHash the tests below rewrite in other encodings.
    const MID: &str = PAIRS[0].0;
    const MID_FINGERPRINT: &str = "1;/nix/store/6ll6zs2rb9av0iylc29c154xzi53g46a-fixture-mid;\
        sha256:1dkwm6fia7rwkgwkwlwqszbxwx5jh4vdwfz71fzk3s155k4yccv4;648;\
        /nix/store/k4xpmqvg9i98lysjxjaylm51m1sjki3m-fixture-base";
    const MID_NIX32: &str = "sha256:1dkwm6fia7rwkgwkwlwqszbxwx5jh4vdwfz71fzk3s155k4yccv4";

    fn test_key() -> SigningKey {
        SigningKey::parse(SECRET).unwrap()
    }

    /// A second key, as `nix key generate-secret` would write it.
    fn other_key_text(name: &str) -> String {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        format!("{name}:{}", BASE64.encode(key.to_keypair_bytes()))
    }

    fn parse(text: &str) -> NarInfo<'_> {
        NarInfo::parse(text, STORE).unwrap()
    }

    fn fingerprint_of(text: &str) -> Result<String, FingerprintError> {
        fingerprint(&parse(text), STORE)
    }

    #[test]
    fn public_key_matches_nix_convert_secret_to_public() {
        let key = test_key();
        assert_eq!(key.name(), "test-cache-1");
        assert_eq!(key.public_key(), PUBLIC.trim_end());
        let path = Path::new("tests/fixtures/keys/test-key.sec");
        let from_file = SigningKey::from_file_bytes(path, SECRET.as_bytes()).unwrap();
        assert_eq!(from_file.public_key(), PUBLIC.trim_end());
        let public = PublicKey::parse(PUBLIC).unwrap();
        assert_eq!(public.name(), "test-cache-1");
        assert_eq!(public.to_string(), PUBLIC.trim_end());
    }

    #[test]
    fn trailing_newline_in_key_file_is_ignored() {
        let key = SigningKey::parse(&format!("{SECRET}\n")).unwrap();
        assert_eq!(key.public_key(), PUBLIC.trim_end());
    }

    #[test]
    fn malformed_signatures_are_dropped_when_signing() {
        let (unsigned, signed) = PAIRS[0];
        let key = test_key();
        for bad in ["Sig: junk\n", "Sig: other-1:c2lnbmF0dXJl\n", "Sig: :\n"] {
            let text = format!("{unsigned}{bad}");
            let out =
                sign_narinfo(&text, &parse(&text), std::slice::from_ref(&key), STORE).unwrap();
            assert_eq!(out, signed, "{bad:?}");
            let info = NarInfo::parse(&out, STORE).unwrap();
            assert!(info.check_strict().is_ok());
            // Already signed by our key: the malformed line still goes.
            let text = format!("{signed}{bad}");
            let out =
                sign_narinfo(&text, &parse(&text), std::slice::from_ref(&key), STORE).unwrap();
            assert_eq!(out, signed, "{bad:?}");
        }
    }

    #[test]
    fn fingerprint_is_nix_format() {
        assert_eq!(fingerprint_of(MID).unwrap(), MID_FINGERPRINT);
        // No references: the fingerprint ends with an empty field.
        assert!(fingerprint_of(PAIRS[1].0).unwrap().ends_with(";1008;"));
    }

    #[test]
    fn fingerprints_verify_against_nix_signatures() {
        let public = PublicKey::parse(PUBLIC).unwrap();
        for (_, signed) in PAIRS {
            let info = parse(signed);
            let fingerprint = fingerprint(&info, STORE).unwrap();
            assert_eq!(info.sigs.len(), 1);
            assert!(public.verify(&fingerprint, info.sigs[0]), "{signed}");
            let tampered = fingerprint.replacen("1;", "2;", 1);
            assert!(!public.verify(&tampered, info.sigs[0]));
        }
    }

    #[test]
    fn signing_unsigned_narinfo_gives_exactly_what_nix_wrote() {
        let keys = [test_key()];
        for (unsigned, signed) in PAIRS {
            let ours = sign_narinfo(unsigned, &parse(unsigned), &keys, STORE).unwrap();
            assert_eq!(ours, signed);
        }
    }

    #[test]
    fn other_encodings_of_nar_hash_give_the_same_fingerprint() {
        // Values printed by Nix 2.8: `nix hash to-base16|to-base64|to-sri` of MID's NarHash.
        let forms = [
            "sha256:6433e6c92c25e831bf0be73bde3681b274ded7d798533ef99b3c1f159da97cb6",
            "sha256:6433E6C92C25E831BF0BE73BDE3681B274DED7D798533EF99B3C1F159DA97CB6",
            "sha256:ZDPmySwl6DG/C+c73jaBsnTe19eYUz75mzwfFZ2pfLY=",
            "sha256-ZDPmySwl6DG/C+c73jaBsnTe19eYUz75mzwfFZ2pfLY=",
        ];
        for form in forms {
            let text = MID.replace(MID_NIX32, form);
            assert_eq!(fingerprint_of(&text).unwrap(), MID_FINGERPRINT, "{form}");
        }
    }

    /// A throwaway key from `nix key generate-secret --key-name cross-check-1` (Nix 2.8).
    const CROSS_CHECK_KEY: &str = "cross-check-1:GAVYQ56sTWWpWsaM8pOcqdcnIcvU/1dDJLIacBjCYLmGt\
        se8xIzmJym5eNtYkGCaXInAFwegasXl3fn9P/0eAA==";

    /// Checks that signing `text` with that key appends exactly the `Sig:` line that
    /// Nix 2.8's `nix store sign --key-file` added to the same narinfo.
    fn assert_signs_like_nix(text: &str, nix_sig: &str) {
        let keys = [SigningKey::parse(CROSS_CHECK_KEY).unwrap()];
        let signed = sign_narinfo(text, &parse(text), &keys, STORE).unwrap();
        assert_eq!(signed.strip_prefix(text), Some(nix_sig));
    }

    #[test]
    fn base16_nar_hash_is_signed_like_nix() {
        let text = MID.replace(
            MID_NIX32,
            "sha256:6433e6c92c25e831bf0be73bde3681b274ded7d798533ef99b3c1f159da97cb6",
        );
        assert_signs_like_nix(
            &text,
            "Sig: cross-check-1:ZFI2pXE447uVJJUPI1v5IdisRSGYvJQy2R0tdFxM+KNIXCYVo2BBWyNCfDHMSvhw\
             6y2xT068MoJBqddIALj3AA==\n",
        );
    }

    #[test]
    fn unsorted_and_repeated_references_are_signed_like_nix() {
        let text = MID.replace(
            "References: k4xpmqvg9i98lysjxjaylm51m1sjki3m-fixture-base",
            "References: kkafqq118sd9ik0pwm1z46lb3gj66hih-fixture-top \
             k4xpmqvg9i98lysjxjaylm51m1sjki3m-fixture-base \
             6ll6zs2rb9av0iylc29c154xzi53g46a-fixture-mid \
             k4xpmqvg9i98lysjxjaylm51m1sjki3m-fixture-base 0ll6zs2rb9av0iylc29c154xzi53g46a-A",
        );
        assert_signs_like_nix(
            &text,
            "Sig: cross-check-1:AAYI2EXOCVdg7jxik2Nudn0JbKqoywj9OeeD2MT8rw1oReOF5fYGTYHRi1PFuJmz\
             GeS9mHXU2wwKPzXeyG29Ag==\n",
        );
    }

    #[test]
    fn references_are_sorted_full_paths_without_duplicates() {
        let text = MID.replace(
            "References: k4xpmqvg9i98lysjxjaylm51m1sjki3m-fixture-base",
            "References: kkafqq118sd9ik0pwm1z46lb3gj66hih-fixture-top \
             6ll6zs2rb9av0iylc29c154xzi53g46a-fixture-mid \
             kkafqq118sd9ik0pwm1z46lb3gj66hih-fixture-top",
        );
        let fingerprint = fingerprint_of(&text).unwrap();
        assert!(
            fingerprint.ends_with(
                ";648;/nix/store/6ll6zs2rb9av0iylc29c154xzi53g46a-fixture-mid,\
                 /nix/store/kkafqq118sd9ik0pwm1z46lb3gj66hih-fixture-top"
            ),
            "{fingerprint}"
        );
    }

    #[test]
    fn refuses_what_nix_refuses_to_sign() {
        let zero = MID.replace("NarSize: 648", "NarSize: 0");
        let e = fingerprint_of(&zero).unwrap_err();
        assert_eq!(e.problem, FingerprintProblem::ZeroNarSize);
        assert!(e.to_string().contains("NarSize 0"), "{e}");
        assert!(e.to_string().contains("fixture-mid"), "{e}");

        // Set on the parsed narinfo, since the narinfo parser already refuses some of these.
        let mut info = parse(MID);
        info.nar_hash = "sha512:abcd";
        let e = fingerprint(&info, STORE).unwrap_err();
        assert_eq!(e.problem, FingerprintProblem::NotSha256);
        assert!(e.to_string().contains("not a sha256 hash"), "{e}");

        let bad_digests = [
            "sha256:abc".to_owned(),
            format!("sha256:{}", "g".repeat(64)),
            format!("sha256:{}", "z".repeat(52)),
            format!("sha256:{}", "!".repeat(44)),
            "sha256-ZDPm".to_owned(),
            "sha256-".to_owned(),
            "sha256:".to_owned(),
            format!("sha256:{}", "é".repeat(32)),
        ];
        for hash in &bad_digests {
            info.nar_hash = hash;
            let e = fingerprint(&info, STORE).unwrap_err();
            assert!(
                matches!(e.problem, FingerprintProblem::BadDigest(_)),
                "{hash}"
            );
        }
    }

    #[test]
    fn signing_twice_adds_nothing() {
        let keys = [test_key()];
        let (unsigned, signed) = PAIRS[0];
        assert_eq!(
            sign_narinfo(signed, &parse(signed), &keys, STORE).unwrap(),
            signed
        );
        // Repeating a key in `keys` does not repeat its signature either.
        let twice = [test_key(), test_key()];
        let once = sign_narinfo(unsigned, &parse(unsigned), &twice, STORE).unwrap();
        assert_eq!(once, signed);
        // Already signed: no fingerprint is needed, so even an unsignable narinfo passes through.
        let zero = signed.replace("NarSize: 648", "NarSize: 0");
        assert_eq!(
            sign_narinfo(&zero, &parse(&zero), &keys, STORE).unwrap(),
            zero
        );
    }

    #[test]
    fn second_key_adds_one_line_and_keeps_the_first() {
        let other = SigningKey::parse(&other_key_text("other-cache-1")).unwrap();
        let keys = [test_key(), other];
        let (_, signed) = PAIRS[2];
        let both = sign_narinfo(signed, &parse(signed), &keys, STORE).unwrap();
        let added = both.strip_prefix(signed).unwrap();
        assert!(added.starts_with("Sig: other-cache-1:") && added.ends_with('\n'));
        assert_eq!(added.lines().count(), 1);

        let info = parse(&both);
        let fingerprint = fingerprint(&info, STORE).unwrap();
        let other_public = PublicKey::parse(&keys[1].public_key()).unwrap();
        assert!(other_public.verify(&fingerprint, info.sigs[1]));
        // A signature is only valid under its own key name.
        assert!(!other_public.verify(&fingerprint, info.sigs[0]));
    }

    #[test]
    fn missing_final_newline_is_added_before_the_signature() {
        let (unsigned, signed) = PAIRS[1];
        let info = parse(unsigned);
        let chopped = unsigned.strip_suffix('\n').unwrap();
        let ours = sign_narinfo(chopped, &info, &[test_key()], STORE).unwrap();
        assert_eq!(ours, signed);
    }

    #[test]
    fn verify_rejects_malformed_signatures() {
        let public = PublicKey::parse(PUBLIC).unwrap();
        let fingerprint = fingerprint_of(MID).unwrap();
        let good = test_key().sign(fingerprint.as_bytes());
        assert!(public.verify(&fingerprint, &good));
        let (_, data) = good.split_once(':').unwrap();
        for sig in [
            "",
            "no-colon",
            &format!("other-name:{data}"),
            "test-cache-1:!!!",
            "test-cache-1:AAAA",
            &format!("test-cache-1:{}", BASE64.encode([0u8; 64])),
        ] {
            assert!(!public.verify(&fingerprint, sig), "{sig}");
        }
    }

    /// The error for a malformed secret key, checked to say `what` and never to quote the key.
    fn secret_error(text: &str, what: &str) -> KeyError {
        let e = SigningKey::parse(text).unwrap_err();
        let message = e.to_string();
        assert!(message.contains(what), "{message:?} should say {what:?}");
        if let Some((_, data)) = text.split_once(':') {
            assert!(
                data.len() < 4 || !message.contains(data),
                "{message} leaks the key"
            );
        }
        e
    }

    #[test]
    fn malformed_secret_keys_are_explained() {
        let (_, data) = SECRET.split_once(':').unwrap();
        secret_error(data, "no ':'");
        secret_error(" \n", "empty");
        secret_error(&format!(":{data}"), "name before ':' is empty");
        secret_error(&format!("my key:{data}"), "whitespace");
        secret_error(&format!("k:{}", data.replace('/', "!")), "not base64");
        secret_error("k:", "0 bytes long, expected 64");
        // The public key file given where the secret one belongs.
        secret_error(PUBLIC, "looks like a public key");

        let mut pair = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).to_keypair_bytes();
        pair[40] ^= 1;
        let e = secret_error(&format!("k:{}", BASE64.encode(pair)), "does not belong");
        assert!(matches!(e.problem(), KeyProblem::PublicHalfMismatch));
    }

    #[test]
    fn malformed_public_keys_are_explained() {
        let cases = [
            ("nocolon", "no ':'"),
            ("k:AAAA", "3 bytes long, expected 32"),
            (SECRET, "looks like a secret key"),
        ];
        for (text, what) in cases {
            let message = PublicKey::parse(text).unwrap_err().to_string();
            assert!(message.contains(what), "{message:?} should say {what:?}");
        }
    }

    #[test]
    fn key_file_errors_name_the_file() {
        let path = Path::new("/etc/nix/cache.sec");
        let named = |e: &KeyError| {
            assert_eq!(e.file(), Some(path));
            let message = e.to_string();
            assert!(message.contains("/etc/nix/cache.sec"), "{message}");
            message
        };

        let e = KeyError::unreadable_secret(path, std::io::ErrorKind::NotFound.into());
        assert!(matches!(e.problem(), KeyProblem::Missing));
        assert!(named(&e).contains("does not exist"), "{e}");

        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let e = KeyError::unreadable_secret(path, denied);
        assert!(matches!(e.problem(), KeyProblem::Unreadable(_)), "{e}");
        assert!(named(&e).starts_with("cannot read secret key file"), "{e}");

        let e = SigningKey::from_file_bytes(path, PUBLIC.as_bytes()).unwrap_err();
        assert!(named(&e).contains("32 bytes long, expected 64"), "{e}");

        let e = SigningKey::from_file_bytes(path, &[0xff, 0xfe, b':']).unwrap_err();
        assert!(matches!(e.problem(), KeyProblem::NotText), "{e}");
        named(&e);

        let huge = "a".repeat(MAX_KEY_FILE_LEN as usize + 1);
        let e = SigningKey::from_file_bytes(path, huge.as_bytes()).unwrap_err();
        assert!(matches!(e.problem(), KeyProblem::TooLarge), "{e}");
        named(&e);
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let debug = format!("{:?}", test_key());
        let (_, data) = SECRET.trim_end().split_once(':').unwrap();
        assert!(!debug.contains(data) && !debug.contains(&data[..43]));
        assert!(debug.contains(PUBLIC.trim_end()), "{debug}");
    }
}
