//! The shard: the single owner (`!Send`) of one core's queues, commit log, indexes and caches.
//!
//! Durability contract: `append(.., Durable)` resolves only after an fdatasync covering the
//! batch; `append(.., Written)` after its write completed (lost on power failure unless a later
//! fdatasync covered it). After a crash the shard holds every `Durable`-acknowledged batch and
//! a prefix of the rest, with the same offsets. A failed write or fdatasync poisons the shard:
//! appends fail with `Poisoned` until it is reopened (recovery then finds what really landed).
//! `delete_queue` is durable when it returns. Data becomes readable once written.
//!
//! Checkpoints (at open, every [`MAINTENANCE_INTERVAL_MS`] or [`CHECKPOINT_EVERY_BYTES`] of
//! log, before retention deletes a segment, at close) bound the recovery scan; see
//! `engine/FORMAT.md`.

use crate::cache::TailCache;
use crate::commit::{spawn_committer, GroupCommit, MAX_STAGED_BYTES};
use crate::format::entry::{EntryHeader, EntryKind, HEADER_LEN, MAX_PAYLOAD_BYTES};
use crate::format::index_entry::IndexEntry;
use crate::format::segment_index::SegmentIndexRecord;
use crate::index::segments::SegmentIndexes;
use crate::index::QueueIndex;
use crate::io::{GlommioStorage, Storage, BLOCK_BYTES};
use crate::log::appender::Appender;
use crate::log::reader::EntryLoc;
use crate::log::recovery::{now_ms, recover};
use crate::log::SegmentSet;
use crate::producers::ProducerTable;
use crate::{
    Appended, BacklogRead, Durability, EngineError, Offset, Part, ProducerBatch, QueueId,
    ReadResult, ShardConfig,
};
use bytes::Bytes;
use glommio::sync::Semaphore;
use glommio::task::JoinHandle;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::Duration;

/// Period of the background task that runs retention and writes a checkpoint.
pub const MAINTENANCE_INTERVAL_MS: u64 = 10_000;
/// How often the maintenance task looks at the log (for the by-size checkpoint trigger).
const MAINTENANCE_TICK_MS: u64 = 1_000;
/// Log bytes after which a checkpoint is written without waiting for the interval (bounds
/// the recovery scan: measured ~400 MB/s in a debug build here).
pub const CHECKPOINT_EVERY_BYTES: u64 = 256 << 20;

/// The single owner of one core's queues and files. `!Send`: share it between the core's tasks
/// with `Rc`. Dropping it without [`Shard::close`] is a crash as far as the files are
/// concerned (unsynced data may be lost, recovery handles it).
pub struct Shard {
    pub(crate) inner: Rc<Inner>,
    /// `flock` on `<dir>/LOCK` for shards on real files: two processes (or two shards of one
    /// process) appending to the same directory would interleave entries and corrupt the log.
    /// Closing the descriptor (drop, exit, SIGKILL) releases it.
    _dir_lock: Option<std::fs::File>,
}

/// Shared by the shard's tasks; see the module docs.
pub(crate) struct Inner {
    pub cfg: ShardConfig,
    pub io: Rc<dyn Storage>,
    /// Stamped on every entry this run writes; persisted (checkpoint) before the first one.
    pub epoch: u64,
    pub state: RefCell<State>,
    pub gc: GroupCommit,
    /// Serialises appends across the await of a segment roll.
    pub(crate) append_lock: Semaphore,
    pub(crate) checkpoint_lock: Semaphore,
    /// One retention pass at a time (the maintenance task's, and a preparation's).
    pub(crate) retention_lock: Semaphore,
    pub(crate) stopped: Cell<bool>,
    pub(crate) tasks: RefCell<Vec<JoinHandle<()>>>,
    /// The next segment, created ahead of time (see `log::prepare`), and whether its
    /// preparation for the active segment has started.
    pub(crate) next_segment: RefCell<Option<Rc<crate::log::prepare::PreparedSegment>>>,
    pub(crate) prep_started: Cell<bool>,
    /// Backlog readahead chunks (`log::readahead`).
    pub(crate) chunks: Rc<crate::log::readahead::ChunkCache>,
    /// Segment descriptors for the `sendfile` backlog-read mode (`log::sendfile`).
    pub(crate) seg_files: crate::log::sendfile::SegmentFiles,
    /// Rolls that used a prepared segment, and those whose segment was wholly zero-filled
    /// (tests and metrics).
    pub prepared_rolls: Cell<u64>,
    pub zeroed_rolls: Cell<u64>,
    /// Rolls onto a recycled segment file (`log::recycle`; tests and metrics).
    pub recycled_rolls: Cell<u64>,
    /// Spare segment files kept for reuse, by the start they had in the log (`log::recycle`).
    pub(crate) spares: RefCell<Vec<u64>>,
    /// A queue's log start was advanced since the last periodic checkpoint, which must then
    /// record it even if the log did not move.
    pub(crate) log_starts_moved: Cell<bool>,
    /// Retention removes (or has removed) every segment before this log position; checkpoints
    /// record the queues' starts as if it had (`log::retention`).
    pub(crate) retained_from: Cell<u64>,
    /// Segments whose index file recovery found unusable and rebuilt by a scan (tests and
    /// metrics).
    pub rebuilt_segments: u64,
    /// Zero-filling the active segment ahead of the log while it is quiet (`log::zero_ahead`).
    pub(crate) zero_ahead: crate::log::zero_ahead::ZeroAhead,
    /// Reads of batches not in the tail cache so far (`log::zero_ahead` waits for them to stop).
    pub(crate) backlog_reads: Cell<u64>,
}

