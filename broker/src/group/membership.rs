//! JoinGroup, SyncGroup, Heartbeat and LeaveGroup: request validation, the state machine
//! calls, and the shaping of answers per request version.
//!
//! A JoinGroup or SyncGroup that must wait (for the other members, or for the leader) registers
//! a one-slot channel on its member and awaits it outside any borrow of the coordinator state;
//! whoever completes the phase sends every waiter its answer.

use bytes::Bytes;
use glommio::channels::local_channel::{self, LocalReceiver};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::codec::{self, GroupValue};
use super::state::{
    Group, GroupState, JoinOutcome, Member, SyncOutcome, FENCED_INSTANCE_ID, NONE,
    REBALANCE_IN_PROGRESS, UNKNOWN_MEMBER_ID,
};
use super::{
    GroupCoordinator, GroupLog, MAX_ASSIGNMENT_BYTES, MAX_GROUP_ID_BYTES, MAX_MEMBER_ID_BYTES,
    MAX_PROTOCOLS_PER_MEMBER, MAX_PROTOCOL_METADATA_BYTES, MAX_PROTOCOL_NAME_BYTES,
};

const ILLEGAL_GENERATION: i16 = ResponseError::IllegalGeneration.code();
const INCONSISTENT_GROUP_PROTOCOL: i16 = ResponseError::InconsistentGroupProtocol.code();
const INVALID_GROUP_ID: i16 = ResponseError::InvalidGroupId.code();
const INVALID_SESSION_TIMEOUT: i16 = ResponseError::InvalidSessionTimeout.code();
const INVALID_REQUEST: i16 = ResponseError::InvalidRequest.code();
const MEMBER_ID_REQUIRED: i16 = ResponseError::MemberIdRequired.code();
const GROUP_MAX_SIZE_REACHED: i16 = ResponseError::GroupMaxSizeReached.code();
pub(crate) const COORDINATOR_NOT_AVAILABLE: i16 = ResponseError::CoordinatorNotAvailable.code();

/// The JoinGroup version from which a new member must come back with the id it was given.
const MEMBER_ID_REQUIRED_MIN_VERSION: i16 = 4;

/// An answer now, or a channel the answer will arrive on.
enum Step<T> {
    Done(T),
    Wait(LocalReceiver<T>),
}

/// What the leader's SyncGroup must do after validation.
enum SyncStep {
    Done(SyncOutcome),
    Wait(LocalReceiver<SyncOutcome>),
    /// Make the group record durable, then finish generation `generation`.
    Persist {
        batch: Bytes,
        record: GroupValue,
        rx: LocalReceiver<SyncOutcome>,
    },
}

/// A JoinGroup's fields once validated and copied out of the request.
struct JoinArgs<'a> {
    group_id: &'a str,
    member_id: &'a str,
    instance_id: Option<&'a str>,
    protocol_type: &'a str,
    protocols: Vec<(String, Bytes)>,
    session_timeout_ms: u64,
    rebalance_timeout_ms: u64,
    version: i16,
    client_id: &'a str,
    client_host: &'a str,
}

impl<L: GroupLog> GroupCoordinator<L> {
    pub async fn join_group(
        &self,
        req: JoinGroupRequest,
        version: i16,
        client_id: &str,
        client_host: &str,
    ) -> JoinGroupResponse {
        let member_id = req.member_id.as_str().to_owned();
        let outcome = match self.validate_join(&req, version, client_id, client_host) {
            Err(code) => JoinOutcome::error(code, &member_id),
            Ok(args) => match self.join_now(args) {
                Step::Done(outcome) => outcome,
                Step::Wait(rx) => rx
                    .recv()
                    .await
                    .unwrap_or_else(|| JoinOutcome::error(COORDINATOR_NOT_AVAILABLE, &member_id)),
            },
        };
        join_response(outcome, version)
    }

    pub async fn sync_group(&self, req: SyncGroupRequest, version: i16) -> SyncGroupResponse {
        let outcome = match self.sync_now(&req) {
            SyncStep::Done(outcome) => outcome,
            SyncStep::Wait(rx) => wait_sync(rx).await,
            SyncStep::Persist { batch, record, rx } => {
                let generation = record.generation;
                let stored = self.append(batch, 1).await;
                match &stored {
                    Ok(_) => self.note_group_stored(req.group_id.as_str(), record),
                    Err(e) => {
                        tracing::warn!(group = %req.group_id.as_str(), error = %e, "group record not stored")
                    }
                }
                self.finish_sync(req.group_id.as_str(), generation, stored.is_ok());
                wait_sync(rx).await
            }
        };
        sync_response(outcome, version)
    }

