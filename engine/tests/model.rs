//! Model-based property test of the shard: random sequences of appends (single and concurrent,
//! Written and Durable, plain and idempotent-producer, good and refused batches), reads,
//! timestamp lookups, segment rolls, retention, queue deletes, flushes, crashes (between
//! operations and with appends in flight), clean reopens and reopens after damaging a segment
//! index file, checked step by step against a `Vec` per queue.
//!
//! Two variants run the same operations:
//! - `mem`: on the engine's in-memory fault-injecting storage (`MemStorage`). A crash reverts
//!   every file to its synced image plus some of the unsynced writes (none, a torn prefix, or an
//!   arbitrary subset landing out of order). After reopening, every batch acknowledged Durable
//!   (or covered by a completed `flush`) must be there, byte-identical but for the assigned base
//!   offset, and each queue must hold exactly a prefix of what was appended: offsets dense, no
//!   hole, no invented or reordered batch.
//! - `disk`: on real files in a temp dir. A "crash" ends the executor without closing the shard
//!   (a process death: completed O_DIRECT writes stay on the device), so every acknowledged
//!   batch, Written or Durable, must survive.
//!
//! What the checks catch: a Durable ack before the fdatasync that covers it (lost on crash); a
//! torn tail recovered as data or a valid entry after a hole accepted; offsets reassigned or
//! skipped after recovery; reads that start at the wrong batch, skip one, exceed `max_bytes`
//! with more than one batch, or see stale bytes across a segment roll; retention that removes
//! part of a batch, the active segment, or anything when it is off; bad batches stored anyway;
//! a deleted queue that comes back after a crash or still takes appends; a timestamp lookup
//! that assumes timestamps follow offsets; producer state (last 5 batches per producer) that
//! is lost or wrong after recovery; a damaged (flipped, torn or missing) segment index file
//! that is trusted, fails the open, or loses entries when its segment is rebuilt.
//!
//! Cases: `PROPTEST_CASES` (default 64 for `mem`, 32 for `disk`).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;
use proptest::prelude::*;
use ringmq_engine::io::{CrashMode, MemStorage, Storage};
use ringmq_engine::{Durability, EngineError, Offset, ProducerBatch, QueueId, Shard, ShardConfig};

use common::{
    make_batch, make_batch_stamped, record_count, run_glommio, small_config, stored_mismatch,
};
use ringmq_wire::record_batch::{BatchHeader, ProducerStamp};

/// Largest batch the model's shards accept; the generator stays under it except on purpose.
const MAX_BATCH_BYTES: u32 = 16 << 10;
/// Queues the generator picks from (queue 3 is rare, so some queues stay empty).
const QUEUES: u32 = 4;
/// Idempotent producers the generator uses, with ids from `PRODUCER_ID_BASE`.
const PRODUCERS: u8 = 3;
const PRODUCER_ID_BASE: i64 = 1000;
/// Batches per (queue, producer) the engine must remember.
const PRODUCER_HISTORY: usize = 5;
/// Read size used when the model reads a whole queue back.
const SCAN_READ_BYTES: usize = 48 << 10;

// ---------------------------------------------------------------------------------------------
// Operations and their generators
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct AppendSpec {
    queue: u32,
    records: usize,
    value_len: usize,
    durable: bool,
    /// Idempotent producer `PRODUCER_ID_BASE + n` stamps the batch; None = plain producer.
    producer: Option<u8>,
}

#[derive(Debug, Clone, Copy)]
enum CrashSpec {
    DropUnsynced,
    KeepPrefix(u64),
    KeepWrites(u64),
}

#[derive(Debug, Clone)]
enum Op {
    Append(AppendSpec),
    /// Issued together, so group commit coalesces them into shared writes and fdatasyncs.
    AppendConcurrent(Vec<AppendSpec>),
    /// A batch the shard must refuse: a flipped payload byte (CRC) or one over the size limit.
    AppendBad {
        queue: u32,
        too_large: bool,
    },
    /// `from` at `permille`/1000 of the queue's [log start, end]; above 1000 reads past the end.
    Read {
        queue: u32,
        permille: u16,
        max_bytes: usize,
    },
    Flush,
    Retention,
    Crash(CrashSpec),
    /// Issues the appends together, crashes as soon as `wait_for` of them resolved (the rest
    /// are in flight: staged, being written or waiting for an fdatasync), then reopens.
    /// On disk it runs as `AppendConcurrent`.
    CrashMidFlight {
        specs: Vec<AppendSpec>,
        wait_for: usize,
        crash: CrashSpec,
    },
    CleanReopen,
    /// Deletes a queue that holds data (skipped otherwise); durable once it resolves.
    DeleteQueue(u32),
    /// `offset_for_timestamp` at `permille`/1000 of the queue's timestamp range (+-1).
    TimeLookup {
        queue: u32,
        permille: u16,
    },
    /// Closes, damages the segment index file `pick % n` (`how % 3`: flip a bit, cut it short,
    /// delete it) and reopens: derived data, so nothing may be lost.
    DamageIndex {
        pick: u64,
        how: u8,
    },
}

#[derive(Debug, Clone)]
struct Scenario {
    segment_size_bytes: u64,
    retention_bytes: Option<u64>,
    /// `mem` only: the storage prefers written extents (as ext4 does), which turns on the
    /// preparation of next segments, zero-filling while quiet and, under retention, segment
    /// recycling (whose files hold their earlier lap's entries). `disk` always does.
    written_extents: bool,
    ops: Vec<Op>,
}

fn queue_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![6 => 0..3u32, 1 => Just(QUEUES - 1)]
}

