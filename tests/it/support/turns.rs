//! Taking turns. All the integration tests share one process and run side by side, but a few
//! open thousands of connections, load both cores and measure latency or memory while they do:
//! those run alone ([`one_at_a_time`]). Every server a test starts holds a shared turn
//! ([`shared_turn`], taken by `Server::start`) for as long as it runs, so an exclusive turn
//! waits until no other test has a server and new servers wait until it is over.
//!
//! A test that already holds a shared turn gets more without waiting (it may start a second
//! server while a lone test waits for it to finish), and a lone test's own servers never wait
//! for it. Turns are counted per thread, and the test harness runs each test on a thread of
//! its own, so "this thread" is "this test".

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::ThreadId;

#[derive(Default)]
struct Turns {
    /// The test running alone, if one is.
    alone: Option<ThreadId>,
    /// Tests waiting to run alone: new tests wait behind them.
    waiting: usize,
    /// The tests holding shared turns, and how many each holds.
    shared: HashMap<ThreadId, usize>,
}

static TURNS: Mutex<Option<Turns>> = Mutex::new(None);
static CHANGED: Condvar = Condvar::new();

fn turns() -> MutexGuard<'static, Option<Turns>> {
    // A test that panicked while holding the lock changed nothing half-way: go on.
    TURNS.lock().unwrap_or_else(|e| e.into_inner())
}

fn wait(guard: MutexGuard<'static, Option<Turns>>) -> MutexGuard<'static, Option<Turns>> {
    CHANGED.wait(guard).unwrap_or_else(|e| e.into_inner())
}

/// A turn, given back when dropped (also when its test panics).
#[must_use = "the turn ends when this is dropped"]
pub struct Turn {
    kind: Kind,
    thread: ThreadId,
}

enum Kind {
    Alone,
    Shared,
    /// A server started by the test that runs alone: nothing to give back.
    Within,
}

/// Waits until no other test holds a server, then keeps every other test from starting one
/// until the returned turn is dropped. For tests that open thousands of connections or load the
/// cores.
pub fn one_at_a_time() -> Turn {
    let me = std::thread::current().id();
    let mut guard = turns();
    guard.get_or_insert_default().waiting += 1;
    loop {
        let t = guard.get_or_insert_default();
        let others_shared = t.shared.keys().any(|&id| id != me);
        if t.alone.is_none() && !others_shared {
            t.waiting -= 1;
            t.alone = Some(me);
            return Turn {
                kind: Kind::Alone,
                thread: me,
            };
        }
        guard = wait(guard);
    }
}

/// A turn to run a server beside other tests: waits while a test runs alone, or wants to and
/// this test holds no turn yet.
pub fn shared_turn() -> Turn {
    let me = std::thread::current().id();
    let mut guard = turns();
    loop {
        let t = guard.get_or_insert_default();
        if t.alone == Some(me) {
            return Turn {
                kind: Kind::Within,
                thread: me,
            };
        }
        if t.alone.is_none() && (t.waiting == 0 || t.shared.contains_key(&me)) {
            *t.shared.entry(me).or_default() += 1;
            return Turn {
                kind: Kind::Shared,
                thread: me,
            };
        }
        guard = wait(guard);
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut guard = turns();
        let t = guard.get_or_insert_default();
        match self.kind {
            Kind::Alone => t.alone = None,
            Kind::Shared => {
                if let Some(n) = t.shared.get_mut(&self.thread) {
                    *n -= 1;
                    if *n == 0 {
                        t.shared.remove(&self.thread);
                    }
                }
            }
            Kind::Within => return,
        }
        CHANGED.notify_all();
    }
}
