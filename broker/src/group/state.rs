//! The state machine of one classic consumer group. Pure: no I/O, time passed in as `now_ms`.
//!
//! ```text
//!            join (first member)                all members rejoined, or rebalance timeout
//!   Empty ───────────────────────► Preparing ───────────────────────────────► Completing
//!     ▲                            Rebalance ◄─── member joins / leaves / ──── Rebalance
//!     │ join completes with        ▲    ▲        times out, leader rejoins        │ leader's
//!     │ no member left             │    └──────────────────────────────┐          │ SyncGroup
//!     └────────────────────────────┘                                   │          ▼ (durable)
//!                                                                      └──────  Stable
//!   Dead: the group was deleted or emptied and swept; it is then removed from the coordinator.
//! ```
//!
//! Invariants: the generation changes only when a join phase completes; a member is awaiting a
//! JoinGroup answer iff it holds a `join_tx`; members awaiting a join or sync answer are not
//! expired by their session timeout (the rebalance and sync deadlines cover them, as in Kafka).

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use glommio::channels::local_channel::LocalSender;
use kafka_protocol::error::ResponseError;

use super::codec::GroupValue;

/// The states of a classic group, named as Kafka names them on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

pub(crate) const NONE: i16 = 0;
pub(crate) const UNKNOWN_MEMBER_ID: i16 = ResponseError::UnknownMemberId.code();
pub(crate) const REBALANCE_IN_PROGRESS: i16 = ResponseError::RebalanceInProgress.code();
pub(crate) const FENCED_INSTANCE_ID: i16 = ResponseError::FencedInstanceId.code();

/// What a member's JoinGroup answers, whatever the request version.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JoinOutcome {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only: every member with its metadata for the chosen protocol.
    pub members: Vec<JoinedMember>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

impl JoinOutcome {
    pub fn error(error: i16, member_id: &str) -> Self {
        JoinOutcome {
            error,
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_owned(),
            members: Vec::new(),
        }
    }
}

/// What a member's SyncGroup answers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SyncOutcome {
    pub error: i16,
    pub assignment: Bytes,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
}

impl SyncOutcome {
    pub fn error(error: i16) -> Self {
        SyncOutcome {
            error,
            assignment: Bytes::new(),
            protocol_type: None,
            protocol_name: None,
        }
    }
}

/// A member as the JoinGroup that created or last updated it described it.
#[derive(Debug)]
pub(crate) struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    /// Offered protocols in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    pub session_deadline_ms: u64,
    /// Order of first join: the first member becomes leader.
    pub join_seq: u64,
    pub join_tx: Option<LocalSender<JoinOutcome>>,
    pub sync_tx: Option<LocalSender<SyncOutcome>>,
}

impl Member {
    pub fn awaiting(&self) -> bool {
        self.join_tx.is_some() || self.sync_tx.is_some()
    }

    pub fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    pub fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|(n, _)| n == protocol)
    }

    /// Same protocols, same metadata, same order: a JoinGroup that changes nothing.
    pub fn same_protocols(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }
}

/// A committed offset in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_timestamp_ms: u64,
    /// Per-commit retention (OffsetCommit v2-v4); `None` = the group's retention rule.
    pub expire_timestamp_ms: Option<u64>,
    /// Log order of the write that stored it (see `Inner::write_seq`).
    pub write_seq: u64,
}

/// One group.
#[derive(Debug)]
pub(crate) struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    pub members: HashMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not yet used: id → expiry.
    pub pending_members: HashMap<String, u64>,
    /// group.instance.id → member id of static members.
    pub static_members: HashMap<String, String>,
    /// PreparingRebalance: when the join phase completes even if members are missing.
    pub join_deadline_ms: Option<u64>,
    /// The join phase of a new group, held open for `initial_delay_ms` after each new member
    /// (at most the rebalance timeout after it started), so members starting together share
    /// the first generation.
    pub initial_rebalance: bool,
    pub rebalance_started_ms: u64,
    pub initial_delay_ms: u64,
    /// Members of this generation that have not sent SyncGroup yet, and until when they may.
    pub pending_sync: HashSet<String>,
    pub sync_deadline_ms: Option<u64>,
    /// The leader's assignment of this generation while it is being made durable.
    pub persisting: Option<(i32, HashMap<String, Bytes>)>,
    pub offsets: BTreeMap<String, BTreeMap<i32, CommittedOffset>>,
    /// The group record a replay of the log rebuilds this group from: the last one made
    /// durable (replayed, or written by a leader's SyncGroup). `generation` runs ahead of it
    /// between a join phase and its SyncGroup; compaction writes this one, never `generation`.
    pub stored: Option<GroupValue>,
    /// When the group last became Empty (offset retention counts from here).
    pub empty_since_ms: u64,
    /// Earliest deadline of this group queued in the coordinator's timer heap.
    pub timer_at_ms: Option<u64>,
    next_join_seq: u64,
}

