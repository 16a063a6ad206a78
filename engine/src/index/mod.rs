//! Per-queue index (RocketMQ's ConsumeQueue): one fixed-size [`IndexEntry`] per stored batch,
//! kept in memory for lookups; on disk, the entries live in one index file per commit-log
//! segment, shared by all queues ([`segments`]).
//!
//! Why this scheme: a shard may hold 10,000 queues, and lookups never touch disk. Persisting
//! the index per queue cost one file open, write and fdatasync per written queue at every
//! checkpoint; per segment it costs one write and one fdatasync per segment touched since the
//! last checkpoint (usually one), whatever the number of queues.
//!
//! Invariants: entries are in offset order and dense (`next.base_offset == prev.last_offset +
//! 1`); log positions increase; `prefix_max_ts` is non-decreasing, so timestamp lookups can
//! binary-search it. Crash: what is in memory only is rebuilt by recovery from the segment
//! index files and the commit log.

pub(crate) mod segments;

use crate::format::index_entry::IndexEntry;
use std::collections::VecDeque;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    pub entry: IndexEntry,
    /// Largest `max_timestamp` of this entry and all retained entries before it.
    pub prefix_max_ts: i64,
}

/// The index and offsets of one queue.
///
/// Durability contract: none of its own. Its entries are persisted, with those of every other
/// queue, in the segment index files ([`segments::SegmentIndexes`]); its offsets and deleted
/// flag in the checkpoint. Recovery rebuilds it from both and the commit log.
#[derive(Debug, Default)]
pub(crate) struct QueueIndex {
    pub slots: VecDeque<Slot>,
    /// Next offset to assign.
    pub end_offset: u64,
    /// First offset still readable.
    pub log_start_offset: u64,
    pub deleted: bool,
}

impl QueueIndex {
    pub fn push(&mut self, e: IndexEntry) {
        let prev = self.slots.back().map_or(i64::MIN, |s| s.prefix_max_ts);
        self.slots.push_back(Slot {
            entry: e,
            prefix_max_ts: prev.max(e.max_timestamp),
        });
        self.end_offset = e.last_offset + 1;
    }

    /// Adds an entry of a batch the checkpoint already counts (loaded from a segment index
    /// file or rebuilt from a segment): the end offset is the checkpoint's.
    pub fn push_recovered(&mut self, e: IndexEntry) {
        let prev = self.slots.back().map_or(i64::MIN, |s| s.prefix_max_ts);
        self.slots.push_back(Slot {
            entry: e,
            prefix_max_ts: prev.max(e.max_timestamp),
        });
    }

    /// Number of leading slots whose entries lie entirely before log position `visible_end`.
    pub fn visible_len(&self, visible_end: u64) -> usize {
        self.slots
            .partition_point(|s| s.entry.log_pos + u64::from(s.entry.entry_len) <= visible_end)
    }

    /// Index of the first slot whose batch contains or follows `offset`.
    pub fn find(&self, offset: u64) -> usize {
        self.slots.partition_point(|s| s.entry.last_offset < offset)
    }

    /// Index of the first slot with `max_timestamp >= ts`.
    pub fn find_time(&self, ts: i64) -> usize {
        self.slots.partition_point(|s| s.prefix_max_ts < ts)
    }

    /// Offset the next visible-end computation reports: end of the first `n` slots.
    pub fn end_of(&self, n: usize) -> u64 {
        if n == self.slots.len() {
            return self.end_offset;
        }
        self.slots
            .get(n)
            .map_or(self.end_offset, |s| s.entry.base_offset)
    }

    /// Drops the slots stored before log position `pos` (their segment was deleted) and moves
    /// the log start offset past them.
    pub fn trim_before(&mut self, pos: u64) {
        // Never backwards: the start may have been advanced into the first retained batch.
        let start = self.start_from_pos(pos);
        self.advance_log_start(start);
    }

