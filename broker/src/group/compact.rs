//! Online compaction of the group log: the coordinator rewrites its durable state as a snapshot
//! at the log's end and moves the log's start to it, so start-up replays the live keys (plus
//! what came after), not every commit ever made, and the engine's retention may drop the
//! segments below.
//!
//! ```text
//!  log:  [ old records ........................ ][ snapshot batches ][ later records ...
//!                                                ^ first snapshot base: the new log start,
//!                                                  set once every snapshot batch is durable
//! ```
//!
//! # When
//!
//! The timer driver compacts (never a request) when either holds:
//! - records appended since the last snapshot exceed `max(COMPACT_MIN_RECORDS,
//!   COMPACT_LIVE_FACTOR x live keys)`: replay time stays proportional to the live state;
//! - the log's first retained batch holds back more than `compact_retained_bytes` (the broker
//!   sets [`COMPACT_RETAINED_SEGMENTS`] segments) of the core's shared commit log: the queue
//!   is pinned, so without this an idle group log would keep every later segment of every
//!   partition of its core from retention.
//!
//! # The gate
//!
//! Memory lags the log: a write is applied to memory only once its append resolved. A snapshot
//! captured while an append is in flight would miss that write, and the snapshot record of the
//! same key, appended after it, would win on replay: an acknowledged commit lost. So every
//! group-log write passes the [`Gate`]:
//!
//! 1. compaction closes the gate: new writes wait (at most [`GATE_WAIT_MAX_MS`], then fail
//!    retriably, like any failed append);
//! 2. it waits until no write is in flight; each of those applied its result to memory before
//!    its task yielded (see [`GroupCoordinator::append`]), so memory now holds every record
//!    the log holds that was acknowledged;
//! 3. it captures memory and starts the first snapshot append with no `.await` in between;
//! 4. it appends every snapshot batch (sequentially; nothing else is appended meanwhile);
//! 5. once all are durable it moves the log start to the first snapshot batch, then reopens.
//!
//! Closing before draining means a steady stream of writes cannot starve compaction.
//!
//! # Durability contract
//!
//! The snapshot holds one record per live key: every committed offset in memory and every
//! group's last durable group record ([`super::state::Group::stored`]). Each record sets its
//! key to the value that key already has, so:
//!
//! - a crash before or during the snapshot appends leaves `old log + a prefix of the
//!   snapshot batches` (the engine keeps whole batches, a prefix of the log): replaying it
//!   gives the state of the old log, each key possibly rewritten with the same value;
//! - a crash after them, whether or not the moved log start reached a checkpoint, leaves
//!   `old log + snapshot + later` or `snapshot + later`: the snapshot alone rebuilds every
//!   live key, and the records after it apply on top exactly as before;
//! - a failed snapshot append aborts the compaction: the log start stays, the batches that did
//!   land are harmless rewrites, the next attempt waits [`COMPACTION_RETRY_MS`].
//!
//! Replay therefore needs no change. One difference is intended: keys whose deletion memory
//! applied although its tombstone failed (topic deletion clears memory regardless) or whose
//! tombstone lost a race (a DeleteGroups answered NON_EMPTY_GROUP) come back after
//! `old log + snapshot` exactly as memory serves them, and are gone from the snapshot once the
//! start moved. Groups holding neither offsets nor a stored record carry no durable state and
//! are not written (a replay of the old log may show them as Empty until the retention sweep).

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;

use super::codec::{self, OffsetValue};
use super::timers::Notify;
use super::{GroupCoordinator, GroupLog, GroupLogError, Inner};

/// Records appended since the last compaction before the next one is considered. Below it a
/// replay is a few milliseconds at most, and a busy core (auto-commit every 5 s per partition)
/// reaches it within minutes, not seconds: compaction stays rare.
pub const COMPACT_MIN_RECORDS: u64 = 10_000;
/// ... and more than this many times the live keys: each compaction rewrites every live key,
/// so with a factor of 2 the log holds at most about three times the live state and rewriting
/// costs at most one record per record appended.
pub const COMPACT_LIVE_FACTOR: u64 = 2;
/// Largest snapshot batch: well under the engine's batch limit (8 MiB by default), and small
/// enough that one batch never holds up the core's other appends for long.
pub const SNAPSHOT_BATCH_MAX_BYTES: usize = 1 << 20;
/// Longest a group-log write waits for a compaction to reopen the gate; then it fails like a
/// failed append (COORDINATOR_NOT_AVAILABLE, retriable), well inside a client's request timeout.
pub const GATE_WAIT_MAX_MS: u64 = 10_000;
/// Pause after a failed compaction (a poisoned or closing shard fails every append anyway).
pub const COMPACTION_RETRY_MS: u64 = 60_000;
/// The second trigger, for retention: the engine keeps one commit log per core, and a pinned
/// internal queue keeps every segment from the one holding its first retained batch. Once
/// that batch is this many segments behind the head, compaction moves it to the head and
/// retention may drop everything older. Two, not one: the segment being written is never
/// removable anyway, and a snapshot every two segments of the core's traffic costs little
/// next to the traffic itself.
pub const COMPACT_RETAINED_SEGMENTS: u64 = 2;
/// ... and more than this many times the bytes of the last snapshot, so a state larger than
/// the segments cannot make every check compact again.
pub const COMPACT_RETAINED_SNAPSHOT_FACTOR: u64 = 2;
/// The bytes a pinned internal queue may hold back from its core's retention: `segment_bytes`
/// x [`COMPACT_RETAINED_SEGMENTS`].
pub fn retained_limit(segment_bytes: u64) -> u64 {
    COMPACT_RETAINED_SEGMENTS.saturating_mul(segment_bytes)
}

