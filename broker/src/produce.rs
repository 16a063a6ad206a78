//! Produce: validate each batch on the connection's core, append on the owning core, apply the
//! idempotent-producer rules there.
//!
//! ```text
//!  conn core: decode (records = slices of the frame) ─ split_batches + validate (CRC-32C)
//!      │ group partitions by owning core
//!      ├──► core k: per partition, batches in order: idempotence check → Shard::append
//!      └──► core j: ...                          (partitions of one core appended concurrently,
//!                                                  so group commit shares one fdatasync)
//!  acks 0 → Written, no response; acks 1 → Written; acks -1 (all) → Durable.
//! ```
//!
//! Idempotence (per queue and producer id, state kept on the owning core): the last five
//! batches' sequence ranges and offsets. A retry of one of them succeeds with its original
//! offsets; a sequence gap is OUT_OF_ORDER_SEQUENCE_NUMBER; an older epoch is
//! INVALID_PRODUCER_EPOCH. The state is reserved synchronously before the append is awaited,
//! so pipelined requests of one producer are checked in arrival order; after a restart it is
//! seeded from the engine's `producer_batches`, which the engine rebuilds on recovery.

use crate::core::{call_owners, current, futures_join_all, Core, Slot};
use crate::errors;
use crate::metadata::Place;
use bytes::Bytes;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use ringmq_engine::{Durability, QueueId};
use ringmq_wire::record_batch::{split_batches, validate, BatchError, BatchHeader};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

/// Batches remembered per producer and partition (Kafka's max in-flight requests).
pub const PRODUCER_BATCHES_KEPT: usize = 5;
/// (partition, producer) states one core keeps in memory before dropping idle ones.
pub const MAX_PRODUCER_STATES_PER_CORE: usize = 200_000;

/// The outcome for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionResult {
    pub error_code: i16,
    pub base_offset: i64,
    pub log_start_offset: i64,
    /// The broker's timestamp for LogAppendTime topics, else -1.
    pub log_append_time_ms: i64,
}

impl PartitionResult {
    fn error(code: i16) -> PartitionResult {
        PartitionResult {
            error_code: code,
            base_offset: -1,
            log_start_offset: -1,
            log_append_time_ms: -1,
        }
    }
}

/// Handles a Produce request; `None` for acks=0 (no response is sent).
pub async fn handle(core: &Rc<Core>, req: ProduceRequest, version: i16) -> Option<ProduceResponse> {
    let acks = req.acks;
    let durability = match acks {
        0 | 1 => Some(Durability::Written),
        -1 => Some(Durability::Durable),
        _ => None,
    };
    let meta = core.meta();
    // (topic index, partition index, result) slots in request order.
    let mut results: Vec<Vec<PartitionResult>> = Vec::with_capacity(req.topic_data.len());
    // Work per owning core, beside its (topic, partition) slot, in first-seen order (a handful
    // of cores: a linear search).
    let mut per_core: Vec<(usize, Vec<(Slot, Work)>)> = Vec::new();
    for (ti, topic) in req.topic_data.iter().enumerate() {
        // Looked up once per topic, not once per partition.
        let topic_meta = meta.topic(topic.name.as_str());
        let log_append_time = topic_meta.is_some_and(|t| {
            t.configs.get(TIMESTAMP_TYPE_CONFIG).map(String::as_str) == Some("LogAppendTime")
        });
        let mut slots = Vec::with_capacity(topic.partition_data.len());
        for (pi, part) in topic.partition_data.iter().enumerate() {
            let Some(durability) = durability else {
                slots.push(PartitionResult::error(errors::INVALID_REQUIRED_ACKS));
                continue;
            };
            let place = topic_meta.and_then(|t| {
                usize::try_from(part.index)
                    .ok()
                    .and_then(|p| t.partitions.get(p).copied())
            });
            let Some(place) = place else {
                slots.push(PartitionResult::error(errors::UNKNOWN_TOPIC_OR_PARTITION));
                continue;
            };
            match valid_records(part.records.as_ref(), log_append_time) {
                Ok(records) => {
                    let work = Work {
                        place,
                        records,
                        durability,
                        log_append_time,
                    };
                    let owner = place.core as usize;
                    match per_core.iter_mut().find(|(o, _)| *o == owner) {
                        Some((_, list)) => list.push(((ti, pi), work)),
                        None => per_core.push((owner, vec![((ti, pi), work)])),
                    }
                    slots.push(PartitionResult::error(errors::UNKNOWN_SERVER_ERROR));
                }
                Err(code) => slots.push(PartitionResult::error(code)),
            }
        }
        results.push(slots);
    }
    let unreachable = PartitionResult::error(errors::NOT_LEADER_OR_FOLLOWER);
    for ((ti, pi), r) in call_owners(
        &core.mesh,
        "produce",
        per_core,
        unreachable,
        append_on_owner,
    )
    .await
    {
        results[ti][pi] = r;
    }
    if acks == 0 {
        return None;
    }
    let responses = req
        .topic_data
        .iter()
        .zip(results)
        .map(|(topic, slots)| {
            let partitions = topic
                .partition_data
                .iter()
                .zip(slots)
                .map(|(part, r)| {
                    PartitionProduceResponse::default()
                        .with_index(part.index)
                        .with_error_code(r.error_code)
                        .with_base_offset(r.base_offset)
                        .with_log_append_time_ms(r.log_append_time_ms)
                        .with_log_start_offset(r.log_start_offset)
                })
                .collect();
            TopicProduceResponse::default()
                .with_name(topic.name.clone())
                .with_topic_id(topic.topic_id)
                .with_partition_responses(partitions)
        })
        .collect();
    let _ = version;
    Some(ProduceResponse::default().with_responses(responses))
}

