//! `nix-cache-info`: the first thing a client reads, telling it the store directory and priority.

/// What is served at `/nix-cache-info`, and the store directory narinfo paths must live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    pub text: String,
    pub store_dir: String,
}

const DEFAULT_STORE_DIR: &str = "/nix/store";
/// cache.nixos.org's priority: an equal rank unless the operator says otherwise (`--priority`).
pub const DEFAULT_PRIORITY: u32 = 40;

impl CacheInfo {
    /// The answer for a directory without the file: a normal store that wants mass queries.
    pub fn synthesized(priority: Option<u32>) -> CacheInfo {
        let text = format!(
            "StoreDir: {DEFAULT_STORE_DIR}\nWantMassQuery: 1\nPriority: {}\n",
            priority.unwrap_or(DEFAULT_PRIORITY)
        );
        CacheInfo {
            text,
            store_dir: DEFAULT_STORE_DIR.to_string(),
        }
    }

    /// Keeps the file's lines, replacing `Priority:` when overridden, adding the defaults
    /// (`WantMassQuery: 1`, `Priority: 40`) where the file has no such line (a cache written by
    /// `nix copy --to file://` has neither, and Nix would rank it at priority 0), and making
    /// sure the text ends with a newline (Nix needs it on the last line).
    pub fn from_text(text: &str, priority: Option<u32>) -> CacheInfo {
        let mut out = String::with_capacity(text.len() + 32);
        let mut store_dir = DEFAULT_STORE_DIR.to_string();
        let (mut has_priority, mut has_mass_query) = (false, false);
        for line in text.lines() {
            if let Some(dir) = line.strip_prefix("StoreDir: ") {
                store_dir = dir.trim_end().to_string();
            }
            has_mass_query |= line.starts_with("WantMassQuery:");
            if line.starts_with("Priority:") {
                if priority.is_some() {
                    continue;
                }
                has_priority = true;
            }
            out.push_str(line);
            out.push('\n');
        }
        if !has_mass_query {
            out.push_str("WantMassQuery: 1\n");
        }
        if !has_priority {
            out.push_str(&format!(
                "Priority: {}\n",
                priority.unwrap_or(DEFAULT_PRIORITY)
            ));
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
        let info = CacheInfo::from_text(
            "StoreDir: /nix/store\nPriority: 30\nWantMassQuery: 0\n",
            Some(10),
        );
        assert_eq!(
            info.text,
            "StoreDir: /nix/store\nWantMassQuery: 0\nPriority: 10\n"
        );
        let kept = CacheInfo::from_text("StoreDir: /nix/store\nPriority: 30", None);
        assert_eq!(
            kept.text,
            "StoreDir: /nix/store\nPriority: 30\nWantMassQuery: 1\n"
        );
    }

    #[test]
    fn missing_lines_get_the_documented_defaults() {
        // What `nix copy --to file://` writes.
        let info = CacheInfo::from_text("StoreDir: /nix/store\n", None);
        assert_eq!(
            info.text,
            "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"
        );
        let info = CacheInfo::from_text("StoreDir: /nix/store\n", Some(5));
        assert!(
            info.text.ends_with("WantMassQuery: 1\nPriority: 5\n"),
            "{}",
            info.text
        );
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
