//! Command-line options of the `nix-binary-cache` binary.
//!
//! Every option also has an environment variable, so that a systemd unit needs no long command
//! line; a flag on the command line wins over its variable.

mod error;

use std::ffi::OsString;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

pub use error::Error;

/// The defaults the command line owns; the others are the layers' own (`server::Timeouts`,
/// `PoolConfig`, `UploadConfig`, `store/watch.rs`, `nix::cache_info`), and a test checks that
/// `HELP` states each of them.
pub const DEFAULT_PORT: u16 = 8080;
/// `::`: all IPv6 and (on Linux, by default) IPv4 addresses.
pub const DEFAULT_BIND: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
pub const DEFAULT_LOG_LEVEL: log::LevelFilter = log::LevelFilter::Info;

/// Parsed options for `serve` (the default command).
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub root: PathBuf,
    pub port: u16,
    pub bind: IpAddr,
    pub threads: Option<usize>,
    /// Open connections at most (`None`: the engine's default).
    pub max_connections: Option<usize>,
    pub priority: Option<u32>,
    /// `None`: the default of the watch mode (see `Config::rescan_interval`).
    pub rescan_interval: Option<Duration>,
    pub watch: nix_binary_cache::WatchMode,
    pub log_level: log::LevelFilter,
    /// Secret key files; every narinfo served is signed with each.
    pub sign_keys: Vec<PathBuf>,
    /// Enables uploads: one token per line.
    pub upload_token_file: Option<PathBuf>,
    pub max_upload_size: Option<u64>,
    pub max_uploads: Option<usize>,
    /// Where `/metrics` and `/health` are answered.
    pub status: StatusEndpoints,
    pub access_log: bool,
    pub timeouts: nix_binary_cache::server::Timeouts,
    /// Where to save when each narinfo was last served (for `gc`).
    pub state_file: Option<PathBuf>,
    /// Serve `nar/`, `log/`… that are links leading outside the cache.
    pub allow_linked_dirs: bool,
    /// Believe a proxy's `X-Forwarded-Proto`/`-Host` on the landing page.
    pub trust_proxy_headers: bool,
}

/// Where the status endpoints (`/metrics`, `/health`) live (`--metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusEndpoints {
    /// On the main port, next to the cache.
    Main,
    /// On their own address only (e.g. `127.0.0.1:9090`).
    Separate(std::net::SocketAddr),
    Off,
}

impl std::str::FromStr for StatusEndpoints {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "main" | "on" => Ok(StatusEndpoints::Main),
            "off" => Ok(StatusEndpoints::Off),
            addr => addr.parse().map(StatusEndpoints::Separate).map_err(|_| ()),
        }
    }
}

