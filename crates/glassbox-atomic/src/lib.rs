//! Every file glassbox writes for a user to keep — dictionaries, checkpoints, run
//! configs, feature stores, probes, graphs, activation shards — goes through this crate,
//! so a reader, a crash or a `kill -9` sees the old file or the whole new one, never a
//! part. The new bytes go to a hidden temporary sibling (`.{name}.{pid}.{nonce}.tmp`,
//! same folder, so the rename cannot cross file systems), which is synced to disk and
//! renamed over the target; the folder is synced after, so the rename itself survives a
//! power cut. A failed write removes its temporary file; [`remove_orphans`] removes
//! those left by processes that died mid-write.
//!
//! ```
//! # fn main() -> Result<(), glassbox_atomic::Error> {
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("out").join("metrics.json");
//! glassbox_atomic::write(&path, b"{\"fvu\": 0.3}")?;
//! // a writer that needs a path (SQLite, safetensors) gets the temporary one
//! glassbox_atomic::write_with(&path, |tmp| {
//!     std::fs::write(tmp, b"{}").map_err(|e| glassbox_atomic::Error::writing(tmp, e))
//! })?;
//! assert_eq!(std::fs::read(&path).unwrap(), b"{}");
//! // nothing but the file is left in the folder
//! assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A write that did not happen; the target is as it was.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {}: {source}", path.display())]
pub struct Error {
    /// the step that failed: "create the folder", "write", "sync", "rename onto"
    pub what: &'static str,
    /// the file or folder it failed on
    pub path: PathBuf,
    /// what the operating system said
    #[source]
    pub source: std::io::Error,
}

impl Error {
    /// A writer's failure to write `path` (for closures given to [`write_with`]).
    pub fn writing(path: &Path, source: std::io::Error) -> Self {
        Error {
            what: "write",
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Writes `bytes` to `path` atomically, creating its folder if needed.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    write_with(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| Error::writing(path, e))
    })
}

/// Creates `path` atomically with a writer that needs a file name (SQLite, safetensors):
/// `write` fills the temporary path it is given; only when it succeeds is that file
/// synced and renamed over `path`. On any failure the temporary file (and SQLite's
/// `-journal`, `-wal`, `-shm` beside it) is removed and `path` is untouched.
pub fn write_with<E: From<Error>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    write_many(&[path], |tmps| write(&tmps[0]))
}

/// Replaces several files that belong together (a dictionary's weights and its
/// `cfg.json`) as one: `write` fills every temporary path (in the order of `paths`);
/// only when all are written and synced are they renamed over their targets, so a
/// failure while writing leaves every target as it was. (The renames themselves follow
/// one another: a crash between two of them is the one window left, microseconds wide.)
pub fn write_many<E: From<Error>>(
    paths: &[&Path],
    write: impl FnOnce(&[PathBuf]) -> Result<(), E>,
) -> Result<(), E> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for path in paths {
        let dir = folder_of(path);
        std::fs::create_dir_all(&dir).map_err(|source| Error {
            what: "create the folder",
            path: dir.clone(),
            source,
        })?;
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    let tmps: Vec<PathBuf> = paths.iter().map(|p| temp_path(p)).collect();
    tmps.iter().for_each(|t| remove_with_sidecars(t));
    let result = write(&tmps).and_then(|()| {
        for (tmp, path) in tmps.iter().zip(paths) {
            testing::injected_failure(path)?;
            sync(tmp, "sync")?;
        }
        for (tmp, path) in tmps.iter().zip(paths) {
            std::fs::rename(tmp, path).map_err(|source| Error {
                what: "rename onto",
                path: path.to_path_buf(),
                source,
            })?;
        }
        // the renames are durable once the folders are; some file systems cannot sync one
        for dir in &dirs {
            let _ = sync(dir, "sync");
        }
        Ok(())
    });
    if result.is_err() {
        tmps.iter().for_each(|t| remove_with_sidecars(t));
    }
    result
}

/// Failure injection for tests of the callers' "nothing already written is lost"
/// promise: root ignores read-only folders, so tests cannot make a real write fail.
pub mod testing {
    use std::cell::RefCell;
    use std::path::{Path, PathBuf};

    thread_local! {
        static FAIL: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
    }

