//! Recycled segments (`log::recycle`): retired segment files become later segments, and the
//! entries of their earlier lap never pass for new ones.

use super::{batch, cfg, open, run, small_cfg, wait_until};
use crate::format::entry::{EntryHeader, EntryKind, HEADER_LEN};
use crate::io::{CrashMode, FileKind, IoBuf, MemStorage, Storage};
use crate::log::recycle::{MAX_SPARE_SEGMENTS, SPARE_SUFFIX};
use crate::{Durability, Offset, QueueId, Shard, ShardConfig};
use bytes::Bytes;
use std::path::Path;

/// Every stored batch of `q`, as read back.
async fn stored(s: &Shard, q: QueueId) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut from = s.log_start_offset(q);
    loop {
        let r = s.read(q, from, 1 << 20).await.expect("read");
        let Some(last) = r.batches.last() else {
            return out;
        };
        let h = ringmq_wire::record_batch::validate(last).expect("valid batch");
        from = Offset(h.base_offset as u64 + h.last_offset_delta as u64 + 1);
        out.extend(r.batches);
    }
}

fn spares(io: &MemStorage) -> usize {
    io.paths()
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(SPARE_SUFFIX))
        .count()
}

/// What a recycled segment holds past the new lap's head: a whole, CRC-valid entry of its
/// earlier lap, at a block boundary, which even continues its queue's offsets and carries the
/// current epoch (a recycle within one run). Only its `log_pos` (where it was written, one lap
/// earlier) tells it from a new entry; recovery must end the log in front of it.
#[test]
fn an_entry_written_at_another_position_ends_the_log() {
    run(|| async {
        let io = MemStorage::new();
        let c = cfg("/lap");
        let q = QueueId(1);
        // A's entry fills the first block exactly.
        let fill = (0..4096)
            .find(|&f| batch(1, 0, -1, -1, f).len() == 4096 - HEADER_LEN)
            .expect("some fill fits");
        let s = open(&c, &io).await;
        s.append(q, batch(1, 0, -1, -1, fill), Durability::Durable)
            .await
            .unwrap();
        let epoch = s.inner.epoch;
        drop(s);

        // The next batch of q, as an earlier lap of this file would have left it at 4096.
        let mut payload = batch(2, 0, -1, -1, 100).to_vec();
        payload[..8].copy_from_slice(&1i64.to_be_bytes());
        let stale = EntryHeader {
            kind: EntryKind::Batch,
            queue_id: q.0,
            record_count: 2,
            base_offset: 1,
            log_pos: 4096 + c.segment_size_bytes,
            max_timestamp: 1,
            append_time_ms: 0,
            epoch,
            payload_len: payload.len() as u32,
            crc: 0,
        };
        let mut block = stale.encode(&payload).to_vec();
        block.extend_from_slice(&payload);
        block.resize(4096, 0);
        let seg = io
            .open(
                "/lap/00000000000000000000.log".into(),
                FileKind::Direct,
                false,
            )
            .await
            .unwrap();
        seg.write_at(IoBuf::Heap(block), 4096).await.unwrap();
        seg.fdatasync().await.unwrap();
        io.crash(CrashMode::DropUnsynced);

        let s = open(&c, &io).await;
        assert_eq!(
            s.end_offset(q),
            Offset(1),
            "the earlier lap's entry was taken"
        );
        s.append(q, batch(1, 0, -1, -1, 10), Durability::Durable)
            .await
            .unwrap();
        assert_eq!(stored(&s, q).await.len(), 2);
    });
}

