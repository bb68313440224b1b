//! Model-based property test of the lock state: arbitrary histories of clients, leaders and
//! retries, on locks, shared locks and semaphores, checked against what the clients were told,
//! and the log replayed and resumed from snapshots.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::tests::{TTL, one, release, renew};
use super::*;
use sentinel_core::lock::TaskInfo;
use sentinel_core::table::LockRecord;

/// One generated step: (kind, name, holder, time step, raw number, wait, readopt, token
/// choice, whether it joins the previous step's entry, kind of hold an acquire asks for).
type Step = (u8, usize, usize, u8, u64, u8, bool, u8, bool, u8);

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (
            0u8..13,
            0usize..3,
            0usize..4,
            0u8..30,
            any::<u64>(),
            0u8..4,
            any::<bool>(),
            0u8..8,
            any::<bool>(),
            0u8..8,
        ),
        1..200,
    )
}

/// A hold a client was told it has.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Belief {
    name: String,
    holder: String,
    token: u64,
    /// Its last live instant.
    until: u64,
    ttl: u64,
    permits: u32,
    shared: bool,
    /// The semaphore's limit, for a semaphore hold.
    limit: Option<u32>,
}

/// The most permits any claim of the test asks a semaphore to have.
const MOST_PERMITS: u32 = 3;

/// What the clients have been told, checked against the state after every entry.
#[derive(Default)]
struct Model {
    /// The holds the clients were told they have, oldest grant first (as a group keeps them;
    /// a holder let in twice by one command releases the first).
    beliefs: Vec<Belief>,
    /// Last token granted per name, and whether to an exclusive hold.
    tokens: HashMap<String, (u64, bool)>,
    /// Request ids waiting per name, in arrival order.
    queues: HashMap<String, VecDeque<String>>,
    /// What each acquire asked for: (permits, shared, limit).
    asked: HashMap<String, (u32, bool, Option<u32>)>,
}

impl Model {
    fn grant(
        &mut self,
        at: u64,
        name: &str,
        id: &str,
        lease: &LockRecord,
        adopted: bool,
        ctx: &str,
    ) {
        let (permits, shared, limit) = self.asked[id];
        let exclusive = !shared && limit.is_none();
        if !adopted {
            assert_eq!(
                lease.fencing_token, at,
                "token is the command's position: {ctx}"
            );
            let (last, was_exclusive) = self
                .tokens
                .insert(name.to_string(), (at, exclusive))
                .unwrap_or((0, false));
            // Holds let in together share their command's token; an exclusive hold's is its own.
            assert!(
                at > last || (at == last && !exclusive && !was_exclusive),
                "tokens strictly increase per lock: {ctx}"
            );
        }
        let belief = Belief {
            name: name.to_string(),
            holder: lease.worker_id.clone(),
            token: lease.fencing_token,
            until: lease.expires_at_ms(),
            ttl: lease.ttl_ms,
            permits,
            shared,
            limit,
        };
        let same = |b: &&mut Belief| {
            b.name == name
                && b.holder == lease.worker_id
                && b.token == lease.fencing_token
                && b.permits == permits
                && b.shared == shared
        };
        match self.beliefs.iter_mut().find(same) {
            Some(b) if adopted => *b = belief,
            _ => self.beliefs.push(belief),
        }
    }

    /// The first hold of `name` with the lease's holder and token.
    fn find(&mut self, name: &str, lease: &LockRecord) -> Option<usize> {
        self.beliefs.iter().position(|b| {
            b.name == name && b.holder == lease.worker_id && b.token == lease.fencing_token
        })
    }

    fn renewed(&mut self, name: &str, lease: &LockRecord) {
        if let Some(i) = self.find(name, lease) {
            self.beliefs[i].until = lease.expires_at_ms();
            self.beliefs[i].ttl = lease.ttl_ms;
        }
    }

    fn forget(&mut self, name: &str, lease: &LockRecord) {
        if let Some(i) = self.find(name, lease) {
            self.beliefs.remove(i);
        }
    }

    /// The waiting request `id` was settled.
    fn settle(&mut self, index: u64, s: &Settled, ctx: &str) {
        let queue = self.queues.entry(s.name.clone()).or_default();
        match &s.answer {
            Answer::Granted { lease, adopted } => {
                assert_eq!(
                    queue.pop_front().as_ref(),
                    Some(&s.request_id),
                    "FIFO: {ctx}"
                );
                self.grant(index, &s.name, &s.request_id, lease, *adopted, ctx);
            }
            Answer::TimedOut { .. } | Answer::Withdrawn { lease: None } => {
                let before = queue.len();
                queue.retain(|id| id != &s.request_id);
                assert_eq!(queue.len() + 1, before, "{ctx}");
            }
            other => panic!("settled as {other:?}: {ctx}"),
        }
    }