/// What the command line asked for.
#[derive(Debug, PartialEq)]
pub enum Command {
    Serve(Box<Options>),
    Help,
    Version,
    /// `verify --help`, `gc --help`: the text to print.
    SubHelp(&'static str),
    /// `verify PATH [--quick] [--allow-linked-dirs]`
    Verify {
        root: PathBuf,
        quick: bool,
        allow_linked_dirs: bool,
    },
    /// `gc PATH [--older-than DAYS] [--max-size SIZE] [--dry-run]`
    Gc {
        root: PathBuf,
        older_than_days: Option<f64>,
        max_size: Option<u64>,
        dry_run: bool,
        /// The servers' served-times files (several replicas: several files).
        state_files: Vec<PathBuf>,
    },
}

/// The served-times file in systemd's `StateDirectory=` (`$STATE_DIRECTORY`), the default of
/// both the server and `gc`; the unit's path otherwise for `gc`.
pub fn default_state_file(env: &impl Fn(&str) -> Option<String>, for_gc: bool) -> Option<PathBuf> {
    let file = nix_binary_cache::store::served_times::FILE_NAME;
    match env("STATE_DIRECTORY") {
        Some(dirs) => dirs.split(':').next().map(|d| PathBuf::from(d).join(file)),
        None if for_gc => Some(PathBuf::from("/var/lib/nix-binary-cache").join(file)),
        None => None,
    }
}

pub const HELP: &str = "\
nix-binary-cache: serve a Nix binary cache directory over HTTP

USAGE:
    nix-binary-cache [OPTIONS] PATH
    nix-binary-cache verify PATH [--quick] [--allow-linked-dirs]   (see verify --help)
    nix-binary-cache gc PATH [--older-than DAYS] [--max-size SIZE] [--dry-run]   (see gc --help)

PATH is a directory written by `nix copy --to file://PATH`.

OPTIONS:
    -p, --port PORT             TCP port to listen on [default: 8080]      (NIX_BINARY_CACHE_PORT)
        --bind ADDR             address to listen on [default: :: = all IPv6 and IPv4]
                                                                           (NIX_BINARY_CACHE_BIND)
        --threads N             worker threads [default: 2 x CPU cores, at least 4]
                                                                           (NIX_BINARY_CACHE_THREADS)
        --max-connections N     open client connections at most; more are closed at once
                                [default: 100000]          (NIX_BINARY_CACHE_MAX_CONNECTIONS)
        --priority N            Priority advertised in nix-cache-info (lower wins; cache.nixos.org
                                is 40) [default: the file's, else 40]     (NIX_BINARY_CACHE_PRIORITY)
        --watch MODE            how the narinfo index follows the directory: `inotify` (misses
                                answered from memory), `poll` (every miss looks at the disk; for
                                NFS and other shared filesystems), or `auto` (poll on NFS, CIFS,
                                FUSE, Ceph…, else inotify) [default: auto]  (NIX_BINARY_CACHE_WATCH)
        --rescan-interval SECS  rebuild the narinfo index every SECS seconds; 0 = never
                                [default: 3600 with inotify, 60 with poll]
                                                                    (NIX_BINARY_CACHE_RESCAN_INTERVAL)
        --log-level LEVEL       off, error, warn, info (one line per request), debug, trace
                                [default: info]                           (NIX_BINARY_CACHE_LOG_LEVEL)
        --sign-key FILE         sign every narinfo served with this secret key (as written by
                                `nix key generate-secret`); repeatable
                                                   (NIX_BINARY_CACHE_SIGN_KEY_FILE, comma-separated)
        --upload-token-file FILE
                                accept PUT uploads (`nix copy --to http://…`) from clients that
                                send one of the tokens in FILE as HTTP Basic password or Bearer
                                token; one `name:token` (the name is logged) or bare token per
                                line; SIGHUP re-reads it      (NIX_BINARY_CACHE_UPLOAD_TOKEN_FILE)
        --max-upload-size SIZE  largest NAR, log or listing accepted, e.g. 512M, 16G
                                [default: 16G]                 (NIX_BINARY_CACHE_MAX_UPLOAD_SIZE)
        --max-uploads N         uploads at once; more wait for a place (up to 120 s) [default: 8]
                                                                      (NIX_BINARY_CACHE_MAX_UPLOADS)
        --metrics WHERE         /metrics and /health: `main` (on PORT), `off`, or ADDR:PORT to
                                serve them only there [default: main]   (NIX_BINARY_CACHE_METRICS)
        --header-timeout SECS   close a connection that has not sent a whole request in SECS
                                [default: 30]                 (NIX_BINARY_CACHE_HEADER_TIMEOUT)
        --idle-timeout SECS     close a keep-alive connection idle for SECS [default: 60]
                                                                (NIX_BINARY_CACHE_IDLE_TIMEOUT)
        --stall-timeout SECS    abort a download whose client reads nothing, or an upload
                                whose client sends nothing, for SECS
                                [default: 60]                  (NIX_BINARY_CACHE_STALL_TIMEOUT)
        --access-log on|off     one log line per request [default: on] (NIX_BINARY_CACHE_ACCESS_LOG)
        --state-file FILE       save when each narinfo was last served here (every minute and at
                                exit), for `gc` [default: $STATE_DIRECTORY/served-times under
                                systemd's StateDirectory=, else none] (NIX_BINARY_CACHE_STATE_FILE)
        --allow-linked-dirs     serve nar/, log/… even when they are symbolic links leading
                                outside PATH (e.g. NARs on another disk); without it such files
                                get 404, and `verify` reports the link
                                                     (NIX_BINARY_CACHE_ALLOW_LINKED_DIRS=on|off)
        --trust-proxy-headers   the landing page's URLs follow X-Forwarded-Proto and
                                X-Forwarded-Host; only behind a proxy that sets them
                                                   (NIX_BINARY_CACHE_TRUST_PROXY_HEADERS=on|off)
    -h, --help                  print this help
    -V, --version               print the version

The directory may also be given as NIX_BINARY_CACHE_PATH.
";

/// A command-line mistake, printed as one line before exiting with status 2.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One option of `serve`: its flag, its environment twin, and how a value is taken. Every serve
/// option is here once; `HELP` describes each (a test checks that it names every flag and
/// variable) and [`Given::finish`] applies the defaults.
struct Opt {
    long: &'static str,
    short: Option<char>,
    env: &'static str,
    /// A switch takes no value on the command line (its variable takes on|off).
    switch: bool,
    /// Stores a value; `Src` says where it came from, for the message if it is invalid.
    set: fn(&mut Given, &str, Src) -> Result<(), UsageError>,
}

/// Where a value was given.
#[derive(Clone, Copy)]
enum Src<'a> {
    Flag,
    Env(&'a str),
}

/// The serve options in the order their variables are read (the first invalid one is reported).
const SERVE_OPTIONS: &[Opt] = &[
    Opt {
        long: "port",
        short: Some('p'),
        env: "NIX_BINARY_CACHE_PORT",
        switch: false,
        set: |g, t, s| set(&mut g.port, t, "port", s),
    },
    Opt {
        long: "bind",
        short: None,
        env: "NIX_BINARY_CACHE_BIND",
        switch: false,
        set: |g, t, s| set(&mut g.bind, t, "bind address", s),
    },
    Opt {
        long: "threads",
        short: None,
        env: "NIX_BINARY_CACHE_THREADS",
        switch: false,
        set: |g, t, s| set(&mut g.threads, t, "thread count", s),
    },
    Opt {
        long: "max-connections",
        short: None,
        env: "NIX_BINARY_CACHE_MAX_CONNECTIONS",
        switch: false,
        set: |g, t, s| set(&mut g.max_connections, t, "connection limit", s),
    },
    Opt {
        long: "priority",
        short: None,
        env: "NIX_BINARY_CACHE_PRIORITY",
        switch: false,
        set: |g, t, s| set(&mut g.priority, t, "priority", s),
    },
    Opt {
        long: "rescan-interval",
        short: None,
        env: "NIX_BINARY_CACHE_RESCAN_INTERVAL",
        switch: false,
        set: |g, t, s| set(&mut g.rescan, t, "rescan interval", s),
    },
    Opt {
        long: "log-level",
        short: None,
        env: "NIX_BINARY_CACHE_LOG_LEVEL",
        switch: false,
        set: |g, t, s| set(&mut g.log_level, t, "log level", s),
    },
    Opt {
        long: "watch",
        short: None,
        env: "NIX_BINARY_CACHE_WATCH",
        switch: false,
        set: |g, t, s| set(&mut g.watch, t, "watch mode (inotify, poll or auto)", s),
    },
    Opt {
        long: "sign-key",
        short: None,
        env: "NIX_BINARY_CACHE_SIGN_KEY_FILE",
        switch: false,
        // Repeatable; the variable is comma-separated. Flags replace the variable's list.
        set: |g, t, s| {
            match s {
                Src::Env(_) => {
                    g.sign_keys = t
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(PathBuf::from)
                        .collect()
                }
                Src::Flag => g.cli_sign_keys.push(PathBuf::from(t)),
            }
            Ok(())
        },
    },
    Opt {
        long: "upload-token-file",
        short: None,
        env: "NIX_BINARY_CACHE_UPLOAD_TOKEN_FILE",
        switch: false,
        set: |g, t, s| set(&mut g.upload_token_file, t, "token file", s),
    },
    Opt {
        long: "max-upload-size",
        short: None,
        env: "NIX_BINARY_CACHE_MAX_UPLOAD_SIZE",
        switch: false,
        set: |g, t, s| {
            let size = parse_size(t).map_err(|e| match s {
                Src::Env(var) => UsageError(format!("{e} in {var}")),
                Src::Flag => UsageError(e),
            })?;
            g.max_upload_size = Some(size);
            Ok(())
        },
    },
    Opt {
        long: "max-uploads",
        short: None,
        env: "NIX_BINARY_CACHE_MAX_UPLOADS",
        switch: false,
        set: |g, t, s| set(&mut g.max_uploads, t, "upload count", s),
    },
    Opt {
        long: "header-timeout",
        short: None,
        env: "NIX_BINARY_CACHE_HEADER_TIMEOUT",
        switch: false,
        set: |g, t, s| set(&mut g.header_timeout, t, "timeout", s),
    },
    Opt {
        long: "idle-timeout",
        short: None,
        env: "NIX_BINARY_CACHE_IDLE_TIMEOUT",
        switch: false,
        set: |g, t, s| set(&mut g.idle_timeout, t, "timeout", s),
    },
    Opt {
        long: "stall-timeout",
        short: None,
        env: "NIX_BINARY_CACHE_STALL_TIMEOUT",
        switch: false,
        set: |g, t, s| set(&mut g.stall_timeout, t, "timeout", s),
    },
    Opt {
        long: "metrics",
        short: None,
        env: "NIX_BINARY_CACHE_METRICS",
        switch: false,
        set: |g, t, s| {
            set(
                &mut g.status,
                t,
                "metrics setting (main, off or ADDR:PORT)",
                s,
            )
        },
    },
    Opt {
        long: "access-log",
        short: None,
        env: "NIX_BINARY_CACHE_ACCESS_LOG",
        switch: false,
        set: |g, t, s| set(&mut g.access_log, t, "access log setting (on or off)", s),
    },
    Opt {
        long: "allow-linked-dirs",
        short: None,
        env: "NIX_BINARY_CACHE_ALLOW_LINKED_DIRS",
        switch: true,
        set: |g, t, s| {
            let what = "linked directories setting (on or off)";
            set(&mut g.allow_linked_dirs, t, what, s)
        },
    },
    Opt {
        long: "trust-proxy-headers",
        short: None,
        env: "NIX_BINARY_CACHE_TRUST_PROXY_HEADERS",
        switch: true,
        set: |g, t, s| {
            let what = "proxy headers setting (on or off)";
            set(&mut g.trust_proxy_headers, t, what, s)
        },
    },
    Opt {
        long: "state-file",
        short: None,
        env: "NIX_BINARY_CACHE_STATE_FILE",
        switch: false,
        set: |g, t, s| set(&mut g.state_file, t, "state file", s),
    },
];

/// Parses `text` into `slot`, or says what is wrong with it and where it was given.
fn set<T: std::str::FromStr>(
    slot: &mut Option<T>,
    text: &str,
    what: &str,
    src: Src,
) -> Result<(), UsageError> {
    let value = text.parse().map_err(|_| match src {
        Src::Flag => UsageError(format!("invalid {what}: {text:?}{}", hint(what))),
        Src::Env(var) => UsageError(format!("invalid {what} in {var}: {text:?}{}", hint(what))),
    })?;
    *slot = Some(value);
    Ok(())
}

/// The serve options as given, before defaults.
#[derive(Default)]
struct Given {
    port: Option<u16>,
    bind: Option<IpAddr>,
    threads: Option<usize>,
    max_connections: Option<usize>,
    priority: Option<u32>,
    rescan: Option<u64>,
    log_level: Option<log::LevelFilter>,
    watch: Option<nix_binary_cache::WatchMode>,
    sign_keys: Vec<PathBuf>,
    cli_sign_keys: Vec<PathBuf>,
    upload_token_file: Option<PathBuf>,
    max_upload_size: Option<u64>,
    max_uploads: Option<usize>,
    header_timeout: Option<u64>,
    idle_timeout: Option<u64>,
    stall_timeout: Option<u64>,
    status: Option<StatusEndpoints>,
    access_log: Option<Switch>,
    allow_linked_dirs: Option<Switch>,
    trust_proxy_headers: Option<Switch>,
    state_file: Option<PathBuf>,
}

/// Parses arguments (without the program name), with `env` looking up variables.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Command, UsageError> {
    use lexopt::prelude::*;

    let mut args = args.into_iter().peekable();
    match args.peek().and_then(|a| a.to_str()) {
        Some("verify") => return parse_verify(args.skip(1)),
        Some("gc") => return parse_gc(args.skip(1), &env),
        _ => {}
    }
    let mut given = Given::default();
    for opt in SERVE_OPTIONS {
        if let Some(text) = env(opt.env) {
            (opt.set)(&mut given, &text, Src::Env(opt.env))?;
        }
    }
    if given.state_file.is_none() {
        given.state_file = default_state_file(&env, false);
    }

    let mut root: Option<PathBuf> = None;
    let mut parser = lexopt::Parser::from_args(args);
    let err = |e: lexopt::Error| usage(e, "--help");
    while let Some(arg) = parser.next().map_err(err)? {
        let opt = match arg {
            Long(name) => SERVE_OPTIONS.iter().find(|o| o.long == name),
            Short(c) => SERVE_OPTIONS.iter().find(|o| o.short == Some(c)),
            Value(_) => None,
        };
        if let Some(opt) = opt {
            let text = if opt.switch {
                "on".to_string()
            } else {
                let raw = parser.value().map_err(|e| UsageError(e.to_string()))?;
                raw.to_string_lossy().into_owned()
            };
            (opt.set)(&mut given, &text, Src::Flag)?;
            continue;
        }
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Value(v) if root.is_none() => root = Some(PathBuf::from(v)),
            Value(v) => {
                return Err(UsageError(format!(
                    "unexpected argument {v:?}: only one PATH is served"
                )));
            }
            _ => return Err(err(arg.unexpected())),
        }
    }

    let root = root.or_else(|| env("NIX_BINARY_CACHE_PATH").map(PathBuf::from));
    let root = root.ok_or_else(|| {
        UsageError("missing PATH: the cache directory to serve (try --help)".into())
    })?;
    given.finish(root).map(|o| Command::Serve(Box::new(o)))
}

impl Given {
    /// Checks the values and fills in the defaults.
    fn finish(self, root: PathBuf) -> Result<Options, UsageError> {
        if self.max_connections == Some(0) {
            return Err(UsageError("--max-connections must be at least 1".into()));
        }
        if self.threads == Some(0) {
            return Err(UsageError("--threads must be at least 1".into()));
        }
        if self.max_uploads == Some(0) {
            return Err(UsageError("--max-uploads must be at least 1".into()));
        }
        let sign_keys = if self.cli_sign_keys.is_empty() {
            self.sign_keys
        } else {
            self.cli_sign_keys
        };
        let d = nix_binary_cache::server::Timeouts::DEFAULT;
        let secs = |v: Option<u64>, default: Duration| {
            v.map_or(default, |s| Duration::from_secs(s.max(1)))
        };
        Ok(Options {
            root,
            port: self.port.unwrap_or(DEFAULT_PORT),
            bind: self.bind.unwrap_or(DEFAULT_BIND),
            threads: self.threads,
            max_connections: self.max_connections,
            priority: self.priority,
            rescan_interval: self.rescan.map(Duration::from_secs),
            watch: self.watch.unwrap_or_default(),
            log_level: self.log_level.unwrap_or(DEFAULT_LOG_LEVEL),
            sign_keys,
            upload_token_file: self.upload_token_file,
            max_upload_size: self.max_upload_size,
            max_uploads: self.max_uploads,
            status: self.status.unwrap_or(StatusEndpoints::Main),
            access_log: self.access_log.is_none_or(|s| s.0),
            timeouts: nix_binary_cache::server::Timeouts {
                header: secs(self.header_timeout, d.header),
                idle: secs(self.idle_timeout, d.idle),
                stall: secs(self.stall_timeout, d.stall),
            },
            state_file: self.state_file,
            allow_linked_dirs: self.allow_linked_dirs.is_some_and(|s| s.0),
            trust_proxy_headers: self.trust_proxy_headers.is_some_and(|s| s.0),
        })
    }
}

/// `on` / `off` (also `true`/`false`, `1`/`0`).
struct Switch(bool);

impl std::str::FromStr for Switch {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "on" | "true" | "1" | "yes" => Ok(Switch(true)),
            "off" | "false" | "0" | "no" => Ok(Switch(false)),
            _ => Err(()),
        }
    }
}