    pub fn heartbeat(&self, req: HeartbeatRequest, _version: i16) -> HeartbeatResponse {
        let code = self.heartbeat_code(&req);
        HeartbeatResponse::default().with_error_code(code)
    }

    pub async fn leave_group(&self, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        let leaving: Vec<(String, Option<String>)> = if version >= 3 {
            req.members
                .iter()
                .map(|m| {
                    (
                        m.member_id.to_string(),
                        m.group_instance_id.as_ref().map(|i| i.to_string()),
                    )
                })
                .collect()
        } else {
            vec![(req.member_id.to_string(), None)]
        };
        let group_id = req.group_id.as_str();
        let (top, codes) = self.leave_codes(group_id, &leaving);
        let mut response = LeaveGroupResponse::default();
        if version >= 3 {
            response.error_code = top;
            response.members = leaving
                .into_iter()
                .zip(codes)
                .map(|((member_id, instance_id), code)| {
                    MemberResponse::default()
                        .with_member_id(StrBytes::from_string(member_id))
                        .with_group_instance_id(instance_id.map(StrBytes::from_string))
                        .with_error_code(code)
                })
                .collect();
        } else {
            response.error_code = if top != NONE {
                top
            } else {
                codes.first().copied().unwrap_or(NONE)
            };
        }
        response
    }