fn append_strategy() -> impl Strategy<Value = AppendSpec> {
    (
        queue_strategy(),
        1..=4usize,
        0..3000usize,
        any::<bool>(),
        prop::option::weighted(0.4, 0..PRODUCERS),
    )
        .prop_map(
            |(queue, records, value_len, durable, producer)| AppendSpec {
                queue,
                records,
                value_len,
                durable,
                producer,
            },
        )
}

fn crash_strategy() -> impl Strategy<Value = CrashSpec> {
    prop_oneof![
        Just(CrashSpec::DropUnsynced),
        (0..40_000u64).prop_map(CrashSpec::KeepPrefix),
        any::<u64>().prop_map(CrashSpec::KeepWrites),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => append_strategy().prop_map(Op::Append),
        6 => prop::collection::vec(append_strategy(), 2..12).prop_map(Op::AppendConcurrent),
        2 => (queue_strategy(), any::<bool>())
            .prop_map(|(queue, too_large)| Op::AppendBad { queue, too_large }),
        14 => (queue_strategy(), 0..1100u16, 1..40_000usize)
            .prop_map(|(queue, permille, max_bytes)| Op::Read { queue, permille, max_bytes }),
        2 => Just(Op::Flush),
        5 => Just(Op::Retention),
        4 => crash_strategy().prop_map(Op::Crash),
        3 => (prop::collection::vec(append_strategy(), 2..16), 0..16usize, crash_strategy())
            .prop_map(|(specs, wait_for, crash)| Op::CrashMidFlight { specs, wait_for, crash }),
        2 => Just(Op::CleanReopen),
        1 => (1..QUEUES).prop_map(Op::DeleteQueue),
        4 => (queue_strategy(), 0..1001u16).prop_map(|(queue, permille)| Op::TimeLookup { queue, permille }),
        2 => (any::<u64>(), any::<u8>()).prop_map(|(pick, how)| Op::DamageIndex { pick, how }),
    ]
}