    /// The answer to a request that was executed (not a remembered retry).
    fn answer(&mut self, index: u64, cmd: &Command, o: &Answer, ctx: &str) {
        let claim = match cmd {
            Command::Claim(c) => Some(c),
            _ => None,
        };
        match (acquire_of(cmd), cmd, o) {
            (Some(a), _, Answer::Granted { lease, adopted }) => {
                assert_eq!(lease.worker_id, a.holder, "{ctx}");
                if !adopted {
                    let queue = self.queues.entry(a.name.clone()).or_default();
                    assert!(queue.is_empty(), "granted past waiters: {ctx}");
                }
                self.grant(index, &a.name, &a.request_id, lease, *adopted, ctx);
            }
            (Some(a), _, Answer::Queued { position }) => {
                let queue = self.queues.entry(a.name.clone()).or_default();
                queue.push_back(a.request_id.clone());
                assert_eq!(*position, queue.len(), "{ctx}");
            }
            (Some(a), _, Answer::Held { holder }) => {
                assert!(a.wait_ms == 0, "{ctx}");
                // A re-adoption takes up the holder's own hold of the same kind.
                let asked = self.asked[&a.request_id];
                let own = self.beliefs.iter().any(|b| {
                    b.name == a.name
                        && b.holder == a.holder
                        && holder.worker_id == a.holder
                        && b.token == holder.fencing_token
                        && (b.permits, b.shared, b.limit) == asked
                });
                assert!(!(a.readopt && own), "{ctx}");
            }
            // A name is one kind at a time; a semaphore one limit.
            (Some(a), _, Answer::OtherKind { limit, .. }) => {
                let asked = claim.and_then(|c| c.limit);
                assert_eq!(asked.is_some(), limit.is_none(), "{ctx}");
                assert!(self.beliefs.iter().any(|b| b.name == a.name), "{ctx}");
            }
            (Some(_), _, Answer::LimitMismatch { limit }) => {
                let asked = claim.and_then(|c| c.limit);
                assert!(asked.is_some() && asked != Some(*limit), "{ctx}");
            }
            (_, Command::Release(r), Answer::Released { lease }) => {
                assert_eq!(
                    (&lease.worker_id, lease.fencing_token),
                    (&r.holder, r.token),
                    "{ctx}"
                );
                self.forget(&r.name, lease);
            }
            (_, Command::Renew(r), Answer::Renewed { lease }) => {
                assert_eq!(
                    (&lease.worker_id, lease.fencing_token),
                    (&r.holder, r.token),
                    "{ctx}"
                );
                if let Some(ttl) = r.ttl_ms {
                    assert_eq!(lease.ttl_ms, ttl, "{ctx}");
                }
                self.renewed(&r.name, lease);
            }
            (_, Command::Release(_) | Command::Renew(_), Answer::NotHolder { .. }) => {}
            (_, Command::Withdraw(w), Answer::Withdrawn { lease }) => {
                if let Some(lease) = lease {
                    assert_eq!(lease.worker_id, w.holder, "{ctx}");
                    self.forget(&w.name, lease);
                }
            }
            // An acquire taken back before it arrived.
            (Some(_), _, Answer::Withdrawn { lease: None }) => {}
            (_, Command::Withdraw(_), Answer::RequestIdReused) => {}
            (_, _, Answer::Refused { .. }) => {}
            _ => panic!("answer does not fit the command: {ctx}"),
        }
    }

