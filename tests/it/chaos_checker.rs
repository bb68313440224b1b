//! The checker of the chaos tests (`cluster`, `chaos_faults`): a pure function over the grants
//! the clients recorded, with unit tests of its own, so that every guarantee it checks is shown
//! to be caught when broken.
//!
//! A grant's interval runs from the instant its answer came back to the instant its release was
//! first sent. The coordinator held it at least that long (it committed the grant before
//! answering, and cannot have applied the release before it was sent), and no lease can end
//! within a test (`cluster::TTL_MS`), so two intervals that overlap are two holds the
//! coordinator kept at once: the checker never blames a correct coordinator, whatever the
//! network did to the answers. Holds it granted without the client learning of them (an
//! acquire withdrawn after its grant) are missing from the history, which only makes the check
//! more lenient.
//!
//! What it checks, per name: at no instant a lock or an election's leadership held by two,
//! a writer (exclusive hold) beside any other hold, or more permits of a semaphore held than
//! its limit; fencing tokens in the order the coordinator promises (see [`ordered`]); every
//! release found its grant; and a leader that read its election's leader (a linearizable read)
//! saw itself, with the value it had proclaimed.

use std::time::Duration;

/// How the release of a grant was answered.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Released {
    /// 200 `released`: the grant was still there.
    Yes,
    /// 409 `not_holder`: the grant was gone (the answer's body).
    NotHolder(String),
    /// Any other answer (status and body).
    Other(String),
    /// No node answered within the client's budget.
    Unanswered,
}

/// What a grant holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Hold {
    /// A lock or a writer: nobody else holds the name.
    Exclusive,
    /// A shared (read) hold: beside other shared holds only.
    Shared,
    /// `permits` of a semaphore of `limit`.
    Permits { limit: u32, permits: u32 },
    /// The leadership of an election (its lock): nobody else leads.
    Leader,
}

impl Hold {
    /// Nothing else may be held beside it.
    fn alone(self) -> bool {
        matches!(self, Hold::Exclusive | Hold::Leader)
    }
}

/// What a leader read of its election's leader (`GET /election/{name}/leader`) while it led.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Seen {
    /// Just before the read was first sent.
    pub(crate) at: Duration,
    /// The leader's fencing token, `None` for no leader.
    pub(crate) token: Option<u64>,
    /// The leader's published value.
    pub(crate) value: Option<String>,
}

/// One acknowledged grant as its client saw it; instants are since the test's start.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    pub(crate) name: String,
    pub(crate) client: usize,
    pub(crate) request_id: String,
    pub(crate) hold: Hold,
    pub(crate) token: u64,
    /// Just before the acquire was first sent.
    pub(crate) sent: Duration,
    /// When the grant's answer had come back.
    pub(crate) granted: Duration,
    /// Just before the release was first sent.
    pub(crate) release_sent: Duration,
    pub(crate) released: Released,
    /// A leader's value, once its proclamation was answered (before `seen` was read).
    pub(crate) proclaimed: Option<String>,
    /// A leader's read of the election's leader.
    pub(crate) seen: Option<Seen>,
}

impl Grant {
    fn describe(&self) -> String {
        format!(
            "{} of client {} ({:?}, token {}) held from {:?} until its release at {:?}",
            self.request_id, self.client, self.hold, self.token, self.granted, self.release_sent
        )
    }
}

