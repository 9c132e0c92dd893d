//! `nix-binary-cache`: the command-line front of the library.

#![deny(unsafe_code)]

mod cli;

use std::net::SocketAddr;
use std::process::ExitCode;

use cli::Error;
use nix_binary_cache::nix::signing::{KeyError, SigningKey};
use nix_binary_cache::os::{SIGHUP, StopSignals};
use nix_binary_cache::server::{self, PoolConfig};
use nix_binary_cache::store;
use nix_binary_cache::{Cache, Config, Mount, Tokens, UploadConfig};

fn main() -> ExitCode {
    let command = cli::parse(std::env::args_os().skip(1), |k| std::env::var(k).ok());
    match command {
        Ok(cli::Command::Help) => {
            print!("{}", cli::HELP);
            ExitCode::SUCCESS
        }
        Ok(cli::Command::Version) => {
            println!("nix-binary-cache {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(cli::Command::Serve(options)) => match serve(*options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Ok(cli::Command::SubHelp(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(cli::Command::Verify {
            root,
            quick,
            allow_linked_dirs,
        }) => run_verify(&root, quick, allow_linked_dirs),
        Ok(cli::Command::Gc {
            root,
            older_than_days,
            max_size,
            dry_run,
            state_files,
        }) => run_gc(&root, older_than_days, max_size, dry_run, &state_files),
        Err(e) => fail(e.into()),
    }
}

