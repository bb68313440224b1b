//! The coordination primitives on every backend that keeps them.
//!
//! What is one backend's own stays in its file: a hold whose lease ran out (gone on Redis, stale
//! on PostgreSQL and the local table), the coordinator's server-side queue, a lost answer.

use super::*;

const TTL: Duration = Duration::from_secs(60);

/// The reservation rule of the backends that poll, attempt by attempt: the first refused attempt
/// that says it comes back (`wait`) keeps the name from every other worker's claim until then
/// and a second more; a claim's last attempt, or a fail-fast one, keeps nothing and ends its
/// own; one not back in time holds nobody back.
pub fn reservations(s: &Subject) {
    let rt = runtime();
    let b = s.backend(&rt);
    let schema = s.id("schema");
    let claim = |worker: &str, kind: HoldKind, attempt: u32, wait_ms: u64| {
        let mut req = acquire(&schema, worker, TTL, Takeover::None);
        (req.kind, req.attempt, req.wait) = (kind, attempt, Duration::from_millis(wait_ms));
        rt.block_on(b.try_acquire(&req)).unwrap()
    };
    let queue = || -> Vec<String> {
        let st = rt.block_on(b.status(&schema)).unwrap();
        match st {
            sentinel::backend::Status::Holds(h) => {
                h.queue.into_iter().map(|w| w.worker_id).collect()
            }
            _ => Vec::new(),
        }
    };
    // Whether a reader's fail-fast claim is granted; refused, it was for the reservation.
    let reader = |worker: &str| match claim(worker, HoldKind::Shared, 0, 0) {
        Attempt::Granted(_) => true,
        Attempt::Held(h) => {
            let why = h.liveness.as_deref().unwrap_or_default();
            assert!(why.contains("reserved"), "{:?}: {h:?}", s.kind);
            false
        }
    };
    assert!(reader("r1"));
    // A fail-fast claim (one attempt, no next) reserves nothing.
    assert!(matches!(
        claim("writer", HoldKind::Exclusive, 0, 0),
        Attempt::Held(_)
    ));
    assert_eq!(queue(), Vec::<String>::new());
    assert!(reader("r2"));
    // The first refused attempt of a claim that comes back reserves the name: readers that
    // would fit wait.
    assert!(matches!(
        claim("writer", HoldKind::Exclusive, 0, 500),
        Attempt::Held(_)
    ));
    assert_eq!(queue(), ["writer"]);
    assert!(!reader("r3"), "a reader overtook the waiting writer");
    // Its last attempt, refused, ends it: the readers get in again.
    assert!(matches!(
        claim("writer", HoldKind::Exclusive, 1, 0),
        Attempt::Held(_)
    ));
    assert_eq!(queue(), Vec::<String>::new());
    assert!(reader("r3"));
    // Reserved again, and not back within its pause and a second: nobody waits for it.
    let reserved = Instant::now();
    assert!(matches!(
        claim("writer", HoldKind::Exclusive, 2, 500),
        Attempt::Held(_)
    ));
    assert!(!reader("r4"));
    assert!(
        reserved.elapsed() < Duration::from_millis(1500),
        "too slow to tell"
    );
    std::thread::sleep(Duration::from_millis(1900));
    assert_eq!(queue(), Vec::<String>::new());
    assert!(reader("r4"));
    for r in ["r1", "r2", "r3", "r4"] {
        assert!(
            rt.block_on(b.release(&release(&schema, r, None)))
                .unwrap()
                .was_held
        );
    }
}