    /// Makes the next atomic write of `path` on this thread fail after its temporary
    /// file is written, as a full disk would (`ENOSPC`), so a test can check what is left.
    pub fn fail_next_write_of(path: &Path) {
        FAIL.with(|f| f.borrow_mut().push(path.to_path_buf()));
    }

    pub(crate) fn injected_failure(path: &Path) -> Result<(), super::Error> {
        let hit = FAIL.with(|f| {
            let mut f = f.borrow_mut();
            let at = f.iter().position(|p| p == path);
            at.map(|i| f.remove(i))
        });
        match hit {
            Some(_) => Err(super::Error {
                what: "write",
                path: path.to_path_buf(),
                source: std::io::Error::from(std::io::ErrorKind::StorageFull),
            }),
            None => Ok(()),
        }
    }
}

/// The temporary sibling a write of `path` goes through: hidden, unique to this process
/// and this call (two threads writing the same target do not share it).
pub fn temp_path(path: &Path) -> PathBuf {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let nonce = CALLS.fetch_add(1, Ordering::Relaxed);
    folder_of(path).join(format!(".{name}.{}.{nonce}.tmp", std::process::id()))
}

/// Is `name` a temporary file of [`write_with`]? Folder listings skip these.
pub fn is_temp_name(name: &str) -> bool {
    temp_pid(name).is_some()
}

/// Deletes the temporary files in `folder` whose writer has died (its process is gone);
/// those of live processes are left alone. Only where `/proc` tells which processes live.
pub fn remove_orphans(folder: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = temp_pid(&name) {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                remove_with_sidecars(&e.path());
            }
        }
    }
}

/// `.{name}.{pid}.{nonce}.tmp` → pid
fn temp_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let mut parts = rest.rsplit('.');
    parts.next()?.parse::<u64>().ok()?;
    parts.next()?.parse().ok()
}

fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn sync(path: &Path, what: &'static str) -> Result<(), Error> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| Error {
            what,
            path: path.to_path_buf(),
            source,
        })
}

fn remove_with_sidecars(tmp: &Path) {
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let mut p = tmp.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg.json");
        write(&path, b"old").unwrap();
        let err = write_with(&path, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            Err(Error::writing(tmp, std::io::Error::other("disk full")))
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failure_in_one_of_many_files_leaves_all_of_them_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("w.bin"), dir.path().join("cfg.json"));
        write(&a, b"old w").unwrap();
        write(&b, b"old cfg").unwrap();
        testing::fail_next_write_of(&b);
        let err = write_many(&[&a, &b], |tmps| {
            std::fs::write(&tmps[0], b"new w").map_err(|e| Error::writing(&tmps[0], e))?;
            std::fs::write(&tmps[1], b"new cfg").map_err(|e| Error::writing(&tmps[1], e))
        })
        .unwrap_err();
        assert!(err.to_string().contains("cfg.json"), "{err}");
        assert_eq!(std::fs::read(&a).unwrap(), b"old w");
        assert_eq!(std::fs::read(&b).unwrap(), b"old cfg");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        // the injection is used up: the next write goes through
        write_many(&[&a, &b], |tmps| {
            std::fs::write(&tmps[0], b"new w").map_err(|e| Error::writing(&tmps[0], e))?;
            std::fs::write(&tmps[1], b"new cfg").map_err(|e| Error::writing(&tmps[1], e))
        })
        .unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), b"new cfg");
    }

    #[test]
    fn orphans_of_dead_processes_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        // pid 4194304 is above Linux's pid_max ceiling: never a live process
        let dead = dir.path().join(".store.bin.4194304.0.tmp");
        let live = temp_path(&dir.path().join("store.bin"));
        let other = dir.path().join(".hidden.tmp");
        for p in [&dead, &live, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        assert!(is_temp_name(".store.bin.4194304.0.tmp"));
        assert!(!is_temp_name(".hidden.tmp"));
        remove_orphans(dir.path());
        if Path::new("/proc/self").exists() {
            assert!(!dead.exists());
        }
        assert!(live.exists() && other.exists());
    }

    #[test]
    fn a_missing_folder_is_created_and_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/c.txt");
        write(&path, b"x").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"x");
        // a file where the folder should be
        let blocked = dir.path().join("a/b/c.txt/d.txt");
        let err = write(&blocked, b"y").unwrap_err();
        assert!(err.to_string().contains("c.txt"), "{err}");
    }
}
