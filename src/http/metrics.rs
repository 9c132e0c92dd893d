//! Counters for `GET /metrics`, in Prometheus' text format.
//!
//! Plain atomics in fixed tables: recording a request costs a few relaxed additions and never
//! takes a lock, so metrics cannot slow the hot path down.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::os::process_stats;

/// What a request was for, as a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    CacheInfo,
    NarInfo,
    Nar,
    Listing,
    Log,
    Realisation,
    DebugInfo,
    Landing,
    Other,
}

const KINDS: [(Kind, &str); 9] = [
    (Kind::CacheInfo, "nix_cache_info"),
    (Kind::NarInfo, "narinfo"),
    (Kind::Nar, "nar"),
    (Kind::Listing, "listing"),
    (Kind::Log, "log"),
    (Kind::Realisation, "realisation"),
    (Kind::DebugInfo, "debuginfo"),
    (Kind::Landing, "landing"),
    (Kind::Other, "other"),
];

/// Status codes counted individually; anything else is counted as "other".
const STATUSES: [u16; 18] = [
    200, 206, 304, 400, 401, 404, 405, 408, 409, 411, 413, 414, 415, 416, 500, 503, 507, 0,
];

impl Kind {
    /// Classifies a path inside the cache (query string allowed), as the service does.
    #[cfg(test)]
    pub fn of(url: &str) -> Kind {
        let (path, _query) = crate::http::request::split_url(url);
        let decoded = crate::nix::layout::decode(path);
        crate::http::service::Target::of(path, &decoded).kind()
    }

    fn index(self) -> usize {
        KINDS
            .iter()
            .position(|(k, _)| *k == self)
            .unwrap_or(KINDS.len() - 1)
    }
}

fn status_index(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|&s| s == status)
        .unwrap_or(STATUSES.len() - 1)
}

/// Upper bounds of the request-latency histogram buckets, in seconds (plus `+Inf`).
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How long requests took, for one route kind: cumulative-free bucket counts, sum and count.
struct Latency {
    /// `buckets[i]`: requests that took at most `LATENCY_BUCKETS[i]` and more than the bound
    /// before it; the last one counts the rest (`+Inf`).
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

/// All counters of one cache.
pub struct Metrics {
    latency: [Latency; KINDS.len()],
    requests: [[AtomicU64; STATUSES.len()]; KINDS.len()],
    bytes_sent: [AtomicU64; KINDS.len()],
    in_flight: AtomicI64,
    /// Uploads stored and their bytes, by the name of the token that sent them.
    uploads_by_token: Mutex<BTreeMap<Arc<str>, (u64, u64)>>,
    uploads_refused: [AtomicU64; STATUSES.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            latency: std::array::from_fn(|_| Latency::default()),
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            bytes_sent: std::array::from_fn(|_| AtomicU64::new(0)),
            in_flight: AtomicI64::new(0),
            uploads_by_token: Mutex::new(BTreeMap::new()),
            uploads_refused: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Figures that live elsewhere (the index), passed in when rendering.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub index_entries: usize,
    pub nar_bytes: u64,
    pub last_scan_seconds: f64,
    pub last_scan_unix: u64,
    /// narinfo files the last scan skipped (malformed, unreadable).
    pub skipped_narinfos: usize,
    pub open_connections: usize,
    /// The first scan has ended.
    pub index_complete: bool,
    /// Every file the first scan listed has been read.
    pub index_read: bool,
    /// Misses are answered from memory (inotify watching, map in step).
    pub index_watched: bool,
    /// inotify mode (else poll).
    pub watch_inotify: bool,
    pub watch_events: u64,
    pub watch_overflows: u64,
    pub watch_losses: u64,
    pub rescans: u64,
}

impl Metrics {
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    pub fn request_finished(&self, kind: Kind, status: u16, body_bytes: u64) {
        self.in_flight.fetch_sub(1, Relaxed);
        self.requests[kind.index()][status_index(status)].fetch_add(1, Relaxed);
        self.bytes_sent[kind.index()].fetch_add(body_bytes, Relaxed);
    }

    /// An upload stored for the token named `token` (uploads are rare: a lock is fine).
    /// Records how long a request of `kind` took (from its arrival to its answer being handed
    /// over); a few relaxed additions.
    pub fn observe_latency(&self, kind: Kind, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        let l = &self.latency[kind.index()];
        l.buckets[bucket].fetch_add(1, Relaxed);
        l.sum_micros.fetch_add(took.as_micros() as u64, Relaxed);
    }

    pub fn upload_stored(&self, token: &Arc<str>, bytes: u64) {
        let mut map = self
            .uploads_by_token
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let counts = map.entry(token.clone()).or_default();
        counts.0 += 1;
        counts.1 += bytes;
    }

