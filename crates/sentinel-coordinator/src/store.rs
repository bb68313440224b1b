//! A coordinator node's durable storage, in the two halves openraft asks for (its storage-v2
//! traits):
//!
//! - [`LogStore`] ([`RaftLogStorage`]): the Raft log, the vote and the committed log id, in one
//!   redb database, `DIR/raft.redb`. The newest [`ENTRIES_IN_MEMORY`] entries (and any not yet
//!   durable or committed) are also kept in memory, so replication and the state machine, which
//!   read the tail, do not touch the disk; an older entry is read back from the database, so the
//!   log's memory does not grow with the entries between snapshots (up to 5,000 entries of dozens
//!   of commands each). Writes go to one writer thread in the order they were made. It
//!   commits everything queued since its last commit in one write transaction, with one fsync, and
//!   then reports every batch in it as flushed, while `append` itself returns at once as the trait
//!   asks. (openraft 0.9 awaits each append's flush before the next, so a transaction holds one
//!   append: a follower's AppendEntries, or one entry on the leader. Group commit on the leader
//!   therefore packs many commands into one entry before openraft sees them; see
//!   [`super::server`].)
//! - [`StateMachineStore`] ([`RaftStateMachine`]): the [`LockState`] in memory, applied from
//!   committed entries, and its snapshots in `DIR/snapshot` (replaced atomically, fsynced). After
//!   a restart the state is the last snapshot, and openraft applies the committed entries after
//!   it again from the log; snapshots let openraft purge the log they cover (log compaction) and
//!   bring a follower that fell behind the purged log up to date.
//!
//! A write that fails leaves the log in an unknown state on disk, so the writer refuses every
//! write after it: openraft then stops the node instead of building on a damaged log.
//!
//! Nothing is trusted at start-up: [`open`] refuses (with what is wrong and how to recover) a
//! data directory whose parts do not add up, as [`super::identity::check`] decides: a log that
//! is missing, emptied or older than the snapshot or than the high-water mark in `node.json`, a
//! directory of another node or cluster. A snapshot carries the SHA-256 of its state and is
//! refused when it does not match; a damaged `raft.redb` (redb may panic on one) is an error,
//! never a panic.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs;
use std::io::{self, Cursor};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, TableDefinition};
use sha2::{Digest, Sha256};

use super::identity::{self, Found, Recorder, write_atomically};
use super::state::{Answer, LockState};
use super::watch::History;
use super::{NodeId, TypeConfig};
use sentinel_core::error::{Error, Result};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "last_purged";

/// The database file in a node's data directory.
pub const LOG_FILE: &str = "raft.redb";
/// The snapshot file: one line of JSON metadata, then the state as JSON.
pub const SNAPSHOT_FILE: &str = "snapshot";
/// Most writes committed in one transaction: bounds the memory of one batch.
const MAX_WRITES_PER_COMMIT: usize = 4_096;
/// redb's page cache: the log is read back only at start-up and for a follower further behind
/// than [`ENTRIES_IN_MEMORY`], so a small cache suffices.
const CACHE_BYTES: usize = 4 << 20;
/// Entries kept in memory, the newest; older ones that are durable and committed (so never
/// truncated) are read back from the database. More than [`super::server`]'s `LOG_KEPT`, so a
/// follower a little behind catches up from memory.
pub const ENTRIES_IN_MEMORY: usize = 1_024;

type StorageResult<T> = std::result::Result<T, StorageError<NodeId>>;

/// Opens (creating if needed) the storage of node `id` whose data directory is `dir`, once the
/// directory's parts add up ([`identity::check`]).
pub fn open(dir: &Path, id: NodeId) -> Result<(LogStore, StateMachineStore)> {
    fs::create_dir_all(dir).map_err(|e| {
        Error::Unexpected(format!(
            "cannot create the data directory {}: {e}",
            dir.display()
        ))
    })?;
    let recorded = identity::read(dir)?;
    let recorder = Arc::new(Recorder::new(dir, id, recorded.clone()));
    let log = LogStore::open(dir, recorder.clone())?;
    let machine = StateMachineStore::open(dir, recorder.clone())?;
    let (log_last, purged, log_members, committed) = {
        let mem = log.mem();
        let last = mem.entries.keys().next_back().copied();
        let purged = mem.last_purged.map(|l| l.index);
        let members = mem.entries.values().rev().find_map(|e| match &e.payload {
            EntryPayload::Membership(m) => Some(m.clone()),
            _ => None,
        });
        (
            last.max(purged),
            purged,
            members,
            mem.committed.map(|c| c.index),
        )
    };
    let snapshot = machine.shared.snapshot_found.clone();
    let found = Found {
        recorded,
        log_last,
        purged,
        log_cluster: log_members.as_ref().map(identity::cluster_id),
        snapshot: snapshot.as_ref().map(|(index, _)| *index),
        snapshot_cluster: snapshot
            .as_ref()
            .and_then(|(_, m)| m.as_ref().map(identity::cluster_id)),
    };
    identity::check(dir, id, &found)?;
    // Start-up read the whole log; from here on only its tail stays in memory.
    log.trim(&mut log.mem());
    // A directory written before node.json existed, or by a node stopped before it was written,
    // gets it now.
    if let Some(m) = log_members
        .as_ref()
        .or(snapshot.as_ref().and_then(|(_, m)| m.as_ref()))
    {
        recorder.learn(m);
    }
    if let Some(c) = committed {
        recorder.committed(c);
    }
    recorder.after_commit(log_last, true).map_err(|e| {
        Error::Unexpected(format!(
            "cannot write {}: {e}",
            dir.join(identity::IDENTITY_FILE).display()
        ))
    })?;
    Ok((log, machine))
}

