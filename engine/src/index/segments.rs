//! Segment index files: one per commit-log segment, `<start:020>.idx` beside `<start:020>.log`,
//! holding a [`SegmentIndexRecord`] (queue id + index entry) for every batch of the segment, in
//! log order. They persist every queue's index at once.
//!
//! ```text
//!  append ──► pending (memory, log order) ──checkpoint──► 00…000.idx  00…824.idx
//!                                            one write + one fdatasync per segment touched
//! ```
//!
//! Durability contract: the first `records` records of a segment's file are durable once the
//! checkpoint that counts them (with their chained CRC-32C) landed; `pending` exists only in
//! memory and is rebuilt by recovery from the log. A file may hold more bytes than its
//! checkpoint counts (written, then the checkpoint never landed): they are ignored and
//! overwritten. A file that is missing, short or fails its CRC costs a scan of that one segment
//! at recovery, never the open. Retention deletes a segment's `.log` (made durable) before its
//! `.idx`, and recovery only reads the index of a segment whose log exists, so an index never
//! points into a missing file that recovery trusts.

use crate::format::checkpoint::SegmentIndexState;
use crate::format::segment_index::{
    encode_records, SegmentIndexRecord, MIN_BATCH_ENTRY_LEN, SEGMENT_INDEX_RECORD_LEN,
};
use crate::log::{parse_positioned_name, positioned_path, SegmentSet};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Suffix of segment index file names.
pub(crate) const INDEX_SUFFIX: &str = ".idx";
/// Largest segment index prefix recovery reads (also bounded by the segment's size: a segment
/// of `n` bytes holds at most `n / MIN_BATCH_ENTRY_LEN` batches).
pub(crate) const MAX_SEGMENT_INDEX_BYTES: u64 = 1 << 30;

/// How much of one segment's index file is durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Persisted {
    pub records: u64,
    /// Chained CRC-32C of those records' bytes.
    pub crc: u32,
}

/// The shard's segment index files, as far as checkpoints persisted them, and the records of
/// the batches appended since.
#[derive(Debug, Default)]
pub(crate) struct SegmentIndexes {
    /// By segment start. Absent: nothing persisted (no file needed).
    pub persisted: BTreeMap<u64, Persisted>,
    /// Records of batches appended (or recovered) since the last checkpoint, in log order.
    pub pending: Vec<SegmentIndexRecord>,
}

/// The bytes one checkpoint appends to one segment's index file.
#[derive(Debug)]
pub(crate) struct SegmentWrite {
    pub segment_start: u64,
    /// Byte position in the file: right after the records already persisted.
    pub file_pos: u64,
    pub bytes: Vec<u8>,
    /// The file's state once these bytes are durable.
    pub after: Persisted,
}

impl SegmentIndexes {
    /// Groups the first `n` pending records by segment (they are in log order, so each
    /// segment's records are one run) into one append per segment.
    pub fn plan_writes(&self, segments: &SegmentSet, n: usize) -> Vec<SegmentWrite> {
        let pending = &self.pending[..n];
        let mut out = Vec::new();
        let mut i = 0;
        while i < pending.len() {
            let Some(seg) = segments.find(pending[i].entry.log_pos) else {
                // Its segment is gone: retention checkpoints past a segment before deleting
                // it, so this cannot happen; the batch is unreadable anyway.
                i += 1;
                continue;
            };
            let run = pending[i..].partition_point(|r| r.entry.log_pos < seg.end());
            let before = self.persisted.get(&seg.start).copied().unwrap_or_default();
            let (bytes, crc) = encode_records(&pending[i..i + run], before.crc);
            out.push(SegmentWrite {
                segment_start: seg.start,
                file_pos: before.records * SEGMENT_INDEX_RECORD_LEN as u64,
                bytes,
                after: Persisted {
                    records: before.records + run as u64,
                    crc,
                },
            });
            i += run;
        }
        out
    }

    /// The checkpoint's table: every segment holding log before `log_pos`, with what its index
    /// file will hold once `writes` are durable.
    pub fn table(
        &self,
        segments: &SegmentSet,
        log_pos: u64,
        writes: &[SegmentWrite],
    ) -> Vec<SegmentIndexState> {
        segments
            .map
            .keys()
            .take_while(|&&start| start < log_pos)
            .map(|&start| {
                let p = writes
                    .iter()
                    .find(|w| w.segment_start == start)
                    .map(|w| w.after)
                    .or_else(|| self.persisted.get(&start).copied())
                    .unwrap_or_default();
                SegmentIndexState {
                    segment_start: start,
                    records: p.records,
                    crc: p.crc,
                }
            })
            .collect()
    }