/// Whether an internal log whose first retained batch holds back `retained` bytes of its
/// core's log must be compacted: more than `limit` ([`retained_limit`]) and more than
/// [`COMPACT_RETAINED_SNAPSHOT_FACTOR`] x its last snapshot. Shared by the group and the
/// metadata logs.
pub fn holds_back_retention(retained: u64, limit: u64, snapshot_bytes: u64) -> bool {
    retained > limit.max(COMPACT_RETAINED_SNAPSHOT_FACTOR.saturating_mul(snapshot_bytes))
}

/// How often the driver compares the retained bytes with the limit: other queues' appends move
/// the head, and nothing wakes the driver for them. The comparison is two numbers; between two
/// checks retention waits on at most a second of the core's traffic.
pub const COMPACTION_CHECK_INTERVAL_MS: u64 = 1_000;

/// Bytes a record adds to a batch beyond its key and value (length, attributes, deltas,
/// header count: varints of at most 5 bytes each, rounded up).
const RECORD_OVERHEAD_BYTES: usize = 24;
/// The largest single record: an offset of the longest group, topic and metadata.
const MAX_RECORD_BYTES: usize = 2 * 1024
    + 2 * super::MAX_GROUP_ID_BYTES
    + super::MAX_TOPIC_NAME_BYTES
    + super::MAX_OFFSET_METADATA_BYTES;
const _: () = assert!(
    MAX_RECORD_BYTES + RECORD_OVERHEAD_BYTES + ringmq_wire::record_batch::HEADER_LEN
        <= SNAPSHOT_BATCH_MAX_BYTES
);

/// What one compaction wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    /// Records (live keys) in the snapshot.
    pub records: usize,
    pub batches: usize,
    /// The log start after it: the base offset of the first snapshot batch.
    pub log_start: u64,
}

/// When the next compaction is due (part of the coordinator's `Inner`).
#[derive(Debug)]
pub(crate) struct Progress {
    /// Records appended (or replayed) since the last snapshot was captured.
    pub records_since: u64,
    /// `records_since` at which the driver is woken to look again.
    pub wake_at_records: u64,
    /// No attempt before this clock instant (after a failure).
    pub retry_at_ms: u64,
    /// When the driver next compares the retained bytes with the limit.
    pub next_check_ms: u64,
    /// Bytes of the last snapshot written by this process.
    pub last_snapshot_bytes: u64,
}

impl Progress {
    pub fn new(now_ms: u64) -> Self {
        Progress {
            records_since: 0,
            wake_at_records: COMPACT_MIN_RECORDS,
            retry_at_ms: 0,
            next_check_ms: now_ms + COMPACTION_CHECK_INTERVAL_MS,
            last_snapshot_bytes: 0,
        }
    }
}

/// Orders group-log writes against compaction (see the module docs). Single-threaded.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    closed: Cell<bool>,
    /// Writes that passed the gate and have not finished.
    in_flight: Cell<usize>,
    /// Writers waiting for the gate to reopen; at most one entry per waiting write (a write
    /// registers again only when polled again, and every reopening drains the list), so it is
    /// bounded by the requests this core has in flight.
    waiting: RefCell<Vec<Waker>>,
    /// Wakes the compaction when the last in-flight write finished.
    drained: Notify,
    /// A compaction is running (compactions never overlap).
    compacting: Cell<bool>,
}

/// Keeps the gate closed; reopens it when dropped (also on an error or a dropped future).
struct Closed<'a>(&'a Gate);

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        self.0.closed.set(false);
        self.0.compacting.set(false);
        for waker in self.0.waiting.borrow_mut().drain(..) {
            waker.wake();
        }
    }
}