    fn validate_join<'a>(
        &self,
        req: &'a JoinGroupRequest,
        version: i16,
        client_id: &'a str,
        client_host: &'a str,
    ) -> Result<JoinArgs<'a>, i16> {
        let group_id = req.group_id.as_str();
        if group_id.is_empty() || group_id.len() > MAX_GROUP_ID_BYTES {
            return Err(INVALID_GROUP_ID);
        }
        if req.member_id.len() > MAX_MEMBER_ID_BYTES {
            return Err(UNKNOWN_MEMBER_ID);
        }
        let instance_id = req.group_instance_id.as_deref();
        if instance_id.is_some_and(|i| i.is_empty() || i.len() > MAX_MEMBER_ID_BYTES) {
            return Err(INVALID_REQUEST);
        }
        let config = &self.config;
        let session = req.session_timeout_ms;
        if session < config.group_min_session_timeout_ms
            || session > config.group_max_session_timeout_ms
        {
            return Err(INVALID_SESSION_TIMEOUT);
        }
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return Err(INCONSISTENT_GROUP_PROTOCOL);
        }
        if req.protocol_type.len() > MAX_PROTOCOL_NAME_BYTES
            || req.protocols.len() > MAX_PROTOCOLS_PER_MEMBER
            || req.protocols.iter().any(|p| {
                p.name.len() > MAX_PROTOCOL_NAME_BYTES
                    || p.metadata.len() > MAX_PROTOCOL_METADATA_BYTES
            })
        {
            return Err(INVALID_REQUEST);
        }
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        let rebalance = if version >= 1 && req.rebalance_timeout_ms > 0 {
            req.rebalance_timeout_ms
        } else {
            session
        };
        Ok(JoinArgs {
            group_id,
            member_id: req.member_id.as_str(),
            instance_id,
            protocol_type: req.protocol_type.as_str(),
            protocols: req
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.clone()))
                .collect(),
            session_timeout_ms: session as u64,
            rebalance_timeout_ms: rebalance as u64,
            version,
            client_id,
            client_host,
        })
    }

    fn join_now(&self, args: JoinArgs<'_>) -> Step<JoinOutcome> {
        let now = self.clock.now_ms();
        let mut guard = self.inner.borrow_mut();
        let inner = &mut *guard;
        let group_id = args.group_id;
        if !inner.groups.contains_key(group_id) {
            if !args.member_id.is_empty() {
                return Step::Done(JoinOutcome::error(UNKNOWN_MEMBER_ID, args.member_id));
            }
            if inner.groups.len() >= self.config.max_groups {
                tracing::warn!(group = %group_id, max = self.config.max_groups, "group limit reached");
                return Step::Done(JoinOutcome::error(
                    COORDINATOR_NOT_AVAILABLE,
                    args.member_id,
                ));
            }
            let group = Group::new(group_id, now, self.config.group_initial_rebalance_delay_ms);
            inner.groups.insert(group_id.to_owned(), group);
        }
        let new_id = args
            .member_id
            .is_empty()
            .then(|| inner.next_member_id(args.client_id));
        let Some(group) = inner.groups.get_mut(group_id) else {
            return Step::Done(JoinOutcome::error(
                COORDINATOR_NOT_AVAILABLE,
                args.member_id,
            ));
        };
        let step = match new_id {
            Some(new_id) => self.join_new_member(group, args, new_id, now),
            None => self.join_known_member(group, args, now),
        };
        self.reschedule(inner, group_id);
        step
    }

    fn join_new_member(
        &self,
        group: &mut Group,
        args: JoinArgs<'_>,
        new_id: String,
        now: u64,
    ) -> Step<JoinOutcome> {
        if group.state == GroupState::Dead {
            return Step::Done(JoinOutcome::error(COORDINATOR_NOT_AVAILABLE, ""));
        }
        if !group.supports_protocols(args.protocol_type, &args.protocols) {
            return Step::Done(JoinOutcome::error(INCONSISTENT_GROUP_PROTOCOL, ""));
        }
        let known_static = args
            .instance_id
            .and_then(|i| group.static_members.get(i))
            .cloned();
        if let Some(old_id) = known_static {
            // The static member restarted: it keeps its place under a new id; the old id is
            // fenced. A follower of a Stable group offering the same protocols keeps its
            // assignment without a rebalance (the point of static membership); otherwise the
            // group rebalances.
            let unchanged = group
                .members
                .get(&old_id)
                .is_some_and(|m| m.same_protocols(&args.protocols));
            let was_leader = group.leader.as_deref() == Some(old_id.as_str());
            group.replace_static_member(&old_id, &new_id);
            if group.state == GroupState::Stable && unchanged && !was_leader {
                if let Some(m) = group.members.get_mut(&new_id) {
                    m.session_timeout_ms = args.session_timeout_ms;
                    m.rebalance_timeout_ms = args.rebalance_timeout_ms;
                    m.client_id = args.client_id.to_owned();
                    m.client_host = args.client_host.to_owned();
                    m.session_deadline_ms = now + args.session_timeout_ms;
                }
                return Step::Done(group.current_join_outcome(&new_id));
            }
            let (member, rx) = new_member(&args, &new_id, now);
            group.update_member(&new_id, member, now);
            return Step::Wait(rx);
        }
        if group.size() >= self.config.max_members_per_group {
            return Step::Done(JoinOutcome::error(GROUP_MAX_SIZE_REACHED, ""));
        }
        if args.instance_id.is_none() && args.version >= MEMBER_ID_REQUIRED_MIN_VERSION {
            group
                .pending_members
                .insert(new_id.clone(), now + args.session_timeout_ms);
            return Step::Done(JoinOutcome::error(MEMBER_ID_REQUIRED, &new_id));
        }
        let (member, rx) = new_member(&args, &new_id, now);
        group.add_member(member, args.protocol_type, now);
        Step::Wait(rx)
    }

    fn join_known_member(
        &self,
        group: &mut Group,
        args: JoinArgs<'_>,
        now: u64,
    ) -> Step<JoinOutcome> {
        let member_id = args.member_id;
        let fail = |code| Step::Done(JoinOutcome::error(code, member_id));
        if group.state == GroupState::Dead {
            return fail(COORDINATOR_NOT_AVAILABLE);
        }
        if group.is_fenced(member_id, args.instance_id) {
            return fail(FENCED_INSTANCE_ID);
        }
        if !group.supports_protocols(args.protocol_type, &args.protocols) {
            return fail(INCONSISTENT_GROUP_PROTOCOL);
        }
        if group.pending_members.contains_key(member_id) {
            let (member, rx) = new_member(&args, member_id, now);
            group.add_member(member, args.protocol_type, now);
            return Step::Wait(rx);
        }
        let Some(member) = group.members.get(member_id) else {
            return fail(UNKNOWN_MEMBER_ID);
        };
        let unchanged = member.same_protocols(&args.protocols);
        let is_leader = group.leader.as_deref() == Some(member_id);
        let rejoin_without_rebalance = match group.state {
            GroupState::CompletingRebalance => unchanged,
            GroupState::Stable => unchanged && !is_leader,
            GroupState::PreparingRebalance => false,
            GroupState::Empty | GroupState::Dead => return fail(UNKNOWN_MEMBER_ID),
        };
        if rejoin_without_rebalance {
            return Step::Done(group.current_join_outcome(member_id));
        }
        let (update, rx) = new_member(&args, member_id, now);
        group.update_member(member_id, update, now);
        Step::Wait(rx)
    }

    fn sync_now(&self, req: &SyncGroupRequest) -> SyncStep {
        let now = self.clock.now_ms();
        let group_id = req.group_id.as_str();
        let member_id = req.member_id.as_str();
        let mut guard = self.inner.borrow_mut();
        let inner = &mut *guard;
        let fail = |code| SyncStep::Done(SyncOutcome::error(code));
        if group_id.is_empty() || group_id.len() > MAX_GROUP_ID_BYTES {
            return fail(INVALID_GROUP_ID);
        }
        let Some(group) = inner.groups.get_mut(group_id) else {
            return fail(UNKNOWN_MEMBER_ID);
        };
        if group.state == GroupState::Dead {
            return fail(COORDINATOR_NOT_AVAILABLE);
        }
        if group.is_fenced(member_id, req.group_instance_id.as_deref()) {
            return fail(FENCED_INSTANCE_ID);
        }
        if !group.members.contains_key(member_id) {
            return fail(UNKNOWN_MEMBER_ID);
        }
        if req.generation_id != group.generation {
            return fail(ILLEGAL_GENERATION);
        }
        let type_mismatch = req
            .protocol_type
            .as_ref()
            .is_some_and(|t| Some(t.as_str()) != group.protocol_type.as_deref());
        let name_mismatch = req
            .protocol_name
            .as_ref()
            .is_some_and(|n| Some(n.as_str()) != group.protocol_name.as_deref());
        if type_mismatch || name_mismatch {
            return fail(INCONSISTENT_GROUP_PROTOCOL);
        }
        group.pending_sync.remove(member_id);
        let step = match group.state {
            GroupState::Empty | GroupState::Dead => fail(UNKNOWN_MEMBER_ID),
            GroupState::PreparingRebalance => fail(REBALANCE_IN_PROGRESS),
            GroupState::Stable => {
                let Some(m) = group.members.get_mut(member_id) else {
                    return fail(UNKNOWN_MEMBER_ID);
                };
                m.session_deadline_ms = now + m.session_timeout_ms;
                SyncStep::Done(stable_sync_outcome(group, member_id))
            }
            GroupState::CompletingRebalance => self.sync_completing(group, req, now),
        };
        self.reschedule(inner, group_id);
        step
    }

    /// SyncGroup while the generation waits for its assignment.
    fn sync_completing(&self, group: &mut Group, req: &SyncGroupRequest, now: u64) -> SyncStep {
        let member_id = req.member_id.as_str();
        let is_leader = group.leader.as_deref() == Some(member_id);
        if is_leader && group.persisting.is_none() {
            if req.assignments.len() > group.members.len()
                || req
                    .assignments
                    .iter()
                    .any(|a| a.assignment.len() > MAX_ASSIGNMENT_BYTES)
            {
                return SyncStep::Done(SyncOutcome::error(INVALID_REQUEST));
            }
            let assignments = req
                .assignments
                .iter()
                .filter(|a| group.members.contains_key(a.member_id.as_str()))
                .map(|a| (a.member_id.to_string(), a.assignment.clone()))
                .collect();
            group.persisting = Some((group.generation, assignments));
            let (tx, rx) = local_channel::new_bounded(1);
            if let Some(m) = group.members.get_mut(member_id) {
                m.sync_tx = Some(tx);
            }
            let record = GroupValue {
                generation: group.generation,
                protocol_type: group.protocol_type.clone().unwrap_or_default(),
                protocol_name: group.protocol_name.clone(),
                leader: group.leader.clone(),
                timestamp_ms: now as i64,
            };
            let batch = codec::build_batch(
                &[(
                    codec::group_key(&group.id),
                    Some(codec::group_value(&record)),
                )],
                now as i64,
            );
            return SyncStep::Persist { batch, record, rx };
        }
        let (tx, rx) = local_channel::new_bounded(1);
        if let Some(m) = group.members.get_mut(member_id) {
            m.sync_tx = Some(tx);
        }
        SyncStep::Wait(rx)
    }

    /// The leader's group record is durable: a replay now rebuilds the group from it, so a
    /// compaction must write it (not the in-memory generation, which may run ahead).
    fn note_group_stored(&self, group_id: &str, record: GroupValue) {
        if let Some(group) = self.inner.borrow_mut().groups.get_mut(group_id) {
            group.stored = Some(record);
        }
    }

    /// The group record of `generation` is durable (or failed): hand out the assignment, or
    /// fail the waiters and rebalance. Nothing happens if the generation moved on meanwhile
    /// (the waiters were then already told REBALANCE_IN_PROGRESS).
    fn finish_sync(&self, group_id: &str, generation: i32, stored: bool) {
        let now = self.clock.now_ms();
        let mut guard = self.inner.borrow_mut();
        let inner = &mut *guard;
        let Some(group) = inner.groups.get_mut(group_id) else {
            return;
        };
        let current = group.state == GroupState::CompletingRebalance
            && group
                .persisting
                .as_ref()
                .is_some_and(|(g, _)| *g == generation);
        if !current {
            return;
        }
        let Some((_, mut assignments)) = group.persisting.take() else {
            return;
        };
        if !stored {
            group.fail_sync_waiters(COORDINATOR_NOT_AVAILABLE, now);
            group.prepare_rebalance(now);
            group.maybe_complete_join(now);
        } else {
            group.state = GroupState::Stable;
            for m in group.members.values_mut() {
                m.assignment = assignments.remove(&m.id).unwrap_or_default();
            }
            let ids: Vec<String> = group.members.keys().cloned().collect();
            for id in ids {
                let outcome = stable_sync_outcome(group, &id);
                if let Some(m) = group.members.get_mut(&id) {
                    if let Some(tx) = m.sync_tx.take() {
                        m.session_deadline_ms = now + m.session_timeout_ms;
                        let _ = tx.try_send(outcome);
                    }
                }
            }
        }
        self.reschedule(inner, group_id);
    }

    fn heartbeat_code(&self, req: &HeartbeatRequest) -> i16 {
        let now = self.clock.now_ms();
        let group_id = req.group_id.as_str();
        let member_id = req.member_id.as_str();
        let mut inner = self.inner.borrow_mut();
        if group_id.is_empty() || group_id.len() > MAX_GROUP_ID_BYTES {
            return INVALID_GROUP_ID;
        }
        let Some(group) = inner.groups.get_mut(group_id) else {
            return UNKNOWN_MEMBER_ID;
        };
        if group.state == GroupState::Dead {
            return COORDINATOR_NOT_AVAILABLE;
        }
        if group.is_fenced(member_id, req.group_instance_id.as_deref()) {
            return FENCED_INSTANCE_ID;
        }
        let state = group.state;
        let generation = group.generation;
        let Some(member) = group.members.get_mut(member_id) else {
            return UNKNOWN_MEMBER_ID;
        };
        if req.generation_id != generation {
            return ILLEGAL_GENERATION;
        }
        // A heartbeat only moves the deadline later: the timer heap is not touched.
        member.session_deadline_ms = now + member.session_timeout_ms;
        match state {
            GroupState::Empty | GroupState::Dead => UNKNOWN_MEMBER_ID,
            GroupState::PreparingRebalance => REBALANCE_IN_PROGRESS,
            GroupState::CompletingRebalance | GroupState::Stable => NONE,
        }
    }

    /// Removes each (member id, instance id); returns the top-level code and one per member.
    fn leave_codes(&self, group_id: &str, leaving: &[(String, Option<String>)]) -> (i16, Vec<i16>) {
        let now = self.clock.now_ms();
        let mut guard = self.inner.borrow_mut();
        let inner = &mut *guard;
        if group_id.is_empty() || group_id.len() > MAX_GROUP_ID_BYTES {
            return (INVALID_GROUP_ID, vec![INVALID_GROUP_ID; leaving.len()]);
        }
        let Some(group) = inner.groups.get_mut(group_id) else {
            return (NONE, vec![UNKNOWN_MEMBER_ID; leaving.len()]);
        };
        if group.state == GroupState::Dead {
            return (
                COORDINATOR_NOT_AVAILABLE,
                vec![COORDINATOR_NOT_AVAILABLE; leaving.len()],
            );
        }
        let codes = leaving
            .iter()
            .map(|(member_id, instance_id)| {
                leave_one(group, member_id, instance_id.as_deref(), now)
            })
            .collect();
        self.reschedule(inner, group_id);
        (NONE, codes)
    }
}

