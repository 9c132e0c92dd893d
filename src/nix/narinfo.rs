//! Parsing of `.narinfo` files, the metadata Nix keeps for each store path.
//!
//! The format is `Key: value` lines, each ended by `\n` (see `nar-info.cc` in Nix). The parser
//! borrows from the text so that the index can keep one copy of each file: the bytes it serves.

use std::fmt;

use crate::nix::nix32;

/// The fields of a narinfo that this server needs; everything else passes through untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo<'a> {
    /// Full store path, e.g. `/nix/store/<hash>-hello`.
    pub store_path: &'a str,
    /// Where the NAR lives, relative to the cache root (`nar/<filehash>.nar.xz`).
    pub url: &'a str,
    /// Compression of the file at `url`; Nix assumes `bzip2` when the line is missing.
    pub compression: &'a str,
    pub file_hash: Option<&'a str>,
    pub file_size: Option<u64>,
    pub nar_hash: &'a str,
    pub nar_size: u64,
    /// Base names of the referenced store paths (no store directory prefix).
    pub references: Vec<&'a str>,
    pub deriver: Option<&'a str>,
    /// `Sig:` values, `keyname:base64`, in file order.
    pub sigs: Vec<&'a str>,
    pub ca: Option<&'a str>,
}

/// Why a narinfo was refused; the message names the line so that an operator can fix the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(msg.into()))
}

impl<'a> NarInfo<'a> {
    /// Parses narinfo text whose store paths live under `store_dir` (normally `/nix/store`).
    pub fn parse(text: &'a str, store_dir: &str) -> Result<NarInfo<'a>, ParseError> {
        let mut store_path = None;
        let mut url = None;
        let mut compression = None;
        let mut file_hash = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references = Vec::new();
        let mut deriver = None;
        let mut sigs = Vec::new();
        let mut ca = None;

        let mut rest = text;
        while !rest.is_empty() {
            let Some(eol) = rest.find('\n') else {
                return err("last line has no newline");
            };
            let line = &rest[..eol];
            rest = &rest[eol + 1..];
            let Some((key, value)) = line.split_once(": ") else {
                return err(format!("line without ': ': {line:?}"));
            };
            match key {
                "StorePath" => store_path = Some(check_store_path(value, store_dir)?),
                "URL" => url = Some(check_url(value)?),
                "Compression" => compression = Some(value),
                "FileHash" => file_hash = Some(check_hash(key, value)?),
                "FileSize" => file_size = Some(parse_size(key, value)?),
                "NarHash" => nar_hash = Some(check_hash(key, value)?),
                "NarSize" => nar_size = Some(parse_size(key, value)?),
                "References" => {
                    references = value.split(' ').filter(|r| !r.is_empty()).collect();
                    for r in &references {
                        check_base_name(r)?;
                    }
                }
                "Deriver" if value != "unknown-deriver" => deriver = Some(check_base_name(value)?),
                "Sig" => sigs.push(value),
                "CA" => ca = Some(value),
                _ => {} // Unknown keys are ignored, as Nix does.
            }
        }

        Ok(NarInfo {
            store_path: store_path.ok_or_else(|| ParseError("missing StorePath".into()))?,
            url: url.ok_or_else(|| ParseError("missing URL".into()))?,
            compression: compression.unwrap_or("bzip2"),
            file_hash,
            file_size,
            nar_hash: nar_hash.ok_or_else(|| ParseError("missing NarHash".into()))?,
            nar_size: nar_size.ok_or_else(|| ParseError("missing NarSize".into()))?,
            references,
            deriver,
            sigs,
            ca,
        })
    }

    /// Why Nix 2.34+ would refuse this narinfo although older clients take it: a `Sig` that is
    /// not `name:base64` of a 64-byte signature (2.34), a `Compression` it does not know (2.35).
    /// An upload must pass this, so that every client version can read what we store.
    pub fn check_strict(&self) -> Result<(), ParseError> {
        if !KNOWN_COMPRESSIONS.contains(&self.compression) {
            return err(format!(
                "Compression {:?} is not one Nix knows ({})",
                self.compression,
                KNOWN_COMPRESSIONS.join(", ")
            ));
        }
        if let Some(sig) = self.sigs.iter().find(|s| !is_well_formed_sig(s)) {
            return err(format!(
                "Sig {sig:?} is not name:base64 of an ed25519 signature"
            ));
        }
        Ok(())
    }

    /// The 32-character hash part of the store path: the narinfo's file name stem.
    pub fn store_hash(&self) -> &'a str {
        let base = base_name(self.store_path);
        &base[..nix32::STORE_HASH_LEN]
    }
}

