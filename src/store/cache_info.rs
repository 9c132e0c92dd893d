//! Reading `nix-cache-info` from the cache directory (its format is [`crate::nix::cache_info`]).

use std::io::{self, Read};
use std::path::Path;

use crate::nix::cache_info::CacheInfo;
use crate::store::files;

/// Reads `<root>/nix-cache-info`, or makes one up when it is absent; `priority` overrides any
/// `Priority:` in the file. Like every file the server serves, it is opened without following a
/// symbolic link (one once served `/etc/hostname`): a link counts as absent.
pub fn load(root: &Path, priority: Option<u32>) -> io::Result<CacheInfo> {
    let path = root.join("nix-cache-info");
    let Some((mut file, _)) = files::open_regular(&path)? else {
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            log::warn!(
                "{}: a symbolic link, not followed; serving the defaults instead \
                 (replace it with a regular file)",
                path.display()
            );
        }
        return Ok(CacheInfo::synthesized(priority));
    };
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(CacheInfo::from_text(&text, priority))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_linked_nix_cache_info_is_not_followed() {
        let dir = std::env::temp_dir().join(format!("nbc-info-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("outside"), "StoreDir: /secret\nPriority: 1\n").unwrap();
        std::os::unix::fs::symlink(dir.join("outside"), dir.join("nix-cache-info")).unwrap();
        let info = load(&dir, None).unwrap();
        assert_eq!(info, CacheInfo::synthesized(None));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