pub const VERIFY_HELP: &str = "\
nix-binary-cache verify: check a cache directory the way clients will use it

USAGE:
    nix-binary-cache verify PATH [--quick] [--allow-linked-dirs]

Every narinfo must parse, its NAR must exist with the right size and (unless --quick) hash,
every closure must be complete; stray NARs and temporaries are listed. Exit status 0: clean,
1: problems found (one line each), 2: verify could not run.

OPTIONS:
        --quick              do not hash NARs (sizes only)
        --allow-linked-dirs  accept nar/, log/… that are symbolic links leading outside PATH, as
                             the server does with the same flag (without it, both refuse them)
    -h, --help               print this help
";

pub const GC_HELP: &str = "\
nix-binary-cache gc: remove old or least recently used paths without breaking a closure

USAGE:
    nix-binary-cache gc PATH [--older-than DAYS] [--max-size SIZE] [--dry-run] [--state-file FILE]

At least one of --older-than and --max-size is needed. Referrers of what is removed are removed
too; narinfos go first, then listings and NARs.

OPTIONS:
        --older-than DAYS  remove paths not served for DAYS days (fractions allowed: 0.5 = 12 h)
        --max-size SIZE    then remove least recently served paths until the cache takes at most
                           SIZE (e.g. 500G)
        --dry-run          print the plan, remove nothing
        --state-file FILE  when each narinfo was last served, as the server saved it (repeatable:
                           one per replica; the latest time wins)
                           [default: $STATE_DIRECTORY/served-times, else
                           /var/lib/nix-binary-cache/served-times]. Without one, gc falls back to
                           file access and modification times, and says so.
    -h, --help             print this help
