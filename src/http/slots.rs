//! The upload places (`--max-uploads`): an upload beyond the limit waits its turn instead of
//! being refused.
//!
//! Nix 2.11+ pushes independent paths in parallel and 2.35 starts every NAR upload at once, while
//! Lix never retries a PUT: a 503 would fail its `nix copy`. So a PUT that finds every place taken
//! waits, first come first served, without reading its body (the client's send buffer fills and
//! TCP holds it back: backpressure). The wait is bounded: after `max_wait` the caller answers 503
//! with `Retry-After` (see `Cache::upload`), which only happens when every place has been held for
//! that long, i.e. when uploads are stuck rather than merely many.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A fair counting semaphore with a deadline.
#[derive(Debug)]
pub struct UploadSlots {
    max: usize,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    active: usize,
    /// Tickets of the waiting uploads, oldest first; only the front may take a freed place.
    queue: VecDeque<u64>,
    next_ticket: u64,
}

/// One upload place, given back on drop.
#[derive(Debug)]
pub struct UploadSlot<'a> {
    slots: &'a UploadSlots,
    /// How long the upload waited for it (zero if a place was free).
    pub waited: Duration,
}

impl UploadSlots {
    /// `max` places (at least one).
    pub fn new(max: usize) -> UploadSlots {
        UploadSlots {
            max: max.max(1),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }
    }

    /// Takes a place, waiting up to `max_wait` behind the uploads that came first.
    /// `None`: no place became free in time.
    pub fn acquire(&self, max_wait: Duration) -> Option<UploadSlot<'_>> {
        let start = Instant::now();
        let deadline = start + max_wait;
        let mut state = self.lock();
        if state.queue.is_empty() && state.active < self.max {
            state.active += 1;
            return Some(UploadSlot {
                slots: self,
                waited: Duration::ZERO,
            });
        }
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queue.push_back(ticket);
        loop {
            if state.queue.front() == Some(&ticket) && state.active < self.max {
                state.queue.pop_front();
                state.active += 1;
                // The next in line may find a place too (several freed at once).
                self.changed.notify_all();
                return Some(UploadSlot {
                    slots: self,
                    waited: start.elapsed(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                state.queue.retain(|&t| t != ticket);
                // Our leaving may put a waiter at the front while a place is free.
                self.changed.notify_all();
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Uploads holding a place now.
    #[cfg(test)]
    pub fn active(&self) -> usize {
        self.lock().active
    }

    /// Uploads waiting for a place now.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.lock().queue.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is two counters and a queue, consistent after every statement: a panic
        // elsewhere while holding the lock leaves nothing half-done.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for UploadSlot<'_> {
    fn drop(&mut self) {
        self.slots.lock().active -= 1;
        self.slots.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn waits_for_a_place_instead_of_failing() {
        let slots = Arc::new(UploadSlots::new(2));
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..12 {
                s.spawn(|| {
                    let slot = slots.acquire(Duration::from_secs(60)).expect("a place");
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                    drop(slot);
                });
            }
        });
        assert_eq!(
            most.load(Ordering::SeqCst),
            2,
            "never more than max at once"
        );
        assert_eq!((slots.active(), slots.waiting()), (0, 0));
    }

    #[test]
    fn gives_up_after_the_deadline_and_leaves_the_queue() {
        let slots = UploadSlots::new(1);
        let held = slots.acquire(Duration::ZERO).unwrap();
        let start = Instant::now();
        assert!(slots.acquire(Duration::from_millis(100)).is_none());
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert_eq!(slots.waiting(), 0, "a waiter that gave up is gone");
        drop(held);
        assert!(
            slots.acquire(Duration::ZERO).is_some(),
            "the place is free again"
        );
    }

    #[test]
    fn first_come_first_served() {
        let slots = Arc::new(UploadSlots::new(1));
        let held = slots.acquire(Duration::ZERO).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..4 {
            let (mine, order) = (slots.clone(), order.clone());
            waiters.push(std::thread::spawn(move || {
                let _slot = mine.acquire(Duration::from_secs(60)).unwrap();
                order.lock().unwrap().push(i);
            }));
            // Each waiter is queued before the next starts (polled, with a deadline).
            let end = Instant::now() + Duration::from_secs(30);
            while slots.waiting() < i + 1 {
                assert!(Instant::now() < end, "waiter {i} never queued");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        drop(held);
        for w in waiters {
            w.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
    }
}
