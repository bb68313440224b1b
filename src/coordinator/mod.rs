//! The coordinator behind `sentinel serve`: named locks replicated with Raft across one to five
//! nodes.
//!
//! This module owns everything a coordinator node computes and keeps:
//!
//! - [`state`]: the replicated lock state, a pure and deterministic state machine. Every node
//!   applies the same Raft log to it and so holds the same locks, leases, wait queues and answers.
//!   It never reads a clock: the leader stamps each command with its time, and the log index of
//!   the entry that grants a lock is the lock's fencing token.
//!
//! Consensus itself is not home-made: the log, votes and elections belong to openraft, and this
//! module only supplies what openraft asks of an application (the state machine, its storage).
//! Keeping the state machine free of I/O, clocks and randomness is what makes replication sound —
//! two nodes that apply the same entries must reach the same state — and lets property tests check
//! it over arbitrary logs.

pub mod state;
