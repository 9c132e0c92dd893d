//! Signing and public keys in the files `nix key generate-secret` and `convert-secret-to-public`
//! write (`name:base64`), and why one cannot be used.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ed25519_dalek::{Signature, Signer};

/// Standard base64 as Nix writes it (padded); decoding also takes unpadded text, as Nix does.
pub(super) const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A Nix secret key is the 32-byte seed followed by the 32-byte public key (libsodium's layout).
const SECRET_LEN: usize = 64;
const PUBLIC_LEN: usize = 32;

/// Key files are one short line; whoever reads one stops after this many bytes plus one, so that
/// a wrong path (a log, `/dev/zero`) fails quickly instead of filling memory.
pub const MAX_KEY_FILE_LEN: u64 = 4096;

/// A secret key that signs narinfos, with the name that goes in front of every signature.
#[derive(Clone)]
pub struct SigningKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl SigningKey {
    /// Parses Nix's secret key format, `name:base64(seed ‖ public key)`.
    pub fn parse(text: &str) -> Result<SigningKey, KeyError> {
        parse_secret(text).map_err(|problem| KeyError::new(None, KeyKind::Secret, problem))
    }

    /// Parses what was read from the secret key file `path` (at most [`MAX_KEY_FILE_LEN`] + 1
    /// bytes; the reading is the caller's, this layer does no I/O); errors name the file.
    pub fn from_file_bytes(path: &Path, bytes: &[u8]) -> Result<SigningKey, KeyError> {
        key_file_text(bytes)
            .and_then(parse_secret)
            .map_err(|problem| KeyError::new(Some(path), KeyKind::Secret, problem))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `name:base64` line for `trusted-public-keys`, as `nix key convert-secret-to-public`
    /// prints it.
    pub fn public_key(&self) -> String {
        format!(
            "{}:{}",
            self.name,
            BASE64.encode(self.key.verifying_key().as_bytes())
        )
    }

    /// Signs `message` (normally a [`super::fingerprint`]), giving the value of a `Sig:` line.
    pub fn sign(&self, message: &[u8]) -> String {
        let signature = self.key.sign(message);
        format!("{}:{}", self.name, BASE64.encode(signature.to_bytes()))
    }
}

/// Shows the name and public key only: the secret must never reach a log.
impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

/// A public key as listed in `trusted-public-keys`: `name:base64(32 bytes)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl PublicKey {
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        parse_public(text).map_err(|problem| KeyError::new(None, KeyKind::Public, problem))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// True if `sig` (a `Sig:` value, `name:base64`) is this key's signature of `fingerprint`.
    /// A signature by another key name is simply not valid for this key, as in Nix.
    pub fn verify(&self, fingerprint: &str, sig: &str) -> bool {
        let Some((name, data)) = sig.split_once(':') else {
            return false;
        };
        if name != self.name {
            return false;
        }
        let Ok(bytes) = BASE64.decode(data) else {
            return false;
        };
        let Ok(signature) = Signature::from_slice(&bytes) else {
            return false;
        };
        // Strict verification refuses the weak keys and malleable signatures libsodium refuses.
        self.key
            .verify_strict(fingerprint.as_bytes(), &signature)
            .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

fn parse_secret(text: &str) -> Result<SigningKey, KeyProblem> {
    let (name, bytes) = split_key(text)?;
    let wrong_length = KeyProblem::WrongLength {
        expected: SECRET_LEN,
        found: bytes.len(),
    };
    if bytes.len() != SECRET_LEN {
        return Err(wrong_length);
    }
    let Some((seed, public)) = bytes.split_first_chunk::<32>() else {
        return Err(wrong_length);
    };
    let key = ed25519_dalek::SigningKey::from_bytes(seed);
    // The public half is redundant; if it disagrees, the file was damaged or pieced together,
    // and clients trusting that public half would reject every signature we make.
    if key.verifying_key().as_bytes().as_slice() != public {
        return Err(KeyProblem::PublicHalfMismatch);
    }
    Ok(SigningKey {
        name: name.to_owned(),
        key,
    })
}

fn parse_public(text: &str) -> Result<PublicKey, KeyProblem> {
    let (name, bytes) = split_key(text)?;
    let Ok(array) = <[u8; PUBLIC_LEN]>::try_from(bytes.as_slice()) else {
        return Err(KeyProblem::WrongLength {
            expected: PUBLIC_LEN,
            found: bytes.len(),
        });
    };
    let key =
        ed25519_dalek::VerifyingKey::from_bytes(&array).map_err(|_| KeyProblem::NotACurvePoint)?;
    Ok(PublicKey {
        name: name.to_owned(),
        key,
    })
}

/// Splits `name:base64` at the first ':' (as Nix does) and decodes the key bytes.
fn split_key(text: &str) -> Result<(&str, Vec<u8>), KeyProblem> {
    let text = text.trim();
    if text.is_empty() {
        return Err(KeyProblem::Empty);
    }
    let (name, data) = text.split_once(':').ok_or(KeyProblem::NoColon)?;
    if name.is_empty() {
        return Err(KeyProblem::EmptyName);
    }
    // The name is copied into every `Sig:` line and `trusted-public-keys` is split on
    // whitespace, so such a name would corrupt narinfos or never be trusted.
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(KeyProblem::BadName);
    }
    let bytes = BASE64
        .decode(data)
        .map_err(|e| KeyProblem::BadBase64(describe_base64_error(&e)))?;
    Ok((name, bytes))
}

/// Says what is wrong without quoting the offending byte: it is a piece of a secret key.
fn describe_base64_error(e: &base64::DecodeError) -> String {
    use base64::DecodeError::*;
    match e {
        InvalidByte(at, _) | InvalidLastSymbol(at, _) => {
            format!("invalid base64 character at position {} after ':'", at + 1)
        }
        InvalidLength(_) => "the base64 text is cut short".to_owned(),
        InvalidPadding => "the base64 padding ('=') is wrong".to_owned(),
    }
}

/// The text of a key file, or why those bytes cannot be one.
fn key_file_text(bytes: &[u8]) -> Result<&str, KeyProblem> {
    if bytes.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(KeyProblem::TooLarge);
    }
    std::str::from_utf8(bytes).map_err(|_| KeyProblem::NotText)
}

/// Why a key could not be loaded; the message names the file (when there is one) and the fix.
/// It never quotes the key text, so it is safe to log.
#[derive(Debug)]
pub struct KeyError {
    file: Option<PathBuf>,
    kind: KeyKind,
    problem: KeyProblem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Secret,
    Public,
}

impl KeyKind {
    fn as_str(self) -> &'static str {
        match self {
            KeyKind::Secret => "secret",
            KeyKind::Public => "public",
        }
    }
}

