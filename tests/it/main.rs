//! Integration tests: the real `sentinel` binary and library against the project's GitHub emulator.

mod completions;
mod fixtures;
mod gh_auth;
mod github_cli;
mod github_client;
mod github_races;
mod heartbeat;
mod local_cli;
mod manpages;
mod metrics;
mod queue;
mod robustness;
mod run;
mod serve;
mod server_cli;
mod steal_stale;
mod support;
