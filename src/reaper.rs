//! Closing connections that hold a thread without doing anything useful.
//!
//! tiny_http gives every connection a thread and sets no timeouts, so a client that opens a
//! connection and sends nothing (or one header byte a second) would keep that thread forever. The
//! reaper looks at the server's sockets every second and shuts down those that have been quiet too
//! long: `header` for a connection that has not finished a request yet, `idle` for a keep-alive
//! connection between requests. A connection with a request in progress is never touched here; a
//! transfer whose client stops reading is ended by the socket's send timeout instead (`stall`).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The three limits, each configurable on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A new connection must complete a request within this time.
    pub header: Duration,
    /// A keep-alive connection may sit between requests this long.
    pub idle: Duration,
    /// A response whose client reads nothing for this long is aborted.
    pub stall: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            stall: Duration::from_secs(60),
        }
    }
}

const SHARDS: usize = 16;
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What the workers tell the reaper about one client address.
#[derive(Debug, Clone, Copy)]
struct Activity {
    in_flight: u32,
    last_done: Instant,
}

/// Shared between the workers (which note requests) and the sweeping thread.
pub struct Reaper {
    shards: [Mutex<HashMap<SocketAddr, Activity>>; SHARDS],
    timeouts: Timeouts,
    /// The listening address whose connections are ours.
    listening: SocketAddr,
}

/// Held while a request is answered; dropping it marks the request done.
pub struct InFlight {
    reaper: Arc<Reaper>,
    peer: SocketAddr,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut shard = self.reaper.shard(&self.peer);
        if let Some(a) = shard.get_mut(&self.peer) {
            a.in_flight = a.in_flight.saturating_sub(1);
            a.last_done = Instant::now();
        }
    }
}

impl Reaper {
    /// A reaper for the connections accepted on the socket listening on `listening`.
    pub fn new(listening: SocketAddr, timeouts: Timeouts) -> Arc<Reaper> {
        Arc::new(Reaper {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            timeouts,
            listening,
        })
    }

    fn shard(&self, peer: &SocketAddr) -> MutexGuard<'_, HashMap<SocketAddr, Activity>> {
        let i = (peer.port() as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a request from `peer` as started.
    pub fn begin(self: &Arc<Self>, peer: SocketAddr) -> InFlight {
        let now = Instant::now();
        let mut shard = self.shard(&peer);
        let a = shard.entry(peer).or_insert(Activity {
            in_flight: 0,
            last_done: now,
        });
        a.in_flight += 1;
        drop(shard);
        InFlight {
            reaper: self.clone(),
            peer,
        }
    }

    /// Starts the sweeping thread; it runs for the life of the process.
    pub fn start(self: &Arc<Self>) {
        let reaper = self.clone();
        let spawned = std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || {
                let mut seen = HashMap::new();
                loop {
                    std::thread::sleep(SWEEP_EVERY);
                    reaper.sweep(&mut seen);
                }
            });
        if let Err(e) = spawned {
            log::error!("could not start the connection reaper: {e}; idle connections stay open");
        }
    }