impl Gate {
    /// Waits until the gate is open (bounded), then counts one write in flight.
    async fn enter(&self) -> Result<(), GroupLogError> {
        if self.closed.get() {
            let mut reopened = pin!(poll_fn(|cx| {
                if self.closed.get() {
                    self.waiting.borrow_mut().push(cx.waker().clone());
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            }));
            let mut timeout = pin!(glommio::timer::sleep(Duration::from_millis(
                GATE_WAIT_MAX_MS
            )));
            let opened = poll_fn(|cx| {
                if reopened.as_mut().poll(cx).is_ready() {
                    Poll::Ready(true)
                } else if timeout.as_mut().poll(cx).is_ready() {
                    Poll::Ready(false)
                } else {
                    Poll::Pending
                }
            })
            .await;
            if !opened {
                return Err(GroupLogError::Compacting);
            }
        }
        self.in_flight.set(self.in_flight.get() + 1);
        Ok(())
    }

    fn leave(&self) {
        let left = self.in_flight.get() - 1;
        self.in_flight.set(left);
        if left == 0 && self.closed.get() {
            self.drained.notify();
        }
    }

    /// Closes the gate and waits until no write is in flight. `None` if a compaction already
    /// holds it.
    async fn close_and_drain(&self) -> Option<Closed<'_>> {
        if self.compacting.replace(true) {
            return None;
        }
        self.closed.set(true);
        let closed = Closed(self);
        while self.in_flight.get() > 0 {
            self.drained.notified().await;
        }
        Some(closed)
    }
}

impl<L: GroupLog> GroupCoordinator<L> {
    /// Every group-log write goes through here: it passes the gate, appends `batch` (holding
    /// `records` records) and resolves with the batch's base offset once durable.
    ///
    /// Callers apply the outcome to memory before their next `.await`: the gate counts the
    /// write finished when this returns, and a compaction waiting for it runs only after the
    /// caller's task yields, so it sees the write applied.
    pub(super) async fn append(&self, batch: Bytes, records: usize) -> Result<u64, GroupLogError> {
        self.gate.enter().await?;
        let stored = self.log.append(batch).await;
        self.gate.leave();
        if stored.is_ok() {
            let mut inner = self.inner.borrow_mut();
            let p = &mut inner.compaction;
            let before = p.records_since;
            p.records_since += records as u64;
            if before < p.wake_at_records && p.records_since >= p.wake_at_records {
                self.wake.notify();
            }
        }
        stored
    }

    /// Whether the timer driver should compact now: enough records since the last snapshot
    /// compared with the live keys (counted here, at most once per `wake_at_records`), or, at
    /// most every [`COMPACTION_CHECK_INTERVAL_MS`], a log start holding back more than
    /// `compact_retained_bytes` of storage from retention.
    pub(super) fn compaction_due(&self) -> bool {
        let now = self.clock.now_ms();
        let mut inner = self.inner.borrow_mut();
        if now < inner.compaction.retry_at_ms {
            return false;
        }
        if inner.compaction.records_since >= inner.compaction.wake_at_records {
            let threshold = compaction_threshold(live_keys(&inner));
            inner.compaction.wake_at_records = threshold;
            if inner.compaction.records_since >= threshold {
                return true;
            }
        }
        if now < inner.compaction.next_check_ms {
            return false;
        }
        inner.compaction.next_check_ms = now + COMPACTION_CHECK_INTERVAL_MS;
        let snapshot_bytes = inner.compaction.last_snapshot_bytes;
        holds_back_retention(
            self.log.retained_bytes(),
            self.config.compact_retained_bytes,
            snapshot_bytes,
        )
    }

    /// When the driver must next look at the retained bytes.
    pub(super) fn next_compaction_check_ms(&self) -> u64 {
        self.inner.borrow().compaction.next_check_ms
    }

    /// Writes a snapshot of the durable state and moves the log start to it (see the module
    /// docs). `Ok(None)` if another compaction is running. On an error nothing moved; the next
    /// attempt waits [`COMPACTION_RETRY_MS`].
    pub async fn compact(&self) -> Result<Option<Compaction>, GroupLogError> {
        let closed_at = std::time::Instant::now();
        let Some(_closed) = self.gate.close_and_drain().await else {
            return Ok(None);
        };
        let now = self.clock.now_ms();
        // Capture: from here to the start of the first append there is no `.await`.
        let batches = {
            let mut inner = self.inner.borrow_mut();
            let batches = snapshot_batches(&inner, now);
            let records: usize = batches.iter().map(|(_, n)| n).sum();
            let bytes: usize = batches.iter().map(|(b, _)| b.len()).sum();
            inner.compaction.records_since = 0;
            inner.compaction.wake_at_records = compaction_threshold(records as u64);
            inner.compaction.last_snapshot_bytes = bytes as u64;
            batches
        };
        let records: usize = batches.iter().map(|(_, n)| n).sum();
        let count = batches.len();
        let result = self.append_snapshot(batches).await;
        match result {
            Ok(log_start) => {
                let done = Compaction {
                    records,
                    batches: count,
                    log_start,
                };
                let gate_closed_us = closed_at.elapsed().as_micros() as u64;
                tracing::info!(
                    records,
                    batches = count,
                    log_start,
                    gate_closed_us,
                    "group log compacted"
                );
                Ok(Some(done))
            }
            Err(e) => {
                tracing::warn!(error = %e, "group log compaction failed; log start unchanged");
                self.inner.borrow_mut().compaction.retry_at_ms = now + COMPACTION_RETRY_MS;
                Err(e)
            }
        }
    }

