//! The Raft RPC endpoints peers call: `POST /raft/append`, `/raft/vote` and `/raft/snapshot`,
//! and who may call them.
//!
//! Only peers: a request must carry the cluster's peer token (`--peer-token`) in the
//! `x-sentinel-peer-token` header ([`PEER_TOKEN_HEADER`]); the client token (`Authorization:
//! Bearer`) never opens these routes, and peers do not need it. A node without a peer token (a
//! single node) serves none of them (404 `unknown_route`). Refusals are JSON errors with a
//! stable code, as on the client routes: 401 `unauthorized` (no peer token, or a wrong one), 403
//! `forbidden` (a client's credentials, or a sender that is not a member of the cluster), 400
//! `invalid_body` (a request openraft must not see).
//!
//! openraft trusts its peers: some values in an RPC make it panic (a term of `u64::MAX`
//! overflows when the node next stands for election, and the vote is persisted, so the node
//! panics again at every restart), others corrupt its log (entries that are not consecutive).
//! Every request is therefore checked before it reaches openraft ([`check_append`],
//! [`check_vote`], [`check_snapshot`]): terms at most [`MAX_TERM`], log indexes at most
//! [`MAX_INDEX`], entries consecutive and in order after `prev_log_id`, memberships well formed,
//! the sender a member of this node's membership. Snapshot chunks are assembled here, not by
//! openraft: a chunk must continue the snapshot being received, the whole is at most
//! [`MAX_SNAPSHOT`] bytes and must be a valid lock state before openraft installs it.
//!
//! A wrong peer token is a misconfiguration: the refusing node warns once per
//! [`WARN_EVERY`] per peer ("peer N sent a wrong peer token"), as the sending node does
//! (`network`), and never floods its log.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};
use openraft::error::{InstallSnapshotError, RaftError, SnapshotMismatch};
use openraft::raft::{
    AppendEntriesRequest, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
};
use openraft::{BasicNode, EntryPayload, LogId, Membership, Snapshot, SnapshotSegmentId, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::network::{
    APPEND_PATH, MAX_RAFT_BODY, PEER_ID_HEADER, PEER_TOKEN_HEADER, SNAPSHOT_PATH, Throttle,
    VOTE_PATH, WARN_EVERY,
};
use super::node::Node;
use super::state::LockState;
use super::{NodeId, TypeConfig};

/// Largest term accepted from a peer: far beyond any real cluster's (a term per election), and
/// far from the overflow of openraft's `term + 1`.
pub const MAX_TERM: u64 = 1 << 62;
/// Largest log index accepted from a peer: a fencing token is `index × 1000 + place`, which
/// must fit in a `u64`, and openraft adds one to indexes.
pub const MAX_INDEX: u64 = 1 << 52;
/// Largest snapshot received. A state of 100,000 locks is tens of MB (about 1 GB with the
/// largest task infos), and the key-value store adds up to its quota (`--kv-quota`, at most
/// [`sentinel_core::kv::MAX_QUOTA`]).
pub const MAX_SNAPSHOT: u64 = 4 << 30;
/// How long a request's body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most nodes a membership may name, and the longest snapshot id and node address.
const MAX_NODES: usize = 16;
const MAX_ID_LEN: usize = 256;

/// What the peer routes share: the node, the warnings' throttle, the snapshot being received.
struct Peers {
    node: Arc<Node>,
    refused: Throttle,
    receiving: tokio::sync::Mutex<Option<Receiving>>,
}

/// A snapshot whose chunks are arriving.
struct Receiving {
    id: String,
    data: Vec<u8>,
}

/// The Raft RPC routes behind the peer token check; none without a peer token.
pub fn router<S: Clone + Send + Sync + 'static>(node: Arc<Node>) -> Router<S> {
    if node.peer.is_none() {
        return Router::new();
    }
    let peers = Arc::new(Peers {
        node,
        refused: Throttle::default(),
        receiving: tokio::sync::Mutex::new(None),
    });
    Router::new()
        .route(APPEND_PATH, post(append))
        .route(VOTE_PATH, post(vote))
        .route(SNAPSHOT_PATH, post(snapshot))
        .route_layer(axum::middleware::from_fn_with_state(
            peers.clone(),
            require_peer_token,
        ))
        .with_state(peers)
}

