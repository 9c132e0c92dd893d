//! The standalone server: a listening socket, a fixed pool of worker threads and a clean stop.
//!
//! The workers are the connection engine's threads (`crates/tiny_http`): each waits for a
//! connection event itself, reads and parses the request, and answers it on the same thread.
//! A response the client cannot take at once is left to the engine, which finishes it when the
//! socket is writable, so no download holds a worker. Uploads read a body from the network and
//! run on a thread of their own.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tiny_http::Request;

use crate::http::cache::Cache;
use crate::http::mount::{Mount, PendingUpload};
use crate::http::request::split_url;
use crate::http::response::Response;
use crate::http::service::not_found;
use crate::http::status;

/// When quiet connections and stalled transfers are cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A request head must arrive whole within this time.
    pub header: Duration,
    /// A keep-alive connection may sit between requests this long.
    pub idle: Duration,
    /// A response (or an upload's body) with no progress for this long is abandoned.
    pub stall: Duration,
}

impl Timeouts {
    /// The defaults of `--header-timeout`, `--idle-timeout` and `--stall-timeout`.
    pub const DEFAULT: Timeouts = Timeouts {
        header: Duration::from_secs(30),
        idle: Duration::from_secs(60),
        stall: Duration::from_secs(60),
    };
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts::DEFAULT
    }
}

/// Settings of the worker pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Worker threads answering requests.
    pub threads: usize,
    /// How long a stop waits for in-flight responses.
    pub grace: Duration,
    /// Answer `/metrics` and `/health` on this listener (before the mount's routes).
    pub status_endpoints: bool,
    /// Shut the listening socket down on stop; off for sockets systemd passed us.
    pub shutdown_listener: bool,
    pub timeouts: Timeouts,
    /// Open connections at most; more are closed at once.
    pub max_connections: usize,
}

impl PoolConfig {
    /// Default workers per CPU core (`--threads`): a worker blocked on a disk read leaves the
    /// core to another.
    pub const THREADS_PER_CORE: usize = 2;
    /// At least this many workers by default, however few the cores.
    pub const MIN_THREADS: usize = 4;
    /// How long a stop waits for in-flight responses by default.
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

    /// The default worker count: [`Self::THREADS_PER_CORE`] per core, at least
    /// [`Self::MIN_THREADS`].
    pub fn default_threads() -> usize {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        (cores * Self::THREADS_PER_CORE).max(Self::MIN_THREADS)
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            threads: Self::default_threads(),
            grace: Self::DEFAULT_GRACE,
            status_endpoints: true,
            shutdown_listener: true,
            timeouts: Timeouts::DEFAULT,
            // The engine's own limit (`tiny_http::Limits`), the one default not written here.
            max_connections: tiny_http::Limits::default().max_connections,
        }
    }
}

impl PoolConfig {
    fn limits(&self) -> tiny_http::Limits {
        tiny_http::Limits {
            header_timeout: self.timeouts.header,
            idle_timeout: self.timeouts.idle,
            stall_timeout: self.timeouts.stall,
            max_connections: self.max_connections,
            ..tiny_http::Limits::default()
        }
    }
}

/// Pending connections the kernel may queue before we accept them (capped by
/// `net.core.somaxconn`). std listens with 128, which a burst of clients overflows: their SYNs
/// are dropped and retried a second later.
const LISTEN_BACKLOG: i32 = 4096;

/// Binds `addr`; for the unspecified IPv6 address this also takes IPv4 (Linux's default), and
/// if the host has no IPv6 at all it falls back to `0.0.0.0`.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = match TcpListener::bind(addr) {
        Err(e)
            if addr.ip().is_unspecified()
                && addr.is_ipv6()
                && e.kind() == io::ErrorKind::AddrNotAvailable =>
        {
            TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], addr.port())))
        }
        other => other,
    }?;
    if let Err(e) = crate::os::net::set_backlog(&listener, LISTEN_BACKLOG) {
        log::warn!("could not raise the listen backlog: {e}");
    }
    Ok(listener)
}

/// A running server; [`Running::stop`] shuts it down.
pub struct Running {
    server: Arc<tiny_http::Server>,
    listener_fd: TcpListener,
    stopping: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    grace: Duration,
    local_addr: SocketAddr,
    shutdown_listener: bool,
}

