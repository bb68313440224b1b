//! Who may do what on `sentinel serve`, through real nodes and the real CLI: `--acl` tokens act
//! only on their prefixes (also through a follower, which cannot widen them), a listing shows a
//! token only its locks, `--audit-log` records every write and no secret, `/metrics` needs a token
//! unless `--public-metrics`, and tokens read from files appear on no command line.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::serve::{Node, eventually, exchange_within, free_addr, peers_of};
use crate::support::{Running, code, sentinel, stdout_json, text};

const CI: &str = "c1-s3cret-t0ken";
const OPS: &str = "0ps-s3cret-t0ken";
const SCRAPER: &str = "scr4per-s3cret-t0ken";
const ADMIN: &str = "adm1n-s3cret-t0ken";
const SECRETS: [&str; 4] = [CI, OPS, SCRAPER, ADMIN];
/// The header a follower marks a forwarded request with.
const FORWARDED: &str = "x-sentinel-forwarded";

fn sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An ACL file: `ci` on `ci/` (or on everything, `ci_everywhere`), `ops` an admin known by its
/// digest only, `scraper` on no lock.
fn acl_file(dir: &Path, ci_everywhere: bool) -> PathBuf {
    let ci_prefixes = if ci_everywhere {
        json!([""])
    } else {
        json!(["ci/"])
    };
    let acl = json!({"tokens": [
        {"name": "ci", "token": CI, "prefixes": ci_prefixes},
        {"name": "ops", "sha256": sha256(OPS), "prefixes": [""]},
        {"name": "scraper", "token": SCRAPER, "prefixes": []},
    ]});
    let path = dir.join(if ci_everywhere {
        "acl-wide.json"
    } else {
        "acl.json"
    });
    std::fs::write(&path, acl.to_string()).unwrap();
    path
}

/// A token file, mode 600, with the trailing newline editors add.
fn token_file(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join(format!("{}.token", &token[..4]));
    std::fs::write(&path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// One request: the status and the body as text.
fn raw(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    exchange_within(addr, method, path, body, &headers, Duration::from_secs(30)).unwrap()
}

/// One request whose answer is JSON.
fn call(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> (u16, Value) {
    call_with(addr, method, path, body, token, &[])
}

fn call_with(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let (status, text) = raw(addr, method, path, body, token, extra);
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    (status, v)
}

fn acquire(addr: &str, lock: &str, token: &str) -> (u16, Value) {
    let body = json!({"holder": "w", "ttl_ms": 60_000});
    call(
        addr,
        "POST",
        &format!("/locks/{lock}/acquire"),
        Some(&body),
        Some(token),
    )
}

/// The leader `addr` knows of, asked with an admin token.
fn leader(addr: &str) -> Option<u64> {
    let (status, v) = call(addr, "GET", "/health", None, Some(OPS));
    (status == 200).then(|| v["leader"].as_u64()).flatten()
}

/// The names a listing shows `token`.
fn listed(addr: &str, token: &str) -> Vec<String> {
    let (status, v) = call(addr, "GET", "/locks", None, Some(token));
    assert_eq!(status, 200, "{v}");
    let mut names: Vec<String> = v["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lock"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// The audit log's lines, each checked to be a JSON object with exactly the documented fields,
/// and the file checked to hold no secret.
fn audit_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for secret in SECRETS.iter().copied().chain([sha256(OPS).as_str()]) {
        assert!(!text.contains(secret), "a secret in the audit log: {text}");
    }
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
            let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(
                keys,
                [
                    "fencing_token",
                    "lock",
                    "op",
                    "remote",
                    "request_id",
                    "result",
                    "time",
                    "token"
                ],
                "{l}"
            );
            v
        })
        .collect()
}

/// The lines of `lines` about `op` on `lock` by `token`.
fn about<'a>(lines: &'a [Value], op: &str, lock: &str, token: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["op"] == op && l["lock"] == lock && l["token"] == token)
        .collect()
}

/// No process's command line holds a secret (what `ps` shows anyone on the machine).
fn no_secret_in_any_command_line() {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        for secret in SECRETS {
            assert!(!cmdline.contains(secret), "{secret} in {cmdline:?}");
        }
    }
}

