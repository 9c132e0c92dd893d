//! A request handed out by the server, and the writer its response goes through.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::common::{HTTPVersion, Header, Method};
use crate::engine::{BodyReader, Engine, Incoming, Output};
use crate::response::Response;

/// Buffered response bytes past which a write waits for the socket.
const BUFFER_LIMIT: usize = 256 * 1024;

/// A request from a client: its head, its body as a reader, and the way to answer it.
///
/// It can be sent to another thread. Dropping it without answering sends a `500` and closes
/// the connection (a panicking handler ends up here).
pub struct Request {
    engine: Arc<Engine>,
    /// `None` once the request was answered.
    reader: Option<BodyReader>,
    method: Method,
    url: String,
    version: HTTPVersion,
    headers: Vec<Header>,
    keep_alive: bool,
    body_length: Option<usize>,
    remote_addr: Option<SocketAddr>,
    /// What [`Request::as_reader`] gives once the body went to the response writer.
    empty: io::Empty,
}

impl Request {
    pub(crate) fn new(engine: Arc<Engine>, incoming: Incoming) -> Request {
        let Incoming { head, conn, body } = incoming;
        let body_length = match head.framing {
            crate::engine::head::Framing::None => Some(0),
            crate::engine::head::Framing::Length(n) => {
                Some(usize::try_from(n).unwrap_or(usize::MAX))
            }
            crate::engine::head::Framing::Chunked => None,
        };
        Request {
            engine,
            remote_addr: conn.peer,
            reader: Some(BodyReader { conn, body }),
            method: head.method,
            url: head.url,
            version: head.version,
            headers: head.headers,
            keep_alive: head.keep_alive,
            body_length,
            empty: io::empty(),
        }
    }

    /// Always false: this server speaks plain HTTP (put TLS in front of it).
    pub fn secure(&self) -> bool {
        false
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The request target in origin form (`/path?query`).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    pub fn http_version(&self) -> &HTTPVersion {
        &self.version
    }

    /// The body's length if the client declared one (`Some(0)` without a body, `None` for a
    /// chunked body).
    pub fn body_length(&self) -> Option<usize> {
        self.body_length
    }

    /// The client's address; `None` on a Unix socket.
    pub fn remote_addr(&self) -> Option<&SocketAddr> {
        self.remote_addr.as_ref()
    }

    /// The body. Reads yield exactly the declared bytes, or fail: a client that closes early
    /// or stalls past the stall timeout, or a malformed chunked body, is an error, never an
    /// early end of file. `Expect: 100-continue` is answered on the first read.
    pub fn as_reader(&mut self) -> &mut dyn Read {
        match self.reader.as_mut() {
            Some(reader) => reader,
            None => &mut self.empty,
        }
    }

    /// The writer the response goes through, with `sendfile` and completion reporting (this
    /// engine's addition to tiny_http's API).
    pub fn into_response_writer(mut self) -> ResponseWriter {
        let reader = self.reader.take();
        let output = Output::new(self.keep_alive, self.engine.in_flight.clone());
        ResponseWriter {
            engine: self.engine.clone(),
            reader,
            output: Some(output),
            failed: false,
        }
    }

    /// A raw writer for the response; the caller writes the status line and headers.
    pub fn into_writer(self) -> Box<dyn Write + Send + 'static> {
        Box::new(self.into_response_writer())
    }

    /// Writes `response`, with `Content-Length` or chunked framing as tiny_http chooses.
    pub fn respond<R: Read>(mut self, response: Response<R>) -> io::Result<()> {
        let version = self.version.clone();
        let headers = std::mem::take(&mut self.headers);
        let head_only = self.method == Method::Head;
        let mut writer = self.into_response_writer();
        let result = response.raw_print(&mut writer, version, &headers, head_only, None);
        if result.is_err() {
            writer.failed = true;
        }
        writer.finish();
        result
    }

    /// Answers with `response` (normally `101 Switching Protocols`) and hands over the
    /// connection, in blocking mode, for the new protocol.
    pub fn upgrade<R: Read>(
        mut self,
        protocol: &str,
        response: Response<R>,
    ) -> Box<dyn crate::ReadWrite + Send> {
        let version = self.version.clone();
        let headers = std::mem::take(&mut self.headers);
        let reader = self.reader.take();
        let Some(reader) = reader else {
            return Box::new(io::Cursor::new(Vec::new()));
        };
        let conn = reader.conn.clone();
        let mut output = Output::new(false, self.engine.in_flight.clone());
        let mut head = Vec::new();
        let printed = response.raw_print(&mut head, version, &headers, false, Some(protocol));
        output.push_bytes(&head);
        let sent =
            printed.and_then(|()| output.push_waiting(conn.fd(), self.engine.limits.stall_timeout));
        output.complete(sent.map(|_| ()));
        self.engine.detach(&conn);
        // Bytes of the new protocol the client sent right behind its request are already in
        // our buffer: they come first.
        let early = {
            let mut state = conn.state();
            let early = state.unread().to_vec();
            state.consume(early.len());
            early
        };
        match conn.stream.try_clone() {
            Ok(stream) => {
                let _ = stream.set_nonblocking(false);
                Box::new(Upgraded {
                    early: io::Cursor::new(early),
                    stream,
                })
            }
            Err(_) => Box::new(io::Cursor::new(Vec::new())),
        }
    }
}