/// True if a `Sig:` value is `name:base64` of 64 bytes, the only form Nix 2.34+ accepts.
pub fn is_well_formed_sig(sig: &str) -> bool {
    use base64::Engine;
    sig.split_once(':').is_some_and(|(name, b64)| {
        !name.is_empty()
            && base64::engine::general_purpose::STANDARD
                .decode(b64)
                .is_ok_and(|bytes| bytes.len() == 64)
    })
}

/// `Compression:` values Nix reads a NAR with (its own `none` and `br`, plus libarchive's).
pub const KNOWN_COMPRESSIONS: [&str; 13] = [
    "none", "xz", "bzip2", "zstd", "br", "gzip", "lz4", "lzip", "lzma", "lzop", "grzip", "lrzip",
    "compress",
];

/// The last component of a store path.
fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Characters Nix allows in a store path name (after the hash and dash).
pub fn is_store_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"+-._?=".contains(&c)
}

/// Checks `<32 nix32>-<name>`, the base name of a store path.
pub fn check_base_name(base: &str) -> Result<&str, ParseError> {
    let bytes = base.as_bytes();
    let ok = bytes.len() > nix32::STORE_HASH_LEN + 1
        && bytes.len() <= 211
        && base
            .get(..nix32::STORE_HASH_LEN)
            .is_some_and(nix32::is_store_hash)
        && bytes[nix32::STORE_HASH_LEN] == b'-'
        && bytes[nix32::STORE_HASH_LEN + 1] != b'.'
        && bytes[nix32::STORE_HASH_LEN + 1..]
            .iter()
            .all(|&c| is_store_name_char(c));
    if ok {
        Ok(base)
    } else {
        err(format!("not a store path name: {base:?}"))
    }
}

fn check_store_path<'a>(value: &'a str, store_dir: &str) -> Result<&'a str, ParseError> {
    match value
        .strip_prefix(store_dir)
        .and_then(|r| r.strip_prefix('/'))
    {
        Some(base) => check_base_name(base).map(|_| value),
        None => err(format!("StorePath {value:?} is not under {store_dir}")),
    }
}

/// URL must be relative and stay inside the cache: Nix joins it to the cache's base URL.
fn check_url(value: &str) -> Result<&str, ParseError> {
    let bad = value.is_empty()
        || value.starts_with('/')
        || value.contains("://")
        || value.split(['/', '?']).any(|seg| seg == "..");
    if bad {
        err(format!(
            "URL {value:?} is not a relative path inside the cache"
        ))
    } else {
        Ok(value)
    }
}

/// Accepts `algo:digest` in the encodings Nix reads (nix32, base16, base64) and SRI `algo-base64`.
fn check_hash<'a>(key: &str, value: &'a str) -> Result<&'a str, ParseError> {
    let digest_ok = |d: &str| {
        !d.is_empty()
            && d.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'=')
    };
    let ok = match value.split_once([':', '-']) {
        Some((algo, digest)) => {
            matches!(algo, "sha256" | "sha512" | "sha1" | "md5") && digest_ok(digest)
        }
        None => false,
    };
    if ok {
        Ok(value)
    } else {
        err(format!("{key} {value:?} is not a hash"))
    }
}

