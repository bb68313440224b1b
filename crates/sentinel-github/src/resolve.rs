//! The ownership rule: given the trusted lock comments of one issue, who holds the lock.
//!
//! Every reader — claimers verifying their own write, `status`, `release` — runs this same pure
//! function over the same comments, so they all name the same holder (ARCHITECTURE.md, "Invariants"). The comments are
//! replayed as a log in comment-id order (ids only grow), using GitHub's timestamps only:
//!
//! * A claim takes the lock when it is free at the claim's `created_at`: nothing granted yet, or the
//!   last holder released strictly before, or released in the same second and the claim records
//!   that its writer read that very release before writing it (`after_release`). Timestamps have
//!   one-second resolution, so a tie without that record counts as still held: such a claim may
//!   have been written before the release, by a writer that read the lock held and gave up.
//! * A claim made while the lock was held loses, unless it is a take-over of exactly that holder
//!   that was allowed at its `created_at`: `force`, or the holder's heartbeat was older than its TTL,
//!   or the take-over names the holder's Actions job as completed (`completed_job`) and the holder
//!   still records that very job. The victim's heartbeat and job are its `updated_at` and
//!   `actions_job` if that edit is not later than the take-over; a later edit is a renewal that
//!   came too late, so the stealer's recorded view of it is used instead. Only the stealer asked
//!   GitHub about the job; every reader checks the same recorded facts, and a holder that has
//!   since renewed from another job (re-adopted in a re-run) keeps its lock.
//! * A successful take-over deletes the victim's comment (so the victim's next heartbeat fails
//!   with 404). When a take-over's victim is no longer there, the take-over's own record of the
//!   victim decides, and it voids whatever non-take-over claims sat between victim and stealer:
//!   those were losers of the victim's reign.
//! * A victim's reign ends once: a later take-over aimed at a victim an earlier granted record
//!   already took over (a rival stealer, a force-release) loses to whoever holds the lock now.
//! * A released take-over notice (`release --force`, the stale-lock janitor) follows the same
//!   rule as a take-over, then leaves the lock free: a stale-lock notice frees the lock only if
//!   the holder was stale at the notice's `created_at`, so a holder that renewed first keeps it.
//!
//! Losing claims are deleted by their writers; a claimer that died before deleting its losing
//! comment leaves a claim that can only win later if it was made while the lock was free.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::comment::{LockMeta, LockState};
use sentinel_core::lease;

/// A trusted, well-formed lock comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The comment id: the order of the log, and the grant's fencing token.
    pub id: u64,
    /// The comment author's login (trusted by the time it is a record).
    pub author: String,
    /// GitHub's time of the claim.
    pub created_at: DateTime<Utc>,
    /// GitHub's time of the last edit: the last heartbeat, or the release.
    pub updated_at: DateTime<Utc>,
    /// The comment's JSON.
    pub meta: LockMeta,
}

impl Record {
    fn ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.meta.ttl_seconds)
    }

    fn released_at(&self) -> Option<DateTime<Utc>> {
        (self.meta.state == LockState::Released).then_some(self.updated_at)
    }

    /// Expiry as of its last heartbeat (the comment's last edit).
    pub fn expires_at(&self) -> DateTime<Utc> {
        lease::expires_at(self.updated_at, self.ttl())
    }

    /// Whether the lease had run out at `now` (strictly after [`Record::expires_at`]).
    pub fn is_stale_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at() < now
    }
}

/// Who holds the lock after replaying an issue's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution<'a> {
    /// The last granted claim; `None` if no claim was ever granted.
    pub current: Option<&'a Record>,
    /// Claims that lost (their writers should have deleted them).
    pub losers: Vec<u64>,
}

impl<'a> Resolution<'a> {
    /// The holder, if the lock is held (live or stale) right now.
    pub fn holder(&self) -> Option<&'a Record> {
        self.current.filter(|r| r.meta.state == LockState::Held)
    }
}

