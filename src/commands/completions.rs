//! `sentinel completions SHELL`: the completion script, generated from the CLI definition.

use clap::CommandFactory;
use serde_json::json;

use crate::cli::{Cli, CompletionsArgs};
use crate::output::Report;
use sentinel::error::Result;

pub fn script(shell: clap_complete::Shell) -> String {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "sentinel", &mut buf);
    String::from_utf8(buf).expect("completion scripts are UTF-8")
}

pub fn exec(args: &CompletionsArgs) -> Result<Report> {
    let text = script(args.shell);
    Ok(Report::new(
        json!({"ok": true, "command": "completions", "shell": args.shell.to_string(), "script": text}),
        text,
    ))
}