    /// Every hold a client was told it has, and is still live at `now`, is exactly a hold the
    /// state has, and the other way round: no hold ends before its TTL or outlives it. Never
    /// more permits than a semaphore's limit, never an exclusive hold with another.
    fn check(&mut self, s: &LockState, ctx: &str) {
        let now = s.clock_ms();
        self.beliefs.retain(|b| b.until >= now);
        let mut model: Vec<(String, String, u64, u64, u32, bool)> = self
            .beliefs
            .iter()
            .map(|b| {
                let key = (b.name.clone(), b.holder.clone(), b.token, b.until);
                (key.0, key.1, key.2, key.3, b.permits, b.shared)
            })
            .collect();
        model.sort_by(|a, b| a.0.cmp(&b.0));
        let mut state = Vec::new();
        let mut queues: Vec<(String, Vec<String>)> = Vec::new();
        for (name, slot) in s.iter_after(None) {
            let l = &slot.lease;
            state.push((
                name.to_string(),
                l.worker_id.clone(),
                l.fencing_token,
                l.expires_at_ms(),
                1,
                false,
            ));
            let ids = slot.queue.iter().map(|w| w.request_id.clone()).collect();
            queues.push((name.to_string(), ids));
        }
        for (name, g) in s.groups_after(None) {
            for h in &g.holds {
                let l = &h.lease;
                state.push((
                    name.to_string(),
                    l.worker_id.clone(),
                    l.fencing_token,
                    l.expires_at_ms(),
                    h.permits,
                    h.shared,
                ));
            }
            let ids = g.queue.iter().map(|w| w.request_id.clone()).collect();
            queues.push((name.to_string(), ids));
        }
        state.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            state, model,
            "the holds are the holds clients were told of: {ctx}"
        );
        for (name, ids) in queues {
            let model: Vec<String> = self
                .queues
                .get(&name)
                .map(|q| q.iter().cloned().collect())
                .unwrap_or_default();
            assert_eq!(ids, model, "queue order: {ctx}");
        }
        let mut names: Vec<&str> = self.beliefs.iter().map(|b| b.name.as_str()).collect();
        names.sort();
        names.dedup();
        for name in names {
            let holds: Vec<&Belief> = self.beliefs.iter().filter(|b| b.name == name).collect();
            let exclusive = holds
                .iter()
                .filter(|b| !b.shared && b.limit.is_none())
                .count();
            assert!(
                exclusive == 0 || holds.len() == 1,
                "a writer with another holder of {name}: {ctx}"
            );
            let semaphore = holds.iter().filter(|b| b.limit.is_some()).count();
            assert!(semaphore == 0 || semaphore == holds.len(), "{ctx}");
            let permits: u32 = holds.iter().map(|b| b.permits).sum();
            let limit = s.group(name).and_then(|g| g.limit);
            if semaphore > 0 {
                assert!(
                    permits <= MOST_PERMITS && Some(permits) <= limit,
                    "more permits than the limit of {name}: {ctx}"
                );
            }
        }
    }
}

/// The acquire a command makes, exclusive or not.
fn acquire_of(c: &Command) -> Option<&Acquire> {
    match c {
        Command::Acquire(a) => Some(a),
        Command::Claim(c) => Some(&c.acquire),
        _ => None,
    }
}

/// Entries as applied: (index, term, batch).
type Log = Vec<(u64, u64, Batch)>;

/// Runs generated steps as clients would, packing runs of steps into entries as a leader
/// does: the tokens a client names come from the answers it got before the entry. Returns the
/// log that was applied and every entry's results, checking the model after each entry.
/// What a watcher of every event knows: the holds the events tell of, and the last revision.
#[derive(Default)]
struct Watcher {
    /// `(lock, worker, token)` → how many such holds.
    holds: BTreeMap<(String, String, u64), usize>,
    revision: u64,
}

impl Watcher {
    /// Follows one entry's events: revisions one after another, every hold that ends one that
    /// began.
    fn follow<'a>(&mut self, events: impl Iterator<Item = &'a Event>, ctx: &str) {
        for e in events {
            assert_eq!(e.revision, self.revision + 1, "{e:?}: {ctx}");
            self.revision = e.revision;
            let Some(token) = e.fencing_token else {
                assert_eq!(e.event, EventKind::Queued, "{ctx}");
                continue;
            };
            let key = (e.lock.clone(), e.worker_id.clone(), token);
            match e.event {
                EventKind::Acquired => *self.holds.entry(key).or_default() += 1,
                EventKind::Released | EventKind::Expired => {
                    let n = self
                        .holds
                        .get_mut(&key)
                        .unwrap_or_else(|| panic!("{e:?} ends a hold no event began: {ctx}"));
                    *n -= 1;
                    if *n == 0 {
                        self.holds.remove(&key);
                    }
                }
                EventKind::Queued | EventKind::Put | EventKind::Deleted => {
                    panic!("{e:?} has a token: {ctx}")
                }
            }
        }
    }
}

/// Every hold the state keeps, as [`Watcher::holds`] counts them.
fn holds_of(s: &LockState) -> BTreeMap<(String, String, u64), usize> {
    let mut holds = BTreeMap::new();
    let locks = s.iter_after(None).map(|(n, slot)| (n, &slot.lease));
    let groups = s
        .groups_after(None)
        .flat_map(|(n, g)| g.holds.iter().map(move |h| (n, &h.lease)));
    for (name, lease) in locks.chain(groups) {
        let key = (
            name.to_string(),
            lease.worker_id.clone(),
            lease.fencing_token,
        );
        *holds.entry(key).or_default() += 1;
    }
    holds
}

