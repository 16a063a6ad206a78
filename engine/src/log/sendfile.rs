//! The `sendfile` backlog-read mode ([`crate::BacklogRead::Sendfile`]): instead of reading a
//! batch, the engine names it — a range of a buffered, read-only descriptor of its segment —
//! and the caller (the broker's connection writer) hands that range to the kernel, which sends
//! the page-cache pages themselves (`kernel-notes/sendfile-and-splice.md`).
//!
//! ```text
//!  log  | sealed blocks ............................ | margin | tail block | unwritten
//!       ^                                            ^                ^
//!       segment start                  sendfile_limit(written)        written (align_down)
//!  batches ending at or below the limit: Part::File (sendfile from the page cache)
//!  batches above it:                     Part::Bytes (read like `readahead`, O_DIRECT)
//! ```
//!
//! Invariants:
//! - Only bytes that never change again are named: every write the appender has in flight or
//!   will issue starts at or after the block holding the written position (writes start at
//!   `align_down` of the last position issued, which is >= the written one), so the blocks
//!   below `align_down(written)` are final for as long as the shard is open. A page sent
//!   from the cache therefore holds the bytes on disk. A direct write of the tail block drops cached pages of its range (and a large
//!   folio that reaches into it) from the cache; pages an skb still references stay valid
//!   for that skb and hold final bytes for the part it sends.
//! - [`SENDFILE_TAIL_MARGIN_BYTES`] keeps sendfile reads away from the tail: the kernel's
//!   readahead (up to `read_ahead_kb`, 8 MiB here) would otherwise fill the cache with pages
//!   of blocks the appender is about to write, whose presence makes io_uring's non-blocking
//!   direct write fail with EAGAIN and go to an io-wq worker (o-direct-and-page-cache.md).
//!   Correctness does not depend on the margin; only where writes are issued does.
//! - No CRC is checked: the bytes never pass through user space. Recovery verified every
//!   entry it scanned, the index says where each batch is, and the consumer checks the
//!   batch's own CRC-32C (Kafka's broker does not check either when it sends from the page
//!   cache). `readahead`/`direct` do check.
//! - One descriptor per segment, opened on first use (one `open` on the executor thread per
//!   segment) and forgotten when retention removes the segment; ranges handed out keep it
//!   open (`Arc`), so a send racing retention reads the unlinked file, never a reused one.
//!
//! Not durable: descriptors only.

use super::Segment;
use crate::io::align_down;
use ringmq_wire::part::FileRange;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// Distance below the written position under which batches are sent from the page cache
/// (see the module docs): twice the kernel's readahead window here.
pub const SENDFILE_TAIL_MARGIN_BYTES: u64 = 16 << 20;

/// Log position below which every batch may be sent by file range, given the log's written
/// position.
pub(crate) fn sendfile_limit(written: u64) -> u64 {
    align_down(written).saturating_sub(SENDFILE_TAIL_MARGIN_BYTES)
}

/// Buffered read-only descriptors of the shard's segments, by segment start.
#[derive(Default)]
pub(crate) struct SegmentFiles {
    map: RefCell<HashMap<u64, Arc<std::fs::File>>>,
}

impl SegmentFiles {
    /// The range of `len` bytes at log position `pos` of `seg`, or None when the segment
    /// cannot be opened as a plain file (in-memory storage in tests; the caller reads the
    /// bytes instead).
    pub fn range(&self, seg: &Segment, pos: u64, len: usize) -> Option<FileRange> {
        let file = self.file(seg)?;
        Some(FileRange {
            file,
            pos: pos - seg.start,
            len,
        })
    }

    /// Drops the descriptor of the segment starting at `start` (retention removes it), and
    /// returns it: while ranges handed out hold it too, the segment must not be recycled.
    pub fn forget(&self, start: u64) -> Option<Arc<std::fs::File>> {
        self.map.borrow_mut().remove(&start)
    }

    /// Drops every descriptor (the shard is closing; ranges already handed out keep theirs).
    pub fn forget_all(&self) {
        self.map.borrow_mut().clear();
    }

    fn file(&self, seg: &Segment) -> Option<Arc<std::fs::File>> {
        if let Some(f) = self.map.borrow().get(&seg.start) {
            return Some(f.clone());
        }
        match std::fs::File::open(&seg.path) {
            Ok(f) => {
                let f = Arc::new(f);
                self.map.borrow_mut().insert(seg.start, f.clone());
                Some(f)
            }
            Err(e) => {
                tracing::debug!(segment = %seg.path.display(), error = %e, "no sendfile descriptor; reading instead");
                None
            }
        }
    }