fn scenario_strategy() -> impl Strategy<Value = Scenario> {
    (
        prop_oneof![Just(32u64 << 10), Just(64u64 << 10)],
        prop_oneof![2 => Just(None), 1 => (2..6u64).prop_map(|n| Some(n * (32 << 10)))],
        any::<bool>(),
        prop::collection::vec(op_strategy(), 1..80),
    )
        .prop_map(
            |(segment_size_bytes, retention_bytes, written_extents, ops)| Scenario {
                segment_size_bytes,
                retention_bytes,
                written_extents,
                ops,
            },
        )
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// One batch as the model remembers it.
#[derive(Debug, Clone)]
struct ModelBatch {
    base: u64,
    records: u64,
    /// Exactly what was sent (base offset 0).
    sent: Bytes,
    /// Acknowledged Durable, covered by a completed flush, or survived a crash.
    durable: bool,
    /// Global append sequence number (the newest batch lives in the active segment).
    seq: u64,
}

impl ModelBatch {
    fn end(&self) -> u64 {
        self.base + self.records
    }
}

#[derive(Debug, Default, Clone)]
struct ModelQueue {
    log_start: u64,
    batches: Vec<ModelBatch>,
    /// Deleted by `delete_queue`: reads and appends fail with QueueDeleted, offsets read 0.
    deleted: bool,
}

impl ModelQueue {
    fn end(&self) -> u64 {
        self.batches.last().map_or(self.log_start, ModelBatch::end)
    }

    /// End of the last batch that must survive any crash.
    fn durable_end(&self) -> u64 {
        self.batches
            .iter()
            .rev()
            .find(|b| b.durable)
            .map_or(self.log_start, ModelBatch::end)
    }

    fn is_boundary(&self, offset: u64) -> bool {
        offset == self.log_start || self.batches.iter().any(|b| b.end() == offset)
    }

    /// Index of the batch containing `offset`.
    fn batch_index(&self, offset: u64) -> Option<usize> {
        self.batches
            .iter()
            .position(|b| b.base <= offset && offset < b.end())
    }
}

#[derive(Debug, Default, Clone)]
struct Model {
    queues: BTreeMap<u32, ModelQueue>,
    next_seq: u64,
    retention_on: bool,
    /// Global sequence numbers of the batches that may be the last one in log order: that one
    /// sits in the active segment, which retention never removes. One batch after a single
    /// append; all of them after concurrent appends, whose log order the model cannot know.
    /// Empty when unknown (after a crash or a delete).
    newest_seqs: Vec<u64>,
}

impl Model {
    fn queue(&mut self, q: u32) -> &mut ModelQueue {
        self.queues.entry(q).or_default()
    }

    fn push(&mut self, q: u32, base: u64, sent: Bytes, durable: bool) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.newest_seqs = vec![seq];
        let records = record_count(&sent);
        self.queue(q).batches.push(ModelBatch {
            base,
            records,
            sent,
            durable,
            seq,
        });
    }

    fn mark_all_durable(&mut self) {
        for mq in self.queues.values_mut() {
            for b in &mut mq.batches {
                b.durable = true;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

type Check = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err(format!($($fmt)*));
        }
    };
}

/// Reads queue `q` from `from` to `to` and compares every batch with the model.
async fn check_contents(shard: &Shard, model: &ModelQueue, q: u32, from: u64, to: u64) -> Check {
    let mut at = from;
    while at < to {
        let r = shard
            .read(QueueId(q), Offset(at), SCAN_READ_BYTES)
            .await
            .map_err(|e| format!("q{q}: read from {at} (scan to {to}) failed: {e}"))?;
        ensure!(
            !r.batches.is_empty(),
            "q{q}: read from {at} < end {to} returned no batch"
        );
        for stored in &r.batches {
            let i = model
                .batch_index(at)
                .ok_or_else(|| format!("q{q}: engine holds offset {at}, model has no batch"))?;
            let mb = &model.batches[i];
            ensure!(
                mb.base == at,
                "q{q}: scan at {at} but model batch starts at {}",
                mb.base
            );
            if let Some(why) = stored_mismatch(stored, &mb.sent, Offset(mb.base)) {
                return Err(format!("q{q}: batch at offset {at}: {why}"));
            }
            at = mb.end();
        }
    }
    ensure!(at == to, "q{q}: scan ended at {at}, expected {to}");
    Ok(())
}

/// After a reopen: each queue holds a prefix of the model that contains every durable batch
/// (or everything, when nothing may be lost), byte-identical. Truncates the model to it.
async fn check_recovered(shard: &Shard, model: &mut Model, may_lose_unsynced: bool) -> Check {
    for (&q, mq) in model.queues.iter_mut() {
        let end = shard.end_offset(QueueId(q)).0;
        if mq.deleted {
            ensure!(
                end == 0,
                "q{q}: deleted before the crash, back with end {end}"
            );
            continue;
        }
        let log_start = shard.log_start_offset(QueueId(q)).0;
        if model.retention_on {
            ensure!(
                log_start >= mq.log_start && mq.is_boundary(log_start),
                "q{q}: log start {log_start} after reopen is not a batch boundary at or after {}",
                mq.log_start
            );
        } else {
            ensure!(
                log_start == mq.log_start,
                "q{q}: log start moved to {log_start} without retention (model {})",
                mq.log_start
            );
        }
        let (lo, hi) = if may_lose_unsynced {
            (mq.durable_end(), mq.end())
        } else {
            (mq.end(), mq.end())
        };
        ensure!(
            lo.max(log_start) <= end && end <= hi,
            "q{q}: recovered end {end} outside [{lo}, {hi}] (durable end {}, log start {log_start})",
            mq.durable_end()
        );
        ensure!(
            mq.is_boundary(end),
            "q{q}: recovered end {end} is inside a batch"
        );
        mq.batches.retain(|b| b.base >= log_start && b.end() <= end);
        mq.log_start = log_start;
        // What survived a crash is on the device now; losing it later would be a bug.
        for b in &mut mq.batches {
            b.durable = true;
        }
        check_contents(shard, mq, q, log_start, end).await?;
    }
    // The newest batch may have been lost, and a reopen may start a new segment.
    model.newest_seqs.clear();
    let listed = shard.queues();
    for (&q, mq) in &model.queues {
        if mq.end() > 0 && mq.end() > mq.log_start {
            ensure!(
                listed.contains(&QueueId(q)),
                "q{q} holds data but is not in queues()"
            );
        }
    }
    for q in &listed {
        let known = model.queues.get(&q.0);
        ensure!(known.is_some(), "queues() lists {q:?}, never appended to");
        ensure!(
            !known.is_some_and(|mq| mq.deleted),
            "queues() lists deleted {q:?}"
        );
    }
    Ok(())
}

/// After any step: the engine's end and log start agree with the model; under retention the
/// model follows the engine's log start (background retention may move it at any time).
fn check_offsets(shard: &Shard, model: &mut Model) -> Check {
    let retention_on = model.retention_on;
    let newest_seqs = std::mem::take(&mut model.newest_seqs);
    for (&q, mq) in model.queues.iter_mut() {
        let end = shard.end_offset(QueueId(q)).0;
        if mq.deleted {
            let start = shard.log_start_offset(QueueId(q)).0;
            ensure!(
                end == 0 && start == 0,
                "q{q}: deleted, but offsets {start}..{end}"
            );
            continue;
        }
        ensure!(
            end == mq.end(),
            "q{q}: end offset {end}, model {}",
            mq.end()
        );
        let log_start = shard.log_start_offset(QueueId(q)).0;
        if !retention_on {
            ensure!(
                log_start == mq.log_start,
                "q{q}: log start {log_start} without retention"
            );
            continue;
        }
        ensure!(
            log_start >= mq.log_start && log_start <= end && mq.is_boundary(log_start),
            "q{q}: log start {log_start} not a batch boundary in [{}, {end}]",
            mq.log_start
        );
        mq.batches.retain(|b| b.base >= log_start);
        mq.log_start = log_start;
    }
    if !newest_seqs.is_empty() {
        let held = model
            .queues
            .values()
            .flat_map(|mq| &mq.batches)
            .any(|b| newest_seqs.contains(&b.seq));
        ensure!(
            held,
            "retention removed the newest batch (one of seqs {newest_seqs:?}), which is in the active segment"
        );
    }
    model.newest_seqs = newest_seqs;
    check_producers(shard, model)
}

/// The engine remembers, per queue and idempotent producer, the last
/// [`PRODUCER_HISTORY`] batches of what the queue holds (newest last), across restarts.
/// Skipped under retention (whether state of deleted segments is kept is the broker's policy).
fn check_producers(shard: &Shard, model: &Model) -> Check {
    if model.retention_on {
        return Ok(());
    }
    let mut max_pid = None;
    for (&q, mq) in &model.queues {
        if mq.deleted {
            continue;
        }
        for p in 0..PRODUCERS {
            let pid = PRODUCER_ID_BASE + i64::from(p);
            let mine: Vec<ProducerBatch> = mq
                .batches
                .iter()
                .filter_map(|b| {
                    let h = BatchHeader::parse(&b.sent).ok()?;
                    (h.producer_id == pid).then(|| ProducerBatch {
                        epoch: h.producer_epoch,
                        first_seq: h.base_sequence,
                        last_seq: h.base_sequence + h.last_offset_delta,
                        base_offset: Offset(b.base),
                        last_offset: Offset(b.end() - 1),
                    })
                })
                .collect();
            if !mine.is_empty() {
                max_pid = max_pid.max(Some(pid));
            }
            let expected = &mine[mine.len().saturating_sub(PRODUCER_HISTORY)..];
            let got = shard.producer_batches(QueueId(q), pid);
            ensure!(
                got == expected,
                "q{q}: producer_batches({pid}) = {got:?}, model {expected:?}"
            );
        }
    }
    let got = shard.max_producer_id();
    ensure!(
        got >= max_pid,
        "max_producer_id {got:?} below a producer id the shard holds ({max_pid:?})"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Executing operations
// ---------------------------------------------------------------------------------------------

/// Where the shard's files live, and how a crash is simulated there.
enum Backing {
    Mem(MemStorage),
    /// Real files; crashes end the executor (handled by the disk driver, not here).
    Disk,
}

struct Harness {
    shard: Rc<Shard>,
    config: ShardConfig,
    backing: Backing,
    model: Model,
    batch_seed: u64,
}

impl Harness {
    fn next_batch(&mut self, spec: &AppendSpec) -> Bytes {
        self.batch_seed += 1;
        let stamp = match spec.producer {
            // Sequences only need to be distinct and increasing here; the broker checks them.
            Some(p) => ProducerStamp {
                producer_id: PRODUCER_ID_BASE + i64::from(p),
                producer_epoch: i16::from(p),
                base_sequence: (self.batch_seed * 8) as i32,
            },
            None => ProducerStamp::NONE,
        };
        make_batch_stamped(self.batch_seed, spec.records, spec.value_len, stamp)
    }

    fn fsync_count(&self) -> Option<u64> {
        match &self.backing {
            Backing::Mem(m) => Some(m.fsync_count()),
            Backing::Disk => None,
        }
    }

    async fn append(&mut self, spec: &AppendSpec) -> Check {
        let batch = self.next_batch(spec);
        let q = spec.queue;
        let expected_base = self.model.queue(q).end();
        let fsyncs_before = self.fsync_count();
        let durability = if spec.durable {
            Durability::Durable
        } else {
            Durability::Written
        };
        let a = self
            .shard
            .append(QueueId(q), batch.clone(), durability)
            .await
            .map_err(|e| format!("q{q}: append of a good batch failed: {e}"))?;
        let n = record_count(&batch);
        ensure!(
            a.base_offset == Offset(expected_base)
                && a.last_offset == Offset(expected_base + n - 1),
            "q{q}: append got [{:?}, {:?}], expected [{expected_base}, {}]",
            a.base_offset,
            a.last_offset,
            expected_base + n - 1
        );
        if let (true, Some(before)) = (spec.durable, fsyncs_before) {
            let after = self.fsync_count().unwrap_or(before);
            ensure!(
                after > before,
                "q{q}: Durable append resolved with no fdatasync ({before})"
            );
        }
        self.model.push(q, expected_base, batch, spec.durable);
        Ok(())
    }

    async fn append_concurrent(&mut self, specs: &[AppendSpec]) -> Check {
        let batches: Vec<Bytes> = specs.iter().map(|s| self.next_batch(s)).collect();
        let tasks: Vec<_> = specs
            .iter()
            .zip(&batches)
            .map(|(s, b)| {
                let shard = self.shard.clone();
                let (q, b) = (QueueId(s.queue), b.clone());
                let d = if s.durable {
                    Durability::Durable
                } else {
                    Durability::Written
                };
                glommio::spawn_local(async move { shard.append(q, b, d).await })
            })
            .collect();
        let mut results = Vec::with_capacity(tasks.len());
        for t in tasks {
            results.push(t.await);
        }
        // Per queue, the assigned ranges must tile [old end, new end) in some order.
        let mut landed: Vec<(u32, u64, usize)> = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            let q = specs[i].queue;
            let a = r.map_err(|e| format!("q{q}: concurrent append #{i} failed: {e}"))?;
            let n = record_count(&batches[i]);
            ensure!(
                a.last_offset.0 + 1 == a.base_offset.0 + n,
                "q{q}: concurrent append #{i} got [{:?}, {:?}] for {n} records",
                a.base_offset,
                a.last_offset
            );
            landed.push((q, a.base_offset.0, i));
        }
        landed.sort();
        let mut seqs = Vec::with_capacity(landed.len());
        for (q, base, i) in landed {
            let expected = self.model.queue(q).end();
            ensure!(
                base == expected,
                "q{q}: concurrent appends left a gap or overlap at {expected} (got {base})"
            );
            seqs.push(self.model.next_seq);
            self.model
                .push(q, base, batches[i].clone(), specs[i].durable);
        }
        // Sorted by queue, not by log position: any of them may be the last in the log.
        if !seqs.is_empty() {
            self.model.newest_seqs = seqs;
        }
        Ok(())
    }

    async fn append_bad(&mut self, q: u32, too_large: bool) -> Check {
        self.batch_seed += 1;
        let end_before = self.shard.end_offset(QueueId(q));
        let r = if too_large {
            let b = make_batch(self.batch_seed, 2, MAX_BATCH_BYTES as usize / 2 + 100);
            let r = self.shard.append(QueueId(q), b, Durability::Written).await;
            ensure!(
                matches!(r, Err(EngineError::BatchTooLarge { .. })),
                "q{q}: oversized batch: {r:?}"
            );
            r
        } else {
            let mut v = make_batch(self.batch_seed, 2, 100).to_vec();
            let at = v.len() - 3;
            v[at] ^= 0x40;
            let r = self
                .shard
                .append(QueueId(q), Bytes::from(v), Durability::Durable)
                .await;
            ensure!(
                matches!(r, Err(EngineError::CorruptBatch(_))),
                "q{q}: corrupt batch: {r:?}"
            );
            r
        };
        drop(r);
        let end_after = self.shard.end_offset(QueueId(q));
        ensure!(
            end_after == end_before,
            "q{q}: refused batch moved end {end_before:?} -> {end_after:?}"
        );
        Ok(())
    }

    async fn read(&mut self, q: u32, permille: u16, max_bytes: usize) -> Check {
        check_offsets(&self.shard, &mut self.model)?;
        let mq = self.model.queue(q).clone();
        let (start, end) = (mq.log_start, mq.end());
        let from = if permille > 1000 {
            end + u64::from(permille - 1000)
        } else {
            start + (end - start) * u64::from(permille) / 1000
        };
        let r = self.shard.read(QueueId(q), Offset(from), max_bytes).await;
        if from > end {
            ensure!(
                matches!(r, Err(EngineError::OffsetOutOfRange { .. })),
                "q{q}: read from {from} past end {end}: {r:?}"
            );
            return Ok(());
        }
        let r = r.map_err(|e| format!("q{q}: read from {from} in [{start}, {end}] failed: {e}"))?;
        ensure!(
            r.end_offset == Offset(end),
            "q{q}: read end_offset {:?}, model {end}",
            r.end_offset
        );
        ensure!(
            r.log_start_offset == Offset(start),
            "q{q}: read log_start_offset {:?}, model {start}",
            r.log_start_offset
        );
        if from == end {
            ensure!(
                r.batches.is_empty(),
                "q{q}: read at end {end} returned {} batches",
                r.batches.len()
            );
            return Ok(());
        }
        ensure!(
            !r.batches.is_empty(),
            "q{q}: read from {from} < end {end} returned nothing"
        );
        let total: usize = r.batches.iter().map(Bytes::len).sum();
        ensure!(
            r.batches.len() == 1 || total <= max_bytes,
            "q{q}: read returned {} batches, {total} bytes > max_bytes {max_bytes}",
            r.batches.len()
        );
        let first = mq
            .batch_index(from)
            .ok_or_else(|| format!("q{q}: model has no batch at {from}"))?;
        for (i, stored) in (first..).zip(&r.batches) {
            let mb = mq
                .batches
                .get(i)
                .ok_or_else(|| format!("q{q}: read returned a batch past the end"))?;
            if let Some(why) = stored_mismatch(stored, &mb.sent, Offset(mb.base)) {
                return Err(format!(
                    "q{q}: read from {from}, batch at {}: {why}",
                    mb.base
                ));
            }
        }
        Ok(())
    }

    async fn reopen(&mut self, may_lose_unsynced: bool) -> Check {
        let io: Rc<dyn Storage> = match &self.backing {
            Backing::Mem(m) => Rc::new(m.process_view()),
            Backing::Disk => return Err("disk reopen is done by the driver".into()),
        };
        self.shard = Shard::open_with_io(self.config.clone(), io)
            .await
            .map_err(|e| format!("reopen failed: {e}"))?;
        check_recovered(&self.shard, &mut self.model, may_lose_unsynced).await
    }

    /// Runs one operation. Returns `Some(op)` for a crash/reopen on disk, which ends the life.
    async fn step(&mut self, op: &Op) -> Result<Option<Op>, String> {
        let deleted = |q: &u32| self.model.queues.get(q).is_some_and(|mq| mq.deleted);
        let live = |specs: &[AppendSpec]| -> Vec<AppendSpec> {
            specs
                .iter()
                .filter(|s| !deleted(&s.queue))
                .cloned()
                .collect()
        };
        match op {
            Op::Append(s) if deleted(&s.queue) => self.on_deleted(s.queue, true).await?,
            Op::Read { queue, .. } if deleted(queue) => self.on_deleted(*queue, false).await?,
            Op::AppendBad { queue, .. } if deleted(queue) => {}
            Op::Append(s) => self.append(s).await?,
            Op::AppendConcurrent(specs) => {
                let specs = live(specs);
                self.append_concurrent(&specs).await?
            }
            Op::AppendBad { queue, too_large } => self.append_bad(*queue, *too_large).await?,
            Op::Read {
                queue,
                permille,
                max_bytes,
            } => self.read(*queue, *permille, *max_bytes).await?,
            Op::DeleteQueue(q) => self.delete_queue(*q).await?,
            Op::TimeLookup { queue, permille } => self.time_lookup(*queue, *permille).await?,
            Op::Flush => {
                self.shard
                    .flush()
                    .await
                    .map_err(|e| format!("flush failed: {e}"))?;
                self.model.mark_all_durable();
            }
            Op::Retention => {
                self.shard
                    .enforce_retention()
                    .await
                    .map_err(|e| format!("retention failed: {e}"))?;
            }
            Op::Crash(spec) => {
                let Backing::Mem(mem) = &self.backing else {
                    return Ok(Some(op.clone()));
                };
                mem.crash(crash_mode(*spec));
                self.reopen(true).await?;
            }
            Op::CrashMidFlight {
                specs,
                wait_for,
                crash,
            } => {
                let specs = live(specs);
                self.crash_mid_flight(&specs, *wait_for, *crash).await?;
            }
            Op::CleanReopen => {
                self.shard
                    .close()
                    .await
                    .map_err(|e| format!("close failed: {e}"))?;
                self.model.mark_all_durable();
                if matches!(self.backing, Backing::Disk) {
                    return Ok(Some(op.clone()));
                }
                self.reopen(false).await?;
            }
            Op::DamageIndex { pick, how } => {
                self.shard
                    .close()
                    .await
                    .map_err(|e| format!("close failed: {e}"))?;
                self.model.mark_all_durable();
                match &self.backing {
                    Backing::Mem(mem) => damage_mem_index(mem, &self.config.dir, *pick, *how).await,
                    Backing::Disk => {
                        damage_disk_index(&self.config.dir, *pick, *how);
                        return Ok(Some(op.clone()));
                    }
                }
                self.reopen(false).await?;
            }
        }
        check_offsets(&self.shard, &mut self.model)?;
        Ok(None)
    }
}

impl Harness {
    /// Appends and reads of a deleted queue fail with QueueDeleted and change nothing.
    async fn on_deleted(&mut self, q: u32, append: bool) -> Check {
        let r = if append {
            let b = make_batch(u64::MAX - u64::from(q), 1, 10);
            self.shard
                .append(QueueId(q), b, Durability::Durable)
                .await
                .map(|_| ())
        } else {
            self.shard
                .read(QueueId(q), Offset(0), 1000)
                .await
                .map(|_| ())
        };
        ensure!(
            matches!(r, Err(EngineError::QueueDeleted(_))),
            "q{q}: {} of a deleted queue: {r:?}",
            if append { "append" } else { "read" }
        );
        Ok(())
    }

    async fn delete_queue(&mut self, q: u32) -> Check {
        let Some(mq) = self.model.queues.get(&q) else {
            return Ok(());
        };
        if mq.deleted || mq.batches.is_empty() {
            return Ok(());
        }
        let newest_here = mq
            .batches
            .iter()
            .any(|b| self.model.newest_seqs.contains(&b.seq));
        self.shard
            .delete_queue(QueueId(q))
            .await
            .map_err(|e| format!("q{q}: delete_queue failed: {e}"))?;
        let mq = self.model.queue(q);
        mq.deleted = true;
        mq.batches.clear();
        mq.log_start = 0;
        if newest_here {
            self.model.newest_seqs.clear();
        }
        ensure!(
            !self.shard.queues().contains(&QueueId(q)),
            "q{q}: still in queues() after delete_queue"
        );
        Ok(())
    }

    /// `offset_for_timestamp` against the model: the first batch, in offset order, whose max
    /// timestamp is >= ts (batches of concurrent appends need not be in timestamp order).
    async fn time_lookup(&mut self, q: u32, permille: u16) -> Check {
        if self.model.queues.get(&q).is_some_and(|mq| mq.deleted) {
            return Ok(());
        }
        check_offsets(&self.shard, &mut self.model)?;
        let mq = self.model.queue(q).clone();
        let max_ts: Vec<i64> = mq.batches.iter().map(|b| max_timestamp(&b.sent)).collect();
        let lo = max_ts.iter().min().copied().unwrap_or(0) - 1;
        let hi = max_ts.iter().max().copied().unwrap_or(0) + 1;
        let ts = lo + (hi - lo) * i64::from(permille) / 1000;
        let expected = mq
            .batches
            .iter()
            .zip(&max_ts)
            .find(|(_, &t)| t >= ts)
            .map(|(b, &t)| (Offset(b.base), t));
        let got = self
            .shard
            .offset_for_timestamp(QueueId(q), ts)
            .await
            .map_err(|e| format!("q{q}: offset_for_timestamp({ts}) failed: {e}"))?;
        ensure!(
            got == expected,
            "q{q}: offset_for_timestamp({ts}) = {got:?}, model {expected:?} (max timestamps {max_ts:?})"
        );
        Ok(())
    }
}

fn max_timestamp(batch: &[u8]) -> i64 {
    ringmq_wire::record_batch::BatchHeader::parse(batch)
        .map(|h| h.max_timestamp)
        .unwrap_or(i64::MIN)
}

fn crash_mode(spec: CrashSpec) -> CrashMode {
    match spec {
        CrashSpec::DropUnsynced => CrashMode::DropUnsynced,
        CrashSpec::KeepPrefix(bytes) => CrashMode::KeepPrefix { bytes },
        CrashSpec::KeepWrites(mask) => CrashMode::KeepWrites { mask },
    }
}

/// The batches of one queue whose fate is unknown at a crash (issued, never resolved).
type InFlight = BTreeMap<u32, Vec<Bytes>>;

impl Harness {
    async fn crash_mid_flight(
        &mut self,
        specs: &[AppendSpec],
        wait_for: usize,
        crash: CrashSpec,
    ) -> Check {
        let Backing::Mem(mem) = &self.backing else {
            return self.append_concurrent(specs).await;
        };
        let mem = mem.clone();
        let batches: Vec<Bytes> = specs.iter().map(|s| self.next_batch(s)).collect();
        let (tx, rx) = glommio::channels::local_channel::new_bounded(specs.len());
        let tx = Rc::new(tx);
        let tasks: Vec<_> = specs
            .iter()
            .zip(&batches)
            .enumerate()
            .map(|(i, (s, b))| {
                let (shard, tx) = (self.shard.clone(), tx.clone());
                let (q, b) = (QueueId(s.queue), b.clone());
                let d = if s.durable {
                    Durability::Durable
                } else {
                    Durability::Written
                };
                glommio::spawn_local(async move {
                    let r = shard.append(q, b, d).await.map(|a| a.base_offset.0);
                    let _ = tx.send((i, r)).await;
                })
            })
            .collect();
        let mut resolved: Vec<Option<u64>> = vec![None; specs.len()];
        for _ in 0..wait_for.min(specs.len()) {
            let Some((i, r)) = rx.recv().await else { break };
            let base = r.map_err(|e| {
                format!(
                    "q{}: append #{i} failed before the crash: {e}",
                    specs[i].queue
                )
            })?;
            resolved[i] = Some(base);
        }
        // Power fails now: the rest are somewhere between staged and synced.
        mem.crash(crash_mode(crash));
        drop(tasks);
        drop(rx);
        let mut in_flight: InFlight = BTreeMap::new();
        let mut acked: Vec<(u32, u64, usize)> = Vec::new();
        for (i, r) in resolved.iter().enumerate() {
            match r {
                Some(base) => acked.push((specs[i].queue, *base, i)),
                None => in_flight
                    .entry(specs[i].queue)
                    .or_default()
                    .push(batches[i].clone()),
            }
        }
        acked.sort();
        // Acknowledged ones join the model at their offsets; a Written one may still be lost.
        for (q, base, i) in acked {
            let mq = self.model.queue(q);
            ensure!(
                base >= mq.end(),
                "q{q}: append #{i} acknowledged at {base}, below the model end {}",
                mq.end()
            );
            self.model
                .push(q, base, batches[i].clone(), specs[i].durable);
        }
        let io: Rc<dyn Storage> = Rc::new(mem.process_view());
        self.shard = Shard::open_with_io(self.config.clone(), io)
            .await
            .map_err(|e| format!("reopen after mid-flight crash: {e}"))?;
        check_recovered_in_flight(&self.shard, &mut self.model, in_flight).await
    }
}

/// Like [`check_recovered`], but the model may have gaps (offsets taken by appends that never
/// resolved): the engine must fill each gap with one of that queue's in-flight batches, or
/// end before it. Durable acknowledged batches must all be there.
async fn check_recovered_in_flight(
    shard: &Shard,
    model: &mut Model,
    mut in_flight: InFlight,
) -> Check {
    for &q in in_flight.keys() {
        model.queue(q);
    }
    let retention_on = model.retention_on;
    for (&q, mq) in model.queues.iter_mut() {
        let end = shard.end_offset(QueueId(q)).0;
        if mq.deleted {
            ensure!(
                end == 0,
                "q{q}: deleted before the crash, back with end {end}"
            );
            continue;
        }
        let log_start = shard.log_start_offset(QueueId(q)).0;
        ensure!(
            log_start == mq.log_start || (retention_on && log_start > mq.log_start),
            "q{q}: log start {log_start} after reopen (model {})",
            mq.log_start
        );
        let durable_end = mq.durable_end();
        ensure!(
            end >= durable_end.max(log_start),
            "q{q}: recovered end {end} lost durable data (to {durable_end})"
        );
        let maybe = in_flight.entry(q).or_default();
        let mut kept: Vec<ModelBatch> = Vec::new();
        let mut at = log_start;
        while at < end {
            let r = shard
                .read(QueueId(q), Offset(at), SCAN_READ_BYTES)
                .await
                .map_err(|e| format!("q{q}: read at {at} (end {end}): {e}"))?;
            ensure!(
                !r.batches.is_empty(),
                "q{q}: empty read at {at} < end {end}"
            );
            for stored in &r.batches {
                let known = mq
                    .batches
                    .iter()
                    .find(|b| b.base <= at && at < b.end())
                    .cloned();
                let mb = match known {
                    Some(b) => {
                        ensure!(
                            b.base == at,
                            "q{q}: scan at {at} lands inside batch {}",
                            b.base
                        );
                        b
                    }
                    None => {
                        let pos = maybe
                            .iter()
                            .position(|b| stored_mismatch(stored, b, Offset(at)).is_none())
                            .ok_or_else(|| format!("q{q}: batch at {at} is neither acknowledged there nor in flight"))?;
                        let sent = maybe.swap_remove(pos);
                        let records = record_count(&sent);
                        ModelBatch {
                            base: at,
                            records,
                            sent,
                            durable: true,
                            seq: u64::MAX,
                        }
                    }
                };
                if let Some(why) = stored_mismatch(stored, &mb.sent, Offset(at)) {
                    return Err(format!("q{q}: batch at {at}: {why}"));
                }
                at = mb.end();
                kept.push(ModelBatch {
                    durable: true,
                    ..mb
                });
            }
        }
        ensure!(at == end, "q{q}: scan ended at {at}, end offset {end}");
        mq.batches = kept;
        mq.log_start = log_start;
    }
    model.newest_seqs.clear();
    Ok(())
}

/// Damages one segment index file (`<start>.idx`) of a closed in-memory shard.
async fn damage_mem_index(mem: &MemStorage, dir: &std::path::Path, pick: u64, how: u8) {
    let files: Vec<PathBuf> = mem
        .paths()
        .into_iter()
        .filter(|p| p.parent() == Some(dir) && p.extension().is_some_and(|x| x == "idx"))
        .collect();
    if files.is_empty() {
        return;
    }
    let file = files[(pick % files.len() as u64) as usize].clone();
    let len = mem.contents(&file).map_or(0, |b| b.len() as u64).max(1);
    match how % 3 {
        0 => {
            mem.flip_bit(&file, pick % len, (pick >> 32) as u8 % 8);
        }
        1 => {
            let f = mem
                .open(file, ringmq_engine::io::FileKind::Buffered, false)
                .await
                .expect("open index file");
            f.truncate((pick >> 8) % len).await.expect("truncate");
            f.fdatasync().await.expect("sync");
        }
        _ => mem.remove(file).await.expect("remove index file"),
    }
}

/// Damages one segment index file of a closed shard on real files.
fn damage_disk_index(dir: &std::path::Path, pick: u64, how: u8) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list shard dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "idx"))
        .collect();
    if files.is_empty() {
        return;
    }
    files.sort();
    let file = files[(pick % files.len() as u64) as usize].clone();
    let mut bytes = std::fs::read(&file).expect("read index file");
    let len = bytes.len().max(1) as u64;
    match how % 3 {
        0 => {
            if let Some(b) = bytes.get_mut((pick % len) as usize) {
                *b ^= 1 << ((pick >> 32) % 8);
            }
            std::fs::write(&file, bytes).expect("write index file");
        }
        1 => {
            bytes.truncate(((pick >> 8) % len) as usize);
            std::fs::write(&file, bytes).expect("write index file");
        }
        _ => std::fs::remove_file(&file).expect("remove index file"),
    }
}