    /// One pass over the process's sockets. `seen` remembers, per socket inode, when the socket
    /// was first seen and the peer's last finished request at that moment, so that a request on
    /// this connection can be told apart from one on an earlier connection from the same address.
    fn sweep(&self, seen: &mut HashMap<u64, (Instant, Option<Instant>)>) {
        let now = Instant::now();
        let mut alive = Vec::new();
        for (fd, inode) in sockets() {
            let Some(stream) = dup(fd) else { continue };
            let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
                continue;
            };
            if !self.accepted_on_our_listener(local) {
                continue;
            }
            alive.push(inode);
            let activity = self.shard(&peer).get(&peer).copied();
            let baseline = activity.map(|a| a.last_done);
            let (first, baseline) = *seen.entry(inode).or_insert((now, baseline));
            if activity.is_some_and(|a| a.in_flight > 0) {
                continue;
            }
            let (since, limit) = match activity {
                Some(a) if Some(a.last_done) != baseline => (a.last_done, self.timeouts.idle),
                _ => (first, self.timeouts.header),
            };
            if now.duration_since(since) > limit {
                log::debug!("closing quiet connection from {peer}");
                // SAFETY: shutdown(2) on our own duplicate; it ends the connection for all fds.
                unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_RDWR) };
            }
        }
        seen.retain(|inode, _| alive.contains(inode));
        self.forget_old_peers(now);
    }

    /// Whether a connection with this local address came through our listener, and not through
    /// another server in this process (systemd may pass `0.0.0.0:80` and `[::]:80` both).
    /// An IPv6 listener's IPv4 clients show up as IPv4-mapped IPv6 addresses.
    fn accepted_on_our_listener(&self, local: SocketAddr) -> bool {
        let ours = self.listening;
        local.port() == ours.port()
            && local.is_ipv6() == ours.is_ipv6()
            && (ours.ip().is_unspecified() || local.ip() == ours.ip())
    }

    /// Drops bookkeeping for addresses that have been done for a long time.
    fn forget_old_peers(&self, now: Instant) {
        let horizon = self.timeouts.idle.max(self.timeouts.header) * 2;
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, a| a.in_flight > 0 || now.duration_since(a.last_done) < horizon);
        }
    }
}

/// Descriptors of this process that are sockets, with each socket's inode.
fn sockets() -> Vec<(RawFd, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse::<RawFd>().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            let inode = target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?;
            Some((fd, inode.parse().ok()?))
        })
        .collect()
}

fn dup(fd: RawFd) -> Option<TcpStream> {
    // SAFETY: the descriptor is only borrowed for F_DUPFD_CLOEXEC; a closed one fails with
    // EBADF, and a reused number is caught by the address check on the duplicate.
    let owned = unsafe { BorrowedFd::borrow_raw(fd) }
        .try_clone_to_owned()
        .ok()?;
    Some(TcpStream::from(owned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    #[test]
    fn closes_quiet_connections_and_spares_busy_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let listening = listener.local_addr().unwrap();
        let port = listening.port();
        let short = Duration::from_millis(100);
        let timeouts = Timeouts {
            header: short,
            idle: short,
            stall: Duration::from_secs(1),
        };
        let reaper = Reaper::new(listening, timeouts);

        let mut quiet = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_quiet_server_side, _) = listener.accept().unwrap();
        let mut busy = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_busy_server_side, busy_peer) = listener.accept().unwrap();
        let _request = reaper.begin(busy_peer);

        let mut seen = HashMap::new();
        reaper.sweep(&mut seen);
        std::thread::sleep(Duration::from_millis(200));
        reaper.sweep(&mut seen);

        quiet
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(quiet.read(&mut buf).unwrap(), 0, "quiet connection closed");
        busy.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let open = busy.read(&mut buf).unwrap_err();
        assert_eq!(
            open.kind(),
            std::io::ErrorKind::WouldBlock,
            "busy connection kept"
        );
    }

    #[test]
    fn tells_its_own_listeners_connections_apart() {
        let v6_any = Reaper::new("[::]:80".parse().unwrap(), Timeouts::default());
        assert!(v6_any.accepted_on_our_listener("[::ffff:127.0.0.1]:80".parse().unwrap()));
        assert!(v6_any.accepted_on_our_listener("[::1]:80".parse().unwrap()));
        assert!(!v6_any.accepted_on_our_listener("127.0.0.1:80".parse().unwrap()));
        assert!(!v6_any.accepted_on_our_listener("[::1]:81".parse().unwrap()));
        let v4_one = Reaper::new("127.0.0.1:80".parse().unwrap(), Timeouts::default());
        assert!(v4_one.accepted_on_our_listener("127.0.0.1:80".parse().unwrap()));
        assert!(!v4_one.accepted_on_our_listener("127.0.0.2:80".parse().unwrap()));
        assert!(!v4_one.accepted_on_our_listener("[::ffff:127.0.0.1]:80".parse().unwrap()));
    }
}
