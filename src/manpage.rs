//! Manual pages generated from the CLI definition, so they document exactly what clap parses.
//! `man/` holds them, kept in sync by a test (`SENTINEL_BLESS=1 cargo test manpages`).
//!
//! clap_mangen renders the name, synopsis, options and subcommands; the sections a manual page
//! is expected to have beyond those are added here: EXAMPLES, EXIT STATUS (from the core's
//! [`ExitCode`]s), ENVIRONMENT (the variables of the options the page's command takes, read from
//! clap's `env` attributes so that they cannot drift, and those the CLI reads itself) and SEE
//! ALSO.

use std::path::Path;

use clap::CommandFactory;
use clap::builder::Resettable;

use crate::cli::Cli;
use sentinel::error::ExitCode;

/// Writes `sentinel.1` and a page per subcommand (`sentinel-claim.1`, …) into `dir`.
pub fn generate_to(dir: &Path) -> std::io::Result<()> {
    // As clap_mangen's own generate_to: built once, so that every page has its full name.
    let mut root = Cli::command().disable_help_subcommand(true);
    root.build();
    // The root's after-help is the one-line list of exit codes, which EXIT STATUS replaces.
    let root = root.after_help(Resettable::Reset);
    let mut pages = Vec::new();
    collect(root, "", &mut pages);
    let files: Vec<String> = pages
        .iter()
        .map(|(path, _)| page_name(path).to_string())
        .collect();
    for (path, cmd) in pages {
        let man = clap_mangen::Man::new(cmd.clone());
        let mut text = Vec::new();
        man.render(&mut text)?;
        text.extend(sections(&path, &cmd, &files).into_bytes());
        std::fs::write(dir.join(man.get_filename()), text)?;
    }
    Ok(())
}

/// Every visible command with its path (`""` for sentinel itself, `cluster status`).
fn collect(cmd: clap::Command, parent: &str, out: &mut Vec<(String, clap::Command)>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let path = format!("{parent} {}", sub.get_name()).trim().to_string();
        collect(sub.clone(), &path, out);
    }
    out.push((parent.to_string(), cmd));
}

/// `sentinel-cluster-status` for `cluster status`, `sentinel` for the root.
fn page_name(path: &str) -> String {
    match path {
        "" => "sentinel".into(),
        p => format!("sentinel-{}", p.replace(' ', "-")),
    }
}

/// Text escaped for roff: backslashes and minus signs, and a leading `.` or `'` kept literal.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    match escaped.starts_with(['.', '\'']) {
        true => format!("\\&{escaped}"),
        false => escaped,
    }
}

/// A tagged paragraph: `tag` in bold, then `text`.
fn item(tag: &str, text: &str) -> String {
    format!(".TP\n\\fB{}\\fR\n{}\n", roff(tag), roff(text))
}

fn sections(path: &str, cmd: &clap::Command, files: &[String]) -> String {
    let mut out = String::new();
    let examples = examples(path);
    if !examples.is_empty() {
        out += ".SH EXAMPLES\n";
        for (what, line) in examples {
            out += &format!(
                ".PP\n{}\n.PP\n.RS 4\n.nf\n{}\n.fi\n.RE\n",
                roff(what),
                roff(line)
            );
        }
    }
    out += ".SH \"EXIT STATUS\"\n";
    for (code, meaning) in EXIT_STATUS {
        out += &item(&code.code().to_string(), meaning);
    }
    if let Some(note) = exit_note(path) {
        out += &format!(".PP\n{}\n", roff(note));
    }
    out += ".SH ENVIRONMENT\n";
    let mut seen = Vec::new();
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        let Some(var) = arg.get_env().and_then(|v| v.to_str()) else {
            continue;
        };
        if seen.contains(&var) {
            continue;
        }
        seen.push(var);
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        let option = arg
            .get_long()
            .map(|l| format!(" (--{l})"))
            .unwrap_or_default();
        out += &item(var, &format!("{help}{option}"));
    }
    let takes = |id: &str| cmd.get_arguments().any(|a| a.get_id() == id);
    for (var, needs, meaning) in OTHER_VARIABLES {
        if needs.is_empty() || path.is_empty() || takes(needs) {
            out += &item(var, meaning);
        }
    }
    out += ".PP\nA variable that is set but empty counts as unset.\n";
    out += ".SH \"SEE ALSO\"\n";
    let related: Vec<String> = match path {
        "" => files.iter().filter(|f| *f != "sentinel").cloned().collect(),
        _ => vec!["sentinel".into()],
    };
    out += &related
        .iter()
        .map(|f| format!("\\fB{}\\fR(1)", roff(f)))
        .collect::<Vec<_>>()
        .join(", ");
    out += "\n.PP\nREADME.md and docs/ in sentinel's source: every command, backend and guarantee \
            in detail.\n";
    out
}

