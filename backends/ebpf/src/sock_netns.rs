//! The network namespace cookie of the calling thread's netns (`SO_NETNS_COOKIE`, Linux 5.14+):
//! socket LB compares it with each socket's (`bpf_get_netns_cookie`) to translate the node's own
//! processes only.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `SO_NETNS_COOKIE` (asm-generic/socket.h).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie, or `None` where the kernel does not give it.
pub fn own_netns_cookie() -> Option<u64> {
    // SAFETY: plain socket(2); the fd is owned (closed on drop) right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid socket, and a buffer of `len` bytes for the option's value.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0 && cookie != 0).then_some(cookie)
}
