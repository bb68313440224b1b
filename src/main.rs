//! The `sentinel` binary: parse, run one command, map the outcome to an exit code.

use clap::Parser;
use tracing_subscriber::EnvFilter;

use sentinel::cli::Cli;
use sentinel::error::{Error, ExitCode};
use sentinel::{interrupt, output};

fn init_logs(cli: &Cli) {
    let default = match (cli.global.quiet, cli.global.verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "sentinel=info,warn",
        _ => "sentinel=debug,info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout with exit 0 and usage errors with exit 2.
            let _ = e.print();
            std::process::exit(if e.use_stderr() {
                ExitCode::Usage.code()
            } else {
                0
            });
        }
    };
    init_logs(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            output::print_error(
                &Error::Unexpected(format!("cannot start: {e}")),
                cli.global.json,
            );
            std::process::exit(ExitCode::Unexpected.code());
        }
    };
    let json = cli.global.json;
    let result = runtime.block_on(async move {
        // The command runs as its own task so that a signal does not drop it (and with it the
        // undo registrations) before the undo actions have been taken.
        let mut command = tokio::spawn(async move { sentinel::commands::run(&cli).await });
        tokio::select! {
            joined = &mut command => joined.unwrap_or_else(|e| {
                Err(Error::Unexpected(format!("the command failed: {e}")))
            }),
            code = interrupt::signalled() => {
                interrupt::undo_all().await;
                eprintln!("sentinel: interrupted");
                std::process::exit(code);
            }
        }
    });
    match result {
        Ok(report) => report.print(json),
        Err(e) => {
            output::print_error(&e, json);
            std::process::exit(e.exit_code().code());
        }
    }
}