/// The exit codes, as README's "Exit codes" describes them.
const EXIT_STATUS: &[(ExitCode, &str)] = &[
    (
        ExitCode::Success,
        "Success: acquired, released, renewed, status shown.",
    ),
    (ExitCode::Unexpected, "An unexpected error."),
    (
        ExitCode::Usage,
        "A usage error or invalid input (bad issue number, repository, duration, JSON; a closed \
         issue; a pull request).",
    ),
    (
        ExitCode::Conflict,
        "Conflict: the lock is held by someone else (after the strategy gave up), or no issue is \
         free.",
    ),
    (
        ExitCode::NotOwner,
        "Not the owner, or the lock was lost (stolen, force-released, expired).",
    ),
    (
        ExitCode::Auth,
        "Authentication or permission denied (a bad token or password, missing grants).",
    ),
    (
        ExitCode::NotFound,
        "Not found (repository, issue, database; deleted or transferred issues).",
    ),
    (
        ExitCode::RateLimited,
        "Rate limited, and the wait budget (120 s) ran out.",
    ),
    (
        ExitCode::Unavailable,
        "The backend is unavailable after retries (network, 5xx, no leader), or unsafe to use.",
    ),
    (ExitCode::Interrupted, "Interrupted by SIGINT."),
    (ExitCode::Terminated, "Interrupted by SIGTERM."),
];

/// What a command's exit status means beyond the table.
fn exit_note(path: &str) -> Option<&'static str> {
    Some(match path {
        "claim" => "--conflict-exit-code N makes a conflict exit N instead of 3.",
        "run" => {
            "Once the lock is claimed, run exits with its command's exit code (128 + the signal \
             if a signal killed it; 126 or 127 if it could not start); --conflict-exit-code N \
             makes a conflict exit N instead of 3."
        }
        "heartbeat" => {
            "--once: 0 renewed, 4 lost. As a sidecar: 0 when stopped by SIGINT or SIGTERM, 4 when \
             the lock is lost."
        }
        "elect" => {
            "Once elected, elect exits with its command's exit code (as run), or 4 when leadership \
             is lost (the command gets SIGTERM); 3 when --wait ran out before it was elected."
        }
        "leader" => "--watch exits 0 when stopped by SIGINT or SIGTERM.",
        "watch" => "Stopped by SIGINT or SIGTERM, or when its output is closed, watch exits 0.",
        "barrier" => {
            "0 when the barrier opened; 3 when --timeout ran out first (the participant has left it)."
        }
        "kv" | "kv get" | "kv put" | "kv del" | "kv list" => {
            "2 on every backend but the coordinator; 3 when --if-revision met another revision or \
             the stored value cannot take the merge; kv get exits 6 when the key does not exist."
        }
        "serve" => "Stopped by SIGINT or SIGTERM, a node exits 0.",
        "doctor" => {
            "0 when the backend is usable, else the exit code of the first failed check: 5 for \
             authentication or permissions, 8 for a backend that cannot be reached."
        }
        _ => return None,
    })
}

/// Variables the CLI reads itself, not through an option: the variable, the option (by id) a
/// command must take for it to matter (empty: every command), and what it does.
const OTHER_VARIABLES: &[(&str, &str, &str)] = &[
    (
        "GITHUB_TOKEN",
        "token",
        "The GitHub token when neither --token nor SENTINEL_TOKEN is given.",
    ),
    (
        "GH_TOKEN",
        "token",
        "The GitHub token after GITHUB_TOKEN; without any, `gh auth token`.",
    ),
    (
        "SENTINEL_SETTLE",
        "repo",
        "GitHub: the pause between writing a lock comment and reading it back (default 1s).",
    ),
    (
        "SENTINEL_HTTP_TIMEOUT",
        "repo",
        "GitHub: how long one response may take (default 15s; 100ms to 10m).",
    ),
    (
        "GITHUB_ACTIONS",
        "worker_id",
        "true inside GitHub Actions: the default worker id comes from GITHUB_RUN_ID, \
         GITHUB_RUN_ATTEMPT, GITHUB_JOB and RUNNER_NAME, GitHub lock comments record that job \
         (its lock is free once the job completes, for readers with actions: read), and errors \
         print as ::error:: lines.",
    ),
    (
        "GITHUB_OUTPUT",
        "worker_id",
        "Inside GitHub Actions, the file claim and run --next write their step outputs to.",
    ),
    (
        "GITHUB_STEP_SUMMARY",
        "worker_id",
        "Inside GitHub Actions, the file claim and release add a summary table to.",
    ),
    (
        "RUST_LOG",
        "",
        "The log filter, instead of the one -q, -v and -vv pick; logs go to stderr.",
    ),
    ("NO_COLOR", "", "Set and not empty: no colour in logs."),
];

