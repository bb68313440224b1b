//! Whose a data directory is, and the checks that keep a node from starting on data that does not
//! add up.
//!
//! Why: openraft trusts whatever storage it is given. A node whose `raft.redb` was deleted but
//! whose snapshot is still there starts from the snapshot and writes new entries at positions the
//! lost log had already used, so fencing tokens go below tokens already handed out; a log
//! without a snapshot starts a brand-new cluster; a data directory copied from another node or
//! cluster is used as if it were this node's. None of this can be repaired by the node itself, so
//! it refuses to start and says how to recover (docs/cluster.md, "Data directory").
//!
//! What: `DIR/node.json` (written atomically) records
//!
//! - the **cluster id**: a hash of the membership the cluster was formed with (member ids and
//!   addresses, as `--peer` gave them to the forming node). Every member learns that membership
//!   from the log (the entry `initialize` writes at index 0) or from a snapshot's metadata, so
//!   every member computes the same id with no message of its own, and a log or snapshot carries
//!   the id of the cluster it came from. (Members are fixed at formation in this version; a
//!   cluster re-formed from scratch on the same addresses gets the same id.)
//! - the **node id** (`--id`) the directory was written by;
//! - **`committed`**: a high-water mark, the last log index that was both committed and durable
//!   in this node's log, rewritten by the log's writer thread at most once a second and when the
//!   store closes. Every fencing token this node's state ever answered with is below
//!   `(committed + 1) × 1000`, so a log that ends before it would hand out tokens again.
//!
//! [`check`] is pure: the store gathers what it found on disk in [`Found`], and every refusal is
//! decided here.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openraft::{BasicNode, Membership};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::NodeId;
use sentinel_core::error::{Error, Result};

/// The identity file in a node's data directory.
pub const IDENTITY_FILE: &str = "node.json";
/// The version of [`Identity`]'s format.
const FORMAT: u32 = 1;
/// How often at most the high-water mark is rewritten.
const MARK_EVERY: Duration = Duration::from_secs(1);

/// What `node.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The version of this format.
    pub format: u32,
    /// The cluster the directory's data belongs to ([`cluster_id`]).
    pub cluster_id: String,
    /// The node that wrote the directory.
    pub node_id: NodeId,
    /// The last log index known to be committed and durable in this node's log.
    pub committed: u64,
}

/// The id of the cluster whose membership is `members`: the first 128 bits of a SHA-256 over
/// its member ids and addresses, in hex.
pub fn cluster_id(members: &Membership<NodeId, BasicNode>) -> String {
    let mut hash = Sha256::new();
    hash.update(b"sentinel cluster\n");
    let mut nodes: Vec<(&NodeId, &BasicNode)> = members.nodes().collect();
    nodes.sort_by_key(|(id, _)| **id);
    for (id, node) in nodes {
        hash.update(format!("{id}={}\n", node.addr).as_bytes());
    }
    hex(&hash.finalize()[..16])
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads `DIR/node.json`, if there is one.
pub fn read(dir: &Path) -> Result<Option<Identity>> {
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::Unexpected(format!(
                "the identity file {} is damaged ({e}): restore it from a backup of the whole \
                 data directory, or remove the directory and let the node rejoin{}",
                path.display(),
                RECOVERY_REF
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Unexpected(format!(
            "cannot read the identity file {}: {e}",
            path.display()
        ))),
    }
}

/// Writes `DIR/node.json` atomically.
pub fn write(dir: &Path, identity: &Identity) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(identity).map_err(std::io::Error::other)?;
    write_atomically(dir, IDENTITY_FILE, &bytes)
}

/// Replaces `dir/name` so that a crash at any point leaves the old or the new file: write a
/// temporary file, fsync it, rename it over the old one, fsync the directory.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// What the store found in a data directory, for [`check`].
#[derive(Debug, Default, Clone)]
pub struct Found {
    /// `node.json`.
    pub recorded: Option<Identity>,
    /// The last index the log covers: its last entry, or the last purged one. `None`: the log is
    /// missing or empty.
    pub log_last: Option<u64>,
    /// The last purged index.
    pub purged: Option<u64>,
    /// The cluster id of the last membership in the log, if it holds one.
    pub log_cluster: Option<String>,
    /// The snapshot, if there is one: the last index it covers (0 for none).
    pub snapshot: Option<u64>,
    /// The cluster id of the snapshot's membership, if it has one.
    pub snapshot_cluster: Option<String>,
}

