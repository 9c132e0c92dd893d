//! One client connection: its socket, the bytes read but not yet parsed, where it is in its
//! life, and its deadline.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::output::Output;
use super::sys;

/// The connection's socket.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
        }
    }

    /// A second handle on the same socket (for [`crate::Request::upgrade`]).
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }
}

impl io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl io::Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The value of [`Conn::timer`] while a thread holds the connection (no deadline applies).
pub const BUSY: u64 = 0;
/// Held by a thread, and an event came meanwhile: the holder must have epoll report the
/// connection again when it lets go (see [`Conn::release`]).
pub const BUSY_PENDING: u64 = 1;
/// The value of [`Conn::timer`] once the sweeper has claimed the connection to close it.
pub const CLOSED: u64 = u64::MAX;

/// Where a connection is between two events.
pub enum Phase {
    /// Waiting for (the rest of) a request head. `since` is when this request began (accept,
    /// or its first byte on a kept-alive connection); `None` while idle between requests.
    Head { since: Option<Instant> },
    /// A response the socket could not take at once, continued when it becomes writable.
    Writing(Output),
    /// Closing: our side is shut down and whatever the client still sends is read and dropped
    /// for a moment, so that a response is not destroyed by a reset.
    Lingering,
}

/// State only the thread holding the connection touches (the mutex is never contended; it
/// makes the hand-over between threads safe).
pub struct State {
    /// Received bytes; `buf[pos..]` are not consumed yet.
    pub buf: Vec<u8>,
    pub pos: usize,
    pub phase: Phase,
    /// When the connection is closed if nothing happens.
    pub deadline: Instant,
    /// The last read emptied the socket, so epoll (edge-triggered) reports new input. False
    /// while bytes may be waiting unseen: after a full read, a body read, or an event the
    /// connection was not reading for.
    pub drained: bool,
    /// epoll said the peer closed its side: a short read may leave its end of stream behind.
    pub peer_closed: bool,
}

impl State {
    pub fn unread(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    pub fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Reads once from the socket, without waiting, into the buffer (at most `max` buffered).
    /// `Ok(0)` is end of stream. The read goes through a per-thread scratch buffer, so that a
    /// connection holds only the bytes it was sent, not a full-size buffer.
    pub fn read_more(&mut self, fd: BorrowedFd<'_>, max: usize) -> io::Result<usize> {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Box<[u8]>> =
                std::cell::RefCell::new(vec![0u8; 16 * 1024].into_boxed_slice());
        }
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let room = max.saturating_sub(self.buf.len()).clamp(1, 16 * 1024);
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let n = sys::recv(fd, &mut scratch[..room])?;
            // A read that did not fill its room took every byte the socket had (but not an end
            // of stream that came with them).
            self.drained = n < room && !self.peer_closed;
            // Grow by doubling, but never past `max`: a head arriving byte by byte must not
            // leave its connection holding twice the limit.
            let need = self.buf.len() + n;
            if need > self.buf.capacity() {
                let target = (self.buf.capacity() * 2)
                    .max(need)
                    .max(256)
                    .min(max.max(need));
                self.buf.reserve_exact(target - self.buf.len());
            }
            self.buf.extend_from_slice(&scratch[..n]);
            Ok(n)
        })
    }

    /// Gives the buffer's memory back while the connection is idle.
    pub fn release_buffer(&mut self) {
        if self.pos == self.buf.len() {
            self.buf = Vec::new();
            self.pos = 0;
        }
    }
}

pub struct Conn {
    pub stream: Stream,
    pub peer: Option<SocketAddr>,
    pub token: u64,
    /// [`BUSY`], [`CLOSED`], or the deadline in milliseconds of the engine's clock.
    pub timer: AtomicU64,
    /// Waiting for a request, with no response in progress: a stopping server closes it.
    pub idle: AtomicBool,
    state: Mutex<State>,
}

