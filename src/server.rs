//! The standalone server: a listening socket, a fixed pool of worker threads and a clean stop.
//!
//! tiny_http reads requests on its own per-connection threads and queues them; our workers take
//! them off the queue and answer. Large file bodies are handed to a short-lived transfer thread
//! so that a slow download never holds a worker that narinfo requests are waiting for.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tiny_http::Request;

use crate::cache::Cache;
use crate::metrics::Kind;
use crate::mount::Mount;
use crate::reaper::{Reaper, Timeouts};
use crate::response::{Body, Response};

/// Bodies at least this large go out on a transfer thread.
const HANDOFF_BYTES: u64 = 256 * 1024;

/// Settings of the worker pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Worker threads answering requests.
    pub threads: usize,
    /// Most file transfers running on their own threads at once; past it workers send inline.
    pub max_transfers: usize,
    /// How long a stop waits for in-flight responses.
    pub grace: Duration,
    /// Answer `/metrics` and `/health` on this listener (before the mount's routes).
    pub ops_endpoints: bool,
    /// Shut the listening socket down on stop; off for sockets systemd passed us.
    pub shutdown_listener: bool,
    /// When quiet connections and stalled transfers are cut off.
    pub timeouts: Timeouts,
}

impl Default for PoolConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        PoolConfig {
            threads: (cores * 2).max(4),
            max_transfers: 1024,
            grace: Duration::from_secs(10),
            ops_endpoints: true,
            shutdown_listener: true,
            timeouts: Timeouts::default(),
        }
    }
}

/// Pending connections the kernel may queue before we accept them (capped by
/// `net.core.somaxconn`). std listens with 128, which a burst of clients overflows: their SYNs
/// are dropped and retried a second later.
const LISTEN_BACKLOG: libc::c_int = 4096;

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
    // SAFETY: listen(2) again on our own listening socket only changes its backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        log::warn!(
            "could not raise the listen backlog: {}",
            io::Error::last_os_error()
        );
    }
    Ok(listener)
}

/// A running server; [`Running::stop`] shuts it down.
pub struct Running {
    server: Arc<tiny_http::Server>,
    listener_fd: TcpListener,
    stopping: Arc<AtomicBool>,
    transfers: Arc<AtomicUsize>,
    workers: Vec<JoinHandle<()>>,
    grace: Duration,
    local_addr: SocketAddr,
    shutdown_listener: bool,
}

