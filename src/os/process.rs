//! Process-wide policy: open file limit, thread priority, heap trimming, and the two questions
//! the temporary-file cleaner asks (is a process alive, what is this host called).

use std::io;

/// Every connection holds a descriptor (one more while a file is sent), and distributions start
/// services with a soft limit of 1024: take the hard limit, as nginx's
/// `worker_rlimit_nofile` would.
pub fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max
        {
            return;
        }
        let before = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
            log::debug!("open file limit raised from {before} to {}", limit.rlim_max);
        }
    }
}

/// Gives the calling thread the lowest scheduling priority (nice 19). Linux applies
/// `setpriority` to a thread id as a thread's own.
pub(crate) fn lower_thread_priority() -> io::Result<()> {
    // SAFETY: plain syscalls on the calling thread's own id.
    let ok = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19)
    };
    if ok != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Returns the heap's free pages to the kernel (glibc keeps freed memory mapped otherwise).
pub(crate) fn malloc_trim() {
    // SAFETY: malloc_trim only releases memory that malloc itself holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// True if a process with this id exists (ours, or one we may not signal).
pub(crate) fn process_alive(pid: i32) -> bool {
    if pid == std::process::id() as i32 {
        return true;
    }
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// This host's name from gethostname(2) (works where /proc/sys is hidden, as under systemd's
/// `ProcSubset=pid`); `None` if it cannot be read.
pub(crate) fn hostname() -> Option<Vec<u8>> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; the kernel writes a NUL-terminated name.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let len = buf.iter().position(|&b| b == 0).unwrap_or(0);
    ok.then(|| buf[..len].to_vec())
}

/// Sets the process's file creation mask and returns the previous one (tests only: the mask is
/// process-wide).
#[cfg(test)]
pub(crate) fn set_umask(mask: u32) -> u32 {
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}
