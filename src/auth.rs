//! Upload tokens: who may write to the cache.
//!
//! Nix sends credentials from its `netrc-file` as HTTP Basic; other tools may prefer
//! `Authorization: Bearer`. Either way the secret is compared with every configured token in
//! constant time, through SHA-256 digests so that not even the length leaks.

use std::io;
use std::path::Path;

use base64::Engine;
use sha2::{Digest, Sha256};
use tiny_http::Header;

/// The set of accepted upload tokens.
#[derive(Clone)]
pub struct Tokens {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.digests.len())
    }
}

impl Tokens {
    /// Reads one token per line; blank lines and `#` comments are ignored. A file without any
    /// token is an error: it would silently lock everybody out.
    pub fn from_file(path: &Path) -> io::Result<Tokens> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("upload token file {}: {e}", path.display()),
            )
        })?;
        let tokens = Tokens::parse(&text);
        if tokens.digests.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "upload token file {} holds no token (one per line)",
                    path.display()
                ),
            ));
        }
        Ok(tokens)
    }

    pub fn parse(text: &str) -> Tokens {
        let digests = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(digest)
            .collect();
        Tokens { digests }
    }

    /// True if the request's `Authorization` header carries one of the tokens.
    pub fn authorizes(&self, headers: &[Header]) -> bool {
        let Some(value) = headers.iter().find(|h| h.field.equiv("Authorization")) else {
            return false;
        };
        match secret(value.value.as_str()) {
            Some(given) => self.contains(&given),
            None => false,
        }
    }

    fn contains(&self, given: &str) -> bool {
        let given = digest(given);
        // No early exit: every token is compared, every byte of each.
        self.digests
            .iter()
            .fold(false, |found, d| found | constant_time_eq(d, &given))
    }
}

/// The secret in `Basic base64(user:token)` (any user name) or `Bearer token`.
fn secret(header: &str) -> Option<String> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (_user, password) = text.split_once(':')?;
        return Some(password.to_string());
    }
    None
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold back into an early-exit compare.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(value: &str) -> Vec<Header> {
        vec![Header::from_bytes("Authorization", value).unwrap()]
    }

    #[test]
    fn basic_and_bearer() {
        let tokens = Tokens::parse("# ci\nsecret-one\n\n  secret-two  \n");
        let basic = |user_pass: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(user_pass)
            )
        };
        assert!(tokens.authorizes(&auth(&basic("nix:secret-one"))));
        assert!(tokens.authorizes(&auth(&basic("anyone:secret-two"))));
        assert!(tokens.authorizes(&auth("Bearer secret-two")));
        assert!(tokens.authorizes(&auth("bearer secret-one")));
        assert!(!tokens.authorizes(&auth(&basic("nix:secret-on"))));
        assert!(!tokens.authorizes(&auth(&basic("secret-one"))));
        assert!(!tokens.authorizes(&auth("Bearer # ci")));
        assert!(!tokens.authorizes(&auth("Bearer ")));
        assert!(!tokens.authorizes(&auth("Digest secret-one")));
        assert!(!tokens.authorizes(&auth("Basic !!!")));
        assert!(!tokens.authorizes(&[]));
    }

    #[test]
    fn empty_token_file_is_refused() {
        let path = std::env::temp_dir().join(format!("nbc-tokens-{}", std::process::id()));
        std::fs::write(&path, "# nothing\n\n").unwrap();
        let e = Tokens::from_file(&path).unwrap_err();
        assert!(e.to_string().contains("holds no token"), "{e}");
        std::fs::remove_file(&path).unwrap();
        assert!(
            Tokens::from_file(&path)
                .unwrap_err()
                .to_string()
                .contains("upload token file")
        );
    }
}
