//! The consumer-group coordinator: Kafka's classic group protocol (JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup) and committed offsets (OffsetCommit, OffsetFetch), one coordinator per
//! core.
//!
//! ```text
//!  request for group G ──► core group_core(G) ──► GroupCoordinator (!Send, one per core)
//!                                                   │ groups: id → Group (state machine)
//!                                                   │ timers: deadline heap ◄── driver task
//!                                                   └ GroupLog: durable RecordBatches
//! ```
//!
//! Files: [`state`] is the state machine of one group (pure, clock passed in); `membership`,
//! `offsets` and `admin` are the request handlers; [`codec`] is the durable record layout;
//! `timers` drives session and rebalance deadlines (and triggers [`compact`]ion); [`clock`] is
//! the time seam.
//!
//! # Durability contract
//!
//! - An OffsetCommit is acknowledged only after the batch holding it resolved durable through
//!   [`GroupLog::append`]. If the append fails, the commit answers COORDINATOR_NOT_AVAILABLE
//!   (retriable) and memory is left unchanged, so a fetch never shows an offset a crash could
//!   lose.
//! - The leader's SyncGroup writes the group's generation, protocol and leader before any member
//!   receives its assignment. Members and assignments are NOT stored: after a restart the group
//!   comes back Empty at its stored generation, members get UNKNOWN_MEMBER_ID and rejoin (at a
//!   higher generation, so a commit from before the restart cannot pass the generation check).
//! - Deletions (topic deleted, offsets expired, group deleted) are tombstones: a record with the
//!   same key and a null value. [`GroupCoordinator::replay`] applies records in log order, later
//!   records win, tombstones delete; so replaying the whole log rebuilds exactly the acknowledged
//!   state. The record layout is documented in [`codec`].
//! - The log is compacted online ([`compact`]): a snapshot of every live key is appended behind
//!   a gate that keeps it from overtaking any write, and the log start moves to it once it is
//!   durable. Replay is unchanged: the old records followed by the snapshot, or the snapshot
//!   alone, rebuild the same state.

pub mod clock;
pub mod codec;
pub mod compact;
pub mod state;

mod admin;
mod membership;
mod offsets;
mod timers;

#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use thiserror::Error;

pub use clock::{Clock, ManualClock, SystemClock};
pub use compact::Compaction;
pub use state::GroupState;

use compact::{Gate, Progress};
use ringmq_wire::record_batch::BatchError;
use ringmq_wire::records::RecordError;
use state::Group;
use timers::{Notify, TimerQueue};

/// Longest group id accepted (Kafka has none; ours bounds keys and memory).
pub const MAX_GROUP_ID_BYTES: usize = 1024;
/// Longest member id or group instance id accepted from a client.
pub const MAX_MEMBER_ID_BYTES: usize = 1024;
/// Longest client id copied into a generated member id.
pub const MAX_CLIENT_ID_IN_MEMBER_ID: usize = 128;
/// Longest protocol type or protocol (assignor) name accepted in a JoinGroup.
pub const MAX_PROTOCOL_NAME_BYTES: usize = 255;
/// Longest topic name a commit may name (Kafka's topic name limit).
pub const MAX_TOPIC_NAME_BYTES: usize = 249;
/// Most protocols (assignors) one member may offer in a JoinGroup.
pub const MAX_PROTOCOLS_PER_MEMBER: usize = 32;
/// Largest metadata (subscription) of one protocol of one member.
pub const MAX_PROTOCOL_METADATA_BYTES: usize = 1 << 20;
/// Largest assignment the leader may hand to one member.
pub const MAX_ASSIGNMENT_BYTES: usize = 1 << 20;
/// Largest metadata string on a committed offset (Kafka's offset.metadata.max.bytes).
pub const MAX_OFFSET_METADATA_BYTES: usize = 4096;
/// How long the committed offsets of an Empty group (or of a group that never used group
/// management, counted from the commit) are kept: Kafka's offsets.retention.minutes, 7 days.
pub const OFFSETS_RETENTION_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// How often expired offsets and empty groups are swept (Kafka's 10 minutes).
pub const OFFSETS_RETENTION_CHECK_INTERVAL_MS: u64 = 10 * 60 * 1000;

