//! `sentinel metrics` through the real binary: counters that survive processes and concurrency,
//! and Prometheus text a scraper can read.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use regex_lite::Regex;
use serde_json::Value;

use crate::support::{Gh, REPO, code, sentinel, stdout_json, text, wait_all};

fn local(dir: &Path, worker: &str, args: &[&str]) -> Command {
    let mut cmd = sentinel(dir);
    cmd.args(["--worker-id", worker]).args(args);
    cmd
}

fn run(dir: &Path, worker: &str, args: &[&str]) -> Output {
    local(dir, worker, args).output().unwrap()
}

fn metrics_json(dir: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["metrics", "--json"];
    args.extend_from_slice(extra);
    let out = run(dir, "observer", &args);
    assert_eq!(code(&out), 0, "{}", text(&out));
    stdout_json(&out)
}

#[test]
fn counters_add_up_across_invocations_on_the_local_backend() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let expect_code = |worker: &str, args: &[&str], expected: i32| {
        let out = run(d, worker, args);
        assert_eq!(code(&out), expected, "{args:?}: {}", text(&out));
    };
    expect_code("a", &["claim", "build"], 0);
    expect_code("b", &["claim", "build", "--strategy", "fail-fast"], 3);
    let retry_once = [
        "claim",
        "build",
        "--max-retries",
        "1",
        "--initial-backoff",
        "10ms",
    ];
    expect_code("b", &retry_once, 3);
    expect_code("a", &["release", "build"], 0);
    // Releasing a free lock is not a release.
    expect_code("a", &["release", "build"], 0);
    expect_code("a", &["claim", "deploy", "--ttl", "1s"], 0);
    crate::support::age_local_lock(d, "deploy", 1_100);
    expect_code("b", &["claim", "deploy", "--strategy", "steal-stale"], 0);
    // An argument rejected before the backend is asked is no claim at all.
    expect_code("b", &["claim", "deploy", "--ttl", "0s"], 2);

    let v = metrics_json(d, &[]);
    assert_eq!(v["backend"], "all");
    for (key, want) in [
        ("total_acquisitions", 3),
        ("total_releases", 1),
        ("total_conflicts", 2),
        ("total_retries", 1),
        ("failed_acquisitions", 2),
        ("stale_locks_claimed", 1),
    ] {
        assert_eq!(v[key], want, "{key}: {v}");
        assert_eq!(v["by_backend"]["local"][key], want, "{key}: {v}");
    }
    assert!(
        v["average_acquisition_time_ms"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    assert_eq!(v["by_backend"].as_object().unwrap().len(), 1, "{v}");

    let github = metrics_json(d, &["--backend", "github"]);
    assert_eq!(github["backend"], "github");
    assert_eq!(github["total_acquisitions"], 0);
    // A configured repository and no token: the local counters need neither.
    let out = run(d, "observer", &["--repo", "acme/widgets", "metrics"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("acquisitions") && table.contains("local"),
        "{table}"
    );
}

#[test]
fn sixteen_concurrent_claims_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..16)
        .map(|i| {
            local(
                dir.path(),
                &format!("w{i}"),
                &["claim", &format!("job-{i}"), "--strategy", "fail-fast"],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for out in wait_all(children) {
        assert_eq!(code(&out), 0, "{}", text(&out));
    }
    let v = metrics_json(dir.path(), &["--backend", "local"]);
    assert_eq!(v["total_acquisitions"], 16, "{v}");
    assert_eq!(v["failed_acquisitions"], 0, "{v}");
}

/// Checks `text` against the Prometheus text exposition format (0.0.4) and returns the samples:
/// every line is a HELP, a TYPE or a sample of a family whose HELP and TYPE came first.
fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    let name = r"[a-zA-Z_:][a-zA-Z0-9_:]*";
    let label = r#"[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*""#;
    let value = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|NaN|Inf)";
    let help = Regex::new(&format!(r"^# HELP ({name}) .+$")).unwrap();
    let kind = Regex::new(&format!(
        r"^# TYPE ({name}) (counter|gauge|summary|histogram|untyped)$"
    ))
    .unwrap();
    let sample = Regex::new(&format!(
        r"^({name})(\{{(?:{label})(?:,{label})*,?\}})? ({value})(?: -?[0-9]+)?$"
    ))
    .unwrap();
    let mut helped = Vec::new();
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    assert!(
        text.ends_with('\n'),
        "the last line must end with a newline"
    );
    for line in text.lines() {
        if let Some(c) = help.captures(line) {
            helped.push(c[1].to_string());
        } else if let Some(c) = kind.captures(line) {
            assert!(
                typed.insert(c[1].to_string(), c[2].to_string()).is_none(),
                "second TYPE: {line}"
            );
        } else if let Some(c) = sample.captures(line) {
            let metric = &c[1];
            let family = typed
                .iter()
                .find(|(f, kind)| {
                    metric == f.as_str()
                        || (kind.as_str() == "summary"
                            && [format!("{f}_sum"), format!("{f}_count")]
                                .contains(&metric.to_string()))
                })
                .map(|(f, _)| f.clone())
                .unwrap_or_else(|| panic!("sample before its TYPE: {line}"));
            assert!(helped.contains(&family), "no HELP for {family}");
            let key = format!("{metric}{}", c.get(2).map_or("", |m| m.as_str()));
            samples.insert(key, c[3].parse::<f64>().unwrap());
        } else {
            panic!("not in the exposition format: {line:?}");
        }
    }
    samples
}

#[test]
fn prometheus_output_is_valid_exposition_format() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(code(&run(d, "a", &["claim", "x"])), 0);
    assert_eq!(
        code(&run(d, "b", &["claim", "x", "--strategy", "fail-fast"])),
        3
    );
    let out = run(d, "o", &["metrics", "--format", "prometheus"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let samples = parse_exposition(&String::from_utf8(out.stdout).unwrap());
    for (metric, want) in [
        ("sentinel_acquisitions_total", 1.0),
        ("sentinel_releases_total", 0.0),
        ("sentinel_conflicts_total", 1.0),
        ("sentinel_retries_total", 0.0),
        ("sentinel_failed_acquisitions_total", 1.0),
        ("sentinel_stale_locks_claimed_total", 0.0),
        ("sentinel_acquisition_duration_seconds_count", 1.0),
    ] {
        let key = format!("{metric}{{backend=\"local\"}}");
        assert_eq!(samples.get(&key), Some(&want), "{key} in {samples:?}");
    }
    let sum = samples["sentinel_acquisition_duration_seconds_sum{backend=\"local\"}"];
    assert!(sum > 0.0 && sum < 60.0, "{sum}");

    let both = run(d, "o", &["metrics", "--format", "prometheus", "--json"]);
    assert_eq!(code(&both), 2, "{}", text(&both));
}

#[test]
fn the_exposition_checker_rejects_what_scrapers_reject() {
    for bad in [
        "sentinel_x_total 1\n",
        "# TYPE sentinel_x_total counter\nsentinel_x_total 1\n",
        "# HELP sentinel_x_total h\n# TYPE sentinel_x_total counter\nsentinel_x_total{backend=local} 1\n",
        "# HELP sentinel_x_total h\n# TYPE sentinel_x_total counter\nsentinel_x_total one\n",
    ] {
        let caught = std::panic::catch_unwind(|| parse_exposition(bad));
        assert!(caught.is_err(), "accepted {bad:?}");
    }
}

#[test]
fn repo_wide_counts_grants_releases_and_take_overs_from_the_lock_comments() {
    let gh = Gh::new();
    let ok = |out: Output| assert_eq!(code(&out), 0, "{}", text(&out));
    let issues: Vec<u64> = (0..4)
        .map(|i| gh.emu.create_issue(REPO, &format!("task {i}")))
        .collect();
    let [released, stolen, forced, replaced] = [0, 1, 2, 3].map(|i| issues[i].to_string());

    ok(gh.run(&gh.alice, "w1", &["claim", &released]));
    ok(gh.run(&gh.alice, "w1", &["release", &released]));
    ok(gh.run(&gh.alice, "w2", &["claim", &stolen, "--ttl", "60s"]));
    ok(gh.run(&gh.alice, "w4", &["claim", &forced]));
    // Two minutes on GitHub's clock: w2's lease has run out, w4's (5 min) has not.
    gh.emu.advance_clock(chrono::Duration::seconds(120));
    let steal = [
        "claim",
        &stolen,
        "--strategy",
        "steal-stale",
        "--max-retries",
        "0",
    ];
    ok(gh.run(&gh.bob, "w3", &steal));
    ok(gh.run(&gh.bob, "w5", &["claim", &forced, "--strategy", "force"]));
    // A claim that loses deletes its comment: no grant.
    let lost = gh.run(
        &gh.alice,
        "w6",
        &["claim", &forced, "--strategy", "fail-fast"],
    );
    assert_eq!(code(&lost), 3, "{}", text(&lost));
    // A release from a machine that does not remember the lock replaces its comment.
    ok(gh.run(&gh.alice, "w7", &["claim", &replaced]));
    let elsewhere = tempfile::tempdir().unwrap();
    ok(gh
        .cmd_in(elsewhere.path(), &gh.alice, "w7", &["release", &replaced])
        .output()
        .unwrap());
    // A lookalike from an outsider counts for nothing.
    let body = gh.emu.comments(REPO, issues[0])[0].body.clone();
    gh.emu.add_comment(REPO, issues[0], "mallory", &body);

    let out = gh.run(&gh.bob, "observer", &["metrics", "--repo-wide", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v = stdout_json(&out);
    assert_eq!(v["scope"], "repository");
    assert_eq!(v["repo"], REPO);
    for (key, want) in [
        // w1, w2 (deleted by w3), w3, w4 (deleted by w5), w5, w7 (replaced by the notice)
        ("total_acquisitions", 6),
        // w1, and w7's from elsewhere
        ("total_releases", 2),
        ("stale_locks_claimed", 1),
        ("forced_takeovers", 1),
        ("issues", 4),
    ] {
        assert_eq!(v[key], want, "{key}: {v}");
    }

    let out = gh.run(
        &gh.bob,
        "observer",
        &[
            "metrics",
            "--repo-wide",
            "--format",
            "prometheus",
            "--since",
            "1d",
        ],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let samples = parse_exposition(&String::from_utf8(out.stdout).unwrap());
    let repo = format!("{{repo=\"{REPO}\"}}");
    assert_eq!(samples[&format!("sentinel_repo_acquisitions{repo}")], 6.0);
    assert_eq!(
        samples[&format!("sentinel_repo_window_seconds{repo}")],
        86400.0
    );

    // The same claims, counted on this host as they happened.
    let local = metrics_json(gh.data.path(), &["--backend", "github"]);
    assert_eq!(local["total_acquisitions"], 6, "{local}");
    assert_eq!(local["total_conflicts"], 1, "{local}");
    assert_eq!(local["stale_locks_claimed"], 1, "{local}");
    assert_eq!(local["total_releases"], 1, "{local}");
}

#[test]
fn repo_wide_needs_the_github_backend() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), "o", &["metrics", "--repo-wide"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("github backend"), "{}", text(&out));
    let out = run(dir.path(), "o", &["metrics", "--since", "1d"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
}