/// Starts serving `mount` on `listener` with a pool of workers.
pub fn start(listener: TcpListener, mount: Mount, pool: PoolConfig) -> io::Result<Running> {
    let local_addr = listener.local_addr()?;
    let listener_fd = listener.try_clone()?;
    let server = Arc::new(tiny_http::Server::with_limits(listener, pool.limits())?);
    let stopping = Arc::new(AtomicBool::new(false));
    let mount = Arc::new(mount);
    let weak = Arc::downgrade(&server);
    mount
        .cache()
        .add_connection_gauge(move || weak.upgrade().map_or(0, |s| s.num_connections()));
    let workers = (0..pool.threads.max(1))
        .map(|i| {
            let worker = Worker {
                server: server.clone(),
                mount: mount.clone(),
                stopping: stopping.clone(),
                status_endpoints: pool.status_endpoints,
            };
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || worker.run())
        })
        .collect::<io::Result<Vec<_>>>()?;
    Ok(Running {
        server,
        listener_fd,
        stopping,
        workers,
        grace: pool.grace,
        local_addr,
        shutdown_listener: pool.shutdown_listener,
    })
}

impl Running {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets in-flight responses finish (up to the grace period), and returns.
    /// Connections close once their current response is out.
    pub fn stop(self) {
        let deadline = Instant::now() + self.grace;
        self.stopping.store(true, Ordering::SeqCst);
        self.server.stop_accepting();
        if self.shutdown_listener {
            // Refuses new connections now instead of leaving them in the backlog.
            crate::os::net::shut_down_reading(&self.listener_fd);
        }
        for w in self.workers {
            while !w.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        while self.server.requests_in_flight() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left = self.server.requests_in_flight();
        if left > 0 {
            log::warn!("stopping with {left} responses still running after the grace period");
        }
        self.server.unblock();
    }
}

struct Worker {
    server: Arc<tiny_http::Server>,
    mount: Arc<Mount>,
    stopping: Arc<AtomicBool>,
    /// Answer `/metrics` and `/health` before the mount's routes.
    status_endpoints: bool,
}

impl Worker {
    fn run(self) {
        loop {
            let stopping = self.stopping.load(Ordering::SeqCst);
            match self.server.recv_timeout(Duration::from_millis(200)) {
                Ok(Some(request)) => {
                    // A panic answering one request costs that connection (the request's drop
                    // answers 500 and closes it), not the worker.
                    let handled = catch_unwind(AssertUnwindSafe(|| self.handle(request, stopping)));
                    if handled.is_err() {
                        log::error!("a request handler panicked; its connection was closed");
                    }
                }
                // Quiet during a stop, and every response is out (the workers are also what
                // carries a parked download to its end).
                Ok(None) if stopping && self.server.requests_in_flight() == 0 => return,
                Ok(None) => {}
                Err(_) if self.stopping.load(Ordering::SeqCst) => return,
                Err(e) => {
                    log::error!("waiting for requests failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn handle(&self, request: Request, close: bool) {
        let outside = self
            .mount
            .serve(request, close, self.status_endpoints, run_upload);
        if let Some(request) = outside {
            crate::http::send::send_logged(request, not_found(), close, Instant::now(), |_| {});
        }
    }
}

/// Uploads wait for a body from the network: each runs on a thread of its own, off the workers.
fn run_upload(pending: PendingUpload) {
    let slot = Arc::new(Mutex::new(Some(pending)));
    let handed = slot.clone();
    let spawned = std::thread::Builder::new()
        .name("upload".into())
        .spawn(move || {
            if let Some(pending) = handed.lock().ok().and_then(|mut p| p.take()) {
                pending.run();
            }
        });
    if let Err(e) = spawned {
        // No thread to be had: answer on this worker (its body reads have deadlines).
        log::warn!("could not start an upload thread ({e}); uploading on a worker");
        if let Some(pending) = slot.lock().ok().and_then(|mut p| p.take()) {
            pending.run();
        }
    }
}

/// Serves only `/metrics` and `/health` on a listener of their own (e.g. a private address),
/// on one thread of the same engine; returns once the thread is started.
pub fn start_status_listener(
    listener: TcpListener,
    cache: Cache,
    timeouts: Timeouts,
) -> io::Result<()> {
    let pool = PoolConfig {
        timeouts,
        ..PoolConfig::default()
    };
    let server = tiny_http::Server::with_limits(listener, pool.limits())?;
    std::thread::Builder::new()
        .name("ops".into())
        .spawn(move || {
            loop {
                let request = match server.recv() {
                    Ok(request) => request,
                    Err(e) => {
                        log::error!("the metrics listener failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                let answered = catch_unwind(AssertUnwindSafe(|| {
                    let (path, _query) = split_url(request.url());
                    let response = status::response(&cache, path)
                        .unwrap_or_else(|| Response::text(404, "only /metrics and /health here"));
                    crate::http::send::send_logged(
                        request,
                        response,
                        false,
                        Instant::now(),
                        |_| {},
                    );
                }));
                if answered.is_err() {
                    log::error!("a metrics request panicked; its connection was closed");
                }
            }
        })?;
    Ok(())
}