// Every string the group log stores is bounded by one of these limits, checked when the request
// arrives; the codec's length prefixes (u16, or i16 for nullable strings) must hold them all.
const _: () = assert!(MAX_GROUP_ID_BYTES <= u16::MAX as usize);
const _: () = assert!(MAX_TOPIC_NAME_BYTES <= u16::MAX as usize);
const _: () = assert!(MAX_PROTOCOL_NAME_BYTES <= i16::MAX as usize);
const _: () = assert!(MAX_OFFSET_METADATA_BYTES <= i16::MAX as usize);
const _: () = assert!(MAX_MEMBER_ID_BYTES + MAX_CLIENT_ID_IN_MEMBER_ID <= i16::MAX as usize);

/// Settings of one coordinator. `Default` gives Kafka's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    pub group_min_session_timeout_ms: i32,
    pub group_max_session_timeout_ms: i32,
    /// How long a new group waits for more members before its first generation (tests: 0).
    pub group_initial_rebalance_delay_ms: u64,
    /// Most groups one coordinator holds; a JoinGroup or commit creating one more is refused.
    pub max_groups: usize,
    /// Most members (plus members that were handed an id and have not rejoined) per group.
    pub max_members_per_group: usize,
    /// This node, as FindCoordinator answers it.
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    /// Compact once the log's first retained batch holds back more than this many bytes of
    /// the shared commit log ([`GroupLog::retained_bytes`]; see [`compact`]). `u64::MAX`: only
    /// the record count triggers compaction.
    pub compact_retained_bytes: u64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            group_min_session_timeout_ms: 6000,
            group_max_session_timeout_ms: 1_800_000,
            group_initial_rebalance_delay_ms: 3000,
            max_groups: 100_000,
            max_members_per_group: 1000,
            node_id: 0,
            host: "127.0.0.1".to_string(),
            port: 9092,
            compact_retained_bytes: u64::MAX,
        }
    }
}

/// Why an append to the group log failed. Every variant fails the request that needed it with a
/// retriable error; the coordinator never retries an append itself.
#[derive(Debug, Error)]
pub enum GroupLogError {
    #[error("group log shard is poisoned after a failed write or fsync")]
    Poisoned,
    #[error("group log is closed (shutting down)")]
    Closed,
    #[error("group log write waited too long for a compaction to finish")]
    Compacting,
    #[error("group log append failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Durable storage of committed offsets and group metadata. The broker implements it by
/// appending a RecordBatch to an internal engine queue with `Durability::Durable` and feeding
/// every stored batch back through [`GroupCoordinator::replay`] at startup.
// `async fn` in a public trait cannot promise `Send`; the coordinator is single-threaded and
// never needs it.
#[allow(async_fn_in_trait)]
pub trait GroupLog {
    /// Appends one record batch (built by this module); resolves once durable, with the
    /// offset the log gave the batch's first record.
    async fn append(&self, batch: bytes::Bytes) -> Result<u64, GroupLogError>;

    /// Moves the log's start forward to `offset` (a batch base offset this log returned): a
    /// later replay starts there. Never moves it backwards or past the end. It may become
    /// durable later than it returns; a replay that still starts below it is correct too (see
    /// [`compact`]). Returns the new start.
    fn advance_start(&self, offset: u64) -> Result<u64, GroupLogError>;

    /// Bytes of storage the log's first retained batch holds back from retention (the engine
    /// shares one commit log per core among all its queues, and retention removes only whole
    /// segments past every pinned queue's start); 0 where storage is not positional.
    fn retained_bytes(&self) -> u64;
}

/// Why a stored batch could not be replayed.
#[derive(Debug, Error)]
pub enum GroupReplayError {
    #[error("group log batch is invalid: {0}")]
    Batch(#[from] BatchError),
    #[error("group log batch has unreadable records: {0}")]
    Records(#[from] RecordError),
    #[error("group log record {offset_delta} has no key")]
    MissingKey { offset_delta: i32 },
    #[error("group log record {offset_delta}: {source}")]
    Codec {
        offset_delta: i32,
        source: codec::CodecError,
    },
}

/// The core that owns group `group_id` when the broker runs `cores` cores: FNV-1a of the id,
/// modulo the core count. Stable across runs and builds (it decides where a group's state lives).
pub fn group_core(group_id: &str, cores: usize) -> usize {
    assert!(cores > 0, "group_core needs at least one core");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in group_id.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % cores as u64) as usize
}

/// One core's group coordinator. Not `Send`: it lives on its core and is reached over that
/// core's channels. All methods take `&self`; state sits in a `RefCell` that is never borrowed
/// across an `.await`.
pub struct GroupCoordinator<L> {
    config: GroupConfig,
    log: L,
    clock: Rc<dyn Clock>,
    inner: RefCell<Inner>,
    /// Wakes the timer driver when a deadline earlier than the one it sleeps on appears.
    wake: Rc<Notify>,
    /// The instant (clock ms) the timer driver will wake at; `u64::MAX` when not started.
    armed_at_ms: Cell<u64>,
    /// Orders log writes against compaction.
    gate: Gate,
}

/// The mutable part of the coordinator.
struct Inner {
    groups: HashMap<String, Group>,
    timers: TimerQueue,
    /// Counter mixed into generated member ids (unique per coordinator).
    member_seq: u64,
    /// Order of log appends: an in-memory offset is only replaced by a later-issued write.
    write_seq: u64,
    /// Random per-process salt for member ids, so ids do not repeat across restarts.
    id_salt: u64,
    next_retention_check_ms: u64,
    /// When the log is next compacted.
    compaction: Progress,
}

impl<L: GroupLog> GroupCoordinator<L> {
    pub fn new(config: GroupConfig, log: L) -> Self {
        Self::with_clock(config, log, Rc::new(SystemClock::new()))
    }