/// A few command lines per page: what each does, then the line.
fn examples(path: &str) -> &'static [(&'static str, &'static str)] {
    match path {
        "" => &[
            (
                "Claim a lock on this host, work, and release it:",
                "sentinel claim build-42 && make && sentinel release build-42",
            ),
            (
                "Run a command under a lock, renewed while it runs:",
                "sentinel run nightly-backup --ttl 2m ./backup.sh",
            ),
            (
                "Check which backend the options choose and whether it can be used:",
                "sentinel --repo acme/widgets doctor",
            ),
        ],
        "claim" => &[
            (
                "Claim a named lock, waiting up to a minute while it is held:",
                "sentinel claim build-42 --wait 1m",
            ),
            (
                "Claim GitHub issue 17, or give up at once (exit 3) if it is held:",
                "sentinel --repo acme/widgets claim 17 -n",
            ),
            (
                "Claim the oldest free issue labelled ready:",
                "sentinel --repo acme/widgets claim --next --label ready",
            ),
        ],
        "release" => &[("Release our lock:", "sentinel release build-42")],
        "status" => &[
            ("Show every held lock:", "sentinel status"),
            ("Show one lock as JSON:", "sentinel status build-42 --json"),
        ],
        "heartbeat" => &[
            (
                "Keep a lock alive in the background, releasing it when stopped:",
                "sentinel heartbeat build-42 --release-on-exit &",
            ),
            ("Renew once:", "sentinel heartbeat build-42 --once"),
        ],
        "run" => &[
            (
                "Run a command under a lock, as flock does:",
                "sentinel run deploy --wait 5m ./deploy.sh production",
            ),
            (
                "Work through a GitHub backlog, one issue per run:",
                "sentinel --repo acme/widgets run --next --label ready -- ./work-on.sh",
            ),
        ],
        "steal-stale" => &[
            (
                "Take over a lock whose holder stopped renewing it:",
                "sentinel steal-stale build-42",
            ),
            (
                "List the stale locks a janitor would release:",
                "sentinel steal-stale --all --dry-run",
            ),
        ],
        "elect" => &[(
            "Serve as the one active scheduler while elected, publishing this host's address:",
            "sentinel elect scheduler --value http://$(hostname):8080 -- ./scheduler",
        )],
        "leader" => &[
            ("Who leads, as JSON:", "sentinel leader scheduler --json"),
            (
                "Follow every change of leader:",
                "sentinel leader scheduler --watch",
            ),
        ],
        "watch" => &[
            (
                "Follow every lock of the CI jobs, one JSON line per event:",
                "sentinel --server http://10.0.0.1:7464 watch --prefix ci/",
            ),
            (
                "Resume after the last revision a previous watch printed:",
                "sentinel --server http://10.0.0.1:7464 watch deploy --since-revision 1042",
            ),
        ],
        "barrier" => &[
            (
                "Start the next stage only when all four shards of this one are done:",
                "./shard.sh $N && sentinel barrier stage-1 --count 4 && ./stage-2.sh",
            ),
            (
                "Give up (exit 3) if the others have not arrived within ten minutes:",
                "sentinel --server http://10.0.0.1:7464 barrier nightly --count 3 --timeout 10m",
            ),
        ],
        "kv" | "kv put" => &[
            (
                "Count, from any number of workers at once (no update is lost):",
                "sentinel --server http://10.0.0.1:7464 kv put jobs/done 1 --merge add",
            ),
            (
                "Write only over the revision read (exit 3 if someone wrote in between):",
                "sentinel --server http://10.0.0.1:7464 kv put config '{\"replicas\":3}' --if-revision 41",
            ),
        ],
        "kv get" => &[(
            "Read a value into a shell variable (a string as it is, anything else as JSON):",
            "host=$(sentinel --server http://10.0.0.1:7464 kv get services/db/host)",
        )],
        "kv del" => &[(
            "Delete a key:",
            "sentinel --server http://10.0.0.1:7464 kv del services/db/host",
        )],
        "kv list" => &[(
            "Every key under a prefix, KEY and VALUE on each line:",
            "sentinel --server http://10.0.0.1:7464 kv list services/",
        )],
        "completions" => &[(
            "Install the bash completion for this user:",
            "sentinel completions bash > ~/.local/share/bash-completion/completions/sentinel",
        )],
        "metrics" => &[(
            "This host's counters for Prometheus:",
            "sentinel metrics --format prometheus",
        )],
        "serve" => &[(
            "One coordinator node on this host, its client token in a file:",
            "sentinel serve --listen 127.0.0.1:7464 --auth-token-file token",
        )],
        "cluster status" => &[(
            "The cluster as its leader sees it:",
            "sentinel --server http://10.0.0.1:7464,http://10.0.0.2:7464 cluster status",
        )],
        "doctor" => &[
            (
                "Check the GitHub backend and the token's rate limit:",
                "GITHUB_TOKEN=... sentinel --repo acme/widgets doctor",
            ),
            (
                "Check a Redis backend, as JSON:",
                "sentinel --backend redis --redis-url redis://127.0.0.1:6379 doctor --json",
            ),
        ],
        _ => &[],
    }
}
