//! Barriers: `count` participants meet at a name, and none goes on before all have arrived.
//!
//! A barrier is only the participants waiting at it. Each arrival waits, like an acquire in a
//! queue, until its deadline; the arrival that makes `count` opens the barrier for every one of
//! them at once (the waiting ones are settled `Opened` by the same command) and the barrier is
//! gone: the next arrival at the name starts a new round. An arrival whose wait ran out, or that
//! was withdrawn because its client left, is no longer there and does not count, so a barrier
//! never opens for participants that are gone, except one whose leaving the state has not heard
//! of yet (its client vanished without closing its connection: it counts until its wait ends).
//!
//! Barriers have their own names, apart from locks, and their own deadline index, so a lock and a
//! barrier of the same name never meet. A barrier holds no lease and grants no fencing token:
//! opening is an event, not a hold.

use serde::{Deserialize, Serialize};

use super::{Answer, Arrive, Limit, LockState, MAX_WAITERS, RequestKind, Settled, Withdraw};

/// Largest count of a barrier.
pub const MAX_COUNT: u32 = 10_000;

/// A participant waiting at a barrier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arrival {
    /// The arrival's request id.
    pub request_id: String,
    /// Who arrived: the worker id.
    pub holder: String,
    /// Where it runs, for people reading the status.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// When it arrived (leader time).
    pub since_ms: u64,
    /// The last instant it still waits.
    pub until_ms: u64,
}

/// A barrier some participants wait at: how many it waits for, and who is there, in arrival
/// order. Never empty, and never `count` arrivals: the last one opens it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Barrier {
    /// How many participants open it.
    pub count: u32,
    /// The participants waiting, first arrived first.
    pub arrivals: Vec<Arrival>,
}

/// `(until_ms, barrier, request_id)`: the deadline of one arrival.
pub(super) type ArrivalKey = (u64, String, String);

impl LockState {
    /// Arrival `a`: opens the barrier if it is the last awaited, else waits at it (or, without
    /// a wait, reports how many are there).
    pub(super) fn arrive(&mut self, now: u64, a: &Arrive, settled: &mut Vec<Settled>) -> Answer {
        if !(1..=MAX_COUNT).contains(&a.count) {
            return Answer::Refused {
                limit: Limit::Count,
            };
        }
        let there = match self.barriers.get(&a.name) {
            Some(b) if b.count != a.count => return Answer::CountMismatch { count: b.count },
            Some(b) => b.arrivals.len(),
            None => 0,
        };
        if there + 1 >= a.count as usize {
            if let Some(b) = self.barriers.remove(&a.name) {
                for arrival in b.arrivals {
                    let key = (arrival.until_ms, a.name.clone(), arrival.request_id);
                    self.arrival_deadlines.remove(&key);
                    let opened = Answer::Opened { count: b.count };
                    self.settle(now, &a.name, key.2, opened, settled);
                }
            }
            return Answer::Opened { count: a.count };
        }
        if a.wait_ms == 0 {
            return Answer::NotOpened {
                arrived: there as u32,
                count: a.count,
            };
        }
        if self.waiting() >= MAX_WAITERS {
            return Answer::Refused {
                limit: Limit::Waiters,
            };
        }
        let arrival = Arrival {
            request_id: a.request_id.clone(),
            holder: a.holder.clone(),
            node: a.node.clone(),
            since_ms: now,
            until_ms: now.saturating_add(a.wait_ms),
        };
        self.arrival_deadlines.insert((
            arrival.until_ms,
            a.name.clone(),
            arrival.request_id.clone(),
        ));
        let barrier = self.barriers.entry(a.name.clone()).or_insert(Barrier {
            count: a.count,
            arrivals: Vec::new(),
        });
        barrier.arrivals.push(arrival);
        Answer::Queued {
            position: barrier.arrivals.len(),
        }
    }

    /// An arrival's wait ended (its deadline is already out of the index): it leaves, and is
    /// answered with how many had arrived.
    pub(super) fn end_arrival(
        &mut self,
        (_, name, id): ArrivalKey,
        now: u64,
        settled: &mut Vec<Settled>,
    ) {
        if let Some(answer) = self.leave_barrier(&name, &id) {
            self.settle(now, &name, id, answer, settled);
        }
    }

    /// Takes the arrival that the new withdrawal `w` names away from its barrier, if it waits
    /// there, and settles it as withdrawn: a participant whose client left does not count.
    pub(super) fn leave_barrier_withdrawn(
        &mut self,
        now: u64,
        w: &Withdraw,
        settled: &mut Vec<Settled>,
    ) {
        if !self.withdraws_a_waiting(w, RequestKind::Arrive) {
            return;
        }
        if let Some(until) = self
            .barriers
            .get(&w.name)
            .and_then(|b| b.arrivals.iter().find(|a| a.request_id == w.acquire_id))
            .map(|a| a.until_ms)
        {
            self.arrival_deadlines
                .remove(&(until, w.name.clone(), w.acquire_id.clone()));
        }
        self.leave_barrier(&w.name, &w.acquire_id);
        let withdrawn = Answer::Withdrawn { lease: None };
        self.settle(now, &w.name, w.acquire_id.clone(), withdrawn, settled);
    }

    /// Removes arrival `id` from barrier `name` (and the barrier, once nobody waits at it): what
    /// a participant that leaves without it opening is told.
    fn leave_barrier(&mut self, name: &str, id: &str) -> Option<Answer> {
        let barrier = self.barriers.get_mut(name)?;
        let i = barrier.arrivals.iter().position(|a| a.request_id == id)?;
        barrier.arrivals.remove(i);
        let answer = Answer::NotOpened {
            arrived: barrier.arrivals.len() as u32,
            count: barrier.count,
        };
        if barrier.arrivals.is_empty() {
            self.barriers.remove(name);
        }
        Some(answer)
    }

    /// A barrier some participants wait at.
    pub fn barrier(&self, name: &str) -> Option<&Barrier> {
        self.barriers.get(name)
    }

    /// The index of every arrival's deadline, rebuilt from the barriers.
    pub(super) fn arrival_index(&self) -> std::collections::BTreeSet<ArrivalKey> {
        self.barriers
            .iter()
            .flat_map(|(name, b)| {
                b.arrivals
                    .iter()
                    .map(move |a| (a.until_ms, name.clone(), a.request_id.clone()))
            })
            .collect()
    }
}
