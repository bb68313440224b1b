//! sentinel: distributed task locks on GitHub issues, on the local host, in Redis, PostgreSQL or
//! etcd, or on sentinel's own Raft coordinator (`sentinel serve`).
//!
//! This crate is a facade: it re-exports the core ([`distributed`], [`lock`], [`backend`], …) and,
//! behind one cargo feature each, the backends, so a service compiles only the backends it uses
//! (`default-features = false, features = ["redis"]` builds no openraft, octocrab, axum or clap).
//!
//! A Rust service starts at [`distributed`]: [`DistributedLock`](distributed::DistributedLock)
//! with guards that carry fencing tokens, keep-alive with a lost-lock signal, leader election and
//! [`acquire_all`](distributed::acquire_all), over any [`LockBackend`];
//! [`DynDistributedLock`](distributed::DynDistributedLock) is the same as a trait object. An
//! `acquire` dropped before it resolved holds nothing, and a dropped guard is released in the
//! background: a process that ends right after dropping one waits with
//! [`flush_releases`](distributed::flush_releases), or releases with `guard.release().await`.
//! Pick the backend where the locks should live:
//!
//! - `local` (default): [`local::LocalBackend`], locks on this host, shared by its processes
//!   through a data directory; no set-up.
//! - `redis`, `postgres`, `etcd`: [`redis::RedisBackend`], [`postgres::PostgresBackend`] and
//!   [`etcd::EtcdBackend`], locks in a Redis server, a PostgreSQL database or an etcd cluster you
//!   already run.
//! - `server`: [`server::ServerBackend`], a client of a `sentinel serve` cluster.
//! - `coordinator`: [`coordinator`], the replicated coordinator itself, to embed a node.
//! - `github`: [`github::GithubBackend`], an issue is both the unit of work and its lock.
//!
//! [`backend::Backend`] dispatches at run time over the backends compiled in. Every fallible call
//! returns [`Result`]; an [`Error`] maps to the CLI's [`ExitCode`]. [`lock`] holds the
//! backend-neutral request and answer types, [`lease`] the TTL arithmetic and clocks.
//!
//! ```no_run
//! # #[cfg(feature = "local")] {
//! use std::time::Duration;
//! use sentinel::distributed::{DistributedLock, LockClient};
//! use sentinel::local::LocalBackend;
//!
//! # async fn demo() -> sentinel::Result<()> {
//! let locks = LockClient::new(LocalBackend::open("/tmp/locks")?, "compactor-1")?;
//! let mut guard = locks.acquire("partition-7", Duration::from_secs(30)).await?;
//! let mut lost = guard.keep_alive(Duration::from_secs(10))?;
//! tokio::select! {
//!     _ = compact(guard.fencing_token()) => {}
//!     reason = lost.wait() => eprintln!("lock lost: {reason:?}"),
//! }
//! guard.release().await?;
//! # Ok(()) }
//! # async fn compact(_token: u64) {}
//! # }
//! ```
//!

pub use sentinel_core::{
    Error, ExitCode, Result, barrier, diagnose, distributed, duration, endpoint, error, interrupt,
    janitor, keepalive, kv, lease, lock, secret, statefile, strategy, table, tls, watch,
};

pub use sentinel_core::LockBackend;

/// The Rust blocks of docs/library.md, compiled and run as this crate's doctests (with the
/// features its examples use), so the guide's examples cannot drift from the API.
#[cfg(all(doctest, feature = "redis", feature = "server"))]
#[doc = include_str!("../../../docs/library.md")]
struct LibraryGuide;

/// The trait every backend implements, and [`Backend`](backend::Backend), the run-time choice
/// among those compiled in.
pub mod backend {
    pub use sentinel_core::backend::*;

    #[cfg(any(
        feature = "local",
        feature = "github",
        feature = "server",
        feature = "redis",
        feature = "postgres",
        feature = "etcd"
    ))]
    pub use crate::dispatch::Backend;
}

#[cfg(any(
    feature = "local",
    feature = "github",
    feature = "server",
    feature = "redis",
    feature = "postgres",
    feature = "etcd"
))]
mod dispatch;

#[cfg(feature = "server")]
pub use sentinel_client as server;
#[cfg(feature = "coordinator")]
pub use sentinel_coordinator as coordinator;
#[cfg(feature = "etcd")]
pub use sentinel_etcd as etcd;
#[cfg(feature = "github")]
pub use sentinel_github as github;
#[cfg(feature = "local")]
pub use sentinel_local as local;
#[cfg(feature = "postgres")]
pub use sentinel_postgres as postgres;
#[cfg(any(feature = "server", feature = "coordinator"))]
pub use sentinel_proto as proto;
#[cfg(feature = "redis")]
pub use sentinel_redis as redis;
