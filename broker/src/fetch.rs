//! Fetch with long polling, answered with the stored batches as they are.
//!
//! ```text
//!  read every requested partition on its owning core (one call per core, concurrently)
//!     enough bytes (>= min_bytes), an error, or past the deadline? ──► respond
//!     otherwise: ask each involved core to wait until one of its partitions grows past the
//!     fetch position (or the deadline), take the first answer, read again.
//! ```
//!
//! Byte limits: each partition reads at most `partition_max_bytes`, each core's part at most
//! the request's `max_bytes` (capped by the broker's fetch limit); the response keeps batches
//! in request order while they fit in `max_bytes`, always at least one batch so a consumer can
//! progress past a batch larger than its limits. A fetch starting inside a batch gets the whole
//! batch (the engine returns the batch containing the offset), as Kafka does.

use crate::core::{current, futures_join_all, Core};
use crate::errors;
use crate::metadata::Snapshot;
use kafka_protocol::messages::FetchRequest;
use ringmq_engine::{Offset, Part, QueueId};
use ringmq_wire::fetch::{FetchPartition, FetchResponseBody, FetchTopic, TOPIC_IDS_FROM};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Longest a fetch may wait for data, whatever the client asks.
pub const MAX_FETCH_WAIT_MS: i32 = 30_000;

/// One requested partition.
#[derive(Debug, Clone)]
struct Slot {
    ti: usize,
    partition: i32,
    /// None: unknown topic or partition (error already decided).
    target: Option<(u32, QueueId)>,
    error: i16,
    fetch_offset: i64,
    max_bytes: usize,
}

/// What one partition read produced. `Send`: a read on another core comes back through the
/// mesh by pointer, its bytes refcounted and its file ranges holding `Arc<File>`s.
#[derive(Debug, Clone, Default)]
struct PartRead {
    error: i16,
    high_watermark: i64,
    log_start: i64,
    batches: Vec<Part>,
}

pub async fn handle(core: &Rc<Core>, req: FetchRequest, version: i16) -> FetchResponseBody {
    let meta = core.meta();
    let (mut topics, slots) = plan(&meta, &req, version);
    let limit = match usize::try_from(req.max_bytes) {
        Ok(n) if n > 0 => n.min(core.config.max_fetch_response_bytes),
        _ => core.config.max_fetch_response_bytes,
    };
    let wait_ms = req.max_wait_ms.clamp(0, MAX_FETCH_WAIT_MS) as u64;
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    let min_bytes = req.min_bytes.max(0) as usize;
    let mut reads = read_all(core, &slots, limit).await;
    loop {
        let total: usize = reads
            .iter()
            .map(|r| r.batches.iter().map(Part::len).sum::<usize>())
            .sum();
        let errored = reads.iter().any(|r| r.error != errors::NONE);
        if min_bytes == 0
            || total >= min_bytes
            || errored
            || Instant::now() >= deadline
            || core.stopping.get()
        {
            break;
        }
        if !wait_for_data(core, &slots, deadline).await {
            break;
        }
        reads = read_all(core, &slots, limit).await;
    }
    let mut budget = limit;
    let mut sent_any = false;
    for (slot, read) in slots.iter().zip(reads) {
        let mut batches = Vec::new();
        for b in read.batches {
            if sent_any && b.len() > budget {
                budget = 0;
                break;
            }
            budget = budget.saturating_sub(b.len());
            sent_any = true;
            batches.push(b);
        }
        topics[slot.ti].partitions.push(FetchPartition {
            partition_index: slot.partition,
            error_code: read.error,
            high_watermark: read.high_watermark,
            last_stable_offset: read.high_watermark,
            log_start_offset: read.log_start,
            batches,
        });
    }
    FetchResponseBody {
        throttle_time_ms: 0,
        error_code: errors::NONE,
        session_id: 0,
        topics,
    }
}

fn plan(meta: &Snapshot, req: &FetchRequest, version: i16) -> (Vec<FetchTopic>, Vec<Slot>) {
    let mut topics = Vec::with_capacity(req.topics.len());
    let mut slots = Vec::new();
    for (ti, t) in req.topics.iter().enumerate() {
        let by_id = version >= TOPIC_IDS_FROM;
        let found = if by_id {
            meta.topic_by_id(t.topic_id.as_bytes())
        } else {
            meta.topic(t.topic.as_str())
        };
        let unknown = if by_id {
            errors::UNKNOWN_TOPIC_ID
        } else {
            errors::UNKNOWN_TOPIC_OR_PARTITION
        };
        topics.push(FetchTopic {
            name: t.topic.to_string(),
            topic_id: *t.topic_id.as_bytes(),
            partitions: Vec::with_capacity(t.partitions.len()),
        });
        for p in &t.partitions {
            let place = found.and_then(|tm| {
                usize::try_from(p.partition)
                    .ok()
                    .and_then(|i| tm.partitions.get(i))
            });
            let (target, error) = match (found, place) {
                (None, _) => (None, unknown),
                (Some(_), None) => (None, errors::UNKNOWN_TOPIC_OR_PARTITION),
                (Some(_), Some(pl)) => (Some((pl.core, pl.queue_id())), errors::NONE),
            };
            slots.push(Slot {
                ti,
                partition: p.partition,
                target,
                error,
                fetch_offset: p.fetch_offset,
                max_bytes: usize::try_from(p.partition_max_bytes).unwrap_or(0),
            });
        }
    }
    (topics, slots)
}