/// Starts serving `mount` on `listener` with a pool of workers.
pub fn start(listener: TcpListener, mount: Mount, pool: PoolConfig) -> io::Result<Running> {
    let local_addr = listener.local_addr()?;
    let listener_fd = listener.try_clone()?;
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let server = Arc::new(server);
    let stopping = Arc::new(AtomicBool::new(false));
    let transfers = Arc::new(AtomicUsize::new(0));
    let mount = Arc::new(mount);
    let reaper = Reaper::new(local_addr, pool.timeouts);
    reaper.start();
    crate::socket::set_stall_timeout(pool.timeouts.stall);
    let workers = (0..pool.threads.max(1))
        .map(|i| {
            let worker = Worker {
                server: server.clone(),
                mount: mount.clone(),
                stopping: stopping.clone(),
                transfers: transfers.clone(),
                max_transfers: pool.max_transfers,
                ops_endpoints: pool.ops_endpoints,
                reaper: reaper.clone(),
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
        transfers,
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

    /// Stops accepting, lets queued and in-flight responses finish (up to the grace period),
    /// and returns. Responses sent meanwhile carry `Connection: close`.
    pub fn stop(self) {
        let deadline = Instant::now() + self.grace;
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes tiny_http's accept() with an error, which ends its accept loop.
        if self.shutdown_listener {
            // SAFETY: plain shutdown(2) on a descriptor we own.
            unsafe { libc::shutdown(self.listener_fd.as_raw_fd(), libc::SHUT_RD) };
        }
        for w in self.workers {
            while !w.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        while self.transfers.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left = self.transfers.load(Ordering::SeqCst);
        if left > 0 {
            log::warn!("stopping with {left} transfers still running after the grace period");
        }
        drop(self.server);
    }
}

struct Worker {
    server: Arc<tiny_http::Server>,
    mount: Arc<Mount>,
    stopping: Arc<AtomicBool>,
    transfers: Arc<AtomicUsize>,
    max_transfers: usize,
    ops_endpoints: bool,
    reaper: Arc<Reaper>,
}

impl Worker {
    fn run(self) {
        loop {
            let stopping = self.stopping.load(Ordering::SeqCst);
            match self.server.recv_timeout(Duration::from_millis(200)) {
                Ok(Some(request)) => self.handle(request, stopping),
                // Idle: during a stop, the queue is drained, so this worker is done.
                Ok(None) if stopping => return,
                Ok(None) => {}
                Err(e) if self.stopping.load(Ordering::SeqCst) => {
                    log::debug!("listener closed: {e}");
                }
                Err(e) => {
                    log::error!("accepting connections failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn handle(&self, request: Request, close: bool) {
        // Marks the connection busy for the reaper until the response is written.
        let busy = request.remote_addr().map(|peer| self.reaper.begin(*peer));
        if self.ops_endpoints
            && let Some(response) = ops_response(self.mount.cache(), request.url())
        {
            crate::send::send_logged(request, response, close, Instant::now());
            return;
        }
        let Some((cache, path)) = self.mount.route(request.url()) else {
            let response = crate::Response::text(404, "not in this cache")
                .header("Cache-Control", "public, max-age=5");
            crate::send::send_logged(request, response, close, Instant::now());
            return;
        };
        if request.method() == &tiny_http::Method::Put && cache.accepts_uploads() {
            // Uploads read a body from the network: keep them off the workers.
            let (cache, path) = (cache.clone(), path.into_owned());
            let spawned = std::thread::Builder::new()
                .name("upload".into())
                .spawn(move || {
                    cache.serve(request, &path, close);
                    drop(busy);
                });
            if let Err(e) = spawned {
                log::error!("could not start an upload thread: {e}");
            }
            return;
        }
        let start = cache.request_started();
        let kind = Kind::of(&path);
        let response = cache.answer(request.method(), &path, request.headers());
        let big = matches!(&response.body, Body::File { len, .. } if *len >= HANDOFF_BYTES);
        if big && self.try_reserve_transfer() {
            let transfers = self.transfers.clone();
            let cache = cache.clone();
            let spawned = std::thread::Builder::new()
                .name("transfer".into())
                .spawn(move || {
                    cache.respond(request, response, close, start, kind);
                    transfers.fetch_sub(1, Ordering::SeqCst);
                    drop(busy);
                });
            if let Err(e) = spawned {
                // The request went down with the closure, which makes tiny_http answer 500.
                self.transfers.fetch_sub(1, Ordering::SeqCst);
                log::error!("could not start a transfer thread: {e}");
            }
            return;
        }
        cache.respond(request, response, close, start, kind);
    }

    fn try_reserve_transfer(&self) -> bool {
        self.transfers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_transfers).then_some(n + 1)
            })
            .is_ok()
    }
}

/// `/metrics` (Prometheus) and `/health` (200 once the index is built, which `Cache::open`
/// finished before anything listens, and while the cache directory can be read; 503 when it
/// cannot); `None` for any other path.
pub fn ops_response(cache: &Cache, url: &str) -> Option<Response> {
    let path = url.split_once('?').map_or(url, |(p, _)| p);
    match path {
        "/metrics" => Some(
            Response::text(200, cache.metrics_text().trim_end())
                .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                .header("Cache-Control", "no-store"),
        ),
        "/health" => Some(
            match cache.unhealthy() {
                None => Response::text(200, &format!("ok: {} narinfos indexed", cache.len())),
                // A load balancer should send clients elsewhere.
                Some(why) => Response::text(503, &format!("unhealthy: {why}")),
            }
            .header("Cache-Control", "no-store"),
        ),
        _ => None,
    }
}

/// Serves only `/metrics` and `/health` on a listener of their own (e.g. a private address),
/// on one thread; returns once the thread is started.
pub fn start_ops_listener(listener: TcpListener, cache: Cache) -> io::Result<()> {
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| io::Error::other(e.to_string()))?;
    std::thread::Builder::new()
        .name("ops".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let response = ops_response(&cache, request.url())
                    .unwrap_or_else(|| Response::text(404, "only /metrics and /health here"));
                crate::send::send_logged(request, response, false, Instant::now());
            }
        })?;
    Ok(())
}
