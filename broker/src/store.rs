//! The storage one core's handlers call: the engine [`Shard`], or an in-memory double
//! (`--storage memory`) that keeps nothing across restarts and exists so the protocol layer
//! can be tested without disks. The double follows the engine's contract (offsets, whole
//! batches containing `from`, at least one batch, errors) but not its durability.

use bytes::{Bytes, BytesMut};
use ringmq_engine::{
    Appended, Durability, EngineError, Offset, Part, ProducerBatch, QueueId, ReadResult, Shard,
};
use ringmq_wire::record_batch::{set_base_offset, validate};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Largest batch the in-memory double accepts (the engine's default).
const MEMORY_MAX_BATCH_BYTES: usize = 8 << 20;

pub enum Store {
    Engine(Rc<Shard>),
    Memory(Rc<MemStore>),
}

impl Store {
    pub async fn append(
        &self,
        q: QueueId,
        batch: Bytes,
        d: Durability,
    ) -> Result<Appended, EngineError> {
        match self {
            Store::Engine(s) => s.append(q, batch, d).await,
            Store::Memory(m) => m.append(q, batch),
        }
    }

    pub async fn read(
        &self,
        q: QueueId,
        from: Offset,
        max_bytes: usize,
    ) -> Result<ReadResult, EngineError> {
        match self {
            Store::Engine(s) => s.read(q, from, max_bytes).await,
            Store::Memory(m) => m.read(q, from, max_bytes),
        }
    }

    /// [`Store::read`] for a fetch: batches the engine leaves in the page cache come back as
    /// file ranges (`--fetch-backlog-read sendfile`), the rest as bytes.
    pub async fn read_sendable(
        &self,
        q: QueueId,
        from: Offset,
        max_bytes: usize,
    ) -> Result<ReadResult<Part>, EngineError> {
        match self {
            Store::Engine(s) => s.read_sendable(q, from, max_bytes).await,
            Store::Memory(m) => m.read(q, from, max_bytes).map(|r| ReadResult {
                batches: r.batches.into_iter().map(Part::Bytes).collect(),
                end_offset: r.end_offset,
                log_start_offset: r.log_start_offset,
            }),
        }
    }

    pub fn end_offset(&self, q: QueueId) -> Offset {
        match self {
            Store::Engine(s) => s.end_offset(q),
            Store::Memory(m) => m.queue(q, |mq| Offset(mq.end)),
        }
    }

    pub fn log_start_offset(&self, q: QueueId) -> Offset {
        match self {
            Store::Engine(s) => s.log_start_offset(q),
            Store::Memory(m) => m.queue(q, |mq| Offset(mq.start)),
        }
    }

    /// Applies a topic's own retention to one of its partitions (`Shard::expire`); returns the
    /// new log start.
    pub fn expire(
        &self,
        q: QueueId,
        keep_from_ms: Option<i64>,
        keep_bytes: Option<u64>,
    ) -> Result<Offset, EngineError> {
        match self {
            Store::Engine(s) => s.expire(q, keep_from_ms, keep_bytes),
            Store::Memory(m) => m.expire(q, keep_from_ms, keep_bytes),
        }
    }

    /// Bytes of log from the queue's first retained batch to the head (`Shard::retained_log_bytes`;
    /// 0 in memory, where nothing is retained by position).
    pub fn retained_log_bytes(&self, q: QueueId) -> u64 {
        match self {
            Store::Engine(s) => s.retained_log_bytes(q),
            Store::Memory(_) => 0,
        }
    }

    /// Moves the queue's log start forward to `offset` (never backwards, never past the end);
    /// returns the new start. Durable with the engine's next checkpoint (see
    /// `Shard::advance_log_start`).
    pub fn advance_log_start(&self, q: QueueId, offset: Offset) -> Result<Offset, EngineError> {
        match self {
            Store::Engine(s) => s.advance_log_start(q, offset),
            Store::Memory(m) => m.advance_log_start(q, offset),
        }
    }

    /// Makes the log starts moved so far durable now (`Shard::persist_log_starts`; nothing to
    /// do in memory).
    pub async fn persist_log_starts(&self) -> Result<(), EngineError> {
        match self {
            Store::Engine(s) => s.persist_log_starts().await,
            Store::Memory(_) => Ok(()),
        }
    }

    /// Largest record timestamp of the queue's readable batches.
    pub fn max_timestamp(&self, q: QueueId) -> Result<Option<i64>, EngineError> {
        match self {
            Store::Engine(s) => s.max_timestamp(q),
            Store::Memory(m) => Ok(m.queue(q, |mq| mq.batches.iter().map(|b| b.max_ts).max())),
        }
    }

    pub async fn offset_for_timestamp(
        &self,
        q: QueueId,
        ts_ms: i64,
    ) -> Result<Option<(Offset, i64)>, EngineError> {
        match self {
            Store::Engine(s) => s.offset_for_timestamp(q, ts_ms).await,
            Store::Memory(m) => Ok(m.queue(q, |mq| {
                mq.batches
                    .iter()
                    .find(|b| b.max_ts >= ts_ms)
                    .map(|b| (Offset(b.base), b.max_ts))
            })),
        }
    }

    pub async fn delete_queue(&self, q: QueueId) -> Result<(), EngineError> {
        match self {
            Store::Engine(s) => s.delete_queue(q).await,
            Store::Memory(m) => {
                m.queues.borrow_mut().entry(q).or_default().deleted = true;
                Ok(())
            }
        }
    }

    pub fn producer_batches(&self, q: QueueId, producer_id: i64) -> Vec<ProducerBatch> {
        match self {
            Store::Engine(s) => s.producer_batches(q, producer_id),
            Store::Memory(_) => Vec::new(),
        }
    }

    pub fn max_producer_id(&self) -> Option<i64> {
        match self {
            Store::Engine(s) => s.max_producer_id(),
            Store::Memory(_) => None,
        }
    }

    pub async fn close(&self) -> Result<(), EngineError> {
        match self {
            Store::Engine(s) => s.close().await,
            Store::Memory(_) => Ok(()),
        }
    }
}

/// One appended batch, kept as the client sent it (a slice of the request frame, so append
/// copies nothing); its base offset is patched into a copy when it is read.
struct MemBatch {
    base: u64,
    records: u64,
    max_ts: i64,
    sent: Bytes,
}

impl MemBatch {
    fn stored(&self) -> Bytes {
        let mut owned = BytesMut::from(&self.sent[..]);
        set_base_offset(&mut owned, self.base as i64);
        owned.freeze()
    }
}

#[derive(Default)]
struct MemQueue {
    batches: Vec<MemBatch>,
    /// First readable offset.
    start: u64,
    end: u64,
    deleted: bool,
}

/// In-memory test double of the engine shard.
#[derive(Default)]
pub struct MemStore {
    queues: RefCell<HashMap<QueueId, MemQueue>>,
}

impl MemStore {
    fn queue<R>(&self, q: QueueId, f: impl FnOnce(&MemQueue) -> R) -> R {
        let map = self.queues.borrow();
        match map.get(&q) {
            Some(mq) => f(mq),
            None => f(&MemQueue::default()),
        }
    }

    fn append(&self, q: QueueId, batch: Bytes) -> Result<Appended, EngineError> {
        if batch.len() > MEMORY_MAX_BATCH_BYTES {
            return Err(EngineError::BatchTooLarge {
                len: batch.len(),
                max: MEMORY_MAX_BATCH_BYTES as u32,
            });
        }
        let header = validate(&batch).map_err(EngineError::CorruptBatch)?;
        let mut map = self.queues.borrow_mut();
        let mq = map.entry(q).or_default();
        if mq.deleted {
            return Err(EngineError::QueueDeleted(q));
        }
        let base = mq.end;
        let records = header.last_offset_delta as u64 + 1;
        let last = base + records - 1;
        mq.batches.push(MemBatch {
            base,
            records,
            max_ts: header.max_timestamp,
            sent: batch.slice(..header.total_len()),
        });
        mq.end = last + 1;
        Ok(Appended {
            base_offset: Offset(base),
            last_offset: Offset(last),
            log_append_time_ms: now_ms(),
        })
    }

    /// The engine's rule (`QueueIndex::retained_start`) over the batches as sent.
    fn expire(
        &self,
        q: QueueId,
        keep_from_ms: Option<i64>,
        keep_bytes: Option<u64>,
    ) -> Result<Offset, EngineError> {
        let target = self.queue(q, |mq| {
            let mut start = mq.start;
            if let Some(t) = keep_from_ms {
                // Past every batch before the first whose timestamps reach `t`, or all of them.
                let mut reached = false;
                for b in &mq.batches {
                    if b.max_ts >= t {
                        reached = true;
                        break;
                    }
                    start = start.max(b.base + b.records);
                }
                if !reached {
                    start = start.max(mq.end);
                }
            }
            if let Some(max) = keep_bytes {
                let mut kept = 0u64;
                for (i, b) in mq.batches.iter().enumerate().rev() {
                    kept += b.sent.len() as u64;
                    if kept > max && i + 1 < mq.batches.len() {
                        start = start.max(b.base + b.records);
                        break;
                    }
                }
            }
            start
        });
        self.advance_log_start(q, Offset(target))
    }

    fn advance_log_start(&self, q: QueueId, offset: Offset) -> Result<Offset, EngineError> {
        let mut map = self.queues.borrow_mut();
        let mq = map.entry(q).or_default();
        if mq.deleted {
            return Err(EngineError::QueueDeleted(q));
        }
        mq.start = offset.0.min(mq.end).max(mq.start);
        let start = mq.start;
        mq.batches.retain(|b| b.base + b.records > start);
        Ok(Offset(start))
    }

    fn read(&self, q: QueueId, from: Offset, max_bytes: usize) -> Result<ReadResult, EngineError> {
        let map = self.queues.borrow();
        let empty = MemQueue::default();
        let mq = map.get(&q).unwrap_or(&empty);
        if mq.deleted {
            return Err(EngineError::QueueDeleted(q));
        }
        if from.0 > mq.end || from.0 < mq.start {
            return Err(EngineError::OffsetOutOfRange {
                queue: q,
                requested: from,
                log_start: Offset(mq.start),
                end: Offset(mq.end),
            });
        }
        // The batch containing `from`: the last one whose base is <= from.
        let first = mq
            .batches
            .partition_point(|b| b.base <= from.0)
            .saturating_sub(1);
        let mut batches = Vec::new();
        let mut total = 0usize;
        for b in mq.batches.iter().skip(first) {
            let ends_after = b.base + b.records > from.0;
            if !ends_after {
                continue;
            }
            if !batches.is_empty() && total + b.sent.len() > max_bytes {
                break;
            }
            total += b.sent.len();
            batches.push(b.stored());
        }
        Ok(ReadResult {
            batches,
            end_offset: Offset(mq.end),
            log_start_offset: Offset(mq.start),
        })
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
