//! The CLI's server backend against real `sentinel serve` processes on loopback: the commands of
//! the other backends through `--server`, races, the server-side wait, failover, an unreachable
//! cluster, `cluster status`, and the auth token kept out of every output.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::serve::{Node, TOKEN, eventually, free_addr, leader_of, peers_of};
use crate::support::{Running, code, sentinel, sole_winner, stdout_json, text, wait_all};

/// `sentinel --server SERVERS --worker-id WORKER ARGS…` with the cluster token in the
/// environment.
pub(crate) fn cli(data: &Path, servers: &str, worker: &str, args: &[&str]) -> Command {
    let mut cmd = sentinel(data);
    cmd.env("SENTINEL_SERVER", servers)
        .env("SENTINEL_AUTH_TOKEN", TOKEN)
        .args(["--worker-id", worker])
        .args(args);
    cmd
}

pub(crate) fn run(data: &Path, servers: &str, worker: &str, args: &[&str]) -> Output {
    no_token_in(cli(data, servers, worker, args).output().unwrap())
}

/// `sentinel cluster status ARGS…` with the servers and the token in the environment: it takes
/// no worker id.
fn cluster_status(data: &Path, servers: &str, args: &[&str]) -> Output {
    let mut cmd = sentinel(data);
    cmd.env("SENTINEL_SERVER", servers)
        .env("SENTINEL_AUTH_TOKEN", TOKEN)
        .args(["cluster", "status"])
        .args(args);
    no_token_in(cmd.output().unwrap())
}

fn no_token_in(out: Output) -> Output {
    assert!(
        !text(&out).contains(TOKEN),
        "the token leaked: {}",
        text(&out)
    );
    out
}

pub(crate) fn one_node(data: &Path) -> (Node, String) {
    let node = Node::start(1, &free_addr(), &[], data, Some(TOKEN));
    let url = format!("http://{}", node.addr);
    (node, url)
}