fn leave_one(group: &mut Group, member_id: &str, instance_id: Option<&str>, now: u64) -> i16 {
    let target = match instance_id {
        Some(instance) => match group.static_members.get(instance) {
            None => return UNKNOWN_MEMBER_ID,
            Some(owner) if !member_id.is_empty() && owner != member_id => {
                return FENCED_INSTANCE_ID
            }
            Some(owner) => owner.clone(),
        },
        None => member_id.to_owned(),
    };
    if group.pending_members.remove(&target).is_some() {
        group.maybe_complete_join(now);
        return NONE;
    }
    if !group.members.contains_key(&target) {
        return UNKNOWN_MEMBER_ID;
    }
    tracing::debug!(group = %group.id, member = %target, "member left");
    group.remove_member(&target, now);
    NONE
}

fn new_member(args: &JoinArgs<'_>, id: &str, now: u64) -> (Member, LocalReceiver<JoinOutcome>) {
    let (tx, rx) = local_channel::new_bounded(1);
    let member = Member {
        id: id.to_owned(),
        instance_id: args.instance_id.map(str::to_owned),
        client_id: args.client_id.to_owned(),
        client_host: args.client_host.to_owned(),
        session_timeout_ms: args.session_timeout_ms,
        rebalance_timeout_ms: args.rebalance_timeout_ms,
        protocols: args.protocols.clone(),
        assignment: Bytes::new(),
        session_deadline_ms: now + args.session_timeout_ms,
        join_seq: 0,
        join_tx: Some(tx),
        sync_tx: None,
    };
    (member, rx)
}