pub(crate) struct State {
    pub queues: HashMap<QueueId, QueueIndex>,
    pub producers: ProducerTable,
    pub segments: SegmentSet,
    pub appender: Appender,
    pub cache: TailCache,
    /// Every queue's index entries as the segment index files hold them, and those appended
    /// since the last checkpoint.
    pub seg_index: SegmentIndexes,
    /// Log position of the last checkpoint written.
    pub checkpoint_pos: u64,
}

impl Shard {
    /// Opens (creating if absent) the shard directory on real files and recovers. Must run
    /// inside a glommio executor built with `io_memory(config.io_memory_bytes)`.
    pub async fn open(mut config: ShardConfig) -> Result<Rc<Shard>, EngineError> {
        // fsync of a directory opened by a relative path fails with EBADF through glommio, so
        // every path the shard builds starts from an absolute directory.
        config.dir = std::path::absolute(&config.dir)
            .map_err(|e| EngineError::io("resolve shard dir", &config.dir, e))?;
        let lock = lock_dir(&config.dir)?;
        let storage = Rc::new(GlommioStorage::new(config.backlog_read_priority));
        Shard::open_locked(config, storage, Some(lock)).await
    }

    /// [`Shard::open`] on any storage, e.g. [`crate::io::MemStorage`] in tests. Recovers,
    /// writes a checkpoint (persisting the new epoch) and spawns the background tasks
    /// (committer, interval flusher, retention + checkpoint) on the current executor.
    pub async fn open_with_io(
        config: ShardConfig,
        io: Rc<dyn Storage>,
    ) -> Result<Rc<Shard>, EngineError> {
        Shard::open_locked(config, io, None).await
    }

    async fn open_locked(
        config: ShardConfig,
        io: Rc<dyn Storage>,
        dir_lock: Option<std::fs::File>,
    ) -> Result<Rc<Shard>, EngineError> {
        check_config(&config)?;
        let rec = recover(&config, &*io).await?;
        let active = rec
            .segments
            .find(rec.next_pos)
            .cloned()
            .ok_or(EngineError::Config("no active segment"))?;
        let zero_ahead = crate::log::zero_ahead::ZeroAhead::resumed(&active, rec.next_pos)
            .await
            .map_err(|e| EngineError::io("fdatasync the active segment", &active.path, e))?;
        let appender = Appender::new(
            &*io,
            active,
            rec.next_pos,
            &rec.tail,
            zero_ahead.upto.clone(),
        );
        tracing::info!(dir = %config.dir.display(), epoch = rec.epoch, end = rec.next_pos, queues = rec.queues.len(), "shard recovered");
        let inner = Rc::new(Inner {
            epoch: rec.epoch,
            gc: GroupCommit::new(rec.next_pos),
            state: RefCell::new(State {
                queues: rec.queues,
                producers: rec.producers,
                segments: rec.segments,
                appender,
                cache: TailCache::new(config.tail_cache_bytes),
                seg_index: rec.seg_index,
                checkpoint_pos: 0,
            }),
            cfg: config,
            io,
            append_lock: Semaphore::new(1),
            checkpoint_lock: Semaphore::new(1),
            retention_lock: Semaphore::new(1),
            stopped: Cell::new(false),
            prepared_rolls: Cell::new(0),
            zeroed_rolls: Cell::new(0),
            recycled_rolls: Cell::new(0),
            spares: RefCell::new(rec.spares),
            log_starts_moved: Cell::new(false),
            retained_from: Cell::new(0),
            rebuilt_segments: rec.rebuilt_segments,
            zero_ahead,
            backlog_reads: Cell::new(0),
            next_segment: RefCell::new(None),
            prep_started: Cell::new(false),
            chunks: Rc::new(crate::log::readahead::ChunkCache::new()),
            seg_files: Default::default(),
            tasks: RefCell::new(Vec::new()),
        });
        inner.tasks.borrow_mut().push(spawn_committer(&inner));
        // The epoch must be durable before any entry carries it, and the recovered index
        // persisted before the checkpoint moves past it.
        inner.checkpoint().await?;
        spawn_background(&inner);
        crate::log::zero_ahead::spawn(&inner);
        Ok(Rc::new(Shard {
            inner,
            _dir_lock: dir_lock,
        }))
    }

