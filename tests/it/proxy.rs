//! A fault-injecting TCP proxy for tests: it listens on 127.0.0.1:0, forwards every connection to
//! one target, and on command delays, holds (a blackhole) or cuts the traffic, then heals. It
//! owns faults *between* processes, so that a test can put a real network fault between real
//! processes (cluster nodes, or a client and Redis/PostgreSQL) without touching their code.
//!
//! Faults apply to a *lane* and a *direction*. A plain proxy ([`Proxy::start`]) has one lane. A
//! sorted proxy ([`Proxy::start_sorted`]) reads the first bytes a connection sends (up to the end
//! of an HTTP head) and lets a function name the connection's lane, for when one proxy carries
//! several senders' traffic: on loopback every connection comes from 127.0.0.1, so the source
//! address cannot tell senders apart, but a request's head can (the coordinator's nodes name
//! themselves in `x-sentinel-peer-id` on Raft RPCs and in `x-sentinel-forwarded` on forwarded
//! client requests, see [`sentinel_sender`]).
//!
//! - [`Fault::Delay`] holds each chunk that long before passing it on (order kept, not a
//!   throttle: chunks in flight overlap).
//! - [`Fault::Blackhole`] stops passing bytes on and keeps the connections open: the sender's
//!   writes fill the socket buffers and then block, as on a network that drops every packet.
//!   New connections are still accepted (on loopback the kernel completes the handshake), and
//!   nothing answers them. Bytes held are passed on once the fault is lifted, as TCP's
//!   retransmissions would deliver them.
//! - [`Fault::Cut`] closes every connection of the lane at once and closes new ones as soon as
//!   they are accepted (and, for a sorted proxy, sorted): a peer that is down or a firewall
//!   that rejects. It has no direction.
//!
//! Everything is bounded: the threads of a connection end with it, a connection that sends
//! nothing within 2 s to be sorted is closed, and dropping the [`Proxy`] closes every
//! connection and joins the accepting thread.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What happens to the traffic a rule matches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Fault {
    /// Passed on as it comes.
    Pass,
    /// Each chunk held this long.
    Delay(Duration),
    /// Nothing passed on; connections kept open.
    Blackhole,
    /// Connections closed, new ones too.
    Cut,
}

/// Which way traffic goes through the proxy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Dir {
    /// From the connecting side to the target (requests).
    ToTarget,
    /// From the target back (answers).
    FromTarget,
    Both,
}

/// The lane of a sorted connection: the function's answer to its first bytes.
pub(crate) type Lane = Option<u64>;

/// One fault on a set of connections: `lane` None matches every lane.
#[derive(Debug, Clone, Copy)]
struct Rule {
    lane: Option<u64>,
    dir: Dir,
    fault: Fault,
}

/// One live connection, to cut it.
struct Conn {
    lane: Lane,
    down: TcpStream,
    up: TcpStream,
    /// How many of its two directions ended.
    ended: Arc<AtomicUsize>,
}

struct Shared {
    target: String,
    sort: Option<fn(&[u8]) -> Lane>,
    stop: AtomicBool,
    rules: Mutex<Vec<Rule>>,
    conns: Mutex<Vec<Conn>>,
}

impl Shared {
    /// The fault on `lane` going `dir` (one direction): the last rule that matches, else
    /// [`Fault::Pass`].
    fn fault(&self, lane: Lane, dir: Dir) -> Fault {
        let rules = self.rules.lock().unwrap();
        rules
            .iter()
            .rev()
            .find(|r| (r.lane.is_none() || r.lane == lane) && (r.dir == Dir::Both || r.dir == dir))
            .map_or(Fault::Pass, |r| r.fault)
    }

    fn is_cut(&self, lane: Lane) -> bool {
        [Dir::ToTarget, Dir::FromTarget]
            .iter()
            .any(|&d| self.fault(lane, d) == Fault::Cut)
    }
}

/// A running proxy; dropping it closes everything.
pub(crate) struct Proxy {
    addr: String,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// A proxy to `target` (`HOST:PORT`) whose connections share one lane (None).
    pub(crate) fn start(target: &str) -> Proxy {
        Proxy::spawn(target, None)
    }

    /// A proxy to `target` that sorts each connection into the lane `sort` names from the
    /// connection's first bytes (up to the end of an HTTP head, at most 16 KiB).
    pub(crate) fn start_sorted(target: &str, sort: fn(&[u8]) -> Lane) -> Proxy {
        Proxy::spawn(target, Some(sort))
    }