impl Group {
    pub fn new(id: &str, now_ms: u64, initial_delay_ms: u64) -> Self {
        Group {
            id: id.to_owned(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: HashMap::new(),
            pending_members: HashMap::new(),
            static_members: HashMap::new(),
            join_deadline_ms: None,
            initial_rebalance: false,
            rebalance_started_ms: now_ms,
            initial_delay_ms,
            pending_sync: HashSet::new(),
            sync_deadline_ms: None,
            persisting: None,
            offsets: BTreeMap::new(),
            stored: None,
            empty_since_ms: now_ms,
            timer_at_ms: None,
            next_join_seq: 0,
        }
    }

    /// Members plus ids handed out and not yet used: what `max_members_per_group` bounds.
    pub fn size(&self) -> usize {
        self.members.len() + self.pending_members.len()
    }

    /// The instance id is registered to another member id: the caller is a zombie.
    pub fn is_fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        instance_id
            .and_then(|i| self.static_members.get(i))
            .is_some_and(|owner| owner != member_id)
    }

    /// Whether a member offering `protocol_type` and `protocols` may join.
    pub fn supports_protocols(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols
                .iter()
                .any(|(name, _)| self.members.values().all(|m| m.supports(name)))
    }

    fn rebalance_timeout_ms(&self) -> u64 {
        self.members
            .values()
            .map(|m| m.rebalance_timeout_ms)
            .max()
            .unwrap_or(0)
    }

    /// Adds a new member that awaits its JoinGroup answer, then rebalances.
    pub fn add_member(&mut self, mut member: Member, protocol_type: &str, now_ms: u64) {
        if self.members.is_empty() {
            self.protocol_type = Some(protocol_type.to_owned());
        }
        self.next_join_seq += 1;
        member.join_seq = self.next_join_seq;
        if self.leader.is_none() {
            self.leader = Some(member.id.clone());
        }
        if let Some(instance) = &member.instance_id {
            self.static_members
                .insert(instance.clone(), member.id.clone());
        }
        self.pending_members.remove(&member.id);
        self.members.insert(member.id.clone(), member);
        if self.state == GroupState::PreparingRebalance && self.initial_rebalance {
            self.extend_initial_delay(now_ms);
        }
        self.rebalance_or_complete(now_ms);
    }

    /// A known member joined again with `update` (protocols, timeouts, waiter): rebalance unless
    /// one is already under way, then complete the join phase if it was the last one missing.
    pub fn update_member(&mut self, id: &str, update: Member, now_ms: u64) {
        if let Some(m) = self.members.get_mut(id) {
            m.protocols = update.protocols;
            m.session_timeout_ms = update.session_timeout_ms;
            m.rebalance_timeout_ms = update.rebalance_timeout_ms;
            m.client_id = update.client_id;
            m.client_host = update.client_host;
            m.join_tx = update.join_tx;
        }
        self.rebalance_or_complete(now_ms);
    }

    /// A static member came back with a new member id: the old id is fenced (its pending
    /// answers fail) and the member continues under the new id.
    pub fn replace_static_member(&mut self, old_id: &str, new_id: &str) {
        let Some(mut member) = self.members.remove(old_id) else {
            return;
        };
        if let Some(tx) = member.join_tx.take() {
            let _ = tx.try_send(JoinOutcome::error(FENCED_INSTANCE_ID, old_id));
        }
        if let Some(tx) = member.sync_tx.take() {
            let _ = tx.try_send(SyncOutcome::error(FENCED_INSTANCE_ID));
        }
        member.id = new_id.to_owned();
        if let Some(instance) = &member.instance_id {
            self.static_members
                .insert(instance.clone(), new_id.to_owned());
        }
        if self.leader.as_deref() == Some(old_id) {
            self.leader = Some(new_id.to_owned());
        }
        if self.pending_sync.remove(old_id) {
            self.pending_sync.insert(new_id.to_owned());
        }
        self.members.insert(new_id.to_owned(), member);
    }

