//! Which global options each subcommand takes: its help shows its own options, then only the
//! global options that apply to it under their own heading; one that cannot apply is refused when
//! given on the command line (before or after the subcommand) and ignored when it comes from the
//! environment.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use clap::{Args, CommandFactory};
use sentinel_cli::cli::{Cli, GlobalArgs, inherited};

use crate::support::{Running, closed_port, code, sentinel, stdout_json, text};

/// The heading of the global options a subcommand takes, after its own.
const INHERITED: &str = "Inherited options:";

fn run(data: &Path, args: &[&str]) -> Output {
    sentinel(data).args(args).output().unwrap()
}

/// Every argument of `cmd` and its subcommands, with the path of the command that has it.
fn walk<'a>(cmd: &'a clap::Command, path: &str, out: &mut Vec<(String, &'a clap::Arg)>) {
    for a in cmd.get_arguments() {
        out.push((path.to_string(), a));
    }
    for sc in cmd.get_subcommands() {
        walk(sc, &format!("{path} {}", sc.get_name()), out);
    }
}

#[test]
fn every_option_has_help_text() {
    let mut cmd = Cli::command();
    cmd.build();
    let mut args = Vec::new();
    walk(&cmd, "sentinel", &mut args);
    let missing: Vec<String> = args
        .iter()
        .filter(|(_, a)| !matches!(a.get_id().as_str(), "help" | "version"))
        .filter(|(_, a)| {
            let help = a.get_help().or(a.get_long_help());
            help.is_none_or(|h| h.to_string().trim().is_empty())
        })
        .map(|(path, a)| format!("{path}: {}", a.get_id()))
        .collect();
    assert!(missing.is_empty(), "options without help text: {missing:?}");
    let claim = cmd.find_subcommand("claim").unwrap();
    let task_info = claim
        .get_arguments()
        .find(|a| a.get_id() == "task_info")
        .unwrap();
    assert!(
        task_info.get_help().unwrap().to_string().contains("@FILE"),
        "--task-info's help names @FILE"
    );
}

#[test]
fn every_subcommand_has_a_row_of_real_global_options() {
    let globals = GlobalArgs::augment_args(clap::Command::new("sentinel"));
    let ids: Vec<&str> = globals
        .get_arguments()
        .map(|a| a.get_id().as_str())
        .collect();
    let cmd = Cli::command();
    let mut leaves = Vec::new();
    for sub in cmd.get_subcommands() {
        match sub.has_subcommands() {
            true => leaves.extend(
                sub.get_subcommands()
                    .map(|s| format!("{} {}", sub.get_name(), s.get_name())),
            ),
            false => leaves.push(sub.get_name().to_string()),
        }
    }
    assert_eq!(leaves.len(), 20, "{leaves:?}");
    for path in &leaves {
        let row = inherited(path);
        // Every command logs and can print JSON.
        for output in ["json", "verbose", "quiet"] {
            assert!(row.contains(&output), "{path}: {row:?}");
        }
        for id in row {
            assert!(ids.contains(id), "{path}: {id} is no global option");
        }
    }
    assert!(!inherited("serve").contains(&"repo"));
    assert!(!inherited("completions").contains(&"redis_url"));
    assert!(!inherited("serve").contains(&"etcd_endpoints"));
    assert!(inherited("claim").contains(&"worker_id"));
    assert!(inherited("status").contains(&"etcd_endpoints"));
}

/// `COMMAND --help`'s text, checked to have exited 0.
fn help(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), args);
    assert_eq!(code(&out), 0, "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Where `needle` is in `haystack`, failing the test if it is not there.
fn at(haystack: &str, needle: &str) -> usize {
    haystack
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} is not in:\n{haystack}"))
}

#[test]
fn serve_help_shows_its_own_options_then_only_the_global_ones_it_uses() {
    let h = help(&["serve", "--help"]);
    for foreign in [
        "--repo",
        "--redis-url",
        "--database-url",
        "--etcd-endpoints",
        "--trust",
        "--backend",
        "--worker-id",
        "--server ",
    ] {
        assert!(!h.contains(foreign), "serve --help offers {foreign}:\n{h}");
    }
    let heading = at(&h, INHERITED);
    assert!(at(&h, "--listen") < heading, "{h}");
    assert!(at(&h, "--peer") < heading, "{h}");
    for inherited in [
        "--data-dir",
        "--auth-token",
        "--json",
        "--verbose",
        "--quiet",
    ] {
        assert!(
            at(&h, inherited) > heading,
            "{inherited} is inherited:\n{h}"
        );
    }
}

#[test]
fn claim_help_shows_the_worker_id_under_the_inherited_heading() {
    let h = help(&["claim", "--help"]);
    let heading = at(&h, INHERITED);
    for own in ["--strategy", "--ttl", "--task-info", "--next"] {
        assert!(at(&h, own) < heading, "{own} is claim's own:\n{h}");
    }
    for inherited in [
        "--worker-id",
        "--repo",
        "--server",
        "--backend",
        "--data-dir",
    ] {
        assert!(
            at(&h, inherited) > heading,
            "{inherited} is inherited:\n{h}"
        );
    }
}

#[test]
fn completions_help_shows_no_backend_options() {
    let h = help(&["completions", "--help"]);
    for foreign in ["--repo", "--token", "--server", "--redis-url", "--data-dir"] {
        assert!(
            !h.contains(foreign),
            "completions --help offers {foreign}:\n{h}"
        );
    }
    let h = help(&["cluster", "status", "--help"]);
    assert!(at(&h, "--server") > at(&h, INHERITED), "{h}");
    for foreign in ["--repo", "--redis-url", "--data-dir", "--worker-id"] {
        assert!(
            !h.contains(foreign),
            "cluster status --help offers {foreign}:\n{h}"
        );
    }
}

