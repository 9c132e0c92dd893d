//! Upload tokens: who may write to the cache.
//!
//! Nix sends credentials from its `netrc-file` as HTTP Basic; other tools may prefer
//! `Authorization: Bearer`. Either way the secret is compared with every configured token in
//! constant time, through SHA-256 digests so that not even the length leaks.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::Engine;
use sha2::{Digest, Sha256};

/// The set of accepted upload tokens, each with the name the logs and metrics show for it.
///
/// Clones share the set, so [`Tokens::reload`] (on `SIGHUP`) changes it for every holder.
#[derive(Clone)]
pub struct Tokens {
    set: Arc<RwLock<Arc<[Token]>>>,
    /// The file the set came from, read again by [`Tokens::reload`].
    file: Option<PathBuf>,
}

/// One accepted token: only its digest is kept, never the secret itself.
struct Token {
    name: Arc<str>,
    digest: [u8; 32],
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.len())
    }
}

impl Tokens {
    /// Reads the token file: one token per line, either `name:token` or a bare token (named
    /// `line-N` after its line); blank lines and `#` comments are ignored. A file without any
    /// token is an error: it would silently lock everybody out.
    pub fn from_file(path: &Path) -> io::Result<Tokens> {
        let tokens = read_file(path)?;
        Ok(Tokens {
            set: Arc::new(RwLock::new(tokens.into())),
            file: Some(path.to_path_buf()),
        })
    }

    pub fn parse(text: &str) -> Tokens {
        Tokens {
            set: Arc::new(RwLock::new(parse_lines(text).into())),
            file: None,
        }
    }

    /// How many tokens are accepted.
    pub fn len(&self) -> usize {
        self.current().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the token file again and, if it is sound, accepts its tokens from now on; a file
    /// that cannot be read or holds no token keeps the previous set (the error says why).
    /// Returns the number of tokens now accepted.
    pub fn reload(&self) -> io::Result<usize> {
        let Some(file) = &self.file else {
            return Ok(self.len());
        };
        let tokens = read_file(file)?;
        let n = tokens.len();
        *self.set.write().unwrap_or_else(|e| e.into_inner()) = tokens.into();
        Ok(n)
    }

    fn current(&self) -> Arc<[Token]> {
        self.set.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// True if the request's `Authorization` header carries one of the tokens.
    #[cfg(test)]
    pub fn authorizes(&self, authorization: Option<&str>) -> bool {
        self.who(authorization).is_some()
    }

    /// The name of the token the request's `Authorization` header (its value, if it has one)
    /// carries, if it is one.
    pub fn who(&self, authorization: Option<&str>) -> Option<Arc<str>> {
        let given = digest(&secret(authorization?)?);
        // No early exit: every token is compared, every byte of each.
        let mut found = None;
        for token in self.current().iter() {
            if constant_time_eq(&token.digest, &given) {
                found = Some(token.name.clone());
            }
        }
        found
    }
}

/// Reads and parses a token file; no token at all is an error.
fn read_file(path: &Path) -> io::Result<Vec<Token>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("upload token file {}: {e}", path.display()),
        )
    })?;
    let tokens = parse_lines(&text);
    if tokens.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "upload token file {} holds no token (one per line, `name:token` or a bare token)",
                path.display()
            ),
        ));
    }
    Ok(tokens)
}

/// `name:token` lines (a name is letters, digits, `.`, `_`, `-`), else bare tokens.
fn parse_lines(text: &str) -> Vec<Token> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(line, l)| match l.split_once(':') {
            Some((name, secret)) if is_name(name) && !secret.is_empty() => Token {
                name: name.into(),
                digest: digest(secret),
            },
            _ => Token {
                name: format!("line-{line}").into(),
                digest: digest(l),
            },
        })
        .collect()
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
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

    fn auth(value: &str) -> Option<&str> {
        Some(value)
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
        assert!(tokens.authorizes(auth(&basic("nix:secret-one"))));
        assert!(tokens.authorizes(auth(&basic("anyone:secret-two"))));
        assert!(tokens.authorizes(auth("Bearer secret-two")));
        assert!(tokens.authorizes(auth("bearer secret-one")));
        assert!(!tokens.authorizes(auth(&basic("nix:secret-on"))));
        assert!(!tokens.authorizes(auth(&basic("secret-one"))));
        assert!(!tokens.authorizes(auth("Bearer # ci")));
        assert!(!tokens.authorizes(auth("Bearer ")));
        assert!(!tokens.authorizes(auth("Digest secret-one")));
        assert!(!tokens.authorizes(auth("Basic !!!")));
        assert!(!tokens.authorizes(None));
    }

    #[test]
    fn named_tokens_say_who() {
        let tokens = Tokens::parse("ci:secret-ci\nbare-secret\n# x\nalice:a:b\n");
        let who = |t: &str| {
            tokens
                .who(auth(&format!("Bearer {t}")))
                .map(|n| n.to_string())
        };
        assert_eq!(who("secret-ci").as_deref(), Some("ci"));
        assert_eq!(who("bare-secret").as_deref(), Some("line-2"));
        // Only the first colon separates the name: the secret may hold more.
        assert_eq!(who("a:b").as_deref(), Some("alice"));
        assert_eq!(
            who("ci:secret-ci"),
            None,
            "the name is not part of the secret"
        );
        assert_eq!(who("ci"), None);
        assert!(format!("{tokens:?}").contains("3 configured"));
    }

    #[test]
    fn reload_takes_a_sound_file_and_keeps_the_old_set_otherwise() {
        let path = std::env::temp_dir().join(format!("nbc-reload-{}", std::process::id()));
        std::fs::write(&path, "old:one\n").unwrap();
        let tokens = Tokens::from_file(&path).unwrap();
        let shared = tokens.clone();
        let bearer = |t: &str| format!("Bearer {t}");
        std::fs::write(&path, "new:two\n").unwrap();
        assert_eq!(tokens.reload().unwrap(), 1);
        assert!(
            shared.authorizes(Some(&bearer("two"))) && !shared.authorizes(Some(&bearer("one")))
        );
        std::fs::write(&path, "# emptied by mistake\n").unwrap();
        assert!(
            tokens
                .reload()
                .unwrap_err()
                .to_string()
                .contains("no token")
        );
        assert!(shared.authorizes(Some(&bearer("two"))), "the old set stays");
        std::fs::remove_file(&path).unwrap();
        assert!(tokens.reload().is_err());
        assert!(shared.authorizes(Some(&bearer("two"))));
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
