//! `sentinel kv` against real `sentinel serve` processes: values round-trip as a shell gives and
//! reads them (JSON, or else text; a string printed as it is), keys of any printable text,
//! compare-and-set on revisions, merge writes from concurrent processes that lose no update,
//! deletes, the worker id as the writer the watch stream shows, listings over several pages,
//! values from files and stdin; and what is refused before anything is sent: a key or value too
//! large, and every backend but the coordinator.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::serve::{TOKEN, eventually, http};
use crate::server_cli::one_node;
use crate::support::{Running, closed_port, code, sentinel, stdout_json, text, wait_for};

/// `sentinel kv ARGS…` against `url`, with the token and the worker id `w1` in the environment
/// (`get` and `list` take no worker id: on their command line it would be refused).
fn kv_cmd(data: &Path, url: &str, args: &[&str]) -> Command {
    let mut cmd = sentinel(data);
    cmd.env("SENTINEL_SERVER", url)
        .env("SENTINEL_AUTH_TOKEN", TOKEN)
        .env("SENTINEL_WORKER_ID", "w1")
        .arg("kv")
        .args(args);
    cmd
}

fn kv(data: &Path, url: &str, args: &[&str]) -> Output {
    let out = kv_cmd(data, url, args).output().unwrap();
    assert!(
        !text(&out).contains(TOKEN),
        "the token leaked: {}",
        text(&out)
    );
    out
}