/// Replays `records` (any order; sorted here) and returns the holder.
pub fn resolve(records: &[Record]) -> Resolution<'_> {
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| r.id);
    let present: HashSet<u64> = sorted.iter().map(|r| r.id).collect();

    let mut current: Option<&Record> = None;
    let mut losers = Vec::new();
    // Victims whose reign a granted take-over (or release notice) already ended.
    let mut ended: HashSet<u64> = HashSet::new();
    for r in sorted {
        let takes = match current {
            None => true,
            Some(h)
                if h.released_at()
                    .is_some_and(|t| r.created_at > t || read_free(r, h)) =>
            {
                true
            }
            Some(h) => takes_over(r, h, &present, &ended),
        };
        if takes {
            if let Some(t) = &r.meta.takeover {
                ended.insert(t.comment_id);
            }
            current = Some(r);
        } else {
            losers.push(r.id);
        }
    }
    Resolution { current, losers }
}

/// Whether `r`'s writer read `h`'s release, as it stands, before writing `r`: then `r` came after
/// it, whatever the timestamps say.
fn read_free(r: &Record, h: &Record) -> bool {
    r.meta
        .after_release
        .as_ref()
        .is_some_and(|a| a.comment_id == h.id && a.released == h.updated_at)
}

/// Whether `r`, created while `h` held the lock, validly took it over.
fn takes_over(r: &Record, h: &Record, present: &HashSet<u64>, ended: &HashSet<u64>) -> bool {
    let Some(t) = &r.meta.takeover else {
        return false;
    };
    if t.comment_id != h.id && ended.contains(&t.comment_id) {
        // Someone else already ended that victim's reign (a rival stealer, a force-release or a
        // stale-lock release), so `h` is not one of its losers: it may be a claim that rightly
        // won after that. A take-over aimed at an old holder never ousts a newer one.
        return false;
    }
    if t.comment_id == h.id {
        if t.force {
            return true;
        }
        let (heartbeat, job) = if h.updated_at <= r.created_at && h.meta.state == LockState::Held {
            (h.updated_at, h.meta.actions_job.as_ref())
        } else {
            (t.heartbeat, t.completed_job.as_ref())
        };
        let job_completed = t.completed_job.is_some() && t.completed_job.as_ref() == job;
        return job_completed || lease::expires_at(heartbeat, h.ttl()) < r.created_at;
    }
    // The victim is gone (deleted by this very take-over) and `h` came after it: `h` was a claim
    // made during the victim's reign (an earlier take-over of the same victim, which won the
    // race, was ruled out above).
    let victim_gone = !present.contains(&t.comment_id);
    let h_after_victim = h.id > t.comment_id;
    if victim_gone && h_after_victim {
        return t.force
            || t.completed_job.is_some()
            || lease::expires_at(t.heartbeat, std::time::Duration::from_secs(t.ttl_seconds))
                < r.created_at;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::super::comment::{ActionsJob, AfterRelease, Takeover};
    use super::*;
    use sentinel_core::lock::TaskInfo;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn rec(id: u64, worker: &str, created: i64, updated: i64, state: LockState) -> Record {
        Record {
            id,
            author: "bot".into(),
            created_at: t(created),
            updated_at: t(updated),
            meta: LockMeta {
                worker_id: worker.into(),
                node_id: "n".into(),
                claimed_at: t(created),
                heartbeat_last: t(updated),
                ttl_seconds: 300,
                state,
                nonce: format!("{id}"),
                task_info: TaskInfo::default(),
                takeover: None,
                released_at: None,
                released_by: None,
                after_release: None,
                actions_job: None,
            },
        }
    }

    fn steal(mut r: Record, victim: u64, hb: i64, force: bool) -> Record {
        r.meta.takeover = Some(Takeover {
            comment_id: victim,
            worker_id: "victim".into(),
            heartbeat: t(hb),
            ttl_seconds: 300,
            force,
            completed_job: None,
        });
        r
    }

    fn holder_id(recs: &[Record]) -> Option<u64> {
        resolve(recs).holder().map(|r| r.id)
    }

    #[test]
    fn lowest_claim_wins_and_later_claims_lose() {
        let recs = vec![
            rec(12, "b", 1, 1, LockState::Held),
            rec(10, "a", 1, 1, LockState::Held),
        ];
        assert_eq!(holder_id(&recs), Some(10));
        assert_eq!(resolve(&recs).losers, vec![12]);
    }

    #[test]
    fn release_frees_only_for_later_claims() {
        // a released at 50; b was created at 40 (lost then, zombie now), c at 60.
        let recs = vec![
            rec(1, "a", 0, 50, LockState::Released),
            rec(2, "b", 40, 40, LockState::Held),
            rec(3, "c", 60, 60, LockState::Held),
        ];
        assert_eq!(holder_id(&recs), Some(3));
        // Same second as the release: still counted as held.
        let tie = vec![
            rec(1, "a", 0, 50, LockState::Released),
            rec(2, "b", 50, 50, LockState::Held),
        ];
        assert_eq!(holder_id(&tie), None);
        assert_eq!(resolve(&tie).current.unwrap().id, 1);
        // Unless the claim's writer read that release before writing it.
        let mut after = rec(2, "b", 50, 50, LockState::Held);
        after.meta.after_release = Some(AfterRelease {
            comment_id: 1,
            released: t(50),
        });
        let seen = vec![rec(1, "a", 0, 50, LockState::Released), after.clone()];
        assert_eq!(holder_id(&seen), Some(2));
        // A release it did not read (another comment, or a later edit of the same one) proves
        // nothing.
        for (comment_id, released) in [(7, 50), (1, 49)] {
            after.meta.after_release = Some(AfterRelease {
                comment_id,
                released: t(released),
            });
            let other = vec![rec(1, "a", 0, 50, LockState::Released), after.clone()];
            assert_eq!(holder_id(&other), None, "{comment_id} at {released}");
        }
        // Nor does it free a lock that is held.
        after.meta.after_release = Some(AfterRelease {
            comment_id: 1,
            released: t(50),
        });
        let held = vec![rec(1, "a", 0, 50, LockState::Held), after];
        assert_eq!(holder_id(&held), Some(1));
    }

    #[test]
    fn steal_of_stale_holder_wins_and_of_live_holder_loses() {
        let stale = vec![
            rec(1, "a", 0, 0, LockState::Held),
            steal(rec(2, "s", 400, 400, LockState::Held), 1, 0, false),
        ];
        assert_eq!(holder_id(&stale), Some(2));
        let live = vec![
            rec(1, "a", 0, 200, LockState::Held),
            steal(rec(2, "s", 400, 400, LockState::Held), 1, 0, false),
        ];
        assert_eq!(holder_id(&live), Some(1), "renewed at 200: live at 400");
        let forced = vec![
            rec(1, "a", 0, 390, LockState::Held),
            steal(rec(2, "s", 400, 400, LockState::Held), 1, 390, true),
        ];
        assert_eq!(holder_id(&forced), Some(2));
    }

    #[test]
    fn late_heartbeat_after_a_steal_does_not_flip_the_holder() {
        let recs = vec![
            rec(1, "a", 0, 500, LockState::Held), // renewed at 500, after the steal at 400
            steal(rec(2, "s", 400, 400, LockState::Held), 1, 0, false),
        ];
        assert_eq!(holder_id(&recs), Some(2));
        // The victim releasing after the steal changes nothing either.
        let recs = vec![
            rec(1, "a", 0, 500, LockState::Released),
            steal(rec(2, "s", 400, 400, LockState::Held), 1, 0, false),
        ];
        assert_eq!(holder_id(&recs), Some(2));
    }

    #[test]
    fn deleting_the_victim_keeps_the_stealer() {
        let before = vec![
            rec(1, "a", 0, 0, LockState::Held),
            rec(2, "zombie", 100, 100, LockState::Held),
            steal(rec(3, "s", 400, 400, LockState::Held), 1, 0, false),
        ];
        assert_eq!(holder_id(&before), Some(3));
        let after: Vec<Record> = before.into_iter().filter(|r| r.id != 1).collect();
        assert_eq!(holder_id(&after), Some(3));
    }

    #[test]
    fn first_of_two_racing_stealers_wins_even_after_deletion() {
        let recs = vec![
            steal(rec(5, "s1", 400, 400, LockState::Held), 1, 0, false),
            steal(rec(6, "s2", 401, 401, LockState::Held), 1, 0, false),
        ];
        assert_eq!(holder_id(&recs), Some(5));
        let with_victim = vec![
            rec(1, "a", 0, 0, LockState::Held),
            recs[0].clone(),
            recs[1].clone(),
        ];
        assert_eq!(holder_id(&with_victim), Some(5));
    }

    #[test]
    fn a_take_over_of_an_ousted_holder_never_voids_its_successor() {
        // Victim 1 was force-released (notice 2, victim deleted), worker c then claimed the free
        // lock (3). A stale take-over of 1 written from an old read (4) must not void c's claim.
        let mut notice = steal(rec(2, "admin", 400, 400, LockState::Released), 1, 390, true);
        notice.meta.released_at = Some(t(400));
        let recs = vec![
            notice.clone(),
            rec(3, "c", 402, 402, LockState::Held),
            steal(rec(4, "s", 405, 405, LockState::Held), 1, 0, false),
        ];
        assert_eq!(holder_id(&recs), Some(3));
        assert_eq!(resolve(&recs).losers, vec![4]);
        // The same for a stale-lock release notice aimed at the ousted holder.
        let recs = vec![
            notice,
            rec(3, "c", 402, 402, LockState::Held),
            steal(
                rec(4, "janitor", 405, 405, LockState::Released),
                1,
                0,
                false,
            ),
        ];
        assert_eq!(holder_id(&recs), Some(3));
    }

    #[test]
    fn a_stale_release_notice_frees_only_a_stale_holder() {
        let held = rec(1, "a", 0, 0, LockState::Held);
        let notice = |created| {
            steal(
                rec(2, "janitor", created, created, LockState::Released),
                1,
                0,
                false,
            )
        };
        // Stale at the notice's creation: released, free for claims strictly after it.
        let recs = vec![held.clone(), notice(400)];
        let r = resolve(&recs);
        assert_eq!(r.current.map(|c| c.id), Some(2));
        assert_eq!(r.holder(), None);
        let recs = vec![
            held.clone(),
            notice(400),
            rec(3, "b", 401, 401, LockState::Held),
        ];
        assert_eq!(holder_id(&recs), Some(3));
        // Renewed before the notice: the notice loses and the holder keeps its lock.
        let renewed = rec(1, "a", 0, 350, LockState::Held);
        let recs = vec![renewed, notice(400)];
        assert_eq!(holder_id(&recs), Some(1));
        assert_eq!(resolve(&recs).losers, vec![2]);
    }

    fn job(run_id: u64) -> ActionsJob {
        ActionsJob {
            run_id,
            run_attempt: 1,
            job: "build".into(),
            runner_name: Some("runner-7".into()),
        }
    }

    fn in_job(mut r: Record, run_id: u64) -> Record {
        r.meta.actions_job = Some(job(run_id));
        r
    }

    /// A stale take-over whose writer read that run's job completed.
    fn steal_completed(r: Record, victim: u64, hb: i64, run_id: u64) -> Record {
        let mut r = steal(r, victim, hb, false);
        r.meta.takeover.as_mut().unwrap().completed_job = Some(job(run_id));
        r
    }

    #[test]
    fn a_take_over_of_a_completed_job_wins_whatever_the_lease() {
        // Claimed at 0 from run 7 with a 300 s lease; at 100 a stealer read that job completed.
        let victim = in_job(rec(1, "a", 0, 0, LockState::Held), 7);
        let thief = steal_completed(rec(3, "s", 100, 100, LockState::Held), 1, 0, 7);
        assert_eq!(holder_id(&[victim.clone(), thief.clone()]), Some(3));
        // Once the victim's comment is deleted its record decides the same way, voiding a claim
        // made during the victim's reign.
        let zombie = rec(2, "z", 50, 50, LockState::Held);
        assert_eq!(holder_id(&[zombie.clone(), thief.clone()]), Some(3));
        assert_eq!(holder_id(&[victim, zombie, thief.clone()]), Some(3));
        // A renewal after the take-over (a process that outlived its job) comes too late.
        let late = in_job(rec(1, "a", 0, 150, LockState::Held), 7);
        assert_eq!(holder_id(&[late, thief]), Some(3));
    }

    #[test]
    fn a_job_take_over_needs_the_holder_to_still_record_that_job() {
        let thief = steal_completed(rec(2, "s", 100, 100, LockState::Held), 1, 0, 7);
        // A holder that recorded no job is judged by its lease, which is live: a take-over
        // claiming a completed job (forged, or from a stale read) cannot oust it.
        let plain = rec(1, "a", 0, 0, LockState::Held);
        assert_eq!(holder_id(&[plain, thief.clone()]), Some(1));
        // The holder renewed from another run before the take-over (re-adopted in a re-run).
        let moved = in_job(rec(1, "a", 0, 50, LockState::Held), 8);
        assert_eq!(holder_id(&[moved, thief.clone()]), Some(1));
        // Or from another attempt of the same run.
        let mut retried = in_job(rec(1, "a", 0, 50, LockState::Held), 7);
        retried.meta.actions_job.as_mut().unwrap().run_attempt = 2;
        assert_eq!(holder_id(&[retried, thief.clone()]), Some(1));
        // Its lease ran out all the same: the lease rule still applies.
        let expired = in_job(rec(1, "a", 0, 50, LockState::Held), 8);
        let late_thief = steal_completed(rec(2, "s", 400, 400, LockState::Held), 1, 50, 7);
        assert_eq!(holder_id(&[expired, late_thief]), Some(2));
    }

    #[test]
    fn stale_holder_is_still_the_holder() {
        let recs = vec![rec(1, "a", 0, 0, LockState::Held)];
        let r = resolve(&recs);
        let h = r.holder().unwrap();
        assert!(h.is_stale_at(t(301)));
        assert!(!h.is_stale_at(t(300)));
    }

    proptest::proptest! {
        /// Any set of lock comments — claims, releases, take-overs of present or deleted victims,
        /// any timestamps and TTLs — resolves without panicking, to a holder among them, and to
        /// the same holder whatever order the comments were listed in.
        #[test]
        fn any_comment_log_resolves_the_same_in_any_order(
            specs in proptest::collection::vec(
                (1u64..40, 0i64..2_000, 0i64..600, proptest::bool::ANY, proptest::option::of((1u64..40, 0i64..2_000, proptest::bool::ANY)), proptest::num::u64::ANY),
                0..24,
            ),
            seed in proptest::num::u64::ANY,
        ) {
            let mut recs: Vec<Record> = Vec::new();
            for (id, created, held_for, released, takeover, ttl) in specs {
                if recs.iter().any(|r| r.id == id) {
                    continue;
                }
                let state = if released { LockState::Released } else { LockState::Held };
                let mut r = rec(id, &format!("w{id}"), created, created + held_for, state);
                r.meta.ttl_seconds = ttl;
                if let Some((victim, hb, force)) = takeover {
                    r = steal(r, victim, hb, force);
                    r.meta.takeover.as_mut().unwrap().ttl_seconds = ttl;
                }
                recs.push(r);
            }
            let first = holder_id(&recs);
            if let Some(h) = first {
                proptest::prop_assert!(recs.iter().any(|r| r.id == h));
            }
            let mut shuffled = recs.clone();
            fastrand::Rng::with_seed(seed).shuffle(&mut shuffled);
            proptest::prop_assert_eq!(holder_id(&shuffled), first);
        }
    }
}
