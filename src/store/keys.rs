//! Reading the secret key files named by `--sign-key`; `nix::signing` parses what is read.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::nix::signing::{KeyError, MAX_KEY_FILE_LEN, SigningKey};

/// Reads and parses the secret key file `path`; errors name the file and say what to fix.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let mut bytes = Vec::new();
    // One byte past the limit, so that a larger file is told apart from one exactly at it.
    File::open(path)
        .and_then(|file| file.take(MAX_KEY_FILE_LEN + 1).read_to_end(&mut bytes))
        .map_err(|e| KeyError::unreadable_secret(path, e))?;
    SigningKey::from_file_bytes(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::signing::KeyProblem;

    const PUBLIC: &str = include_str!("../../tests/fixtures/keys/test-key.pub");

    #[test]
    fn reads_the_key_nix_wrote() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/keys/test-key.sec"
        );
        let key = read_signing_key(Path::new(path)).unwrap();
        assert_eq!(key.public_key(), PUBLIC.trim_end());
    }

    #[test]
    fn key_file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("store-keys-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();

        let missing = dir.join("missing.sec");
        let e = read_signing_key(&missing).unwrap_err();
        assert!(matches!(e.problem(), KeyProblem::Missing));
        assert_eq!(e.file(), Some(missing.as_path()));
        let message = e.to_string();
        assert!(message.contains(&*missing.to_string_lossy()), "{message}");
        assert!(message.contains("does not exist"), "{message}");

        // A directory opens but cannot be read.
        let e = read_signing_key(&dir).unwrap_err();
        assert!(matches!(e.problem(), KeyProblem::Unreadable(_)), "{e}");
        assert!(
            e.to_string().starts_with("cannot read secret key file"),
            "{e}"
        );

        let public = dir.join("public.sec");
        std::fs::write(&public, PUBLIC).unwrap();
        let message = read_signing_key(&public).unwrap_err().to_string();
        assert!(message.contains(&*public.to_string_lossy()), "{message}");
        assert!(message.contains("32 bytes long, expected 64"), "{message}");

        let binary = dir.join("binary.sec");
        std::fs::write(&binary, [0xff, 0xfe, b':']).unwrap();
        let e = read_signing_key(&binary).unwrap_err();
        assert!(matches!(e.problem(), KeyProblem::NotText), "{e}");

        // Only the limit and one byte more are read.
        let huge = dir.join("huge.sec");
        std::fs::write(&huge, "a".repeat(10_000)).unwrap();
        let e = read_signing_key(&huge).unwrap_err();
        assert!(matches!(e.problem(), KeyProblem::TooLarge), "{e}");

        std::fs::remove_dir_all(&dir).unwrap();
    }
}