/// An upgraded connection: what was buffered after the request, then the socket.
struct Upgraded {
    early: io::Cursor<Vec<u8>>,
    stream: crate::engine::conn::Stream,
}

impl Read for Upgraded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.early.read(buf)? {
            0 => self.stream.read(buf),
            n => Ok(n),
        }
    }
}

impl Write for Upgraded {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.stream.write(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Request({} {} from {:?})",
            self.method, self.url, self.remote_addr
        )
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if self.reader.is_none() {
            return;
        }
        // Never answered (the handler forgot, or panicked): tell the client and close.
        let body = b"the server failed to answer this request\n";
        let head = format!(
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let reader = self.reader.take();
        let mut writer = ResponseWriter {
            engine: self.engine.clone(),
            reader,
            output: Some(Output::new(false, self.engine.in_flight.clone())),
            failed: false,
        };
        writer.close_after();
        let _ = writer.write_all(head.as_bytes());
        let _ = writer.write_all(body);
        writer.finish();
    }
}

/// Where a response goes: bytes are buffered, a file range is sent with `sendfile`, and
/// [`ResponseWriter::finish`] (or dropping it) pushes what the socket takes now and leaves the
/// rest to the engine, so the calling thread never waits for a slow client. Only a response
/// larger than the buffer limit written through `Write` waits (up to the stall timeout).
pub struct ResponseWriter {
    engine: Arc<Engine>,
    reader: Option<BodyReader>,
    output: Option<Output>,
    failed: bool,
}

impl ResponseWriter {
    /// Sends `len` bytes of `file` from `offset` after what was written so far.
    pub fn send_file(&mut self, file: File, offset: u64, len: u64) -> io::Result<()> {
        self.wait_for_file()?;
        if let Some(output) = self.output.as_mut() {
            output.set_file(file, offset, len);
        }
        Ok(())
    }

    /// Queues `bytes` (a whole head, or head and body), without copying them.
    pub fn send_bytes(&mut self, bytes: Vec<u8>) -> io::Result<()> {
        if self.failed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.wait_for_file()?;
        if let Some(output) = self.output.as_mut() {
            output.push_vec(bytes);
        }
        Ok(())
    }

    /// Closes the connection after this response (`Connection: close` is the caller's to
    /// write).
    pub fn close_after(&mut self) {
        if let Some(output) = self.output.as_mut() {
            output.keep_alive = false;
        }
    }

    /// Calls `f` once the response is written whole (with the bytes written) or abandoned
    /// (with why). It may run on another thread, later.
    pub fn on_done(&mut self, f: impl FnOnce(io::Result<u64>) + Send + 'static) {
        if let Some(output) = self.output.as_mut() {
            output.on_done(Box::new(f));
        }
    }

    /// Ends the response: the engine writes the rest and then serves the connection's next
    /// request, or closes it.
    pub fn finish(mut self) {
        self.finish_inner();
    }

    fn finish_inner(&mut self) {
        let (Some(mut reader), Some(mut output)) = (self.reader.take(), self.output.take()) else {
            return;
        };
        // A writer dropped by a panic may have sent a head without its body, and one with
        // nothing at all written sent no response: either way the connection cannot go on.
        if std::thread::panicking() || output.is_empty() {
            self.failed = true;
        }
        if self.failed {
            output.complete(Err(io::Error::other("the response could not be written")));
            self.engine.close(&reader.conn);
            return;
        }
        self.engine.finish(&reader.conn, &mut reader.body, output);
    }

    /// Writes a pending file range out before more bytes are queued behind it.
    fn wait_for_file(&mut self) -> io::Result<()> {
        let (Some(reader), Some(output)) = (self.reader.as_ref(), self.output.as_mut()) else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        if output.has_file() || output.buffered() >= BUFFER_LIMIT {
            let stall = self.engine.limits.stall_timeout;
            if let Err(e) = output.push_waiting(reader.conn.fd(), stall) {
                self.failed = true;
                return Err(e);
            }
        }
        Ok(())
    }
}

impl Write for ResponseWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.wait_for_file()?;
        if let Some(output) = self.output.as_mut() {
            output.push_bytes(data);
        }
        Ok(data.len())
    }

    /// Pushes what the socket takes now, without waiting.
    fn flush(&mut self) -> io::Result<()> {
        if let (Some(reader), Some(output)) = (self.reader.as_ref(), self.output.as_mut())
            && let Err(e) = output.push(reader.conn.fd(), u64::MAX)
        {
            self.failed = true;
            return Err(e);
        }
        Ok(())
    }
}

impl Drop for ResponseWriter {
    fn drop(&mut self) {
        self.finish_inner();
    }
}
