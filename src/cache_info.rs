//! `nix-cache-info`: the first thing a client reads, telling it the store directory and priority.

use std::io;
use std::path::Path;

/// What is served at `/nix-cache-info`, and the store directory narinfo paths must live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    pub text: String,
    pub store_dir: String,
}

const DEFAULT_STORE_DIR: &str = "/nix/store";

impl CacheInfo {
    /// Reads `<root>/nix-cache-info`, or makes one up when it is absent; `priority` overrides
    /// any `Priority:` in the file.
    pub fn load(root: &Path, priority: Option<u32>) -> io::Result<CacheInfo> {
        match std::fs::read_to_string(root.join("nix-cache-info")) {
            Ok(text) => Ok(CacheInfo::from_text(&text, priority)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(CacheInfo::synthesized(priority)),
            Err(e) => Err(e),
        }
    }

    /// The answer for a directory without the file: a normal store that wants mass queries.
    pub fn synthesized(priority: Option<u32>) -> CacheInfo {
        let text = format!(
            "StoreDir: {DEFAULT_STORE_DIR}\nWantMassQuery: 1\nPriority: {}\n",
            priority.unwrap_or(40)
        );
        CacheInfo {
            text,
            store_dir: DEFAULT_STORE_DIR.to_string(),
        }
    }

    /// Keeps the file's lines, replacing `Priority:` when overridden and making sure the text
    /// ends with a newline (Nix needs it on the last line).
    pub fn from_text(text: &str, priority: Option<u32>) -> CacheInfo {
        let mut out = String::with_capacity(text.len() + 16);
        let mut store_dir = DEFAULT_STORE_DIR.to_string();
        for line in text.lines() {
            if let Some(dir) = line.strip_prefix("StoreDir: ") {
                store_dir = dir.trim_end().to_string();
            }
            if priority.is_some() && line.starts_with("Priority:") {
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        if let Some(p) = priority {
            out.push_str(&format!("Priority: {p}\n"));
        }
        CacheInfo {
            text: out,
            store_dir,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_override_replaces_the_line() {
        let info = CacheInfo::from_text("StoreDir: /nix/store\nPriority: 30\n", Some(10));
        assert_eq!(info.text, "StoreDir: /nix/store\nPriority: 10\n");
        let kept = CacheInfo::from_text("StoreDir: /nix/store\nPriority: 30", None);
        assert_eq!(kept.text, "StoreDir: /nix/store\nPriority: 30\n");
    }

    #[test]
    fn store_dir_is_read_and_defaulted() {
        assert_eq!(
            CacheInfo::from_text("StoreDir: /gnu/store\n", None).store_dir,
            "/gnu/store"
        );
        let made = CacheInfo::synthesized(None);
        assert_eq!(made.store_dir, "/nix/store");
        assert!(made.text.contains("WantMassQuery: 1\n") && made.text.contains("Priority: 40\n"));
    }
}
