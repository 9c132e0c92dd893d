//! The connection engine under tiny_http's API: one epoll set, no thread per connection.
//!
//! The threads that call [`crate::Server::recv`] are the engine (leader/followers): each waits
//! in `epoll_wait` for one event, accepts, or reads and parses the connection that fired, and
//! returns the request to its caller, which answers it on the same thread. Connections are
//! registered once, edge-triggered; an atomic on each connection makes sure exactly one thread
//! holds it at a time, and an event that comes while it is held is reported again when the
//! holder lets go. No `epoll_ctl` is needed between requests. A response the socket cannot take at once
//! is parked in the connection and continued when epoll reports it writable; a sweeper thread
//! closes connections whose deadline passed. See ENGINE.md.

mod body;
pub(crate) mod conn;
pub mod head;
mod output;
mod pollers;
mod sys;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

pub use body::{Body, BodyReader};
pub use conn::Conn;
use conn::{Phase, Slab, Stream};
pub use output::Output;
use output::Progress;

use crate::Listener;
use head::{Head, HeadLimits};

/// Limits and deadlines of the engine; [`Limits::default`] gives the documented values.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request head must arrive whole within this time of its first byte (or the accept).
    pub header_timeout: Duration,
    /// A kept-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// A response the client reads nothing of, or a body it sends nothing of, for this long
    /// is abandoned and the connection closed.
    pub stall_timeout: Duration,
    /// Open connections at most; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Request line and headers, in bytes.
    pub max_head_bytes: usize,
    /// Header lines (at most 256).
    pub max_headers: usize,
    /// An unread request body up to this size is dropped to keep the connection; a larger one
    /// closes it.
    pub max_discard_bytes: u64,
    /// How long a closing connection's late input is read and dropped.
    pub linger: Duration,
    /// Threads that wait for events at the same time, more while handlers are slow (see
    /// `engine/pollers.rs`); 0: the number of CPUs.
    pub pollers: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(60),
            max_connections: 100_000,
            max_head_bytes: 16 * 1024,
            max_headers: 100,
            max_discard_bytes: 64 * 1024,
            linger: Duration::from_secs(2),
            pollers: 0,
        }
    }
}

const LISTENER: u64 = u64::MAX;
const WAKER: u64 = u64::MAX - 1;
const KICK: u64 = u64::MAX - 2;
/// Bytes one event may push before the connection goes to the back of the queue.
const PUSH_BUDGET: u64 = 4 << 20;
const SWEEP_EVERY: Duration = Duration::from_millis(50);
/// Unsent bytes a connection may queue in the kernel (see [`sys::set_notsent_lowat`]).
const NOTSENT_LOWAT: u32 = 256 * 1024;

/// A request head read off a connection, with what answering it needs.
pub struct Incoming {
    pub head: Head,
    pub conn: Arc<Conn>,
    pub body: Body,
}

pub struct Engine {
    epoll: sys::Epoll,
    listener: Listener,
    waker: sys::EventFd,
    /// Signalled to wake one waiting thread for events left in `ready`.
    kick: sys::EventFd,
    /// Events taken from epoll by a thread busy with the first of its batch, for any thread.
    ready: Mutex<VecDeque<sys::Event>>,
    ready_len: AtomicUsize,
    /// Threads blocked in `epoll_wait`.
    waiting: AtomicUsize,
    conns: Mutex<Slab>,
    pollers: Arc<pollers::Pollers>,
    pub limits: Limits,
    clock: Instant,
    /// Stop accepting; close connections between requests.
    stopping: AtomicBool,
    /// `recv` returns an error from now on.
    unblocked: AtomicBool,
    /// The listener waits for the sweeper after an accept error such as EMFILE.
    accept_paused: AtomicBool,
    /// Requests handed out whose response is not completely written yet.
    pub in_flight: Arc<AtomicUsize>,
    last_warning: Mutex<Option<Instant>>,
}

