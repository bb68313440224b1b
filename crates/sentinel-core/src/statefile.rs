//! A JSON state file shared by concurrent processes: the local lock table and the GitHub cache.
//!
//! `NAME.json` is replaced atomically on every change (write `NAME.json.tmp.<pid>`, fsync it,
//! rename it over `NAME.json`, fsync the directory), so a process killed at any point leaves the
//! old or the new state, never a torn one, and a change survives a crash of the machine once
//! committed. State whose last changes may be lost to a machine's crash (this host's counters)
//! skips the two fsyncs, which cost more than all the rest of a short `sentinel` run
//! ([`StateFile::not_durable`]): a killed process still leaves the old or the new state. `NAME.lock` carries an OS file lock (`flock` on Unix)
//! that serializes every read-modify-write; the kernel drops it when its holder dies, so a killed
//! process never blocks the others. A file that does not parse is reported with the way out and
//! never reset silently. Temporary files left by killed writers are removed by the next writer.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Longest wait for another process's file lock before giving up with a message.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// State that can live in a [`StateFile`].
pub trait Persisted: Serialize + DeserializeOwned + Default + PartialEq + Clone {
    /// Invariants a hand-edited file might break; a violation is reported as corruption.
    fn check(&self) -> std::result::Result<(), String> {
        Ok(())
    }
    /// What starting over from an empty state costs, for the corruption message.
    const RESET_COST: &'static str = "what it recorded is then forgotten";
}

/// `NAME.json` in a directory, with its `NAME.lock`: the handle is only a path, so clones (and
/// other processes opening the same path) share one file and serialize on its lock.
#[derive(Debug, Clone)]
pub struct StateFile {
    dir: PathBuf,
    name: String,
    /// Whether a commit is made durable (fsynced) before it returns.
    durable: bool,
}

impl StateFile {
    /// `dir/NAME.json`, guarded by `dir/NAME.lock`. Creates `dir`.
    pub fn new(dir: &Path, name: &str) -> Result<StateFile> {
        fs::create_dir_all(dir)
            .map_err(|e| io_error("cannot create the data directory", dir, e))?;
        Ok(StateFile {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            durable: true,
        })
    }

    /// The same file, its commits not fsynced: a process killed at any point still leaves the
    /// old or the new state, but a crash of the machine may lose the last changes (or, on a file
    /// system that does not order a rename after the data it replaces, leave an empty file, which
    /// reads as corrupt, with the way out).
    pub fn not_durable(self) -> StateFile {
        StateFile {
            durable: false,
            ..self
        }
    }