    /// Appends the snapshot batches in order; once all are durable, moves the log start to the
    /// first one. Returns the new log start.
    async fn append_snapshot(&self, batches: Vec<(Bytes, usize)>) -> Result<u64, GroupLogError> {
        let mut first = None;
        for (batch, _) in batches {
            let base = self.log.append(batch).await?;
            first.get_or_insert(base);
        }
        let first = first.expect("a snapshot has at least one batch");
        self.log.advance_start(first)
    }
}

/// Records since the last snapshot that make a compaction worth it with `live` live keys.
pub(super) fn compaction_threshold(live: u64) -> u64 {
    COMPACT_MIN_RECORDS.max(COMPACT_LIVE_FACTOR.saturating_mul(live))
}

/// Keys a snapshot would write now.
pub(super) fn live_keys(inner: &Inner) -> u64 {
    inner
        .groups
        .values()
        .map(|g| {
            let offsets: usize = g.offsets.values().map(|ps| ps.len()).sum();
            offsets as u64 + u64::from(g.stored.is_some())
        })
        .sum()
}

/// The snapshot of `inner`: every live key once, in batches of at most
/// [`SNAPSHOT_BATCH_MAX_BYTES`], each with its record count. Never empty: with no live key
/// the one record is the tombstone of the empty group id, which no group can have (it is
/// refused as INVALID_GROUP_ID), so its replay changes nothing but the log start still moves.
pub(super) fn snapshot_batches(inner: &Inner, now: u64) -> Vec<(Bytes, usize)> {
    let mut out = SnapshotBatches {
        now,
        ..SnapshotBatches::default()
    };
    for group in inner.groups.values() {
        if let Some(stored) = &group.stored {
            out.push(codec::group_key(&group.id), codec::group_value(stored));
        }
        for (topic, partitions) in &group.offsets {
            for (partition, o) in partitions {
                let value = OffsetValue {
                    offset: o.offset,
                    leader_epoch: o.leader_epoch,
                    commit_timestamp_ms: i64::try_from(o.commit_timestamp_ms).unwrap_or(i64::MAX),
                    expire_timestamp_ms: o
                        .expire_timestamp_ms
                        .map_or(-1, |e| i64::try_from(e).unwrap_or(i64::MAX)),
                    metadata: o.metadata.clone(),
                };
                out.push(
                    codec::offset_key(&group.id, topic, *partition),
                    codec::offset_value(&value),
                );
            }
        }
    }
    out.finish()
}

/// Cuts records into batches of at most [`SNAPSHOT_BATCH_MAX_BYTES`].
#[derive(Default)]
struct SnapshotBatches {
    now: u64,
    sealed: Vec<(Bytes, usize)>,
    pending: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Bytes of the batch `pending` would make (an upper bound).
    pending_bytes: usize,
}

impl SnapshotBatches {
    fn push(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.push_record(key, Some(value));
    }

    fn push_record(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let len = key.len() + value.as_ref().map_or(0, Vec::len) + RECORD_OVERHEAD_BYTES;
        if !self.pending.is_empty() && self.pending_bytes + len > SNAPSHOT_BATCH_MAX_BYTES {
            self.seal();
        }
        if self.pending.is_empty() {
            self.pending_bytes = ringmq_wire::record_batch::HEADER_LEN;
        }
        self.pending_bytes += len;
        self.pending.push((key, value));
    }

    fn seal(&mut self) {
        let batch = codec::build_batch(&self.pending, self.now as i64);
        self.sealed.push((batch, self.pending.len()));
        self.pending.clear();
    }

    fn finish(mut self) -> Vec<(Bytes, usize)> {
        if self.sealed.is_empty() && self.pending.is_empty() {
            self.push_record(codec::group_key(""), None);
        }
        if !self.pending.is_empty() {
            self.seal();
        }
        self.sealed
    }
}
