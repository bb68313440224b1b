//! What the coordinator and its clients share: the HTTP exchange ([`http`]) and the limits of the
//! API both sides must agree on. It depends on no other crate of the workspace, so the client
//! (the server backend) compiles no openraft, redb or axum.

#![warn(missing_docs)]

pub mod http;

/// Longest server-side wait for a lock.
pub const MAX_WAIT_MS: u64 = 10 * 60 * 1000;