fn parse_size(key: &str, value: &str) -> Result<u64, ParseError> {
    match value.parse::<u64>() {
        Ok(n) if !value.starts_with('+') => Ok(n),
        _ => err(format!("{key} {value:?} is not a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "StorePath: /nix/store/4q1c78ism9fv0myqldmih68c6yjmpi2d-hello-fixture\n\
URL: nar/174d8j893kxa5cy28pvwp1c6v6phi5gzriajqm4l2ghpb0rxdzgk.nar.xz\n\
Compression: xz\n\
FileHash: sha256:174d8j893kxa5cy28pvwp1c6v6phi5gzriajqm4l2ghpb0rxdzgk\n\
FileSize: 201000\n\
NarHash: sha256:1h9kn9hj1j745kchafr3vi3hdp04zfhfgbc5dcvhkx5hfh2njr54\n\
NarSize: 200928\n\
References: z4asv3j07d89ywjf8fxkn7sg6mf5s9q5-dep 4q1c78ism9fv0myqldmih68c6yjmpi2d-hello-fixture\n\
Deriver: 3b0wxpgw8y2a43yyk5r3clb4zw92jcf8-hello-fixture.drv\n\
Sig: fixture-1:Q9AGdI7u4IdV==\n\
Future: ignored\n";

    #[test]
    fn strict_check_is_what_nix_2_35_wants() {
        // GOOD's own Sig is short (the parser does not care; Nix 2.34+ would).
        let base = GOOD.replace("Sig: fixture-1:Q9AGdI7u4IdV==\n", "");
        let good_sig = format!("Sig: k-1:{}==\n", "A".repeat(86));
        let ok = format!("{base}{good_sig}");
        assert_eq!(
            NarInfo::parse(&ok, "/nix/store").unwrap().check_strict(),
            Ok(())
        );
        for (bad, says) in [
            (format!("{GOOD}Sig: k-1:c2ln\n"), "Sig"),
            (format!("{GOOD}Sig: nocolon\n"), "Sig"),
            (format!("{GOOD}Sig: :{}==\n", "A".repeat(86)), "Sig"),
            (
                GOOD.replace("Compression: xz", "Compression: xzz"),
                "Compression",
            ),
        ] {
            let e = NarInfo::parse(&bad, "/nix/store").unwrap().check_strict();
            assert!(e.is_err_and(|e| e.0.contains(says)), "{bad}");
        }
    }

    #[test]
    fn parses_every_field() {
        let info = NarInfo::parse(GOOD, "/nix/store").unwrap();
        assert_eq!(info.store_hash(), "4q1c78ism9fv0myqldmih68c6yjmpi2d");
        assert_eq!(info.compression, "xz");
        assert_eq!(info.file_size, Some(201000));
        assert_eq!(info.nar_size, 200928);
        assert_eq!(info.references.len(), 2);
        assert_eq!(
            info.deriver,
            Some("3b0wxpgw8y2a43yyk5r3clb4zw92jcf8-hello-fixture.drv")
        );
        assert_eq!(info.sigs, vec!["fixture-1:Q9AGdI7u4IdV=="]);
    }

    #[test]
    fn missing_compression_means_bzip2_and_empty_references_are_fine() {
        let text = "StorePath: /nix/store/4q1c78ism9fv0myqldmih68c6yjmpi2d-x\nURL: nar/a.nar.bz2\n\
NarHash: sha256:1h9kn9hj1j745kchafr3vi3hdp04zfhfgbc5dcvhkx5hfh2njr54\nNarSize: 1\nReferences: \n";
        let info = NarInfo::parse(text, "/nix/store").unwrap();
        assert_eq!(info.compression, "bzip2");
        assert!(info.references.is_empty());
    }

    #[test]
    fn refuses_broken_files() {
        let cases = [
            ("", "missing StorePath"),
            (&GOOD[..GOOD.len() - 1], "no newline"),
            ("StorePath /nix/store/x\n", "without ': '"),
            (
                &GOOD.replace("URL: nar/", "URL: /nar/"),
                "not a relative path",
            ),
            (&GOOD.replace("URL: nar/", "URL: ../nar/"), "relative path"),
            (
                &GOOD.replace("NarSize: 200928", "NarSize: -1"),
                "not a number",
            ),
            (
                &GOOD.replace("/nix/store/4q1", "/opt/store/4q1"),
                "not under",
            ),
            (
                &GOOD.replace(
                    "4q1c78ism9fv0myqldmih68c6yjmpi2d-hello-fixture\nURL",
                    "4q1c78ism9fv0myqldmih68c6yjmpi2e-hello\nURL",
                ),
                "not a store path",
            ),
            (&GOOD.replace("NarHash: sha256:", "NarHash: "), "not a hash"),
            // Found by fuzzing: a multi-byte character across the hash boundary.
            (
                "References: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\u{e9}-x\n",
                "not a store path",
            ),
        ];
        for (text, why) in cases {
            let e = NarInfo::parse(text, "/nix/store").unwrap_err();
            assert!(e.0.contains(why), "{text:?}: {e} should mention {why}");
        }
    }
}
