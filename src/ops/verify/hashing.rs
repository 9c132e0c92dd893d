//! Hashing NARs in parallel, with progress reported on the calling thread.

use std::io::{self, Read};
use std::path::Path;
use std::sync::mpsc;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::{HashJob, Progress};
use crate::store::files::open_untouched;

/// A hashed NAR: its digest and length, or `None` if it vanished meanwhile.
pub(super) type Hashed = io::Result<Option<([u8; 32], u64)>>;

/// What the hashing threads tell the calling thread, which owns `progress`.
enum Tick {
    Bytes(u64),
    Done,
}

/// Report progress at least this often while a large NAR is being read.
const TICK_BYTES: u64 = 16 << 20;
const BUFFER: usize = 1 << 20;

pub(super) fn hash_all(
    jobs: Vec<HashJob>,
    progress: &mut dyn FnMut(Progress),
) -> Vec<(HashJob, Hashed)> {
    if jobs.is_empty() {
        return Vec::new();
    }
    let mut state = Progress {
        nars_total: jobs.len(),
        bytes_total: jobs.iter().map(|j| j.len).sum(),
        ..Progress::default()
    };
    progress(state);
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            jobs.into_par_iter()
                .map(|job| {
                    let tick = |n| {
                        let _ = tx.send(Tick::Bytes(n));
                    };
                    let result = sha256_file(&job.nar, &tick);
                    let _ = tx.send(Tick::Done);
                    (job, result)
                })
                .collect::<Vec<_>>()
        });
        for tick in rx {
            match tick {
                Tick::Bytes(n) => state.bytes_done += n,
                Tick::Done => state.nars_done += 1,
            }
            progress(state);
        }
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Streams a file through sha256, calling `tick` with bytes read every [`TICK_BYTES`].
fn sha256_file(path: &Path, tick: &dyn Fn(u64)) -> Hashed {
    let Some((mut file, _)) = open_untouched(path)? else {
        return Ok(None);
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUFFER];
    let (mut total, mut unreported) = (0u64, 0u64);
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
        unreported += n as u64;
        if unreported >= TICK_BYTES {
            tick(std::mem::take(&mut unreported));
        }
    }
    tick(unreported);
    Ok(Some((hasher.finalize().into(), total)))
}
