//! Deleting what the plan chose, each file only if it is still the version planned.

use super::*;

/// How one deletion went.
pub(super) enum Removal {
    Removed(u64),
    Vanished,
    Changed,
}

impl Outcome {
    pub(super) fn count(&mut self, removal: Removal, counter: fn(&mut Outcome) -> &mut usize) {
        match removal {
            Removal::Removed(bytes) => {
                *counter(self) += 1;
                self.bytes += bytes;
            }
            Removal::Vanished => self.vanished += 1,
            Removal::Changed => self.kept += 1,
        }
    }
}

/// Deletes a listing or NAR of a removed path, unless its narinfo was pushed again meanwhile
/// (Nix skips uploading a NAR the cache already has, so the new narinfo would need it).
pub(super) fn remove_unless_pushed(
    path: &PlannedPath,
    file: Option<&PlannedFile>,
    outcome: &mut Outcome,
    counter: fn(&mut Outcome) -> &mut usize,
) -> io::Result<()> {
    let Some(file) = file else {
        return Ok(());
    };
    let pushed_again = files::version(&path.narinfo.path)
        .map_err(|e| in_file(&path.narinfo.path, e))?
        .is_some();
    let removal = if pushed_again {
        Removal::Changed
    } else {
        remove(file, true)?
    };
    outcome.count(removal, counter);
    Ok(())
}

/// Deletes one file; with `check`, only if it is still the version planned.
pub(super) fn remove(file: &PlannedFile, check: bool) -> io::Result<Removal> {
    if check {
        match files::version(&file.path).map_err(|e| in_file(&file.path, e))? {
            None => return Ok(Removal::Vanished),
            Some(v) if v != file.version => return Ok(Removal::Changed),
            Some(_) => {}
        }
    }
    match std::fs::remove_file(&file.path) {
        Ok(()) => {
            log::debug!("removed {}", file.path.display());
            Ok(Removal::Removed(file.bytes))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Removal::Vanished),
        Err(e) => Err(in_file(&file.path, e)),
    }
}