fn config_for(s: &Scenario, dir: PathBuf) -> ShardConfig {
    ShardConfig {
        retention_bytes: s.retention_bytes,
        ..small_config(dir, s.segment_size_bytes, MAX_BATCH_BYTES)
    }
}

fn describe(s: &Scenario, step: usize, err: String) -> String {
    format!(
        "step {step} ({:?}) of {} (segment {} B, retention {:?}, written extents {}): {err}",
        s.ops.get(step),
        s.ops.len(),
        s.segment_size_bytes,
        s.retention_bytes,
        s.written_extents
    )
}

/// The whole scenario on one executor, on `MemStorage`.
fn run_mem(s: Scenario) -> Check {
    run_glommio(move || async move {
        let mem = MemStorage::new();
        mem.set_prefers_written_extents(s.written_extents);
        let config = config_for(&s, PathBuf::from("/mem/shard"));
        let io: Rc<dyn Storage> = Rc::new(mem.process_view());
        let shard = Shard::open_with_io(config.clone(), io)
            .await
            .map_err(|e| format!("open: {e}"))?;
        let model = Model {
            retention_on: s.retention_bytes.is_some(),
            ..Model::default()
        };
        let mut h = Harness {
            shard,
            config,
            backing: Backing::Mem(mem),
            model,
            batch_seed: 0,
        };
        check_recovered(&h.shard, &mut h.model, false)
            .await
            .map_err(|e| describe(&s, 0, e))?;
        for (i, op) in s.ops.iter().enumerate() {
            h.step(op).await.map_err(|e| describe(&s, i, e))?;
        }
        Ok(())
    })
}

