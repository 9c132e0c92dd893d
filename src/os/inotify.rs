//! Linux `inotify(7)` and `statfs(2)` behind a few safe functions (std + `libc`, no runtime).
//!
//! The index uses this to learn about narinfo files created, renamed into place, rewritten or
//! removed without looking at the disk on every request. Each `unsafe` call sits in one small
//! function below with a SAFETY note; everything else (event parsing included) is safe code.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

pub use libc::{
    IN_ATTRIB, IN_CLOSE_WRITE, IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_IGNORED, IN_MOVE_SELF,
    IN_MOVED_FROM, IN_MOVED_TO, IN_ONLYDIR, IN_Q_OVERFLOW, IN_UNMOUNT,
};

/// One inotify instance: a queue of events for the watches added to it.
pub struct Inotify {
    fd: OwnedFd,
}

/// One event as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The watch it belongs to; -1 for a queue overflow.
    pub wd: i32,
    pub mask: u32,
    /// The file's name inside the watched directory (empty for events on the directory itself).
    pub name: Vec<u8>,
}

impl Event {
    /// What the kernel queues when events were dropped because the queue was full.
    pub fn overflow() -> Event {
        Event {
            wd: -1,
            mask: IN_Q_OVERFLOW,
            name: Vec::new(),
        }
    }
}

/// Size of the fixed part of `struct inotify_event` (wd, mask, cookie, len).
const HEADER: usize = 16;

impl Inotify {
    /// A new instance. Fails with `EMFILE` when the user's `fs.inotify.max_user_instances` is
    /// reached.
    pub fn new() -> io::Result<Inotify> {
        // SAFETY: inotify_init1 takes no pointers; a non-negative result is a new descriptor
        // that nothing else owns.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created above and is owned by nobody else.
        Ok(Inotify {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Watches `path` (following a symbolic link to it) for `mask`; returns the watch
    /// descriptor. Fails with `ENOSPC` when `fs.inotify.max_user_watches` is reached.
    pub fn add_watch(&self, path: &Path, mask: u32) -> io::Result<i32> {
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
        // SAFETY: the descriptor is ours and open; `c_path` is a valid NUL-terminated string
        // that outlives the call.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c_path.as_ptr(), mask) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(wd)
    }

    /// Stops a watch. A watch the kernel already removed (its directory was deleted) is fine.
    pub fn remove_watch(&self, wd: i32) {
        // SAFETY: no pointers; an unknown `wd` only yields EINVAL, which is ignored on purpose.
        unsafe {
            libc::inotify_rm_watch(self.fd.as_raw_fd(), wd);
        }
    }

    /// Waits up to `timeout` for events; true if some can be read.
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `pfd` is one valid pollfd on our stack, and we pass a count of 1.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        match n {
            n if n > 0 => Ok(true),
            0 => Ok(false),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Appends every event queued right now to `out` (nothing if none are queued).
    pub fn read_events(&self, buf: &mut [u8], out: &mut Vec<Event>) -> io::Result<()> {
        loop {
            // SAFETY: `buf` is a valid, writable buffer of `buf.len()` bytes for the call.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(()),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            if n == 0 {
                return Ok(());
            }
            parse_events(&buf[..n as usize], out);
        }
    }
}

/// Splits what one `read(2)` returned into events (`struct inotify_event`, names NUL-padded).
pub fn parse_events(mut bytes: &[u8], out: &mut Vec<Event>) {
    let u32_at = |b: &[u8], at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    while bytes.len() >= HEADER {
        let wd = u32_at(bytes, 0) as i32;
        let mask = u32_at(bytes, 4);
        let len = u32_at(bytes, 12) as usize;
        let Some(name) = bytes.get(HEADER..HEADER + len) else {
            return; // The kernel never splits an event; a short buffer means nothing more here.
        };
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        out.push(Event {
            wd,
            mask,
            name: name[..end].to_vec(),
        });
        bytes = &bytes[HEADER + len..];
    }
}

/// Buffer size for [`Inotify::read_events`]: room for hundreds of events per read.
pub const EVENT_BUFFER: usize = 64 * 1024;

/// The filesystem type (`f_type` of `statfs(2)`) of the filesystem holding `path`.
pub fn filesystem_type(path: &Path) -> io::Result<i64> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: statfs is plain data, fully written by a successful call; the path is a valid
    // NUL-terminated string.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut buf) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf.f_type as i64)
}

/// The name of a filesystem whose changes inotify may not see (written by another host, or
/// by a FUSE daemon behind the kernel's back); `None` for local filesystems.
pub fn shared_filesystem_name(f_type: i64) -> Option<&'static str> {
    // Magic numbers from linux/magic.h and the filesystems' sources.
    Some(match f_type {
        0x6969 => "NFS",
        0x517B => "SMB",
        0xFF53_4D42 => "CIFS",
        0xFE53_4D42 => "SMB2",
        0x6573_5546 => "FUSE",
        0x00C3_6400 => "Ceph",
        0x7375_7245 => "Coda",
        0x5346_414F | 0x6B41_4653 => "AFS",
        0x0102_1997 => "9P",
        0x0116_1970 => "GFS2",
        0x7461_636F => "OCFS2",
        0x0BD0_0BD0 => "Lustre",
        0x1983_0326 => "OrangeFS",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_event(wd: i32, mask: u32, name: &[u8], padded: usize) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&wd.to_ne_bytes());
        v.extend_from_slice(&mask.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(&(padded as u32).to_ne_bytes());
        v.extend_from_slice(name);
        v.resize(v.len() + padded - name.len(), 0);
        v
    }

    #[test]
    fn parses_events_with_padded_names() {
        let mut bytes = raw_event(3, IN_MOVED_TO, b"abc.narinfo", 16);
        bytes.extend(raw_event(-1, IN_Q_OVERFLOW, b"", 0));
        let mut out = Vec::new();
        parse_events(&bytes, &mut out);
        assert_eq!(
            out,
            vec![
                Event {
                    wd: 3,
                    mask: IN_MOVED_TO,
                    name: b"abc.narinfo".to_vec()
                },
                Event::overflow()
            ]
        );
    }

    #[test]
    fn reports_a_rename_into_a_watched_directory() {
        let dir = std::env::temp_dir().join(format!("nbc-inotify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let inotify = Inotify::new().unwrap();
        let wd = inotify.add_watch(&dir, IN_MOVED_TO).unwrap();
        std::fs::write(dir.join(".tmp"), b"x").unwrap();
        std::fs::rename(dir.join(".tmp"), dir.join("final")).unwrap();
        assert!(inotify.wait(Duration::from_secs(5)).unwrap());
        let (mut buf, mut out) = (vec![0; EVENT_BUFFER], Vec::new());
        inotify.read_events(&mut buf, &mut out).unwrap();
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!((out[0].wd, out[0].name.as_slice()), (wd, &b"final"[..]));
        assert!(out[0].mask & IN_MOVED_TO != 0);
        std::fs::remove_dir_all(dir).unwrap();
        assert_eq!(shared_filesystem_name(0x6969), Some("NFS"));
        assert_eq!(shared_filesystem_name(0xEF53), None); // ext4
        assert!(filesystem_type(Path::new("/")).is_ok());
    }
}