    /// Validates the batch, assigns offsets from the queue's end, appends it and resolves at
    /// the requested durability. Concurrent appends share writes and one fdatasync.
    pub async fn append(
        &self,
        queue: QueueId,
        batch: Bytes,
        durability: Durability,
    ) -> Result<Appended, EngineError> {
        let inner = &self.inner;
        if batch.len() > inner.cfg.max_batch_bytes as usize {
            return Err(EngineError::BatchTooLarge {
                len: batch.len(),
                max: inner.cfg.max_batch_bytes,
            });
        }
        let h = ringmq_wire::record_batch::validate(&batch).map_err(EngineError::CorruptBatch)?;
        inner.wait_for_staging_room().await?;
        let permit = inner.lock_appends().await?;
        if inner.is_deleted(queue) {
            return Err(EngineError::QueueDeleted(queue));
        }
        let entry_len = (HEADER_LEN + batch.len()) as u64;
        if !inner.state.borrow().appender.fits(entry_len) {
            inner.roll().await?;
        }
        let (end_pos, appended) = inner.push_batch(queue, &h, batch);
        drop(permit);
        inner.maybe_prepare_next();
        inner.gc.kick.notify();
        inner
            .gc
            .wait_for(end_pos, durability == Durability::Durable)
            .await
            .map_err(|cause| EngineError::Poisoned { cause })?;
        Ok(appended)
    }

    /// Batches of `queue` from the one containing `from`, up to `max_bytes` (at least one).
    pub async fn read(
        &self,
        queue: QueueId,
        from: Offset,
        max_bytes: usize,
    ) -> Result<ReadResult, EngineError> {
        let inner = &self.inner;
        let plan = inner.plan_read(queue, from, max_bytes)?;
        let mut batches: Vec<Option<Bytes>> = plan.items.iter().map(|i| i.cached.clone()).collect();
        inner
            .read_uncached(queue, from, &plan, &mut batches)
            .await?;
        Ok(plan.result(batches))
    }

    /// [`Shard::read`] for a caller that sends the batches to a socket: in
    /// [`crate::BacklogRead::Sendfile`] mode, batches in sealed log blocks that are not in the
    /// tail cache come back as [`Part::File`] ranges (unread, not CRC-checked; see
    /// `log::sendfile`), the rest as bytes. In the other modes every part is bytes.
    pub async fn read_sendable(
        &self,
        queue: QueueId,
        from: Offset,
        max_bytes: usize,
    ) -> Result<ReadResult<Part>, EngineError> {
        let inner = &self.inner;
        let plan = inner.plan_read(queue, from, max_bytes)?;
        let mut batches: Vec<Option<Part>> = if inner.cfg.backlog_read == BacklogRead::Sendfile {
            inner.file_ranges(&plan)
        } else {
            plan.items
                .iter()
                .map(|i| i.cached.clone().map(Part::Bytes))
                .collect()
        };
        inner
            .read_uncached(queue, from, &plan, &mut batches)
            .await?;
        Ok(plan.result(batches))
    }

    /// Resolves once data at or after `offset` of `queue` is readable (its visible end passed
    /// `offset`), for long-polling fetches: wrap it in a timeout. Resolves at once with
    /// `QueueDeleted`, `Poisoned` or `Closed` when those apply.
    pub async fn wait_for_data(&self, queue: QueueId, offset: Offset) -> Result<(), EngineError> {
        let inner = &self.inner;
        loop {
            let listen = inner.gc.progress.listen();
            inner.check_usable()?;
            {
                let st = inner.state.borrow();
                if let Some(q) = st.queues.get(&queue) {
                    if q.deleted {
                        return Err(EngineError::QueueDeleted(queue));
                    }
                    if q.end_of(q.visible_len(inner.gc.written())) > offset.0 {
                        return Ok(());
                    }
                }
            }
            listen.await;
        }
    }

    /// Next offset to be assigned (0 for a queue never written or deleted).
    pub fn end_offset(&self, queue: QueueId) -> Offset {
        let st = self.inner.state.borrow();
        Offset(
            st.queues
                .get(&queue)
                .filter(|q| !q.deleted)
                .map_or(0, |q| q.end_offset),
        )
    }