/// Every violation in a history of grants: holds of one name that cannot be held at once,
/// tokens out of order, a grant whose release did not find it, a leader that read another
/// leader.
pub(crate) fn check_history(grants: &[Grant]) -> Vec<String> {
    let mut violations = Vec::new();
    for g in grants {
        if g.released != Released::Yes {
            violations.push(format!(
                "lost grant: {:?} token {} ({} of client {}), its release got {:?}",
                g.name, g.token, g.request_id, g.client, g.released
            ));
        }
        if g.release_sent < g.granted || g.granted < g.sent {
            violations.push(format!(
                "{} of client {} was released before it was granted, or granted before it was \
                 asked for",
                g.request_id, g.client
            ));
        }
        if let Some(v) = leader_read(g) {
            violations.push(v);
        }
    }
    let mut names: Vec<&str> = grants.iter().map(|g| g.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let mut mine: Vec<&Grant> = grants.iter().filter(|g| g.name == name).collect();
        mine.sort_by_key(|g| g.granted);
        tokens(name, &mine, &mut violations);
        // Sweep in grant order, keeping the grants still held.
        let mut held: Vec<&Grant> = Vec::new();
        for g in mine {
            held.retain(|h| h.release_sent > g.granted);
            if let Some(why) = conflict(g, &held) {
                let others: Vec<String> = held.iter().map(|h| h.describe()).collect();
                violations.push(format!(
                    "{name:?} {why}: {} of client {} ({:?}, token {}) granted at {:?}, while \
                     {}",
                    g.request_id,
                    g.client,
                    g.hold,
                    g.token,
                    g.granted,
                    others.join("; ")
                ));
            }
            held.push(g);
        }
    }
    violations
}

/// The most held at once of `name` in the history (permits of a semaphore, else holds), to show
/// that the load made holds overlap where they may: a history without overlaps checks little.
pub(crate) fn most_at_once(grants: &[Grant], name: &str) -> u64 {
    let weight = |g: &Grant| match g.hold {
        Hold::Permits { permits, .. } => u64::from(permits),
        _ => 1,
    };
    let mut mine: Vec<&Grant> = grants.iter().filter(|g| g.name == name).collect();
    mine.sort_by_key(|g| g.granted);
    let mut held: Vec<&Grant> = Vec::new();
    let mut most = 0;
    for g in mine {
        held.retain(|h| h.release_sent > g.granted);
        held.push(g);
        most = most.max(held.iter().map(|h| weight(h)).sum());
    }
    most
}

/// Why `g` cannot be held beside `held` (grants of its name), if it cannot.
fn conflict(g: &Grant, held: &[&Grant]) -> Option<String> {
    if held.is_empty() {
        return None;
    }
    let kinds = || std::iter::once(g.hold).chain(held.iter().map(|h| h.hold));
    if kinds().any(|k| k == Hold::Leader) {
        return Some("had two leaders".into());
    }
    if kinds().all(|k| k == Hold::Exclusive) {
        return Some("held twice".into());
    }
    if kinds().any(|k| k == Hold::Exclusive) {
        return Some("had a writer beside another hold".into());
    }
    match g.hold {
        Hold::Permits { limit, permits } => {
            let mut used = u64::from(permits);
            for h in held {
                match h.hold {
                    Hold::Permits { permits, .. } => used += u64::from(permits),
                    other => return Some(format!("had permits beside a {other:?} hold")),
                }
            }
            (used > u64::from(limit))
                .then(|| format!("had {used} permits held at once, over its limit of {limit}"))
        }
        _ if held.iter().all(|h| h.hold == Hold::Shared) => None,
        _ => Some("had a shared hold beside permits".into()),
    }
}

/// Whether the coordinator must have granted `b` after `a`, from what the clients saw: `b` was
/// asked for after `a`'s grant was answered, or one of them holds alone (so they never overlap,
/// which [`conflict`] checks) and `a` was granted first. The coordinator promises that tokens
/// never go down per name and grow from one granting command to the next (holds let in by one
/// command share its token): such a `b` has a larger token than `a`. Holds that may have been
/// granted in either order, or together, are not compared.
fn ordered(a: &Grant, b: &Grant) -> bool {
    a.granted <= b.sent || ((a.hold.alone() || b.hold.alone()) && a.granted < b.granted)
}

/// Tokens out of order among the grants of `name`: for each grant, the one with the largest
/// token of those it must follow, if that is not smaller than its own.
fn tokens(name: &str, mine: &[&Grant], violations: &mut Vec<String>) {
    for b in mine {
        let before = mine
            .iter()
            .filter(|a| !std::ptr::eq(**a, *b) && ordered(a, b))
            .max_by_key(|a| a.token);
        if let Some(a) = before
            && b.token <= a.token
        {
            violations.push(format!(
                "{name:?}: token {} ({}, granted at {:?}) follows token {} ({}, granted at {:?})",
                b.token, b.request_id, b.granted, a.token, a.request_id, a.granted
            ));
        }
    }
}