/// Why a request is refused: a status and a JSON object with a stable `code`.
#[derive(Debug)]
pub struct Refusal {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code.
    pub code: &'static str,
    /// What was wrong.
    pub message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({"code": self.code, "message": self.message});
        (
            self.status,
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body.to_string(),
        )
            .into_response()
    }
}

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
    }
}

fn invalid(message: impl Into<String>) -> Refusal {
    refuse(StatusCode::BAD_REQUEST, "invalid_body", message)
}

/// Only a request with the peer token passes; the rest are refused, and a wrong token is
/// reported (once per [`WARN_EVERY`] per peer).
async fn require_peer_token(
    State(peers): State<Arc<Peers>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(token) = &peers.node.peer else {
        return refuse(StatusCode::NOT_FOUND, "unknown_route", "no peer token").into_response();
    };
    let headers = req.headers();
    if token.accepts(headers.get(PEER_TOKEN_HEADER)) {
        return next.run(req).await;
    }
    if headers.contains_key(PEER_TOKEN_HEADER) {
        // The sender's id is only what it claims: a claim of no member is one key, so made-up
        // ids cannot flood the log either.
        let claimed = headers
            .get(PEER_ID_HEADER)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<NodeId>().ok())
            .filter(|id| members(&peers.node).contains(id));
        if peers.refused.allow(claimed.unwrap_or(0)) {
            match claimed {
                Some(id) => tracing::warn!(
                    "peer {id} sent a wrong peer token: give every node the same --peer-token \
                     (said at most once per {WARN_EVERY:?})"
                ),
                None => tracing::warn!(
                    "a Raft RPC with a wrong peer token, from no member of this cluster (said at \
                     most once per {WARN_EVERY:?})"
                ),
            }
        }
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong peer token: every node of a cluster needs the same --peer-token",
        )
        .into_response();
    }
    if headers.contains_key(AUTHORIZATION) {
        return refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the Raft routes are for the cluster's nodes: they take the peer token \
             (x-sentinel-peer-token), never a client's token",
        )
        .into_response();
    }
    refuse(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "the Raft routes require the cluster's peer token in x-sentinel-peer-token",
    )
    .into_response()
}

/// The ids of this node's membership (voters and learners), or before its log has one, of the
/// members it was started with.
fn members(node: &Node) -> BTreeSet<NodeId> {
    let ids: BTreeSet<NodeId> = node
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .nodes()
        .map(|(id, _)| *id)
        .collect();
    if ids.is_empty() {
        node.initial_members.iter().copied().collect()
    } else {
        ids
    }
}

/// Reads a request's body: at most [`MAX_RAFT_BODY`] bytes, within [`BODY_TIMEOUT`].
async fn read_body(body: Body) -> Result<Bytes, Refusal> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_RAFT_BODY)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than {MAX_RAFT_BODY} bytes"),
        )),
        Err(_) => Err(refuse(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the request body did not arrive within {BODY_TIMEOUT:?}"),
        )),
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body)
        .map_err(|e| invalid(format!("the body is not a valid Raft request: {e}")))
}

/// openraft's result as the answer.
fn answer<T: Serialize>(result: &T) -> Response {
    match serde_json::to_string(result) {
        Ok(s) => (
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            s,
        )
            .into_response(),
        Err(e) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "unavailable",
            e.to_string(),
        )
        .into_response(),
    }
}

fn check_term(what: &str, term: u64) -> Result<(), Refusal> {
    if term > MAX_TERM {
        return Err(invalid(format!(
            "{what} term {term} is beyond the largest accepted, {MAX_TERM}"
        )));
    }
    Ok(())
}

/// A log id within the bounds, of a term no later than the sender's vote.
fn check_log_id(
    what: &str,
    id: Option<&LogId<NodeId>>,
    vote: &Vote<NodeId>,
) -> Result<(), Refusal> {
    let Some(id) = id else { return Ok(()) };
    if id.index > MAX_INDEX {
        return Err(invalid(format!(
            "{what} index {} is beyond the largest accepted, {MAX_INDEX}",
            id.index
        )));
    }
    if id.leader_id.term > vote.leader_id.term {
        return Err(invalid(format!(
            "{what} has term {}, later than the sender's term {}",
            id.leader_id.term, vote.leader_id.term
        )));
    }
    Ok(())
}

