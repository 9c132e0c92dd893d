//! Nix's base-32 alphabet ("nix32"), used in store path hashes and NAR file names.
//!
//! Nix leaves out `e`, `o`, `t` and `u` so that hashes never spell words.

const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Length of the hash part of a store path (`/nix/store/<32 chars>-name`).
pub const STORE_HASH_LEN: usize = 32;

/// Length of a nix32-encoded sha256 digest.
pub const SHA256_LEN: usize = 52;

/// The value of one nix32 digit, or `None` for a character outside the alphabet.
fn digit(c: u8) -> Option<u8> {
    match DIGITS[c as usize] {
        NOT_A_DIGIT => None,
        d => Some(d),
    }
}

const NOT_A_DIGIT: u8 = 0xff;

/// The value of each byte as a nix32 digit, built at compile time: every narinfo read and every
/// request checks 32 to 52 characters, so a lookup beats searching the alphabet.
const DIGITS: [u8; 256] = {
    let mut table = [NOT_A_DIGIT; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// True if every byte is a nix32 digit.
pub fn is_nix32(s: &[u8]) -> bool {
    s.iter().all(|&c| digit(c).is_some())
}

/// True if `s` is a store path hash part: exactly 32 nix32 digits.
pub fn is_store_hash(s: &str) -> bool {
    s.len() == STORE_HASH_LEN && is_nix32(s.as_bytes())
}

/// Encodes bytes the way Nix prints hashes: the last digit comes first.
pub fn encode(bytes: &[u8]) -> String {
    let len = (bytes.len() * 8).div_ceil(5);
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        let lo = bytes[i] as u16 >> j;
        let hi = if i + 1 < bytes.len() {
            (bytes[i + 1] as u16) << (8 - j)
        } else {
            0
        };
        out.push(ALPHABET[((lo | hi) & 0x1f) as usize] as char);
    }
    out
}

/// Decodes nix32 into `out.len()` bytes; `None` if a digit is invalid or bits overflow.
pub fn decode_into(s: &[u8], out: &mut [u8]) -> Option<()> {
    if s.len() != (out.len() * 8).div_ceil(5) {
        return None;
    }
    out.fill(0);
    for (n, &c) in s.iter().rev().enumerate() {
        let d = digit(c)? as u16;
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        out[i] |= (d << j) as u8;
        let carry = d >> (8 - j);
        if i + 1 < out.len() {
            out[i + 1] |= carry as u8;
        } else if carry != 0 {
            return None;
        }
    }
    Some(())
}

/// The 20 bytes a 32-character store hash stands for: a compact map key.
pub fn store_hash_key(s: &str) -> Option<[u8; 20]> {
    let mut key = [0u8; 20];
    decode_into(s.as_bytes(), &mut key)?;
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digit_table_matches_the_alphabet() {
        for c in 0..=255u8 {
            let expected = ALPHABET.iter().position(|&a| a == c).map(|p| p as u8);
            assert_eq!(digit(c), expected, "byte {c}");
        }
    }

    #[test]
    fn round_trips_sha256_length() {
        let bytes: Vec<u8> = (0u8..32).map(|b| b.wrapping_mul(37)).collect();
        let text = encode(&bytes);
        assert_eq!(text.len(), SHA256_LEN);
        let mut back = [0u8; 32];
        decode_into(text.as_bytes(), &mut back).unwrap();
        assert_eq!(&back[..], &bytes[..]);
    }

    #[test]
    fn known_value_matches_nix() {
        // sha256("") as printed by `nix hash to-base32 sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=`
        let empty = [
            0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f,
            0xb9, 0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b,
            0x78, 0x52, 0xb8, 0x55,
        ];
        assert_eq!(
            encode(&empty),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
    }

    #[test]
    fn rejects_letters_outside_alphabet() {
        assert!(is_store_hash("0123456789abcdfghijklmnpqrsvwxyz"));
        assert!(!is_store_hash("0123456789abcdefghijklmnpqrsvwxy"));
        assert!(!is_store_hash("short"));
        let too_big = "z".repeat(SHA256_LEN);
        assert!(decode_into(too_big.as_bytes(), &mut [0u8; 32]).is_none());
        assert!(store_hash_key("0123456789abcdfghijklmnpqrsvwxyz").is_some());
    }
}