    #[cfg(test)]
    pub fn open_count(&self) -> usize {
        self.map.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard_tests::{cfg, run};
    use crate::{BacklogRead, Durability, Offset, Part, QueueId, Shard, ShardConfig};
    use bytes::{Bytes, BytesMut};
    use ringmq_wire::record_batch::{
        set_base_offset, validate, BatchBuilder, ProducerStamp, Record,
    };
    use std::os::unix::fs::FileExt;

    /// A batch whose bytes depend on `seed` (a misplaced range cannot match another batch).
    fn batch(seed: usize, fill: usize) -> Bytes {
        let value: Vec<u8> = (0..fill).map(|k| (seed * 31 + k * 7) as u8).collect();
        let mut b = BatchBuilder::new(fill + 128);
        b.push(&Record {
            key: None,
            value: Some(&value),
            headers: &[],
            timestamp_ms: seed as i64,
        });
        Bytes::from(b.build(ProducerStamp::NONE, 0))
    }

    fn sendfile_cfg(dir: &std::path::Path) -> ShardConfig {
        ShardConfig {
            segment_size_bytes: 64 << 20,
            max_batch_bytes: 1 << 20,
            tail_cache_bytes: 0,
            backlog_read: BacklogRead::Sendfile,
            ..cfg(dir.to_str().unwrap())
        }
    }

    /// Appends `total` bytes of batches round-robin to queues 0 and 1; returns each queue's
    /// batches as a reader must see them.
    async fn fill(s: &Shard, total: usize) -> [Vec<Bytes>; 2] {
        let mut want: [Vec<Bytes>; 2] = [Vec::new(), Vec::new()];
        let mut written = 0;
        let mut i = 0;
        while written < total {
            let q = i % 2;
            let b = batch(i, 90_000 + (i * 977) % 40_000);
            let a = s
                .append(QueueId(q as u32), b.clone(), Durability::Written)
                .await
                .unwrap();
            let mut stored = BytesMut::from(&b[..]);
            set_base_offset(&mut stored, a.base_offset.0 as i64);
            want[q].push(stored.freeze());
            written += b.len();
            i += 1;
        }
        want
    }

    fn bytes_of(part: &Part) -> Bytes {
        match part {
            Part::Bytes(b) => b.clone(),
            Part::File(f) => {
                let mut buf = vec![0u8; f.len];
                f.file.read_exact_at(&mut buf, f.pos).unwrap();
                Bytes::from(buf)
            }
        }
    }

    #[test]
    fn file_ranges_only_below_the_tail_margin_and_bytes_beyond() {
        // Catches: a file range handed out for a batch the appender may still rewrite (or
        // inside the margin), a range pointing at the entry header instead of the batch, or
        // at the wrong place; a sendfile mode that never returns ranges; `read` returning
        // anything but the stored bytes in this mode.
        run(|| async {
            let tmp = tempfile::tempdir().unwrap();
            let s = Shard::open(sendfile_cfg(tmp.path())).await.unwrap();
            let want = fill(&s, (SENDFILE_TAIL_MARGIN_BYTES + (8 << 20)) as usize).await;
            // Computed here, not with `sendfile_limit`: the block holding the written
            // position may be rewritten; the margin below it is kept to O_DIRECT reads.
            let written = s.inner.gc.written();
            let limit = written / 4096 * 4096 - SENDFILE_TAIL_MARGIN_BYTES;
            assert!(limit > 4 << 20, "the test needs sealed data: limit {limit}");
            let (mut files, mut bytes) = (0, 0);
            for q in 0..2u32 {
                let slots: Vec<_> = {
                    let st = s.inner.state.borrow();
                    st.queues[&QueueId(q)]
                        .slots
                        .iter()
                        .map(|x| x.entry)
                        .collect()
                };
                let mut got = Vec::new();
                let mut from = Offset(0);
                loop {
                    let r = s.read_sendable(QueueId(q), from, 1 << 20).await.unwrap();
                    let Some(last) = r.batches.last() else { break };
                    let h = validate(&bytes_of(last)).unwrap();
                    from = Offset(h.last_offset() as u64 + 1);
                    got.extend(r.batches);
                }
                assert_eq!(got.len(), want[q as usize].len(), "queue {q}");
                for (i, (part, e)) in got.iter().zip(&slots).enumerate() {
                    let sealed = e.log_pos + u64::from(e.entry_len) <= limit;
                    match part {
                        Part::File(_) => {
                            assert!(
                                sealed,
                                "queue {q} batch {i} at {} is past {limit}",
                                e.log_pos
                            );
                            files += 1;
                        }
                        Part::Bytes(_) => {
                            assert!(!sealed, "queue {q} batch {i} below {limit} was read");
                            bytes += 1;
                        }
                    }
                    assert!(
                        bytes_of(part) == want[q as usize][i],
                        "queue {q} batch {i} differs"
                    );
                }
                // `read` gives bytes, the same ones, in this mode too.
                let r = s.read(QueueId(q), Offset(0), 64 << 20).await.unwrap();
                assert_eq!(r.batches, want[q as usize][..r.batches.len()]);
            }
            assert!(files > 20 && bytes > 20, "{files} ranges, {bytes} read");
            assert_eq!(s.inner.seg_files.open_count(), 1);
            s.close().await.unwrap();
        });
    }

    #[test]
    fn retention_drops_descriptors_and_ranges_outlive_the_segment() {
        // Catches: descriptors of deleted segments kept open (their disk space is never
        // freed), or a range taken before retention reading garbage after the unlink.
        run(|| async {
            let tmp = tempfile::tempdir().unwrap();
            let c = ShardConfig {
                segment_size_bytes: 4 << 20,
                retention_bytes: Some(24 << 20),
                // Recycling runs retention as each next segment is prepared: the fill would
                // remove the oldest batch before this test reads it. (A segment with a range
                // handed out is never recycled: `log::recycle`'s tests.)
                recycle_segments: false,
                ..sendfile_cfg(tmp.path())
            };
            let s = Shard::open(c).await.unwrap();
            let want = fill(&s, (SENDFILE_TAIL_MARGIN_BYTES + (16 << 20)) as usize).await;
            let r = s.read_sendable(QueueId(0), Offset(0), 1).await.unwrap();
            let Some(Part::File(oldest)) = r.batches.first().cloned() else {
                panic!(
                    "the oldest batch should be a file range: {:?}",
                    r.batches.first()
                );
            };
            let before = s.inner.seg_files.open_count();
            assert_eq!(before, 1);
            s.enforce_retention().await.unwrap();
            assert!(s.log_start_offset(QueueId(0)).0 > 0, "retention never ran");
            assert_eq!(s.inner.seg_files.open_count(), 0);
            assert!(bytes_of(&Part::File(oldest)) == want[0][0]);
            s.close().await.unwrap();
        });
    }
}