/// The partition work sent to an owning core.
struct Work {
    place: Place,
    /// The partition's `records` field: one or more whole batches, every one validated.
    records: Bytes,
    durability: Durability,
    /// The topic stamps batches with the broker's time (message.timestamp.type).
    log_append_time: bool,
}

/// Checks that a partition's `records` field is a sequence of whole batches, each with valid
/// counts and CRC-32C, before any of them is appended (Kafka refuses the partition as a whole).
///
/// The CRC is computed once per batch where that is safe: the store verifies every batch
/// before it writes anything (`Shard::append`, `MemStore::append`: a bad one is
/// `CorruptBatch`, answered CORRUPT_MESSAGE), so a field holding a single batch of a
/// non-idempotent producer is only split here. Verified here as well: several batches (none
/// may be appended when a later one is bad), a batch about to be stamped with LogAppendTime
/// (the stamp recomputes the CRC), and an idempotent producer's batch (its producer id, epoch
/// and sequence drive the idempotence state before the append; they must not come from
/// corrupt bytes).
fn valid_records(records: Option<&Bytes>, will_restamp: bool) -> Result<Bytes, i16> {
    let records = match records {
        Some(r) if !r.is_empty() => r,
        _ => return Err(errors::CORRUPT_MESSAGE),
    };
    let mut ranges = split_batches(records);
    let first = match ranges.next() {
        Some(r) => r.map_err(|e| batch_error_code(&e))?,
        None => return Err(errors::CORRUPT_MESSAGE),
    };
    let single = first.end == records.len();
    let idempotent = BatchHeader::parse(&records[first.clone()])
        .map_err(|e| batch_error_code(&e))?
        .has_producer_id();
    if !single || will_restamp || idempotent {
        validate(&records[first]).map_err(|e| batch_error_code(&e))?;
        for range in ranges {
            let range = range.map_err(|e| batch_error_code(&e))?;
            validate(&records[range]).map_err(|e| batch_error_code(&e))?;
        }
    }
    Ok(records.clone())
}

/// The batches of records [`valid_records`] accepted (zero-copy slices).
fn batches_of(records: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    // Every range is whole: `valid_records` checked the same split.
    split_batches(records).map_while(|range| range.ok().map(|r| records.slice(r)))
}

fn batch_error_code(e: &BatchError) -> i16 {
    match e {
        BatchError::BadMagic(_) => errors::UNSUPPORTED_FOR_MESSAGE_FORMAT,
        _ => errors::CORRUPT_MESSAGE,
    }
}

/// Runs on the owning core: every partition concurrently, each partition's batches in order.
async fn append_on_owner(work: Vec<Work>) -> Vec<PartitionResult> {
    let core = current();
    let results = futures_join_all(work.into_iter().map(|w| append_partition(&core, w))).await;
    core.appended.notify_all();
    results
}