#[test]
fn kv_help_shows_the_worker_id_only_where_it_is_the_writer() {
    for (sub, writes) in [
        ("get", false),
        ("list", false),
        ("put", true),
        ("del", true),
    ] {
        let h = help(&["kv", sub, "--help"]);
        let heading = at(&h, INHERITED);
        for inherited in ["--server", "--auth-token", "--backend", "--json"] {
            assert!(at(&h, inherited) > heading, "kv {sub}: {inherited}:\n{h}");
        }
        // As each option's own line starts: `--backend`'s help names some of them.
        for foreign in [
            "--repo <",
            "--redis-url <",
            "--data-dir <",
            "--node-id <",
            "--trust <",
        ] {
            assert!(
                !h.contains(foreign),
                "kv {sub} --help offers {foreign}:\n{h}"
            );
        }
        assert_eq!(h.contains("--worker-id <"), writes, "kv {sub}:\n{h}");
    }
    let h = help(&["kv", "put", "--help"]);
    assert!(at(&h, "--merge") < at(&h, INHERITED), "{h}");
    // The rule for VALUE, with its examples, however the help is wrapped.
    let words = h.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("stores the number 5") && words.contains("the string \"5\""),
        "{h}"
    );
}

#[test]
fn kv_get_refuses_the_worker_id_it_does_not_use() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["kv", "get", "k", "--worker-id", "w"]);
    refused(&out, "--worker-id", "kv get");
    let out = run(dir.path(), &["--data-dir", "/tmp", "kv", "put", "k", "1"]);
    refused(&out, "--data-dir", "kv put");
}

/// Asserts a usage error (exit 2) whose message names the option and the command.
fn refused(out: &Output, option: &str, command: &str) {
    assert_eq!(code(out), 2, "{}", text(out));
    let t = text(out);
    assert!(t.contains(option), "the message names {option}: {t}");
    assert!(
        t.contains(&format!("sentinel {command}")),
        "the message names {command}: {t}"
    );
}

#[test]
fn serve_refuses_an_option_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", closed_port());
    for args in [
        vec!["serve", "--listen", &listen, "--repo", "a/b"],
        vec!["serve", "--listen", &listen, "--backend", "redis"],
        vec!["--repo", "a/b", "serve", "--listen", &listen],
    ] {
        // Before the change the node started: it must not be left running.
        let out =
            Running::spawn(sentinel(dir.path()).args(&args)).exit_within(Duration::from_secs(20));
        let option = args
            .iter()
            .find(|a| a.starts_with("--") && **a != "--listen");
        refused(&out, option.unwrap(), "serve");
    }
}

#[test]
fn completions_refuse_backend_options_given_before_or_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["completions", "bash", "--redis-url", "x"]);
    refused(&out, "--redis-url", "completions");
    let out = run(dir.path(), &["--repo", "a/b", "completions", "bash"]);
    refused(&out, "--repo", "completions");
    assert!(
        text(&out).contains("claim"),
        "the message says which commands take --repo: {}",
        text(&out)
    );
}

#[test]
fn an_option_from_the_environment_that_does_not_apply_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let out = sentinel(dir.path())
        .args(["completions", "bash"])
        .env("GITHUB_REPOSITORY", "a/b")
        .env("SENTINEL_REDIS_URL", "redis://localhost")
        .env("SENTINEL_WORKER_ID", "w")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("sentinel"));
}

#[test]
fn cluster_status_refuses_the_backend_and_identity_options() {
    let dir = tempfile::tempdir().unwrap();
    let server = format!("http://127.0.0.2:{}", closed_port());
    for (args, option) in [
        (
            vec!["cluster", "status", "--server", &server, "--repo", "a/b"],
            "--repo",
        ),
        (
            vec![
                "--data-dir",
                "/tmp",
                "cluster",
                "status",
                "--server",
                &server,
            ],
            "--data-dir",
        ),
    ] {
        refused(&run(dir.path(), &args), option, "cluster status");
    }
}

#[test]
fn with_json_the_refusal_is_one_json_object() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        &["--json", "completions", "bash", "--trust", "x"],
    );
    assert_eq!(code(&out), 2, "{}", text(&out));
    let v = stdout_json(&out);
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["error"]["kind"], "usage", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("--trust") && message.contains("sentinel completions"),
        "{v}"
    );
}

#[test]
fn global_options_work_before_and_after_the_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let out = run(
        dir.path(),
        &[
            "--worker-id",
            "demo",
            "--data-dir",
            data,
            "claim",
            "x",
            "--json",
        ],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(stdout_json(&out)["holder"]["worker_id"], "demo");
    let out = run(
        dir.path(),
        &[
            "claim",
            "y",
            "--worker-id",
            "demo",
            "--data-dir",
            data,
            "--json",
        ],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(stdout_json(&out)["holder"]["worker_id"], "demo");
    // Given in both places, the later one wins.
    let out = run(
        dir.path(),
        &[
            "--worker-id",
            "a",
            "--data-dir",
            data,
            "claim",
            "z",
            "--worker-id",
            "b",
            "--json",
        ],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(stdout_json(&out)["holder"]["worker_id"], "b");
    // Both claims were made in --data-dir, not in SENTINEL_DATA_DIR.
    let out = run(dir.path(), &["--json", "status", "--data-dir", data]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(stdout_json(&out)["locks"].as_array().unwrap().len(), 3);
    let out = run(
        dir.path(),
        &["--data-dir", data, "release", "x", "--worker-id", "demo"],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
}