/// The sender is a member of this node's cluster.
fn check_member(what: &str, id: NodeId, is_member: &dyn Fn(NodeId) -> bool) -> Result<(), Refusal> {
    if is_member(id) {
        Ok(())
    } else {
        Err(refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{what} {id} is not a member of this cluster"),
        ))
    }
}

/// A membership openraft can work with: one config, or two during a change, none empty, every
/// voter with an address.
fn check_membership(m: &Membership<NodeId, BasicNode>) -> Result<(), Refusal> {
    let configs = m.get_joint_config();
    if configs.is_empty() || configs.len() > 2 || configs.iter().any(BTreeSet::is_empty) {
        return Err(invalid("a membership needs one or two non-empty configs"));
    }
    if m.nodes().count() > MAX_NODES {
        return Err(invalid(format!(
            "a membership names at most {MAX_NODES} nodes"
        )));
    }
    if m.nodes()
        .any(|(id, n)| *id == 0 || n.addr.len() > MAX_ID_LEN)
    {
        return Err(invalid("a membership names node 0, or an address too long"));
    }
    if configs.iter().flatten().any(|id| m.get_node(id).is_none()) {
        return Err(invalid("a membership's voter has no address"));
    }
    Ok(())
}

/// The vote of a leader (append, snapshot): committed, within the bounds, of a member.
fn check_leader_vote(
    vote: &Vote<NodeId>,
    is_member: &dyn Fn(NodeId) -> bool,
) -> Result<(), Refusal> {
    check_term("the vote's", vote.leader_id.term)?;
    if !vote.committed {
        return Err(invalid("a leader's request carries a committed vote"));
    }
    check_member("the leader", vote.leader_id.node_id, is_member)
}

/// An AppendEntries request openraft can take: parsed, and checked as the module says.
pub fn check_append(
    body: &[u8],
    is_member: &dyn Fn(NodeId) -> bool,
) -> Result<AppendEntriesRequest<TypeConfig>, Refusal> {
    let req: AppendEntriesRequest<TypeConfig> = parse(body)?;
    check_leader_vote(&req.vote, is_member)?;
    check_log_id("prev_log_id", req.prev_log_id.as_ref(), &req.vote)?;
    check_log_id("leader_commit", req.leader_commit.as_ref(), &req.vote)?;
    let mut last = req.prev_log_id;
    for (i, entry) in req.entries.iter().enumerate() {
        let id = &entry.log_id;
        check_log_id("an entry's log id", Some(id), &req.vote)?;
        let expected = last.map_or(0, |l| l.index + 1);
        if id.index != expected {
            return Err(invalid(format!(
                "entry {i} has index {}, expected {expected}: entries must be consecutive after \
                 prev_log_id",
                id.index
            )));
        }
        if last.is_some_and(|l| id.leader_id < l.leader_id) {
            return Err(invalid(format!(
                "entry {i} has an older leader than the entry before it"
            )));
        }
        if let EntryPayload::Membership(m) = &entry.payload {
            check_membership(m)?;
        }
        last = Some(*id);
    }
    Ok(req)
}

/// A Vote request openraft can take: a candidate's (uncommitted) vote within the bounds, from a
/// member.
pub fn check_vote(
    body: &[u8],
    is_member: &dyn Fn(NodeId) -> bool,
) -> Result<VoteRequest<NodeId>, Refusal> {
    let req: VoteRequest<NodeId> = parse(body)?;
    check_term("the vote's", req.vote.leader_id.term)?;
    if req.vote.committed {
        return Err(invalid("a candidate's vote is not committed"));
    }
    check_member("the candidate", req.vote.leader_id.node_id, is_member)?;
    check_log_id("last_log_id", req.last_log_id.as_ref(), &req.vote)?;
    Ok(req)
}

