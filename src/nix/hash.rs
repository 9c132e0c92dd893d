//! sha256 digests as narinfos write them: `sha256:` followed by nix32, hexadecimal or base64,
//! or SRI `sha256-<base64>`.

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::nix::nix32;

/// Standard base64; decoding takes padded and unpadded text, as Nix does.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a hash text is not a sha256 digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestError {
    /// Another algorithm (or no `sha256:` / `sha256-` prefix).
    NotSha256,
    /// The digest does not decode to 32 bytes; says why.
    Bad(&'static str),
}

/// Decodes a sha256 hash in any form Nix parses: SRI `sha256-<base64>`, or `sha256:` followed by
/// nix32, base16 or base64, which Nix tells apart by length.
pub fn sha256_digest(value: &str) -> Result<[u8; 32], DigestError> {
    let mut digest = [0u8; 32];
    if let Some(b64) = value.strip_prefix("sha256-") {
        decode_base64_digest(b64, &mut digest)?;
    } else if let Some(text) = value.strip_prefix("sha256:") {
        match text.len() {
            nix32::SHA256_LEN => nix32::decode_into(text.as_bytes(), &mut digest)
                .ok_or(DigestError::Bad("invalid nix32"))?,
            64 => digest = decode_hex32(text).ok_or(DigestError::Bad("invalid hexadecimal"))?,
            44 => decode_base64_digest(text, &mut digest)?,
            _ => {
                return Err(DigestError::Bad(
                    "wrong length: sha256 is 52 nix32, 64 hex or 44 base64 characters",
                ));
            }
        }
    } else {
        return Err(DigestError::NotSha256);
    }
    Ok(digest)
}

fn decode_base64_digest(text: &str, out: &mut [u8; 32]) -> Result<(), DigestError> {
    match BASE64.decode(text) {
        Ok(bytes) if bytes.len() == out.len() => {
            out.copy_from_slice(&bytes);
            Ok(())
        }
        _ => Err(DigestError::Bad("invalid base64 sha256 digest")),
    }
}

/// 64 hexadecimal digits (either case) as 32 bytes.
pub fn decode_hex32(text: &str) -> Option<[u8; 32]> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_decodes_in_either_case_and_refuses_anything_else() {
        let lower = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let digest = decode_hex32(lower).unwrap();
        assert_eq!(digest[..2], [0xe3, 0xb0]);
        assert_eq!(decode_hex32(&lower.to_uppercase()), Some(digest));
        assert_eq!(decode_hex32(&lower[1..]), None);
        assert_eq!(decode_hex32(&format!("g{}", &lower[1..])), None);
        assert_eq!(decode_hex32(&"é".repeat(32)), None);
    }
}
