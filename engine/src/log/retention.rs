//! Retention: which whole segments to delete, oldest first: by age, by total size, and every
//! segment that holds no retained batch of any queue (all below their log starts, which
//! `Shard::advance_log_start` and `Shard::expire` move, or of deleted queues), as Kafka deletes
//! the segments below a partition's log start offset. The last rule runs whether or not age or
//! size limits are configured: DeleteRecords, a topic's own retention and DeleteTopics free the
//! disk once no queue needs a segment.
//!
//! Only a prefix of the log is ever deleted (never the active segment, nor a segment holding
//! a retained batch of a pinned queue: `ShardConfig::pinned_queues`), so every queue's log
//! start offset only moves forward. The shard writes a checkpoint past a segment before it
//! deletes it, so recovery never needs bytes that retention removed.
//!
//! Order: a checkpoint recording the queues' new starts (and past the doomed segments), then
//! the in-memory trim, then the files. A segment is two files, deleted in this order:
//!
//! ```text
//!  1 remove <start>.log, sync the directory    (the log is gone for good)
//!  2 remove <start>.idx, sync the directory
//! ```
//!
//! Step 1 renames the `.log` to a spare instead when it may be recycled (`log::recycle`).
//! Crash between 1 and 2: an orphan `.idx` remains; recovery reads an index file only for a
//! segment whose `.log` exists, and removes orphans. The reverse order could leave a `.log`
//! whose index is gone, which recovery would rebuild by scanning the whole segment, only for
//! retention to delete it again.

use super::{recycle, SegmentSet};
use crate::index::segments::segment_index_path;
use crate::log::recovery::now_ms;
use crate::shard::Inner;
use crate::EngineError;
use std::rc::Rc;

impl Inner {
    pub(crate) async fn enforce_retention(self: &Rc<Self>) -> Result<(), EngineError> {
        let _permit = self
            .retention_lock
            .acquire_permit(1)
            .await
            .map_err(|_| EngineError::Closed)?;
        if self.stopped() {
            return Ok(());
        }
        let (doomed, end) = {
            let st = self.state.borrow();
            // Pinned queues keep every segment from the one holding their first retained batch.
            let keep_from = self
                .cfg
                .pinned_queues
                .iter()
                .filter_map(|q| st.queues.get(q).filter(|q| !q.deleted))
                .filter_map(|q| q.first_pos())
                .min()
                .and_then(|pos| st.segments.find(pos))
                .map_or(u64::MAX, |seg| seg.start);
            // Below the first retained batch of every live queue, no segment is needed.
            let unreferenced_below = st
                .queues
                .values()
                .filter(|q| !q.deleted)
                .filter_map(|q| q.first_pos())
                .min()
                .unwrap_or(u64::MAX);
            let d = segments_to_delete(
                &st.segments,
                st.appender.segment().start.min(keep_from),
                Limits {
                    retention_ms: self.cfg.retention_ms,
                    retention_bytes: self.cfg.retention_bytes,
                    unreferenced_below,
                },
                now_ms(),
            );
            let end = d
                .last()
                .and_then(|s| st.segments.map.get(s))
                .map_or(0, |s| s.end());
            (d, end)
        };
        if doomed.is_empty() {
            return Ok(());
        }
        // First a checkpoint past the doomed segments (recovery never needs them) that already
        // records the queues' starts after them, before any of this is visible: a crash at any
        // later point finds the starts there, never back before them, even where a segment
        // file is still in place (recovery then rebuilds its index and drops the batches).
        self.retained_from.set(self.retained_from.get().max(end));
        self.checkpoint().await?;
        let removed: Vec<_> = {
            let mut st = self.state.borrow_mut();
            for q in st.queues.values_mut() {
                q.trim_before(end);
            }
            for s in &doomed {
                st.seg_index.forget(*s);
            }
            doomed
                .iter()
                .filter_map(|s| st.segments.map.remove(s))
                .map(|seg| (self.seg_files.forget(seg.start), seg))
                .collect()
        };
        for (sendfile, seg) in removed {
            let keep = recycle::may_keep(
                self.cfg.recycle_segments,
                &*self.io,
                &seg,
                sendfile.as_ref(),
                self.cfg.segment_size_bytes,
                self.spares.borrow().len(),
            );
            drop(sendfile);
            // A read still holding the segment keeps reading the unlinked file; its descriptors
            // then close when the last holder drops it.
            if Rc::strong_count(&seg) == 1 {
                seg.close_quietly().await;
            }
            if keep {
                tracing::info!(segment = %seg.path.display(), "retention keeps segment as a spare");
                let to = recycle::spare_path(&self.cfg.dir, seg.start);
                self.io
                    .rename(seg.path.clone(), to)
                    .await
                    .map_err(|e| EngineError::io("rename segment to spare", &seg.path, e))?;
                self.spares.borrow_mut().push(seg.start);
            } else {
                tracing::info!(segment = %seg.path.display(), "retention deletes segment");
                self.io
                    .remove(seg.path.clone())
                    .await
                    .map_err(|e| EngineError::io("remove segment", &seg.path, e))?;
            }
            self.sync_dir().await?;
            let idx = segment_index_path(&self.cfg.dir, seg.start);
            match self.io.remove(idx.clone()).await {
                Ok(()) => {}
                // A segment that never held a batch has no index file.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(EngineError::io("remove segment index", &idx, e)),
            }
        }
        self.sync_dir().await
    }
}