    pub fn log_start_offset(&self, queue: QueueId) -> Offset {
        let st = self.inner.state.borrow();
        Offset(
            st.queues
                .get(&queue)
                .filter(|q| !q.deleted)
                .map_or(0, |q| q.log_start_offset),
        )
    }

    /// Moves `queue`'s log start forward to `offset` (never backwards, never past its end) and
    /// returns the new start: reads below it fail with `OffsetOutOfRange`, and retention no
    /// longer keeps segments for the batches before it (Kafka's DeleteRecords; the broker's
    /// compaction of its internal queues).
    ///
    /// Durability: the new start is recorded by the next checkpoint (at most
    /// `MAINTENANCE_INTERVAL_MS` away, or at close). After a crash before it the start may be
    /// back where it was, never anywhere else.
    pub fn advance_log_start(&self, queue: QueueId, offset: Offset) -> Result<Offset, EngineError> {
        let mut st = self.inner.state.borrow_mut();
        match st.queues.get_mut(&queue) {
            Some(q) if q.deleted => Err(EngineError::QueueDeleted(queue)),
            Some(q) => {
                let before = q.log_start_offset;
                let start = q.advance_log_start(offset.0);
                if start != before {
                    self.inner.log_starts_moved.set(true);
                }
                Ok(Offset(start))
            }
            // Never appended to: empty, start and end at 0.
            None => Ok(Offset(0)),
        }
    }

    /// Applies a retention of its own to `queue` (a topic's `retention.ms` / `retention.bytes`,
    /// on top of the shard's segment retention): advances its log start past the readable
    /// batches whose timestamps are all older than `keep_from_ms`, and past the oldest ones
    /// until at most `keep_bytes` of entries remain (the newest batch always stays). Returns the
    /// new start. The bytes go when the shard's retention removes their segments; durability of
    /// the start as for [`Shard::advance_log_start`].
    pub fn expire(
        &self,
        queue: QueueId,
        keep_from_ms: Option<i64>,
        keep_bytes: Option<u64>,
    ) -> Result<Offset, EngineError> {
        let target = self.with_readable(queue, |q, visible| {
            Some(q.retained_start(visible, keep_from_ms, keep_bytes))
        })?;
        match target {
            Some(t) => self.advance_log_start(queue, Offset(t)),
            None => Ok(Offset(0)),
        }
    }

    /// How many bytes of log lie from `queue`'s first retained batch to the head (0 when it
    /// has none): what that queue holds back from retention if it is pinned
    /// (`ShardConfig::pinned_queues`), so that its owner knows when to compact it.
    pub fn retained_log_bytes(&self, queue: QueueId) -> u64 {
        let st = self.inner.state.borrow();
        st.queues
            .get(&queue)
            .filter(|q| !q.deleted)
            .and_then(|q| q.first_pos())
            .map_or(0, |pos| st.appender.next_pos().saturating_sub(pos))
    }

    /// First readable batch whose max timestamp is `>= ts_ms`: its base offset and max timestamp.
    pub async fn offset_for_timestamp(
        &self,
        queue: QueueId,
        ts_ms: i64,
    ) -> Result<Option<(Offset, i64)>, EngineError> {
        self.with_readable(queue, |q, visible| {
            let i = q.find_time(ts_ms);
            (i < visible).then(|| {
                (
                    Offset(q.slots[i].entry.base_offset),
                    q.slots[i].entry.max_timestamp,
                )
            })
        })
    }

    /// Largest record timestamp among the readable batches of `queue` (None when it has none):
    /// with [`Shard::offset_for_timestamp`] it finds the record Kafka's ListOffsets
    /// "max timestamp" asks for.
    pub fn max_timestamp(&self, queue: QueueId) -> Result<Option<i64>, EngineError> {
        self.with_readable(queue, |q, visible| {
            visible
                .checked_sub(1)
                .map(|last| q.slots[last].prefix_max_ts)
        })
    }

    /// `f(index, readable slots)` of a queue that exists; None for a queue never written,
    /// `QueueDeleted` for a deleted one.
    fn with_readable<R>(
        &self,
        queue: QueueId,
        f: impl FnOnce(&QueueIndex, usize) -> Option<R>,
    ) -> Result<Option<R>, EngineError> {
        let st = self.inner.state.borrow();
        let Some(q) = st.queues.get(&queue) else {
            return Ok(None);
        };
        if q.deleted {
            return Err(EngineError::QueueDeleted(queue));
        }
        Ok(f(q, q.visible_len(self.inner.gc.written())))
    }

