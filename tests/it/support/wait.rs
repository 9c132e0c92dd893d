//! Waiting for a condition with a deadline, instead of sleeping for a guessed time.

use std::time::{Duration, Instant};

/// Checks `condition` every 10 ms until it holds (true) or `timeout` has passed (false; the
/// caller's assertion then says what did not happen).
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
