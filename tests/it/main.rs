//! Integration tests: the real `sentinel` binary and library against the project's GitHub emulator.

mod completions;
mod fixtures;
mod github_cli;
mod github_client;
mod github_races;
mod local_cli;
mod queue;
mod steal_stale;
mod support;