    /// Like `new`, with the time seam injected (tests pass a [`ManualClock`]).
    pub fn with_clock(config: GroupConfig, log: L, clock: Rc<dyn Clock>) -> Self {
        let now = clock.now_ms();
        let id_salt =
            std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), now);
        GroupCoordinator {
            config,
            log,
            clock,
            inner: RefCell::new(Inner {
                groups: HashMap::new(),
                timers: TimerQueue::default(),
                member_seq: 0,
                write_seq: 0,
                id_salt,
                next_retention_check_ms: now + OFFSETS_RETENTION_CHECK_INTERVAL_MS,
                compaction: Progress::new(now),
            }),
            wake: Rc::new(Notify::default()),
            armed_at_ms: Cell::new(u64::MAX),
            gate: Gate::default(),
        }
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// Applies one stored batch of the group log. Called at startup, in log order, before any
    /// request. A batch that fails its CRC or holds an unknown record version is an error: the
    /// broker must not serve offsets it could not read.
    pub fn replay(&mut self, batch: &[u8]) -> Result<(), GroupReplayError> {
        let now = self.clock.now_ms();
        let inner = self.inner.get_mut();
        ringmq_wire::record_batch::validate(batch)?;
        for record in ringmq_wire::records::records(batch)? {
            let record = record?;
            let offset_delta = record.offset_delta;
            let key = record
                .key
                .ok_or(GroupReplayError::MissingKey { offset_delta })?;
            let decoded =
                codec::decode(key, record.value).map_err(|source| GroupReplayError::Codec {
                    offset_delta,
                    source,
                })?;
            inner.write_seq += 1;
            inner.compaction.records_since += 1;
            inner.apply_replayed(decoded, now, self.config.group_initial_rebalance_delay_ms);
        }
        Ok(())
    }

    /// Starts the timer driver (session expiry, rebalance and sync timeouts, offset retention)
    /// on the current glommio executor. The task holds only a weak reference: dropping the
    /// coordinator ends it.
    pub fn start(self: &Rc<Self>)
    where
        L: 'static,
    {
        glommio::spawn_local(timers::drive(Rc::downgrade(self))).detach();
    }

    /// Number of groups held (for metrics and tests).
    pub fn group_count(&self) -> usize {
        self.inner.borrow().groups.len()
    }

    /// State of one group, if held.
    pub fn group_state(&self, group_id: &str) -> Option<GroupState> {
        self.inner.borrow().groups.get(group_id).map(|g| g.state)
    }
}

impl Inner {
    /// Queues the group's next deadline if it is earlier than the one already queued. Returns
    /// the deadline queued, so the caller can wake the driver if it sleeps past it.
    fn reschedule(&mut self, group_id: &str) -> Option<u64> {
        let group = self.groups.get_mut(group_id)?;
        let next = group.next_deadline_ms()?;
        if group.timer_at_ms.is_some_and(|queued| queued <= next) {
            return None;
        }
        group.timer_at_ms = Some(next);
        self.timers.push(next, group_id);
        Some(next)
    }

    fn next_member_id(&mut self, client_id: &str) -> String {
        self.member_seq += 1;
        let mut cut = client_id.len().min(MAX_CLIENT_ID_IN_MEMBER_ID);
        while !client_id.is_char_boundary(cut) {
            cut -= 1;
        }
        let salt = self.id_salt;
        let seq = self.member_seq;
        let mixed = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            (salt, seq),
        );
        format!(
            "{}-{:08x}-{:04x}-{:04x}-{:016x}",
            &client_id[..cut],
            salt as u32,
            (salt >> 32) as u16,
            seq as u16,
            mixed
        )
    }
}
