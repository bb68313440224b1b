//! sentinel: distributed task locks on GitHub issues, on the local host, in Redis or PostgreSQL,
//! or on its own Raft-replicated coordinator (`sentinel serve`).
//!
//! Rust services start at [`distributed`]: the `DistributedLock` API with guards, keep-alive,
//! leader election and `acquire_all`, over any backend. The library holds everything;
//! `src/commands/` only parses, calls in here and renders.

pub mod error;
pub mod local;
pub mod lock;

pub use error::{Error, ExitCode, Result};
pub mod backend;
pub mod child;
pub mod cli;
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