    /// Keeps prefix maxima exact for the retained entries after a trim.
    fn recompute_prefix_max(&mut self) {
        let mut m = i64::MIN;
        for s in self.slots.iter_mut() {
            m = m.max(s.entry.max_timestamp);
            s.prefix_max_ts = m;
        }
    }

    /// After recovery: the log start is the first retained batch (or the end, when retention
    /// removed every batch), or the start the checkpoint names if that is later (the queue's
    /// start was advanced: [`QueueIndex::advance_log_start`]). Recovery loads entries only
    /// from segments that still exist, so a checkpoint written before retention deleted a
    /// segment may name an older start.
    pub fn settle_log_start(&mut self) {
        let first = self
            .slots
            .front()
            .map_or(self.end_offset, |s| s.entry.base_offset);
        let start = self.log_start_offset.max(first);
        self.advance_log_start(start);
    }

    /// Moves the log start forward to `offset` (never backwards, never past the end) and drops
    /// the entries of batches wholly before it; a batch holding the start stays whole (a read
    /// from inside a batch returns the whole batch). Returns the new start.
    pub fn advance_log_start(&mut self, offset: u64) -> u64 {
        let start = offset.min(self.end_offset).max(self.log_start_offset);
        let n = self.slots.partition_point(|s| s.entry.last_offset < start);
        if n > 0 {
            self.slots.drain(..n);
            self.recompute_prefix_max();
        }
        self.log_start_offset = start;
        start
    }

    /// The log start a per-queue retention gives, among the first `visible` batches: past
    /// every batch before the first whose timestamps reach `keep_from_ms` (prefix maxima: a
    /// batch is kept while it or an earlier one reaches it), and past the oldest batches until
    /// at most `keep_bytes` of entries remain (the newest batch always stays, as Kafka keeps
    /// its active segment). Never before the current start.
    pub fn retained_start(
        &self,
        visible: usize,
        keep_from_ms: Option<i64>,
        keep_bytes: Option<u64>,
    ) -> u64 {
        let visible = visible.min(self.slots.len());
        let by_time = keep_from_ms.map_or(0, |t| {
            let first = self.find_time(t).min(visible);
            self.end_of(first)
        });
        let by_size = keep_bytes.map_or(0, |max| {
            let mut kept = 0u64;
            let mut first = visible;
            while first > 0 {
                let len = u64::from(self.slots[first - 1].entry.entry_len);
                if kept + len > max && first < visible {
                    break;
                }
                kept += len;
                first -= 1;
            }
            self.end_of(first)
        });
        by_time.max(by_size).max(self.log_start_offset)
    }

    /// The log start this queue has once every segment before log position `pos` is removed:
    /// its first batch at or after `pos` (its end if none), or its current start if later.
    pub fn start_from_pos(&self, pos: u64) -> u64 {
        let n = self.slots.partition_point(|s| s.entry.log_pos < pos);
        self.end_of(n).max(self.log_start_offset)
    }