    /// A checkpoint covering the first `n` pending records and `writes` landed.
    pub fn committed(&mut self, n: usize, writes: &[(u64, Persisted)]) {
        self.pending.drain(..n.min(self.pending.len()));
        for &(start, after) in writes {
            self.persisted.insert(start, after);
        }
    }

    /// The segment starting at `start` was deleted.
    pub fn forget(&mut self, start: u64) {
        self.persisted.remove(&start);
    }
}

/// Most records a segment of `segment_bytes` can have, hence the most a checkpoint can count.
pub(crate) fn max_records(segment_bytes: u64) -> u64 {
    (segment_bytes / MIN_BATCH_ENTRY_LEN)
        .min(MAX_SEGMENT_INDEX_BYTES / SEGMENT_INDEX_RECORD_LEN as u64)
}

pub(crate) fn segment_index_path(dir: &Path, start: u64) -> PathBuf {
    positioned_path(dir, start, INDEX_SUFFIX)
}

/// The segment start encoded in an index file name, if it is one.
pub(crate) fn parse_index_name(name: &str) -> Option<u64> {
    parse_positioned_name(name, INDEX_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::index_entry::IndexEntry;
    use crate::format::segment_index::{decode_records, RecordBounds};
    use crate::log::test_segment_set;

    fn set(starts: &[u64], size: u64) -> SegmentSet {
        let segments: Vec<_> = starts.iter().map(|&start| (start, size, 0)).collect();
        test_segment_set(&segments)
    }

    fn rec(q: u32, pos: u64) -> SegmentIndexRecord {
        SegmentIndexRecord {
            queue_id: q,
            entry: IndexEntry {
                base_offset: pos,
                last_offset: pos,
                log_pos: pos,
                entry_len: 125,
                tag_hash: 0,
                max_timestamp: 0,
            },
        }
    }

    #[test]
    fn one_write_per_segment_whatever_the_number_of_queues() {
        let segs = set(&[0, 100_000, 200_000], 100_000);
        let mut ix = SegmentIndexes::default();
        ix.persisted.insert(
            0,
            Persisted {
                records: 2,
                crc: 77,
            },
        );
        // 1,000 queues, records spread over two segments.
        for i in 0..1000u32 {
            let pos = 1000 + u64::from(i) * 125;
            ix.pending.push(rec(i, pos));
        }
        let writes = ix.plan_writes(&segs, 1000);
        assert_eq!(
            writes.iter().map(|w| w.segment_start).collect::<Vec<_>>(),
            vec![0, 100_000]
        );
        assert_eq!(writes[0].file_pos, 2 * 48);
        assert_eq!(writes[0].after.records, 2 + 792);
        assert_eq!(writes[1].file_pos, 0);
        assert_eq!(writes[1].after.records, 208);
        // The second segment's bytes verify against the chained CRC from zero.
        let b = RecordBounds {
            start: 100_000,
            end: 200_000,
        };
        assert_eq!(
            decode_records(&writes[1].bytes, 208, writes[1].after.crc, b)
                .unwrap()
                .len(),
            208
        );
        let table = ix.table(&segs, 130_000, &writes);
        assert_eq!(
            table
                .iter()
                .map(|t| (t.segment_start, t.records))
                .collect::<Vec<_>>(),
            vec![(0, 794), (100_000, 208)]
        );
        let done: Vec<_> = writes.iter().map(|w| (w.segment_start, w.after)).collect();
        ix.pending.push(rec(5, 130_000));
        ix.committed(1000, &done);
        assert_eq!(ix.pending, vec![rec(5, 130_000)]);
        assert_eq!(ix.persisted[&100_000].records, 208);
        ix.forget(0);
        assert!(!ix.persisted.contains_key(&0));
    }

    #[test]
    fn index_names_round_trip() {
        let p = segment_index_path(Path::new("/d"), 1 << 30);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "00000000001073741824.idx");
        assert_eq!(parse_index_name(name), Some(1 << 30));
        assert_eq!(parse_index_name("00000000001073741824.log"), None);
        assert_eq!(parse_index_name("0000000007.idx"), None);
    }

    #[test]
    fn record_limit_follows_the_segment_size() {
        assert_eq!(max_records(125 * 10), 10);
        assert!(max_records(u64::MAX) * 48 <= MAX_SEGMENT_INDEX_BYTES);
    }
}
