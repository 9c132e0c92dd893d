//! Why the binary stops early, and its one mapping to an exit status.
//!
//! Each layer keeps its own error (a usage mistake, an `io::Error` worded for the operator by
//! the library, a key file problem); this type only says which step failed, so that `main`
//! prints one line and exits with [`Error::exit_code`]. `verify` finding problems is a result,
//! not an error: it exits 1 on its own.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use nix_binary_cache::nix::signing::KeyError;

use super::UsageError;

/// What went wrong, worded for the operator by `Display`.
#[derive(Debug)]
pub enum Error {
    /// The command line or its variables.
    Usage(UsageError),
    /// A listening socket could not be had.
    Listen { addr: SocketAddr, error: io::Error },
    /// The separate `/metrics` listener could not be had.
    MetricsListen { addr: SocketAddr, error: io::Error },
    /// A signing key file cannot be used.
    Key(KeyError),
    /// Starting the server: the library's message says what and where.
    Start(io::Error),
    /// `verify` or `gc` could not run on `root`.
    Command {
        command: &'static str,
        root: PathBuf,
        error: io::Error,
    },
}

impl Error {
    /// Every error exits with 2 (1 is `verify`'s "problems found").
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Usage(_)
            | Error::Listen { .. }
            | Error::MetricsListen { .. }
            | Error::Key(_)
            | Error::Start(_)
            | Error::Command { .. } => ExitCode::from(2),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(e) => write!(f, "{e}"),
            Error::Listen { addr, error } if error.kind() == io::ErrorKind::AddrInUse => {
                write!(f, "port {} is already in use on {}", addr.port(), addr.ip())
            }
            Error::Listen { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
            Error::MetricsListen { addr, error } => {
                write!(f, "cannot listen for /metrics on {addr}: {error}")
            }
            Error::Key(e) => write!(f, "{e}"),
            Error::Start(e) => write!(f, "{e}"),
            Error::Command {
                command,
                root,
                error,
            } => write!(f, "{command} {}: {error}", root.display()),
        }
    }
}

impl From<UsageError> for Error {
    fn from(e: UsageError) -> Error {
        Error::Usage(e)
    }
}

impl From<KeyError> for Error {
    fn from(e: KeyError) -> Error {
        Error::Key(e)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Start(e)
    }
}
