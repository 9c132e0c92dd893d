//! tiny_http 0.12's API (servers, requests, responses, headers) over an epoll connection
//! engine: no thread per connection, strict and bounded HTTP/1.1 parsing, and deadlines on
//! every wait. See `ENGINE.md` for the design and what differs from upstream tiny_http.
//!
//! ```no_run
//! let server = tiny_http::Server::http("127.0.0.1:8080").unwrap();
//! // Any number of threads may call `recv`: each waits for a connection event itself and
//! // returns the request to answer on the same thread.
//! for request in server.incoming_requests() {
//!     let _ = request.respond(tiny_http::Response::from_string("hello"));
//! }
//! ```
#![deny(rust_2018_idioms)]
#![deny(unsafe_code)]

mod common;
mod engine;
mod listen;
mod request;
mod response;

use std::error::Error;
use std::io;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

pub use common::{HTTPVersion, Header, HeaderField, Method, StatusCode};
pub use engine::Limits;
pub use listen::{ConfigListenAddr, ListenAddr, Listener};
pub use request::{Request, ResponseWriter};
pub use response::{Response, ResponseBox};

use engine::Engine;

/// Entry points for the fuzz targets in `fuzz/`; not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::engine::fuzz_request as request;
}

/// Anything readable and writable: what [`Request::upgrade`] hands back.
pub trait ReadWrite: io::Read + io::Write {}
impl<T> ReadWrite for T where T: io::Read + io::Write {}

/// A listening server. Dropping it stops accepting; requests already handed out are still
/// answered.
pub struct Server {
    engine: Arc<Engine>,
    listening_addr: ListenAddr,
}

/// The iterator of [`Server::incoming_requests`].
pub struct IncomingRequests<'a> {
    server: &'a Server,
}

/// Represents the parameters required to create a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The addresses to try to listen to.
    pub addr: ConfigListenAddr,
    /// Must be `None`: this build serves plain HTTP only.
    pub ssl: Option<SslConfig>,
}

/// Kept for API compatibility; TLS is not supported (terminate it in front of the server).
#[derive(Debug, Clone)]
pub struct SslConfig {
    pub certificate: Vec<u8>,
    pub private_key: Vec<u8>,
}

type BoxError = Box<dyn Error + Send + Sync + 'static>;

impl Server {
    /// A server on `addr` with the default [`Limits`].
    pub fn http<A: ToSocketAddrs>(addr: A) -> Result<Server, BoxError> {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::from_socket_addrs(addr)?,
            ssl: None,
        })
    }

    /// A server on a Unix socket at `path`.
    pub fn http_unix(path: &std::path::Path) -> Result<Server, BoxError> {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::unix_from_path(path),
            ssl: None,
        })
    }

    pub fn new(config: ServerConfig) -> Result<Server, BoxError> {
        let listener = config.addr.bind()?;
        Self::from_listener(listener, config.ssl)
    }

    /// A server on a listener made elsewhere (systemd, a test), with the default [`Limits`].
    pub fn from_listener<L: Into<Listener>>(
        listener: L,
        ssl: Option<SslConfig>,
    ) -> Result<Server, BoxError> {
        if ssl.is_some() {
            return Err("TLS is not supported by this server; terminate it in front".into());
        }
        Ok(Self::with_limits(listener, Limits::default())?)
    }

    /// A server on `listener` with the given limits and deadlines.
    pub fn with_limits<L: Into<Listener>>(listener: L, limits: Limits) -> io::Result<Server> {
        let listener = listener.into();
        let listening_addr = listener.local_addr()?;
        let engine = Engine::start(listener, limits)?;
        Ok(Server {
            engine,
            listening_addr,
        })
    }

    /// Returns an iterator over the incoming requests; it ends when the server is unblocked.
    pub fn incoming_requests(&self) -> IncomingRequests<'_> {
        IncomingRequests { server: self }
    }

    pub fn server_addr(&self) -> ListenAddr {
        self.listening_addr.clone()
    }

    /// Open client connections.
    pub fn num_connections(&self) -> usize {
        self.engine.open_connections()
    }

    /// Requests handed out whose response is not completely written yet.
    pub fn requests_in_flight(&self) -> usize {
        self.engine
            .in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Blocks until the next request.
    pub fn recv(&self) -> io::Result<Request> {
        loop {
            if let Some(request) = self.next(None)? {
                return Ok(request);
            }
        }
    }

    /// Like [`Server::recv`], for at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> io::Result<Option<Request>> {
        self.next(Some(timeout))
    }

    /// Like [`Server::recv`], without waiting.
    pub fn try_recv(&self) -> io::Result<Option<Request>> {
        self.next(Some(Duration::ZERO))
    }

    fn next(&self, timeout: Option<Duration>) -> io::Result<Option<Request>> {
        let incoming = self.engine.next(timeout)?;
        Ok(incoming.map(|i| Request::new(self.engine.clone(), i)))
    }

    /// Stops accepting connections; each open one closes once its current response is out.
    pub fn stop_accepting(&self) {
        self.engine.stop_accepting();
    }

    /// Makes every thread in `recv` (now and later) return an error, for a clean stop.
    pub fn unblock(&self) {
        self.engine.unblock();
    }
}

impl Iterator for IncomingRequests<'_> {
    type Item = Request;
    fn next(&mut self) -> Option<Request> {
        self.server.recv().ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.engine.stop_accepting();
        self.engine.unblock();
        if let ListenAddr::Unix(addr) = &self.listening_addr
            && let Some(path) = addr.as_pathname()
        {
            let _ = std::fs::remove_file(path);
        }
    }
}