    pub fn upload_refused(&self, status: u16) {
        self.uploads_refused[status_index(status)].fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self, g: Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let status_label = |i: usize| match STATUSES[i] {
            0 => "other".to_string(),
            s => s.to_string(),
        };
        out.push_str("# HELP nbc_requests_total Requests answered, by route kind and status.\n");
        out.push_str("# TYPE nbc_requests_total counter\n");
        for (k, (_, kind)) in KINDS.iter().enumerate() {
            for s in 0..STATUSES.len() {
                let n = self.requests[k][s].load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "nbc_requests_total{{kind=\"{kind}\",status=\"{}\"}} {n}",
                        status_label(s)
                    );
                }
            }
        }
        out.push_str(
            "# HELP nbc_request_duration_seconds Time from a request's arrival until its response \
             was written whole (or abandoned), by route kind.\n\
             # TYPE nbc_request_duration_seconds histogram\n",
        );
        for (k, (_, kind)) in KINDS.iter().enumerate() {
            let l = &self.latency[k];
            let mut cumulative = 0;
            for (i, bucket) in l.buckets.iter().enumerate() {
                cumulative += bucket.load(Relaxed);
                let le = LATENCY_BUCKETS
                    .get(i)
                    .map_or("+Inf".to_string(), |b| b.to_string());
                let _ = writeln!(
                    out,
                    "nbc_request_duration_seconds_bucket{{kind=\"{kind}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let sum = l.sum_micros.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "nbc_request_duration_seconds_sum{{kind=\"{kind}\"}} {sum:.6}\n\
                 nbc_request_duration_seconds_count{{kind=\"{kind}\"}} {cumulative}"
            );
        }
        out.push_str("# HELP nbc_sent_bytes_total Response body bytes sent, by route kind.\n");
        out.push_str("# TYPE nbc_sent_bytes_total counter\n");
        for (k, (_, kind)) in KINDS.iter().enumerate() {
            let _ = writeln!(
                out,
                "nbc_sent_bytes_total{{kind=\"{kind}\"}} {}",
                self.bytes_sent[k].load(Relaxed)
            );
        }
        let gauge = |out: &mut String, name: &str, help: &str, value: String| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            );
        };
        gauge(
            &mut out,
            "nbc_requests_in_flight",
            "Requests being answered now.",
            self.in_flight.load(Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "nbc_connections_open",
            "Client connections open now.",
            g.open_connections.to_string(),
        );
        gauge(
            &mut out,
            "nbc_index_entries",
            "narinfo files in the index.",
            g.index_entries.to_string(),
        );
        gauge(
            &mut out,
            "nbc_index_nar_bytes",
            "Sum of FileSize over indexed narinfos.",
            g.nar_bytes.to_string(),
        );
        gauge(
            &mut out,
            "nbc_last_rescan_duration_seconds",
            "How long the last index scan took.",
            format!("{:.6}", g.last_scan_seconds),
        );
        gauge(
            &mut out,
            "nbc_last_rescan_timestamp_seconds",
            "When the last index scan finished (Unix time).",
            g.last_scan_unix.to_string(),
        );
        gauge(
            &mut out,
            "nbc_index_skipped_narinfos",
            "narinfo files the last scan skipped (malformed or unreadable; the log names them).",
            g.skipped_narinfos.to_string(),
        );
        gauge(
            &mut out,
            "nbc_index_complete",
            "1 once the first scan of the cache directory has ended.",
            (g.index_complete as u8).to_string(),
        );
        gauge(
            &mut out,
            "nbc_index_read",
            "1 once every narinfo file the first scan listed has been read into memory.",
            (g.index_read as u8).to_string(),
        );
        gauge(
            &mut out,
            "nbc_index_watched",
            "1 while narinfo misses are answered from memory (inotify in step); 0: from disk.",
            (g.index_watched as u8).to_string(),
        );
        gauge(
            &mut out,
            "nbc_watch_inotify",
            "1 in inotify mode, 0 in poll mode (--watch).",
            (g.watch_inotify as u8).to_string(),
        );
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
            );
        };
        counter(
            &mut out,
            "nbc_watch_events_total",
            "narinfo changes reported by inotify and applied to the index.",
            g.watch_events,
        );
        counter(
            &mut out,
            "nbc_watch_overflows_total",
            "inotify queue overflows (each one causes a full rescan).",
            g.watch_overflows,
        );
        counter(
            &mut out,
            "nbc_watch_losses_total",
            "Times the cache directory could not be watched or stopped being watched.",
            g.watch_losses,
        );
        counter(
            &mut out,
            "nbc_rescans_total",
            "Full scans of the cache directory (the first one included).",
            g.rescans,
        );
        let process = process_stats::read();
        let figures = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                process.resident_bytes,
            ),
            (
                "process_open_fds",
                "Open file descriptors (connections, files being sent, listeners).",
                process.open_fds,
            ),
            (
                "process_threads",
                "Threads of the process.",
                process.threads,
            ),
        ];
        for (name, help, value) in figures {
            if let Some(v) = value {
                gauge(&mut out, name, help, v.to_string());
            }
        }
        gauge(
            &mut out,
            "process_start_time_seconds",
            "When the server started, in Unix seconds.",
            format!("{:.3}", process.start_unix),
        );
        let uploads = self
            .uploads_by_token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        out.push_str("# HELP nbc_uploads_total Uploads stored, by token name.\n# TYPE nbc_uploads_total counter\n");
        for (token, (n, _)) in &uploads {
            let _ = writeln!(out, "nbc_uploads_total{{token=\"{token}\"}} {n}");
        }
        out.push_str("# HELP nbc_upload_bytes_total Bytes of stored uploads, by token name.\n# TYPE nbc_upload_bytes_total counter\n");
        for (token, (_, bytes)) in &uploads {
            let _ = writeln!(out, "nbc_upload_bytes_total{{token=\"{token}\"}} {bytes}");
        }
        out.push_str("# HELP nbc_upload_rejections_total Uploads refused, by status.\n# TYPE nbc_upload_rejections_total counter\n");
        for s in 0..STATUSES.len() {
            let n = self.uploads_refused[s].load(Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "nbc_upload_rejections_total{{status=\"{}\"}} {n}",
                    status_label(s)
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind_and_status() {
        let m = Metrics::default();
        m.request_started();
        m.request_finished(Kind::of("/nar/0000.nar.xz"), 200, 1000);
        m.request_started();
        m.request_finished(
            Kind::of("/00000000000000000000000000000000.narinfo"),
            404,
            18,
        );
        m.request_started();
        m.request_finished(Kind::of("/../x"), 400, 5);
        m.request_started();
        m.upload_refused(401);
        m.upload_stored(&Arc::from("ci"), 10);
        m.upload_stored(&Arc::from("ci"), 5);
        let text = m.render(Gauges {
            index_entries: 3,
            ..Gauges::default()
        });
        assert!(
            text.contains("nbc_requests_total{kind=\"nar\",status=\"200\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("nbc_requests_total{kind=\"narinfo\",status=\"404\"} 1\n"));
        assert!(text.contains("nbc_requests_total{kind=\"other\",status=\"400\"} 1\n"));
        assert!(text.contains("nbc_sent_bytes_total{kind=\"nar\"} 1000\n"));
        assert!(text.contains("nbc_requests_in_flight 1\n"));
        assert!(text.contains("nbc_index_entries 3\n"));
        assert!(text.contains("nbc_upload_rejections_total{status=\"401\"} 1\n"));
        assert!(
            text.contains("nbc_uploads_total{token=\"ci\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("nbc_upload_bytes_total{token=\"ci\"} 15\n"));
        assert_eq!(Kind::of("/"), Kind::Landing);
        assert!(text.contains("nbc_index_skipped_narinfos 0\n"));
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("process_open_fds ") && text.contains("process_threads "));
    }

    #[test]
    fn latency_histogram_is_cumulative_per_kind() {
        let m = Metrics::default();
        m.observe_latency(Kind::NarInfo, Duration::from_micros(300));
        m.observe_latency(Kind::NarInfo, Duration::from_millis(3));
        m.observe_latency(Kind::NarInfo, Duration::from_secs(60));
        m.observe_latency(Kind::Nar, Duration::from_millis(30));
        let text = m.render(Gauges::default());
        for line in [
            "nbc_request_duration_seconds_bucket{kind=\"narinfo\",le=\"0.0005\"} 1\n",
            "nbc_request_duration_seconds_bucket{kind=\"narinfo\",le=\"0.0025\"} 1\n",
            "nbc_request_duration_seconds_bucket{kind=\"narinfo\",le=\"0.005\"} 2\n",
            "nbc_request_duration_seconds_bucket{kind=\"narinfo\",le=\"10\"} 2\n",
            "nbc_request_duration_seconds_bucket{kind=\"narinfo\",le=\"+Inf\"} 3\n",
            "nbc_request_duration_seconds_count{kind=\"narinfo\"} 3\n",
            "nbc_request_duration_seconds_sum{kind=\"narinfo\"} 60.003300\n",
            "nbc_request_duration_seconds_bucket{kind=\"nar\",le=\"0.025\"} 0\n",
            "nbc_request_duration_seconds_bucket{kind=\"nar\",le=\"0.05\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        assert_eq!(Kind::of("/nix-cache-info?x=1"), Kind::CacheInfo);
    }
}