    /// Log position of the first retained batch, if any.
    pub fn first_pos(&self) -> Option<u64> {
        self.slots.front().map(|s| s.entry.log_pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(base: u64, n: u64, pos: u64, ts: i64) -> IndexEntry {
        IndexEntry {
            base_offset: base,
            last_offset: base + n - 1,
            log_pos: pos,
            entry_len: 100,
            tag_hash: 0,
            max_timestamp: ts,
        }
    }

    fn sample() -> QueueIndex {
        let mut q = QueueIndex::default();
        q.push(entry(0, 3, 0, 10));
        q.push(entry(3, 2, 100, 5));
        q.push(entry(5, 4, 200, 30));
        q
    }

    #[test]
    fn find_returns_the_batch_containing_the_offset() {
        let q = sample();
        assert_eq!(
            [0, 2, 3, 4, 5, 8, 9].map(|o| q.find(o)),
            [0, 0, 1, 1, 2, 2, 3]
        );
        assert_eq!(q.end_offset, 9);
    }

    #[test]
    fn time_lookup_uses_the_first_batch_reaching_the_timestamp() {
        let q = sample();
        // The second batch's own max (5) is below 10, but the first batch already reaches 10.
        assert_eq!(
            [0, 6, 10, 11, 30, 31].map(|t| q.find_time(t)),
            [0, 0, 0, 2, 2, 3]
        );
    }

    #[test]
    fn visibility_follows_the_written_position() {
        let q = sample();
        assert_eq!(
            [0, 99, 100, 250, 300].map(|p| q.visible_len(p)),
            [0, 0, 1, 2, 3]
        );
        assert_eq!(q.end_of(1), 3);
        assert_eq!(q.end_of(3), 9);
    }

    #[test]
    fn trim_moves_log_start() {
        let mut q = sample();
        q.trim_before(150);
        assert_eq!(q.log_start_offset, 5);
        assert_eq!(q.slots.len(), 1);
        q.trim_before(1000);
        assert_eq!(q.log_start_offset, 9);
    }

    /// Catches: prefix maxima of dropped batches left in place (a time lookup would then answer
    /// a batch whose own timestamps are all earlier), and a trim moving an advanced start back.
    #[test]
    fn advancing_keeps_the_batch_holding_the_start_and_exact_time_lookups() {
        let mut q = sample();
        assert_eq!(q.advance_log_start(4), 4);
        assert_eq!(
            (q.slots.len(), q.find(4)),
            (2, 0),
            "batch [3, 4] stays whole"
        );
        assert_eq!(q.advance_log_start(5), 5);
        assert_eq!(q.slots.len(), 1);
        // The dropped first batch reached 10; the one left has its own max, 30.
        assert_eq!(q.slots[0].prefix_max_ts, 30);
        assert_eq!(q.advance_log_start(2), 5);
        assert_eq!(q.advance_log_start(7), 7);
        q.trim_before(150);
        assert_eq!(q.log_start_offset, 7, "a trim keeps an advanced start");
        assert_eq!(q.advance_log_start(100), 9);
        assert!(q.slots.is_empty());
    }

    /// sample(): batches [0,2] ts 10 at 0, [3,4] ts 5 at 100, [5,8] ts 30 at 200, 100 bytes each.
    #[test]
    fn retention_of_a_queue_by_time_and_size() {
        let q = sample();
        // Prefix maxima 10, 10, 30: a time limit of 11 drops the first two batches.
        assert_eq!(q.retained_start(3, Some(11), None), 5);
        // The second batch (ts 5) is older than 6 but the first (ts 10) is not: nothing goes.
        assert_eq!(q.retained_start(3, Some(6), None), 0);
        assert_eq!(q.retained_start(3, Some(31), None), 9, "all expired");
        assert_eq!(
            q.retained_start(2, Some(31), None),
            5,
            "only visible batches"
        );
        assert_eq!(q.retained_start(3, None, Some(250)), 3);
        assert_eq!(q.retained_start(3, None, Some(200)), 3);
        assert_eq!(
            q.retained_start(3, None, Some(10)),
            5,
            "the newest batch stays"
        );
        assert_eq!(
            q.retained_start(3, Some(11), Some(300)),
            5,
            "the later start wins"
        );
        assert_eq!(q.retained_start(3, None, None), 0);
        let mut advanced = sample();
        advanced.advance_log_start(6);
        assert_eq!(
            advanced.retained_start(2, None, Some(1000)),
            6,
            "never back"
        );
    }

    #[test]
    fn settled_log_start_is_the_first_retained_batch() {
        let mut q = QueueIndex {
            end_offset: 9,
            ..QueueIndex::default()
        };
        q.push_recovered(entry(5, 4, 200, 30));
        q.settle_log_start();
        assert_eq!(q.log_start_offset, 5);
        let mut empty = QueueIndex {
            end_offset: 9,
            log_start_offset: 3,
            ..QueueIndex::default()
        };
        empty.settle_log_start();
        assert_eq!(empty.log_start_offset, 9);
    }
}