#[test]
fn claim_status_heartbeat_release_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url) = one_node(tmp.path());
    let name = "build 42/ünïcode";

    let out = run(
        tmp.path(),
        &url,
        "w1",
        &["--json", "claim", name, "--ttl", "30s"],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let claim = stdout_json(&out);
    assert_eq!(claim["backend"], "server", "{claim}");
    let token = claim["fencing_token"].as_u64().expect("a fencing token");

    let out = run(tmp.path(), &url, "w2", &["--json", "status", name]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let status = stdout_json(&out);
    assert_eq!(status["holder"]["worker_id"], "w1", "{status}");
    assert_eq!(status["holder"]["fencing_token"].as_u64(), Some(token));

    let out = run(tmp.path(), &url, "w2", &["--json", "status"]);
    let all = stdout_json(&out);
    assert_eq!(all["locks"][0]["lock"], name, "{all}");

    let out = run(tmp.path(), &url, "w1", &["heartbeat", "--once", name]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        code(&run(tmp.path(), &url, "w2", &["heartbeat", "--once", name])),
        4
    );
    assert_eq!(code(&run(tmp.path(), &url, "w2", &["release", name])), 4);

    let out = run(tmp.path(), &url, "w1", &["--json", "release", name]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(stdout_json(&out)["was_held"], true);
    let out = run(tmp.path(), &url, "w1", &["--json", "status", name]);
    assert_eq!(stdout_json(&out)["held"], false);
    assert_eq!(
        code(&run(tmp.path(), &url, "w1", &["heartbeat", "--once", name])),
        4
    );

    // A wrong token is an authentication error, and neither token is printed.
    let out = cli(tmp.path(), &url, "w1", &["status", name])
        .env("SENTINEL_AUTH_TOKEN", "wrong-s3cret-value")
        .output()
        .unwrap();
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert!(!text(&out).contains("wrong-s3cret-value"), "{}", text(&out));
}

#[test]
fn a_heartbeat_sidecar_and_run_keep_a_short_lease_alive() {
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url) = one_node(tmp.path());
    let out = run(tmp.path(), &url, "w1", &["claim", "job", "--ttl", "3s"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let mut sidecar = Running::spawn(&mut cli(
        tmp.path(),
        &url,
        "w1",
        &["heartbeat", "job", "--interval", "1s"],
    ));
    // Past the TTL the lease still stands only because the sidecar renews it.
    std::thread::sleep(Duration::from_secs(5));
    assert!(sidecar.is_running(), "the sidecar stopped early");
    let out = run(tmp.path(), &url, "w2", &["--json", "status", "job"]);
    assert_eq!(stdout_json(&out)["holder"]["worker_id"], "w1");
    sidecar.signal("TERM");
    let out = sidecar.exit_within(Duration::from_secs(10));
    assert_eq!(code(&out), 0, "{}", text(&out));

    let out = run(
        tmp.path(),
        &url,
        "w3",
        &[
            "run",
            "other",
            "--ttl",
            "5s",
            "--",
            "sh",
            "-c",
            "echo $SENTINEL_LOCK",
        ],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("other"));
    let out = run(tmp.path(), &url, "w3", &["--json", "status", "other"]);
    assert_eq!(stdout_json(&out)["held"], false, "run released it");
}

#[test]
fn steal_stale_force_the_janitor_and_metrics_on_a_server() {
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url) = one_node(tmp.path());
    assert_eq!(
        code(&run(
            tmp.path(),
            &url,
            "w1",
            &["claim", "job", "--ttl", "60s"]
        )),
        0
    );
    // Leases end on the server: a live holder is never stale, a free lock is simply claimed.
    assert_eq!(
        code(&run(tmp.path(), &url, "w2", &["steal-stale", "job"])),
        3
    );
    assert_eq!(
        code(&run(tmp.path(), &url, "w2", &["steal-stale", "free"])),
        0
    );
    let out = run(tmp.path(), &url, "j", &["--json", "steal-stale", "--all"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("\"live\""), "{}", text(&out));

    let out = run(
        tmp.path(),
        &url,
        "w3",
        &["--json", "claim", "job", "--strategy", "force"],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        stdout_json(&out)["took_over"]["worker_id"],
        "w1",
        "{}",
        text(&out)
    );
    let out = run(
        tmp.path(),
        &url,
        "w4",
        &["--json", "release", "job", "--force"],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(stdout_json(&out)["previous"]["worker_id"], "w3");

    let out = run(
        tmp.path(),
        &url,
        "x",
        &["--json", "metrics", "--backend", "server"],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("server"), "{}", text(&out));
}

#[test]
fn sixteen_fail_fast_claims_have_one_winner() {
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url) = one_node(tmp.path());
    let children: Vec<_> = (0..16)
        .map(|i| {
            cli(
                tmp.path(),
                &url,
                &format!("w{i}"),
                &["claim", "race", "--strategy", "fail-fast"],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let outs = wait_all(children);
    let winner = sole_winner(&outs);
    let out = run(tmp.path(), &url, "x", &["--json", "status", "race"]);
    assert_eq!(
        stdout_json(&out)["holder"]["worker_id"],
        format!("w{winner}")
    );
}

#[test]
fn retry_waits_on_the_server_and_exits_3_when_the_wait_runs_out() {
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url) = one_node(tmp.path());
    assert_eq!(
        code(&run(
            tmp.path(),
            &url,
            "w1",
            &["claim", "held", "--ttl", "60s"]
        )),
        0
    );
    // Two retries from 500 ms: the wait is 0.5 + 1 = 1.5 s, then exit 3.
    let started = Instant::now();
    let out = run(
        tmp.path(),
        &url,
        "w2",
        &[
            "claim",
            "held",
            "--max-retries",
            "2",
            "--initial-backoff",
            "500ms",
        ],
    );
    let took = started.elapsed();
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(
        text(&out).contains("held by w1") && text(&out).contains("waiting 1500ms on the server"),
        "{}",
        text(&out)
    );
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(10),
        "{took:?}"
    );

    // A waiter is granted the moment the lock is released, not at its next poll (10 s away).
    let waiter = Running::spawn(&mut cli(
        tmp.path(),
        &url,
        "w2",
        &[
            "claim",
            "held",
            "--max-retries",
            "1",
            "--initial-backoff",
            "10s",
        ],
    ));
    std::thread::sleep(Duration::from_millis(700));
    let released = Instant::now();
    assert_eq!(code(&run(tmp.path(), &url, "w1", &["release", "held"])), 0);
    let out = waiter.exit_within(Duration::from_secs(20));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        released.elapsed() < Duration::from_secs(5),
        "{:?}",
        released.elapsed()
    );

    // A claim interrupted while it waits on the server exits promptly and takes its wait back.
    let mut waiter = Running::spawn(&mut cli(
        tmp.path(),
        &url,
        "w3",
        &[
            "claim",
            "held",
            "--max-retries",
            "1",
            "--initial-backoff",
            "15s",
        ],
    ));
    std::thread::sleep(Duration::from_millis(700));
    waiter.signal("INT");
    let interrupted = Instant::now();
    let out = waiter.exit_within(Duration::from_secs(20));
    assert_eq!(code(&out), 130, "{}", text(&out));
    assert!(
        interrupted.elapsed() < Duration::from_secs(3),
        "{:?}: {}",
        interrupted.elapsed(),
        text(&out)
    );
    // When the lock falls free, the interrupted claim is not handed it: nobody holds it.
    assert_eq!(code(&run(tmp.path(), &url, "w2", &["release", "held"])), 0);
    let out = run(tmp.path(), &url, "w9", &["--json", "status", "held"]);
    assert_eq!(stdout_json(&out)["held"], false, "{}", text(&out));
}

#[test]
fn a_dead_first_server_is_skipped_and_all_dead_exits_8_quickly() {
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url) = one_node(tmp.path());
    let dead = format!("http://{}", free_addr());
    let servers = format!("{dead},{url}");
    let out = run(tmp.path(), &servers, "w1", &["--json", "claim", "fo"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        code(&run(tmp.path(), &servers, "w1", &["release", "fo"])),
        0
    );

    let other_dead = format!("http://{}", free_addr());
    let started = Instant::now();
    let out = run(
        tmp.path(),
        &format!("{dead},{other_dead}"),
        "w1",
        &["claim", "fo"],
    );
    assert_eq!(code(&out), 8, "{}", text(&out));
    assert!(
        text(&out).contains("no sentinel server answered"),
        "{}",
        text(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // Refused before anything is sent: not http(s), or credentials (never echoed).
    let out = run(tmp.path(), "ftp://127.0.0.1:1", "w1", &["status"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    let out = run(
        tmp.path(),
        "http://u:pa55w0rd@127.0.0.1:1",
        "w1",
        &["status"],
    );
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(!text(&out).contains("pa55w0rd"), "{}", text(&out));
}

#[test]
fn a_three_node_cluster_shows_its_status_and_survives_its_leader() {
    let _one_cluster = crate::serve::one_cluster_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let peers = peers_of(&addrs);
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let dir = tmp.path().join(format!("n{}", i + 1));
            std::fs::create_dir_all(&dir).unwrap();
            Node::start(i as u64 + 1, &addrs[i], &peers, &dir, Some(TOKEN))
        })
        .collect();
    let servers = addrs
        .iter()
        .map(|a| format!("http://{a}"))
        .collect::<Vec<_>>()
        .join(",");
    let leader = eventually(30, "a leader", || leader_of(&addrs[0]));
    let client = tmp.path().join("client");

    // Right after the election the leader's first entry may not be committed yet: no commit
    // index, no follower matched.
    let status = eventually(30, "every follower replicating", || {
        let out = cluster_status(&client, &servers, &["--json"]);
        let v: Value = stdout_json(&out);
        let c = &v["cluster"];
        let followers = c["followers"].as_array()?;
        let matched = followers.iter().all(|f| f["matched_index"].is_u64());
        (followers.len() == 2 && matched && c["commit_index"].is_u64()).then(|| c.clone())
    });
    assert_eq!(status["leader"].as_u64(), Some(leader), "{status}");
    assert_eq!(status["members"].as_array().unwrap().len(), 3, "{status}");
    assert!(status["commit_index"].as_u64().is_some(), "{status}");
    let out = cluster_status(&client, &servers, &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(human.contains(&format!("leader {leader}")), "{human}");
    for a in &addrs {
        assert!(human.contains(a.as_str()), "{human}");
    }
    assert!(human.contains("LAG"), "{human}");

    let out = run(
        &client,
        &servers,
        "w1",
        &["--json", "claim", "kept", "--ttl", "60s"],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));

    // kill -9 the leader: with it first in --server, the next commands still succeed.
    let idx = nodes.iter().position(|n| n.id == leader).unwrap();
    nodes[idx].kill();
    let mut ordered = vec![format!("http://{}", addrs[idx])];
    ordered.extend(
        (0..3)
            .filter(|&i| i != idx)
            .map(|i| format!("http://{}", addrs[i])),
    );
    let servers = ordered.join(",");
    let out = run(
        &client,
        &servers,
        "w2",
        &["--json", "claim", "after", "--ttl", "60s"],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = run(&client, &servers, "w2", &["--json", "status", "kept"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        stdout_json(&out)["holder"]["worker_id"],
        "w1",
        "the lease survived"
    );
    let out = run(&client, &servers, "w1", &["release", "kept"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
}
