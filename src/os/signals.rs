//! The stop and reload signals, taken synchronously by one thread instead of by handlers.

/// SIGINT, SIGTERM and SIGHUP, blocked in the calling thread (and every thread it starts
/// afterwards, which inherits the mask) so that only [`StopSignals::wait`] receives them.
pub struct StopSignals {
    set: libc::sigset_t,
}

/// SIGHUP's number, for telling a reload from a stop.
pub const SIGHUP: i32 = libc::SIGHUP;

impl StopSignals {
    /// Blocks the signals; call before any thread starts.
    pub fn block() -> StopSignals {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset before use;
        // pthread_sigmask only changes this thread's mask.
        let set = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGHUP);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            set
        };
        StopSignals { set }
    }

    /// Waits for SIGINT, SIGTERM (stop) or SIGHUP (reload) and says which.
    pub fn wait(&self) -> i32 {
        let mut signal = 0;
        // SAFETY: `set` was built by `block`; sigwait writes one int.
        unsafe { libc::sigwait(&self.set, &mut signal) };
        signal
    }
}
