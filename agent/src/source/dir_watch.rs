//! Wake the agent when the manifest directory changes (inotify), so an edit is acted on at once
//! rather than at the next poll: the poll (`source.poll_interval_ms`) stays as the fallback for
//! file systems inotify does not see (NFS, some overlays) and for a watch that could not be set.
//!
//! Only completed writes count (`IN_CLOSE_WRITE`, a rename into place, a removal): waking on
//! every `IN_MODIFY` would read files half-written. Subdirectories are watched as they appear
//! (the manifest source reads them too).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

fn flags() -> AddWatchFlags {
    AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

fn add_tree(ino: &Inotify, dir: &Path, watched: &mut BTreeMap<WatchDescriptor, PathBuf>) {
    if let Ok(wd) = ino.add_watch(dir, flags()) {
        watched.insert(wd, dir.to_path_buf());
    }
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            add_tree(ino, &e.path(), watched);
        }
    }
}

/// Watch `dir` on a thread of its own; every relevant change calls `changed.notify_one()`.
/// An error (no inotify, the directory missing) is returned: the caller keeps polling.
pub fn spawn(dir: &Path, changed: Arc<tokio::sync::Notify>) -> std::io::Result<()> {
    let ino = Inotify::init(InitFlags::IN_CLOEXEC)?;
    let mut watched = BTreeMap::new();
    ino.add_watch(dir, flags()).map(|wd| watched.insert(wd, dir.to_path_buf()))?;
    add_tree(&ino, dir, &mut watched);
    let top = dir.to_path_buf();
    std::thread::Builder::new().name("manifests-watch".into()).spawn(move || {
        loop {
            let events = match ino.read_events() {
                Ok(ev) => ev,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, dir = %top.display(), "manifest directory watch failed; polling only");
                    return;
                }
            };
            for ev in &events {
                if ev.mask.contains(AddWatchFlags::IN_ISDIR)
                    && ev.mask.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
                    && let (Some(parent), Some(name)) = (watched.get(&ev.wd).cloned(), ev.name.as_ref())
                {
                    add_tree(&ino, &parent.join(name), &mut watched);
                }
                if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    watched.remove(&ev.wd);
                }
            }
            changed.notify_one();
        }
    })?;
    Ok(())
}