/// Reads every slot on its owning core; results in slot order.
async fn read_all(core: &Rc<Core>, slots: &[Slot], limit: usize) -> Vec<PartRead> {
    let mut out: Vec<PartRead> = slots
        .iter()
        .map(|s| PartRead {
            error: s.error,
            high_watermark: -1,
            log_start: -1,
            batches: Vec::new(),
        })
        .collect();
    let mut per_core: HashMap<u32, Vec<(usize, QueueId, i64, usize)>> = HashMap::new();
    for (i, s) in slots.iter().enumerate() {
        if let Some((owner, queue)) = s.target {
            per_core
                .entry(owner)
                .or_default()
                .push((i, queue, s.fetch_offset, s.max_bytes));
        }
    }
    let calls = per_core.into_iter().map(|(owner, parts)| {
        let mesh = core.mesh.clone();
        async move {
            let idx: Vec<usize> = parts.iter().map(|p| p.0).collect();
            let reads = mesh
                .call(owner as usize, move || read_on_owner(parts, limit))
                .await;
            (idx, reads)
        }
    });
    for (idx, reads) in futures_join_all(calls).await {
        match reads {
            Ok(reads) => {
                for (i, r) in idx.into_iter().zip(reads) {
                    out[i] = r;
                }
            }
            Err(e) => {
                tracing::warn!("fetch read failed: {e}");
                for i in idx {
                    out[i].error = errors::NOT_LEADER_OR_FOLLOWER;
                }
            }
        }
    }
    out
}

async fn read_on_owner(parts: Vec<(usize, QueueId, i64, usize)>, limit: usize) -> Vec<PartRead> {
    let core = current();
    let mut budget = limit;
    let mut out = Vec::with_capacity(parts.len());
    for (_, queue, offset, max_bytes) in parts {
        // Offsets assigned to appends still in flight are valid fetch positions but not yet
        // readable: the high watermark is the readable end.
        let end = core.store.end_offset(queue).0 as i64;
        let readable = (core.readable_end(queue) as i64).min(end);
        let start = core.store.log_start_offset(queue).0 as i64;
        let mut r = PartRead {
            error: errors::NONE,
            high_watermark: readable,
            log_start: start,
            batches: Vec::new(),
        };
        if offset < start || offset > end {
            r.error = errors::OFFSET_OUT_OF_RANGE;
        } else if offset < readable && budget > 0 {
            match core
                .store
                .read_sendable(queue, Offset(offset as u64), max_bytes.min(budget))
                .await
            {
                Ok(read) => {
                    let n: usize = read.batches.iter().map(Part::len).sum();
                    budget = budget.saturating_sub(n);
                    r.high_watermark = read.end_offset.0 as i64;
                    r.log_start = read.log_start_offset.0 as i64;
                    r.batches = read.batches;
                }
                Err(e) => r.error = errors::from_engine(&e),
            }
        }
        out.push(r);
        // A partition's batches came from cache without an await: let this core's appends
        // run between partitions once the fetch queue's slice is up (core::FETCH_PREEMPT).
        glommio::yield_if_needed().await;
    }
    out
}

/// Waits until a partition of any involved core has data past its fetch position, or the
/// deadline passes. Returns false at the deadline.
async fn wait_for_data(core: &Rc<Core>, slots: &[Slot], deadline: Instant) -> bool {
    let mut per_core: HashMap<u32, Vec<(QueueId, u64)>> = HashMap::new();
    for s in slots {
        if let Some((owner, queue)) = s.target {
            per_core
                .entry(owner)
                .or_default()
                .push((queue, s.fetch_offset.max(0) as u64));
        }
    }
    if per_core.is_empty() {
        glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
        return false;
    }
    let waits: Vec<_> = per_core
        .into_iter()
        .map(|(owner, watch)| {
            let mesh = core.mesh.clone();
            Box::pin(async move {
                mesh.call(owner as usize, move || wait_on_owner(watch, deadline))
                    .await
                    .unwrap_or(false)
            })
        })
        .collect();
    first_true(waits).await
}

/// Runs on the owning core: true once any watched queue's end passes its position.
async fn wait_on_owner(watch: Vec<(QueueId, u64)>, deadline: Instant) -> bool {
    let core = current();
    loop {
        if watch.iter().any(|&(q, pos)| core.readable_end(q) > pos) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || core.stopping.get() {
            return false;
        }
        let notified = core.appended.notified();
        let timer = glommio::timer::sleep(left);
        futures_lite::future::or(notified, timer).await;
    }
}

/// Resolves with true as soon as one future yields true, or false once all yielded false.
async fn first_true<F: std::future::Future<Output = bool> + Unpin>(futs: Vec<F>) -> bool {
    let mut futs: Vec<Option<F>> = futs.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for slot in futs.iter_mut() {
            if let Some(f) = slot {
                match std::pin::Pin::new(f).poll(cx) {
                    std::task::Poll::Ready(true) => return std::task::Poll::Ready(true),
                    std::task::Poll::Ready(false) => *slot = None,
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(false)
        }
    })
    .await
}
