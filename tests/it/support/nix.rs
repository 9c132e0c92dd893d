//! The real Nix clients: Debian's nix-bin (Nix 2.8, `nix` on PATH) and Nix 2.35.2
//! (`/opt/nix-2.35/bin`), each run with a configuration, caches and (2.35) a store of its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::fixtures::TempDir;

const CONF: &str = "experimental-features = nix-command\nsandbox = false\nbuild-users-group =\n\
substituters =\nnarinfo-cache-positive-ttl = 0\nnarinfo-cache-negative-ttl = 0\n";

/// What Nix 2.35 needs on top of [`CONF`] to build without a daemon (see
/// ../shared/nix-2.35/README.md), plus content-addressed derivations for the tests of them.
const CONF_2_35: &str = "experimental-features = nix-command ca-derivations\n\
filter-syscalls = false\nsandbox-paths = /bin /lib /lib64 /usr\n";

/// The two client versions every common test runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// Debian's nix-bin: requests unescaped, uploads one path after another, plain metadata.
    V2_8,
    /// Percent-encoded paths, compressed metadata, parallel uploads, build-trace-v2, 401 fatal.
    V2_35,
}

impl Client {
    pub fn program(self, name: &str) -> PathBuf {
        match self {
            Client::V2_8 => PathBuf::from(name),
            Client::V2_35 => Path::new("/opt/nix-2.35/bin").join(name),
        }
    }

    pub fn want_version(self) -> &'static str {
        match self {
            Client::V2_8 => "2.8.",
            Client::V2_35 => "2.35.",
        }
    }

    pub fn install_hint(self) -> &'static str {
        match self {
            Client::V2_8 => "install Debian's nix-bin (`apt-get install -y nix-bin`, as root)",
            Client::V2_35 => "run ../shared/nix-2.35/install.sh as root",
        }
    }
}

/// A Nix client with its own config, its own narinfo cache (so no answer is remembered
/// from another test) and, for 2.35, its own store (2.8 uses the machine's /nix/store; the two
/// versions' database schemas differ).
pub struct Nix {
    pub client: Client,
    pub home: TempDir,
}

impl Nix {
    pub fn new(client: Client) -> Nix {
        let found = Command::new(client.program("nix"))
            .arg("--version")
            .output();
        match found {
            Ok(out)
                if out.status.success()
                    && String::from_utf8_lossy(&out.stdout).contains(client.want_version()) => {}
            other => panic!(
                "the real Nix client {client:?} is required ({other:?}): {}, or run \
                 `make test`, which does",
                client.install_hint()
            ),
        }
        let home = TempDir::new("nix");
        std::fs::create_dir_all(home.path().join("conf")).unwrap();
        let mut conf = CONF.to_string();
        if client == Client::V2_35 {
            conf.push_str(CONF_2_35);
            conf.push_str(&format!(
                "store = local?root={}\n",
                home.path().join("root").display()
            ));
        }
        std::fs::write(home.path().join("conf/nix.conf"), conf).unwrap();
        Nix { client, home }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.client.program("nix"));
        cmd.args(args)
            .env("NIX_CONF_DIR", self.home.path().join("conf"))
            .env("XDG_CACHE_HOME", self.home.path().join("cache"))
            .env("HOME", self.home.path())
            .stdin(Stdio::null());
        cmd
    }

    /// Runs nix and returns its output, whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run nix")
    }

    /// Runs nix, failing the test with nix's stderr if it fails; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "nix {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A fresh chroot store to copy into.
    pub fn store(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }
}