    fn spawn(target: &str, sort: Option<fn(&[u8]) -> Lane>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared {
            target: target.to_string(),
            sort,
            stop: AtomicBool::new(false),
            rules: Mutex::new(Vec::new()),
            conns: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let accept = std::thread::spawn(move || {
            for down in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(down) = down {
                    let s = s.clone();
                    std::thread::spawn(move || open(&s, down));
                }
            }
        });
        Proxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// Where to connect instead of the target.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// Puts `fault` on the traffic of `lane` (None: every lane) going `dir`, over the rules set
    /// before (the last rule set that matches decides). A cut closes the lane's connections now.
    pub(crate) fn set(&self, lane: Option<u64>, dir: Dir, fault: Fault) {
        // A cut is whole connections, whatever direction it was set for.
        let dir = if fault == Fault::Cut { Dir::Both } else { dir };
        self.shared
            .rules
            .lock()
            .unwrap()
            .push(Rule { lane, dir, fault });
        if fault == Fault::Cut {
            let mut conns = self.shared.conns.lock().unwrap();
            conns.retain(|c| {
                let cut = lane.is_none() || c.lane == lane;
                if cut {
                    let _ = c.down.shutdown(Shutdown::Both);
                    let _ = c.up.shutdown(Shutdown::Both);
                }
                !cut
            });
        }
    }

    /// Lifts every fault: traffic held is passed on. (To lift one fault and keep the others, set
    /// [`Fault::Pass`] over it.)
    pub(crate) fn heal(&self) {
        self.shared.rules.lock().unwrap().clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.down.shutdown(Shutdown::Both);
            let _ = c.up.shutdown(Shutdown::Both);
        }
        // Wakes the accepting thread, which then sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr.parse().unwrap(), Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Sorts, connects to the target and starts the four threads of one connection.
fn open(s: &Arc<Shared>, mut down: TcpStream) {
    let mut head = Vec::new();
    let lane = match s.sort {
        None => None,
        Some(sort) => {
            // Bounded: a connection that sends no head within 2 s is closed.
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return;
                }
                let _ = down.set_read_timeout(Some(left));
                match down.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
            let _ = down.set_read_timeout(None);
            sort(&head)
        }
    };
    if s.is_cut(lane) || s.stop.load(Ordering::SeqCst) {
        return;
    }
    let Ok(up) = TcpStream::connect_timeout(&s.target.parse().unwrap(), Duration::from_secs(2))
    else {
        // The target is down: so is the proxy's connection.
        return;
    };
    let _ = up.set_nodelay(true);
    let _ = down.set_nodelay(true);
    let ended = Arc::new(AtomicUsize::new(0));
    let clones = (|| {
        Some((
            down.try_clone().ok()?,
            down.try_clone().ok()?,
            up.try_clone().ok()?,
            up.try_clone().ok()?,
        ))
    })();
    let Some((down_w, down_c, up_r, up_c)) = clones else {
        return;
    };
    {
        let mut conns = s.conns.lock().unwrap();
        conns.retain(|c| c.ended.load(Ordering::SeqCst) < 2);
        conns.push(Conn {
            lane,
            down: down_c,
            up: up_c,
            ended: ended.clone(),
        });
    }
    pump(s, lane, Dir::ToTarget, down, up, head, &ended);
    pump(s, lane, Dir::FromTarget, up_r, down_w, Vec::new(), &ended);
}

/// One direction of a connection: a reader that stamps each chunk with when it may go on, and a
/// writer that passes it on then, unless the lane is blackholed.
fn pump(
    s: &Arc<Shared>,
    lane: Lane,
    dir: Dir,
    mut from: TcpStream,
    mut to: TcpStream,
    first: Vec<u8>,
    ended: &Arc<AtomicUsize>,
) {
    // Bounded: a reader blocks once 64 chunks wait, as a full socket buffer would.
    let (tx, rx): (SyncSender<(Instant, Vec<u8>)>, Receiver<_>) = sync_channel(64);
    let due = move |s: &Shared| match s.fault(lane, dir) {
        Fault::Delay(d) => Instant::now() + d,
        _ => Instant::now(),
    };
    if !first.is_empty() {
        let _ = tx.send((due(s), first));
    }
    let rs = s.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // Held, not read: the sender's writes back up as on a dead network.
            while rs.fault(lane, dir) == Fault::Blackhole && !rs.stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((due(&rs), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        // Ends the writer once it passed on what was read.
        drop(tx);
    });
    let ws = s.clone();
    let ended = ended.clone();
    std::thread::spawn(move || {
        for (at, chunk) in rx {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            while ws.fault(lane, dir) == Fault::Blackhole && !ws.stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            if ws.stop.load(Ordering::SeqCst) || ws.is_cut(lane) || to.write_all(&chunk).is_err() {
                break;
            }
        }
        // Half a connection ended: the other side sees the end too.
        let _ = to.shutdown(Shutdown::Write);
        if ended.fetch_add(1, Ordering::SeqCst) == 1 {
            let _ = to.shutdown(Shutdown::Both);
        }
    });
}

/// The lane of a connection between `sentinel serve` nodes: the id the sending node puts in
/// `x-sentinel-peer-id` (Raft RPCs) or `x-sentinel-forwarded` (a client request a follower
/// forwards), None for anything else.
pub(crate) fn sentinel_sender(head: &[u8]) -> Lane {
    let head = String::from_utf8_lossy(head);
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        let name = name.trim().to_ascii_lowercase();
        (name == "x-sentinel-peer-id" || name == "x-sentinel-forwarded")
            .then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback, ended by the test's end (its thread stops with the process).
    fn echo() -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut r = c.try_clone().unwrap();
                    let mut w = c;
                    let _ = std::io::copy(&mut r, &mut w);
                });
            }
        });
        addr
    }

    /// Writes `msg` and reads as many bytes back, within `within`: None if they did not come.
    fn round_trip(s: &mut TcpStream, msg: &[u8], within: Duration) -> Option<Vec<u8>> {
        s.write_all(msg).ok()?;
        s.set_read_timeout(Some(within)).unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).ok()?;
        Some(got)
    }

    #[test]
    fn passes_holds_and_cuts() {
        let p = Proxy::start(&echo());
        let mut c = TcpStream::connect(p.addr()).unwrap();
        let second = Duration::from_secs(5);
        assert_eq!(
            round_trip(&mut c, b"one", second).as_deref(),
            Some(&b"one"[..])
        );

        // Held while blackholed, delivered once healed.
        p.set(None, Dir::FromTarget, Fault::Blackhole);
        let short = Duration::from_millis(300);
        assert_eq!(round_trip(&mut c, b"two", short), None);
        p.heal();
        c.set_read_timeout(Some(second)).unwrap();
        let mut got = [0u8; 3];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"two");

        // Cut: the connection ends, and a new one is closed at once.
        p.set(None, Dir::Both, Fault::Cut);
        c.set_read_timeout(Some(second)).unwrap();
        assert!(matches!(c.read(&mut got), Ok(0) | Err(_)));
        let mut d = TcpStream::connect(p.addr()).unwrap();
        assert_eq!(round_trip(&mut d, b"x", second), None);
        p.heal();
        let mut e = TcpStream::connect(p.addr()).unwrap();
        assert_eq!(
            round_trip(&mut e, b"back", second).as_deref(),
            Some(&b"back"[..])
        );
    }

    #[test]
    fn sorts_connections_into_lanes() {
        let p = Proxy::start_sorted(&echo(), sentinel_sender);
        let second = Duration::from_secs(5);
        let from = |id: u64| {
            let mut s = TcpStream::connect(p.addr()).unwrap();
            let head = format!("POST /raft/vote HTTP/1.1\r\nx-sentinel-peer-id: {id}\r\n\r\n");
            let got = round_trip(&mut s, head.as_bytes(), second);
            (s, got.is_some())
        };
        let (mut one, ok) = from(1);
        assert!(ok);
        p.set(Some(2), Dir::Both, Fault::Cut);
        assert!(!from(2).1, "lane 2 is cut");
        // Lane 1 goes on.
        assert!(round_trip(&mut one, b"more", second).is_some());
        assert!(from(1).1);
        p.set(
            Some(1),
            Dir::ToTarget,
            Fault::Delay(Duration::from_millis(200)),
        );
        let began = Instant::now();
        assert!(round_trip(&mut one, b"slow", second).is_some());
        assert!(began.elapsed() >= Duration::from_millis(200));
        assert_eq!(sentinel_sender(b"GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(
            sentinel_sender(b"POST /x HTTP/1.1\r\nX-Sentinel-Forwarded: 3\r\n\r\n"),
            Some(3)
        );
    }
}