    /// Queues that hold (or held) data on this shard and are not deleted, sorted.
    pub fn queues(&self) -> Vec<QueueId> {
        let st = self.inner.state.borrow();
        let mut v: Vec<QueueId> = st
            .queues
            .iter()
            .filter(|(_, q)| !q.deleted)
            .map(|(id, _)| *id)
            .collect();
        v.sort();
        v
    }

    /// Makes every log start moved so far durable now: a checkpoint, rather than the next
    /// periodic one ([`Shard::advance_log_start`]). For a caller that acknowledges a move
    /// (the broker's DeleteRecords). Each call checkpoints (checkpoints run one at a time, and
    /// each snapshots the starts after it acquired its turn), so a move made before the call
    /// is covered when it returns, whatever other callers do.
    pub async fn persist_log_starts(&self) -> Result<(), EngineError> {
        self.inner.check_usable()?;
        self.inner.log_starts_moved.set(false);
        self.inner.checkpoint().await
    }

    /// Durably forgets a queue (a control entry in the log); idempotent.
    pub async fn delete_queue(&self, queue: QueueId) -> Result<(), EngineError> {
        let inner = &self.inner;
        let permit = inner.lock_appends().await?;
        if inner.is_deleted(queue) {
            return Ok(());
        }
        if !inner.state.borrow().appender.fits(HEADER_LEN as u64) {
            inner.roll().await?;
        }
        let end_pos = inner.push_delete(queue);
        drop(permit);
        inner.gc.kick.notify();
        inner
            .gc
            .wait_for(end_pos, true)
            .await
            .map_err(|cause| EngineError::Poisoned { cause })
    }

    /// The last (up to 5) batches `producer_id` appended to `queue`, newest last.
    pub fn producer_batches(&self, queue: QueueId, producer_id: i64) -> Vec<ProducerBatch> {
        self.inner.state.borrow().producers.get(queue, producer_id)
    }

    /// The highest producer id seen in any batch.
    pub fn max_producer_id(&self) -> Option<i64> {
        self.inner.state.borrow().producers.max_producer_id()
    }

    /// Makes everything appended so far durable.
    pub async fn flush(&self) -> Result<(), EngineError> {
        if self.inner.stopped() {
            return Err(EngineError::Closed);
        }
        let pos = self.inner.state.borrow().appender.next_pos();
        self.inner.flush_to(pos).await
    }

    /// Deletes the whole segments beyond the retention limits, and those no live queue retains a
    /// batch in, now (also runs in the background).
    pub async fn enforce_retention(&self) -> Result<(), EngineError> {
        self.inner.enforce_retention().await
    }

    /// Flushes, writes a checkpoint, stops the background tasks and closes every file, so
    /// that a closed shard holds no descriptor even if its executor ends right after.
    /// Appends, deletes and flushes afterwards return `Closed`; closing again is a no-op.
    pub async fn close(&self) -> Result<(), EngineError> {
        let inner = &self.inner;
        if inner.stopped() {
            return Ok(());
        }
        let pos = inner.state.borrow().appender.next_pos();
        inner.flush_to(pos).await?;
        inner.checkpoint().await?;
        inner.stop();
        // A retention pass in flight (a segment preparation runs one) finishes its checkpoint
        // and file operations before the shard counts as closed; later ones see it stopped.
        let _retention = inner.retention_lock.acquire_permit(1).await;
        inner.close_files().await;
        Ok(())
    }

    /// Log position up to which data is durable (tests and metrics).
    #[doc(hidden)]
    pub fn durable_log_pos(&self) -> u64 {
        self.inner.gc.synced()
    }

    /// Bytes zero-filled ahead of the log so far, and whether the active segment is written
    /// (zero-filled or appended) to its end (`log::zero_ahead`; benchmarks and metrics).
    #[doc(hidden)]
    pub fn zero_ahead(&self) -> (u64, bool) {
        let inner = &self.inner;
        let end = inner.state.borrow().appender.segment().end();
        (
            inner.zero_ahead.bytes.get(),
            inner.zero_ahead.upto.get() >= end,
        )
    }

    /// Segments whose index file the last open found unusable and rebuilt by scanning the
    /// segment (tests and metrics).
    #[doc(hidden)]
    pub fn rebuilt_index_segments(&self) -> u64 {
        self.inner.rebuilt_segments
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.inner.stop();
    }
}

struct ReadItem {
    loc: EntryLoc,
    cached: Option<Bytes>,
}

struct ReadPlan {
    items: Vec<ReadItem>,
    visible_end: u64,
    log_start: u64,
}

impl ReadPlan {
    /// The batches read, up to the first one missing (the result stays contiguous).
    fn result<T>(&self, batches: Vec<Option<T>>) -> ReadResult<T> {
        ReadResult {
            batches: batches.into_iter().map_while(|b| b).collect(),
            end_offset: Offset(self.visible_end),
            log_start_offset: Offset(self.log_start),
        }
    }
}