";

fn parse_verify(args: impl IntoIterator<Item = OsString>) -> Result<Command, UsageError> {
    use lexopt::prelude::*;
    let (mut root, mut quick, mut allow_linked_dirs) = (None, false, false);
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next().map_err(|e| usage(e, "verify --help"))? {
        match arg {
            Long("quick") => quick = true,
            Long("allow-linked-dirs") => allow_linked_dirs = true,
            Short('h') | Long("help") => return Ok(Command::SubHelp(VERIFY_HELP)),
            Value(v) if root.is_none() => root = Some(PathBuf::from(v)),
            _ => return Err(usage(arg.unexpected(), "verify --help")),
        }
    }
    let root = root.ok_or_else(|| {
        UsageError("verify: missing PATH (usage: verify PATH [--quick]; see verify --help)".into())
    })?;
    Ok(Command::Verify {
        root,
        quick,
        allow_linked_dirs,
    })
}

fn parse_gc(
    args: impl IntoIterator<Item = OsString>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Command, UsageError> {
    use lexopt::prelude::*;
    let (mut root, mut older_than_days, mut max_size, mut dry_run) = (None, None, None, false);
    let mut state_files = Vec::new();
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next().map_err(|e| usage(e, "gc --help"))? {
        match arg {
            Long("older-than") => {
                let days: f64 = value(&mut parser, "number of days (e.g. 30 or 0.5)")?;
                if !(days.is_finite() && days >= 0.0) {
                    return Err(UsageError(format!(
                        "invalid number of days {days}: --older-than takes days >= 0 (e.g. 30 or 0.5)"
                    )));
                }
                older_than_days = Some(days);
            }
            Long("max-size") => {
                let text: String = value(&mut parser, "size")?;
                max_size = Some(parse_size(&text).map_err(UsageError)?);
            }
            Long("dry-run") => dry_run = true,
            Long("state-file") => state_files.push(value(&mut parser, "state file")?),
            Short('h') | Long("help") => return Ok(Command::SubHelp(GC_HELP)),
            Value(v) if root.is_none() => root = Some(PathBuf::from(v)),
            _ => return Err(usage(arg.unexpected(), "gc --help")),
        }
    }
    let root = root.ok_or_else(|| {
        UsageError(
            "gc: missing PATH (usage: gc PATH [--older-than DAYS] [--max-size SIZE] [--dry-run]; \
             see gc --help)"
                .into(),
        )
    })?;
    if older_than_days.is_none() && max_size.is_none() {
        return Err(UsageError(
            "gc needs --older-than DAYS or --max-size SIZE (or both)".into(),
        ));
    }
    if state_files.is_empty() {
        state_files.extend(default_state_file(env, true));
    }
    Ok(Command::Gc {
        root,
        older_than_days,
        max_size,
        dry_run,
        state_files,
    })
}

/// A lexopt error (unknown option, missing value…) with a pointer to the help.
fn usage(e: lexopt::Error, help: &str) -> UsageError {
    UsageError(format!("{e} (see {help})"))
}

/// A byte count with an optional binary suffix: `1048576`, `512K`, `512M`, `16G`, `1T`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => {
                    return Err(format!(
                        "invalid size {text:?}: use bytes or a K, M, G or T suffix"
                    ));
                }
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("invalid size {text:?}: use bytes or a K, M, G or T suffix"))
}

