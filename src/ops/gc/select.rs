//! Choosing what goes: oldest first, never a path something kept still references (removals
//! cascade to referrers, in dependency order), until the cache fits.

use super::*;

/// Which candidates go, with the size of what stays kept up to date.
pub(super) struct Selection<'a> {
    /// Least recently used first.
    candidates: &'a [Candidate],
    references: Vec<Vec<usize>>,
    referrers: Vec<Vec<usize>>,
    reasons: Vec<Option<Reason>>,
    /// Kept paths pointing to each NAR (plus one for NARs a broken narinfo names).
    nar_users: HashMap<&'a str, usize>,
    /// Bytes of the kept paths' narinfos, listings and NARs.
    pub(super) size: u64,
    /// Removed paths whose referrers are still to be removed.
    pending: Vec<usize>,
}

impl<'a> Selection<'a> {
    pub(super) fn new(
        candidates: &'a [Candidate],
        protected: &'a HashSet<String>,
    ) -> Selection<'a> {
        let index: HashMap<&str, usize> = candidates
            .iter()
            .enumerate()
            .map(|(i, c)| (c.entry.hash.as_str(), i))
            .collect();
        let mut references = vec![Vec::new(); candidates.len()];
        let mut referrers = vec![Vec::new(); candidates.len()];
        for (i, c) in candidates.iter().enumerate() {
            let mut refs: Vec<usize> = c
                .entry
                .reference_hashes()
                .filter_map(|h| index.get(h).copied())
                .filter(|&j| j != i)
                .collect();
            refs.sort_unstable();
            refs.dedup();
            for &j in &refs {
                referrers[j].push(i);
            }
            references[i] = refs;
        }
        let mut nar_users: HashMap<&str, usize> =
            protected.iter().map(|u| (u.as_str(), 1)).collect();
        let mut size = 0;
        for c in candidates {
            size += c.own_bytes();
            if let (Some(rel), Some(nar)) = (c.nar_rel(), &c.nar) {
                let users = nar_users.entry(rel).or_insert(0);
                size += if *users == 0 { nar.bytes } else { 0 };
                *users += 1;
            }
        }
        Selection {
            candidates,
            references,
            referrers,
            reasons: vec![None; candidates.len()],
            nar_users,
            size,
            pending: Vec::new(),
        }
    }

    pub(super) fn remove_older_than(&mut self, age: Duration, now: SystemTime) {
        for i in 0..self.candidates.len() {
            let unused = now
                .duration_since(self.candidates[i].last_used)
                .unwrap_or_default();
            if unused > age {
                self.mark(i, Reason::Old);
            }
        }
        self.remove_referrers();
    }

    /// Removes least recently used paths, each with its referrers, until the rest fits.
    pub(super) fn shrink_to(&mut self, max: u64) {
        for i in 0..self.candidates.len() {
            if self.size <= max {
                break;
            }
            self.mark(i, Reason::LeastRecentlyUsed);
            self.remove_referrers();
        }
    }

    /// Marks one path removed (if it is not already) and takes its bytes off the size.
    pub(super) fn mark(&mut self, i: usize, reason: Reason) {
        if self.reasons[i].is_some() {
            return;
        }
        self.reasons[i] = Some(reason);
        let c = &self.candidates[i];
        self.size = self.size.saturating_sub(c.own_bytes());
        if let (Some(rel), Some(nar)) = (c.nar_rel(), &c.nar)
            && let Some(users) = self.nar_users.get_mut(rel)
        {
            *users -= 1;
            if *users == 0 {
                self.size = self.size.saturating_sub(nar.bytes);
            }
        }
        self.pending.push(i);
    }

    /// Removes every kept path that references a removed one, until none is left.
    pub(super) fn remove_referrers(&mut self) {
        while let Some(i) = self.pending.pop() {
            for k in 0..self.referrers[i].len() {
                let of = self.candidates[i].entry.hash.clone();
                self.mark(self.referrers[i][k], Reason::Referrer { of });
            }
        }
    }

    /// The removed paths, every one before the paths it references (Kahn's algorithm).
    pub(super) fn deletion_order(&self) -> Vec<usize> {
        let removed = |i: &usize| self.reasons[*i].is_some();
        let mut waiting: Vec<usize> = (0..self.candidates.len())
            .map(|i| self.referrers[i].iter().filter(|r| removed(r)).count())
            .collect();
        let mut ready: VecDeque<usize> = (0..self.candidates.len())
            .filter(|i| removed(i) && waiting[*i] == 0)
            .collect();
        let mut order = Vec::new();
        while let Some(i) = ready.pop_front() {
            order.push(i);
            for &j in self.references[i].iter().filter(|j| removed(j)) {
                waiting[j] -= 1;
                if waiting[j] == 0 {
                    ready.push_back(j);
                }
            }
        }
        // Reference cycles cannot come from Nix; if a hand-made cache has one, still remove it.
        let placed: HashSet<usize> = order.iter().copied().collect();
        order.extend((0..self.candidates.len()).filter(|i| removed(i) && !placed.contains(i)));
        order
    }

    /// The plan's paths; a NAR is listed once, and only if no kept or broken narinfo uses it.
    pub(super) fn planned_paths(&self, protected: &HashSet<String>) -> Vec<PlannedPath> {
        let mut still_used: HashSet<&str> = protected.iter().map(String::as_str).collect();
        for (c, reason) in self.candidates.iter().zip(&self.reasons) {
            if reason.is_none() {
                still_used.extend(c.nar_rel());
            }
        }
        let mut paths = Vec::new();
        for i in self.deletion_order() {
            let (c, Some(reason)) = (&self.candidates[i], &self.reasons[i]) else {
                continue;
            };
            let nar = c
                .nar_rel()
                .filter(|rel| still_used.insert(rel))
                .and(c.nar.clone());
            let bytes = c.own_bytes() + nar.as_ref().map_or(0, |n| n.bytes);
            paths.push(PlannedPath {
                hash: c.entry.hash.clone(),
                store_path: c.entry.store_path.clone(),
                last_used: c.last_used,
                reason: reason.clone(),
                bytes,
                narinfo: c.narinfo.clone(),
                listing: c.listing.clone(),
                nar,
            });
        }
        paths
    }
}

/// Files in `nar/` no narinfo points to, old enough not to be an upload in progress.
pub(super) fn stray_nars(
    root: &Path,
    pointed: &HashSet<&str>,
    now: SystemTime,
) -> io::Result<Vec<PlannedFile>> {
    let dir = root.join("nar");
    let entries = match list_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut strays = Vec::new();
    for (name, kind) in entries {
        let lossy = name.to_string_lossy();
        let referenced = pointed.contains(format!("nar/{lossy}").as_str());
        if kind.is_dir() || referenced || temporary(&lossy).is_some() {
            continue;
        }
        let Some((file, meta)) = stat(&dir.join(&name))? else {
            continue; // Gone, or a link: links are never served, and never deleted here.
        };
        let age = now.duration_since(modified(&meta)).unwrap_or_default();
        if age >= STRAY_GRACE {
            strays.push(file);
        }
    }
    Ok(strays)
}
