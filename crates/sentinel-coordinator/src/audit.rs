//! The audit log of `serve --audit-log FILE`: one JSON object per line for every write a client
//! asks of this node (acquire, release, renew, withdraw), with who asked (the token's name, never
//! the token), from where (the TCP peer), what, and what came of it.
//!
//! The node the client contacted writes the line, after the answer is known and before it is sent;
//! a follower that forwards a write to the leader writes the line from the relayed answer, and the
//! leader writes none for it (see `api::audited_here`), so each write has exactly one line.
//!
//! An audit log that cannot be written (disk full, file gone read-only) must not let writes go on
//! unrecorded: the line that failed is kept in memory (and logged to stderr), and until it can be
//! written the node refuses writes with 503 `audit_unavailable` (clients try the next node). Each
//! refused write first tries again to write the kept lines, so the node takes writes again as soon
//! as the disk does. A write whose line failed has already taken effect; its client gets its
//! answer. Lines are not fsynced one by one: a crash of the machine may lose the last ones, as it
//! would lose those of any log written through the page cache.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::json;

use sentinel_core::error::{Error, Result};
use sentinel_core::lease::{self, Clock, SystemClock};

/// Longest line: every field comes from a checked value (a lock name and a token name of at most
/// 256 characters, a request id of at most 128 ASCII characters), so a line is far below this.
pub const MAX_LINE_BYTES: usize = 8 << 10;
/// Longest request id recorded; the API takes no longer ones.
const MAX_REQUEST_ID: usize = 128;
/// Most lines kept while the file cannot be written. Writes are refused meanwhile, so only those
/// already under way can add lines; the cap is a guard, and lines beyond it are counted.
const MAX_KEPT: usize = 10_000;

/// A write a client asked for: everything of its line but the outcome.
pub struct Entry {
    /// The name of the client's token; `None` on a node that requires no token.
    pub token: Option<String>,
    /// The client's TCP address.
    pub remote: Option<SocketAddr>,
    /// `acquire`, `release`, `renew` or `withdraw`.
    pub op: String,
    /// The lock's name.
    pub lock: String,
}

/// An open audit log.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<Open>,
}

struct Open {
    file: File,
    /// Bytes in the file as far as this node wrote it: a failed write is cut back to it, so no
    /// half line stays in the file.
    len: u64,
    /// Lines that could not be written yet, oldest first.
    kept: Vec<String>,
    /// Lines given up on beyond [`MAX_KEPT`].
    lost: u64,
}

impl AuditLog {
    /// Opens (creating, mode 600) `path` for appending.
    ///
    /// # Errors
    ///
    /// A usage error naming the file when it cannot be opened.
    pub fn open(path: &Path) -> Result<AuditLog> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .and_then(|f| Ok((f.metadata()?.len(), f)))
            .map_err(|e| {
                Error::usage(format!("cannot open --audit-log {}: {e}", path.display()))
            })?;
        let (len, file) = file;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(Open {
                file,
                len,
                kept: Vec::new(),
                lost: 0,
            }),
        })
    }

    /// Whether the log takes lines, checked before a write is done: when earlier lines could not
    /// be written, they are written now; an error says why they still cannot be.
    pub fn ready(&self) -> std::result::Result<(), String> {
        let mut open = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if open.kept.is_empty() && open.lost == 0 {
            return Ok(());
        }
        let mut text: String = open.kept.concat();
        if open.lost > 0 {
            let lost = json!({"time": now(), "result": "audit_lines_lost", "count": open.lost});
            text.push_str(&format!("{lost}\n"));
        }
        match append(&mut open, &text) {
            Ok(()) => {
                tracing::warn!("audit log {}: writable again", self.path.display());
                open.kept.clear();
                open.lost = 0;
                Ok(())
            }
            Err(e) => Err(format!(
                "this node's audit log cannot be written ({e}); it takes no writes until it can"
            )),
        }
    }

    /// Writes the line of `write`, whose outcome is `result` (`granted`, `released`, an error
    /// code…), with the request id and the fencing token of the answer when it has them.
    pub fn record(
        &self,
        write: &Entry,
        result: &str,
        request_id: Option<&str>,
        fencing_token: Option<u64>,
    ) {
        let line = line(write, result, request_id, fencing_token);
        let mut open = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let failed = if open.kept.is_empty() {
            append(&mut open, &line).err()
        } else {
            Some(std::io::Error::other("earlier lines are not written yet"))
        };
        if let Some(e) = failed {
            // The line is no secret: stderr keeps it even if the node stops before the file
            // takes it.
            tracing::error!(
                "audit log {}: cannot write ({e}); writes are refused until it can: {}",
                self.path.display(),
                line.trim_end()
            );
            if open.kept.len() < MAX_KEPT {
                open.kept.push(line);
            } else {
                open.lost += 1;
            }
        }
    }
}