impl Engine {
    pub fn start(listener: Listener, limits: Limits) -> io::Result<Arc<Engine>> {
        listener.set_nonblocking(true)?;
        let engine = Arc::new(Engine {
            epoll: sys::Epoll::new()?,
            listener,
            waker: sys::EventFd::new()?,
            kick: sys::EventFd::new()?,
            ready: Mutex::new(VecDeque::with_capacity(64)),
            ready_len: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            conns: Mutex::new(Slab::default()),
            pollers: pollers::Pollers::new(match limits.pollers {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            }),
            limits,
            clock: Instant::now(),
            stopping: AtomicBool::new(false),
            unblocked: AtomicBool::new(false),
            accept_paused: AtomicBool::new(false),
            in_flight: Arc::new(AtomicUsize::new(0)),
            last_warning: Mutex::new(None),
        });
        engine
            .epoll
            .add_listener(engine.listener.raw_fd(), LISTENER)?;
        engine.epoll.add_level(engine.waker.fd(), WAKER)?;
        engine.epoll.add_edge(engine.kick.fd(), KICK)?;
        let weak = Arc::downgrade(&engine);
        std::thread::Builder::new()
            .name("http-sweeper".into())
            .spawn(move || sweep_until_dropped(weak))?;
        Ok(engine)
    }