impl Inner {
    pub(crate) fn stopped(&self) -> bool {
        self.stopped.get()
    }

    /// Closes every segment file, and the next segment's if one was prepared (once its
    /// zeroing write in flight, if any, completed: an operation still in flight when the
    /// executor ends would keep its descriptor open).
    async fn close_files(&self) {
        self.zero_ahead_settled().await;
        let mut segs: Vec<_> = self.state.borrow().segments.map.values().cloned().collect();
        let prepared = self.next_segment.borrow_mut().take();
        if let Some(p) = prepared {
            p.take().await;
            segs.push(p.seg.clone());
        }
        for s in segs {
            s.close_quietly().await;
        }
        self.seg_files.forget_all();
    }

    fn stop(&self) {
        self.stopped.set(true);
        for t in self.tasks.borrow_mut().drain(..) {
            t.cancel();
        }
        self.gc.kick.notify();
        // Readahead reads waiting for a slot hold the shard while they wait: let them see it
        // stopped and end.
        self.chunks.ahead_done.notify();
    }

    /// Takes the append lock (log order is decided under it), then checks that the shard still
    /// takes appends: the check must come after the wait, since a poisoning or close may
    /// happen while waiting.
    async fn lock_appends(&self) -> Result<glommio::sync::Permit<'_>, EngineError> {
        let permit = self
            .append_lock
            .acquire_permit(1)
            .await
            .map_err(|_| EngineError::Closed)?;
        self.check_usable()?;
        Ok(permit)
    }

    fn check_usable(&self) -> Result<(), EngineError> {
        if self.stopped() {
            return Err(EngineError::Closed);
        }
        match self.gc.poisoned() {
            Some(cause) => Err(EngineError::Poisoned { cause }),
            None => Ok(()),
        }
    }

    fn is_deleted(&self, queue: QueueId) -> bool {
        self.state
            .borrow()
            .queues
            .get(&queue)
            .is_some_and(|q| q.deleted)
    }

    pub(crate) fn out_of_range(&self, queue: QueueId, from: Offset) -> EngineError {
        let st = self.state.borrow();
        let (start, end) = st
            .queues
            .get(&queue)
            .map_or((0, 0), |q| (q.log_start_offset, q.end_offset));
        EngineError::OffsetOutOfRange {
            queue,
            requested: from,
            log_start: Offset(start),
            end: Offset(end),
        }
    }

    async fn wait_for_staging_room(&self) -> Result<(), EngineError> {
        loop {
            let listen = self.gc.progress.listen();
            self.check_usable()?;
            if self.state.borrow().appender.staged_bytes() <= MAX_STAGED_BYTES {
                return Ok(());
            }
            self.gc.kick.notify();
            listen.await;
        }
    }

    /// Copies the batch (base offset assigned) into the log and records it. No await: the
    /// offsets, the log order and the index order are the same.
    fn push_batch(
        &self,
        queue: QueueId,
        h: &ringmq_wire::record_batch::BatchHeader,
        batch: Bytes,
    ) -> (u64, Appended) {
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        let q = st.queues.entry(queue).or_default();
        let base = q.end_offset;
        let last = base + h.last_offset_delta as u64;
        let now = now_ms();
        let header = EntryHeader {
            kind: EntryKind::Batch,
            queue_id: queue.0,
            record_count: h.record_count as u32,
            base_offset: base,
            log_pos: st.appender.next_pos(),
            max_timestamp: h.max_timestamp,
            append_time_ms: now,
            epoch: self.epoch,
            payload_len: batch.len() as u32,
            crc: 0,
        };
        let base_be = (base as i64).to_be_bytes();
        let entry_len = (HEADER_LEN + batch.len()) as u32;
        // One copy of the batch: into the staging chunk, with the base offset written in
        // front of the rest. The tail cache keeps the caller's bytes as they are and patches
        // the offset when a reader first asks (or now, for free, if the bytes are unshared).
        let parts: [&[u8]; 2] = [&base_be, &batch[8..]];
        // The batch's own CRC was verified by `validate` above; the entry CRC reuses it
        // instead of reading the payload a second time (same value, see `encode_batch`).
        let hdr = header.encode_batch(&base_be, &batch, h.crc, h.total_len());
        let pos = st.appender.push_entry(&*self.io, &hdr, &parts);
        if st.cache.enabled() {
            st.cache.insert(queue.0, base, batch);
        }
        let entry = IndexEntry {
            base_offset: base,
            last_offset: last,
            log_pos: pos,
            entry_len,
            tag_hash: 0,
            max_timestamp: h.max_timestamp,
        };
        q.push(entry);
        st.seg_index.pending.push(SegmentIndexRecord {
            queue_id: queue.0,
            entry,
        });
        st.producers.record(queue, h, base, last);
        (
            pos + u64::from(entry_len),
            Appended {
                base_offset: Offset(base),
                last_offset: Offset(last),
                log_append_time_ms: now,
            },
        )
    }

    fn push_delete(&self, queue: QueueId) -> u64 {
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        let header = EntryHeader {
            kind: EntryKind::QueueDeleted,
            queue_id: queue.0,
            record_count: 0,
            base_offset: 0,
            log_pos: st.appender.next_pos(),
            max_timestamp: 0,
            append_time_ms: now_ms(),
            epoch: self.epoch,
            payload_len: 0,
            crc: 0,
        };
        let pos = st.appender.push_entry(&*self.io, &header.encode(&[]), &[]);
        let q = st.queues.entry(queue).or_default();
        q.deleted = true;
        q.slots.clear();
        st.cache.remove_queue(queue.0);
        st.producers.remove_queue(queue);
        pos + HEADER_LEN as u64
    }

    fn plan_read(
        &self,
        queue: QueueId,
        from: Offset,
        max_bytes: usize,
    ) -> Result<ReadPlan, EngineError> {
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        let Some(q) = st.queues.get(&queue) else {
            if from.0 == 0 {
                return Ok(ReadPlan {
                    items: Vec::new(),
                    visible_end: 0,
                    log_start: 0,
                });
            }
            // (Not `self.out_of_range`: the state is borrowed mutably here.)
            return Err(EngineError::OffsetOutOfRange {
                queue,
                requested: from,
                log_start: Offset(0),
                end: Offset(0),
            });
        };
        if q.deleted {
            return Err(EngineError::QueueDeleted(queue));
        }
        if from.0 < q.log_start_offset || from.0 > q.end_offset {
            return Err(EngineError::OffsetOutOfRange {
                queue,
                requested: from,
                log_start: Offset(q.log_start_offset),
                end: Offset(q.end_offset),
            });
        }
        let visible = q.visible_len(self.gc.written());
        let visible_end = q.end_of(visible);
        let mut items = Vec::new();
        let mut total = 0usize;
        for slot in q.slots.range(q.find(from.0).min(visible)..visible) {
            let e = slot.entry;
            let len = e.entry_len as usize - HEADER_LEN;
            if !items.is_empty() && total + len > max_bytes {
                break;
            }
            total += len;
            items.push(ReadItem {
                loc: EntryLoc {
                    queue_id: queue.0,
                    base_offset: e.base_offset,
                    log_pos: e.log_pos,
                    entry_len: e.entry_len,
                },
                cached: st.cache.get(queue.0, e.base_offset),
            });
        }
        Ok(ReadPlan {
            items,
            visible_end,
            log_start: q.log_start_offset,
        })
    }

    /// Reads the planned batches still missing from `batches` from the log (runs of uncached
    /// entries in one segment together). A read that returns a prefix ends the result there.
    async fn read_uncached<T: From<Bytes>>(
        self: &Rc<Self>,
        queue: QueueId,
        from: Offset,
        plan: &ReadPlan,
        batches: &mut [Option<T>],
    ) -> Result<(), EngineError> {
        let mut i = 0;
        while i < plan.items.len() {
            if batches[i].is_some() {
                i += 1;
                continue;
            }
            let seg = self
                .state
                .borrow()
                .segments
                .find(plan.items[i].loc.log_pos)
                .cloned();
            let Some(seg) = seg else {
                return Err(self.out_of_range(queue, from));
            };
            let mut j = i;
            while j < plan.items.len()
                && batches[j].is_none()
                && plan.items[j].loc.log_pos < seg.end()
            {
                j += 1;
            }
            let locs: Vec<EntryLoc> = plan.items[i..j].iter().map(|x| x.loc).collect();
            self.backlog_reads.set(self.backlog_reads.get() + 1);
            let got = self.read_backlog(queue, from, &seg, &locs).await?;
            let short = got.len() < locs.len();
            for (k, b) in got.into_iter().enumerate() {
                batches[i + k] = Some(T::from(b));
            }
            if short {
                // The read returned a prefix (readahead's per-read chunk budget): the result
                // must stay contiguous, so it ends there.
                break;
            }
            i = j;
        }
        Ok(())
    }

    /// For each planned batch: its cached bytes, else a file range when it lies wholly below
    /// [`crate::log::sendfile::sendfile_limit`], else None (to be read). No await between
    /// the plan and this: retention cannot have removed a planned segment yet.
    fn file_ranges(&self, plan: &ReadPlan) -> Vec<Option<Part>> {
        let limit = crate::log::sendfile::sendfile_limit(self.gc.written());
        let st = self.state.borrow();
        plan.items
            .iter()
            .map(|item| {
                if let Some(b) = &item.cached {
                    return Some(Part::Bytes(b.clone()));
                }
                let loc = item.loc;
                if loc.log_pos + u64::from(loc.entry_len) > limit {
                    return None;
                }
                let seg = st.segments.find(loc.log_pos)?;
                let payload = loc.entry_len as usize - HEADER_LEN;
                self.seg_files
                    .range(seg, loc.log_pos + HEADER_LEN as u64, payload)
                    .map(Part::File)
            })
            .collect()
    }

    pub(crate) async fn flush_to(&self, pos: u64) -> Result<(), EngineError> {
        self.gc.want_sync(pos);
        loop {
            let listen = self.gc.progress.listen();
            if let Some(cause) = self.gc.poisoned() {
                return Err(EngineError::Poisoned { cause });
            }
            if self.gc.synced() >= pos {
                return Ok(());
            }
            listen.await;
        }
    }
}

