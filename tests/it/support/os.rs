//! What the kernel says about a process (`/proc/PID/status`) or a connection (`/proc/net/tcp`),
//! and this process's open-file limit.

/// One numeric field of /proc/PID/status (`"VmRSS:"`, `"Threads:"` …); 0 if absent.
pub fn proc_status_field(pid: u32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Resident and peak memory of a process, in KiB, from /proc.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    (
        proc_status_field(pid, "VmRSS:"),
        proc_status_field(pid, "VmHWM:"),
    )
}

/// TCP state of the server's end of the connection from `client_port` to `server_port`, from
/// /proc/net/tcp: `Some(1)` is ESTABLISHED; anything else means the server shut it down or
/// closed it (FIN_WAIT1 while its FIN waits behind unread data), `None` that it is gone.
pub fn server_side_state(server_port: u16, client_port: u16) -> Option<u8> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port_of = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 3 && port_of(f[1]) == Some(server_port) && port_of(f[2]) == Some(client_port))
            .then(|| u8::from_str_radix(f[3], 16).unwrap_or(0))
    })
}

/// Raises this process's soft open-file limit to its hard limit (the server does the same for
/// itself); fails clearly if that is below `need`.
///
/// The limit is the whole test process's and stays raised once a test raised it: harmless to
/// the tests beside it, whose servers take their hard limit at start anyway and whose other
/// children (nix) need few. A test that needs a low limit sets it in its child
/// (`Server::start_with_fd_limit`), never here. The tests that need thousands of descriptors
/// run alone (`one_at_a_time`), so they do not compete for them either.
pub fn raise_open_file_limit(need: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    assert!(
        limit.rlim_cur >= need,
        "this test needs {need} open files but the hard limit is {} (ulimit -Hn)",
        limit.rlim_max
    );
}
