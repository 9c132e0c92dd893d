//! Responses on their way out: bytes and an optional file range, pushed into a non-blocking
//! socket. What the socket cannot take now waits in the connection for writability (in epoll),
//! so a client that does not read holds a little memory, never a thread.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::sys;

/// Called once with the bytes written, or why the response could not be sent whole.
pub type OnDone = Box<dyn FnOnce(io::Result<u64>) + Send>;

/// Largest `sendfile` in one call.
const SENDFILE_CHUNK: usize = 1 << 20;

/// Response bytes after which a client counts as one that reads: the cap on unsent bytes set
/// at accept (`TCP_NOTSENT_LOWAT`, which keeps a client that reads nothing from pinning
/// megabytes of kernel memory) is lifted for it. Kept, the cap costs a large download two to
/// three times the CPU (a wake-up per 256 KiB); a client that reads nothing never gets this
/// far, since the cap and its receive window hold everything it has not read.
const LIFT_LOWAT_AFTER: u64 = 4 << 20;

/// A response being written.
pub struct Output {
    bytes: Vec<u8>,
    sent: usize,
    /// A file range that follows `bytes`: file, next offset, bytes left.
    file: Option<(File, u64, u64)>,
    written: u64,
    /// The unsent-bytes cap was lifted for this connection.
    lowat_lifted: bool,
    pub keep_alive: bool,
    on_done: Option<OnDone>,
    /// The engine's count of responses in progress, released when this one completes.
    in_flight: Option<Arc<AtomicUsize>>,
}

/// How far a push got.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Done,
    /// The socket is full: continue when it is writable.
    Blocked,
    /// The budget is spent while the socket could take more: continue after other work.
    Yielded,
}

impl Output {
    pub fn new(keep_alive: bool, in_flight: Arc<AtomicUsize>) -> Output {
        Output {
            bytes: Vec::new(),
            sent: 0,
            file: None,
            written: 0,
            lowat_lifted: false,
            keep_alive,
            on_done: None,
            in_flight: Some(in_flight),
        }
    }

    /// Nothing was ever queued for this response.
    pub fn is_empty(&self) -> bool {
        self.written == 0 && self.bytes.is_empty() && self.file.is_none()
    }

    pub fn has_file(&self) -> bool {
        self.file.is_some()
    }

    pub fn buffered(&self) -> usize {
        self.bytes.len() - self.sent
    }

    /// Queues `data` without copying it when nothing else is queued.
    pub fn push_vec(&mut self, data: Vec<u8>) {
        if self.sent == self.bytes.len() {
            self.bytes = data;
            self.sent = 0;
        } else {
            self.bytes.extend_from_slice(&data);
        }
    }

    pub fn push_bytes(&mut self, data: &[u8]) {
        if self.sent == self.bytes.len() {
            self.bytes.clear();
            self.sent = 0;
        }
        self.bytes.extend_from_slice(data);
    }

    pub fn set_file(&mut self, file: File, offset: u64, len: u64) {
        self.file = Some((file, offset, len));
    }

    pub fn on_done(&mut self, f: OnDone) {
        self.on_done = Some(f);
    }

    /// Writes without waiting until done, blocked, or about `budget` bytes are out.
    pub fn push(&mut self, socket: BorrowedFd<'_>, budget: u64) -> io::Result<Progress> {
        let start = self.written;
        while self.sent < self.bytes.len() {
            let more = self.file.is_some();
            match sys::send(socket, &self.bytes[self.sent..], more) {
                Ok(n) => {
                    self.sent += n;
                    self.written += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Progress::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        while let Some((file, offset, left)) = &mut self.file {
            if *left == 0 {
                self.file = None;
                break;
            }
            if self.written - start >= budget {
                return Ok(Progress::Yielded);
            }
            let want = usize::try_from(*left)
                .unwrap_or(usize::MAX)
                .min(SENDFILE_CHUNK);
            match sys::sendfile(socket, file.as_fd(), offset, want) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file is shorter than announced (changed on disk?)",
                    ));
                }
                Ok(n) => {
                    *left -= n as u64;
                    self.written += n as u64;
                    if !self.lowat_lifted && self.written >= LIFT_LOWAT_AFTER {
                        self.lowat_lifted = true;
                        let _ = sys::set_notsent_lowat(socket, u32::MAX);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Progress::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Progress::Done)
    }

    /// Writes everything, waiting for writability up to `stall` each time no progress is made.
    pub fn push_waiting(&mut self, socket: BorrowedFd<'_>, stall: Duration) -> io::Result<()> {
        loop {
            match self.push(socket, u64::MAX)? {
                Progress::Done => return Ok(()),
                Progress::Yielded => {}
                Progress::Blocked => {
                    if !sys::wait_for(socket, true, stall)? {
                        return Err(stalled(stall));
                    }
                }
            }
        }
    }

    /// Reports the outcome (once) and releases the in-flight count.
    pub fn complete(&mut self, result: io::Result<()>) {
        if let Some(f) = self.on_done.take() {
            let written = self.written;
            // The callback is the application's; it runs on an engine thread (a worker or the
            // sweeper), which must not die or leave the connection held if it panics.
            let reported = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                f(result.map(|()| written))
            }));
            if reported.is_err() {
                log::error!("a response's completion callback panicked");
            }
        }
        if let Some(n) = self.in_flight.take() {
            n.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if self.on_done.is_some() || self.in_flight.is_some() {
            self.complete(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the connection closed before the response was sent",
            )));
        }
    }
}

pub fn stalled(stall: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the client read nothing for {} s", stall.as_secs()),
    )
}

/// Writes `data` whole, waiting for writability up to `stall` at a time (small control
/// messages such as `100 Continue`).
pub fn write_all_waiting(
    socket: BorrowedFd<'_>,
    mut data: &[u8],
    stall: Duration,
) -> io::Result<()> {
    while !data.is_empty() {
        match sys::send(socket, data, false) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !sys::wait_for(socket, true, stall)? {
                    return Err(stalled(stall));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