/// Name of the lock file in a shard directory.
pub const LOCK_FILE: &str = "LOCK";

/// Creates the directory if needed and takes an exclusive, non-blocking `flock` on its lock
/// file, so a second opener fails with [`EngineError::Locked`] instead of corrupting the log.
fn lock_dir(dir: &std::path::Path) -> Result<std::fs::File, EngineError> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir).map_err(|e| EngineError::io("create shard dir", dir, e))?;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| EngineError::io("open lock file", &path, e))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(EngineError::Locked { path });
    }
    Ok(file)
}

fn check_config(c: &ShardConfig) -> Result<(), EngineError> {
    if c.segment_size_bytes % BLOCK_BYTES != 0 {
        return Err(EngineError::Config(
            "segment_size_bytes must be a multiple of 4096",
        ));
    }
    if c.max_batch_bytes > MAX_PAYLOAD_BYTES
        || (c.max_batch_bytes as usize) < ringmq_wire::record_batch::HEADER_LEN
    {
        return Err(EngineError::Config(
            "max_batch_bytes must be within [61, 64 MiB]",
        ));
    }
    if c.segment_size_bytes < u64::from(c.max_batch_bytes) + 2 * BLOCK_BYTES {
        return Err(EngineError::Config(
            "segment_size_bytes must exceed max_batch_bytes + 8192",
        ));
    }
    Ok(())
}