    fn rebalance_or_complete(&mut self, now_ms: u64) {
        if matches!(
            self.state,
            GroupState::Empty | GroupState::Stable | GroupState::CompletingRebalance
        ) {
            self.prepare_rebalance(now_ms);
        }
        self.maybe_complete_join(now_ms);
    }

    /// Starts a join phase. Members waiting for a SyncGroup answer of the abandoned generation
    /// are told REBALANCE_IN_PROGRESS and must rejoin.
    pub fn prepare_rebalance(&mut self, now_ms: u64) {
        if self.state == GroupState::CompletingRebalance {
            self.fail_sync_waiters(REBALANCE_IN_PROGRESS, now_ms);
        }
        self.pending_sync.clear();
        self.sync_deadline_ms = None;
        self.persisting = None;
        let delay_ms = if self.state == GroupState::Empty {
            self.initial_rebalance = true;
            self.initial_delay_ms.min(self.rebalance_timeout_ms())
        } else {
            self.rebalance_timeout_ms()
        };
        self.join_deadline_ms = Some(now_ms + delay_ms);
        self.rebalance_started_ms = now_ms;
        self.state = GroupState::PreparingRebalance;
    }

    /// A member joined during a new group's initial delay: hold the phase open for another
    /// delay, but never past the rebalance timeout counted from the start of the phase.
    fn extend_initial_delay(&mut self, now_ms: u64) {
        let cap = self.rebalance_started_ms + self.rebalance_timeout_ms();
        let wanted = (now_ms + self.initial_delay_ms).min(cap);
        if self.join_deadline_ms.is_some_and(|d| d < wanted) {
            self.join_deadline_ms = Some(wanted);
        }
    }

    /// Answers every pending SyncGroup with `error`; each such member gets a full session to
    /// act on it (it was blocked waiting, not silent).
    pub fn fail_sync_waiters(&mut self, error: i16, now_ms: u64) {
        for m in self.members.values_mut() {
            if let Some(tx) = m.sync_tx.take() {
                m.session_deadline_ms = now_ms + m.session_timeout_ms;
                let _ = tx.try_send(SyncOutcome::error(error));
            }
        }
    }

    fn all_members_joined(&self) -> bool {
        self.pending_members.is_empty() && self.members.values().all(|m| m.join_tx.is_some())
    }

    /// Completes the join phase when every known member has rejoined (and a new group's
    /// initial delay has passed).
    pub fn maybe_complete_join(&mut self, now_ms: u64) {
        let delay_running =
            self.initial_rebalance && self.join_deadline_ms.is_some_and(|d| now_ms < d);
        if self.state == GroupState::PreparingRebalance
            && self.all_members_joined()
            && !delay_running
        {
            self.complete_join(now_ms);
        }
    }

