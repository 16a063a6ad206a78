//! Checkpoints: the shard's state at one log position, so recovery scans only the log after
//! it (format: `engine/FORMAT.md`, `crate::format::checkpoint`).
//!
//! Durability contract, in write order, each step relying on the previous one being durable:
//!
//! ```text
//!  1 snapshot the state at log position L (no await: offsets, index and producers agree)
//!  2 commit log durable up to L (group commit's fdatasync)
//!  3 the new index records appended to each segment index file they belong to (usually one or
//!    two files, whatever the number of queues): one write and one fdatasync per file; the
//!    directory synced if a file was created
//!  4 checkpoint.tmp written, fdatasync'd, renamed over `checkpoint`, directory fsync'd
//! ```
//!
//! Crash at any step: the previous checkpoint stays valid (index files only grew beyond what it
//! counts; its CRCs and counts ignore the extra bytes). A failed write or fdatasync here poisons
//! the shard, like any other: after a failed fdatasync the page cache cannot be trusted.

use crate::format::checkpoint::{Checkpoint, ProducerState, QueueState, SegmentIndexState};
use crate::index::segments::{segment_index_path, Persisted, SegmentWrite};
use crate::io::{close_after, FileKind, IoBuf};
use crate::log::recovery::CHECKPOINT_FILE;
use crate::shard::Inner;
use crate::EngineError;
use std::rc::Rc;

/// Segment index files written concurrently during a checkpoint, at most (one or two in the
/// steady state; more only when small segments rolled several times since the last one).
const INDEX_WRITES_IN_FLIGHT: usize = 8;

/// The state at one log position, taken without awaiting.
struct Snapshot {
    log_pos: u64,
    max_producer_id: i64,
    producers: Vec<ProducerState>,
    queues: Vec<QueueState>,
    /// Pending index records this checkpoint persists (the first `pending` of the list).
    pending: usize,
    writes: Vec<SegmentWrite>,
    segments: Vec<SegmentIndexState>,
}

impl Inner {
    /// Writes a checkpoint at the current end of the log. Order (each step's durability is
    /// what the next one relies on): snapshot the state at log position L (no await) → log
    /// durable up to L → index records appended to their segments' index files and
    /// fdatasync'd → checkpoint written to a temporary file, fdatasync'd, renamed, directory
    /// synced. A crash at any point leaves the previous checkpoint valid (index files only grew
    /// past what it counts).
    pub(crate) async fn checkpoint(self: &Rc<Self>) -> Result<(), EngineError> {
        let _permit = self
            .checkpoint_lock
            .acquire_permit(1)
            .await
            .map_err(|_| EngineError::Closed)?;
        let snap = self.snapshot();
        self.flush_to(snap.log_pos).await?;
        let done: Vec<(u64, Persisted)> = snap
            .writes
            .iter()
            .map(|w| (w.segment_start, w.after))
            .collect();
        // A file created now must have a durable name before a checkpoint counts its records.
        let created = snap.writes.iter().any(|w| w.file_pos == 0);
        let mut in_flight = Vec::new();
        for w in snap.writes {
            let path = segment_index_path(&self.cfg.dir, w.segment_start);
            let me = self.clone();
            in_flight.push(glommio::spawn_local(async move {
                me.write_file_at(path, w.bytes, w.file_pos).await
            }));
            if in_flight.len() >= INDEX_WRITES_IN_FLIGHT {
                for t in in_flight.drain(..) {
                    t.await?;
                }
            }
        }
        for t in in_flight {
            t.await?;
        }
        if created {
            self.sync_dir().await?;
        }
        let ckpt = Checkpoint {
            epoch: self.epoch,
            log_pos: snap.log_pos,
            max_producer_id: snap.max_producer_id,
            queues: snap.queues,
            producers: snap.producers,
            segments: snap.segments,
        };
        self.write_checkpoint_file(ckpt.encode()).await?;
        // Only now do the new records count as persisted.
        let mut st = self.state.borrow_mut();
        st.seg_index.committed(snap.pending, &done);
        st.checkpoint_pos = snap.log_pos;
        Ok(())
    }

    fn snapshot(&self) -> Snapshot {
        let st = self.state.borrow();
        // Starts as they are once retention has removed what it is removing (`retained_from`):
        // recorded before any of it is visible, so a crash never moves a start back.
        let removing_before = self.retained_from.get();
        let mut queues: Vec<QueueState> = st
            .queues
            .iter()
            .map(|(id, q)| QueueState {
                queue_id: id.0,
                deleted: q.deleted,
                end_offset: q.end_offset,
                log_start_offset: q.start_from_pos(removing_before),
            })
            .collect();
        queues.sort_by_key(|q| q.queue_id);
        let log_pos = st.appender.next_pos();
        let pending = st.seg_index.pending.len();
        let writes = st.seg_index.plan_writes(&st.segments, pending);
        let segments = st.seg_index.table(&st.segments, log_pos, &writes);
        Snapshot {
            log_pos,
            max_producer_id: st.producers.max_producer_id().unwrap_or(-1),
            producers: st.producers.to_states(),
            queues,
            pending,
            writes,
            segments,
        }
    }

    /// Writes `bytes` at `pos` of a buffered file (created if absent) and fdatasyncs it. A
    /// failure poisons the shard (the rule for every failed write or fdatasync).
    async fn write_file_at(
        &self,
        path: std::path::PathBuf,
        bytes: Vec<u8>,
        pos: u64,
    ) -> Result<(), EngineError> {
        let r = async {
            let f = self.io.open(path.clone(), FileKind::Buffered, true).await?;
            let r = async {
                f.write_at(IoBuf::Heap(bytes), pos).await?;
                f.fdatasync().await
            }
            .await;
            close_after(&*f, r).await
        }
        .await;
        r.map_err(|e| {
            self.gc
                .poison(format!("writing {} failed: {e}", path.display()));
            EngineError::io("write segment index file", &path, e)
        })
    }

    /// Syncs the shard directory (new or removed names durable). A failure poisons the shard.
    pub(crate) async fn sync_dir(&self) -> Result<(), EngineError> {
        let dir = self.cfg.dir.clone();
        self.io.sync_dir(dir.clone()).await.map_err(|e| {
            self.gc
                .poison(format!("syncing {} failed: {e}", dir.display()));
            EngineError::io("sync directory", &dir, e)
        })
    }

    async fn write_checkpoint_file(&self, bytes: Vec<u8>) -> Result<(), EngineError> {
        let dir = self.cfg.dir.clone();
        let tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
        let len = bytes.len() as u64;
        let r = async {
            let f = self.io.open(tmp.clone(), FileKind::Buffered, true).await?;
            let r = async {
                f.write_at(IoBuf::Heap(bytes), 0).await?;
                f.truncate(len).await?;
                f.fdatasync().await
            }
            .await;
            close_after(&*f, r).await?;
            self.io
                .rename(tmp.clone(), dir.join(CHECKPOINT_FILE))
                .await?;
            self.io.sync_dir(dir.clone()).await
        }
        .await;
        r.map_err(|e| {
            self.gc
                .poison(format!("writing the checkpoint failed: {e}"));
            EngineError::io("write checkpoint", &tmp, e)
        })
    }
}