/// Runs `kv ARGS…`, asserts exit 0 and returns stdout.
fn ok(data: &Path, url: &str, args: &[&str]) -> String {
    let out = kv(data, url, args);
    assert_eq!(code(&out), 0, "{args:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// `kv put ARGS…`: the revision it printed.
fn put(data: &Path, url: &str, args: &[&str]) -> u64 {
    let printed = ok(data, url, &[&["put"], args].concat());
    printed
        .trim_end()
        .parse()
        .unwrap_or_else(|e| panic!("put printed {printed:?}, not a revision: {e}"))
}

/// `kv get KEY --json`.
fn read(data: &Path, url: &str, key: &str) -> Value {
    stdout_json(&kv(data, url, &["get", key, "--json"]))
}

/// Asserts exit `expected` and that the message says each of `words`.
fn refused(out: &Output, expected: i32, words: &[&str]) {
    assert_eq!(code(out), expected, "{}", text(out));
    for w in words {
        assert!(
            text(out).contains(w),
            "the message says {w:?}: {}",
            text(out)
        );
    }
}

#[test]
fn values_round_trip_as_json_or_text_under_any_printable_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url) = one_node(tmp.path());
    let d = tmp.path();
    let odd = "jobs/build 42/ünï?x=1&y#z%20";

    let r1 = put(d, &url, &[odd, "hello world"]);
    assert_eq!(ok(d, &url, &["get", odd]), "hello world\n");
    let r2 = put(d, &url, &["n", "5"]);
    assert!(r2 > r1, "{r1} then {r2}");
    assert_eq!(ok(d, &url, &["get", "n"]), "5\n");
    let n = read(d, &url, "n");
    assert_eq!(n["value"], json!(5), "a number, not a string: {n}");
    assert_eq!(n["key"], "n", "{n}");
    assert_eq!(n["mod_revision"].as_u64(), Some(r2), "{n}");
    assert_eq!(n["create_revision"].as_u64(), Some(r2), "{n}");
    assert_eq!(n["version"], 1, "{n}");
    assert!(n["revision"].as_u64().unwrap() >= r2, "{n}");

    // Quoted, the same digits are a string; printed, the same text.
    put(d, &url, &["s", r#""5""#]);
    assert_eq!(read(d, &url, "s")["value"], json!("5"));
    assert_eq!(ok(d, &url, &["get", "s"]), "5\n");
    // Another write of a key: a later revision, the version counts it.
    let r3 = put(d, &url, &["n", "6"]);
    let n = read(d, &url, "n");
    assert_eq!(
        (n["create_revision"].as_u64(), n["mod_revision"].as_u64()),
        (Some(r2), Some(r3))
    );
    assert_eq!(n["version"], 2, "{n}");

    let object = r#"{"a":[1,2],"b":{"c":true,"d":null}}"#;
    put(d, &url, &["cfg", object]);
    assert_eq!(ok(d, &url, &["get", "cfg"]), format!("{object}\n"));
    assert_eq!(
        read(d, &url, "cfg")["value"],
        serde_json::from_str::<Value>(object).unwrap()
    );

    // A string's own spaces and newlines are printed as they are, followed by one newline.
    put(d, &url, &["padded", "  two\nlines  "]);
    assert_eq!(ok(d, &url, &["get", "padded"]), "  two\nlines  \n");
    put(d, &url, &["empty", r#""""#]);
    assert_eq!(ok(d, &url, &["get", "empty"]), "\n");

    let out = kv(d, &url, &["put", odd, "-7", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let written = stdout_json(&out);
    assert_eq!(written["key"], odd, "{written}");
    assert!(written["revision"].as_u64().unwrap() > r3, "{written}");
    assert!(written["request_id"].is_string(), "{written}");
    assert_eq!(read(d, &url, odd)["value"], json!(-7));

    let out = kv(d, &url, &["get", "missing"]);
    refused(&out, 6, &["\"missing\"", "does not exist"]);
    assert!(out.stdout.is_empty(), "{}", text(&out));
    let out = kv(d, &url, &["get", "missing", "--json"]);
    assert_eq!(code(&out), 6);
    assert_eq!(
        stdout_json(&out)["error"]["kind"],
        "not_found",
        "{}",
        text(&out)
    );
}

#[test]
fn if_revision_writes_only_over_the_revision_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url) = one_node(tmp.path());
    let d = tmp.path();

    // Create-only.
    let r1 = put(d, &url, &["lease", "a", "--if-revision", "0"]);
    let out = kv(d, &url, &["put", "lease", "b", "--if-revision", "0"]);
    refused(&out, 3, &["\"lease\" exists", &format!("revision {r1}")]);

    // A compare-and-set loop's two writers: the one that read r1 first wins, the other is told
    // where the key is now.
    let r2 = put(d, &url, &["lease", "b", "--if-revision", &r1.to_string()]);
    let out = kv(
        d,
        &url,
        &["put", "lease", "c", "--if-revision", &r1.to_string()],
    );
    refused(&out, 3, &[&format!("is at revision {r2}, not {r1}")]);
    assert_eq!(ok(d, &url, &["get", "lease"]), "b\n");

    let out = kv(d, &url, &["put", "nothing", "x", "--if-revision", "5"]);
    refused(&out, 3, &["\"nothing\" does not exist", "5"]);
    assert_eq!(code(&kv(d, &url, &["get", "nothing"])), 6);

    // Deletes compare the same way.
    let out = kv(d, &url, &["del", "lease", "--if-revision", &r1.to_string()]);
    refused(&out, 3, &[&format!("is at revision {r2}, not {r1}")]);
    assert_eq!(ok(d, &url, &["get", "lease"]), "b\n");
    let out = ok(d, &url, &["del", "lease", "--if-revision", &r2.to_string()]);
    assert!(out.contains("deleted"), "{out}");
    assert_eq!(code(&kv(d, &url, &["get", "lease"])), 6);
}

#[test]
fn concurrent_adds_and_unions_lose_no_update() {
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url) = one_node(tmp.path());
    let d = tmp.path();

    // Eight processes at once, each adding its own amount five times: the counter ends at the
    // exact sum, and each set member put by one of them is in the set.
    let outs: Vec<Output> = std::thread::scope(|s| {
        let workers: Vec<_> = (1..=8)
            .map(|i| {
                let url = &url;
                s.spawn(move || {
                    let mut outs = Vec::new();
                    for _ in 0..5 {
                        let amount = i.to_string();
                        outs.push(kv(d, url, &["put", "hits", &amount, "--merge", "add"]));
                    }
                    let member = json!([format!("w{i}")]).to_string();
                    outs.push(kv(d, url, &["put", "seen", &member, "--merge", "union"]));
                    outs
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    for out in &outs {
        assert_eq!(code(out), 0, "{}", text(out));
    }
    let revisions: std::collections::BTreeSet<String> = outs
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .collect();
    assert_eq!(revisions.len(), outs.len(), "every write its own revision");
    assert_eq!(
        read(d, &url, "hits")["value"],
        json!(5 * (1..=8).sum::<i32>())
    );
    let mut seen: Vec<String> =
        serde_json::from_value(read(d, &url, "seen")["value"].clone()).unwrap();
    seen.sort();
    assert_eq!(seen, (1..=8).map(|i| format!("w{i}")).collect::<Vec<_>>());

    // A union keeps the stored order and adds only what is missing.
    put(d, &url, &["tags", r#"["a","b"]"#]);
    put(d, &url, &["tags", r#"["c","a"]"#, "--merge", "union"]);
    assert_eq!(read(d, &url, "tags")["value"], json!(["a", "b", "c"]));
    // Max and min keep the extreme.
    for v in ["3", "9", "4"] {
        put(d, &url, &["high", v, "--merge", "max"]);
        put(d, &url, &["low", v, "--merge", "min"]);
    }
    assert_eq!(read(d, &url, "high")["value"], json!(9));
    assert_eq!(read(d, &url, "low")["value"], json!(3));
}

#[test]
fn deep_merges_objects_and_a_merge_the_value_cannot_take_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url) = one_node(tmp.path());
    let d = tmp.path();

    put(
        d,
        &url,
        &["cfg", r#"{"db":{"host":"a","port":1},"debug":false}"#],
    );
    put(
        d,
        &url,
        &["cfg", r#"{"db":{"port":2},"new":true}"#, "--merge", "deep"],
    );
    assert_eq!(
        read(d, &url, "cfg")["value"],
        json!({"db": {"host": "a", "port": 2}, "debug": false, "new": true})
    );

    // The stored value cannot take it: a conflict, and the value is as it was.
    put(d, &url, &["name", "text"]);
    let out = kv(d, &url, &["put", "name", "1", "--merge", "add"]);
    refused(&out, 3, &["\"name\""]);
    assert_eq!(text(&out).matches("\"name\"").count(), 1, "{}", text(&out));
    assert_eq!(ok(d, &url, &["get", "name"]), "text\n");
    // The written value cannot: refused before it is sent (exit 2).
    let out = kv(d, &url, &["put", "cfg", "5", "--merge", "deep"]);
    refused(&out, 2, &["deep", "an object"]);
    let out = kv(d, &url, &["put", "tags", "x", "--merge", "union"]);
    refused(&out, 2, &["union", "an array"]);
}

#[test]
fn del_says_whether_the_key_existed() {
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url) = one_node(tmp.path());
    let d = tmp.path();

    let out = ok(d, &url, &["del", "ghost"]);
    assert!(out.contains("did not exist"), "{out}");
    let out = kv(d, &url, &["del", "ghost", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(stdout_json(&out)["deleted"], false);

    let r = put(d, &url, &["here", "1"]);
    let out = kv(d, &url, &["del", "here", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let deleted = stdout_json(&out);
    assert_eq!(deleted["deleted"], true, "{deleted}");
    assert_eq!(deleted["key"], "here", "{deleted}");
    assert!(deleted["revision"].as_u64().unwrap() > r, "{deleted}");
    assert_eq!(code(&kv(d, &url, &["get", "here"])), 6);
    // Written again, it is a new key: created at a later revision, version 1.
    let again = put(d, &url, &["here", "2"]);
    let v = read(d, &url, "here");
    assert_eq!(v["create_revision"].as_u64(), Some(again), "{v}");
    assert_eq!(v["version"], 1, "{v}");
}

#[test]
fn writes_name_the_worker_id_as_their_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url) = one_node(tmp.path());
    let d = tmp.path();
    let events = d.join("events.jsonl");
    let mut watch = Running::spawn_with_stdout(
        sentinel(d)
            .env("SENTINEL_SERVER", &url)
            .env("SENTINEL_AUTH_TOKEN", TOKEN)
            .args(["watch", "--prefix", "wk/"])
            .stdout(std::fs::File::create(&events).unwrap()),
    );
    let lines = || -> Vec<Value> {
        std::fs::read_to_string(&events)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // The stream is open once it has told where it starts; writes from then on are seen.
    std::thread::sleep(Duration::from_millis(500));
    let r = put(d, &url, &["wk/a", "1", "--worker-id", "writer-7"]);
    ok(d, &url, &["del", "wk/a", "--worker-id", "writer-8"]);
    wait_for(Duration::from_secs(20), "two events", || lines().len() == 2);
    watch.signal("TERM");
    let exit = watch.exit_within(Duration::from_secs(10));
    assert_eq!(code(&exit), 0, "{}", text(&exit));
    let seen = lines();
    assert_eq!(seen[0]["key"], "wk/a", "{seen:?}");
    assert_eq!(seen[0]["worker_id"], "writer-7", "{seen:?}");
    assert_eq!(seen[0]["revision"].as_u64(), Some(r), "{seen:?}");
    assert_eq!(seen[1]["worker_id"], "writer-8", "{seen:?}");
}

#[test]
fn list_reads_every_page_in_key_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (node, url) = one_node(tmp.path());
    let d = tmp.path();

    // More keys than one page holds (the coordinator's default page is 100), written straight
    // to the API; the CLI writes the odd ones. A node that is still electing itself answers 503,
    // and the write is sent again under its request id, as the CLI does.
    let n = 250;
    for i in 0..n {
        let body = json!({"value": i, "request_id": format!("page-{i}")});
        let path = format!("/kv/page%2Fk{i:03}");
        let (status, answer) = eventually(30, "a leader", || {
            let answer = http(&node.addr, "PUT", &path, Some(body.clone())).unwrap();
            (answer.0 != 503).then_some(answer)
        });
        assert_eq!(status, 200, "{answer}");
    }
    put(d, &url, &["page/z text", "two\nlines\tand a tab"]);
    put(d, &url, &["pagf", "outside the prefix"]);
    let (status, first) = http(&node.addr, "GET", "/kv?prefix=page%2F", None).unwrap();
    assert_eq!(status, 200, "{first}");
    assert!(first["next"].is_string(), "more than one page: {first}");

    let listed = ok(d, &url, &["list", "page/"]);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), n + 1, "{listed}");
    for (i, line) in lines[..n].iter().enumerate() {
        assert_eq!(*line, format!("page/k{i:03}\t{i}"));
    }
    assert_eq!(lines[n], "page/z text\ttwo\\nlines\\tand a tab");

    let out = kv(d, &url, &["list", "page/", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let entries = stdout_json(&out);
    let entries = entries.as_array().expect("one JSON array");
    assert_eq!(entries.len(), n + 1);
    assert_eq!(entries[7]["key"], "page/k007");
    assert_eq!(entries[7]["value"], 7);
    assert!(entries[7]["mod_revision"].is_u64(), "{}", entries[7]);

    let all = ok(d, &url, &["list", ""]);
    assert_eq!(all.lines().count(), n + 2, "{all}");
    assert_eq!(ok(d, &url, &["list", "nothing/"]), "");
    let out = kv(d, &url, &["list", "nothing/", "--json"]);
    assert_eq!(stdout_json(&out), json!([]));
}

#[test]
fn values_come_from_a_file_or_stdin_by_the_same_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url) = one_node(tmp.path());
    let d = tmp.path();

    let file = d.join("value.json");
    std::fs::write(&file, "{\"replicas\": 3}\n").unwrap();
    put(d, &url, &["obj", &format!("@{}", file.display())]);
    assert_eq!(read(d, &url, "obj")["value"], json!({"replicas": 3}));
    std::fs::write(&file, "plain text\nof two lines\n").unwrap();
    put(d, &url, &["txt", &format!("@{}", file.display())]);
    // One trailing newline is the file's end, not the value's.
    assert_eq!(
        read(d, &url, "txt")["value"],
        json!("plain text\nof two lines")
    );

    let from_stdin = |key: &str, input: &str| {
        let mut child = kv_cmd(d, &url, &["put", key, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(code(&out), 0, "{}", text(&out));
    };
    from_stdin("num", "42\n");
    assert_eq!(read(d, &url, "num")["value"], json!(42));
    from_stdin("word", "hello\n");
    assert_eq!(read(d, &url, "word")["value"], json!("hello"));

    let out = kv(d, &url, &["put", "x", "@/nonexistent/value"]);
    refused(&out, 2, &["/nonexistent/value"]);
}

#[test]
fn a_key_or_value_too_large_is_refused_before_anything_is_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Nothing listens there: a request would fail with exit 8, after its retries.
    let url = format!("http://127.0.0.2:{}", closed_port());
    let long = "k".repeat(1025);
    for args in [
        vec!["put", long.as_str(), "1"],
        vec!["get", long.as_str()],
        vec!["del", long.as_str()],
    ] {
        refused(&kv(d, &url, &args), 2, &["invalid key", "1024"]);
    }
    refused(&kv(d, &url, &["put", "", "1"]), 2, &["invalid key"]);
    let big = d.join("big");
    std::fs::write(&big, "x".repeat(300 << 10)).unwrap();
    let out = kv(d, &url, &["put", "k", &format!("@{}", big.display())]);
    refused(&out, 2, &["bytes of JSON", "at most"]);
}

#[test]
fn every_backend_but_the_coordinator_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for args in [
        vec!["kv", "get", "k"],
        vec!["kv", "put", "k", "1"],
        vec!["kv", "del", "k"],
        vec!["kv", "list", ""],
        // --server given, and another backend asked for.
        vec![
            "kv",
            "get",
            "k",
            "--backend",
            "local",
            "--server",
            "127.0.0.2:1",
        ],
    ] {
        let out = sentinel(d).args(&args).output().unwrap();
        refused(&out, 2, &["sentinel serve", "--server", "local backend"]);
    }
    // Nothing was made on the local backend's side.
    assert!(!d.join("local").exists());
}

#[test]
fn a_key_put_with_a_ttl_ends_unless_written_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url) = one_node(tmp.path());
    let d = tmp.path();
    put(d, &url, &["brief", "1", "--ttl", "1s"]);
    let v = read(d, &url, "brief");
    assert_eq!(v["ttl_ms"], 1000, "{v}");
    assert!(v["expires_at"].is_string(), "{v}");
    // Written again without --ttl it stays; the other one ends.
    put(d, &url, &["stays", "1", "--ttl", "1s"]);
    put(d, &url, &["stays", "2"]);
    eventually(10, "the TTL running out", || {
        (code(&kv(d, &url, &["get", "brief"])) == 6).then_some(())
    });
    assert_eq!(ok(d, &url, &["get", "stays"]), "2\n");
    assert!(read(d, &url, "stays").get("ttl_ms").is_none());
    // A TTL the coordinator does not keep is refused.
    refused(
        &kv(d, &url, &["put", "k", "1", "--ttl", "10ms"]),
        2,
        &["ttl_ms"],
    );
}

#[test]
fn kv_watch_prints_the_keys_events_and_not_the_locks() {
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url) = one_node(tmp.path());
    let d = tmp.path();
    let first = put(d, &url, &["p/a", "1"]);
    // A lock that shares the prefix: its events are on the same stream, not in kv watch.
    let body = json!({"holder": "h", "ttl_ms": 60_000});
    let addr = url.trim_start_matches("http://");
    assert_eq!(
        http(addr, "POST", "/locks/p%2Flock/acquire", Some(body))
            .unwrap()
            .0,
        200
    );
    ok(d, &url, &["del", "p/a"]);
    put(d, &url, &["q/other", "1"]);
    let out = tmp.path().join("kv-watch.out");
    let since = (first - 1).to_string();
    let mut watch = Running::spawn_with_stdout(
        kv_cmd(d, &url, &["watch", "p/", "--since-revision", &since])
            .stdout(std::fs::File::create(&out).unwrap()),
    );
    let lines = || -> Vec<Value> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    wait_for(Duration::from_secs(10), "the key's two events", || {
        lines().len() >= 2
    });
    std::thread::sleep(Duration::from_millis(300));
    let got: Vec<(String, String)> = lines()
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().into(),
                e["key"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("put".into(), "p/a".into()),
            ("deleted".into(), "p/a".into())
        ]
    );
    assert_eq!(lines()[0]["revision"].as_u64(), Some(first));
    watch.signal("TERM");
    let exit = watch.exit_within(Duration::from_secs(10));
    assert_eq!(code(&exit), 0, "{}", text(&exit));
}