/// What exactly is wrong with a key or key file.
#[derive(Debug)]
#[non_exhaustive]
pub enum KeyProblem {
    Missing,
    Unreadable(io::Error),
    TooLarge,
    NotText,
    Empty,
    NoColon,
    EmptyName,
    BadName,
    BadBase64(String),
    WrongLength { expected: usize, found: usize },
    PublicHalfMismatch,
    NotACurvePoint,
}

impl KeyError {
    fn new(file: Option<&Path>, kind: KeyKind, problem: KeyProblem) -> KeyError {
        KeyError {
            file: file.map(Path::to_owned),
            kind,
            problem,
        }
    }

    /// The secret key file `path` could not be read (`error` from opening or reading it).
    pub fn unreadable_secret(path: &Path, error: io::Error) -> KeyError {
        let problem = match error.kind() {
            io::ErrorKind::NotFound => KeyProblem::Missing,
            _ => KeyProblem::Unreadable(error),
        };
        KeyError::new(Some(path), KeyKind::Secret, problem)
    }

    /// The key file, if the key was read from one.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    pub fn problem(&self) -> &KeyProblem {
        &self.problem
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind.as_str();
        match (&self.file, &self.problem) {
            (Some(path), KeyProblem::Missing) => {
                write!(f, "{kind} key file {} does not exist", path.display())?;
                if self.kind == KeyKind::Secret {
                    write!(
                        f,
                        " (create one with `nix key generate-secret --key-name NAME > {}`)",
                        path.display()
                    )?;
                }
                Ok(())
            }
            (Some(path), KeyProblem::Unreadable(e)) => {
                write!(f, "cannot read {kind} key file {}: {e}", path.display())
            }
            (Some(path), problem) => write!(
                f,
                "{kind} key file {} is not a valid Nix {kind} key: {problem}",
                path.display()
            ),
            (None, problem) => write!(f, "not a valid Nix {kind} key: {problem}"),
        }
    }
}

impl std::error::Error for KeyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.problem {
            KeyProblem::Unreadable(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyProblem::Missing => f.write_str("the file does not exist"),
            KeyProblem::Unreadable(e) => write!(f, "the file cannot be read: {e}"),
            KeyProblem::TooLarge => write!(
                f,
                "the file is larger than {MAX_KEY_FILE_LEN} bytes; a key file is one line `name:base64`"
            ),
            KeyProblem::NotText => {
                f.write_str("the file is not text; a key file is one line `name:base64`")
            }
            KeyProblem::Empty => f.write_str("it is empty (expected one line `name:base64`)"),
            KeyProblem::NoColon => f.write_str(
                "there is no ':' between the key name and the key (expected `name:base64`)",
            ),
            KeyProblem::EmptyName => f.write_str("the key name before ':' is empty"),
            KeyProblem::BadName => {
                f.write_str("the key name before ':' contains whitespace or control characters")
            }
            KeyProblem::BadBase64(why) => write!(f, "the key after ':' is not base64: {why}"),
            KeyProblem::WrongLength { expected, found } => {
                write!(f, "the key is {found} bytes long, expected {expected}")?;
                match (expected, found) {
                    (&SECRET_LEN, &PUBLIC_LEN) => f.write_str(
                        "; this looks like a public key, but signing needs the secret key \
                         written by `nix key generate-secret`",
                    ),
                    (&PUBLIC_LEN, &SECRET_LEN) => f.write_str(
                        "; this looks like a secret key, derive the public key with \
                         `nix key convert-secret-to-public`",
                    ),
                    _ => Ok(()),
                }
            }
            KeyProblem::PublicHalfMismatch => f.write_str(
                "its public half (last 32 bytes) does not belong to its secret seed (first 32 \
                 bytes); the file is damaged, generate a new key with `nix key generate-secret`",
            ),
            KeyProblem::NotACurvePoint => f.write_str("the 32 bytes are not an ed25519 public key"),
        }
    }
}
