//! sentinel: distributed task locks on GitHub issues, on the local host, in Redis or PostgreSQL,
//! or on sentinel's own Raft coordinator (`sentinel serve`).
//!
//! A Rust service starts at [`distributed`]: [`DistributedLock`](distributed::DistributedLock)
//! with guards that carry fencing tokens, keep-alive with a lost-lock signal, leader election and
//! [`acquire_all`](distributed::acquire_all), over any [`LockBackend`](backend::LockBackend).
//! Pick the backend where the locks should live:
//!
//! - [`local::LocalBackend`]: locks on this host, shared by its processes through a data
//!   directory; no set-up.
//! - [`redis_backend::RedisBackend`] and [`postgres_backend::PostgresBackend`]: locks in a Redis
//!   server or a PostgreSQL database you already run.
//! - [`server_backend::ServerBackend`]: a client of a `sentinel serve` cluster, the replicated
//!   coordinator in [`coordinator`].
//! - [`github::GithubBackend`]: an issue is both the unit of work and its lock.
//!
//! [`backend::Backend`] dispatches over all of them. Every fallible call returns [`Result`]; an
//! [`Error`] maps to the CLI's [`ExitCode`]. [`lock`] holds the backend-neutral request and answer
//! types, [`lease`] the TTL arithmetic and clocks.
//!
//! The `sentinel` binary is a thin shell over this crate: `cli` parses, `commands` calls in here
//! and [`output`] renders. `cli`, `commands` and `manpage` are the binary's internals, not API,
//! and are hidden from these docs.

#![warn(missing_docs)]

pub mod error;
pub mod local;
pub mod lock;

pub use error::{Error, ExitCode, Result};
pub mod backend;
pub mod child;
// The binary's argument parser, not API.
#[doc(hidden)]
pub mod cli;
// The binary's subcommands, not API.
#[doc(hidden)]
pub mod commands;
pub mod config;
pub mod coordinator;
pub mod distributed;
pub mod duration;
pub mod gh_cli;
pub mod github;
pub mod interrupt;
pub mod janitor;
pub mod keepalive;
pub mod lease;
// Generates the binary's man pages, not API.
#[doc(hidden)]
pub mod manpage;
pub mod metrics;
pub mod output;
pub mod postgres_backend;
pub mod redis_backend;
pub mod secret;
pub mod server_backend;
pub mod statefile;
pub mod strategy;
pub mod table;