    /// Ends the join phase: members that did not rejoin are removed, the generation advances,
    /// a protocol is chosen and every waiting member gets its answer (the leader gets the
    /// member list to compute the assignment from).
    pub fn complete_join(&mut self, now_ms: u64) {
        let lagging: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_tx.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in lagging {
            self.drop_member(&id);
        }
        self.generation = self.generation.checked_add(1).unwrap_or(1);
        self.initial_rebalance = false;
        self.join_deadline_ms = None;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol_name = None;
            self.leader = None;
            self.empty_since_ms = now_ms;
            return;
        }
        self.protocol_name = self.select_protocol();
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.members_in_join_order().first().map(|m| m.id.clone());
        }
        self.state = GroupState::CompletingRebalance;
        self.pending_sync = self.members.keys().cloned().collect();
        self.sync_deadline_ms = Some(now_ms + self.rebalance_timeout_ms());
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let leader = self.leader.clone().unwrap_or_default();
        let roster: Vec<JoinedMember> = self
            .members_in_join_order()
            .iter()
            .map(|m| JoinedMember {
                member_id: m.id.clone(),
                instance_id: m.instance_id.clone(),
                metadata: m.metadata_for(&protocol),
            })
            .collect();
        for m in self.members.values_mut() {
            m.session_deadline_ms = now_ms + m.session_timeout_ms;
            if let Some(tx) = m.join_tx.take() {
                let members = if m.id == leader {
                    roster.clone()
                } else {
                    Vec::new()
                };
                let _ = tx.try_send(JoinOutcome {
                    error: NONE,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol_name: Some(protocol.clone()),
                    leader: leader.clone(),
                    member_id: m.id.clone(),
                    members,
                });
            }
        }
    }

    /// The answer a member gets when it rejoins a generation that does not need to change.
    pub fn current_join_outcome(&self, member_id: &str) -> JoinOutcome {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let leader = self.leader.clone().unwrap_or_default();
        let members = if member_id == leader {
            self.members_in_join_order()
                .iter()
                .map(|m| JoinedMember {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    metadata: m.metadata_for(&protocol),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinOutcome {
            error: NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: Some(protocol),
            leader,
            member_id: member_id.to_owned(),
            members,
        }
    }

    pub fn members_in_join_order(&self) -> Vec<&Member> {
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.join_seq);
        members
    }

    /// Protocols every member supports; each member votes for its most preferred one; most
    /// votes wins, ties go to the leader's (else the first member's) preference.
    fn select_protocol(&self) -> Option<String> {
        let ordered = self.members_in_join_order();
        let reference = self
            .leader
            .as_ref()
            .and_then(|l| self.members.get(l))
            .or_else(|| ordered.first().copied())?;
        let candidates: Vec<&str> = reference
            .protocols
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| self.members.values().all(|m| m.supports(n)))
            .collect();
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for m in &ordered {
            if let Some((name, _)) = m
                .protocols
                .iter()
                .find(|(n, _)| candidates.contains(&n.as_str()))
            {
                *votes.entry(name.as_str()).or_default() += 1;
            }
        }
        let best = candidates
            .iter()
            .copied()
            .fold(None::<(&str, usize)>, |best, c| {
                let v = votes.get(c).copied().unwrap_or(0);
                match best {
                    Some((_, bv)) if bv >= v => best,
                    _ => Some((c, v)),
                }
            });
        best.map(|(name, _)| name.to_owned())
            .or_else(|| reference.protocols.first().map(|(n, _)| n.clone()))
    }

    /// Removes a member (it left, or timed out) and moves the group on: a Stable or Completing
    /// group rebalances; a join phase may now be complete.
    pub fn remove_member(&mut self, id: &str, now_ms: u64) {
        let Some(mut member) = self.drop_member(id) else {
            return;
        };
        if let Some(tx) = member.join_tx.take() {
            let _ = tx.try_send(JoinOutcome::error(UNKNOWN_MEMBER_ID, id));
        }
        if let Some(tx) = member.sync_tx.take() {
            let _ = tx.try_send(SyncOutcome::error(UNKNOWN_MEMBER_ID));
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now_ms);
                self.maybe_complete_join(now_ms);
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(now_ms),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    /// Takes a member out of every index, without any state transition.
    fn drop_member(&mut self, id: &str) -> Option<Member> {
        let member = self.members.remove(id)?;
        if let Some(instance) = &member.instance_id {
            if self
                .static_members
                .get(instance)
                .is_some_and(|owner| owner == id)
            {
                self.static_members.remove(instance);
            }
        }
        self.pending_sync.remove(id);
        if self.leader.as_deref() == Some(id) {
            self.leader = self.members_in_join_order().first().map(|m| m.id.clone());
        }
        Some(member)
    }

    /// The earliest instant at which `expire` has something to do.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let sessions = self
            .members
            .values()
            .filter(|m| !m.awaiting())
            .map(|m| m.session_deadline_ms);
        let pending = self.pending_members.values().copied();
        let join = self
            .join_deadline_ms
            .filter(|_| self.state == GroupState::PreparingRebalance);
        let sync = self
            .sync_deadline_ms
            .filter(|_| !self.pending_sync.is_empty());
        sessions.chain(pending).chain(join).chain(sync).min()
    }

    /// Applies every deadline that has passed at `now_ms`.
    pub fn expire(&mut self, now_ms: u64) {
        let before = self.pending_members.len();
        self.pending_members.retain(|_, expiry| *expiry > now_ms);
        if self.pending_members.len() != before {
            self.maybe_complete_join(now_ms);
        }
        let lapsed: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.awaiting() && m.session_deadline_ms <= now_ms)
            .map(|m| m.id.clone())
            .collect();
        for id in lapsed {
            tracing::info!(group = %self.id, member = %id, "member session expired; removing it");
            self.remove_member(&id, now_ms);
        }
        if self.state == GroupState::PreparingRebalance
            && self.join_deadline_ms.is_some_and(|d| d <= now_ms)
        {
            self.complete_join(now_ms);
        }
        if self.sync_deadline_ms.is_some_and(|d| d <= now_ms) {
            self.sync_deadline_ms = None;
            let missing: Vec<String> = self.pending_sync.drain().collect();
            for id in missing {
                tracing::info!(group = %self.id, member = %id, "member sent no SyncGroup in time");
                self.remove_member(&id, now_ms);
            }
        }
    }
}