/// Runs `f`, turning a panic into an error: redb asserts on some damaged files (a truncated
/// `raft.redb`) instead of returning an error. The panic's message is not printed.
fn guarded<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    thread_local! {
        static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result.map_err(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no reason given".into());
        format!("the file is damaged (redb failed: {why})")
    })
}

/// What the log looks like, in memory.
struct LogMem {
    /// The newest entries ([`ENTRIES_IN_MEMORY`], and every one not yet durable or committed):
    /// a suffix of the log.
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

/// One change to the database, in the order the log store made it.
enum Change {
    Append(Vec<(u64, Vec<u8>)>),
    /// Delete entries from this index on.
    Truncate(u64),
    /// Delete entries up to and including this log id, and remember it.
    Purge(u64, Vec<u8>),
    Meta(&'static str, Vec<u8>),
}

/// Who learns that a write is durable.
enum Done {
    Nobody,
    Flushed(LogFlushed<TypeConfig>),
    Waiting(tokio::sync::oneshot::Sender<std::result::Result<(), String>>),
}

struct Job {
    change: Change,
    done: Done,
}

/// The Raft log, vote and committed log id. Cloning is cheap and shares the log: a clone is the
/// log reader replication uses.
#[derive(Clone)]
pub struct LogStore {
    mem: Arc<Mutex<LogMem>>,
    writer: Arc<Writer>,
    /// The database the writer commits to, for reading entries no longer in memory. After
    /// `writer`, so the last store joins the writer before it closes the database.
    db: Arc<Database>,
    /// The last index the writer has committed to the database.
    durable: Arc<AtomicU64>,
    recorder: Arc<Recorder>,
}

/// The queue to the writer thread. When the last log store is dropped, the thread commits what is
/// queued and ends, and the drop waits for it: the database is closed when the store is gone, so
/// the same process (a test, a restart) can open it again.
struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl LogStore {
    fn open(dir: &Path, recorder: Arc<Recorder>) -> Result<LogStore> {
        let path = dir.join(LOG_FILE);
        let damaged = |e: String| {
            Error::Unexpected(format!(
                "cannot read the Raft log {}: {e}. To recover: stop the node, move {} away, and \
                 start the node again so that it catches up from the other members, or restore a \
                 backup of the whole directory (see \"Data directory\" in docs/cluster.md).",
                path.display(),
                dir.display()
            ))
        };
        let db = match guarded(|| {
            Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create(&path)
        }) {
            Err(e) => return Err(damaged(e)),
            Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
                return Err(Error::Unexpected(format!(
                    "cannot open the Raft log {} (is another `sentinel serve` using this data \
                     directory?): {}",
                    path.display(),
                    redb::DatabaseError::DatabaseAlreadyOpen
                )));
            }
            Ok(Err(e)) => {
                return Err(damaged(format!("the file is damaged or unreadable ({e})")));
            }
            Ok(Ok(db)) => db,
        };
        let mem = guarded(|| load(&db)).and_then(|r| r).map_err(damaged)?;
        let durable_last = mem
            .entries
            .keys()
            .next_back()
            .copied()
            .max(mem.last_purged.map(|l| l.index));
        let (tx, jobs) = mpsc::channel();
        let self_recorder = recorder.clone();
        let db = Arc::new(db);
        let durable = Arc::new(AtomicU64::new(durable_last.unwrap_or(0)));
        let writing = Written {
            db: db.clone(),
            durable: durable.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || write_loop(writing, jobs, recorder, durable_last))?;
        Ok(LogStore {
            mem: Arc::new(Mutex::new(mem)),
            writer: Arc::new(Writer {
                jobs: Some(tx),
                thread: Some(thread),
            }),
            db,
            durable,
            recorder: self_recorder,
        })
    }

    /// Lets go of the oldest entries in memory beyond the newest [`ENTRIES_IN_MEMORY`] that are
    /// durable and committed: the database has them, and no truncation removes them.
    fn trim(&self, mem: &mut LogMem) {
        let durable = self.durable.load(Ordering::Acquire);
        let committed = mem.committed.map_or(0, |c| c.index);
        while mem.entries.len() > ENTRIES_IN_MEMORY {
            match mem.entries.first_key_value() {
                Some((&first, _)) if first <= durable.min(committed) => {
                    mem.entries.pop_first();
                }
                _ => break,
            }
        }
    }

    /// The entries of `range` that are older than those in memory (`before` is the first index
    /// in memory), read back from the database.
    fn read_back(
        &self,
        range: impl RangeBounds<u64>,
        before: u64,
    ) -> std::result::Result<Vec<Entry<TypeConfig>>, String> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        }
        .min(before);
        if start >= end {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let log = txn.open_table(LOG).map_err(|e| e.to_string())?;
        let mut entries = Vec::new();
        for row in log.range(start..end).map_err(|e| e.to_string())? {
            let (k, v) = row.map_err(|e| e.to_string())?;
            let entry: Entry<TypeConfig> = serde_json::from_slice(v.value())
                .map_err(|e| format!("log entry {}: {e}", k.value()))?;
            entries.push(entry);
        }
        Ok(entries)
    }

    /// The last committed log index this node knows of.
    pub fn committed_index(&self) -> Option<u64> {
        self.mem().committed.map(|c| c.index)
    }