/// Spawns the interval flusher (if configured) and the maintenance task (retention and a
/// periodic checkpoint). Both hold the shard weakly and end when it is closed or dropped.
fn spawn_background(inner: &Rc<Inner>) {
    let mut tasks = inner.tasks.borrow_mut();
    if let Some(ms) = inner.cfg.flush_interval_ms {
        let weak = Rc::downgrade(inner);
        tasks.push(
            glommio::spawn_local(async move {
                loop {
                    glommio::timer::sleep(Duration::from_millis(ms.max(1))).await;
                    let Some(inner) = live(&weak) else { break };
                    let pos = inner.state.borrow().appender.next_pos();
                    inner.gc.want_sync(pos);
                }
            })
            .detach(),
        );
    }
    let weak = Rc::downgrade(inner);
    tasks.push(
        glommio::spawn_local(async move {
            let mut ticks = 0u64;
            loop {
                glommio::timer::sleep(Duration::from_millis(MAINTENANCE_TICK_MS)).await;
                ticks += 1;
                let Some(inner) = live(&weak) else { break };
                let periodic = ticks % (MAINTENANCE_INTERVAL_MS / MAINTENANCE_TICK_MS) == 0;
                if periodic {
                    if let Err(e) = inner.enforce_retention().await {
                        tracing::warn!(error = %e, "retention failed");
                    }
                }
                // Checkpoint every interval if the log moved, and sooner after a lot of data,
                // so that a restart never has to scan more than about CHECKPOINT_EVERY_BYTES.
                let (pos, ckpt) = {
                    let st = inner.state.borrow();
                    (st.appender.next_pos(), st.checkpoint_pos)
                };
                let moved = periodic && inner.log_starts_moved.take();
                if (periodic && pos > ckpt) || moved || pos >= ckpt + CHECKPOINT_EVERY_BYTES {
                    if let Err(e) = inner.checkpoint().await {
                        tracing::warn!(error = %e, "background checkpoint failed");
                    }
                }
            }
        })
        .detach(),
    );
}

/// The shard behind `weak`, if it still takes work (not stopped, not poisoned).
pub(crate) fn live(weak: &Weak<Inner>) -> Option<Rc<Inner>> {
    weak.upgrade()
        .filter(|i| !i.stopped() && i.gc.poisoned().is_none())
}