/// An InstallSnapshot chunk whose header openraft can take (its offset is checked against the
/// snapshot being received, in [`continue_snapshot`]).
pub fn check_snapshot(
    body: &[u8],
    is_member: &dyn Fn(NodeId) -> bool,
) -> Result<InstallSnapshotRequest<TypeConfig>, Refusal> {
    let req: InstallSnapshotRequest<TypeConfig> = parse(body)?;
    check_leader_vote(&req.vote, is_member)?;
    let meta = &req.meta;
    check_log_id(
        "the snapshot's last_log_id",
        meta.last_log_id.as_ref(),
        &req.vote,
    )?;
    let membership_at = meta.last_membership.log_id().as_ref();
    check_log_id("the snapshot's membership", membership_at, &req.vote)?;
    if membership_at > meta.last_log_id.as_ref() {
        return Err(invalid(
            "the snapshot's membership is later than its last log id",
        ));
    }
    check_membership(meta.last_membership.membership())?;
    if meta.snapshot_id.is_empty() || meta.snapshot_id.len() > MAX_ID_LEN {
        return Err(invalid(format!(
            "a snapshot id has 1 to {MAX_ID_LEN} characters"
        )));
    }
    let end = req.offset.checked_add(req.data.len() as u64);
    if end.is_none_or(|end| end > MAX_SNAPSHOT) {
        return Err(invalid(format!(
            "a snapshot is at most {MAX_SNAPSHOT} bytes"
        )));
    }
    Ok(req)
}

/// Adds a chunk to the snapshot being received: a chunk of a new snapshot starts it at offset 0;
/// one of the same snapshot may repeat earlier bytes (a retry) but leave no gap. The whole
/// snapshot when `done`; the error openraft itself gives for a chunk that does not fit.
fn continue_snapshot(
    receiving: &mut Option<Receiving>,
    req: &InstallSnapshotRequest<TypeConfig>,
) -> Result<Option<Vec<u8>>, InstallSnapshotError> {
    let id = &req.meta.snapshot_id;
    let fits = match receiving {
        Some(r) if &r.id == id => req.offset <= r.data.len() as u64,
        _ => req.offset == 0,
    };
    if !fits {
        let expect = match receiving {
            Some(r) if &r.id == id => r.data.len() as u64,
            _ => 0,
        };
        return Err(InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
            expect: SnapshotSegmentId {
                id: id.clone(),
                offset: expect,
            },
            got: SnapshotSegmentId {
                id: id.clone(),
                offset: req.offset,
            },
        }));
    }
    if req.offset == 0 {
        *receiving = Some(Receiving {
            id: id.clone(),
            data: Vec::new(),
        });
    }
    let Some(r) = receiving.as_mut() else {
        return Ok(None);
    };
    // `offset` is at most the length (checked above) and at most MAX_SNAPSHOT.
    r.data.truncate(req.offset as usize);
    r.data.extend_from_slice(&req.data);
    if req.done {
        return Ok(receiving.take().map(|r| r.data));
    }
    Ok(None)
}