fn value<T: std::str::FromStr>(parser: &mut lexopt::Parser, what: &str) -> Result<T, UsageError> {
    let raw = parser.value().map_err(|e| UsageError(e.to_string()))?;
    let text = raw.to_string_lossy();
    text.parse()
        .map_err(|_| UsageError(format!("invalid {what}: {text:?}{}", hint(what))))
}

/// What a valid value looks like, for the options where the bare "invalid" is not enough.
fn hint(what: &str) -> &'static str {
    match what {
        "port" => " (a port is a number from 1 to 65535; 0 picks a free one)",
        "bind address" => {
            " (an IP address is needed, e.g. 127.0.0.1, ::1, 0.0.0.0 or ::; host names are not \
             resolved)"
        }
        "log level" => " (one of off, error, warn, info, debug, trace)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(OsString::from), |_| None)
    }

    #[test]
    fn the_help_names_every_flag_and_variable_of_the_table() {
        for opt in SERVE_OPTIONS {
            assert!(HELP.contains(&format!("--{} ", opt.long)), "--{}", opt.long);
            assert!(HELP.contains(opt.env), "{}", opt.env);
            if let Some(c) = opt.short {
                assert!(HELP.contains(&format!("-{c}, --{}", opt.long)), "-{c}");
            }
        }
        let longs: std::collections::HashSet<_> = SERVE_OPTIONS.iter().map(|o| o.long).collect();
        assert_eq!(longs.len(), SERVE_OPTIONS.len(), "a flag is listed twice");
    }

    /// The help text of `--flag`, up to the next option, on one line (wrapping undone).
    fn help_of(flag: &str) -> String {
        let start = HELP
            .find(&format!("--{flag} "))
            .unwrap_or_else(|| panic!("--{flag}"));
        let rest = &HELP[start..];
        let end = rest
            .match_indices('\n')
            .map(|(i, _)| i + 1)
            .find(|&i| {
                let line = &rest[i..];
                let text = line.trim_start();
                line.len() - text.len() <= 8 && (text.starts_with('-') || text.is_empty())
            })
            .unwrap_or(rest.len());
        rest[..end].split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// Each default is a constant of the layer that owns it; the help, written out by hand,
    /// must state that same value.
    #[test]
    fn the_help_states_the_defaults_the_code_uses() {
        use nix_binary_cache::UploadConfig;
        use nix_binary_cache::server::{PoolConfig, Timeouts};
        use nix_binary_cache::store::{INOTIFY_RESCAN, POLL_RESCAN};

        assert_eq!(
            UploadConfig::DEFAULT_MAX_BODY % (1 << 30),
            0,
            "the help says nG"
        );
        assert_eq!(DEFAULT_BIND.to_string(), "::");
        assert_eq!(
            nix_binary_cache::WatchMode::default(),
            "auto".parse().unwrap()
        );
        let level = DEFAULT_LOG_LEVEL.as_str().to_ascii_lowercase();
        let priority = nix_binary_cache::nix::cache_info::DEFAULT_PRIORITY;
        let t = Timeouts::DEFAULT;
        let cases = [
            ("port", format!("[default: {DEFAULT_PORT}]")),
            (
                "bind",
                format!("[default: {DEFAULT_BIND} = all IPv6 and IPv4]"),
            ),
            (
                "threads",
                format!(
                    "[default: {} x CPU cores, at least {}]",
                    PoolConfig::THREADS_PER_CORE,
                    PoolConfig::MIN_THREADS
                ),
            ),
            (
                "max-connections",
                format!("[default: {}]", PoolConfig::default().max_connections),
            ),
            (
                "priority",
                format!("[default: the file's, else {priority}]"),
            ),
            ("watch", "[default: auto]".to_string()),
            (
                "rescan-interval",
                format!(
                    "[default: {} with inotify, {} with poll]",
                    INOTIFY_RESCAN.as_secs(),
                    POLL_RESCAN.as_secs()
                ),
            ),
            ("log-level", format!("[default: {level}]")),
            (
                "max-upload-size",
                format!("[default: {}G]", UploadConfig::DEFAULT_MAX_BODY >> 30),
            ),
            (
                "max-uploads",
                format!(
                    "(up to {} s) [default: {}]",
                    UploadConfig::DEFAULT_MAX_WAIT.as_secs(),
                    UploadConfig::DEFAULT_MAX_CONCURRENT
                ),
            ),
            (
                "header-timeout",
                format!("[default: {}]", t.header.as_secs()),
            ),
            ("idle-timeout", format!("[default: {}]", t.idle.as_secs())),
            ("stall-timeout", format!("[default: {}]", t.stall.as_secs())),
            ("metrics", "[default: main]".to_string()),
            ("access-log", "[default: on]".to_string()),
        ];
        for (flag, default) in cases {
            let help = help_of(flag);
            assert!(
                help.contains(&default),
                "--{flag}: {help:?} should say {default:?}"
            );
        }
    }

    #[test]
    fn defaults() {
        let Command::Serve(o) = run(&["/srv/cache"]).unwrap() else {
            panic!()
        };
        assert_eq!(o.port, 8080);
        assert_eq!(o.bind, IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        assert_eq!(o.rescan_interval, None);
        assert_eq!(o.watch, nix_binary_cache::WatchMode::Auto);
        assert_eq!(o.log_level, log::LevelFilter::Info);
        assert_eq!(o.threads, None);
        assert_eq!(o.status, StatusEndpoints::Main);
        assert!(o.access_log);
    }

    #[test]
    fn every_flag() {
        let cmd = run(&[
            "-p",
            "9000",
            "--bind",
            "127.0.0.1",
            "--threads",
            "3",
            "--priority",
            "10",
            "--rescan-interval",
            "5",
            "--log-level",
            "warn",
            "--watch",
            "poll",
            "/c",
        ])
        .unwrap();
        let Command::Serve(o) = cmd else { panic!() };
        assert_eq!((o.port, o.threads, o.priority), (9000, Some(3), Some(10)));
        assert_eq!(o.bind, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(o.rescan_interval, Some(Duration::from_secs(5)));
        assert_eq!(o.watch, nix_binary_cache::WatchMode::Poll);
        assert_eq!(o.log_level, log::LevelFilter::Warn);
        assert_eq!(run(&["--port=1", "/c"]).map(|_| ()), Ok(()));
        assert_eq!(run(&["-h"]), Ok(Command::Help));
        assert_eq!(run(&["-V"]), Ok(Command::Version));
    }

    #[test]
    fn upload_and_signing_options() {
        let cmd = run(&[
            "--sign-key",
            "/k1",
            "--sign-key",
            "/k2",
            "--upload-token-file",
            "/t",
            "--max-upload-size",
            "512M",
            "--max-uploads",
            "3",
            "/c",
        ])
        .unwrap();
        let Command::Serve(o) = cmd else { panic!() };
        assert_eq!(
            o.sign_keys,
            vec![PathBuf::from("/k1"), PathBuf::from("/k2")]
        );
        assert_eq!(o.upload_token_file, Some(PathBuf::from("/t")));
        assert_eq!(
            (o.max_upload_size, o.max_uploads),
            (Some(512 << 20), Some(3))
        );
        let env = |k: &str| (k == "NIX_BINARY_CACHE_SIGN_KEY_FILE").then(|| "/a,/b".to_string());
        let Command::Serve(o) = parse([OsString::from("/c")], env).unwrap() else {
            panic!()
        };
        assert_eq!(o.sign_keys, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(parse_size("16G"), Ok(16 << 30));
        let cmd = run(&["--metrics", "127.0.0.1:9090", "--access-log", "off", "/c"]).unwrap();
        let Command::Serve(o) = cmd else { panic!() };
        assert_eq!(
            o.status,
            StatusEndpoints::Separate("127.0.0.1:9090".parse().unwrap())
        );
        assert!(!o.access_log);
        let Command::Serve(o) = run(&["--metrics", "off", "/c"]).unwrap() else {
            panic!()
        };
        assert_eq!(o.status, StatusEndpoints::Off);
        assert_eq!(parse_size("100"), Ok(100));
        assert!(
            parse_size("12X").is_err()
                && parse_size("G").is_err()
                && parse_size("99999999T").is_err()
        );
    }

    #[test]
    fn subcommands() {
        assert_eq!(
            run(&["verify", "/c", "--quick"]),
            Ok(Command::Verify {
                root: "/c".into(),
                quick: true,
                allow_linked_dirs: false
            })
        );
        assert_eq!(
            run(&[
                "gc",
                "/c",
                "--older-than",
                "30",
                "--max-size",
                "1G",
                "--dry-run",
                "--state-file",
                "/s1",
                "--state-file",
                "/s2"
            ]),
            Ok(Command::Gc {
                root: "/c".into(),
                older_than_days: Some(30.0),
                max_size: Some(1 << 30),
                dry_run: true,
                state_files: vec!["/s1".into(), "/s2".into()],
            })
        );
        // Fractional days; the state file defaults to systemd's StateDirectory=, else the unit's.
        let Ok(Command::Gc {
            older_than_days,
            state_files,
            ..
        }) = run(&["gc", "/c", "--older-than", "0.5"])
        else {
            panic!()
        };
        assert_eq!(older_than_days, Some(0.5));
        assert_eq!(
            state_files,
            vec![PathBuf::from("/var/lib/nix-binary-cache/served-times")]
        );
        let env = |k: &str| (k == "STATE_DIRECTORY").then(|| "/st:/other".to_string());
        let args = ["gc", "/c", "--max-size", "1G"].map(OsString::from);
        let Ok(Command::Gc { state_files, .. }) = parse(args, env) else {
            panic!()
        };
        assert_eq!(state_files, vec![PathBuf::from("/st/served-times")]);
        let Ok(Command::Serve(o)) = parse([OsString::from("/c")], env) else {
            panic!()
        };
        assert_eq!(o.state_file, Some(PathBuf::from("/st/served-times")));
        assert!(!o.allow_linked_dirs);
        assert_eq!(
            run(&["verify", "--help"]),
            Ok(Command::SubHelp(VERIFY_HELP))
        );
        assert_eq!(run(&["gc", "-h"]), Ok(Command::SubHelp(GC_HELP)));
        assert!(
            run(&["gc", "/c"])
                .unwrap_err()
                .0
                .contains("needs --older-than")
        );
        assert!(run(&["verify"]).unwrap_err().0.contains("missing PATH"));
    }

    #[test]
    fn mistakes_are_named() {
        for (args, says) in [
            (&["--port", "x", "/c"][..], "invalid port"),
            (&["--port", "70000", "/c"][..], "invalid port"),
            (&["-p", "99999", "/c"][..], "from 1 to 65535"),
            (
                &["--bind", "localhost", "/c"][..],
                "an IP address is needed",
            ),
            (
                &["--log-level", "loud", "/c"][..],
                "off, error, warn, info, debug, trace",
            ),
            (&["--frobnicate", "/c"][..], "see --help"),
            (&["verify", "/c", "--frobnicate"][..], "see verify --help"),
            (&["gc", "/c", "--frobnicate"][..], "see gc --help"),
            (&["gc", "/c", "--older-than", "-1"][..], "days >= 0"),
            (&["gc", "/c", "--older-than", "soon"][..], "e.g. 30 or 0.5"),
            (&[][..], "missing PATH"),
            (&["/a", "/b"][..], "only one PATH"),
            (&["--threads", "0", "/c"][..], "at least 1"),
            (&["--log-level", "loud", "/c"][..], "invalid log level"),
            (&["--watch", "fanotify", "/c"][..], "invalid watch mode"),
            (&["--max-upload-size", "lots", "/c"][..], "invalid size"),
            (&["--max-uploads", "0", "/c"][..], "at least 1"),
            (
                &["--metrics", "sometimes", "/c"][..],
                "invalid metrics setting",
            ),
            (
                &["--access-log", "maybe", "/c"][..],
                "invalid access log setting",
            ),
        ] {
            let e = run(args).unwrap_err();
            assert!(e.0.contains(says), "{args:?}: {e}");
        }
    }

    #[test]
    fn environment_twins_and_precedence() {
        let env = |k: &str| match k {
            "NIX_BINARY_CACHE_PATH" => Some("/env".to_string()),
            "NIX_BINARY_CACHE_PORT" => Some("7000".to_string()),
            _ => None,
        };
        let Command::Serve(o) = parse(Vec::<OsString>::new(), env).unwrap() else {
            panic!()
        };
        assert_eq!((o.root, o.port), (PathBuf::from("/env"), 7000));
        let args = ["-p", "7001", "/cli"].map(OsString::from);
        let Command::Serve(o) = parse(args, env).unwrap() else {
            panic!()
        };
        assert_eq!((o.root, o.port), (PathBuf::from("/cli"), 7001));
        let bad = |k: &str| (k == "NIX_BINARY_CACHE_PORT").then(|| "http".to_string());
        let e = parse([OsString::from("/c")], bad).unwrap_err();
        assert!(e.0.contains("NIX_BINARY_CACHE_PORT"), "{e}");
    }
}