const RECOVERY_REF: &str = " (see \"Data directory\" in docs/cluster.md)";

/// Decides whether a node started as `--id id` may use the data directory `dir` in which the
/// store found `found`; every refusal says what is wrong and how to recover.
pub fn check(dir: &Path, id: NodeId, found: &Found) -> Result<()> {
    if let Some(rec) = &found.recorded
        && rec.node_id != id
    {
        return Err(Error::Usage(format!(
            "the data directory {} belongs to node {}, not to node {id}: start it with \
             --id {}, or give node {id} a data directory of its own (--data-dir){}",
            dir.display(),
            rec.node_id,
            rec.node_id,
            RECOVERY_REF
        )));
    }
    match inconsistency(found) {
        None => Ok(()),
        Some(what) => Err(Error::Unexpected(format!(
            "refusing to start on the data directory {}: {what}. To recover: stop the node, \
             move {} away, and start the node again so that it catches up from the other \
             members (on a single-node cluster this loses every lock and starts fencing tokens \
             again), or restore a backup of the whole directory{}.",
            dir.display(),
            dir.display(),
            RECOVERY_REF
        ))),
    }
}

/// What does not add up between the parts of a data directory, if anything: files of another
/// cluster, a log missing, older than the snapshot or than what the node committed, or compacted
/// past the snapshot.
fn inconsistency(found: &Found) -> Option<String> {
    if let Some(rec) = &found.recorded {
        for (what, cluster) in [
            ("the Raft log (raft.redb)", &found.log_cluster),
            ("the snapshot", &found.snapshot_cluster),
        ] {
            if let Some(c) = cluster
                && *c != rec.cluster_id
            {
                return Some(format!(
                    "{what} belongs to cluster {c}, but the directory to cluster {}: files of \
                     another cluster were mixed in",
                    rec.cluster_id
                ));
            }
        }
    }
    let Some(last) = found.log_last else {
        let had = match (&found.recorded, found.snapshot) {
            (Some(rec), _) => format!(
                "the directory records a log committed up to index {}",
                rec.committed
            ),
            (None, Some(s)) => format!("a snapshot up to index {s} is there"),
            // A new directory.
            (None, None) => return None,
        };
        return Some(format!(
            "the Raft log (raft.redb) is missing or empty, but {had}; starting would lose \
             acknowledged locks and hand out fencing tokens already issued"
        ));
    };
    if let Some(s) = found.snapshot
        && s > last
    {
        return Some(format!(
            "the snapshot covers the log up to index {s}, but the Raft log (raft.redb) ends at \
             index {last}: the log is older than the snapshot (restored from an older copy, or \
             truncated); starting would write new entries at positions already used and hand \
             out fencing tokens already issued"
        ));
    }
    if let Some(p) = found.purged
        && found.snapshot.is_none_or(|s| s < p)
    {
        return Some(format!(
            "the Raft log (raft.redb) was compacted up to index {p}, but {}: the entries in \
             between are gone",
            match found.snapshot {
                Some(s) => format!("the snapshot covers only up to index {s}"),
                None => "the snapshot is missing".to_string(),
            }
        ));
    }
    match &found.recorded {
        Some(rec) if rec.committed > last => Some(format!(
            "the Raft log (raft.redb) ends at index {last}, but this node had committed entries \
             up to index {}: the log was restored from an older copy or truncated; starting \
             would hand out fencing tokens already issued",
            rec.committed
        )),
        _ => None,
    }
}

/// Keeps `node.json` up to date while the node runs: the cluster id once it is learnt, and the
/// high-water mark. Shared by both halves of the store; written from the log's writer thread, after
/// a commit, so the file never claims more than the log holds.
pub struct Recorder {
    dir: PathBuf,
    node: NodeId,
    inner: Mutex<Recorded>,
}

