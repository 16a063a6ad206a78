//! Checkpoints: the shard's state at one log position, so recovery scans only the log after
//! it (format: `engine/FORMAT.md`, `crate::format::checkpoint`).
//!
//! Durability contract, in write order, each step relying on the previous one being durable:
//!
//! ```text
//!  1 snapshot the state at log position L (no await: offsets, index and producers agree)
//!  2 commit log durable up to L (group commit's fdatasync)
//!  3 new index entries appended to each queue's index file, each file fdatasync'd
//!  4 checkpoint.tmp written, fdatasync'd, renamed over `checkpoint`, directory fsync'd
//! ```
//!
//! Crash at any step: the previous checkpoint stays valid (index files only grew beyond what it
//! counts; its CRC and counts ignore the extra bytes). A failed write or fdatasync here poisons
//! the shard, like any other: after a failed fdatasync the page cache cannot be trusted.

use crate::format::checkpoint::{Checkpoint, ProducerState, QueueState};
use crate::format::index_entry::{IndexEntry, INDEX_ENTRY_LEN};
use crate::index::{encode_entries, index_path};
use crate::io::{FileKind, IoBuf};
use crate::log::recovery::CHECKPOINT_FILE;
use crate::shard::Inner;
use crate::{EngineError, QueueId};
use std::rc::Rc;

/// Index files written concurrently during a checkpoint, at most.
const INDEX_WRITES_IN_FLIGHT: usize = 32;

/// The state at one log position, taken without awaiting.
struct Snapshot {
    log_pos: u64,
    max_producer_id: i64,
    producers: Vec<ProducerState>,
    queues: Vec<(QueueState, Vec<IndexEntry>)>,
}

impl Inner {
    /// Writes a checkpoint at the current end of the log. Order (each step's durability is
    /// what the next one relies on): snapshot the state at log position L (no await) → log
    /// durable up to L → index entries appended and fdatasync'd → checkpoint written to a
    /// temporary file, fdatasync'd, renamed, directory synced. A crash at any point leaves the
    /// previous checkpoint valid (index files only grew past what it counts).
    pub(crate) async fn checkpoint(self: &Rc<Self>) -> Result<(), EngineError> {
        let _permit = self
            .checkpoint_lock
            .acquire_permit(1)
            .await
            .map_err(|_| EngineError::Closed)?;
        let snap = self.snapshot();
        self.flush_to(snap.log_pos).await?;
        // Index files are independent: write (and fdatasync) several at once, so that a
        // checkpoint over thousands of queues costs a few fsync latencies, not thousands.
        let mut queues = Vec::with_capacity(snap.queues.len());
        let mut writes = Vec::new();
        for (qs, entries) in snap.queues {
            let mut qs = qs;
            if !entries.is_empty() {
                let (bytes, crc) = encode_entries(&entries, qs.index_crc);
                let path = index_path(&self.cfg.dir, qs.queue_id);
                let pos = qs.index_entries * INDEX_ENTRY_LEN as u64;
                let me = self.clone();
                writes.push(glommio::spawn_local(async move {
                    me.write_file_at(path, bytes, pos).await
                }));
                if writes.len() >= INDEX_WRITES_IN_FLIGHT {
                    for w in writes.drain(..) {
                        w.await?;
                    }
                }
                qs.index_entries += entries.len() as u64;
                qs.index_crc = crc;
            }
            queues.push(qs);
        }
        for w in writes {
            w.await?;
        }
        let ckpt = Checkpoint {
            epoch: self.epoch,
            log_pos: snap.log_pos,
            max_producer_id: snap.max_producer_id,
            queues: queues.clone(),
            producers: snap.producers,
        };
        self.write_checkpoint_file(ckpt.encode()).await?;
        // Only now do the index files' new entries count as persisted.
        {
            let mut st = self.state.borrow_mut();
            for qs in &queues {
                if let Some(q) = st.queues.get_mut(&QueueId(qs.queue_id)) {
                    let n = (qs.index_entries - q.persisted) as usize;
                    q.unpersisted.drain(..n.min(q.unpersisted.len()));
                    q.persisted = qs.index_entries;
                    q.persisted_crc = qs.index_crc;
                }
            }
            st.checkpoint_pos = snap.log_pos;
        }
        // Index files of deleted queues: the checkpoint now durably says "deleted", so
        // recovery will not look for them.
        for qs in queues.iter().filter(|q| q.deleted && q.index_entries > 0) {
            let path = index_path(&self.cfg.dir, qs.queue_id);
            match self.io.remove(path.clone()).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove index file");
                    continue;
                }
            }
            if let Some(q) = self
                .state
                .borrow_mut()
                .queues
                .get_mut(&QueueId(qs.queue_id))
            {
                q.persisted = 0;
                q.persisted_crc = 0;
            }
        }
        Ok(())
    }

    fn snapshot(&self) -> Snapshot {
        let st = self.state.borrow();
        let mut queues: Vec<(QueueState, Vec<IndexEntry>)> = st
            .queues
            .iter()
            .map(|(id, q)| {
                let qs = QueueState {
                    queue_id: id.0,
                    deleted: q.deleted,
                    end_offset: q.end_offset,
                    log_start_offset: q.log_start_offset,
                    index_entries: q.persisted,
                    index_crc: q.persisted_crc,
                };
                (
                    qs,
                    if q.deleted {
                        Vec::new()
                    } else {
                        q.unpersisted.clone()
                    },
                )
            })
            .collect();
        queues.sort_by_key(|(q, _)| q.queue_id);
        Snapshot {
            log_pos: st.appender.next_pos(),
            max_producer_id: st.producers.max_producer_id().unwrap_or(-1),
            producers: st.producers.to_states(),
            queues,
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
            f.write_at(IoBuf::Heap(bytes), pos).await?;
            f.fdatasync().await
        }
        .await;
        r.map_err(|e| {
            self.gc
                .poison(format!("writing {} failed: {e}", path.display()));
            EngineError::io("write index file", &path, e)
        })
    }

    async fn write_checkpoint_file(&self, bytes: Vec<u8>) -> Result<(), EngineError> {
        let dir = self.cfg.dir.clone();
        let tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
        let len = bytes.len() as u64;
        let r = async {
            let f = self.io.open(tmp.clone(), FileKind::Buffered, true).await?;
            f.write_at(IoBuf::Heap(bytes), 0).await?;
            f.truncate(len).await?;
            f.fdatasync().await?;
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