/// A leader that read another leader (or none), or another value than it had proclaimed: the
/// read was linearizable and made while the grant was held, so it must show the grant.
fn leader_read(g: &Grant) -> Option<String> {
    let seen = g.seen.as_ref()?;
    let why = if seen.token != Some(g.token) {
        "had two leaders"
    } else if g.proclaimed.is_some() && seen.value != g.proclaimed {
        "lost a proclamation"
    } else {
        return None;
    };
    Some(format!(
        "{:?} {why}: {} read the leader at {:?} as token {:?} with value {:?} (its \
         proclamation: {:?})",
        g.name,
        g.describe(),
        seen.at,
        seen.token,
        seen.value,
        g.proclaimed
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(name: &str, token: u64, granted_ms: u64, release_ms: u64) -> Grant {
        held(
            name,
            Hold::Exclusive,
            token,
            (granted_ms, granted_ms, release_ms),
        )
    }

    /// A grant of `hold` asked for, granted and released at the three instants (ms).
    fn held(
        name: &str,
        hold: Hold,
        token: u64,
        (sent, granted, release): (u64, u64, u64),
    ) -> Grant {
        Grant {
            name: name.to_string(),
            client: token as usize,
            request_id: format!("r{token}"),
            hold,
            token,
            sent: Duration::from_millis(sent),
            granted: Duration::from_millis(granted),
            release_sent: Duration::from_millis(release),
            released: Released::Yes,
            proclaimed: None,
            seen: None,
        }
    }

    fn permits(permits: u32) -> Hold {
        Hold::Permits { limit: 3, permits }
    }

    #[test]
    fn a_history_of_turns_passes() {
        let history = [
            grant("a", 3, 0, 10),
            grant("b", 4, 5, 50),
            // Recorded out of order; granted right after the release was sent is a turn.
            grant("a", 9, 30, 40),
            grant("a", 7, 10, 20),
            grant("b", 12, 51, 60),
        ];
        assert_eq!(check_history(&history), Vec::<String>::new());
        assert!(check_history(&[]).is_empty());
    }

    #[test]
    fn two_holders_at_once_are_caught() {
        // The second grant came back before the first one's release was sent.
        let v = check_history(&[grant("a", 3, 0, 10), grant("a", 7, 9, 20)]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("held twice"), "{v:?}");
        // Inside a long grant, behind a short one that ended: still caught.
        let v = check_history(&[
            grant("a", 3, 0, 100),
            grant("a", 5, 10, 20),
            grant("a", 7, 50, 60),
        ]);
        assert_eq!(v.len(), 2, "{v:?}");
        // Another name is no conflict.
        assert!(check_history(&[grant("a", 3, 0, 10), grant("b", 4, 5, 15)]).is_empty());
    }

    #[test]
    fn a_lost_grant_and_tokens_out_of_order_are_caught() {
        let mut lost = grant("a", 7, 20, 30);
        lost.released = Released::NotHolder("{}".into());
        let v = check_history(&[grant("a", 3, 0, 10), lost.clone()]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].starts_with("lost grant"), "{v:?}");
        lost.released = Released::Unanswered;
        assert_eq!(check_history(&[lost]).len(), 1);

        let v = check_history(&[grant("a", 7, 0, 10), grant("a", 3, 20, 30)]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("follows token 7"), "{v:?}");
        // The same token granted twice.
        assert_eq!(
            check_history(&[grant("a", 7, 0, 10), grant("a", 7, 20, 30)]).len(),
            1
        );
    }

    #[test]
    fn permits_up_to_the_limit_pass_and_one_more_is_caught() {
        let s = "sem";
        // 2 + 1 held at once, then 1 + 2 as the first hold goes: never more than 3.
        let ok = [
            held(s, permits(2), 10, (0, 1, 50)),
            held(s, permits(1), 12, (0, 5, 100)),
            held(s, permits(2), 20, (30, 50, 80)),
        ];
        assert_eq!(check_history(&ok), Vec::<String>::new());
        assert_eq!(most_at_once(&ok, s), 3);
        // One permit over: a claim of 1 granted while 2 + 1 are held.
        let mut over = ok.to_vec();
        over.push(held(s, permits(1), 14, (0, 20, 40)));
        assert_eq!(most_at_once(&over, s), 4);
        let v = check_history(&over);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].contains("had 4 permits held at once, over its limit of 3"),
            "{v:?}"
        );
    }

    #[test]
    fn a_writer_beside_a_reader_is_caught() {
        let s = "rw";
        let readers = [
            held(s, Hold::Shared, 10, (0, 1, 50)),
            held(s, Hold::Shared, 12, (0, 5, 60)),
        ];
        // A writer after the readers, then readers again: turns.
        let mut turns = readers.to_vec();
        turns.push(held(s, Hold::Exclusive, 20, (10, 60, 70)));
        turns.push(held(s, Hold::Shared, 30, (65, 70, 90)));
        assert_eq!(check_history(&turns), Vec::<String>::new());
        assert_eq!(most_at_once(&turns, s), 2);
        // A writer granted while a reader holds.
        let mut writer = readers.to_vec();
        writer.push(held(s, Hold::Exclusive, 20, (10, 55, 70)));
        let v = check_history(&writer);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("had a writer beside another hold"), "{v:?}");
        // A reader granted while a writer holds.
        let v = check_history(&[
            held(s, Hold::Exclusive, 20, (0, 10, 70)),
            held(s, Hold::Shared, 30, (0, 60, 90)),
        ]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("had a writer beside another hold"), "{v:?}");
    }

    #[test]
    fn two_leaders_and_a_lost_proclamation_are_caught() {
        let e = "election";
        let mut one = held(e, Hold::Leader, 10, (0, 5, 50));
        one.proclaimed = Some("v".into());
        one.seen = Some(Seen {
            at: Duration::from_millis(20),
            token: Some(10),
            value: Some("v".into()),
        });
        let next = held(e, Hold::Leader, 20, (0, 50, 60));
        assert_eq!(
            check_history(&[one.clone(), next.clone()]),
            Vec::<String>::new()
        );
        // Terms that overlap.
        let mut early = next.clone();
        early.granted = Duration::from_millis(40);
        let v = check_history(&[one.clone(), early]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("had two leaders"), "{v:?}");
        // A leader that read another leader, no leader, or not its proclaimed value.
        let misread = [
            (Some(20), Some("v"), "had two leaders"),
            (None, None, "had two leaders"),
            (Some(10), Some("old"), "lost a proclamation"),
        ];
        for (token, value, why) in misread {
            let mut misled = one.clone();
            misled.seen = Some(Seen {
                at: Duration::from_millis(20),
                token,
                value: value.map(String::from),
            });
            let v = check_history(&[misled, next.clone()]);
            assert_eq!(v.len(), 1, "{v:?}");
            assert!(v[0].contains(why), "{v:?}");
        }
    }

    #[test]
    fn group_tokens_are_checked_only_where_the_order_is_known() {
        let s = "sem";
        // Two holds asked for together may be answered in either order, and holds let in by one
        // command share its token.
        let together = [
            held(s, permits(1), 12, (0, 5, 50)),
            held(s, permits(1), 10, (0, 8, 50)),
            held(s, permits(1), 12, (0, 9, 50)),
        ];
        assert_eq!(check_history(&together), Vec::<String>::new());
        // One asked for after another's grant was answered must have a larger token.
        let mut later = together.to_vec();
        later.push(held(s, permits(1), 12, (10, 55, 60)));
        let v = check_history(&later);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("follows token 12"), "{v:?}");
        // A reader granted after a writer (never beside it) must have a larger token, even one
        // asked for while the writer held.
        let v = check_history(&[
            held("rw", Hold::Exclusive, 20, (0, 10, 30)),
            held("rw", Hold::Shared, 20, (5, 40, 50)),
        ]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("follows token 20"), "{v:?}");
    }
}
