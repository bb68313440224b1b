//! A small JSON state file shared by concurrent processes: exclusive `flock` around
//! read-modify-write, and atomic replacement so a process killed mid-write loses nothing.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

pub struct StateFile {
    path: PathBuf,
    lock_path: PathBuf,
}

impl StateFile {
    /// `dir/name.json`, guarded by `dir/name.lock`. Creates `dir`.
    pub fn new(dir: &Path, name: &str) -> Result<StateFile> {
        fs::create_dir_all(dir).map_err(|e| {
            Error::Unexpected(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        Ok(StateFile {
            path: dir.join(format!("{name}.json")),
            lock_path: dir.join(format!("{name}.lock")),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self, exclusive: bool) -> Result<File> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&self.lock_path)
            .map_err(|e| {
                Error::Unexpected(format!("cannot open {}: {e}", self.lock_path.display()))
            })?;
        // The kernel drops the lock when the process dies, so a crash never wedges others.
        let locked = if exclusive {
            file.lock()
        } else {
            file.lock_shared()
        };
        locked.map_err(|e| {
            Error::Unexpected(format!("cannot lock {}: {e}", self.lock_path.display()))
        })?;
        Ok(file)
    }

    fn load<T: DeserializeOwned + Default>(&self) -> Result<T> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::Unexpected(format!(
                    "{} is corrupt ({e}); move it aside to start from an empty state",
                    self.path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
            Err(e) => Err(Error::Unexpected(format!(
                "cannot read {}: {e}",
                self.path.display()
            ))),
        }
    }

    /// Reads the state under a shared lock.
    pub fn read<T: DeserializeOwned + Default>(&self) -> Result<T> {
        let _guard = self.lock(false)?;
        self.load()
    }

    /// Runs `f` on the state under an exclusive lock and persists the result if it changed.
    pub fn update<T, R>(&self, f: impl FnOnce(&mut T) -> R) -> Result<R>
    where
        T: DeserializeOwned + Serialize + Default + PartialEq + Clone,
    {
        let _guard = self.lock(true)?;
        let mut state: T = self.load()?;
        let before = state.clone();
        let out = f(&mut state);
        if state != before {
            self.write_atomically(&state)?;
        }
        Ok(out)
    }

    fn write_atomically<T: Serialize>(&self, state: &T) -> Result<()> {
        let tmp = self
            .path
            .with_extension(format!("json.tmp.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::Unexpected(format!("cannot write {}: {e}", self.path.display()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn updates_persist_and_torn_temp_files_are_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path(), "s").unwrap();
        f.update(|m: &mut BTreeMap<String, u32>| m.insert("a".into(), 1))
            .unwrap();
        // A writer killed before its rename leaves only a temp file behind.
        fs::write(dir.path().join("s.json.tmp.999999"), b"{\"a\": 2, \"b\"").unwrap();
        let m: BTreeMap<String, u32> = f.read().unwrap();
        assert_eq!(m.get("a"), Some(&1));
    }

    #[test]
    fn corruption_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path(), "s").unwrap();
        fs::write(f.path(), b"{not json").unwrap();
        let err = f.read::<BTreeMap<String, u32>>().unwrap_err();
        assert!(err.to_string().contains("corrupt"));
    }
}
