//! `nix-binary-cache`: the command-line front of the library.

mod cli;

use std::net::SocketAddr;
use std::process::ExitCode;

use nix_binary_cache::server::{self, PoolConfig};
use nix_binary_cache::signing::SigningKey;
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
            Err(message) => fail(&message),
        },
        Err(e) => fail(&e.0),
    }
}

/// One line on stderr and exit status 2: what went wrong and, where possible, what to do.
fn fail(message: &str) -> ExitCode {
    eprintln!("nix-binary-cache: error: {message}");
    ExitCode::from(2)
}

fn serve(options: cli::Options) -> Result<(), String> {
    init_logging(options.log_level, options.access_log);
    // Block SIGINT/SIGTERM before any thread starts, so every thread inherits the mask and
    // only `wait_for_stop_signal` below receives them.
    let signals = block_stop_signals();

    let addr = SocketAddr::new(options.bind, options.port);
    let listener = server::bind(addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "port {} is already in use on {}",
            options.port, options.bind
        ),
        _ => format!("cannot listen on {addr}: {e}"),
    })?;

    let mut config = Config::new(&options.root);
    config.priority = options.priority;
    config.rescan_interval = options.rescan_interval;
    config.sign_keys = load_keys(&options.sign_keys)?;
    config.uploads = upload_config(&options)?;
    let cache = Cache::open(config).map_err(|e| e.to_string())?;

    let mut pool = PoolConfig::default();
    if let Some(n) = options.threads {
        pool.threads = n;
    }
    let threads = pool.threads;
    pool.ops_endpoints = options.ops == cli::OpsEndpoints::Main;
    if let cli::OpsEndpoints::Separate(addr) = options.ops {
        let listener =
            server::bind(addr).map_err(|e| format!("cannot listen for /metrics on {addr}: {e}"))?;
        server::start_ops_listener(listener, cache.clone()).map_err(|e| e.to_string())?;
        log::info!("/metrics and /health on http://{addr}");
    }
    let running =
        server::start(listener, Mount::new("/", cache), pool).map_err(|e| e.to_string())?;
    log::info!(
        "serving {} on http://{} with {threads} workers",
        options.root.display(),
        running.local_addr()
    );

    let signal = wait_for_stop_signal(&signals);
    log::info!("received signal {signal}, finishing in-flight requests");
    running.stop();
    log::info!("stopped");
    Ok(())
}

/// Reads every secret key; any problem stops the start (a key silently ignored would leave
/// clients rejecting the cache).
fn load_keys(files: &[std::path::PathBuf]) -> Result<Vec<SigningKey>, String> {
    let mut keys = Vec::new();
    for file in files {
        let key = SigningKey::from_file(file).map_err(|e| e.to_string())?;
        log::info!(
            "signing narinfos with {}; clients need: trusted-public-keys = {}",
            file.display(),
            key.public_key()
        );
        keys.push(key);
    }
    Ok(keys)
}

fn upload_config(options: &cli::Options) -> Result<Option<UploadConfig>, String> {
    let Some(file) = &options.upload_token_file else {
        return Ok(None);
    };
    let mut config = UploadConfig::new(Tokens::from_file(file).map_err(|e| e.to_string())?);
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

fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; pthread_sigmask
    // only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_stop_signal(set: &libc::sigset_t) -> i32 {
    let mut signal = 0;
    // SAFETY: `set` was built by block_stop_signals; sigwait writes one int.
    unsafe { libc::sigwait(set, &mut signal) };
    signal
}
