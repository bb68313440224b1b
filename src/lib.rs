//! The `sentinel` binary's internals: `cli` parses, `commands` call the library ([`sentinel`])
//! and `output` renders; `config` turns options and the environment into a backend, `metrics`
//! counts what commands did. Not API: a library user depends on the `sentinel` crate instead.
//! It is a library only so that the integration tests can reach the parser (man pages,
//! completions).

pub mod child;
pub mod cli;
pub mod commands;
pub mod config;
pub mod gh_cli;
pub mod keeping;
pub mod manpage;
pub mod metrics;
pub mod output;