fn run(steps: &[Step]) -> (LockState, Log, Vec<Vec<Applied>>) {
    const NAMES: [&str; 3] = ["alpha", "beta", "gamma"];
    const HOLDERS: [&str; 4] = ["w1", "w2", "w3", "w4"];
    const MOST_PER_ENTRY: usize = 6;
    let mut s = LockState::default();
    let mut model = Model::default();
    let mut watcher = Watcher::default();
    let mut at: u64 = 1_000_000;
    let (mut term, mut applied_term) = (1, 0);
    let mut log = Vec::new();
    let mut results = Vec::new();
    let mut sent: Vec<Command> = Vec::new();
    let mut rest = steps;
    let mut index = 0;
    while !rest.is_empty() {
        index += 1;
        // A step that changes the term starts an entry: one entry, one leader.
        let len = 1 + rest[1..]
            .iter()
            .take(MOST_PER_ENTRY - 1)
            .take_while(|step| step.8 && step.3 != 0 && step.3 != 3)
            .count();
        let (entry, after) = rest.split_at(len);
        rest = after;
        let mut batch = Vec::new();
        let mut retries = Vec::new();
        for (place, &(kind, name, holder, jump, n, wait, readopt, token, _, hold)) in
            entry.iter().enumerate()
        {
            let first = position(index, 0);
            at = match jump {
                // A new leader whose clock is behind.
                0 => at.saturating_sub(n % (2 * TTL)),
                // A new leader after an election, short or long.
                3 => at + n % (3 * TTL),
                1 => at + TTL + n % (2 * TTL),
                // Long enough for answers to be forgotten: a late retry runs again.
                2 => at + REQUEST_WINDOW_MS / 3 + n % TTL,
                _ => at + n % (TTL / 4),
            };
            if jump == 0 || jump == 3 {
                term += 1;
            }
            // alpha is a lock taken exclusive or shared, beta mostly exclusive, gamma mostly a
            // semaphore of 3 (sometimes asked with limit 2).
            let (shared, limit) = match (name, hold) {
                (0, 4..) | (1, 5 | 6) => (true, None),
                (1, 7) | (2, 1..=6) => (false, Some(MOST_PERMITS)),
                (2, 7) => (false, Some(2)),
                _ => (false, None),
            };
            let permits = limit.map_or(1, |_| 1 + (n % 2) as u32 + u32::from(hold == 6));
            let (name, holder) = (NAMES[name], HOLDERS[holder]);
            let id = format!("r{index}-{place}");
            let token = match token {
                0..=4 => model
                    .beliefs
                    .iter()
                    .find(|b| b.holder == holder && b.name == name)
                    .map_or(n % first, |b| b.token),
                // A token of this very entry, which no client can know yet.
                5 => first + n % (place as u64 + 1),
                _ => n % (first + 1),
            };
            let command = match kind {
                0..=3 => {
                    let acquire = Acquire {
                        request_id: id,
                        name: name.into(),
                        holder: holder.into(),
                        node: format!("n-{holder}"),
                        ttl_ms: TTL / 2 + n % TTL,
                        wait_ms: [0, 0, TTL / 2, 3 * TTL][wait as usize],
                        readopt,
                        task_info: TaskInfo::default(),
                        session: None,
                    };
                    if shared || limit.is_some() {
                        Command::Claim(Claim {
                            acquire,
                            shared,
                            limit,
                            permits,
                        })
                    } else {
                        Command::Acquire(acquire)
                    }
                }
                4 => renew(&id, name, holder, token),
                5 => Command::Renew(Renew {
                    ttl_ms: Some(TTL / 2 + n % TTL),
                    ..match renew(&id, name, holder, token) {
                        Command::Renew(r) => r,
                        _ => unreachable!(),
                    }
                }),
                6 | 7 => release(&id, name, holder, token),
                8 => Command::Tick,
                // Take back an earlier acquire (its holder's, mostly), or one still to come.
                12 => {
                    let acquires: Vec<&Acquire> = sent.iter().filter_map(acquire_of).collect();
                    let (acquire_id, holder) = match acquires.len() as u64 {
                        0 => (format!("r{}-0", index + 1), holder.to_string()),
                        k => {
                            let a = acquires[(n % k) as usize];
                            let holder = if wait == 0 { holder } else { &a.holder };
                            (a.request_id.clone(), holder.to_string())
                        }
                    };
                    Command::Withdraw(Withdraw {
                        request_id: id,
                        name: name.into(),
                        holder,
                        acquire_id,
                    })
                }
                _ if sent.is_empty() => Command::Tick,
                _ => sent[(n % sent.len() as u64) as usize].clone(),
            };
            retries.push(kind >= 9 && !sent.is_empty());
            if let Command::Claim(c) = &command {
                let asked = (c.permits, c.shared, c.limit);
                model.asked.insert(c.acquire.request_id.clone(), asked);
            } else if let Command::Acquire(a) = &command {
                model.asked.insert(a.request_id.clone(), (1, false, None));
            }
            batch.push(Proposal { at_ms: at, command });
        }
        // Whether the state remembers each command's request id when it comes to it (after
        // the commands before it in the entry).
        let remembered: Vec<bool> = (0..batch.len())
            .map(|place| {
                let Some(id) = batch[place].command.request_id() else {
                    return false;
                };
                let mut before = s.clone();
                before.apply(index, term, &Batch(batch[..place].to_vec()));
                // A retry, or an acquire taken back before it came.
                before.answer(id).is_some()
            })
            .collect();
        // A lone retry of a remembered request is not executed again: nothing but time
        // moves.
        let twin = match &batch[..] {
            [p] if remembered[0] => {
                let mut t = s.clone();
                let tick = Proposal {
                    at_ms: p.at_ms,
                    command: Command::Tick,
                };
                one(&mut t, index, term, &tick);
                Some(t)
            }
            _ => None,
        };
        // A new leader starts every lease afresh at its first command: the leases the clients
        // hold last their full TTL from then.
        if term > applied_term && applied_term != 0 {
            let now = batch[0].at_ms.max(s.clock_ms());
            for belief in &mut model.beliefs {
                belief.until = belief.until.max(now + belief.ttl);
            }
        }
        applied_term = term;
        let batch = Batch(batch);
        let applied = s.apply(index, term, &batch);
        let ctx = format!("entry {index}: {batch:?} -> {applied:?}");
        assert_eq!(s.check(), Ok(()), "{ctx}");
        assert_eq!(applied.len(), batch.0.len(), "{ctx}");
        for (place, (proposal, a)) in batch.0.iter().zip(&applied).enumerate() {
            let at = position(index, place);
            for settled in &a.settled {
                model.settle(at, settled, &ctx);
            }
            if !remembered[place]
                && let Some(o) = &a.answer
            {
                model.answer(at, &proposal.command, o, &ctx);
            }
        }
        if let Some(twin) = twin {
            assert_eq!(s, twin, "{ctx}");
        }
        model.check(&s, &ctx);
        watcher.follow(applied.iter().flat_map(|a| &a.events), &ctx);
        assert_eq!(
            watcher.holds,
            holds_of(&s),
            "the events tell the holds: {ctx}"
        );
        for (proposal, retry) in batch.0.iter().zip(&retries) {
            if !retry && !matches!(proposal.command, Command::Tick) {
                sent.push(proposal.command.clone());
            }
        }
        log.push((index, term, batch));
        results.push(applied);
    }
    (s, log, results)
}

