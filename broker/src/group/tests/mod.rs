//! Flow tests of the coordinator: real glommio executor, in-memory group log, manual clock.
//! Tests wait on conditions (a member is awaiting, a task finished), never on wall time.

mod compact;
mod measure;
mod membership;
mod offsets;
mod wire;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    GroupId, HeartbeatRequest, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::timers::Notify;
use super::{GroupConfig, GroupCoordinator, GroupLog, GroupLogError, ManualClock};

pub(super) const SESSION_MS: i32 = 10_000;
pub(super) const REBALANCE_MS: i32 = 30_000;
pub(super) const T0: u64 = 1_700_000_000_000;

/// In-memory group log: keeps every appended batch from its log start; can be told to fail,
/// or to hold appends until released (to observe what happens before an append is durable).
#[derive(Default, Clone)]
pub(super) struct MemLog {
    pub batches: Rc<RefCell<Vec<Bytes>>>,
    pub fail: Rc<Cell<bool>>,
    pub held: Rc<Cell<bool>>,
    pub release: Rc<Notify>,
    pub waiting: Rc<Cell<usize>>,
    /// The next this many appends take their place in the log at once but resolve only when
    /// released (as the engine orders a batch when appended and acknowledges it once durable).
    pub hold_after_push: Rc<Cell<usize>>,
    /// Offset of `batches[0]`: batches are numbered, one offset each, from the log start.
    pub start: Rc<Cell<u64>>,
    /// What `retained_bytes` answers (set by tests).
    pub retained: Rc<Cell<u64>>,
}

impl GroupLog for MemLog {
    async fn append(&self, batch: Bytes) -> Result<u64, GroupLogError> {
        while self.held.get() {
            self.waiting.set(self.waiting.get() + 1);
            self.release.notified().await;
            self.waiting.set(self.waiting.get() - 1);
        }
        if self.fail.get() {
            return Err(GroupLogError::Poisoned);
        }
        let offset = {
            let mut batches = self.batches.borrow_mut();
            batches.push(batch);
            self.start.get() + batches.len() as u64 - 1
        };
        if self.hold_after_push.get() > 0 {
            self.hold_after_push.set(self.hold_after_push.get() - 1);
            self.waiting.set(self.waiting.get() + 1);
            self.release.notified().await;
            self.waiting.set(self.waiting.get() - 1);
        }
        Ok(offset)
    }

    /// Drops the batches below `offset` (each batch is one offset here).
    fn advance_start(&self, offset: u64) -> Result<u64, GroupLogError> {
        let start = self.start.get();
        let end = start + self.batches.borrow().len() as u64;
        let to = offset.clamp(start, end);
        self.batches.borrow_mut().drain(..(to - start) as usize);
        self.start.set(to);
        Ok(to)
    }

    fn retained_bytes(&self) -> u64 {
        self.retained.get()
    }
}

pub(super) type Coord = Rc<GroupCoordinator<MemLog>>;

pub(super) struct Harness {
    pub coord: Coord,
    pub clock: Rc<ManualClock>,
    pub log: MemLog,
}

pub(super) fn config(initial_delay_ms: u64) -> GroupConfig {
    GroupConfig {
        group_min_session_timeout_ms: 1000,
        group_max_session_timeout_ms: 60_000,
        group_initial_rebalance_delay_ms: initial_delay_ms,
        max_groups: 10,
        max_members_per_group: 5,
        node_id: 1,
        host: "broker.test".into(),
        port: 9092,
        compact_retained_bytes: 1 << 20,
    }
}

pub(super) fn harness(config: GroupConfig) -> Harness {
    let clock = Rc::new(ManualClock::new(T0));
    let log = MemLog::default();
    let coord = Rc::new(GroupCoordinator::with_clock(
        config,
        log.clone(),
        clock.clone(),
    ));
    Harness { coord, clock, log }
}

/// Runs an async test body on a glommio executor (io_memory under the 8 MiB memlock limit).
pub(super) fn run<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(body)
        .expect("executor starts")
        .join()
        .expect("test body panicked");
}

/// Yields until `cond` holds; fails the test if it never does.
pub(super) async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        futures_lite::future::yield_now().await;
    }
    panic!("condition never held: {what}");
}

pub(super) fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

pub(super) fn join_req(group: &str, member: &str, protocols: &[(&str, &[u8])]) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_member_id(s(member))
        .with_session_timeout_ms(SESSION_MS)
        .with_rebalance_timeout_ms(REBALANCE_MS)
        .with_protocol_type(s("consumer"))
        .with_protocols(
            protocols
                .iter()
                .map(|(n, m)| {
                    JoinGroupRequestProtocol::default()
                        .with_name(s(n))
                        .with_metadata(Bytes::copy_from_slice(m))
                })
                .collect(),
        )
}

pub(super) const RANGE: &[(&str, &[u8])] = &[("range", b"sub")];