    fn mem(&self) -> MutexGuard<'_, LogMem> {
        // A panic while holding the lock cannot leave the map half-changed (every change is a
        // single call), so a poisoned lock is still consistent.
        self.mem.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, change: Change, done: Done) -> std::result::Result<(), String> {
        let sent = self
            .writer
            .jobs
            .as_ref()
            .map(|jobs| jobs.send(Job { change, done }));
        sent.and_then(|r| r.ok())
            .ok_or_else(|| "the log writer has stopped".to_string())
    }

    /// Sends a write and waits until it is durable.
    async fn write_and_wait(&self, change: Change) -> std::result::Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(change, Done::Waiting(tx))?;
        rx.await
            .map_err(|_| "the log writer has stopped".to_string())?
    }
}

fn load(db: &Database) -> std::result::Result<LogMem, String> {
    // Create the tables on first use, so that reading them never fails for a new database.
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    txn.open_table(LOG).map_err(|e| e.to_string())?;
    txn.open_table(META).map_err(|e| e.to_string())?;
    txn.commit().map_err(|e| e.to_string())?;

    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let meta = txn.open_table(META).map_err(|e| e.to_string())?;
    let vote = read_meta(&meta, VOTE)?;
    let committed = read_meta::<Option<LogId<NodeId>>>(&meta, COMMITTED)?.flatten();
    let last_purged: Option<LogId<NodeId>> = read_meta(&meta, PURGED)?;
    let log = txn.open_table(LOG).map_err(|e| e.to_string())?;
    let mut entries = BTreeMap::new();
    for row in log.range::<u64>(..).map_err(|e| e.to_string())? {
        let (k, v) = row.map_err(|e| e.to_string())?;
        let entry: Entry<TypeConfig> = serde_json::from_slice(v.value())
            .map_err(|e| format!("log entry {}: {e}", k.value()))?;
        if entry.log_id.index != k.value() {
            return Err(format!(
                "log entry {} carries index {}",
                k.value(),
                entry.log_id.index
            ));
        }
        entries.insert(k.value(), entry);
    }
    // The log must be one run of consecutive indexes right after the purged part.
    let mut expected = last_purged.map(|l| l.index + 1);
    for &index in entries.keys() {
        if expected.is_some_and(|e| e != index) {
            return Err(format!("the log has a hole before entry {index}"));
        }
        expected = Some(index + 1);
    }
    Ok(LogMem {
        entries,
        last_purged,
        vote,
        committed,
    })
}

fn read_meta<T: serde::de::DeserializeOwned>(
    meta: &redb::ReadOnlyTable<&str, &[u8]>,
    key: &str,
) -> std::result::Result<Option<T>, String> {
    let Some(bytes) = meta.get(key).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    serde_json::from_slice(bytes.value())
        .map(Some)
        .map_err(|e| format!("{key}: {e}"))
}

/// Where the writer thread commits, and where it says how far the log is durable.
struct Written {
    db: Arc<Database>,
    durable: Arc<AtomicU64>,
}

/// The writer thread: commits what is queued in batches, in order, until every sender is gone.
/// After each commit it lets `recorder` update `node.json` with where the log now ends.
fn write_loop(
    Written { db, durable }: Written,
    jobs: mpsc::Receiver<Job>,
    recorder: Arc<Recorder>,
    mut durable_last: Option<u64>,
) {
    let mut failed: Option<String> = None;
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_WRITES_PER_COMMIT {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let result = match &failed {
            Some(e) => Err(e.clone()),
            None => guarded(|| commit(&db, &batch)).and_then(|r| r),
        };
        match &result {
            Err(e) => {
                tracing::error!("the Raft log cannot be written: {e}");
                failed = Some(format!("an earlier write of the Raft log failed: {e}"));
            }
            Ok(()) => {
                durable_last = batch
                    .iter()
                    .fold(durable_last, |last, job| ends_at(last, &job.change));
                durable.store(durable_last.unwrap_or(0), Ordering::Release);
                if let Err(e) = recorder.after_commit(durable_last, false) {
                    tracing::warn!("cannot record the node's identity in node.json: {e}");
                }
            }
        }
        for job in batch {
            match job.done {
                Done::Nobody => {}
                Done::Flushed(cb) => cb.log_io_completed(result.clone().map_err(io::Error::other)),
                Done::Waiting(tx) => {
                    let _ = tx.send(result.clone());
                }
            }
        }
    }
    if failed.is_none()
        && let Err(e) = recorder.after_commit(durable_last, true)
    {
        tracing::warn!("cannot record the node's identity in node.json: {e}");
    }
}

/// Where the log ends after `change`, if it ended at `last` before.
fn ends_at(last: Option<u64>, change: &Change) -> Option<u64> {
    match change {
        Change::Append(rows) => rows.iter().map(|(i, _)| *i).max().max(last),
        Change::Truncate(from) => match from.checked_sub(1) {
            Some(before) => last.map(|l| l.min(before)),
            None => None,
        },
        Change::Purge(upto, _) => last.max(Some(*upto)),
        Change::Meta(..) => last,
    }
}

/// Commits a batch of writes in one transaction (one fsync).
fn commit(db: &Database, batch: &[Job]) -> std::result::Result<(), String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut log = txn.open_table(LOG).map_err(|e| e.to_string())?;
        let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
        for job in batch {
            match &job.change {
                Change::Append(entries) => {
                    for (index, bytes) in entries {
                        log.insert(index, bytes.as_slice())
                            .map_err(|e| e.to_string())?;
                    }
                }
                Change::Truncate(from) => {
                    log.retain_in(*from.., |_, _| false)
                        .map_err(|e| e.to_string())?;
                }
                Change::Purge(upto, id) => {
                    log.retain_in(..=*upto, |_, _| false)
                        .map_err(|e| e.to_string())?;
                    meta.insert(PURGED, id.as_slice())
                        .map_err(|e| e.to_string())?;
                }
                Change::Meta(key, bytes) => {
                    meta.insert(*key, bytes.as_slice())
                        .map_err(|e| e.to_string())?;
                }
            }
        }
    }
    txn.commit().map_err(|e| e.to_string())
}

