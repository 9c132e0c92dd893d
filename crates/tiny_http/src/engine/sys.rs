//! The Linux system calls the engine needs and std does not offer: epoll, eventfd, poll,
//! sendfile and non-blocking send/recv. Every `unsafe` block of the crate is in this file, each
//! behind a small safe function.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Turns a `-1` return into the thread's `errno`.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// An epoll instance.
pub struct Epoll(OwnedFd);

/// The listener's registration: one event when a connection waits to be accepted; after it
/// fires, only [`Epoll::rearm_listener`] makes it fire again, so one thread at a time accepts.
const LISTENER_EVENTS: u32 = (libc::EPOLLONESHOT | libc::EPOLLIN) as u32;

/// The most events one [`Epoll::wait`] returns.
pub const MAX_EVENTS: usize = 16;

/// A connection's registration: input, room for output, and the peer's close, reported once
/// per change (edge-triggered). No `epoll_ctl` is needed between requests; [`Conn::take`]
/// makes sure one thread at a time handles a connection.
///
/// [`Conn::take`]: super::conn::Conn::take
const CONNECTION_EVENTS: u32 =
    (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new descriptor
        // that nothing else owns.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: see above: `fd` is ours alone.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: `event` is a valid epoll_event for the duration of the call; the kernel copies
        // it. A bad `fd` only yields an error.
        check(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut event) }).map(|_| ())
    }

    /// Registers the listener (see [`LISTENER_EVENTS`]).
    pub fn add_listener(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, LISTENER_EVENTS, token)
    }

    pub fn rearm_listener(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, LISTENER_EVENTS, token)
    }

    /// Registers a connection (see [`CONNECTION_EVENTS`]).
    pub fn add_connection(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, CONNECTION_EVENTS, token)
    }

    /// Has epoll report a connection again if it is readable or writable now: modifying a
    /// registration re-checks the socket and queues an event for what is ready.
    pub fn retrigger(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, CONNECTION_EVENTS, token)
    }

    /// Registers `fd` level-triggered without one-shot (the wake-up eventfd).
    pub fn add_level(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, token)
    }

    /// Registers `fd` edge-triggered for input: each signal of an eventfd wakes one waiter,
    /// and nobody needs to read the counter back.
    pub fn add_edge(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(
            libc::EPOLL_CTL_ADD,
            fd,
            (libc::EPOLLIN | libc::EPOLLET) as u32,
            token,
        )
    }

    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits up to `timeout` (forever with `None`) for events; fills up to `out.len()` of
    /// them (at most [`MAX_EVENTS`]) and returns how many.
    pub fn wait(&self, out: &mut [Event], timeout: Option<Duration>) -> io::Result<usize> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        let room = out.len().min(MAX_EVENTS) as libc::c_int;
        // SAFETY: `events` has room for `room` (<= MAX_EVENTS) events.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                room,
                timeout_ms(timeout),
            )
        };
        match check(n) {
            Ok(n) => {
                let n = n as usize;
                for (slot, event) in out.iter_mut().zip(&events[..n]) {
                    *slot = Event {
                        token: event.u64,
                        bits: event.events,
                    };
                }
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }
}

/// One event from [`Epoll::wait`]: whose, and what happened.
#[derive(Clone, Copy, Default, Debug)]
pub struct Event {
    pub token: u64,
    bits: u32,
}

impl Event {
    /// The peer closed its side (or the connection failed): its end of stream waits to be
    /// read even after a read that did not fill its buffer.
    pub fn peer_closed(&self) -> bool {
        self.bits & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
    }
}

fn timeout_ms(timeout: Option<Duration>) -> libc::c_int {
    match timeout {
        None => -1,
        // Round up so that a 0.5 ms timeout does not become a busy loop.
        Some(d) => d.as_micros().div_ceil(1000).min(libc::c_int::MAX as u128) as libc::c_int,
    }
}

/// An eventfd that, once signalled, stays readable: it wakes every thread in `epoll_wait`.
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: no pointers; a non-negative result is a new descriptor we own.
        let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: see above.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64. A full counter (EAGAIN) is still readable.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Waits until `fd` is readable (`write == false`) or writable, or `timeout` passes.
/// Returns false on timeout.
pub fn wait_for(fd: BorrowedFd<'_>, write: bool, timeout: Duration) -> io::Result<bool> {
    let events = if write { libc::POLLOUT } else { libc::POLLIN };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd is passed with nfds = 1.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms(Some(timeout))) };
        match check(n) {
            Ok(0) => return Ok(false),
            // Errors and hang-ups count as ready: the next read or write reports them.
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One non-blocking `recv`.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    check_size(unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    })
}

/// One non-blocking `send`; `more` says more data follows at once (`MSG_MORE`), so a head and
/// the file after it share packets. Never raises SIGPIPE.
pub fn send(fd: BorrowedFd<'_>, buf: &[u8], more: bool) -> io::Result<usize> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    // SAFETY: `buf` is valid for reads of its length.
    check_size(unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags) })
}

/// One `sendfile(2)` of up to `len` bytes of `file` from `*offset` (which it advances).
pub fn sendfile(
    socket: BorrowedFd<'_>,
    file: BorrowedFd<'_>,
    offset: &mut u64,
    len: usize,
) -> io::Result<usize> {
    let mut off = *offset as libc::off_t;
    // SAFETY: `off` is a valid off_t the kernel updates; both descriptors are borrowed for the
    // call.
    let n =
        check_size(unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut off, len) })?;
    *offset = off as u64;
    Ok(n)
}

/// Caps the bytes a TCP socket queues unsent (`TCP_NOTSENT_LOWAT`): writes stop, and
/// writability is reported, only while less than `bytes` wait. Data in flight is not counted,
/// so fast clients keep their speed, but one that reads nothing pins at most about `bytes` of
/// kernel memory instead of a send buffer autotuned up to `tcp_wmem`'s maximum (4 MiB).
pub fn set_notsent_lowat(fd: BorrowedFd<'_>, bytes: u32) -> io::Result<()> {
    let value = bytes as libc::c_int;
    // SAFETY: `value` is a valid c_int for the length given, read during the call only.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// `shutdown(2)`; errors (the peer already gone) do not matter to callers.
pub fn shutdown(fd: BorrowedFd<'_>, how: libc::c_int) {
    // SAFETY: no pointers; a stale or closed socket only yields an error.
    unsafe { libc::shutdown(fd.as_raw_fd(), how) };
}
