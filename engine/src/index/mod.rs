//! Per-queue index (RocketMQ's ConsumeQueue): one fixed-size [`IndexEntry`] per stored batch,
//! kept in memory for lookups and appended to `index/<queue>.idx` at each checkpoint.
//!
//! Why this scheme: a shard may hold 10,000 queues, so index files are opened only while a
//! checkpoint appends to them (no fd per queue), and lookups never touch disk. The checkpoint
//! records, per queue, how many entries of the file are persisted and their CRC-32C; recovery
//! loads exactly those and rebuilds the rest by scanning the commit log from the checkpoint.
//!
//! Invariants: entries are in offset order and dense (`next.base_offset == prev.last_offset +
//! 1`); log positions increase; `prefix_max_ts` is non-decreasing, so timestamp lookups can
//! binary-search it. Crash: an index file may hold more entries than the checkpoint counts
//! (written, then the checkpoint never landed); they are ignored and overwritten.

use crate::format::index_entry::{IndexEntry, INDEX_ENTRY_LEN};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};

/// Largest index file prefix recovery will load for one queue (26.8 M batches).
pub(crate) const MAX_INDEX_FILE_BYTES: u64 = 1 << 30;
/// Folder of the index files, inside the shard directory.
pub(crate) const INDEX_DIR: &str = "index";

#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    pub entry: IndexEntry,
    /// Largest `max_timestamp` of this entry and all retained entries before it.
    pub prefix_max_ts: i64,
}

/// The index and offsets of one queue.
///
/// Durability contract: the first `persisted` entries are durable in the index file (checked
/// by `persisted_crc`); the rest (`unpersisted`) exist only in memory and are rebuilt from the
/// commit log after a crash.
#[derive(Debug, Default)]
pub(crate) struct QueueIndex {
    pub slots: VecDeque<Slot>,
    /// Next offset to assign.
    pub end_offset: u64,
    /// First offset still readable.
    pub log_start_offset: u64,
    pub deleted: bool,
    /// Entries durably in the index file, and the CRC-32C of their bytes.
    pub persisted: u64,
    pub persisted_crc: u32,
    /// Entries appended since the last checkpoint, oldest first (retention does not trim them:
    /// the file must stay dense).
    pub unpersisted: Vec<IndexEntry>,
}

impl QueueIndex {
    pub fn push(&mut self, e: IndexEntry) {
        let prev = self.slots.back().map_or(i64::MIN, |s| s.prefix_max_ts);
        self.slots.push_back(Slot {
            entry: e,
            prefix_max_ts: prev.max(e.max_timestamp),
        });
        self.unpersisted.push(e);
        self.end_offset = e.last_offset + 1;
    }

    /// Adds an entry recovered from the index file (already persisted).
    pub fn push_persisted(&mut self, e: IndexEntry) {
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
        let n = self.slots.partition_point(|s| s.entry.log_pos < pos);
        if n == 0 {
            return;
        }
        self.slots.drain(..n);
        self.log_start_offset = self
            .slots
            .front()
            .map_or(self.end_offset, |s| s.entry.base_offset);
        // Keep prefix maxima exact for the retained entries.
        let mut m = i64::MIN;
        for s in self.slots.iter_mut() {
            m = m.max(s.entry.max_timestamp);
            s.prefix_max_ts = m;
        }
    }
}

pub(crate) fn index_path(dir: &Path, queue: u32) -> PathBuf {
    dir.join(INDEX_DIR).join(format!("{queue:010}.idx"))
}

/// Encodes entries for appending to an index file; returns the bytes and the running CRC.
pub(crate) fn encode_entries(entries: &[IndexEntry], crc_before: u32) -> (Vec<u8>, u32) {
    let mut out = Vec::with_capacity(entries.len() * INDEX_ENTRY_LEN);
    for e in entries {
        out.extend_from_slice(&e.encode());
    }
    let crc = crc32c::crc32c_append(crc_before, &out);
    (out, crc)
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
    fn trim_moves_log_start_and_keeps_unpersisted() {
        let mut q = sample();
        q.trim_before(150);
        assert_eq!(q.log_start_offset, 5);
        assert_eq!(q.slots.len(), 1);
        assert_eq!(q.unpersisted.len(), 3);
        q.trim_before(1000);
        assert_eq!(q.log_start_offset, 9);
    }

    #[test]
    fn running_crc_matches_whole_file_crc() {
        let es = [entry(0, 1, 0, 0), entry(1, 1, 100, 0), entry(2, 1, 200, 0)];
        let (a, crc_a) = encode_entries(&es[..1], 0);
        let (b, crc_b) = encode_entries(&es[1..], crc_a);
        let all = [a, b].concat();
        assert_eq!(crc_b, crc32c::crc32c(&all));
        assert_eq!(
            crate::format::index_entry::decode_file(&all, 3, crc_b).unwrap(),
            es.to_vec()
        );
    }
}