fn encode<T: serde::Serialize>(v: &T) -> std::result::Result<Vec<u8>, String> {
    serde_json::to_vec(v).map_err(|e| e.to_string())
}

/// A failed log write as openraft wants it.
fn write_error(e: String) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::error(e)).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let (first, cached): (Option<u64>, Vec<_>) = {
            let mem = self.mem();
            let first = mem.entries.first_key_value().map(|(&i, _)| i);
            let cached = mem.entries.range(range.clone()).map(|(_, e)| e.clone());
            (first, cached.collect())
        };
        // Entries leave memory only once durable and committed, and purged ones are never asked
        // for, so what is older than the memory's first entry is in the database.
        let mut entries = match first {
            // redb may panic on a damaged file: an error, like at start-up.
            Some(first) => guarded(|| self.read_back(range, first))
                .and_then(|r| r)
                .map_err(|e| {
                    StorageError::from(StorageIOError::read_logs(AnyError::error(format!(
                        "cannot read the Raft log back: {e}"
                    ))))
                })?,
            None => Vec::new(),
        };
        entries.extend(cached);
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let mem = self.mem();
        let last = mem.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: mem.last_purged,
            last_log_id: last.or(mem.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.write_and_wait(Change::Meta(VOTE, encode(vote).map_err(write_error)?))
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::error(e)))?;
        self.mem().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(self.mem().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not waited for: a committed log id that is lost in a crash is learnt again from the
        // leader, and everything it covers is in the log anyway.
        let bytes = encode(&committed).map_err(write_error)?;
        self.send(Change::Meta(COMMITTED, bytes), Done::Nobody)
            .map_err(write_error)?;
        if let Some(c) = committed {
            self.recorder.committed(c.index);
        }
        self.mem().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.mem().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Encode everything before changing the log in memory, so a failure changes nothing.
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        for e in &entries {
            if let EntryPayload::Membership(m) = &e.payload {
                self.recorder.learn(m);
            }
        }
        let rows = entries
            .iter()
            .map(|e| Ok((e.log_id.index, encode(e)?)))
            .collect::<std::result::Result<Vec<_>, String>>()
            .map_err(write_error)?;
        {
            let mut mem = self.mem();
            mem.entries
                .extend(entries.into_iter().map(|e| (e.log_id.index, e)));
            self.trim(&mut mem);
        }
        self.send(Change::Append(rows), Done::Flushed(callback))
            .map_err(write_error)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.mem().entries.split_off(&log_id.index);
        self.send(Change::Truncate(log_id.index), Done::Nobody)
            .map_err(write_error)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        {
            let mut mem = self.mem();
            let kept = mem.entries.split_off(&(log_id.index + 1));
            mem.entries = kept;
            mem.last_purged = Some(log_id);
        }
        let bytes = encode(&log_id).map_err(write_error)?;
        self.send(Change::Purge(log_id.index, bytes), Done::Nobody)
            .map_err(write_error)
    }
}

/// The lock state and what openraft needs to know about it.
#[derive(Debug, Default)]
pub struct Machine {
    /// The locks.
    pub state: LockState,
    /// The last entry applied to the state.
    pub last_applied: Option<LogId<NodeId>>,
    /// The last membership applied (the cluster's members).
    pub membership: StoredMembership<NodeId, BasicNode>,
}

struct Shared {
    dir: PathBuf,
    recorder: Arc<Recorder>,
    /// The snapshot found at start-up: the last index it covers and its membership.
    snapshot_found: Option<(u64, Option<openraft::Membership<NodeId, BasicNode>>)>,
    machine: RwLock<Machine>,
    /// Held while the snapshot file is written; the last log id the file covers. Snapshots are
    /// built in tasks of their own, so a slow build may finish after a newer snapshot was
    /// installed: it must not replace it.
    snapshot: Mutex<Option<LogId<NodeId>>>,
    /// The last applied log index, for whoever waits for the state to change.
    applied: tokio::sync::watch::Sender<u64>,
    /// The last events applied, for watchers.
    history: Mutex<History>,
}

/// The state machine half of the storage. Cloning is cheap and shares the state: the server
/// reads locks through a clone, and a clone builds snapshots.
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
}

impl StateMachineStore {
    fn open(dir: &Path, recorder: Arc<Recorder>) -> Result<StateMachineStore> {
        let path = dir.join(SNAPSHOT_FILE);
        let damaged = |e: String| {
            Error::Unexpected(format!(
                "the snapshot {} is damaged: {e}. It is never loaded. To recover: stop the node, \
                 move {} away, and start the node again so that it catches up from the other \
                 members, or restore a backup of the whole directory (see \"Data directory\" in \
                 docs/cluster.md).",
                path.display(),
                dir.display()
            ))
        };
        let machine = match fs::read(&path) {
            Ok(bytes) => {
                let SnapshotFile {
                    meta,
                    data,
                    checked,
                } = split_snapshot(&bytes).map_err(damaged)?;
                if !checked {
                    tracing::warn!(
                        "the snapshot {} has no checksum (written by an older version): loaded \
                         unchecked; the next snapshot will carry one",
                        path.display()
                    );
                }
                let state = LockState::from_json(data).map_err(damaged)?;
                Machine {
                    state,
                    last_applied: meta.last_log_id,
                    membership: meta.last_membership,
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Machine::default(),
            Err(e) => {
                return Err(Error::Unexpected(format!(
                    "cannot read the snapshot {}: {e}",
                    path.display()
                )));
            }
        };
        let snapshot_found = path.exists().then(|| {
            (
                machine.last_applied.map_or(0, |l| l.index),
                machine
                    .membership
                    .log_id()
                    .is_some()
                    .then(|| machine.membership.membership().clone()),
            )
        });
        Ok(StateMachineStore {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                recorder,
                snapshot_found,
                snapshot: Mutex::new(machine.last_applied),
                applied: tokio::sync::watch::Sender::new(
                    machine.last_applied.map_or(0, |l| l.index),
                ),
                history: Mutex::new(History::after(machine.state.revision())),
                machine: RwLock::new(machine),
            }),
        })
    }