impl Conn {
    pub fn new(stream: Stream, peer: Option<SocketAddr>, token: u64, deadline: Instant) -> Conn {
        Conn {
            stream,
            peer,
            token,
            timer: AtomicU64::new(BUSY),
            idle: AtomicBool::new(true),
            state: Mutex::new(State {
                buf: Vec::new(),
                pos: 0,
                phase: Phase::Head {
                    since: Some(Instant::now()),
                },
                deadline,
                drained: false,
                peer_closed: false,
            }),
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.fd()
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the connection for the calling thread. False if the sweeper closed it, or if
    /// another thread holds it: that thread is then told (`BUSY_PENDING`) to have the event
    /// reported again when it lets go, so no readiness is lost.
    pub fn take(&self) -> bool {
        let mut current = self.timer.load(Ordering::Acquire);
        loop {
            let (next, taken) = match current {
                CLOSED => return false,
                BUSY | BUSY_PENDING => (BUSY_PENDING, false),
                _ => (BUSY, true),
            };
            match self
                .timer
                .compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return taken,
                Err(now) => current = now,
            }
        }
    }

    /// Lets go of the connection until `deadline_ms`. True if an event came while it was held
    /// (the caller must have epoll report the connection again).
    pub fn release(&self, deadline_ms: u64) -> bool {
        debug_assert!(deadline_ms > BUSY_PENDING && deadline_ms != CLOSED);
        match self
            .timer
            .compare_exchange(BUSY, deadline_ms, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => false,
            Err(_) => {
                // BUSY_PENDING: only the holder moves the timer away from it.
                self.timer.store(deadline_ms, Ordering::Release);
                true
            }
        }
    }

    /// Claims the connection for closing if its deadline `<= now_ms` (or `force` and it is not
    /// held by a thread).
    pub fn claim_expired(&self, now_ms: u64, force: bool) -> bool {
        let t = self.timer.load(Ordering::Acquire);
        let due = t > BUSY_PENDING && t != CLOSED && (t <= now_ms || force);
        due && self
            .timer
            .compare_exchange(t, CLOSED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// The open connections, indexed by the token epoll hands back: slot index in the low 32 bits,
/// the slot's generation in the high ones, so that a late event for a closed connection cannot
/// reach the next connection in its slot.
#[derive(Default)]
pub struct Slab {
    slots: Vec<(u32, Option<Arc<Conn>>)>,
    free: Vec<u32>,
    len: usize,
}

impl Slab {
    /// The token the next [`Slab::insert`] will use.
    pub fn next_token(&mut self) -> u64 {
        let index = match self.free.last() {
            Some(&i) => i,
            None => {
                self.slots.push((0, None));
                self.free.push(self.slots.len() as u32 - 1);
                self.slots.len() as u32 - 1
            }
        };
        let generation = self.slots[index as usize].0;
        (u64::from(generation) << 32) | u64::from(index)
    }

    pub fn insert(&mut self, conn: Arc<Conn>) {
        let index = self.free.pop().expect("next_token reserved a slot");
        debug_assert_eq!(conn.token & 0xffff_ffff, u64::from(index));
        self.slots[index as usize].1 = Some(conn);
        self.len += 1;
    }

    pub fn get(&self, token: u64) -> Option<Arc<Conn>> {
        let (generation, conn) = self.slots.get((token & 0xffff_ffff) as usize)?;
        (u64::from(*generation) == token >> 32).then(|| conn.clone())?
    }

    pub fn remove(&mut self, token: u64) -> Option<Arc<Conn>> {
        let index = (token & 0xffff_ffff) as usize;
        let slot = self.slots.get_mut(index)?;
        if u64::from(slot.0) != token >> 32 {
            return None;
        }
        let conn = slot.1.take()?;
        slot.0 = (slot.0 + 1) % 0x7fff_ffff;
        self.free.push(index as u32);
        self.len -= 1;
        Some(conn)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Conn>> {
        self.slots.iter().filter_map(|(_, c)| c.as_ref())
    }
}