/// What makes a segment deletable.
pub(crate) struct Limits {
    /// Older than this (its newest write).
    pub retention_ms: Option<u64>,
    /// The log beyond this many bytes, oldest segments first.
    pub retention_bytes: Option<u64>,
    /// Log position of the first batch any live queue retains: a segment ending at or before
    /// it holds nothing any queue still serves.
    pub unreferenced_below: u64,
}

/// Start positions of the segments to delete, oldest first: never the segment starting at
/// `keep_from` (the active one, or the first a pinned queue needs) nor any after it.
pub(crate) fn segments_to_delete(
    segments: &SegmentSet,
    keep_from: u64,
    limits: Limits,
    now_ms: i64,
) -> Vec<u64> {
    let mut total = segments.total_bytes();
    let mut out = Vec::new();
    for seg in segments.map.values() {
        if seg.start >= keep_from {
            break;
        }
        let too_big = limits.retention_bytes.is_some_and(|max| total > max);
        let too_old = limits
            .retention_ms
            .is_some_and(|ms| seg.modified_ms.get() < now_ms.saturating_sub(ms as i64));
        let unreferenced = seg.end() <= limits.unreferenced_below;
        if !(too_big || too_old || unreferenced) {
            break;
        }
        total -= seg.size;
        out.push(seg.start);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::test_segment_set;

    /// Segments of 100 bytes, one per modification time.
    fn set(mtimes: &[i64]) -> SegmentSet {
        let segments: Vec<_> = (0u64..)
            .zip(mtimes)
            .map(|(i, &m)| (i * 100, 100, m))
            .collect();
        test_segment_set(&segments)
    }

    /// Age and size limits only (every segment holds a retained batch).
    fn limits(retention_ms: Option<u64>, retention_bytes: Option<u64>) -> Limits {
        Limits {
            retention_ms,
            retention_bytes,
            unreferenced_below: 0,
        }
    }

    #[test]
    fn by_size_keeps_the_newest_and_never_the_active() {
        let s = set(&[0, 0, 0, 0]);
        assert_eq!(
            segments_to_delete(&s, 300, limits(None, Some(250)), 0),
            vec![0, 100]
        );
        assert_eq!(
            segments_to_delete(&s, 300, limits(None, Some(0)), 0),
            vec![0, 100, 200]
        );
        assert_eq!(
            segments_to_delete(&s, 300, limits(None, Some(400)), 0),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn by_age_stops_at_the_first_young_segment() {
        let s = set(&[10, 50, 20, 90]);
        // Segment 200 is old too, but deleting it would leave a hole after the young segment 100.
        assert_eq!(
            segments_to_delete(&s, 300, limits(Some(60), None), 100),
            vec![0]
        );
        assert_eq!(
            segments_to_delete(&s, 300, limits(None, None), 100),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn segments_below_every_retained_batch_go_without_any_limit() {
        let s = set(&[90, 90, 90, 90]);
        let below = |pos| Limits {
            retention_ms: None,
            retention_bytes: None,
            unreferenced_below: pos,
        };
        // The first retained batch is in segment 200 (at 250): 0 and 100 hold nothing.
        assert_eq!(segments_to_delete(&s, 300, below(250), 100), vec![0, 100]);
        // At a segment boundary: the segment starting there stays.
        assert_eq!(segments_to_delete(&s, 300, below(200), 100), vec![0, 100]);
        // No live queue retains anything: all but the active (or pinned) segment go.
        assert_eq!(
            segments_to_delete(&s, 300, below(u64::MAX), 100),
            vec![0, 100, 200]
        );
    }
}
