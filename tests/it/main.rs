//! Integration tests: the real `sentinel` binary and library against the project's GitHub emulator.

mod cluster;
mod completions;
mod conformance;
mod coordinator_data;
mod fixtures;
mod gh_auth;
mod github_cli;
mod github_client;
mod github_races;
mod heartbeat;
mod help;
mod local_cli;
mod manpages;
mod metrics;
mod postgres_cli;
mod queue;
mod redis_cli;
mod robustness;
mod run;
mod serve;
mod server_cli;
mod servers;
mod steal_stale;
mod support;