proptest! {
    /// Any run of clients keeps the promises: never two holders of a lock, tokens strictly
    /// increasing per lock, waiters served in arrival order, leases ending exactly at their
    /// TTL, retries answered without a second grant. And the log it produced, replayed (as
    /// JSON, as a follower reads it) or resumed from a snapshot taken anywhere, gives the
    /// same state and the same answers.
    #[test]
    fn clients_get_what_was_promised_and_the_log_replays_identically(
        steps in steps(),
        cut in any::<prop::sample::Index>(),
    ) {
        let (state, log, results) = run(&steps);
        let json = serde_json::to_vec(&log).unwrap();
        let log: Log = serde_json::from_slice(&json).unwrap();
        let mut replay = LockState::default();
        let replayed: Vec<Vec<Applied>> =
            log.iter().map(|(i, t, b)| replay.apply(*i, *t, b)).collect();
        prop_assert_eq!(&replay, &state);
        prop_assert_eq!(&replayed, &results);

        let cut = cut.index(log.len() + 1);
        let mut head = LockState::default();
        for (i, t, b) in &log[..cut] {
            head.apply(*i, *t, b);
        }
        let mut resumed = LockState::from_json(&head.to_json().unwrap()).unwrap();
        prop_assert_eq!(&resumed, &head);
        let tail: Vec<Vec<Applied>> =
            log[cut..].iter().map(|(i, t, b)| resumed.apply(*i, *t, b)).collect();
        prop_assert_eq!(&resumed, &state);
        prop_assert_eq!(&tail[..], &results[cut..]);
    }
}