/// The scenario on real files; each crash or clean reopen ends one executor ("process") and
/// the next one reopens the directory.
fn run_disk(s: Scenario) -> Check {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = config_for(&s, dir.path().join("shard"));
    let model = Model {
        retention_on: s.retention_bytes.is_some(),
        ..Model::default()
    };
    let mut state = (model, 0u64, 0usize);
    loop {
        let (model, seed, first_op) = state;
        if first_op > s.ops.len() {
            return Ok(());
        }
        let (s2, config2) = (s.clone(), config.clone());
        let life = run_glommio(move || async move {
            let shard = Shard::open(config2.clone())
                .await
                .map_err(|e| describe(&s2, first_op, format!("open: {e}")))?;
            let mut h = Harness {
                shard,
                config: config2,
                backing: Backing::Disk,
                model,
                batch_seed: seed,
            };
            // Process death keeps completed writes: nothing acknowledged may be lost.
            check_recovered(&h.shard, &mut h.model, false)
                .await
                .map_err(|e| describe(&s2, first_op, e))?;
            for (i, op) in s2.ops.iter().enumerate().skip(first_op) {
                if h.step(op).await.map_err(|e| describe(&s2, i, e))?.is_some() {
                    // Ending this executor drops the shard without closing it.
                    return Ok((h.model, h.batch_seed, i + 1));
                }
            }
            h.shard
                .close()
                .await
                .map_err(|e| format!("final close: {e}"))?;
            Ok::<_, String>((h.model, h.batch_seed, s2.ops.len() + 1))
        })?;
        state = life;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(64), ..ProptestConfig::default() })]

    #[test]
    fn mem_shard_matches_model(s in scenario_strategy()) {
        if let Err(e) = run_mem(s) {
            prop_assert!(false, "{}", e);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(32), ..ProptestConfig::default() })]

    #[test]
    fn disk_shard_matches_model(s in scenario_strategy()) {
        if let Err(e) = run_disk(s) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// A fixed scenario that exercises every operation once, so a plain failure is easy to read
/// before proptest's shrinking gets involved.
#[test]
fn mem_fixed_scenario() {
    let a = |queue, durable| {
        Op::Append(AppendSpec {
            queue,
            records: 3,
            value_len: 2500,
            durable,
            producer: Some(queue as u8 % PRODUCERS),
        })
    };
    let mut ops = vec![a(0, true), a(1, false), a(0, false), a(2, true)];
    ops.push(Op::Read {
        queue: 0,
        permille: 500,
        max_bytes: 100,
    });
    ops.push(Op::AppendConcurrent(
        (0..8)
            .map(|i| AppendSpec {
                queue: i % 3,
                records: 2,
                value_len: 900,
                durable: i % 2 == 0,
                producer: None,
            })
            .collect(),
    ));
    ops.push(Op::AppendBad {
        queue: 1,
        too_large: false,
    });
    ops.push(Op::AppendBad {
        queue: 1,
        too_large: true,
    });
    ops.push(Op::Crash(CrashSpec::DropUnsynced));
    ops.extend((0..12).map(|i| a(i % 3, i % 4 == 0)));
    ops.push(Op::Crash(CrashSpec::KeepPrefix(6000)));
    ops.push(Op::Read {
        queue: 2,
        permille: 0,
        max_bytes: 1,
    });
    ops.push(Op::Flush);
    ops.push(Op::Crash(CrashSpec::KeepWrites(0b1011)));
    ops.push(Op::Retention);
    ops.push(Op::CleanReopen);
    ops.extend((0..3).map(|how| Op::DamageIndex { pick: 41, how }));
    ops.push(Op::Read {
        queue: 1,
        permille: 1005,
        max_bytes: 1000,
    });
    let s = Scenario {
        segment_size_bytes: 32 << 10,
        retention_bytes: None,
        written_extents: false,
        ops,
    };
    if let Err(e) = run_mem(s) {
        panic!("{e}");
    }
}