/// Under retention, removed segments become spares and later segments reuse them (the
/// preparation of each next segment runs retention itself, so no periodic pass is needed): the rolls
/// land on files written to their end (appends there convert no extent), at most
/// `MAX_SPARE_SEGMENTS` spares exist, and every batch acknowledged Durable reads back
/// byte-identical after a crash that keeps any subset of the unsynced writes, which includes
/// the earlier lap's bytes the new writes had not yet replaced.
#[test]
fn retired_segments_are_recycled_and_survive_crashes() {
    for mask in [0u64, 0x5555_5555_5555_5555, 0xf0f0_f0f0_f0f0_f0f0] {
        run(move || async move {
            let io = MemStorage::new();
            io.set_prefers_written_extents(true);
            let c = ShardConfig {
                retention_bytes: Some(3 * (64 << 10)),
                // Only recycling can make the active segment written ahead of the head.
                zero_ahead: false,
                ..small_cfg("/rc")
            };
            let s = open(&c, &io).await;
            let mut acked: Vec<Vec<Bytes>> = vec![Vec::new(); 2];
            let mut written_rolls = 0;
            for i in 0..400u32 {
                let q = (i % 2) as usize;
                let b = batch(
                    1 + i as usize % 3,
                    i64::from(i),
                    -1,
                    -1,
                    1500 + (i as usize * 37) % 2000,
                );
                let rolls = s.inner.recycled_rolls.get();
                let start = s.inner.state.borrow().appender.segment().start;
                s.append(QueueId(q as u32), b.clone(), Durability::Durable)
                    .await
                    .unwrap();
                acked[q].push(b);
                if s.inner.recycled_rolls.get() > rolls {
                    assert_ne!(s.inner.state.borrow().appender.segment().start, start);
                    // A recycled file is written to its end: the appends that follow overwrite.
                    if s.zero_ahead().1 {
                        written_rolls += 1;
                    }
                }
                assert!(spares(&io) <= MAX_SPARE_SEGMENTS, "{} spares", spares(&io));
                // The next preparation starts half way through a segment: let it run.
                let inner = s.inner.clone();
                wait_until("the next segment is prepared", move || {
                    !inner.prep_started.get() || inner.next_segment.borrow().is_some()
                })
                .await;
            }
            assert!(
                s.inner.recycled_rolls.get() >= 5,
                "{} recycled rolls",
                s.inner.recycled_rolls.get()
            );
            assert!(
                written_rolls >= 5,
                "{written_rolls} rolls onto written files"
            );
            let before = [stored(&s, QueueId(0)).await, stored(&s, QueueId(1)).await];
            let starts = [
                s.log_start_offset(QueueId(0)),
                s.log_start_offset(QueueId(1)),
            ];
            drop(s);
            io.crash(CrashMode::KeepWrites { mask });
            let s = open(&c, &io).await;
            for q in 0..2 {
                let id = QueueId(q as u32);
                assert_eq!(
                    s.end_offset(id).0,
                    acked[q]
                        .iter()
                        .map(|b| {
                            ringmq_wire::record_batch::validate(b).unwrap().record_count as u64
                        })
                        .sum::<u64>(),
                    "q{q}: every batch was acknowledged Durable"
                );
                let after = stored(&s, id).await;
                assert!(s.log_start_offset(id) >= starts[q]);
                // Byte-identical but for the base offset the shard assigned.
                let skip = before[q].len() - after.len();
                for (a, b) in before[q][skip..].iter().zip(&after) {
                    assert_eq!(a, b, "q{q}: a batch changed across the crash");
                }
                let tail = acked[q].len() - after.len();
                for (sent, got) in acked[q][tail..].iter().zip(&after) {
                    assert_eq!(
                        sent[8..],
                        got[8..],
                        "q{q}: stored bytes differ from the sent ones"
                    );
                }
            }
        });
    }
}

/// Spares left by an earlier run are kept when they can serve as segments and removed
/// otherwise (wrong size, too many, recycling off).
#[test]
fn recovery_keeps_usable_spares_only() {
    run(|| async {
        let io = MemStorage::new();
        io.set_prefers_written_extents(true);
        let c = small_cfg("/sp");
        let size = c.segment_size_bytes;
        for (start, len) in [
            (0u64, size),
            (size, size / 2),
            (2 * size, size),
            (3 * size, size),
        ] {
            let path = crate::log::recycle::spare_path(Path::new("/sp"), start);
            let f = io.open(path, FileKind::Direct, true).await.unwrap();
            f.preallocate(len).await.unwrap();
            f.close().await.unwrap();
        }
        let s = open(&c, &io).await;
        assert_eq!(*s.inner.spares.borrow(), vec![0, 2 * size]);
        assert_eq!(spares(&io), 2);
        s.close().await.unwrap();
        drop(s);
        let off = ShardConfig {
            recycle_segments: false,
            ..c
        };
        let s = open(&off, &io).await;
        assert!(s.inner.spares.borrow().is_empty());
        assert_eq!(spares(&io), 0);
    });
}
