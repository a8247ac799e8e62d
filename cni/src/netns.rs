//! Running netlink work inside another network namespace.
//!
//! A netlink socket belongs to the netns it was created in, and `setns` changes only the
//! calling thread. So work for a pod netns runs on a fresh OS thread that enters the netns,
//! builds its own single-threaded runtime and connection there, and exits: no other thread
//! (and no tokio worker) ever changes namespace.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sched::{CloneFlags, setns};

use crate::error::CniError;

/// `NSFS_MAGIC` from linux/magic.h: the filesystem of `/proc/PID/ns/*` and bind-mounted netns files.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Open a netns file and make sure it really is a namespace (not a stray regular file).
pub fn open_netns(path: &Path) -> Result<File, CniError> {
    let file = File::open(path).map_err(|source| CniError::NetnsUnknown { path: path.into(), source })?;
    let fs =
        nix::sys::statfs::fstatfs(&file).map_err(|e| CniError::NetnsUnknown { path: path.into(), source: e.into() })?;
    #[allow(clippy::unnecessary_cast)]
    let magic = fs.filesystem_type().0 as i64;
    if magic != NSFS_MAGIC {
        return Err(CniError::NetnsUnknown {
            path: path.into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a network namespace file (nsfs)"),
        });
    }
    Ok(file)
}

/// Run `f` on a dedicated thread inside the netns at `path`, with a netlink handle opened there.
pub fn with_netlink_in<T, F, Fut>(path: &Path, f: F) -> Result<T, CniError>
where
    T: Send,
    F: FnOnce(rtnetlink::Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, CniError>>,
{
    let ns = open_netns(path)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| CniError::Io {
                what: format!("entering network namespace {}", path.display()),
                source: e.into(),
            })?;
            with_netlink_here(f)
        })
        .join()
        .unwrap_or_else(|_| {
            Err(CniError::Io {
                what: format!("worker thread for netns {}", path.display()),
                source: std::io::Error::other("panicked"),
            })
        })
    })
}

/// Run `f` with a netlink handle in the current thread's netns, on a current-thread runtime.
pub fn with_netlink_here<T, F, Fut>(f: F) -> Result<T, CniError>
where
    F: FnOnce(rtnetlink::Handle) -> Fut,
    Fut: Future<Output = Result<T, CniError>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|source| CniError::Io { what: "starting netlink runtime".into(), source })?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|source| CniError::Io { what: "opening netlink socket".into(), source })?;
        let task = tokio::spawn(conn);
        let out = f(handle).await;
        task.abort();
        out
    })
}

/// The errno of a netlink error, if the kernel sent one (positive, e.g. `libc::ENODEV`).
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}