fn stable_sync_outcome(group: &Group, member_id: &str) -> SyncOutcome {
    SyncOutcome {
        error: NONE,
        assignment: group
            .members
            .get(member_id)
            .map(|m| m.assignment.clone())
            .unwrap_or_default(),
        protocol_type: group.protocol_type.clone(),
        protocol_name: group.protocol_name.clone(),
    }
}

async fn wait_sync(rx: LocalReceiver<SyncOutcome>) -> SyncOutcome {
    rx.recv()
        .await
        .unwrap_or_else(|| SyncOutcome::error(COORDINATOR_NOT_AVAILABLE))
}

/// Shapes a join outcome for `version`: fields a version lacks are left at values its encoder
/// accepts (checked by the encode-every-version test).
fn join_response(o: JoinOutcome, version: i16) -> JoinGroupResponse {
    let members = o
        .members
        .into_iter()
        .map(|m| {
            JoinGroupResponseMember::default()
                .with_member_id(StrBytes::from_string(m.member_id))
                .with_group_instance_id(if version >= 5 {
                    m.instance_id.map(StrBytes::from_string)
                } else {
                    None
                })
                .with_metadata(m.metadata)
        })
        .collect();
    let protocol_name = match (o.protocol_name, version >= 7) {
        (Some(name), _) => Some(StrBytes::from_string(name)),
        (None, true) => None,
        (None, false) => Some(StrBytes::new()),
    };
    JoinGroupResponse::default()
        .with_error_code(o.error)
        .with_generation_id(o.generation)
        .with_protocol_type(if version >= 7 {
            o.protocol_type.map(StrBytes::from_string)
        } else {
            None
        })
        .with_protocol_name(protocol_name)
        .with_leader(StrBytes::from_string(o.leader))
        .with_member_id(StrBytes::from_string(o.member_id))
        .with_members(members)
}

fn sync_response(o: SyncOutcome, version: i16) -> SyncGroupResponse {
    let v5 = version >= 5;
    SyncGroupResponse::default()
        .with_error_code(o.error)
        .with_assignment(o.assignment)
        .with_protocol_type(if v5 {
            o.protocol_type.map(StrBytes::from_string)
        } else {
            None
        })
        .with_protocol_name(if v5 {
            o.protocol_name.map(StrBytes::from_string)
        } else {
            None
        })
}
