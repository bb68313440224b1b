//! What the coordinator and its clients share: the HTTP exchange ([`http`]), one type for each
//! request and answer of the API ([`api`]), and the limits both sides must agree on. It depends
//! only on the core of the workspace, so the client (the server backend) compiles no openraft,
//! redb or axum.

#![warn(missing_docs)]

pub mod api;
pub mod http;

/// Longest server-side wait for a lock.
pub const MAX_WAIT_MS: u64 = 10 * 60 * 1000;
