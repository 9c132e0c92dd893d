//! Events a thread took from epoll in one batch and has not handled yet.
//!
//! Every connection is registered one-shot, so an event in a thread's stash belongs to that
//! thread alone: no other thread will see the connection until it is re-armed. A thread that
//! ends with events left re-arms them, so no connection is forgotten.

use std::cell::RefCell;
use std::sync::{Arc, Weak};

use super::Engine;

struct Stash(Vec<(Weak<Engine>, u64)>);

impl Drop for Stash {
    fn drop(&mut self) {
        for (engine, token) in self.0.drain(..) {
            if let Some(engine) = engine.upgrade() {
                engine.rearm_token(token);
            }
        }
    }
}

thread_local! {
    static STASH: RefCell<Stash> = const { RefCell::new(Stash(Vec::new())) };
}

/// The next stashed event of `engine`, oldest first.
pub fn pop(engine: &Arc<Engine>) -> Option<u64> {
    STASH.with(|stash| {
        let mut stash = stash.borrow_mut();
        let at = stash
            .0
            .iter()
            .position(|(e, _)| std::ptr::eq(e.as_ptr(), Arc::as_ptr(engine)))?;
        Some(stash.0.remove(at).1)
    })
}

pub fn push(engine: &Arc<Engine>, tokens: &[u64]) {
    if tokens.is_empty() {
        return;
    }
    STASH.with(|stash| {
        let mut stash = stash.borrow_mut();
        stash
            .0
            .extend(tokens.iter().map(|&t| (Arc::downgrade(engine), t)));
    })
}