async fn append_partition(core: &Core, w: Work) -> PartitionResult {
    let queue = w.place.queue_id();
    let mut first: Option<i64> = None;
    let append_time = w.log_append_time.then(crate::store::now_ms);
    for batch in batches_of(&w.records) {
        let batch = match append_time {
            Some(now) => stamp_log_append_time(&batch, now),
            None => batch,
        };
        let header = match BatchHeader::parse(&batch) {
            Ok(h) => h,
            Err(e) => return PartitionResult::error(batch_error_code(&e)),
        };
        let base = match core.producers.check(core, queue, &header) {
            Check::Append => {
                let appended = core.store.append(queue, batch, w.durability).await;
                match appended {
                    Ok(a) => {
                        core.note_appended(queue, a.last_offset.0 + 1);
                        core.producers.complete(
                            queue,
                            &header,
                            Some((a.base_offset.0 as i64, a.last_offset.0 as i64)),
                        );
                        a.base_offset.0 as i64
                    }
                    Err(e) => {
                        core.producers.complete(queue, &header, None);
                        if matches!(e, ringmq_engine::EngineError::CorruptBatch(_)) {
                            // The client's batch, refused before anything was written.
                            tracing::debug!(queue = queue.0, "corrupt batch refused: {e}");
                        } else {
                            tracing::warn!(queue = queue.0, "append failed: {e}");
                        }
                        return PartitionResult::error(errors::from_engine(&e));
                    }
                }
            }
            Check::Duplicate { base_offset } => base_offset,
            Check::Reject(code) => return PartitionResult::error(code),
        };
        first.get_or_insert(base);
    }
    PartitionResult {
        log_append_time_ms: append_time.unwrap_or(-1),
        error_code: errors::NONE,
        base_offset: first.unwrap_or(-1),
        log_start_offset: core.store.log_start_offset(queue).0 as i64,
    }
}

/// Topic config naming the timestamp type (`CreateTime` or `LogAppendTime`).
pub const TIMESTAMP_TYPE_CONFIG: &str = "message.timestamp.type";

/// A copy of `batch` marked LogAppendTime with `now` as its max timestamp, as Kafka stores
/// batches of LogAppendTime topics (attributes and max timestamp are under the CRC, so it is
/// recomputed). The only path where the broker rewrites batch bytes.
fn stamp_log_append_time(batch: &Bytes, now: i64) -> Bytes {
    let mut b = bytes::BytesMut::from(&batch[..]);
    let attributes = i16::from_be_bytes([b[21], b[22]]) | 0x08;
    b[21..23].copy_from_slice(&attributes.to_be_bytes());
    b[35..43].copy_from_slice(&now.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b.freeze()
}

/// What the idempotence check decided for one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Append,
    Duplicate { base_offset: i64 },
    Reject(i16),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    first_seq: i32,
    last_seq: i32,
    /// None while the append is in flight.
    offsets: Option<(i64, i64)>,
}

#[derive(Debug, Default)]
struct ProducerState {
    epoch: i16,
    batches: VecDeque<Entry>,
}

/// Idempotent producer state of one core.
#[derive(Debug, Default)]
pub struct ProducerTable {
    map: RefCell<HashMap<(QueueId, i64), ProducerState>>,
}

impl ProducerTable {
    /// Decides what to do with `header`'s batch, reserving its sequence range if it is to be
    /// appended (call [`ProducerTable::complete`] once the append finished).
    pub fn check(&self, core: &Core, queue: QueueId, h: &BatchHeader) -> Check {
        if !h.has_producer_id() {
            return Check::Append;
        }
        let mut map = self.map.borrow_mut();
        let key = (queue, h.producer_id);
        if map.len() >= MAX_PRODUCER_STATES_PER_CORE && !map.contains_key(&key) {
            // Bounded memory: forget every state without an append in flight. Nothing is lost:
            // a forgotten state is re-seeded from the engine's record of the last batches.
            map.retain(|_, s| s.batches.iter().any(|e| e.offsets.is_none()));
        }
        let state = map
            .entry(key)
            .or_insert_with(|| seed(core, queue, h.producer_id));
        decide(state, h)
    }

    /// Records the outcome of an append reserved by [`ProducerTable::check`].
    pub fn complete(&self, queue: QueueId, h: &BatchHeader, offsets: Option<(i64, i64)>) {
        if !h.has_producer_id() {
            return;
        }
        let mut map = self.map.borrow_mut();
        let Some(state) = map.get_mut(&(queue, h.producer_id)) else {
            return;
        };
        let pos = state
            .batches
            .iter()
            .position(|e| e.first_seq == h.base_sequence && e.offsets.is_none());
        if let Some(pos) = pos {
            match offsets {
                Some(o) => state.batches[pos].offsets = Some(o),
                None => {
                    // The append failed: forget the reservation so a retry is not a gap.
                    state.batches.remove(pos);
                }
            }
        }
    }
}