    /// Reads the state machine (shared with applying: keep it short).
    pub fn read<T>(&self, f: impl FnOnce(&Machine) -> T) -> T {
        // `apply` changes the state in single steps that cannot panic halfway through a change
        // of the maps, so a poisoned lock still holds a consistent state.
        f(&self
            .shared
            .machine
            .read()
            .unwrap_or_else(|e| e.into_inner()))
    }

    /// Changes the state machine, then wakes whoever waits for a change.
    fn write<T>(&self, f: impl FnOnce(&mut Machine) -> T) -> T {
        let mut machine = self
            .shared
            .machine
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let result = f(&mut machine);
        let applied = machine.last_applied.map_or(0, |l| l.index);
        drop(machine);
        self.shared.applied.send_replace(applied);
        result
    }

    /// Reads the events this node keeps for watchers.
    pub fn history<T>(&self, f: impl FnOnce(&History) -> T) -> T {
        f(&self
            .shared
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner()))
    }

    /// A receiver that wakes up whenever entries have been applied (or a snapshot installed).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.applied.subscribe()
    }

    /// Writes the snapshot file, unless it already holds a newer snapshot.
    fn save_snapshot(&self, meta: &SnapshotMeta<NodeId, BasicNode>, data: &[u8]) -> io::Result<()> {
        let mut covered = self
            .shared
            .snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *covered > meta.last_log_id {
            return Ok(());
        }
        let mut header = serde_json::to_value(meta).map_err(io::Error::other)?;
        if let Some(fields) = header.as_object_mut() {
            fields.insert(CHECKSUM.into(), identity::hex(&Sha256::digest(data)).into());
        }
        let mut bytes = serde_json::to_vec(&header).map_err(io::Error::other)?;
        bytes.push(b'\n');
        bytes.extend_from_slice(data);
        write_atomically(&self.shared.dir, SNAPSHOT_FILE, &bytes)?;
        *covered = meta.last_log_id;
        Ok(())
    }
}

/// The field of a snapshot file's first line, next to openraft's metadata, that holds the SHA-256
/// of the state's bytes that follow (in hex; absent in files of older versions).
const CHECKSUM: &str = "sha256";

/// A snapshot file's first line as far as the checksum goes (openraft's metadata is read apart:
/// `serde(flatten)` cannot read its maps keyed by node id).
#[derive(serde::Deserialize)]
struct SnapshotChecksum {
    sha256: Option<String>,
}

/// A snapshot file, split.
struct SnapshotFile<'a> {
    meta: SnapshotMeta<NodeId, BasicNode>,
    /// The state's bytes.
    data: &'a [u8],
    /// Whether the file had a checksum (it matched).
    checked: bool,
}

