//! Listening-socket calls std does not offer.

use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd;

/// Calls listen(2) again on a bound listener to change its backlog.
pub(crate) fn set_backlog(listener: &TcpListener, backlog: i32) -> io::Result<()> {
    // SAFETY: listen(2) again on our own listening socket only changes its backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), backlog) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// shutdown(2) for reading: the listener refuses new connections now instead of leaving them in
/// the backlog.
pub(crate) fn shut_down_reading(listener: &TcpListener) {
    // SAFETY: plain shutdown(2) on a descriptor we own.
    unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RD) };
}