struct Recorded {
    /// What `node.json` holds now.
    on_disk: Option<Identity>,
    /// The cluster id, once learnt.
    cluster: Option<String>,
    /// The last committed index openraft reported.
    committed: Option<u64>,
    last_write: Option<Instant>,
}

impl Recorder {
    /// A recorder for node `node` in `dir`, where `on_disk` was read.
    pub fn new(dir: &Path, node: NodeId, on_disk: Option<Identity>) -> Recorder {
        Recorder {
            dir: dir.to_path_buf(),
            node,
            inner: Mutex::new(Recorded {
                cluster: on_disk.as_ref().map(|i| i.cluster_id.clone()),
                committed: on_disk.as_ref().map(|i| i.committed),
                on_disk,
                last_write: None,
            }),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cluster's membership was seen (in an entry or a snapshot); the first one names the
    /// cluster.
    pub fn learn(&self, members: &Membership<NodeId, BasicNode>) {
        let mut inner = self.inner();
        if inner.cluster.is_none() {
            inner.cluster = Some(cluster_id(members));
        }
    }

    /// openraft reported a committed index.
    pub fn committed(&self, index: u64) {
        let mut inner = self.inner();
        inner.committed = inner.committed.max(Some(index));
    }

    /// After a commit of the log that leaves it ending at `durable_last`: writes `node.json`
    /// if the cluster id is new to it, or (`force`, or at most once a second) if the mark rose.
    pub fn after_commit(&self, durable_last: Option<u64>, force: bool) -> std::io::Result<()> {
        let mut inner = self.inner();
        let (Some(cluster), Some(last)) = (inner.cluster.clone(), durable_last) else {
            return Ok(());
        };
        let mark = inner.committed.unwrap_or(0).min(last);
        let next = Identity {
            format: FORMAT,
            cluster_id: cluster,
            node_id: self.node,
            committed: inner
                .on_disk
                .as_ref()
                .map_or(mark, |i| i.committed.max(mark)),
        };
        let due = match &inner.on_disk {
            None => true,
            Some(old) if old.cluster_id != next.cluster_id => true,
            Some(old) => {
                old.committed < next.committed
                    && (force || inner.last_write.is_none_or(|t| t.elapsed() >= MARK_EVERY))
            }
        };
        if !due {
            return Ok(());
        }
        write(&self.dir, &next)?;
        inner.on_disk = Some(next);
        inner.last_write = Some(Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn members(addrs: &[(u64, &str)]) -> Membership<NodeId, BasicNode> {
        Membership::new(
            vec![addrs.iter().map(|(id, _)| *id).collect::<BTreeSet<_>>()],
            addrs
                .iter()
                .map(|(id, a)| (*id, BasicNode::new(*a)))
                .collect::<std::collections::BTreeMap<_, _>>(),
        )
    }

    fn rec(node: NodeId, committed: u64) -> Identity {
        Identity {
            format: FORMAT,
            cluster_id: "c1".into(),
            node_id: node,
            committed,
        }
    }

    fn found() -> Found {
        Found {
            recorded: Some(rec(1, 5_700)),
            log_last: Some(5_712),
            purged: Some(4_500),
            log_cluster: Some("c1".into()),
            snapshot: Some(5_000),
            snapshot_cluster: Some("c1".into()),
        }
    }

    fn refusal(f: &Found, id: NodeId) -> String {
        check(Path::new("/d"), id, f).unwrap_err().to_string()
    }

    #[test]
    fn the_cluster_id_is_the_same_for_the_same_members_only() {
        let a = cluster_id(&members(&[(1, "h1:1"), (2, "h2:1"), (3, "h3:1")]));
        let b = cluster_id(&members(&[(3, "h3:1"), (1, "h1:1"), (2, "h2:1")]));
        assert_eq!(a, b);
        assert_eq!(a.len(), 32);
        assert_ne!(a, cluster_id(&members(&[(1, "h1:1"), (2, "h2:1")])));
        assert_ne!(
            a,
            cluster_id(&members(&[(1, "h1:2"), (2, "h2:1"), (3, "h3:1")]))
        );
    }

    #[test]
    fn consistent_directories_are_accepted() {
        check(Path::new("/d"), 1, &found()).unwrap();
        check(Path::new("/d"), 1, &Found::default()).unwrap();
        // A directory of an older version: no node.json yet.
        let old = Found {
            recorded: None,
            ..found()
        };
        check(Path::new("/d"), 1, &old).unwrap();
        // Not compacted yet, no snapshot.
        let young = Found {
            purged: None,
            snapshot: None,
            snapshot_cluster: None,
            ..found()
        };
        check(Path::new("/d"), 1, &young).unwrap();
    }

    #[test]
    fn another_node_id_is_a_usage_error() {
        let e = check(Path::new("/d"), 2, &found()).unwrap_err();
        assert_eq!(e.exit_code(), sentinel_core::error::ExitCode::Usage);
        assert!(
            e.to_string().contains("belongs to node 1, not to node 2"),
            "{e}"
        );
    }

    #[test]
    fn files_of_another_cluster_are_refused() {
        let f = Found {
            log_cluster: Some("c2".into()),
            ..found()
        };
        assert!(refusal(&f, 1).contains("belongs to cluster c2"));
        let f = Found {
            snapshot_cluster: Some("c2".into()),
            ..found()
        };
        assert!(refusal(&f, 1).contains("the snapshot belongs to cluster c2"));
    }

    #[test]
    fn a_missing_or_empty_log_is_refused_when_there_was_one() {
        for f in [
            Found {
                log_last: None,
                purged: None,
                log_cluster: None,
                ..found()
            },
            Found {
                recorded: None,
                log_last: None,
                purged: None,
                log_cluster: None,
                ..found()
            },
            Found {
                recorded: Some(rec(1, 0)),
                ..Found::default()
            },
        ] {
            let e = refusal(&f, 1);
            assert!(e.contains("missing or empty"), "{e}");
            assert!(e.contains("To recover"), "{e}");
        }
    }

    #[test]
    fn a_log_older_than_its_snapshot_or_mark_is_refused() {
        let f = Found {
            log_last: Some(4_999),
            purged: None,
            ..found()
        };
        assert!(refusal(&f, 1).contains("older than the snapshot"));
        let f = Found {
            log_last: Some(5_600),
            ..found()
        };
        assert!(refusal(&f, 1).contains("had committed entries up to index 5700"));
        // Purged beyond the snapshot, or without one.
        let f = Found {
            purged: Some(5_100),
            ..found()
        };
        assert!(refusal(&f, 1).contains("covers only up to index 5000"));
        let f = Found {
            snapshot: None,
            snapshot_cluster: None,
            ..found()
        };
        assert!(refusal(&f, 1).contains("the snapshot is missing"));
    }

    #[test]
    fn the_recorder_writes_the_identity_once_known_and_the_mark_at_most_each_second() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recorder::new(dir.path(), 3, None);
        r.after_commit(Some(0), false).unwrap();
        assert_eq!(read(dir.path()).unwrap(), None, "no cluster known yet");
        let m = members(&[(1, "h1:1"), (3, "h3:1")]);
        r.learn(&m);
        r.committed(7);
        r.after_commit(Some(5), false).unwrap();
        let on_disk = read(dir.path()).unwrap().unwrap();
        assert_eq!(
            on_disk,
            Identity {
                format: 1,
                cluster_id: cluster_id(&m),
                node_id: 3,
                committed: 5
            }
        );
        r.after_commit(Some(9), false).unwrap();
        assert_eq!(
            read(dir.path()).unwrap().unwrap().committed,
            5,
            "within a second"
        );
        r.after_commit(Some(9), true).unwrap();
        assert_eq!(read(dir.path()).unwrap().unwrap().committed, 7);
        // A later membership does not rename the cluster.
        r.learn(&members(&[(1, "x:1")]));
        r.after_commit(Some(9), true).unwrap();
        assert_eq!(
            read(dir.path()).unwrap().unwrap().cluster_id,
            cluster_id(&m)
        );
    }
}