/// Splits a snapshot file into its metadata and its state's bytes, checking the checksum.
fn split_snapshot(bytes: &[u8]) -> std::result::Result<SnapshotFile<'_>, String> {
    let split = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no metadata line")?;
    let meta = serde_json::from_slice(&bytes[..split]).map_err(|e| e.to_string())?;
    let header: SnapshotChecksum =
        serde_json::from_slice(&bytes[..split]).map_err(|e| e.to_string())?;
    let data = &bytes[split + 1..];
    if let Some(expected) = &header.sha256 {
        let actual = identity::hex(&Sha256::digest(data));
        if actual != *expected {
            return Err(format!(
                "its checksum does not match (SHA-256 {actual}, recorded {expected})"
            ));
        }
    }
    Ok(SnapshotFile {
        meta,
        data,
        checked: header.sha256.is_some(),
    })
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        // A copy under the lock, encoded outside it: encoding 100,000 locks takes long enough
        // to stall every apply (and so every answer) if done while holding it.
        let (state, last_applied, membership) =
            self.read(|m| (m.state.clone(), m.last_applied, m.membership.clone()));
        let meta = SnapshotMeta {
            snapshot_id: format!(
                "{}-{:016x}",
                last_applied.map_or(0, |l| l.index),
                fastrand::u64(..)
            ),
            last_log_id: last_applied,
            last_membership: membership,
        };
        let this = self.clone();
        let (meta, data) = tokio::task::spawn_blocking(move || {
            let data = state.to_json().map_err(io::Error::other)?;
            this.save_snapshot(&meta, &data).map(|()| (meta, data))
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, AnyError::error(e)))?
        .map_err(|e| StorageIOError::write_snapshot(None, AnyError::new(&e)))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        Ok(self.read(|m| (m.last_applied, m.membership.clone())))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Vec<Option<Answer>>>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        Ok(self.write(|m| {
            // Taken before the state's lock is let go, so watchers read events in order.
            let mut history = self
                .shared
                .history
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            entries
                .into_iter()
                .map(|entry| {
                    m.last_applied = Some(entry.log_id);
                    match entry.payload {
                        EntryPayload::Blank => Vec::new(),
                        EntryPayload::Normal(batch) => m
                            .state
                            .apply(entry.log_id.index, entry.log_id.leader_id.term, &batch)
                            .into_iter()
                            .map(|applied| {
                                applied.events.into_iter().for_each(|e| history.push(e));
                                applied.answer
                            })
                            .collect(),
                        EntryPayload::Membership(members) => {
                            self.shared.recorder.learn(&members);
                            m.membership = StoredMembership::new(Some(entry.log_id), members);
                            Vec::new()
                        }
                    }
                })
                .collect()
        }))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let state = LockState::from_json(&data).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::error(e))
        })?;
        let this = self.clone();
        let saved = meta.clone();
        tokio::task::spawn_blocking(move || this.save_snapshot(&saved, &data))
            .await
            .map_err(|e| {
                StorageIOError::write_snapshot(Some(meta.signature()), AnyError::error(e))
            })?
            .map_err(|e| {
                StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e))
            })?;
        self.shared
            .recorder
            .learn(meta.last_membership.membership());
        self.write(|m| {
            // The events before the snapshot are not this node's to tell.
            *self
                .shared
                .history
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = History::after(state.revision());
            m.state = state;
            m.last_applied = meta.last_log_id;
            m.membership = meta.last_membership.clone();
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        // The metadata comes from the file, not from memory: a snapshot saved meanwhile replaces
        // the file as a whole, so metadata and data always belong together.
        let path = self.shared.dir.join(SNAPSHOT_FILE);
        // Read and checked (a SHA-256 over what may be tens of MB) off the async workers.
        let read = tokio::task::spawn_blocking(move || {
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.to_string()),
            };
            let file = split_snapshot(&bytes)
                .map_err(|e| format!("the snapshot {} is damaged: {e}", path.display()))?;
            Ok(Some((file.meta, file.data.to_vec())))
        })
        .await
        .map_err(|e| StorageIOError::read_snapshot(None, AnyError::error(e)))?
        .map_err(|e| StorageIOError::read_snapshot(None, AnyError::error(e)))?;
        Ok(read.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Acquire, Batch, Command, Proposal, position};
    use openraft::storage::RaftLogStorageExt;
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{CommittedLeaderId, Membership};
    use sentinel_core::lock::TaskInfo;
    use std::collections::BTreeSet;
    use tempfile::TempDir;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
        async fn build(&self) -> StorageResult<(TempDir, LogStore, StateMachineStore)> {
            let dir = tempfile::tempdir().unwrap();
            let (log, sm) = open(dir.path(), 1).unwrap();
            Ok((dir, log, sm))
        }
    }

    /// openraft's own checks of what its storage traits require.
    #[test]
    fn passes_openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn acquire(index: u64, name: &str) -> Proposal {
        Proposal {
            at_ms: 1_000 + index,
            command: Command::Acquire(Acquire {
                request_id: format!("r{index}"),
                name: name.into(),
                holder: "w1".into(),
                node: "n1".into(),
                ttl_ms: 60_000,
                wait_ms: 0,
                readopt: false,
                task_info: TaskInfo::default(),
                session: None,
            }),
        }
    }

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(Batch(vec![acquire(index, &format!("lock-{index}"))])),
        }
    }

    /// Only the log's tail stays in memory; older entries, committed and durable, are read back
    /// from the database, alone or together with the tail, and uncommitted ones are never let go.
    #[tokio::test]
    async fn entries_beyond_the_memorys_tail_are_read_back_from_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _sm) = open(dir.path(), 1).unwrap();
        let total = 3 * ENTRIES_IN_MEMORY as u64;
        let uncommitted = total - ENTRIES_IN_MEMORY as u64 / 2;
        let mut next = 1;
        while next <= total {
            let upto = (next + 99).min(total);
            log.blocking_append((next..=upto).map(|i| entry(1, i)))
                .await
                .unwrap();
            if upto <= uncommitted {
                log.save_committed(Some(log_id(1, upto))).await.unwrap();
            }
            next = upto + 1;
        }
        let first_in_memory = *log.mem().entries.first_key_value().unwrap().0;
        assert!(first_in_memory > 1, "nothing left memory");
        assert!(log.mem().entries.len() <= ENTRIES_IN_MEMORY + 100);
        // Committed up to `uncommitted` only: everything after it is still in memory.
        assert!(first_in_memory <= uncommitted + 1);
        for (from, to) in [
            (1, total),
            (5, 17),
            (first_in_memory - 3, first_in_memory + 3),
        ] {
            let read = log.try_get_log_entries(from..=to).await.unwrap();
            let expected: Vec<_> = (from..=to).map(|i| entry(1, i)).collect();
            assert_eq!(read, expected, "entries {from}..={to}");
        }
        // A new leader replaces the uncommitted tail; the rest is read as before.
        log.truncate(log_id(1, uncommitted + 1)).await.unwrap();
        log.blocking_append((uncommitted + 1..=total).map(|i| entry(2, i)))
            .await
            .unwrap();
        let read = log.try_get_log_entries(..).await.unwrap();
        let expected: Vec<_> = (1..=uncommitted)
            .map(|i| entry(1, i))
            .chain((uncommitted + 1..=total).map(|i| entry(2, i)))
            .collect();
        assert_eq!(read, expected);
    }

    #[tokio::test]
    async fn a_reopened_log_has_every_appended_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut expected = BTreeMap::new();
        {
            let (mut log, mut sm) = open(dir.path(), 1).unwrap();
            let mut next = 1;
            for size in [1, 7, 64, 3, 200, 1, 300] {
                let batch: Vec<_> = (next..next + size).map(|i| entry(1, i)).collect();
                next += size;
                log.blocking_append(batch).await.unwrap();
            }
            log.save_vote(&Vote::new(2, 1)).await.unwrap();
            // openraft purges only what a snapshot covers.
            sm.apply(log.try_get_log_entries(..=100).await.unwrap())
                .await
                .unwrap();
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            log.purge(log_id(1, 100)).await.unwrap();
            // A new leader replaces the tail of the log.
            log.truncate(log_id(1, 450)).await.unwrap();
            log.blocking_append((450..460).map(|i| entry(2, i)))
                .await
                .unwrap();
            log.save_committed(Some(log_id(2, 455))).await.unwrap();
            let all = log.try_get_log_entries(0..).await.unwrap();
            for e in all {
                expected.insert(e.log_id.index, e);
            }
        }
        assert_eq!(expected.len(), 359);
        let (mut log, _) = open(dir.path(), 1).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 100)));
        assert_eq!(state.last_log_id, Some(log_id(2, 459)));
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 455)));
        let read: BTreeMap<u64, Entry<TypeConfig>> = log
            .try_get_log_entries(0..)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.log_id.index, e))
            .collect();
        assert_eq!(
            serde_json::to_value(&read).unwrap(),
            serde_json::to_value(&expected).unwrap()
        );
    }

    #[tokio::test]
    async fn a_second_node_process_cannot_share_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(dir.path(), 1).unwrap();
        let e = open(dir.path(), 1).err().expect("the database is locked");
        assert!(e.to_string().contains("another `sentinel serve`"), "{e}");
    }

    #[tokio::test]
    async fn the_state_comes_back_from_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let members = Membership::new(vec![BTreeSet::from([1, 2, 3])], None);
        let (state, applied) = {
            let (mut log, mut sm) = open(dir.path(), 1).unwrap();
            let mut entries = vec![Entry {
                log_id: log_id(1, 1),
                payload: EntryPayload::Membership(members.clone()),
            }];
            entries.extend((2..=20).map(|i| entry(1, i)));
            entries.push(Entry {
                log_id: log_id(1, 21),
                payload: EntryPayload::Blank,
            });
            log.blocking_append(entries.clone()).await.unwrap();
            let answers = sm.apply(entries).await.unwrap();
            assert_eq!(answers.len(), 21);
            assert!(answers[0].is_empty() && answers[20].is_empty());
            assert!(
                matches!(&answers[1][..], [Some(Answer::Granted { lease, .. })] if lease.fencing_token == position(2, 0))
            );
            let snap = sm
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            assert_eq!(snap.meta.last_log_id, Some(log_id(1, 21)));
            (
                sm.read(|m| m.state.clone()),
                sm.applied_state().await.unwrap(),
            )
        };
        assert_eq!(state.held(), 19);
        let (_, mut sm) = open(dir.path(), 1).unwrap();
        assert_eq!(sm.read(|m| m.state.clone()), state);
        assert_eq!(sm.applied_state().await.unwrap(), applied);
        assert_eq!(applied.1.membership(), &members);

        // A follower installs it and holds the same state.
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        let other = tempfile::tempdir().unwrap();
        let (_, mut follower) = open(other.path(), 1).unwrap();
        follower
            .install_snapshot(&current.meta, current.snapshot)
            .await
            .unwrap();
        assert_eq!(follower.read(|m| m.state.clone()), state);
        assert_eq!(follower.applied_state().await.unwrap(), applied);

        // A snapshot built before but saved after a newer one does not replace it.
        let mut older = current.meta.clone();
        older.last_log_id = Some(log_id(1, 5));
        follower.save_snapshot(&older, b"{}").unwrap();
        let kept = follower.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(kept.meta, current.meta);
    }

    #[tokio::test]
    async fn damaged_files_are_reported_not_reset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SNAPSHOT_FILE), b"{\"no\": \"newline\"}").unwrap();
        let e = open(dir.path(), 1).err().unwrap().to_string();
        assert!(e.contains("damaged"), "{e}");
        std::fs::write(dir.path().join(SNAPSHOT_FILE), b"{}\n{}").unwrap();
        assert!(open(dir.path(), 1).is_err());

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_FILE), b"not a database").unwrap();
        let e = open(dir.path(), 1).err().unwrap().to_string();
        assert!(e.contains("Raft log"), "{e}");
    }

    /// A node's directory as a run leaves it: a log of `n` entries (membership first), committed
    /// and applied, a snapshot of the first `snap` entries, `node.json`.
    async fn filled(dir: &Path, n: u64, snap: u64) {
        let (mut log, mut sm) = open(dir, 1).unwrap();
        let members = Membership::new(
            vec![BTreeSet::from([1])],
            BTreeMap::from([(1, BasicNode::new("127.0.0.1:1"))]),
        );
        let mut entries = vec![Entry {
            log_id: log_id(1, 1),
            payload: EntryPayload::Membership(members),
        }];
        entries.extend((2..=n).map(|i| entry(1, i)));
        log.blocking_append(entries.clone()).await.unwrap();
        log.save_committed(Some(log_id(1, n))).await.unwrap();
        let (first, rest) = entries.split_at(snap as usize);
        sm.apply(first.to_vec()).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        sm.apply(rest.to_vec()).await.unwrap();
    }

    fn refusal(dir: &Path, id: NodeId) -> Error {
        open(dir, id).err().expect("refused")
    }

    #[tokio::test]
    async fn a_directory_records_whose_it_is_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path(), 30, 20).await;
        let rec = identity::read(dir.path()).unwrap().unwrap();
        assert_eq!(rec.node_id, 1);
        assert_eq!(rec.committed, 30);
        assert_eq!(rec.cluster_id.len(), 32);
        let snapshot = std::fs::read_to_string(dir.path().join(SNAPSHOT_FILE)).unwrap();
        assert!(
            snapshot.lines().next().unwrap().contains("\"sha256\":\""),
            "{snapshot}"
        );
        let (mut log, sm) = open(dir.path(), 1).unwrap();
        assert_eq!(
            log.get_log_state().await.unwrap().last_log_id,
            Some(log_id(1, 30))
        );
        assert_eq!(sm.read(|m| m.last_applied), Some(log_id(1, 20)));
    }

    #[tokio::test]
    async fn a_deleted_or_emptied_log_is_refused() {
        for how in ["deleted", "emptied"] {
            let dir = tempfile::tempdir().unwrap();
            filled(dir.path(), 30, 20).await;
            let path = dir.path().join(LOG_FILE);
            match how {
                "deleted" => std::fs::remove_file(&path).unwrap(),
                _ => std::fs::write(&path, b"").unwrap(),
            }
            let e = refusal(dir.path(), 1);
            assert_eq!(e.exit_code(), sentinel_core::error::ExitCode::Unexpected);
            let e = e.to_string();
            assert!(e.contains("raft.redb) is missing or empty"), "{how}: {e}");
            assert!(e.contains("To recover"), "{e}");
            // And again: the refusal changed nothing.
            assert!(
                refusal(dir.path(), 1)
                    .to_string()
                    .contains("missing or empty")
            );
        }
        // Without node.json (a directory of an older version), the snapshot still tells.
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path(), 30, 20).await;
        std::fs::remove_file(dir.path().join(LOG_FILE)).unwrap();
        std::fs::remove_file(dir.path().join(identity::IDENTITY_FILE)).unwrap();
        assert!(
            refusal(dir.path(), 1)
                .to_string()
                .contains("missing or empty")
        );
    }

    #[tokio::test]
    async fn a_damaged_log_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path(), 30, 20).await;
        let path = dir.path().join(LOG_FILE);
        let bytes = std::fs::read(&path).unwrap();
        for len in [bytes.len() / 2, 4096, 100, 10] {
            std::fs::write(&path, &bytes[..len]).unwrap();
            let e = refusal(dir.path(), 1).to_string();
            eprintln!("{len} bytes of {}: {e}", bytes.len());
            assert!(e.contains("cannot read the Raft log"), "{len}: {e}");
            assert!(e.contains("damaged"), "{len}: {e}");
        }
        // Bytes flipped all over the file: an error or (where redb does not notice) a log that
        // does not add up, never a panic.
        for at in (0..bytes.len()).step_by(bytes.len() / 16) {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0xff;
            std::fs::write(&path, &flipped).unwrap();
            let _ = open(dir.path(), 1);
        }
    }

    #[tokio::test]
    async fn a_log_older_than_the_snapshot_or_the_mark_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let old = tempfile::tempdir().unwrap();
        filled(old.path(), 10, 10).await;
        filled(dir.path(), 30, 20).await;
        // raft.redb from an older copy of the same node.
        std::fs::copy(old.path().join(LOG_FILE), dir.path().join(LOG_FILE)).unwrap();
        let e = refusal(dir.path(), 1).to_string();
        assert!(e.contains("older than the snapshot"), "{e}");
        // The snapshot of that older copy too: only node.json's mark tells.
        std::fs::copy(
            old.path().join(SNAPSHOT_FILE),
            dir.path().join(SNAPSHOT_FILE),
        )
        .unwrap();
        let e = refusal(dir.path(), 1).to_string();
        assert!(e.contains("had committed entries up to index 30"), "{e}");
    }

    #[tokio::test]
    async fn another_node_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path(), 30, 20).await;
        let e = refusal(dir.path(), 2);
        assert_eq!(e.exit_code(), sentinel_core::error::ExitCode::Usage);
        assert!(
            e.to_string().contains("belongs to node 1, not to node 2"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_changed_snapshot_is_refused_and_an_unchecked_one_accepted() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path(), 30, 20).await;
        let path = dir.path().join(SNAPSHOT_FILE);
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        let (head, state) = text.split_once('\n').unwrap();
        // One letter of a lock's name changed: valid JSON, a valid state, a wrong checksum.
        let changed = format!("{head}\n{}", state.replacen("lock-2", "lock-X", 1));
        std::fs::write(&path, &changed).unwrap();
        let e = refusal(dir.path(), 1).to_string();
        assert!(e.contains("checksum does not match"), "{e}");
        assert!(e.contains("never loaded"), "{e}");
        // Served to a follower neither.
        std::fs::write(&path, &bytes).unwrap();
        {
            let (_, mut sm) = open(dir.path(), 1).unwrap();
            std::fs::write(&path, &changed).unwrap();
            assert!(sm.get_current_snapshot().await.is_err());
        }
        // A snapshot of an older version has no checksum: loaded, with a warning.
        let mut header: serde_json::Value = serde_json::from_str(head).unwrap();
        header.as_object_mut().unwrap().remove("sha256");
        std::fs::write(&path, format!("{header}\n{state}")).unwrap();
        let (_, sm) = open(dir.path(), 1).unwrap();
        assert_eq!(sm.read(|m| m.state.held()), 19);
    }
}