/// Starts a JoinGroup (v5) as its own task.
pub(super) fn spawn_join(c: &Coord, req: JoinGroupRequest) -> glommio::Task<JoinGroupResponse> {
    let c = c.clone();
    glommio::spawn_local(async move { c.join_group(req, 5, "client", "/127.0.0.1").await })
}

/// A v5 member's first JoinGroup: the MEMBER_ID_REQUIRED round trip, then the real join, as a
/// task. Returns the member id and the task.
pub(super) async fn join_new(c: &Coord, group: &str) -> (String, glommio::Task<JoinGroupResponse>) {
    join_new_with(c, group, RANGE).await
}

/// `join_new` offering `protocols`.
pub(super) async fn join_new_with(
    c: &Coord,
    group: &str,
    protocols: &[(&str, &[u8])],
) -> (String, glommio::Task<JoinGroupResponse>) {
    let first = c
        .join_group(join_req(group, "", protocols), 5, "client", "/127.0.0.1")
        .await;
    assert_eq!(first.error_code, 79, "MEMBER_ID_REQUIRED expected");
    let id = first.member_id.to_string();
    assert!(id.starts_with("client-"), "{id}");
    (id.clone(), spawn_join(c, join_req(group, &id, protocols)))
}

pub(super) fn awaiting_join(c: &Coord, group: &str, member: &str) -> bool {
    let inner = c.inner.borrow();
    inner
        .groups
        .get(group)
        .and_then(|g| g.members.get(member))
        .is_some_and(|m| m.join_tx.is_some())
}

pub(super) fn sync_req(
    group: &str,
    member: &str,
    generation: i32,
    assign: &[(&str, &[u8])],
) -> SyncGroupRequest {
    SyncGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_member_id(s(member))
        .with_generation_id(generation)
        .with_assignments(
            assign
                .iter()
                .map(|(m, a)| {
                    SyncGroupRequestAssignment::default()
                        .with_member_id(s(m))
                        .with_assignment(Bytes::copy_from_slice(a))
                })
                .collect(),
        )
}

pub(super) fn spawn_sync(c: &Coord, req: SyncGroupRequest) -> glommio::Task<SyncGroupResponse> {
    let c = c.clone();
    glommio::spawn_local(async move { c.sync_group(req, 5).await })
}

pub(super) fn heartbeat(c: &Coord, group: &str, member: &str, generation: i32) -> i16 {
    let req = HeartbeatRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_member_id(s(member))
        .with_generation_id(generation);
    c.heartbeat(req, 4).error_code
}

pub(super) async fn leave(c: &Coord, group: &str, members: &[&str]) -> Vec<i16> {
    let req = LeaveGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_members(
            members
                .iter()
                .map(|m| MemberIdentity::default().with_member_id(s(m)))
                .collect(),
        );
    let resp = c.leave_group(req, 5).await;
    assert_eq!(resp.error_code, 0);
    resp.members.iter().map(|m| m.error_code).collect()
}

/// A Stable group of `n` members at generation 1 (initial delay holds the join open until all
/// `n` joined). Returns the member ids, leader first.
pub(super) async fn stable_group(h: &Harness, group: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (id, task) = join_new(&h.coord, group).await;
        let (c, g, i) = (h.coord.clone(), group.to_owned(), id.clone());
        until("member awaits join", move || awaiting_join(&c, &g, &i)).await;
        ids.push(id);
        tasks.push(task);
    }
    h.clock
        .advance_ms(h.coord.config().group_initial_rebalance_delay_ms);
    h.coord.tick();
    let mut responses = Vec::new();
    for t in tasks {
        responses.push(t.await);
    }
    let generation = responses[0].generation_id;
    assert!(responses
        .iter()
        .all(|r| r.error_code == 0 && r.generation_id == generation));
    assert_eq!(responses[0].leader.as_str(), ids[0], "first joiner leads");
    let assignments: Vec<(String, Vec<u8>)> = ids
        .iter()
        .map(|id| (id.clone(), format!("assign-{id}").into_bytes()))
        .collect();
    let mut syncs = Vec::new();
    for id in &ids[1..] {
        syncs.push(spawn_sync(&h.coord, sync_req(group, id, generation, &[])));
    }
    let pairs: Vec<(&str, &[u8])> = assignments
        .iter()
        .map(|(m, a)| (m.as_str(), a.as_slice()))
        .collect();
    let leader = h
        .coord
        .sync_group(sync_req(group, &ids[0], generation, &pairs), 5)
        .await;
    assert_eq!(leader.error_code, 0);
    assert_eq!(leader.assignment.as_ref(), assignments[0].1.as_slice());
    for (i, t) in syncs.into_iter().enumerate() {
        let r = t.await;
        assert_eq!(
            (r.error_code, r.assignment.as_ref()),
            (0, assignments[i + 1].1.as_slice())
        );
    }
    ids
}
