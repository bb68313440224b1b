//! The `sentinel` binary: parse, run one command, map the outcome to an exit code.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use sentinel::error::{Error, ExitCode};
use sentinel::interrupt;
use sentinel_cli::cli::{Cli, Command};
use sentinel_cli::output::{self, Report};

fn init_logs(cli: &Cli) {
    // Other crates' logs (the HTTP stack's retries and connection errors) only at -vv: sentinel
    // says once, in its own words, what went wrong.
    let default = match (cli.global.quiet, cli.global.verbose) {
        (true, _) => "sentinel=error",
        (_, 0) => "sentinel=warn",
        (_, 1) => "sentinel=info",
        _ => "sentinel=debug,info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour only for a person at a terminal who has not asked for none (https://no-color.org).
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .init();
}

/// Whether `--json` was asked for, read from the raw arguments when clap could not parse them
/// (options end at `--`).
fn json_requested() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// Clap's error as one line for JSON: its text up to the usage, with what follows a colon (the
/// arguments that were not provided) kept on it and tips after a `;`.
fn one_line(rendered: &str) -> String {
    let mut lines = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim);
    let mut out = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_string();
    let mut listing = out.ends_with(':');
    let mut items = 0;
    for line in lines {
        if line.is_empty() {
            listing = false;
            continue;
        }
        if listing {
            out.push_str(if items == 0 { " " } else { ", " });
            items += 1;
        } else {
            out.push_str("; ");
        }
        out.push_str(line);
    }
    out
}

fn main() {
    let cli = parse();
    init_logs(&cli);
    let json = cli.global.json;
    let chosen_by_env = sentinel_cli::config::github_chosen_by_environment(&cli.global);
    let is_claim = matches!(cli.command, Command::Claim(_));
    let conflict_code = cli.command.conflict_exit_code();
    let runtime = match runtime(&cli.command) {
        Ok(rt) => rt,
        Err(e) => {
            output::print_error(&Error::Unexpected(format!("cannot start: {e}")), json);
            std::process::exit(ExitCode::Unexpected.code());
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(report) => {
            report.print(json);
            interrupt::reported();
            if report.exit_code != 0 {
                std::process::exit(report.exit_code);
            }
        }
        Err(e) => {
            let e = match (e, chosen_by_env) {
                (Error::Usage(msg), Some(why)) if msg.starts_with("invalid issue number") => {
                    Error::Usage(format!("{msg}; {why}"))
                }
                (e, _) => e,
            };
            let code = e.status(conflict_code);
            output::print_error_exiting(&e, json, code);
            if is_claim {
                output::claim_failed_output();
            }
            std::process::exit(code);
        }
    }
}

/// The command line, or the process ends: help and version on stdout with exit 0, a usage error
/// (as JSON too with `--json`) with exit 2.
fn parse() -> Cli {
    match sentinel_cli::cli::try_parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            if !e.use_stderr() {
                let _ = e.print();
                std::process::exit(0);
            }
            if json_requested() {
                output::print_json_error(
                    &Error::usage(format!(
                        "{}; see `sentinel --help`",
                        one_line(&e.render().to_string())
                    )),
                    ExitCode::Usage.code(),
                );
            }
            let _ = e.print();
            std::process::exit(ExitCode::Usage.code());
        }
    }
}

/// A node serves many clients at once on every core; any other command is one client, whose
/// blocking work (file locks, the local table) runs on tokio's blocking threads, so one thread
/// does: starting two workers cost a short command more than its work.
fn runtime(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    let mut runtime = match command {
        Command::Serve(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    runtime.worker_threads(2).enable_all().build()
}

/// Runs the command as its own task, so that a signal does not drop it (and with it the undo
/// registrations) before the undo actions have been taken; on SIGINT/SIGTERM the process ends
/// here, with the signal's exit code.
async fn execute(cli: Cli) -> sentinel::error::Result<Report> {
    let json = cli.global.json;
    let failed =
        |e: tokio::task::JoinError| Err(Error::Unexpected(format!("the command failed: {e}")));
    // A heartbeat sidecar and `run` answer SIGINT/SIGTERM themselves (stop cleanly, pass them
    // on to the command).
    if cli.command.owns_signals() {
        let command = tokio::spawn(async move { sentinel_cli::commands::execute(&cli).await });
        return command.await.unwrap_or_else(failed);
    }
    let signal = interrupt::signalled();
    let mut command = tokio::spawn(async move { sentinel_cli::commands::execute(&cli).await });
    tokio::select! {
        joined = &mut command => joined.unwrap_or_else(failed),
        code = signal => {
            interrupt::wind_down(code, &mut command).await;
            output::print_error(&Error::Interrupted(code), json);
            std::process::exit(code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn a_usage_error_keeps_what_is_missing_on_its_one_line() {
        let missing = "error: the following required arguments were not provided:\n  <LOCK>\n  \
                       --ttl <TTL>\n\nUsage: sentinel release <LOCK>\n\nFor more information, \
                       try '--help'.\n";
        assert_eq!(
            one_line(missing),
            "the following required arguments were not provided: <LOCK>, --ttl <TTL>"
        );
        let tip = "error: unexpected argument '--x' found\n\n  tip: to pass '--x' as a value, \
                   use '-- --x'\n\nUsage: sentinel run\n";
        assert_eq!(
            one_line(tip),
            "unexpected argument '--x' found; tip: to pass '--x' as a value, use '-- --x'"
        );
    }
}
