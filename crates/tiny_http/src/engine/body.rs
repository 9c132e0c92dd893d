//! Request bodies that tell the truth: exactly `Content-Length` bytes, or a chunked body that
//! ends with its zero chunk; anything shorter is an error, never a clean end of file.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use super::conn::{Conn, State};
use super::head::Framing;
use super::sys;

/// Longest chunk-size line or trailer section accepted.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// This many bytes remain of a Content-Length body.
    Length(u64),
    /// Before a chunk-size line.
    ChunkSize,
    /// Inside a chunk, this many bytes left.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// After the zero chunk: trailer lines up to an empty one.
    Trailers,
    Done,
}

/// The state of a request's body, read through [`Body::read`].
pub struct Body {
    stage: Stage,
    /// `Expect: 100-continue` still to be answered before the first read from the socket.
    continue_pending: bool,
    /// How long a read may wait for the client.
    stall: Duration,
}

fn cut_short() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the client closed the connection before the whole body arrived",
    )
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed chunked body: {what}"),
    )
}

impl Body {
    pub fn new(framing: Framing, expect_continue: bool, stall: Duration) -> Body {
        let stage = match framing {
            Framing::None => Stage::Done,
            Framing::Length(n) => Stage::Length(n),
            Framing::Chunked => Stage::ChunkSize,
        };
        Body {
            stage,
            continue_pending: expect_continue && stage != Stage::Done,
            stall,
        }
    }

    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    /// Reads body bytes into `out`, waiting up to the stall timeout for each piece.
    pub fn read(&mut self, conn: &Conn, out: &mut [u8]) -> io::Result<usize> {
        let mut state = conn.state();
        self.read_with(conn, &mut state, out, true)
    }

    /// Reads and drops what the client already sent, without waiting, up to `cap` bytes.
    /// True if the body is then complete.
    pub fn discard_available(&mut self, conn: &Conn, cap: u64) -> bool {
        // The response is decided: a client still waiting for `100 Continue` must not get the
        // go-ahead now (it would send a body nobody reads); what it sent anyway is dropped.
        self.continue_pending = false;
        let mut state = conn.state();
        let mut scratch = [0u8; 8192];
        let mut dropped = 0u64;
        while !self.is_done() && dropped <= cap {
            match self.read_with(conn, &mut state, &mut scratch, false) {
                Ok(n) => dropped += n as u64,
                Err(_) => return false,
            }
        }
        self.is_done()
    }

    fn read_with(
        &mut self,
        conn: &Conn,
        state: &mut State,
        out: &mut [u8],
        wait: bool,
    ) -> io::Result<usize> {
        loop {
            match self.stage {
                Stage::Done => return Ok(0),
                Stage::Length(left) => {
                    let n = self.data(conn, state, out, left, wait)?;
                    self.stage = match left - n as u64 {
                        0 => Stage::Done,
                        rest => Stage::Length(rest),
                    };
                    return Ok(n);
                }
                Stage::ChunkData(left) => {
                    let n = self.data(conn, state, out, left, wait)?;
                    self.stage = match left - n as u64 {
                        0 => Stage::ChunkEnd,
                        rest => Stage::ChunkData(rest),
                    };
                    return Ok(n);
                }
                Stage::ChunkSize => {
                    let (used, size) = loop {
                        match httparse::parse_chunk_size(state.unread()) {
                            Ok(httparse::Status::Complete(found)) => break found,
                            Ok(httparse::Status::Partial)
                                if state.unread().len() < MAX_CHUNK_LINE =>
                            {
                                self.fill(conn, state, wait)?
                            }
                            _ => return Err(malformed("bad chunk-size line")),
                        }
                    };
                    state.consume(used);
                    self.stage = if size == 0 {
                        Stage::Trailers
                    } else {
                        Stage::ChunkData(size)
                    };
                }
                Stage::ChunkEnd => {
                    while state.unread().len() < 2 {
                        self.fill(conn, state, wait)?;
                    }
                    if &state.unread()[..2] != b"\r\n" {
                        return Err(malformed("chunk data not followed by CRLF"));
                    }
                    state.consume(2);
                    self.stage = Stage::ChunkSize;
                }
                Stage::Trailers => {
                    // Trailer fields are dropped; the section ends with an empty line.
                    let end = loop {
                        let unread = state.unread();
                        if unread.starts_with(b"\r\n") {
                            break 2;
                        }
                        if let Some(i) = find(unread, b"\r\n\r\n") {
                            break i + 4;
                        }
                        if unread.len() > MAX_TRAILERS {
                            return Err(malformed("trailer section too large"));
                        }
                        self.fill(conn, state, wait)?;
                    };
                    // They must still be field lines: anything else could be a request hidden
                    // from a proxy that frames the body differently.
                    let mut fields = [httparse::EMPTY_HEADER; 32];
                    match httparse::parse_headers(&state.unread()[..end], &mut fields) {
                        Ok(httparse::Status::Complete(_)) => {}
                        _ => return Err(malformed("trailer section is not header fields")),
                    }
                    state.consume(end);
                    self.stage = Stage::Done;
                }
            }
        }
    }

    /// Up to `left` body bytes: first those already buffered, then straight from the socket.
    fn data(
        &mut self,
        conn: &Conn,
        state: &mut State,
        out: &mut [u8],
        left: u64,
        wait: bool,
    ) -> io::Result<usize> {
        let want = out.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        if !state.unread().is_empty() {
            let n = want.min(state.unread().len());
            out[..n].copy_from_slice(&state.unread()[..n]);
            state.consume(n);
            return Ok(n);
        }
        self.send_continue(conn)?;
        // Straight from the socket, around the buffer's bookkeeping: what follows the body (the
        // next request) may be left there unseen.
        state.drained = false;
        loop {
            match sys::recv(conn.fd(), &mut out[..want]) {
                Ok(0) => return Err(cut_short()),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait_readable(conn, wait)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads more into the connection's buffer (for chunk framing).
    fn fill(&mut self, conn: &Conn, state: &mut State, wait: bool) -> io::Result<()> {
        self.send_continue(conn)?;
        loop {
            let max = state.unread().len() + MAX_CHUNK_LINE + MAX_TRAILERS;
            match state.read_more(conn.fd(), max) {
                Ok(0) => return Err(cut_short()),
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait_readable(conn, wait)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn wait_readable(&self, conn: &Conn, wait: bool) -> io::Result<()> {
        if !wait {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if sys::wait_for(conn.fd(), false, self.stall)? {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client sent nothing of the body for {} s",
                    self.stall.as_secs()
                ),
            ))
        }
    }

    /// Answers `Expect: 100-continue` the first time the body is really needed, so that a
    /// request refused from its head never gets the go-ahead.
    fn send_continue(&mut self, conn: &Conn) -> io::Result<()> {
        if self.continue_pending {
            self.continue_pending = false;
            super::output::write_all_waiting(
                conn.fd(),
                b"HTTP/1.1 100 Continue\r\n\r\n",
                self.stall,
            )?;
        }
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The body of a request, as `std::io::Read`.
pub struct BodyReader {
    pub conn: Arc<Conn>,
    pub body: Body,
}

impl io::Read for BodyReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.body.read(&self.conn, out)
    }
}
