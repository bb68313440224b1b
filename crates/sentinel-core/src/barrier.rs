//! Barriers: `count` participants meet at a name, and none goes on before all have arrived.
//!
//! A backend keeps the participants waiting at a barrier
//! ([`LockBackend::arrive`](crate::backend::LockBackend::arrive)); what is the same on every
//! backend is here: the request and its outcome. Waiting a whole timeout is
//! [`crate::strategy::meet`]'s.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::lock::Claimant;

/// Largest count of a barrier, on every backend.
pub const MAX_COUNT: u32 = 10_000;

/// One arrival at a barrier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArriveRequest {
    /// The barrier's name (checked as a lock name is).
    pub barrier: String,
    /// Who arrives.
    pub claimant: Claimant,
    /// How many participants open it; every participant gives the same.
    pub count: u32,
    /// How long this arrival waits for the others; a backend may answer
    /// [`Arrived::NotOpened`] sooner (its longest wait), and the caller arrives again.
    pub wait: Duration,
}

/// How an arrival ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrived {
    /// `count` participants arrived, this one among them: all of them go on.
    Opened {
        /// How many participants it waited for.
        count: u32,
    },
    /// The wait ended first, and this participant has left the barrier: `arrived` others were
    /// waiting then.
    NotOpened {
        /// How many other participants were waiting.
        arrived: u32,
        /// How many participants open it.
        count: u32,
    },
}

/// Checks a barrier's count given by a user.
pub fn validate_count(count: u32) -> Result<()> {
    if (1..=MAX_COUNT).contains(&count) {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "invalid barrier count {count}: use 1 to {MAX_COUNT}"
        )))
    }
}

/// The error for an arrival whose count is not the one the participants waiting gave: a usage
/// error (exit 2), as a semaphore claim with another limit is.
pub fn count_mismatch(barrier: &str, theirs: u32, ours: u32) -> Error {
    Error::usage(format!(
        "barrier {barrier} waits for {theirs} participants, not {ours}: every participant must \
         give the same count"
    ))
}