/// Appends `text` in one write; a write that fails is cut back, so the file never keeps half a
/// line.
fn append(open: &mut Open, text: &str) -> std::io::Result<()> {
    match open.file.write_all(text.as_bytes()) {
        Ok(()) => {
            open.len += text.len() as u64;
            Ok(())
        }
        Err(e) => {
            let _ = open.file.set_len(open.len);
            Err(e)
        }
    }
}

fn now() -> String {
    lease::rfc3339(lease::from_unix_ms(SystemClock.now_ms()))
}

/// One line, newline included.
fn line(write: &Entry, result: &str, request_id: Option<&str>, fencing: Option<u64>) -> String {
    let request_id = request_id.filter(|id| id.len() <= MAX_REQUEST_ID);
    let line = json!({
        "time": now(),
        "token": write.token,
        "remote": write.remote.map(|a| a.to_string()),
        "op": write.op,
        "lock": write.lock,
        "request_id": request_id,
        "result": result,
        "fencing_token": fencing,
    });
    format!("{line}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_core::lock::MAX_NAME_LEN;

    fn write(lock: &str) -> Entry {
        Entry {
            token: Some("ci".into()),
            remote: Some("127.0.0.1:4242".parse().unwrap()),
            op: "acquire".into(),
            lock: lock.into(),
        }
    }

    #[test]
    fn lines_are_json_with_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        log.ready().unwrap();
        log.record(&write("ci/x"), "granted", Some("req-1"), Some(7));
        log.record(&write("ci/\"y\""), "lock_held", None, None);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["token"], "ci");
        assert_eq!(lines[0]["remote"], "127.0.0.1:4242");
        assert_eq!(lines[0]["result"], "granted");
        assert_eq!(lines[0]["fencing_token"], 7);
        assert_eq!(lines[0]["request_id"], "req-1");
        assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[1]["lock"], "ci/\"y\"");
        assert_eq!(lines[1]["fencing_token"], serde_json::Value::Null);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_longest_line_is_within_the_bound() {
        // Quotes are escaped, doubling them: the worst a checked name can be.
        let name = "\"".repeat(MAX_NAME_LEN);
        let mut w = write(&name);
        w.token = Some(name.clone());
        w.remote = Some(
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
                .parse()
                .unwrap(),
        );
        let id = "\\".repeat(MAX_REQUEST_ID);
        let l = line(&w, "request_id_reused", Some(&id), Some(u64::MAX));
        assert!(l.len() < MAX_LINE_BYTES, "{}", l.len());
        // A longer request id than the API takes is not recorded.
        let long = "x".repeat(MAX_REQUEST_ID + 1);
        assert!(!line(&w, "granted", Some(&long), None).contains(&long));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_disk_refuses_writes_until_the_kept_lines_are_written() {
        // /dev/full takes no byte: every write fails with ENOSPC.
        let log = AuditLog::open(Path::new("/dev/full")).unwrap();
        log.ready().unwrap();
        log.record(&write("ci/x"), "granted", None, Some(3));
        let e = log.ready().unwrap_err();
        assert!(e.contains("cannot be written"), "{e}");
        // The disk takes bytes again: the kept line comes first.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        log.file.lock().unwrap().file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let ok = log;
        ok.ready().unwrap();
        ok.record(&write("ci/y"), "granted", None, Some(4));
        let text = std::fs::read_to_string(&path).unwrap();
        let tokens: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["fencing_token"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(tokens, [3, 4]);
    }
}
