//! How many of the threads that call `recv` wait for events at the same time.
//!
//! A pool has more threads than cores so that a slow handler (an upload waiting for its body or
//! for a place, a file read from a cold disk) does not stop the service. But with all of them
//! waiting in the one epoll set, they take turns sleeping and waking: on 2 cores at c=1000,
//! 4 threads slept 0.35 times per request and used 18–20 µs of CPU per narinfo hit, 2 threads
//! 0.03 times and 15 µs. So only as many threads as cores poll; the others park here, and the
//! sweeper lets one more poll for every thread that has been away from `recv` longer than
//! [`STUCK_AFTER`] (in a slow handler, busy after answering, serving an upgraded connection,
//! or gone after a `try_recv`). Such a thread costs the other connections at most that long
//! plus one sweep, and only when every polling thread is away at once.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

/// A thread away from `recv` this long counts as stuck: another thread may poll in its place.
pub const STUCK_AFTER: Duration = Duration::from_millis(50);

/// One thread's whereabouts: 0 while it is in `recv`, else when it left (the sweeper's coarse
/// clock, in ms).
#[derive(Default)]
pub struct Slot {
    away_since: AtomicU64,
}

impl Slot {
    /// The thread is back in `recv`.
    pub fn enter(&self) {
        self.away_since.store(0, Ordering::Relaxed);
    }
}

pub struct Pollers {
    /// Threads that poll when no thread is stuck away (the number of cores).
    base: usize,
    /// `base` plus the threads stuck away at the last sweep.
    target: AtomicUsize,
    /// The sweeper's clock (engine ms), for [`Slot`]s: reading it costs no system call.
    now_ms: AtomicU64,
    /// Every registered thread's slot, for the sweeper.
    slots: Mutex<Vec<Weak<Slot>>>,
    /// Threads that have called `recv` on this engine and are still alive.
    threads: AtomicUsize,
    parked: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Pollers {
    pub fn new(base: usize) -> Arc<Pollers> {
        let base = base.max(1);
        Arc::new(Pollers {
            base,
            target: AtomicUsize::new(base),
            now_ms: AtomicU64::new(2),
            slots: Mutex::new(Vec::new()),
            threads: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        })
    }

    /// Counts the calling thread once (it is forgotten when the thread exits) and returns its
    /// slot.
    pub fn register(self: &Arc<Self>) -> Arc<Slot> {
        thread_local! {
            static SEEN: RefCell<Registrations> = const { RefCell::new(Registrations(Vec::new())) };
        }
        SEEN.with(|seen| {
            let mut seen = seen.borrow_mut();
            if let Some((_, slot)) = seen
                .0
                .iter()
                .find(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(self)))
            {
                return slot.clone();
            }
            seen.0.retain(|(w, _)| w.strong_count() > 0);
            let slot = Arc::new(Slot::default());
            self.slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Arc::downgrade(&slot));
            seen.0.push((Arc::downgrade(self), slot.clone()));
            self.threads.fetch_add(1, Ordering::SeqCst);
            slot
        })
    }

    /// The thread of `slot` leaves `recv` (with a request, or for good).
    pub fn leave(&self, slot: &Slot) {
        slot.away_since
            .store(self.now_ms.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// More threads are about than should poll: the caller should [`Pollers::park`].
    pub fn crowded(&self) -> bool {
        let active = self
            .threads
            .load(Ordering::Relaxed)
            .saturating_sub(self.parked.load(Ordering::Relaxed));
        active > self.target.load(Ordering::Relaxed)
    }

    /// Parks the calling thread while enough others poll, until `deadline` or `stop`. False
    /// if the deadline passed.
    pub fn park(&self, deadline: Option<Instant>, stop: &AtomicBool) -> bool {
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        // Decided under the lock, so that two threads never both park the last pollers away.
        if !self.crowded() {
            return true;
        }
        self.parked.fetch_add(1, Ordering::SeqCst);
        let woken = loop {
            let others = self
                .threads
                .load(Ordering::SeqCst)
                .saturating_sub(self.parked.load(Ordering::SeqCst));
            if others < self.target.load(Ordering::SeqCst) || stop.load(Ordering::SeqCst) {
                break true;
            }
            guard = match deadline {
                None => self.wake.wait(guard).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break false;
                    }
                    self.wake
                        .wait_timeout(guard, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        };
        self.parked.fetch_sub(1, Ordering::SeqCst);
        woken
    }

    /// From the sweeper, at `now_ms` (engine ms): lets one more thread poll for each thread
    /// away from `recv` longer than [`STUCK_AFTER`].
    pub fn sweep(&self, now_ms: u64) {
        self.now_ms.store(now_ms, Ordering::Relaxed);
        let since = now_ms.saturating_sub(STUCK_AFTER.as_millis() as u64);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|s| s.strong_count() > 0);
        let stuck = slots
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|s| {
                let away = s.away_since.load(Ordering::Relaxed);
                away != 0 && away <= since
            })
            .count();
        drop(slots);
        self.set_stuck(stuck);
    }

    fn set_stuck(&self, stuck: usize) {
        let target = self.base.saturating_add(stuck);
        if self.target.swap(target, Ordering::SeqCst) < target {
            self.wake_all();
        }
    }

    /// Wakes every parked thread to look again (a stop, a thread gone, more pollers wanted).
    pub fn wake_all(&self) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_all();
    }
}

/// The engines a thread has called `recv` on, with its slot in each; its exit lowers their
/// thread counts (and its slots die with it).
struct Registrations(Vec<(Weak<Pollers>, Arc<Slot>)>);

impl Drop for Registrations {
    fn drop(&mut self) {
        for pollers in self.0.iter().filter_map(|(w, _)| w.upgrade()) {
            pollers.threads.fetch_sub(1, Ordering::SeqCst);
            pollers.wake_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_beyond_the_target_park_until_more_pollers_are_wanted() {
        let pollers = Pollers::new(1);
        let stop = Arc::new(AtomicBool::new(false));
        pollers.register();
        assert!(!pollers.crowded(), "one thread, one poller");
        let parked = {
            let (pollers, stop) = (pollers.clone(), stop.clone());
            std::thread::spawn(move || {
                pollers.register();
                assert!(pollers.crowded());
                pollers.park(None, &stop)
            })
        };
        let started = Instant::now();
        while pollers.parked.load(Ordering::SeqCst) == 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "never parked");
            std::thread::yield_now();
        }
        // This thread left `recv` at 1000 ms; at 1100 it has been away long enough.
        let mine = pollers.register();
        pollers.sweep(1000);
        pollers.leave(&mine);
        pollers.sweep(1100);
        assert!(parked.join().unwrap(), "woken, not timed out");
        assert_eq!(pollers.parked.load(Ordering::SeqCst), 0);
        // The spawned thread exited: only this one is counted.
        assert_eq!(pollers.threads.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_parked_thread_returns_at_its_deadline() {
        let pollers = Pollers::new(1);
        let stop = AtomicBool::new(false);
        pollers.threads.store(2, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_millis(20);
        assert!(!pollers.park(Some(deadline), &stop));
        assert!(Instant::now() >= deadline);
    }

    #[test]
    fn stop_releases_parked_threads() {
        let pollers = Pollers::new(1);
        let stop = Arc::new(AtomicBool::new(false));
        pollers.threads.store(2, Ordering::SeqCst);
        let parked = {
            let (pollers, stop) = (pollers.clone(), stop.clone());
            std::thread::spawn(move || pollers.park(None, &stop))
        };
        while pollers.parked.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        stop.store(true, Ordering::SeqCst);
        pollers.wake_all();
        assert!(parked.join().unwrap());
    }
}