/// `verify`: exit 0 when the cache is sound, 1 when problems were found, 2 when it cannot run.
fn run_verify(root: &std::path::Path, quick: bool, allow_linked_dirs: bool) -> ExitCode {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    let mut last_draw = std::time::Instant::now();
    let mut progress = |p: nix_binary_cache::ops::verify::Progress| {
        if tty && last_draw.elapsed().as_millis() > 200 {
            eprint!(
                "\rhashing NARs: {}/{} ({} MiB)   ",
                p.nars_done,
                p.nars_total,
                p.bytes_done >> 20
            );
            last_draw = std::time::Instant::now();
        }
    };
    let options = nix_binary_cache::ops::verify::VerifyOptions {
        quick,
        allow_linked_dirs,
    };
    match nix_binary_cache::ops::verify::verify(root, &options, &mut progress) {
        Ok(report) => {
            if tty {
                eprintln!();
            }
            for problem in &report.problems {
                println!("{problem}");
            }
            println!(
                "{} narinfos checked, {} NARs hashed ({} bytes), {} problems",
                report.narinfos,
                report.nars_hashed,
                report.bytes_hashed,
                report.problems.len()
            );
            if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => fail(Error::Command {
            command: "verify",
            root: root.to_path_buf(),
            error,
        }),
    }
}

/// `gc`: prints what goes (and with `--dry-run` stops there).
fn run_gc(
    root: &std::path::Path,
    days: Option<f64>,
    max_size: Option<u64>,
    dry_run: bool,
    state_files: &[std::path::PathBuf],
) -> ExitCode {
    use nix_binary_cache::ops::gc;
    let policy = gc::GcPolicy {
        older_than: days.map(|d| std::time::Duration::from_secs_f64(d * 86400.0)),
        max_size,
    };
    let failed = |error| {
        fail(Error::Command {
            command: "gc",
            root: root.to_path_buf(),
            error,
        })
    };
    let served = match served_times(state_files) {
        Ok(served) => served,
        Err(e) => return failed(e),
    };
    let plan = match gc::plan_with(root, &policy, std::time::SystemTime::now(), served.as_ref()) {
        Ok(plan) => plan,
        Err(e) => return failed(e),
    };
    match plan.recency {
        gc::Recency::Served { known } => println!(
            "last use: when the server last served each narinfo ({known} paths recorded in {})",
            state_files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        gc::Recency::FileTimes => println!(
            "last use: file access and modification times, as no served-times file exists ({}); \
             access times are coarse and never move on a read-only mount: give the server a \
             --state-file (the unit's StateDirectory= does) and gc the same file",
            state_files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
    for p in &plan.paths {
        println!("remove {} ({} bytes): {}", p.store_path, p.bytes, p.reason);
    }
    for s in &plan.strays {
        println!("remove stray {} ({} bytes)", s.path.display(), s.bytes);
    }
    println!(
        "{} paths and {} stray files, {} bytes freed ({} -> {} bytes)",
        plan.paths.len(),
        plan.strays.len(),
        plan.bytes,
        plan.size_before,
        plan.size_after
    );
    if dry_run {
        println!("dry run: nothing removed");
        return ExitCode::SUCCESS;
    }
    match gc::execute(root, &plan) {
        Ok(out) => {
            println!(
                "removed {} narinfos, {} NARs, {} listings: {} bytes",
                out.narinfos, out.nars, out.listings, out.bytes
            );
            ExitCode::SUCCESS
        }
        Err(e) => failed(e),
    }
}

/// The servers' records of when they served each narinfo, merged; `None` if no file exists.
fn served_times(
    files: &[std::path::PathBuf],
) -> std::io::Result<Option<nix_binary_cache::store::served_times::ServedTimes>> {
    let mut merged: Option<nix_binary_cache::store::served_times::ServedTimes> = None;
    for file in files {
        if let Some(times) = nix_binary_cache::store::served_times::ServedTimes::load(file)? {
            merged.get_or_insert_default().merge(times);
        }
    }
    Ok(merged)
}

/// One line on stderr and exit status 2: what went wrong and, where possible, what to do.
fn fail(error: Error) -> ExitCode {
    eprintln!("nix-binary-cache: error: {error}");
    error.exit_code()
}

fn serve(options: cli::Options) -> Result<(), Error> {
    init_logging(options.log_level, options.access_log);
    // Block SIGINT/SIGTERM/SIGHUP before any thread starts, so every thread inherits the mask
    // and only `signals.wait()` below receives them.
    let signals = StopSignals::block();

    nix_binary_cache::os::raise_open_file_limit();
    let listeners = listeners(&options)?;
    let from_systemd = listeners.from_systemd;

    let mut config = Config::new(&options.root);
    config.priority = options.priority;
    config.rescan_interval = options.rescan_interval;
    config.watch = options.watch;
    config.sign_keys = load_keys(&options.sign_keys)?;
    config.uploads = upload_config(&options)?;
    config.served_times_file = options.state_file.clone();
    config.allow_linked_dirs = options.allow_linked_dirs;
    config.trust_proxy_headers = options.trust_proxy_headers;
    let cache = Cache::open(config)?;

    let mut pool = PoolConfig::default();
    if let Some(n) = options.threads {
        pool.threads = n;
    }
    let threads = pool.threads;
    // The socket is systemd's too: shutting it down would break it for the next start.
    pool.shutdown_listener = !from_systemd;
    pool.status_endpoints = options.status == cli::StatusEndpoints::Main;
    pool.timeouts = options.timeouts;
    if let Some(n) = options.max_connections {
        pool.max_connections = n;
    }
    if let cli::StatusEndpoints::Separate(addr) = options.status {
        let listener = server::bind(addr).map_err(|error| Error::MetricsListen { addr, error })?;
        server::start_status_listener(listener, cache.clone(), options.timeouts)?;
        log::info!("/metrics and /health on http://{addr}");
    }
    let reloadable = cache.clone();
    let mount = Mount::new("/", cache.clone());
    let mut running = Vec::new();
    for listener in listeners.sockets {
        let server = server::start(listener, mount.clone(), pool.clone());
        let server = server?;
        log::info!(
            "serving {} on http://{} with {threads} workers",
            options.root.display(),
            server.local_addr()
        );
        running.push(server);
    }
    // Whoever started us on port 0 (a supervisor, the tests) learns the address here.
    let addrs: Vec<SocketAddr> = running.iter().map(|s| s.local_addr()).collect();
    notify(&nix_binary_cache::os::systemd::listening(&addrs));

    // Requests are answered from now on (from the disk while the first scan runs); systemd
    // hears "ready" once the index is complete.
    let indexed = cache.clone();
    let readiness = std::thread::Builder::new()
        .name("readiness".into())
        .spawn(move || {
            indexed.wait_until_indexed();
            notify(&format!(
                "READY=1\nSTATUS=serving {} narinfos ({})",
                indexed.len(),
                match indexed.watch_mode() {
                    nix_binary_cache::WatchMode::Poll => "polling the disk",
                    _ => "watching with inotify",
                }
            ));
            indexed.wait_until_read();
            notify(nix_binary_cache::os::systemd::INDEXED);
        });
    if let Err(e) = readiness {
        log::warn!("could not start the readiness thread ({e}); telling systemd now");
        notify("READY=1");
    }
    let signal = loop {
        match signals.wait() {
            SIGHUP => reload(&options, &reloadable),
            stop => break stop,
        }
    };
    notify("STOPPING=1");
    log::info!("received signal {signal}, finishing in-flight requests");
    std::thread::scope(|s| {
        for server in running {
            s.spawn(move || server.stop());
        }
    });
    reloadable.save_served_times();
    log::info!("stopped");
    Ok(())
}

/// `SIGHUP`: reads the upload tokens and signing keys again. A file that cannot be used keeps
/// what was loaded before, and the log says why.
fn reload(options: &cli::Options, cache: &Cache) {
    notify("RELOADING=1");
    log::info!("received SIGHUP, reloading upload tokens and signing keys");
    if let (Some(tokens), Some(file)) = (cache.upload_tokens(), &options.upload_token_file) {
        match tokens.reload() {
            Ok(n) => log::info!("{n} upload tokens loaded from {}", file.display()),
            Err(e) => log::warn!("{e}; keeping the previous upload tokens"),
        }
    }
    match load_keys(&options.sign_keys) {
        Ok(keys) => match cache.set_sign_keys(keys) {
            Ok(stats) => log::info!(
                "signing keys reloaded; {} narinfos are signed with them when next served",
                stats.entries
            ),
            Err(e) => log::warn!("signing keys reloaded, but the index rescan failed: {e}"),
        },
        Err(e) => log::warn!("{e}; keeping the previous signing keys"),
    }
    notify("READY=1");
}

/// The sockets to serve: every one systemd passed (a `.socket` unit may list several
/// `ListenStream=`), or the one from `--bind`/`--port`.
struct Listeners {
    sockets: Vec<std::net::TcpListener>,
    from_systemd: bool,
}

fn listeners(options: &cli::Options) -> Result<Listeners, Error> {
    let passed = nix_binary_cache::os::systemd::listen_fds()?;
    if !passed.is_empty() {
        return Ok(Listeners {
            sockets: passed,
            from_systemd: true,
        });
    }
    let addr = SocketAddr::new(options.bind, options.port);
    let socket = server::bind(addr).map_err(|error| Error::Listen { addr, error })?;
    Ok(Listeners {
        sockets: vec![socket],
        from_systemd: false,
    })
}

/// Reads every secret key; any problem stops the start (a key silently ignored would leave
/// clients rejecting the cache).
fn load_keys(files: &[std::path::PathBuf]) -> Result<Vec<SigningKey>, KeyError> {
    let mut keys = Vec::new();
    for file in files {
        let key = store::keys::read_signing_key(file)?;
        log::info!(
            "signing narinfos with {}; clients need: trusted-public-keys = {}",
            file.display(),
            key.public_key()
        );
        keys.push(key);
    }
    Ok(keys)
}

fn upload_config(options: &cli::Options) -> Result<Option<UploadConfig>, Error> {
    let Some(file) = &options.upload_token_file else {
        return Ok(None);
    };
    let mut config = UploadConfig::new(Tokens::from_file(file)?);
    if let Some(max) = options.max_upload_size {
        config.max_body = max;
    }
    if let Some(n) = options.max_uploads {
        config.max_concurrent = n;
    }
    log::info!(
        "uploads enabled (tokens from {}, at most {} bytes each, {} at once)",
        file.display(),
        config.max_body,
        config.max_concurrent
    );
    Ok(Some(config))
}

/// Tells systemd (if it started us with NOTIFY_SOCKET) how we are doing.
fn notify(state: &str) {
    if let Err(e) = nix_binary_cache::os::systemd::notify(state) {
        log::warn!("could not notify systemd: {e}");
    }
}

fn init_logging(level: log::LevelFilter, access_log: bool) {
    let mut logger = simple_logger::SimpleLogger::new().with_level(level);
    if !access_log {
        logger = logger.with_module_level("access", log::LevelFilter::Off);
    }
    // Under systemd, journald stamps every line itself.
    logger = if std::env::var_os("JOURNAL_STREAM").is_some() {
        logger.without_timestamps()
    } else {
        logger.with_utc_timestamps()
    };
    // Only fails if a logger is already set, which cannot happen in main.
    let _ = logger
        // tiny_http logs accept errors itself; our workers log them too, with context.
        .with_module_level("tiny_http", log::LevelFilter::Off)
        .init();
}