    /// `dir/NAME.json`, for messages; read and write it only through this type.
    pub fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.name))
    }

    fn tmp_prefix(&self) -> String {
        format!("{}.json.tmp.", self.name)
    }

    fn lock(&self, exclusive: bool) -> Result<File> {
        let path = self.dir.join(format!("{}.lock", self.name));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_error("cannot open the lock file", &path, e))?;
        // Every holder keeps the lock for milliseconds; one that keeps it for seconds is stuck
        // (or is someone's `flock` by hand), and waiting for it forever would hang every worker.
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            let attempt = if exclusive {
                file.try_lock()
            } else {
                file.try_lock_shared()
            };
            match attempt {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(Error::Unavailable(format!(
                        "timed out after {} s waiting for the file lock on {}: another process holds it \
                         (find it with `fuser {}`); sentinel holds it only for milliseconds, so that \
                         process is stuck or not sentinel",
                        LOCK_WAIT.as_secs(),
                        path.display(),
                        path.display()
                    )));
                }
                Err(TryLockError::Error(e)) => return Err(io_error("cannot lock", &path, e)),
            }
        }
        // Closing the returned file releases the lock, also when a caller panics.
        Ok(file)
    }

    fn load<T: Persisted>(&self) -> Result<T> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(T::default()),
            Err(e) => return Err(io_error("cannot read", &path, e)),
        };
        let state: T =
            serde_json::from_slice(&bytes).map_err(|e| corrupt::<T>(&path, &e.to_string()))?;
        state.check().map_err(|e| corrupt::<T>(&path, &e))?;
        Ok(state)
    }

    /// Reads the state under a shared lock.
    pub fn read<T: Persisted>(&self) -> Result<T> {
        let _guard = self.lock(false)?;
        self.load()
    }

    /// Runs `f` on the state under an exclusive lock held across processes and commits the result
    /// atomically if `f` changed it. If `f` panics, nothing is written and the lock is released.
    pub fn update<T: Persisted, R>(&self, f: impl FnOnce(&mut T) -> R) -> Result<R> {
        let _guard = self.lock(true)?;
        // Under the exclusive lock no writer is active: any temporary file is a dead writer's.
        self.remove_leftover_tmp_files();
        let mut state: T = self.load()?;
        let before = state.clone();
        let out = f(&mut state);
        if state != before {
            self.commit(&state)?;
        }
        Ok(out)
    }

    /// Where the state really lives: `NAME.json`, or the file it is a symlink to (a user may keep
    /// the state elsewhere; replacing the link with a regular file would split it in two).
    fn target(&self) -> Result<PathBuf> {
        let path = self.path();
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                let to =
                    fs::read_link(&path).map_err(|e| io_error("cannot read the link", &path, e))?;
                Ok(if to.is_absolute() {
                    to
                } else {
                    self.dir.join(to)
                })
            }
            _ => Ok(path),
        }
    }

    fn commit<T: Serialize>(&self, state: &T) -> Result<()> {
        let path = self.target()?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| self.dir.clone(), Path::to_path_buf);
        let tmp = dir.join(format!("{}{}", self.tmp_prefix(), std::process::id()));
        let mut bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| Error::Unexpected(format!("cannot serialize {}: {e}", path.display())))?;
        bytes.push(b'\n');
        let written = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(&bytes)?;
            match self.durable {
                true => file.sync_all(),
                false => Ok(()),
            }
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_error("cannot write", &tmp, e));
        }
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(io_error("cannot replace", &path, e));
        }
        if !self.durable {
            return Ok(());
        }
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("cannot sync", &dir, e))
    }

    /// Best effort: a file we cannot list or remove now is retried by the next writer.
    fn remove_leftover_tmp_files(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let prefix = self.tmp_prefix();
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

fn io_error(what: &str, path: &Path, e: io::Error) -> Error {
    Error::Unexpected(format!("{what} {}: {e}", path.display()))
}

fn corrupt<T: Persisted>(path: &Path, why: &str) -> Error {
    let p = path.display();
    Error::Unexpected(format!(
        "{p} is corrupt ({why}). Repair the JSON by hand, or move it aside (`mv {p} {p}.corrupt`) \
         to start over with an empty state: {}",
        T::RESET_COST
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    type Map = BTreeMap<String, u32>;
    impl Persisted for Map {}

    #[test]
    fn updates_persist_and_torn_temp_files_are_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path(), "s").unwrap();
        f.update(|m: &mut Map| m.insert("a".into(), 1)).unwrap();
        // A writer killed before its rename leaves only a temp file behind.
        fs::write(dir.path().join("s.json.tmp.999999"), b"{\"a\": 2, \"b\"").unwrap();
        let m: Map = f.read().unwrap();
        assert_eq!(m.get("a"), Some(&1));
        f.update(|m: &mut Map| m.insert("b".into(), 2)).unwrap();
        assert!(!dir.path().join("s.json.tmp.999999").exists());
    }

    #[test]
    fn a_symlinked_state_file_stays_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let real = elsewhere.path().join("real.json");
        fs::write(&real, b"{}").unwrap();
        let f = StateFile::new(dir.path(), "s").unwrap();
        std::os::unix::fs::symlink(&real, f.path()).unwrap();
        f.update(|m: &mut Map| m.insert("a".into(), 1)).unwrap();
        assert!(
            fs::symlink_metadata(f.path())
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(fs::read_to_string(&real).unwrap().contains("\"a\": 1"));
        assert_eq!(f.read::<Map>().unwrap().get("a"), Some(&1));
    }

    #[test]
    fn a_stuck_lock_holder_is_reported_not_waited_for_forever() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path(), "s").unwrap();
        let held = File::create(dir.path().join("s.lock")).unwrap();
        held.lock().unwrap();
        let started = Instant::now();
        let err = f.update(|m: &mut Map| m.insert("a".into(), 1)).unwrap_err();
        assert!(started.elapsed() >= LOCK_WAIT);
        assert!(err.to_string().contains("timed out"), "{err}");
        assert_eq!(err.exit_code(), crate::error::ExitCode::Unavailable);
    }

    #[test]
    fn corruption_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path(), "s").unwrap();
        fs::write(f.path(), b"{not json").unwrap();
        let err = f.read::<Map>().unwrap_err();
        assert!(err.to_string().contains("corrupt"));
        assert_eq!(fs::read(f.path()).unwrap(), b"{not json");
    }
}
