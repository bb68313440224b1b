//! The embedded, crash-safe, multi-process store of the local backend: the [`LockTable`] in
//! `locks.json` of the data directory, kept by a [`StateFile`] (atomic replacement under an OS
//! file lock, so concurrent processes serialize and a killed one loses nothing).

use std::path::PathBuf;

use sentinel_core::error::Result;
use sentinel_core::statefile::StateFile;
use sentinel_core::table::LockTable;

#[cfg(test)]
const TMP_PREFIX: &str = "locks.json.tmp.";

/// A lock table persisted in a directory, shared safely by any number of processes and threads.
#[derive(Debug, Clone)]
pub struct LocalStore {
    file: StateFile,
}

impl LocalStore {
    /// Opens (and creates, if needed) the store directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<LocalStore> {
        Ok(LocalStore {
            file: StateFile::new(&dir.into(), "locks")?,
        })
    }

    /// The path of the table file, for messages.
    pub fn table_path(&self) -> PathBuf {
        self.file.path()
    }

    /// Runs `f` on the current table under an exclusive lock held across processes, and commits
    /// the table atomically if `f` changed it. Blocks while another process or thread is inside a
    /// transaction. If `f` panics, nothing is written and the lock is released.
    pub fn transact<R>(&self, f: impl FnOnce(&mut LockTable) -> R) -> Result<R> {
        self.file.update(f)
    }

    /// Reads the current table under a shared lock.
    pub fn read(&self) -> Result<LockTable> {
        self.file.read()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_core::error::Error;
    use sentinel_core::lock::{HoldKind, Takeover, TaskInfo};
    use sentinel_core::table::{Op, Response};
    use std::fs;
    use std::path::Path;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    fn acquire(name: &str, worker: &str) -> Op {
        Op::Acquire {
            name: name.into(),
            worker_id: worker.into(),
            node_id: "n".into(),
            ttl_ms: 60_000,
            takeover: Takeover::None,
            task_info: TaskInfo::default(),
            readopt: true,
            kind: HoldKind::Exclusive,
            wait_ms: 0,
        }
    }

    /// A store holding lock "a" for w1, and that committed table.
    fn store_with_one_lock() -> (tempfile::TempDir, LocalStore, LockTable) {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::open(tmp.path()).unwrap();
        store
            .transact(|t| t.apply(&acquire("a", "w1"), 10))
            .unwrap();
        let committed = store.read().unwrap();
        (tmp, store, committed)
    }

    fn tmp_files(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(TMP_PREFIX))
            .collect()
    }

    #[test]
    fn open_creates_the_directory_and_starts_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/sentinel");
        let store = LocalStore::open(&dir).unwrap();
        assert!(dir.is_dir());
        assert_eq!(store.read().unwrap(), LockTable::default());
        // Reading creates no table file; an unchanged transaction writes nothing either.
        store.transact(|t| t.get("x").cloned()).unwrap();
        assert!(!store.table_path().exists());
    }

    #[test]
    fn changes_persist_across_store_instances() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::open(tmp.path()).unwrap();
        let resp = store
            .transact(|t| t.apply(&acquire("a", "w1"), 10))
            .unwrap();
        assert!(matches!(resp, Response::Granted { .. }));
        let other = LocalStore::open(tmp.path()).unwrap();
        let table = other.read().unwrap();
        assert_eq!(table.get("a").unwrap().worker_id, "w1");
        assert_eq!(table.next_token(), 2);
        // The file is readable JSON a human can inspect.
        let text = fs::read_to_string(other.table_path()).unwrap();
        assert!(text.contains("\"worker_id\": \"w1\""), "{text}");
        assert!(tmp_files(tmp.path()).is_empty());
    }

    #[test]
    fn corrupt_table_is_reported_not_reset() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::open(tmp.path()).unwrap();
        for garbage in ["{\"next_token\": 3, \"locks\": {", "", "[]"] {
            fs::write(store.table_path(), garbage).unwrap();
            for err in [
                store.read().unwrap_err(),
                store
                    .transact(|t| t.apply(&acquire("a", "w1"), 1))
                    .unwrap_err(),
            ] {
                assert!(matches!(err, Error::Unexpected(_)), "{err:?}");
                let msg = err.to_string();
                assert!(
                    msg.contains(&store.table_path().display().to_string()),
                    "{msg}"
                );
                assert!(msg.contains("corrupt") && msg.contains("mv "), "{msg}");
            }
            // Untouched: the user decides.
            assert_eq!(fs::read_to_string(store.table_path()).unwrap(), garbage);
        }
        // Valid JSON that breaks the fencing invariant is corrupt too.
        fs::write(
            store.table_path(),
            r#"{"next_token": 1, "locks": {"a": {"worker_id": "w", "node_id": "n",
               "fencing_token": 5, "claimed_at_ms": 0, "heartbeat_ms": 0, "ttl_ms": 1}}}"#,
        )
        .unwrap();
        let msg = store.read().unwrap_err().to_string();
        assert!(msg.contains("fencing token 5"), "{msg}");
        // Moving it aside, as the message says, recovers.
        fs::rename(store.table_path(), tmp.path().join("locks.json.corrupt")).unwrap();
        assert_eq!(store.read().unwrap(), LockTable::default());
    }

    #[test]
    fn killed_writer_leaves_the_last_committed_table() {
        let (tmp, store, committed) = store_with_one_lock();
        // A writer killed after writing half of its temporary file, before the rename.
        let full = serde_json::to_string_pretty(&{
            let mut t = committed.clone();
            t.apply(&acquire("b", "w2"), 11);
            t
        })
        .unwrap();
        let dead = tmp.path().join(format!("{TMP_PREFIX}999999"));
        fs::write(&dead, &full.as_bytes()[..full.len() / 2]).unwrap();
        // And one killed after a complete write but before the rename: still not committed.
        fs::write(tmp.path().join(format!("{TMP_PREFIX}999998")), &full).unwrap();
        assert_eq!(store.read().unwrap(), committed);
        assert_eq!(tmp_files(tmp.path()).len(), 2);
        // The next transaction sees the committed table and cleans the leftovers up.
        let seen = store.transact(|t| t.clone()).unwrap();
        assert_eq!(seen, committed);
        assert!(tmp_files(tmp.path()).is_empty());
        store
            .transact(|t| t.apply(&acquire("c", "w3"), 12))
            .unwrap();
        let table = store.read().unwrap();
        assert!(table.get("a").is_some() && table.get("b").is_none());
        assert_eq!(table.get("c").unwrap().fencing_token, 2);
    }

    #[test]
    fn panic_inside_a_transaction_writes_nothing_and_unlocks() {
        let (_tmp, store, committed) = store_with_one_lock();
        let s = store.clone();
        let joined = std::thread::spawn(move || {
            s.transact(|t| {
                t.apply(&acquire("b", "w2"), 11);
                panic!("simulated crash inside the transaction");
            })
        })
        .join();
        assert!(joined.is_err());
        let (tx, rx) = mpsc::channel();
        let s = store.clone();
        std::thread::spawn(move || tx.send(s.transact(|t| t.clone()).unwrap()).unwrap());
        let seen = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the lock must be free after the panic");
        assert_eq!(seen, committed);
    }

    /// Child-process half of `killed_holder_releases_the_lock`: takes the exclusive lock, changes
    /// the table in memory, signals readiness and waits to be killed (at most a minute).
    #[test]
    #[ignore = "helper run as a child process by killed_holder_releases_the_lock"]
    fn child_holds_the_lock_until_killed() {
        let Some(dir) = std::env::var_os("SENTINEL_TEST_CHILD_DIR") else {
            return;
        };
        let dir = PathBuf::from(dir);
        let store = LocalStore::open(&dir).unwrap();
        store
            .transact(|t| {
                t.apply(&acquire("child", "w-child"), 20);
                fs::write(dir.join("child-ready"), b"").unwrap();
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(60) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
            .unwrap();
    }

    #[test]
    fn killed_holder_releases_the_lock() {
        let (tmp, store, committed) = store_with_one_lock();

        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::tests::child_holds_the_lock_until_killed",
                "--ignored",
                "--test-threads=1",
            ])
            .env("SENTINEL_TEST_CHILD_DIR", tmp.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !tmp.path().join("child-ready").exists() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("child exited early: {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "child never got the lock"
            );
            std::thread::sleep(Duration::from_millis(20));
        }

        // While the child holds the lock, a transaction here waits.
        let (tx, rx) = mpsc::channel();
        let s = store.clone();
        std::thread::spawn(move || tx.send(s.transact(|t| t.clone()).unwrap()).unwrap());
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());

        // SIGKILL: the kernel drops the file lock, the uncommitted change is gone.
        child.kill().unwrap();
        child.wait().unwrap();
        let seen = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the lock must be free once its holder died");
        assert_eq!(seen, committed);
        assert!(store.read().unwrap().get("child").is_none());
    }
}