async fn append(State(peers): State<Arc<Peers>>, body: Body) -> Response {
    let members = members(&peers.node);
    let req = match read_body(body)
        .await
        .and_then(|b| check_append(&b, &|id| members.contains(&id)))
    {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    answer(&peers.node.raft.append_entries(req).await)
}

async fn vote(State(peers): State<Arc<Peers>>, body: Body) -> Response {
    let members = members(&peers.node);
    let req = match read_body(body)
        .await
        .and_then(|b| check_vote(&b, &|id| members.contains(&id)))
    {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    answer(&peers.node.raft.vote(req).await)
}

type SnapshotResult =
    Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>;

async fn snapshot(State(peers): State<Arc<Peers>>, body: Body) -> Response {
    let members = members(&peers.node);
    let req = match read_body(body)
        .await
        .and_then(|b| check_snapshot(&b, &|id| members.contains(&id)))
    {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let raft = &peers.node.raft;
    let my_vote = raft.metrics().borrow().vote;
    // A chunk of an older leader is answered with this node's vote, as openraft does, so that
    // its sender steps down.
    if req.vote < my_vote {
        return answer(&SnapshotResult::Ok(InstallSnapshotResponse {
            vote: my_vote,
        }));
    }
    let mut receiving = peers.receiving.lock().await;
    let data = match continue_snapshot(&mut receiving, &req) {
        Ok(Some(data)) => data,
        Ok(None) => {
            // openraft sees only the last chunk, so the chunks before it must also do what a
            // heartbeat does: show the follower that its leader lives. Otherwise a transfer
            // longer than the election timeout makes the follower stand for election, which
            // deposes the leader and starts the transfer again, for ever. An AppendEntries with
            // no entries and no previous entry changes no log; it only accepts the leader's vote.
            let alive = raft
                .append_entries(AppendEntriesRequest {
                    vote: req.vote,
                    prev_log_id: None,
                    entries: Vec::new(),
                    leader_commit: None,
                })
                .await;
            let vote = match alive {
                Ok(_) => raft.metrics().borrow().vote,
                Err(RaftError::Fatal(e)) => {
                    return answer(&SnapshotResult::Err(RaftError::Fatal(e)));
                }
                Err(RaftError::APIError(never)) => match never {},
            };
            return answer(&SnapshotResult::Ok(InstallSnapshotResponse { vote }));
        }
        Err(e) => return answer(&SnapshotResult::Err(RaftError::APIError(e))),
    };
    // A snapshot openraft would fail to install stops the node: check it first (off the
    // runtime's threads: a large state takes a while to parse).
    let (checked, data) =
        match tokio::task::spawn_blocking(move || (LockState::from_json(&data).map(|_| ()), data))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "unavailable",
                    e.to_string(),
                )
                .into_response();
            }
        };
    if let Err(e) = checked {
        return invalid(format!("the snapshot is not a valid lock state: {e}")).into_response();
    }
    let snapshot = Snapshot {
        meta: req.meta,
        snapshot: Box::new(std::io::Cursor::new(data)),
    };
    let result: SnapshotResult = raft
        .install_full_snapshot(req.vote, snapshot)
        .await
        .map(|r| InstallSnapshotResponse { vote: r.vote })
        .map_err(RaftError::Fatal);
    answer(&result)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openraft::{CommittedLeaderId, Entry, LeaderId};
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;
    use crate::state::Batch;

    fn is_member(id: NodeId) -> bool {
        (1..=3).contains(&id)
    }

    fn log_id(term: u64, node: NodeId, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    fn membership() -> Membership<NodeId, BasicNode> {
        let nodes: BTreeMap<NodeId, BasicNode> = (1..=3)
            .map(|id| (id, BasicNode::new(format!("127.0.0.1:900{id}"))))
            .collect();
        Membership::new(vec![(1..=3).collect()], nodes)
    }

    /// A leader's append of three entries from index 0 (the first a membership), as JSON.
    fn valid_append() -> Value {
        let entries: Vec<Entry<TypeConfig>> = vec![
            Entry {
                log_id: log_id(1, 1, 0),
                payload: EntryPayload::Membership(membership()),
            },
            Entry {
                log_id: log_id(2, 1, 1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(2, 1, 2),
                payload: EntryPayload::Normal(Batch(Vec::new())),
            },
        ];
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: Vote {
                leader_id: LeaderId::new(2, 1),
                committed: true,
            },
            prev_log_id: None,
            entries,
            leader_commit: Some(log_id(1, 1, 0)),
        };
        serde_json::to_value(&req).unwrap()
    }

    fn append_of(v: &Value) -> Result<AppendEntriesRequest<TypeConfig>, Refusal> {
        check_append(v.to_string().as_bytes(), &is_member)
    }

    fn refused(r: Result<impl std::fmt::Debug, Refusal>) -> (u16, &'static str) {
        let e = r.unwrap_err();
        (e.status.as_u16(), e.code)
    }

    #[test]
    fn a_leaders_append_passes() {
        let req = append_of(&valid_append()).unwrap();
        assert_eq!(req.entries.len(), 3);
    }

    #[test]
    fn what_openraft_would_panic_on_is_refused() {
        let bad = |edit: &dyn Fn(&mut Value)| {
            let mut v = valid_append();
            edit(&mut v);
            refused(append_of(&v))
        };
        let invalid = (400, "invalid_body");
        assert_eq!(
            bad(&|v| v["vote"]["leader_id"]["term"] = u64::MAX.into()),
            invalid
        );
        assert_eq!(
            bad(&|v| v["vote"]["leader_id"]["term"] = (MAX_TERM + 1).into()),
            invalid
        );
        assert_eq!(bad(&|v| v["vote"]["committed"] = false.into()), invalid);
        assert_eq!(
            bad(&|v| v["vote"]["leader_id"]["node_id"] = 4.into()),
            (403, "forbidden")
        );
        // Not consecutive: a gap, a repeat, an index that does not follow prev_log_id.
        assert_eq!(
            bad(&|v| v["entries"][2]["log_id"]["index"] = 3.into()),
            invalid
        );
        assert_eq!(
            bad(&|v| v["entries"][2]["log_id"]["index"] = 1.into()),
            invalid
        );
        assert_eq!(
            bad(&|v| v["prev_log_id"] = serde_json::to_value(log_id(1, 1, 5)).unwrap()),
            invalid
        );
        // Log ids beyond the bounds, or of a term later than the leader's.
        assert_eq!(
            bad(&|v| v["leader_commit"] = serde_json::to_value(log_id(1, 1, u64::MAX)).unwrap()),
            invalid
        );
        assert_eq!(
            bad(&|v| v["entries"][1]["log_id"]["leader_id"]["term"] = 3.into()),
            invalid
        );
        // A leader older than the entry's before it.
        assert_eq!(
            bad(&|v| v["entries"][2]["log_id"]["leader_id"]["term"] = 1.into()),
            invalid
        );
        // A membership openraft cannot work with.
        assert_eq!(
            bad(&|v| v["entries"][0]["payload"]["Membership"]["configs"] = serde_json::json!([])),
            invalid
        );
        assert_eq!(
            bad(&|v| v["entries"][0]["payload"]["Membership"]["configs"] =
                serde_json::json!([[1, 7]])),
            invalid
        );
        assert_eq!(bad(&|v| *v = serde_json::json!({"vote": 1})), invalid);
    }

    #[test]
    fn votes_are_a_members_within_the_bounds() {
        let vote = |term: u64, node: NodeId, committed: bool, last: Option<LogId<NodeId>>| {
            let v = VoteRequest::new(
                Vote {
                    leader_id: LeaderId::new(term, node),
                    committed,
                },
                last,
            );
            check_vote(serde_json::to_string(&v).unwrap().as_bytes(), &is_member)
        };
        assert!(vote(5, 2, false, Some(log_id(4, 1, 10))).is_ok());
        assert_eq!(
            refused(vote(u64::MAX, 2, false, None)),
            (400, "invalid_body")
        );
        assert_eq!(refused(vote(5, 2, true, None)), (400, "invalid_body"));
        assert_eq!(refused(vote(5, 9, false, None)), (403, "forbidden"));
        assert_eq!(
            refused(vote(5, 2, false, Some(log_id(6, 1, 10)))),
            (400, "invalid_body")
        );
        assert_eq!(
            refused(vote(5, 2, false, Some(log_id(4, 1, MAX_INDEX + 1)))),
            (400, "invalid_body")
        );
    }

    fn chunk(id: &str, offset: u64, data: &[u8], done: bool) -> InstallSnapshotRequest<TypeConfig> {
        InstallSnapshotRequest {
            vote: Vote {
                leader_id: LeaderId::new(2, 1),
                committed: true,
            },
            meta: openraft::SnapshotMeta {
                last_log_id: Some(log_id(2, 1, 10)),
                last_membership: openraft::StoredMembership::new(
                    Some(log_id(1, 1, 0)),
                    membership(),
                ),
                snapshot_id: id.to_string(),
            },
            offset,
            data: data.to_vec(),
            done,
        }
    }

    #[test]
    fn snapshot_chunks_must_continue_the_snapshot_received() {
        let ok = |c: &InstallSnapshotRequest<TypeConfig>| {
            check_snapshot(serde_json::to_string(c).unwrap().as_bytes(), &is_member)
        };
        assert!(ok(&chunk("s1", 0, b"abc", false)).is_ok());
        assert_eq!(
            refused(ok(&chunk("s1", u64::MAX, b"abc", false))),
            (400, "invalid_body")
        );
        assert_eq!(
            refused(ok(&chunk("s1", MAX_SNAPSHOT, b"a", false))),
            (400, "invalid_body")
        );
        assert_eq!(
            refused(ok(&chunk("", 0, b"a", false))),
            (400, "invalid_body")
        );

        let mut receiving = None;
        // A new snapshot starts at 0.
        assert!(continue_snapshot(&mut receiving, &chunk("s1", 3, b"abc", false)).is_err());
        assert_eq!(
            continue_snapshot(&mut receiving, &chunk("s1", 0, b"abc", false)).unwrap(),
            None
        );
        // No gap; a repeat (a retry) is fine.
        assert!(continue_snapshot(&mut receiving, &chunk("s1", 4, b"def", false)).is_err());
        assert_eq!(
            continue_snapshot(&mut receiving, &chunk("s1", 3, b"def", false)).unwrap(),
            None
        );
        assert_eq!(
            continue_snapshot(&mut receiving, &chunk("s1", 3, b"de", false)).unwrap(),
            None
        );
        assert_eq!(
            continue_snapshot(&mut receiving, &chunk("s1", 5, b"f", true)).unwrap(),
            Some(b"abcdef".to_vec())
        );
        assert!(receiving.is_none());
        // Another snapshot at a later offset does not fit.
        assert!(continue_snapshot(&mut receiving, &chunk("s2", 6, b"g", true)).is_err());
    }

    /// Numbers that make openraft overflow, and ordinary ones.
    fn number() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::from(u64::MAX)),
            Just(Value::from(u64::MAX - 1)),
            Just(Value::from(MAX_TERM + 1)),
            Just(Value::from(MAX_INDEX + 1)),
            Just(Value::from(0)),
            Just(Value::from(-1)),
            Just(Value::from(1.5)),
            Just(Value::Null),
            Just(Value::from("1")),
            (0u64..8).prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
        ]
    }

    /// Every number's place in a JSON value, as a path of keys and indexes.
    fn number_paths(v: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        match v {
            Value::Number(_) | Value::Bool(_) | Value::Null => out.push(at.clone()),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    at.push(i.to_string());
                    number_paths(item, at, out);
                    at.pop();
                }
            }
            Value::Object(map) => {
                for (k, item) in map {
                    at.push(k.clone());
                    number_paths(item, at, out);
                    at.pop();
                }
            }
            Value::String(_) => {}
        }
    }

    fn at_path<'v>(v: &'v mut Value, path: &[String]) -> &'v mut Value {
        path.iter().fold(v, |v, k| match v {
            Value::Array(items) => &mut items[k.parse::<usize>().unwrap()],
            _ => &mut v[k.as_str()],
        })
    }

    /// What every request that passes the checks satisfies.
    fn assert_sound(req: &AppendEntriesRequest<TypeConfig>) {
        assert!(req.vote.committed && req.vote.leader_id.term <= MAX_TERM);
        assert!(is_member(req.vote.leader_id.node_id));
        let mut last = req.prev_log_id;
        for e in &req.entries {
            assert!(e.log_id.index <= MAX_INDEX);
            assert!(e.log_id.leader_id.term <= req.vote.leader_id.term);
            assert_eq!(e.log_id.index, last.map_or(0, |l| l.index + 1));
            assert!(last.is_none_or(|l| l.leader_id <= e.log_id.leader_id));
            last = Some(e.log_id);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Mutated appends (any number replaced, entries dropped or repeated) never panic the
        /// checks, and what passes them is sound.
        #[test]
        fn mutated_appends_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), number()), 1..6),
            shuffle in any::<Option<(prop::sample::Index, prop::sample::Index)>>(),
        ) {
            let mut v = valid_append();
            let mut paths = Vec::new();
            number_paths(&v, &mut Vec::new(), &mut paths);
            for (which, value) in edits {
                let path = which.get(&paths).clone();
                *at_path(&mut v, &path) = value;
            }
            if let Some((a, b)) = shuffle
                && let Value::Array(entries) = &mut v["entries"]
            {
                let (a, b) = (a.index(entries.len()), b.index(entries.len()));
                let copy = entries[a].clone();
                entries[b] = copy;
            }
            if let Ok(req) = append_of(&v) {
                assert_sound(&req);
            }
            let text = v.to_string();
            let _ = check_vote(text.as_bytes(), &is_member);
            let _ = check_snapshot(text.as_bytes(), &is_member);
        }

        /// Arbitrary bytes, and arbitrary JSON texts cut short, never panic the checks.
        #[test]
        fn arbitrary_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), cut in any::<prop::sample::Index>()) {
            let text = valid_append().to_string().into_bytes();
            let cut_short = &text[..cut.index(text.len() + 1)];
            for body in [bytes.as_slice(), cut_short] {
                let _ = check_append(body, &is_member);
                let _ = check_vote(body, &is_member);
                let _ = check_snapshot(body, &is_member);
            }
        }
    }
}