    fn slab(&self) -> std::sync::MutexGuard<'_, Slab> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn open_connections(&self) -> usize {
        self.slab().len()
    }

    /// Waits for the next complete request head, up to `timeout` (`None`: no limit).
    pub fn next(self: &Arc<Self>, timeout: Option<Duration>) -> io::Result<Option<Incoming>> {
        let slot = self.pollers.register();
        slot.enter();
        // However this returns, the thread is away from `recv` until it calls again.
        struct Away<'a>(&'a pollers::Pollers, &'a pollers::Slot);
        impl Drop for Away<'_> {
            fn drop(&mut self) {
                self.0.leave(self.1);
            }
        }
        let _away = Away(&self.pollers, &slot);
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut waited = false;
        loop {
            if self.unblocked.load(Ordering::SeqCst) {
                return Err(io::Error::other("thread unblocked"));
            }
            // Events already taken from epoll come first: nobody else will announce them.
            let event = match self.take_ready() {
                Some(event) => event,
                None => {
                    if self.pollers.crowded() && !self.pollers.park(deadline, &self.unblocked) {
                        return Ok(None);
                    }
                    let left = match deadline {
                        Some(d) => match d.checked_duration_since(Instant::now()) {
                            Some(left) if !left.is_zero() => Some(left),
                            // Look once even with no time left (`try_recv`).
                            _ if !waited => Some(Duration::ZERO),
                            _ => return Ok(None),
                        },
                        None => None,
                    };
                    waited = true;
                    match self.wait_for_events(left)? {
                        Some(event) => event,
                        None => continue,
                    }
                }
            };
            match event.token {
                LISTENER => {
                    self.contained(LISTENER, |e| {
                        e.accept_ready();
                        None
                    });
                }
                WAKER | KICK => {}
                token => {
                    if let Some(incoming) = self.contained(token, |e| e.on_event(event)) {
                        return Ok(Some(incoming));
                    }
                }
            }
        }
    }

    /// An event another thread took from epoll and left for anyone. If more are left and a
    /// thread sleeps in `epoll_wait`, it is woken for them: each woken thread takes one and
    /// wakes the next, so a batch spreads over every idle thread.
    fn take_ready(&self) -> Option<sys::Event> {
        if self.ready_len.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        let event = ready.pop_front();
        let left = ready.len();
        self.ready_len.store(left, Ordering::SeqCst);
        drop(ready);
        self.wake_for_queued(left);
        event
    }

    /// Wakes one thread asleep in `epoll_wait`, if any, for `queued` events left in the queue.
    fn wake_for_queued(&self, queued: usize) {
        if queued > 0 && self.waiting.load(Ordering::SeqCst) > 0 {
            self.kick.signal();
        }
    }

    /// Waits for events and returns the first; the rest of the batch goes to the shared
    /// queue, with a waiting thread woken for it, so that none waits behind this thread's
    /// request. Taking many events per call saves `epoll_wait`s under load.
    fn wait_for_events(&self, timeout: Option<Duration>) -> io::Result<Option<sys::Event>> {
        let mut events = [sys::Event::default(); sys::MAX_EVENTS];
        self.waiting.fetch_add(1, Ordering::SeqCst);
        // Events queued after our last look, by a thread that saw nobody waiting yet: take
        // them instead of sleeping (its store and our count are both SeqCst, so one of us
        // sees the other).
        if self.ready_len.load(Ordering::SeqCst) > 0 {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Ok(None);
        }
        let n = self.epoll.wait(&mut events, timeout);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let n = n?;
        if n > 1 {
            let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
            ready.extend(&events[1..n]);
            let queued = ready.len();
            self.ready_len.store(queued, Ordering::SeqCst);
            drop(ready);
            self.wake_for_queued(queued);
        }
        Ok((n > 0).then_some(events[0]))
    }

    /// Runs an event handler; a panic in it closes that connection instead of the thread.
    fn contained(
        self: &Arc<Self>,
        token: u64,
        f: impl FnOnce(&Arc<Self>) -> Option<Incoming>,
    ) -> Option<Incoming> {
        match catch_unwind(AssertUnwindSafe(|| f(self))) {
            Ok(found) => found,
            Err(_) => {
                log::error!("a panic while handling a connection event; closing that connection");
                if token == LISTENER {
                    self.rearm_listener();
                } else {
                    // The slab's lock must be released before `close` takes it again.
                    let conn = self.slab().get(token);
                    if let Some(conn) = conn {
                        self.close(&conn);
                    }
                }
                None
            }
        }
    }

    fn millis(&self, at: Instant) -> u64 {
        // Never BUSY (0) or BUSY_PENDING (1): a deadline is at least 2 ms after the clock's start.
        (at.saturating_duration_since(self.clock).as_millis() as u64).max(2)
    }

    fn warn_rarely(&self, message: std::fmt::Arguments<'_>) {
        let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            log::warn!("{message}");
        }
    }

    fn accept_ready(self: &Arc<Self>) {
        // A listener event taken before `stop_accepting` may still come out of the queue.
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        for _ in 0..256 {
            match self.listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    // Out of descriptors or memory: leave the connection in the backlog and
                    // let the sweeper try again shortly, instead of spinning on it.
                    if !self.stopping.load(Ordering::SeqCst) {
                        self.warn_rarely(format_args!("accepting a connection failed: {e}"));
                    }
                    self.accept_paused.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
        self.rearm_listener();
    }

    /// Hands the listener back to epoll; if that fails, the sweeper tries again.
    fn rearm_listener(&self) {
        if !self.stopping.load(Ordering::SeqCst)
            && self
                .epoll
                .rearm_listener(self.listener.raw_fd(), LISTENER)
                .is_err()
        {
            self.accept_paused.store(true, Ordering::SeqCst);
        }
    }

    fn admit(&self, stream: Stream, peer: Option<SocketAddr>) {
        let mut slab = self.slab();
        if slab.len() >= self.limits.max_connections {
            drop(slab);
            self.warn_rarely(format_args!(
                "refusing connections: {} open, the limit",
                self.limits.max_connections
            ));
            return; // Dropping the stream closes it.
        }
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        if let Stream::Tcp(s) = &stream {
            let _ = s.set_nodelay(true);
            // A client that reads nothing must not hold megabytes of kernel memory: a thousand
            // of them exhausted `tcp_mem` and stalled every other connection on the host.
            let _ = sys::set_notsent_lowat(stream.fd(), NOTSENT_LOWAT);
        }
        let now = Instant::now();
        let deadline = now + self.limits.header_timeout;
        let token = slab.next_token();
        let conn = Arc::new(Conn::new(stream, peer, token, deadline));
        conn.timer.store(self.millis(deadline), Ordering::Release);
        let fd = conn.fd().as_raw_fd();
        slab.insert(conn);
        if let Err(e) = self.epoll.add_connection(fd, token) {
            slab.remove(token);
            self.warn_rarely(format_args!("could not watch a new connection: {e}"));
        }
    }

    /// A connection fired: continue its response, drain it, or read its next request.
    fn on_event(self: &Arc<Self>, event: sys::Event) -> Option<Incoming> {
        let conn = self.slab().get(event.token)?;
        if !conn.take() {
            return None;
        }
        let mut state = conn.state();
        if event.peer_closed() {
            // A short read no longer means the socket is empty: its end of stream is still to
            // be read, and no new edge will announce it.
            state.peer_closed = true;
        }
        match std::mem::replace(&mut state.phase, Phase::Lingering) {
            Phase::Lingering => {
                drop(state);
                self.drain_lingering(&conn);
                None
            }
            Phase::Writing(output) => {
                // The event may have been input too, which is not read now.
                state.drained = false;
                drop(state);
                self.push(&conn, output);
                None
            }
            Phase::Head { since } => {
                state.phase = Phase::Head { since };
                drop(state);
                self.read_head(&conn)
            }
        }
    }

    fn read_head(self: &Arc<Self>, conn: &Arc<Conn>) -> Option<Incoming> {
        let limits = HeadLimits {
            max_bytes: self.limits.max_head_bytes,
            max_headers: self.limits.max_headers,
        };
        let mut state = conn.state();
        // Parse only when a line may have ended (or the limit is reached): a head sent a byte at
        // a time is then not parsed again for every byte.
        let mut worth_parsing = true;
        loop {
            if worth_parsing && !state.unread().is_empty() {
                match head::parse(state.unread(), limits) {
                    Ok(Some(head)) => {
                        state.consume(head.len);
                        drop(state);
                        conn.idle.store(false, Ordering::SeqCst);
                        self.in_flight.fetch_add(1, Ordering::SeqCst);
                        let body = Body::new(
                            head.framing,
                            head.expect_continue,
                            self.limits.stall_timeout,
                        );
                        return Some(Incoming {
                            head,
                            conn: conn.clone(),
                            body,
                        });
                    }
                    Ok(None) => {}
                    Err(refusal) => {
                        drop(state);
                        log::debug!(
                            "refused a request from {}: {} {}",
                            head::describe(conn.peer),
                            refusal.status,
                            refusal.reason
                        );
                        let _ = sys::send(conn.fd(), &head::refusal_response(refusal), false);
                        self.linger(conn);
                        return None;
                    }
                }
            }
            match state.read_more(conn.fd(), self.limits.max_head_bytes + 1) {
                Ok(0) => {
                    drop(state);
                    self.close(conn);
                    return None;
                }
                Ok(n) => {
                    let unread = state.unread();
                    worth_parsing = unread[unread.len() - n..].contains(&b'\n')
                        || unread.len() > self.limits.max_head_bytes;
                    if let Phase::Head { since: None } = state.phase {
                        // The first byte of a new request on a kept-alive connection.
                        let now = Instant::now();
                        state.phase = Phase::Head { since: Some(now) };
                        state.deadline = now + self.limits.header_timeout;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    state.drained = true;
                    let deadline = state.deadline;
                    drop(state);
                    self.release(conn, deadline, false);
                    return None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    drop(state);
                    self.close(conn);
                    return None;
                }
            }
        }
    }

    /// Sets the deadline and lets go of the connection; epoll reports it again if an event
    /// came while it was held, or at once if `again` (input may be waiting unseen, or output
    /// can go on). The caller must not touch the connection afterwards: another thread may
    /// already hold it.
    fn release(&self, conn: &Conn, deadline: Instant, again: bool) {
        let missed = conn.release(self.millis(deadline));
        if (missed || again)
            && self
                .epoll
                .retrigger(conn.fd().as_raw_fd(), conn.token)
                .is_err()
        {
            // Only if the sweeper closed it meanwhile, which removed it from epoll.
            log::debug!("re-arming a connection failed");
        }
    }

    /// Finishes a request: drops what is left of its body if that is cheap, then writes the
    /// response as far as the socket takes it now and parks the rest.
    pub fn finish(self: &Arc<Self>, conn: &Arc<Conn>, body: &mut Body, mut output: Output) {
        if !body.is_done() && !body.discard_available(conn, self.limits.max_discard_bytes) {
            // The rest of the body may never come, or be huge: do not wait for it.
            output.keep_alive = false;
        }
        if self.stopping.load(Ordering::SeqCst) {
            output.keep_alive = false;
        }
        self.push(conn, output);
    }

    fn push(self: &Arc<Self>, conn: &Arc<Conn>, mut output: Output) {
        match output.push(conn.fd(), PUSH_BUDGET) {
            Ok(Progress::Done) => {
                output.complete(Ok(()));
                let keep_alive = output.keep_alive;
                drop(output);
                self.after_response(conn, keep_alive);
            }
            Ok(progress @ (Progress::Blocked | Progress::Yielded)) => {
                let deadline = Instant::now() + self.limits.stall_timeout;
                let mut state = conn.state();
                state.phase = Phase::Writing(output);
                state.deadline = deadline;
                drop(state);
                // Blocked: epoll reports the room when there is some. Yielded: there is room
                // already, so the connection goes to the back of the queue.
                self.release(conn, deadline, progress == Progress::Yielded);
            }
            Err(e) => {
                output.complete(Err(e));
                self.close(conn);
            }
        }
    }

    fn after_response(&self, conn: &Arc<Conn>, keep_alive: bool) {
        if !keep_alive || self.stopping.load(Ordering::SeqCst) {
            self.linger(conn);
            return;
        }
        let now = Instant::now();
        let mut state = conn.state();
        // With the next request buffered, or input the last read may have left in the socket,
        // have epoll report the connection again at once (it is writable: the response is out).
        // Only a buffered request starts its header clock now; otherwise the connection is idle.
        let pipelined = !state.unread().is_empty();
        let again = pipelined || !state.drained;
        let (since, deadline) = if pipelined {
            (Some(now), now + self.limits.header_timeout)
        } else {
            state.release_buffer();
            (None, now + self.limits.idle_timeout)
        };
        state.phase = Phase::Head { since };
        state.deadline = deadline;
        drop(state);
        conn.idle.store(true, Ordering::SeqCst);
        self.release(conn, deadline, again);
    }

    /// Shuts our side down and drops the client's late input for a moment before closing, so
    /// that the response is not lost to a reset.
    fn linger(&self, conn: &Arc<Conn>) {
        sys::shutdown(conn.fd(), libc::SHUT_WR);
        let deadline = Instant::now() + self.limits.linger;
        let mut state = conn.state();
        state.phase = Phase::Lingering;
        state.buf = Vec::new();
        state.pos = 0;
        state.deadline = deadline;
        let again = !state.drained;
        drop(state);
        conn.idle.store(false, Ordering::SeqCst);
        self.release(conn, deadline, again);
    }

    /// Drops what a closing connection's client still sends. It is closed when the client
    /// closes too, or at its deadline; closing while input arrives would reset the connection
    /// and could destroy the response before the client has read it.
    fn drain_lingering(&self, conn: &Arc<Conn>) {
        let mut scratch = [0u8; 16 * 1024];
        let mut drained = false;
        for _ in 0..8 {
            match sys::recv(conn.fd(), &mut scratch) {
                Ok(0) => return self.close(conn),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(conn),
            }
        }
        // More may come (or the 8 reads were not enough: then come back after other work), up
        // to the deadline.
        let deadline = conn.state().deadline;
        self.release(conn, deadline, !drained);
    }

    /// Forgets the connection; its socket closes when the last reference goes.
    pub fn close(&self, conn: &Conn) {
        let removed = self.slab().remove(conn.token);
        let _ = self.epoll.delete(conn.fd().as_raw_fd());
        sys::shutdown(conn.fd(), libc::SHUT_RDWR);
        drop(removed);
    }

    /// A connection leaves the engine for good ([`crate::Request::upgrade`]).
    pub fn detach(&self, conn: &Conn) {
        self.slab().remove(conn.token);
        let _ = self.epoll.delete(conn.fd().as_raw_fd());
    }

    /// Closes connections whose deadline passed (and, when stopping, idle ones).
    fn sweep(&self) {
        if self.accept_paused.swap(false, Ordering::SeqCst) {
            self.rearm_listener();
        }
        let now = self.millis(Instant::now());
        let stopping = self.stopping.load(Ordering::SeqCst);
        let expired: Vec<Arc<Conn>> = self
            .slab()
            .iter()
            .filter(|c| c.claim_expired(now, stopping && c.idle.load(Ordering::SeqCst)))
            .cloned()
            .collect();
        self.pollers.sweep(now);
        for conn in expired {
            let parked = std::mem::replace(&mut conn.state().phase, Phase::Lingering);
            if let Phase::Writing(mut output) = parked {
                log::debug!("closing a connection whose client stopped reading");
                output.complete(Err(output::stalled(self.limits.stall_timeout)));
            }
            self.close(&conn);
        }
    }

    /// Stops accepting; connections are closed once their current response is out.
    pub fn stop_accepting(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.epoll.delete(self.listener.raw_fd());
    }

    /// Makes every `recv` return an error, now and from now on.
    pub fn unblock(&self) {
        self.unblocked.store(true, Ordering::SeqCst);
        self.pollers.wake_all();
        self.waker.signal();
    }
}

/// Accept errors that concern only the one connection being accepted.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) || e.raw_os_error() == Some(libc::EPROTO)
}

