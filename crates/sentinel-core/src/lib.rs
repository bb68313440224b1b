//! The core of sentinel: the vocabulary every layer shares and the logic that is the same on
//! every backend.
//!
//! - the vocabulary: [`lock`] (lock ids, holders, the request and answer types), [`lease`] (TTL
//!   arithmetic and clocks), [`duration`], [`error`] (errors and their exit codes), [`secret`];
//! - the seam: [`backend::LockBackend`], the one trait every backend crate implements;
//! - [`barrier`]: participants that meet, over the backends that keep them; [`watch`]: the
//!   events of locks a watch stream gives; [`kv`]: keys, values and merge writes;
//! - what is written once above it: [`strategy`] (waiting and taking over), [`keepalive`]
//!   (renewing on a schedule), [`janitor`] (stale locks), [`distributed`] (the library API);
//! - shared helpers for backends: [`table`] (a pure lock table with leases), [`statefile`]
//!   (crash-safe JSON state on disk), [`interrupt`] (undoing a claim a signal cut short),
//!   [`endpoint`] (user-given URLs, checked without echoing credentials), [`tls`] (what a client
//!   trusts and presents over TLS), [`diagnose`] (what `sentinel doctor` reports of a backend).
//!
//! Dependency rule: this crate depends on no other crate of the workspace and on no backend's
//! client library; backends depend on it, never on each other.

#![warn(missing_docs)]

pub mod backend;
pub mod barrier;
pub mod diagnose;
pub mod distributed;
pub mod duration;
pub mod endpoint;
pub mod error;
pub mod interrupt;
pub mod janitor;
pub mod keepalive;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod secret;
pub mod statefile;
pub mod strategy;
pub mod table;
pub mod tls;
pub mod watch;

pub use backend::LockBackend;
pub use error::{Error, ExitCode, Result};