fn seed(core: &Core, queue: QueueId, producer_id: i64) -> ProducerState {
    let stored = core.store.producer_batches(queue, producer_id);
    let epoch = stored.last().map(|b| b.epoch).unwrap_or(i16::MIN);
    let batches = stored
        .iter()
        .filter(|b| b.epoch == epoch)
        .map(|b| Entry {
            first_seq: b.first_seq,
            last_seq: b.last_seq,
            offsets: Some((b.base_offset.0 as i64, b.last_offset.0 as i64)),
        })
        .collect();
    ProducerState { epoch, batches }
}

fn last_seq_of(h: &BatchHeader) -> i32 {
    // Sequences wrap from i32::MAX to 0, as in Kafka.
    let last = i64::from(h.base_sequence) + i64::from(h.last_offset_delta);
    (last % (i64::from(i32::MAX) + 1)) as i32
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

fn decide(state: &mut ProducerState, h: &BatchHeader) -> Check {
    let first_seq = h.base_sequence;
    let last_seq = last_seq_of(h);
    let fresh = state.batches.is_empty() && state.epoch == i16::MIN;
    if !fresh && h.producer_epoch < state.epoch {
        return Check::Reject(errors::INVALID_PRODUCER_EPOCH);
    }
    if !fresh && h.producer_epoch > state.epoch {
        if first_seq != 0 {
            return Check::Reject(errors::OUT_OF_ORDER_SEQUENCE_NUMBER);
        }
        state.batches.clear();
    }
    state.epoch = h.producer_epoch;
    if let Some(dup) = state
        .batches
        .iter()
        .find(|e| e.first_seq == first_seq && e.last_seq == last_seq)
    {
        return match dup.offsets {
            Some((base, _)) => Check::Duplicate { base_offset: base },
            None => Check::Reject(errors::DUPLICATE_SEQUENCE_NUMBER),
        };
    }
    if let Some(last) = state.batches.back() {
        if first_seq != next_seq(last.last_seq) {
            return Check::Reject(errors::OUT_OF_ORDER_SEQUENCE_NUMBER);
        }
    }
    state.batches.push_back(Entry {
        first_seq,
        last_seq,
        offsets: None,
    });
    if state.batches.len() > PRODUCER_BATCHES_KEPT {
        state.batches.pop_front();
    }
    Check::Append
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(epoch: i16, first_seq: i32, records: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 100,
            partition_leader_epoch: -1,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: 9,
            producer_epoch: epoch,
            base_sequence: first_seq,
            record_count: records,
        }
    }

    fn done(state: &mut ProducerState, h: &BatchHeader, base: i64) {
        let e = state
            .batches
            .iter_mut()
            .find(|e| e.first_seq == h.base_sequence)
            .unwrap();
        e.offsets = Some((base, base + i64::from(h.last_offset_delta)));
    }

    #[test]
    fn in_order_batches_append_and_retries_return_original_offsets() {
        let mut s = ProducerState {
            epoch: i16::MIN,
            batches: VecDeque::new(),
        };
        let a = header(0, 0, 3);
        assert_eq!(decide(&mut s, &a), Check::Append);
        done(&mut s, &a, 100);
        let b = header(0, 3, 2);
        assert_eq!(decide(&mut s, &b), Check::Append);
        done(&mut s, &b, 103);
        assert_eq!(decide(&mut s, &a), Check::Duplicate { base_offset: 100 });
        assert_eq!(decide(&mut s, &b), Check::Duplicate { base_offset: 103 });
    }

    #[test]
    fn gaps_old_epochs_and_in_flight_duplicates_are_refused() {
        let mut s = ProducerState {
            epoch: i16::MIN,
            batches: VecDeque::new(),
        };
        let a = header(1, 0, 1);
        assert_eq!(decide(&mut s, &a), Check::Append);
        assert_eq!(
            decide(&mut s, &a),
            Check::Reject(errors::DUPLICATE_SEQUENCE_NUMBER)
        );
        done(&mut s, &a, 0);
        assert_eq!(
            decide(&mut s, &header(1, 5, 1)),
            Check::Reject(errors::OUT_OF_ORDER_SEQUENCE_NUMBER)
        );
        assert_eq!(
            decide(&mut s, &header(0, 1, 1)),
            Check::Reject(errors::INVALID_PRODUCER_EPOCH)
        );
        assert_eq!(
            decide(&mut s, &header(2, 3, 1)),
            Check::Reject(errors::OUT_OF_ORDER_SEQUENCE_NUMBER)
        );
        assert_eq!(decide(&mut s, &header(2, 0, 1)), Check::Append);
    }

    #[test]
    fn only_the_last_five_batches_are_remembered_and_sequences_wrap() {
        let mut s = ProducerState {
            epoch: i16::MIN,
            batches: VecDeque::new(),
        };
        for i in 0..6 {
            let h = header(0, i, 1);
            assert_eq!(decide(&mut s, &h), Check::Append);
            done(&mut s, &h, i64::from(i));
        }
        // Batch 0 fell out of the window: it is now a gap, not a duplicate.
        assert_eq!(
            decide(&mut s, &header(0, 0, 1)),
            Check::Reject(errors::OUT_OF_ORDER_SEQUENCE_NUMBER)
        );
        let mut w = ProducerState {
            epoch: i16::MIN,
            batches: VecDeque::new(),
        };
        let near_max = header(0, i32::MAX - 1, 2);
        assert_eq!(decide(&mut w, &near_max), Check::Append);
        done(&mut w, &near_max, 0);
        assert_eq!(decide(&mut w, &header(0, 0, 1)), Check::Append);
    }

    /// The broker leaves a lone batch's CRC to the store. Catches a store that stops verifying
    /// it (a corrupt batch would then be stored and acknowledged) or that writes before it
    /// refuses: both stores must answer `CorruptBatch` and keep the queue empty.
    #[test]
    fn both_stores_refuse_a_corrupt_batch_before_writing() {
        use ringmq_engine::{EngineError, Offset, Shard, ShardConfig};
        use ringmq_wire::record_batch::{BatchBuilder, ProducerStamp, Record};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(256 << 10)
            .spawn(move || async move {
                let mut b = BatchBuilder::new(64);
                b.push(&Record {
                    value: Some(b"v"),
                    ..Default::default()
                });
                let mut bad = b.build(ProducerStamp::NONE, 0).to_vec();
                let last = bad.len() - 1;
                bad[last] ^= 1;
                let bad = Bytes::from(bad);
                let config = ShardConfig {
                    dir: path,
                    segment_size_bytes: 16 << 20,
                    max_batch_bytes: 1 << 20,
                    io_memory_bytes: 256 << 10,
                    ..ShardConfig::default()
                };
                let engine = crate::store::Store::Engine(Shard::open(config).await.unwrap());
                let memory = crate::store::Store::Memory(Rc::default());
                for store in [engine, memory] {
                    let q = QueueId(7);
                    let r = store.append(q, bad.clone(), Durability::Durable).await;
                    assert!(matches!(r, Err(EngineError::CorruptBatch(_))), "{r:?}");
                    assert_eq!(store.end_offset(q), Offset(0));
                    store.close().await.unwrap();
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn records_field_is_split_and_checked() {
        use ringmq_wire::record_batch::{BatchBuilder, ProducerStamp, Record};
        let mut b = BatchBuilder::new(64);
        b.push(&Record {
            value: Some(b"v"),
            ..Default::default()
        });
        let one = b.build(ProducerStamp::NONE, 0);
        let two = Bytes::from([one.clone(), one.clone()].concat());
        assert_eq!(
            batches_of(&valid_records(Some(&two), false).unwrap()).count(),
            2
        );
        let mut bad = one.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let bad = Bytes::from(bad);
        // A lone batch's CRC is left to the store (checked once, there); several batches, or
        // one about to be restamped, are checked here.
        assert!(valid_records(Some(&bad), false).is_ok());
        assert_eq!(
            valid_records(Some(&bad), true),
            Err(errors::CORRUPT_MESSAGE)
        );
        let good_then_bad = Bytes::from([one.to_vec(), bad.to_vec()].concat());
        let mut stamped = BatchBuilder::new(64);
        stamped.push(&Record {
            value: Some(b"v"),
            ..Default::default()
        });
        let mut bad_idempotent = stamped
            .build(
                ProducerStamp {
                    producer_id: 4,
                    producer_epoch: 0,
                    base_sequence: 0,
                },
                0,
            )
            .to_vec();
        let last = bad_idempotent.len() - 1;
        bad_idempotent[last] ^= 1;
        assert_eq!(
            valid_records(Some(&Bytes::from(bad_idempotent)), false),
            Err(errors::CORRUPT_MESSAGE)
        );
        assert_eq!(
            valid_records(Some(&good_then_bad), false),
            Err(errors::CORRUPT_MESSAGE)
        );
        assert_eq!(
            valid_records(Some(&two.slice(..two.len() - 1)), false),
            Err(errors::CORRUPT_MESSAGE)
        );
        assert_eq!(valid_records(None, false), Err(errors::CORRUPT_MESSAGE));
        let mut old = one;
        old[16] = 1;
        assert_eq!(
            valid_records(Some(&Bytes::from(old)), false),
            Err(errors::UNSUPPORTED_FOR_MESSAGE_FORMAT)
        );
    }
}