fn sweep_until_dropped(engine: Weak<Engine>) {
    loop {
        std::thread::sleep(SWEEP_EVERY);
        let Some(engine) = engine.upgrade() else {
            return;
        };
        // Without this thread no deadline would ever be enforced again: survive anything.
        if catch_unwind(AssertUnwindSafe(|| engine.sweep())).is_err() {
            log::error!("a panic in the connection sweeper; it goes on");
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let conns: Vec<Arc<Conn>> = self.slab().iter().cloned().collect();
        for conn in conns {
            sys::shutdown(conn.fd(), libc::SHUT_RDWR);
        }
    }
}

/// Parses `data` as a request head and, if it is accepted, reads its body from the bytes that
/// follow, through a socket pair, the way a connection would. For the fuzz target: any input
/// must end in a refusal, an error or a body of exactly the declared length, never a panic.
pub fn fuzz_request(data: &[u8]) {
    use std::io::Write;
    let limits = HeadLimits {
        max_bytes: 16 * 1024,
        max_headers: 100,
    };
    let Ok(Some(head)) = head::parse(data, limits) else {
        return;
    };
    let rest = &data[head.len.min(data.len())..];
    let Ok((mut client, server)) = std::os::unix::net::UnixStream::pair() else {
        return;
    };
    // Small enough to fit the socket buffer, so the write cannot block.
    let _ = client.write_all(&rest[..rest.len().min(64 * 1024)]);
    drop(client);
    if server.set_nonblocking(true).is_err() {
        return;
    }
    let conn = Conn::new(Stream::Unix(server), None, 0, Instant::now());
    let mut body = Body::new(head.framing, false, Duration::from_millis(1));
    let mut out = [0u8; 4096];
    let mut total = 0u64;
    loop {
        match body.read(&conn, &mut out) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(_) => return,
        }
    }
    if let head::Framing::Length(n) = head.framing {
        assert_eq!(
            total, n,
            "a Content-Length body ended early without an error"
        );
    }
}