/// The CLI against `url` with the client token read from `token_file`
/// (`SENTINEL_AUTH_TOKEN_FILE`).
fn cli(dir: &Path, url: &str, token_file: &Path, args: &[&str]) -> std::process::Command {
    let mut cmd = sentinel(dir);
    cmd.env("SENTINEL_SERVER", url)
        .env("SENTINEL_AUTH_TOKEN_FILE", token_file)
        .args(["--worker-id", "w1"])
        .args(args);
    cmd
}

fn run(dir: &Path, url: &str, token_file: &Path, args: &[&str]) -> Output {
    let out = cli(dir, url, token_file, args).output().unwrap();
    for secret in SECRETS {
        assert!(!text(&out).contains(secret), "{}", text(&out));
    }
    out
}

#[test]
fn a_token_acts_only_under_its_prefixes_and_every_write_is_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let audit = dir.join("audit.log");
    let addr = free_addr();
    let _node = Node::start_args(
        1,
        &addr,
        &[],
        dir,
        &[
            "--acl".into(),
            s(&acl_file(dir, false)),
            "--audit-log".into(),
            s(&audit),
            "--auth-token-file".into(),
            s(&token_file(dir, ADMIN)),
        ],
    );
    eventually(20, "a leader", || leader(&addr));
    let url = format!("http://{addr}");
    let (ci, ops, scraper) = (
        token_file(dir, CI),
        token_file(dir, OPS),
        token_file(dir, SCRAPER),
    );

    let out = run(dir, &url, &ci, &["--json", "claim", "ci/x", "--ttl", "60s"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let ci_token = stdout_json(&out)["fencing_token"].as_u64().unwrap();
    // Outside its prefixes: an authorization error (exit 5) saying where the token may act.
    let out = run(dir, &url, &ci, &["claim", "prod/x", "--ttl", "60s"]);
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert!(text(&out).contains(r#"start with "ci/""#), "{}", text(&out));
    assert!(
        !text(&out).contains("pass the cluster's token"),
        "{}",
        text(&out)
    );
    // The admin, known to the node by its digest only.
    let out = run(
        dir,
        &url,
        &ops,
        &["--json", "claim", "prod/x", "--ttl", "60s"],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let ops_token = stdout_json(&out)["fencing_token"].as_u64().unwrap();

    // A listing shows a token only its locks; another's lock is not its to read.
    let names = |out: &Output| -> Vec<String> {
        let mut n: Vec<String> = stdout_json(out)["locks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["lock"].as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    };
    let out = run(dir, &url, &ci, &["--json", "status"]);
    assert_eq!(names(&out), ["ci/x"], "{}", text(&out));
    let out = run(dir, &url, &ops, &["--json", "status"]);
    assert_eq!(names(&out), ["ci/x", "prod/x"], "{}", text(&out));
    assert_eq!(code(&run(dir, &url, &ci, &["status", "prod/x"])), 5);
    assert_eq!(listed(&addr, ADMIN), ["ci/x", "prod/x"]);

    // A token on no lock reads the metrics and nothing else; no token reads nothing.
    let (status, body) = raw(&addr, "GET", "/metrics", None, Some(SCRAPER), &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(raw(&addr, "GET", "/metrics", None, None, &[]).0, 401);
    assert_eq!(code(&run(dir, &url, &scraper, &["claim", "ci/y"])), 5);
    assert!(listed(&addr, SCRAPER).is_empty());

    let out = run(dir, &url, &ci, &["release", "ci/x"]);
    assert_eq!(code(&out), 0, "{}", text(&out));

    // The client token from a file is on no command line while a client runs, nor the node's.
    let running = Running::spawn(&mut cli(
        dir,
        &url,
        &ci,
        &["run", "ci/job", "--", "sleep", "2"],
    ));
    std::thread::sleep(Duration::from_millis(500));
    no_secret_in_any_command_line();
    let out = running.exit_within(Duration::from_secs(30));
    assert_eq!(code(&out), 0, "{}", text(&out));

    let lines = audit_lines(&audit);
    let granted = about(&lines, "acquire", "ci/x", "ci");
    assert_eq!(granted.len(), 1, "{lines:#?}");
    assert_eq!(granted[0]["result"], "granted");
    assert_eq!(granted[0]["fencing_token"].as_u64(), Some(ci_token));
    assert!(
        granted[0]["remote"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(granted[0]["request_id"].is_string());
    let refused = about(&lines, "acquire", "prod/x", "ci");
    assert!(!refused.is_empty(), "{lines:#?}");
    assert!(
        refused
            .iter()
            .all(|l| l["result"] == "forbidden" && l["fencing_token"].is_null())
    );
    let admin = about(&lines, "acquire", "prod/x", "ops");
    assert_eq!(
        admin[0]["fencing_token"].as_u64(),
        Some(ops_token),
        "{lines:#?}"
    );
    let released = about(&lines, "release", "ci/x", "ci");
    assert_eq!(released.len(), 1, "{lines:#?}");
    assert_eq!(released[0]["result"], "released");
    assert_eq!(released[0]["fencing_token"].as_u64(), Some(ci_token));
    assert_eq!(
        about(&lines, "acquire", "ci/y", "scraper")[0]["result"],
        "forbidden"
    );
    // run's acquire, renewals and release.
    assert!(
        !about(&lines, "release", "ci/job", "ci").is_empty(),
        "{lines:#?}"
    );
    // Reads are not writes.
    assert!(lines.iter().all(|l| l["op"] != "status"), "{lines:#?}");
}

#[test]
fn metrics_need_a_token_unless_public_and_the_serve_token_can_come_from_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let addr = free_addr();
    let admin = token_file(dir, ADMIN);
    let _node = Node::start_args(
        1,
        &addr,
        &[],
        dir,
        &[
            "--public-metrics".into(),
            "--auth-token-file".into(),
            s(&admin),
        ],
    );
    no_secret_in_any_command_line();
    eventually(20, "a leader", || {
        (call(&addr, "GET", "/health", None, Some(ADMIN)).0 == 200).then_some(())
    });
    let (status, body) = raw(&addr, "GET", "/metrics", None, None, &[]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("active_locks_gauge"), "{body}");
    for path in ["/locks", "/cluster/status", "/locks/x/status"] {
        assert_eq!(call(&addr, "GET", path, None, None).0, 401, "{path}");
    }
    assert_eq!(call(&addr, "GET", "/locks", None, Some(ADMIN)).0, 200);

    // The file and the flag together, or an empty file: usage errors that echo no token.
    let both = sentinel(dir)
        .env("SENTINEL_AUTH_TOKEN", CI)
        .args([
            "serve",
            "--listen",
            &free_addr(),
            "--auth-token-file",
            &s(&admin),
        ])
        .output()
        .unwrap();
    assert_eq!(code(&both), 2, "{}", text(&both));
    assert!(
        text(&both).contains("once") && !text(&both).contains(CI),
        "{}",
        text(&both)
    );
    let empty = dir.join("empty.token");
    std::fs::write(&empty, "\n").unwrap();
    let out = sentinel(dir)
        .args([
            "serve",
            "--listen",
            &free_addr(),
            "--auth-token-file",
            &s(&empty),
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("is empty"), "{}", text(&out));
}

#[test]
fn a_bad_acl_file_stops_serve_naming_the_file_and_the_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let acl = dir.join("bad-acl.json");
    std::fs::write(
        &acl,
        json!({"tokens": [
            {"name": "ci", "token": CI, "prefixes": ["ci/"]},
            {"name": "ci", "token": OPS, "prefixes": [""]},
        ]})
        .to_string(),
    )
    .unwrap();
    let out = sentinel(dir)
        .args(["serve", "--listen", &free_addr(), "--acl", &s(&acl)])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", text(&out));
    let says = text(&out);
    assert!(
        says.contains("bad-acl.json") && says.contains("token entry 2"),
        "{says}"
    );
    assert!(!says.contains(CI) && !says.contains(OPS), "{says}");
}

#[test]
fn the_acl_holds_through_a_follower_which_cannot_widen_it() {
    let _one_cluster = crate::serve::one_cluster_at_a_time();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let peers = peers_of(&addrs);
    let audit = |i: usize| dirs[i].path().join("audit.log");
    let args = |i: usize, wide: bool| {
        vec![
            "--acl".to_string(),
            s(&acl_file(dirs[i].path(), wide)),
            "--audit-log".into(),
            s(&audit(i)),
        ]
    };
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            Node::start_args(
                i as u64 + 1,
                &addrs[i],
                &peers,
                dirs[i].path(),
                &args(i, false),
            )
        })
        .collect();
    let leader_id = eventually(30, "one leader known to every node", || {
        let seen: Vec<Option<u64>> = addrs.iter().map(|a| leader(a)).collect();
        let first = seen[0]?;
        seen.iter().all(|l| *l == Some(first)).then_some(first)
    });
    let li = (leader_id - 1) as usize;
    let fi = (0..3).find(|&i| i != li).unwrap();
    let (leader_addr, follower) = (addrs[li].clone(), addrs[fi].clone());

    // Through the follower: the same rules as on the leader.
    assert_eq!(acquire(&follower, "ci/a", CI).0, 200);
    let (status, e) = acquire(&follower, "prod/a", CI);
    assert_eq!(
        (status, e["code"].as_str()),
        (403, Some("forbidden")),
        "{e}"
    );
    assert_eq!(acquire(&follower, "prod/a", OPS).0, 200);
    assert_eq!(listed(&follower, CI), ["ci/a"]);
    assert_eq!(listed(&follower, OPS), ["ci/a", "prod/a"]);
    assert_eq!(call(&follower, "GET", "/locks", None, None).0, 401);

    // The follower the client contacted wrote the lines; the leader, none for its forwards.
    let lines = audit_lines(&audit(fi));
    assert_eq!(
        about(&lines, "acquire", "ci/a", "ci")[0]["result"],
        "granted"
    );
    assert_eq!(
        about(&lines, "acquire", "prod/a", "ci")[0]["result"],
        "forbidden"
    );
    assert_eq!(
        about(&lines, "acquire", "prod/a", "ops")[0]["result"],
        "granted"
    );
    assert!(audit_lines(&audit(li)).is_empty());

    // A client that claims its request was forwarded gets no more from the leader, and is
    // recorded there (it has no peer token).
    let forged = [(FORWARDED, "9")];
    let body = json!({"holder": "w", "ttl_ms": 60_000});
    let (status, e) = call_with(
        &leader_addr,
        "POST",
        "/locks/prod/b/acquire",
        Some(&body),
        Some(CI),
        &forged,
    );
    assert_eq!(
        (status, e["code"].as_str()),
        (403, Some("forbidden")),
        "{e}"
    );
    let (status, e) = call_with(
        &leader_addr,
        "POST",
        "/locks/ci/b/acquire",
        Some(&body),
        Some(CI),
        &forged,
    );
    assert_eq!(status, 200, "{e}");
    let lines = audit_lines(&audit(li));
    assert_eq!(
        about(&lines, "acquire", "prod/b", "ci")[0]["result"],
        "forbidden"
    );
    assert_eq!(
        about(&lines, "acquire", "ci/b", "ci")[0]["result"],
        "granted"
    );

    // A follower whose ACL lets ci act everywhere still cannot: the leader checks the token too.
    let node = &mut nodes[fi];
    node.kill();
    node.args = args(fi, true);
    node.restart();
    let known = eventually(20, "the follower back", || leader(&follower));
    assert_ne!(
        known,
        fi as u64 + 1,
        "the restarted follower was elected: run again"
    );
    let (status, e) = acquire(&follower, "prod/c", CI);
    assert_eq!(
        (status, e["code"].as_str()),
        (403, Some("forbidden")),
        "{e}"
    );
    let lines = audit_lines(&audit(fi));
    assert_eq!(
        about(&lines, "acquire", "prod/c", "ci")[0]["result"],
        "forbidden"
    );
    assert_eq!(listed(&follower, CI), ["ci/a", "ci/b"]);
}

#[test]
fn a_waiter_whose_client_left_is_audited_on_a_node_without_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let audit = dir.join("audit.log");
    let addr = free_addr();
    let _node = Node::start_args(1, &addr, &[], dir, &["--audit-log".into(), s(&audit)]);
    eventually(20, "a leader", || {
        (call(&addr, "GET", "/health", None, None).0 == 200).then_some(())
    });
    let body = json!({"holder": "w1", "ttl_ms": 60_000});
    assert_eq!(
        call(&addr, "POST", "/locks/g/acquire", Some(&body), None).0,
        200
    );

    // w2 waits for the lock, then its client goes away without reading an answer.
    let body = json!({"holder": "w2", "ttl_ms": 60_000, "wait_ms": 30_000}).to_string();
    let mut gone = std::net::TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(
        &mut gone,
        format!(
            "POST /locks/g/acquire HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let waiting = || call(&addr, "GET", "/locks/g/status", None, None).1["waiting"].as_u64();
    eventually(10, "w2 in the queue", || {
        (waiting() == Some(1)).then_some(())
    });
    drop(gone);
    eventually(10, "w2 out of the queue", || {
        (waiting() == Some(0)).then_some(())
    });

    let lines = eventually(10, "the line of w2's acquire", || {
        let lines = audit_lines(&audit);
        (lines.len() == 2).then_some(lines)
    });
    assert_eq!(lines[0]["result"], "granted", "{lines:#?}");
    assert_eq!(lines[1]["result"], "client_left", "{lines:#?}");
    assert!(
        lines
            .iter()
            .all(|l| l["token"].is_null() && l["lock"] == "g")
    );
}

#[test]
fn a_token_writes_and_reads_only_the_keys_under_its_prefixes_and_writes_are_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let audit = dir.join("audit.log");
    let addr = free_addr();
    let args = [
        "--acl".into(),
        s(&acl_file(dir, false)),
        "--audit-log".into(),
        s(&audit),
    ];
    let _node = Node::start_args(1, &addr, &[], dir, &args);
    eventually(20, "a leader", || leader(&addr));
    let put = |key: &str, token| {
        let body = json!({"value": 1});
        call(
            &addr,
            "PUT",
            &format!("/kv/{key}"),
            Some(&body),
            Some(token),
        )
        .0
    };
    assert_eq!(put("ci%2Fk", CI), 200);
    assert_eq!(put("other", CI), 403);
    assert_eq!(put("other", OPS), 200);
    assert_eq!(call(&addr, "GET", "/kv/other", None, Some(CI)).0, 403);
    assert_eq!(call(&addr, "DELETE", "/kv/other", None, Some(CI)).0, 403);
    // A transaction is refused if any key it names is outside the prefixes, compares included.
    let txn = |compare: &str, write: &str| {
        let body = json!({
            "compare": [{"key": compare, "exists": true}],
            "ops": [{"op": "put", "key": write, "value": 2}],
        });
        call(&addr, "POST", "/kv/txn", Some(&body), Some(CI)).0
    };
    assert_eq!(txn("ci/k", "ci/j"), 200);
    assert_eq!(txn("other", "ci/j"), 403);
    assert_eq!(txn("ci/k", "other"), 403);
    // A listing shows only the keys the token may read.
    let (_, page) = call(&addr, "GET", "/kv?prefix=", None, Some(CI));
    let keys: Vec<&str> = page["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["ci/j", "ci/k"]);
    // Writes are audited with their result, refusals too; reads are not.
    let lines = audit_lines(&audit);
    let seen: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|l| {
            let field = |f: &str| l[f].as_str().unwrap_or("");
            (field("op"), field("lock"), field("result"))
        })
        .collect();
    assert!(seen.contains(&("kv_put", "ci/k", "written")), "{seen:?}");
    assert!(seen.contains(&("kv_put", "other", "forbidden")), "{seen:?}");
    assert!(seen.contains(&("kv_txn", "txn", "written")), "{seen:?}");
    assert!(seen.iter().all(|(op, ..)| *op != "kv_get"), "{seen:?}");
}
