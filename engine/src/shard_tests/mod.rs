//! Shard-level tests: the engine's logic on the in-memory fault-injecting storage
//! (`crash.rs`: crashes, faults, corruption), plus a few on real glommio DMA files in a
//! temporary directory (`real_files.rs`).

mod crash;
mod real_files;
mod recycle;
mod segment_index;
mod zero_ahead;

use crate::io::{CrashMode, MemStorage, Storage};
use crate::{Durability, EngineError, Offset, QueueId, Shard, ShardConfig};
use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use ringmq_wire::record_batch::{validate, BatchBuilder, ProducerStamp, Record};
use std::future::Future;
use std::rc::Rc;

/// Runs `f` on a fresh glommio executor with a small registered-buffer pool (tests run in
/// parallel, and every executor's pool counts against RLIMIT_MEMLOCK).
pub(crate) fn run<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 << 10)
        .spawn(f)
        .expect("executor starts")
        .join()
        .expect("test body does not panic");
}

pub(crate) fn batch(n: usize, ts: i64, pid: i64, seq: i32, fill: usize) -> Bytes {
    let mut b = BatchBuilder::new(256);
    let value = vec![b'x'; fill];
    for i in 0..n {
        b.push(&Record {
            key: None,
            value: Some(&value),
            headers: &[],
            timestamp_ms: ts + i as i64,
        });
    }
    Bytes::from(b.build(
        ProducerStamp {
            producer_id: pid,
            producer_epoch: 0,
            base_sequence: seq,
        },
        0,
    ))
}

/// Waits (bounded) until `cond` holds, looking every millisecond.
pub(crate) async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let t0 = std::time::Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "timed out waiting until {what}"
        );
        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Default settings except 1 MiB segments: the in-memory double materialises preallocation.
pub(crate) fn cfg(dir: &str) -> ShardConfig {
    ShardConfig {
        dir: dir.into(),
        segment_size_bytes: 1 << 20,
        max_batch_bytes: 256 << 10,
        ..ShardConfig::default()
    }
}

/// Settings for a shard on real files in `dir`: 4 MiB segments, no tail cache (reads go to the
/// files).
pub(crate) fn real_cfg(dir: &std::path::Path) -> ShardConfig {
    ShardConfig {
        segment_size_bytes: 4 << 20,
        tail_cache_bytes: 0,
        ..cfg(dir.to_str().expect("a UTF-8 temporary path"))
    }
}

pub(crate) fn small_cfg(dir: &str) -> ShardConfig {
    ShardConfig {
        segment_size_bytes: 64 << 10,
        max_batch_bytes: 16 << 10,
        tail_cache_bytes: 0,
        ..cfg(dir)
    }
}

pub(crate) async fn open(c: &ShardConfig, io: &MemStorage) -> Rc<Shard> {
    Shard::open_with_io(c.clone(), Rc::new(io.process_view()) as Rc<dyn Storage>)
        .await
        .expect("open")
}

/// Reads everything of `q` from offset 0 and returns (base offset, record count) per batch,
/// checking each batch's CRC.
pub(crate) async fn read_all(s: &Shard, q: QueueId) -> Vec<(i64, i32)> {
    let mut out = Vec::new();
    let mut from = s.log_start_offset(q);
    loop {
        let r = s.read(q, from, 1 << 20).await.expect("read");
        if r.batches.is_empty() {
            return out;
        }
        for b in &r.batches {
            let h = validate(b).expect("stored batch keeps a valid CRC");
            out.push((h.base_offset, h.record_count));
            from = Offset(h.last_offset() as u64 + 1);
        }
    }
}

#[test]
fn append_assigns_dense_offsets_and_reads_back() {
    run(|| async {
        let io = MemStorage::new();
        let s = open(&cfg("/a"), &io).await;
        let (q1, q2) = (QueueId(1), QueueId(2));
        let a = s
            .append(q1, batch(3, 100, -1, -1, 10), Durability::Durable)
            .await
            .unwrap();
        let b = s
            .append(q2, batch(1, 100, -1, -1, 10), Durability::Written)
            .await
            .unwrap();
        let c = s
            .append(q1, batch(2, 200, -1, -1, 10), Durability::Written)
            .await
            .unwrap();
        assert_eq!((a.base_offset, a.last_offset), (Offset(0), Offset(2)));
        assert_eq!((b.base_offset, b.last_offset), (Offset(0), Offset(0)));
        assert_eq!((c.base_offset, c.last_offset), (Offset(3), Offset(4)));
        assert_eq!(s.end_offset(q1), Offset(5));
        assert_eq!(read_all(&s, q1).await, vec![(0, 3), (3, 2)]);
        // A read starting inside a batch returns the whole batch.
        let r = s.read(q1, Offset(4), 1).await.unwrap();
        assert_eq!(r.batches.len(), 1);
        assert_eq!(validate(&r.batches[0]).unwrap().base_offset, 3);
        // max_bytes bounds the answer but one batch always comes back.
        assert_eq!(s.read(q1, Offset(0), 1).await.unwrap().batches.len(), 1);
        assert!(s.read(q1, Offset(5), 100).await.unwrap().batches.is_empty());
        assert!(matches!(
            s.read(q1, Offset(6), 100).await,
            Err(EngineError::OffsetOutOfRange { .. })
        ));
        // A queue never written: offset 0 is its end, anything else is out of range.
        assert!(s
            .read(QueueId(77), Offset(0), 100)
            .await
            .unwrap()
            .batches
            .is_empty());
        assert!(matches!(
            s.read(QueueId(77), Offset(1), 100).await,
            Err(EngineError::OffsetOutOfRange { .. })
        ));
        assert_eq!(s.queues(), vec![q1, q2]);
        s.close().await.unwrap();
    });
}

#[test]
fn max_timestamp_is_the_largest_of_the_readable_batches() {
    run(|| async {
        let io = MemStorage::new();
        let s = open(&cfg("/mt"), &io).await;
        let q = QueueId(3);
        assert_eq!(s.max_timestamp(q).unwrap(), None);
        // Timestamps out of order across batches: the maximum sits in the middle batch.
        for (n, ts) in [(2, 100), (3, 500), (1, 300)] {
            s.append(q, batch(n, ts, -1, -1, 10), Durability::Written)
                .await
                .unwrap();
        }
        // Records of the middle batch carry 500, 501, 502.
        assert_eq!(s.max_timestamp(q).unwrap(), Some(502));
        assert_eq!(
            s.offset_for_timestamp(q, 502).await.unwrap(),
            Some((Offset(2), 502))
        );
        s.delete_queue(q).await.unwrap();
        assert!(matches!(
            s.max_timestamp(q),
            Err(EngineError::QueueDeleted(_))
        ));
        s.close().await.unwrap();
    });
}

#[test]
fn reads_from_disk_match_reads_from_the_cache() {
    run(|| async {
        let io = MemStorage::new();
        let s = open(&small_cfg("/d"), &io).await; // tail cache disabled: every read is a disk read
        for i in 0..20 {
            s.append(
                QueueId(i % 3),
                batch(2, 0, -1, -1, 700),
                Durability::Written,
            )
            .await
            .unwrap();
        }
        assert_eq!(read_all(&s, QueueId(1)).await.len(), 7);
        let r = s.read(QueueId(0), Offset(0), 1 << 20).await.unwrap();
        assert_eq!(r.batches.len(), 7);
        assert_eq!(r.end_offset, Offset(14));
    });
}

/// Interleaved queues with large batches: one fetch becomes many separate reads, issued in
/// waves; the batches still come back whole and in offset order.
#[test]
fn scattered_batches_are_read_in_order() {
    run(|| async {
        let io = MemStorage::new();
        let c = ShardConfig {
            segment_size_bytes: 8 << 20,
            tail_cache_bytes: 0,
            ..cfg("/sc")
        };
        let s = open(&c, &io).await;
        for i in 0..120u32 {
            let b = batch(1 + (i as usize / 3) % 4, 0, -1, -1, 30_000);
            s.append(QueueId(i % 3), b, Durability::Written)
                .await
                .unwrap();
        }
        let r = s.read(QueueId(2), Offset(0), 8 << 20).await.unwrap();
        assert_eq!(
            r.batches.len(),
            40,
            "more batches than MAX_READS_IN_FLIGHT, one read each"
        );
        let mut next = 0;
        for b in &r.batches {
            let h = validate(b).unwrap();
            assert_eq!(h.base_offset, next);
            next = h.last_offset() + 1;
        }
        assert_eq!(Offset(next as u64), r.end_offset);
    });
}

#[test]
fn concurrent_durable_appends_share_fdatasyncs() {
    run(|| async {
        let io = MemStorage::new();
        let s = open(&cfg("/g"), &io).await;
        let before = io.fsync_count();
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let s = s.clone();
                glommio::spawn_local(async move {
                    s.append(
                        QueueId(i % 4),
                        batch(1, 0, -1, -1, 100),
                        Durability::Durable,
                    )
                    .await
                    .unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        let syncs = io.fsync_count() - before;
        assert!(syncs <= 4, "64 concurrent appends took {syncs} fdatasyncs");
        assert_eq!((0..4).map(|q| s.end_offset(QueueId(q)).0).sum::<u64>(), 64);
    });
}

#[test]
fn bad_batches_are_refused_before_anything_is_written() {
    run(|| async {
        let io = MemStorage::new();
        let s = open(
            &ShardConfig {
                max_batch_bytes: 1000,
                ..small_cfg("/b")
            },
            &io,
        )
        .await;
        let writes = io.write_count();
        let mut bad = batch(2, 0, -1, -1, 10).to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            s.append(QueueId(1), Bytes::from(bad), Durability::Durable)
                .await,
            Err(EngineError::CorruptBatch(_))
        ));
        assert!(matches!(
            s.append(QueueId(1), batch(1, 0, -1, -1, 2000), Durability::Durable)
                .await,
            Err(EngineError::BatchTooLarge { .. })
        ));
        assert_eq!(io.write_count(), writes);
        assert_eq!(s.end_offset(QueueId(1)), Offset(0));
        assert!(s.queues().is_empty());
    });
}

#[test]
fn segments_roll_and_retention_moves_log_start() {
    run(|| async {
        let io = MemStorage::new();
        let c = ShardConfig {
            retention_bytes: Some(3 * (64 << 10)),
            ..small_cfg("/r")
        };
        let s = open(&c, &io).await;
        for _ in 0..60 {
            s.append(QueueId(1), batch(1, 0, -1, -1, 10_000), Durability::Written)
                .await
                .unwrap();
        }
        s.flush().await.unwrap();
        let segs = |io: &MemStorage| {
            io.paths()
                .iter()
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .count()
        };
        assert!(
            segs(&io) >= 9,
            "60 × 10 KB in 64 KiB segments: {}",
            segs(&io)
        );
        s.enforce_retention().await.unwrap();
        assert!(segs(&io) <= 3, "{} segments left", segs(&io));
        let start = s.log_start_offset(QueueId(1));
        assert!(start.0 > 0);
        assert!(matches!(
            s.read(QueueId(1), Offset(0), 10).await,
            Err(EngineError::OffsetOutOfRange { .. })
        ));
        let kept = read_all(&s, QueueId(1)).await;
        assert_eq!(kept.first().map(|b| b.0 as u64), Some(start.0));
        assert_eq!(kept.last().map(|b| b.0), Some(59));
        drop(s);
        io.crash(CrashMode::DropUnsynced);
        let s = open(&c, &io).await;
        assert_eq!(s.log_start_offset(QueueId(1)), start);
        assert_eq!(read_all(&s, QueueId(1)).await, kept);
        assert_eq!(s.end_offset(QueueId(1)), Offset(60));
    });
}

/// A queue's log start moves forward on request, never backwards nor past the end; reads
/// below it are out of range, a read inside the batch holding it returns that whole batch, and
/// the start survives a restart (the periodic checkpoint records it even when nothing else
/// moved; here `close` does).
#[test]
fn advancing_the_log_start_hides_older_batches_durably() {
    run(|| async {
        let io = MemStorage::new();
        let c = small_cfg("/ls");
        let q = QueueId(2);
        let s = open(&c, &io).await;
        for _ in 0..10 {
            s.append(q, batch(3, 0, -1, -1, 100), Durability::Durable)
                .await
                .unwrap();
        }
        assert_eq!(s.advance_log_start(q, Offset(7)).unwrap(), Offset(7));
        assert_eq!(
            s.advance_log_start(q, Offset(4)).unwrap(),
            Offset(7),
            "never backwards"
        );
        assert!(matches!(
            s.read(q, Offset(6), 1 << 20).await,
            Err(EngineError::OffsetOutOfRange { .. })
        ));
        // Offset 7 lies in the batch [6, 8]: a read from it returns that batch whole.
        assert_eq!(read_all(&s, q).await.first(), Some(&(6, 3)));
        assert_eq!(
            s.advance_log_start(q, Offset(99)).unwrap(),
            Offset(30),
            "never past the end"
        );
        assert_eq!(
            s.advance_log_start(QueueId(9), Offset(5)).unwrap(),
            Offset(0)
        );
        s.advance_log_start(q, Offset(12)).unwrap();
        s.close().await.unwrap();
        drop(s);
        let s = open(&c, &io).await;
        assert_eq!(s.log_start_offset(q), Offset(30));
        assert!(read_all(&s, q).await.is_empty());
        s.append(q, batch(1, 0, -1, -1, 100), Durability::Durable)
            .await
            .unwrap();
        assert_eq!(read_all(&s, q).await, vec![(30, 1)]);
    });
}

/// 40 batches of 10 KB to queue 1: about six 64 KiB segments.
async fn fill(s: &Shard) {
    for _ in 0..40 {
        s.append(QueueId(1), batch(1, 0, -1, -1, 10_000), Durability::Written)
            .await
            .unwrap();
    }
}

/// Retention never removes a segment holding a retained batch of a pinned queue, whatever its
/// size or age limits say, and goes on once that queue's log start has moved past it.
/// Catches: the broker's internal state (topics, committed offsets) deleted by retention.
#[test]
fn retention_keeps_pinned_queues_from_their_log_start() {
    run(|| async {
        let io = MemStorage::new();
        let pinned = QueueId(7);
        let c = ShardConfig {
            retention_bytes: Some(2 * (64 << 10)),
            pinned_queues: vec![pinned],
            ..small_cfg("/pin")
        };
        let s = open(&c, &io).await;
        s.append(pinned, batch(1, 0, -1, -1, 100), Durability::Durable)
            .await
            .unwrap();
        fill(&s).await;
        let snapshot = s
            .append(pinned, batch(1, 0, -1, -1, 100), Durability::Durable)
            .await
            .unwrap();
        fill(&s).await;
        s.flush().await.unwrap();
        s.enforce_retention().await.unwrap();
        assert_eq!(
            s.log_start_offset(QueueId(1)),
            Offset(0),
            "segment 0 holds the pin"
        );
        assert_eq!(read_all(&s, pinned).await, vec![(0, 1), (1, 1)]);
        let held = s.retained_log_bytes(pinned);
        assert!(
            held > 70 * 10_000,
            "the pin holds back nearly the whole log: {held}"
        );
        s.advance_log_start(pinned, snapshot.base_offset).unwrap();
        let held = s.retained_log_bytes(pinned);
        assert!((40 * 10_000..50 * 10_000).contains(&held), "{held}");
        s.enforce_retention().await.unwrap();
        let start = s.log_start_offset(QueueId(1)).0;
        assert!(
            start > 0 && start < 40,
            "stops at the second pinned batch: {start}"
        );
        assert_eq!(read_all(&s, pinned).await, vec![(1, 1)]);
        s.advance_log_start(pinned, Offset(2)).unwrap();
        s.enforce_retention().await.unwrap();
        assert!(s.log_start_offset(QueueId(1)).0 > 40);
        drop(s);
        io.crash(CrashMode::DropUnsynced);
        let s = open(&c, &io).await;
        assert_eq!(s.end_offset(pinned), Offset(2));
        assert!(read_all(&s, pinned).await.is_empty());
    });
}

/// With no age or size limit at all, retention deletes the segments that hold no retained
/// batch of any live queue (below every log start, or of deleted queues), as Kafka deletes the
/// segments below a partition's log start offset; what stays is readable, also after a crash.
/// Catches: DeleteRecords, a topic's own retention and DeleteTopics never freeing the disk.
#[test]
fn segments_no_live_queue_retains_are_deleted_without_limits() {
    run(|| async {
        let io = MemStorage::new();
        let c = ShardConfig {
            recycle_segments: false,
            ..small_cfg("/unref")
        };
        assert!(c.retention_ms.is_none() && c.retention_bytes.is_none());
        let s = open(&c, &io).await;
        let logs = || async {
            let names = io.list_dir("/unref".into()).await.expect("list");
            names.iter().filter(|n| n.ends_with(".log")).count()
        };
        fill(&s).await;
        s.append(QueueId(2), batch(1, 0, -1, -1, 100), Durability::Written)
            .await
            .unwrap();
        fill(&s).await;
        s.flush().await.unwrap();
        let all = logs().await;
        s.enforce_retention().await.unwrap();
        assert_eq!(logs().await, all, "every segment holds a retained batch");

        // Queue 1 keeps its last 5 batches; queue 2's one batch, written halfway, holds its
        // segment and every later one.
        s.advance_log_start(QueueId(1), Offset(75)).unwrap();
        s.enforce_retention().await.unwrap();
        let half = logs().await;
        assert!(half < all && half > 2, "{all} -> {half}");
        assert_eq!(read_all(&s, QueueId(2)).await, vec![(0, 1)]);

        // Queue 2 deleted: only what queue 1 still serves stays (and the active segment).
        s.delete_queue(QueueId(2)).await.unwrap();
        s.enforce_retention().await.unwrap();
        let last = logs().await;
        assert!(last < half && last <= 2, "{half} -> {last}");
        let kept: Vec<i64> = read_all(&s, QueueId(1)).await.iter().map(|b| b.0).collect();
        assert_eq!(kept, (75..80).collect::<Vec<_>>());

        drop(s);
        io.crash(CrashMode::DropUnsynced);
        let s = open(&c, &io).await;
        assert_eq!(s.log_start_offset(QueueId(1)), Offset(75));
        let kept: Vec<i64> = read_all(&s, QueueId(1)).await.iter().map(|b| b.0).collect();
        assert_eq!(kept, (75..80).collect::<Vec<_>>());
    });
}

/// A start moved and then persisted survives a crash that drops everything unsynced; one only
/// moved may come back (it is durable with the next checkpoint).
/// Catches: `persist_log_starts` returning before the starts are in a durable checkpoint.
#[test]
fn persisted_log_starts_survive_a_crash() {
    run(|| async {
        let io = MemStorage::new();
        let c = cfg("/starts");
        let s = open(&c, &io).await;
        for q in [1, 2] {
            for _ in 0..5 {
                s.append(QueueId(q), batch(1, 0, -1, -1, 100), Durability::Durable)
                    .await
                    .unwrap();
            }
        }
        s.advance_log_start(QueueId(1), Offset(3)).unwrap();
        s.persist_log_starts().await.unwrap();
        s.advance_log_start(QueueId(2), Offset(4)).unwrap();
        drop(s);
        io.crash(CrashMode::DropUnsynced);
        let s = open(&c, &io).await;
        assert_eq!(s.log_start_offset(QueueId(1)), Offset(3));
        assert!([Offset(0), Offset(4)].contains(&s.log_start_offset(QueueId(2))));
        assert_eq!(s.end_offset(QueueId(1)), Offset(5));
    });
}

#[test]
fn deleted_queue_stays_deleted_after_a_crash() {
    run(|| async {
        let io = MemStorage::new();
        let c = cfg("/x");
        let s = open(&c, &io).await;
        s.append(QueueId(3), batch(1, 0, 7, 0, 10), Durability::Written)
            .await
            .unwrap();
        s.append(QueueId(4), batch(1, 0, -1, -1, 10), Durability::Written)
            .await
            .unwrap();
        s.close().await.unwrap(); // the checkpoint writes both queues' index records
        drop(s);
        assert_eq!(
            io.contents(std::path::Path::new("/x/00000000000000000000.idx"))
                .map(|b| b.len()),
            Some(2 * 48)
        );
        let s = open(&c, &io).await;
        s.delete_queue(QueueId(3)).await.unwrap();
        assert!(matches!(
            s.read(QueueId(3), Offset(0), 10).await,
            Err(EngineError::QueueDeleted(_))
        ));
        drop(s);
        io.crash(CrashMode::DropUnsynced);
        let s = open(&c, &io).await;
        assert_eq!(s.queues(), vec![QueueId(4)]);
        assert!(s.producer_batches(QueueId(3), 7).is_empty());
        assert!(matches!(
            s.append(QueueId(3), batch(1, 0, -1, -1, 10), Durability::Written)
                .await,
            Err(EngineError::QueueDeleted(_))
        ));
        s.delete_queue(QueueId(3)).await.unwrap();
        s.close().await.unwrap();
        drop(s);
        // The segment index still holds queue 3's record; the checkpoint's deleted flag wins.
        let s = open(&c, &io).await;
        assert_eq!(s.queues(), vec![QueueId(4)]);
        assert_eq!(s.inner.rebuilt_segments, 0);
        assert!(matches!(
            s.read(QueueId(3), Offset(0), 10).await,
            Err(EngineError::QueueDeleted(_))
        ));
        assert_eq!(read_all(&s, QueueId(4)).await, vec![(0, 1)]);
    });
}

#[test]
fn producer_table_survives_restart_through_checkpoint_and_scan() {
    run(|| async {
        let io = MemStorage::new();
        let c = cfg("/pr");
        let s = open(&c, &io).await;
        for i in 0..4 {
            s.append(QueueId(1), batch(2, 0, 42, i * 2, 10), Durability::Written)
                .await
                .unwrap();
        }
        s.close().await.unwrap(); // these four are in the checkpoint
        drop(s);
        let s = open(&c, &io).await;
        for i in 4..7 {
            s.append(QueueId(1), batch(2, 0, 42, i * 2, 10), Durability::Durable)
                .await
                .unwrap();
        }
        s.append(QueueId(1), batch(1, 0, 43, 0, 10), Durability::Durable)
            .await
            .unwrap();
        drop(s);
        io.crash(CrashMode::DropUnsynced); // these are found by the scan
        let s = open(&c, &io).await;
        let b = s.producer_batches(QueueId(1), 42);
        assert_eq!(b.len(), 5);
        assert_eq!(
            (b[0].first_seq, b[4].last_seq, b[4].base_offset),
            (4, 13, Offset(12))
        );
        assert_eq!(s.max_producer_id(), Some(43));
    });
}

#[test]
fn interval_flusher_makes_written_data_durable() {
    run(|| async {
        let io = MemStorage::new();
        let s = open(
            &ShardConfig {
                flush_interval_ms: Some(2),
                ..cfg("/fl")
            },
            &io,
        )
        .await;
        s.append(QueueId(1), batch(1, 0, -1, -1, 10), Durability::Written)
            .await
            .unwrap();
        let end = s.inner.state.borrow().appender.next_pos();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while s.durable_log_pos() < end {
            assert!(std::time::Instant::now() < deadline, "flusher never synced");
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
    });
}

/// Whole 1 MiB chunks go out zero-copy and their buffers are reused (holding old bytes): the
/// data must still come back intact after a restart.
#[test]
fn reused_chunk_buffers_write_intact_data() {
    run(|| async {
        let io = MemStorage::new();
        let c = ShardConfig {
            segment_size_bytes: 8 << 20,
            max_batch_bytes: 1 << 20,
            tail_cache_bytes: 0,
            ..cfg("/z")
        };
        let s = open(&c, &io).await;
        let tasks: Vec<_> = (0..8u32)
            .map(|t| {
                let s = s.clone();
                glommio::spawn_local(async move {
                    for i in 0..10 {
                        let b = batch(1 + (i % 3), 0, -1, -1, 90_000 + 1000 * t as usize);
                        s.append(QueueId(t % 3), b, Durability::Written)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        s.flush().await.unwrap();
        {
            let st = s.inner.state.borrow();
            let a = &st.appender;
            assert!(
                a.zero_copy_chunks > 0 && a.reused_chunks > 0,
                "{} zero-copy chunks, {} reused",
                a.zero_copy_chunks,
                a.reused_chunks
            );
        }
        let before = [0, 1, 2].map(|q| s.end_offset(QueueId(q)));
        drop(s);
        io.crash(CrashMode::DropUnsynced);
        let s = open(&c, &io).await;
        let mut n = 0;
        for q in 0..3 {
            n += read_all(&s, QueueId(q)).await.len();
            assert_eq!(s.end_offset(QueueId(q)), before[q as usize]);
        }
        assert_eq!(n, 80);
    });
}

/// With written-extent preference, rolls use segments created ahead of time and zero-filled
/// while the log was idle; the data is the same after a crash, and recovery deletes a
/// half-prepared file.
#[test]
fn prepared_segments_are_used_and_cleaned_up() {
    run(|| async {
        let io = MemStorage::new();
        io.set_prefers_written_extents(true);
        let c = small_cfg("/pp");
        let s = open(&c, &io).await;
        for i in 0..40u32 {
            let b = batch(1, 0, -1, -1, 9_000 + i as usize);
            s.append(QueueId(i % 2), b, Durability::Written)
                .await
                .unwrap();
            // Leave the log quiet until a started preparation is zero-filled, as a broker
            // between bursts would (zeroing writes are only issued once the log is quiet).
            for _ in 0..30_000 {
                let ready = !s.inner.prep_started.get()
                    || s.inner
                        .next_segment
                        .borrow()
                        .as_ref()
                        .is_some_and(|p| p.fully_written());
                if ready {
                    break;
                }
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        s.flush().await.unwrap();
        assert!(
            s.inner.prepared_rolls.get() >= 2,
            "{} prepared rolls",
            s.inner.prepared_rolls.get()
        );
        // The log is idle between these appends, so the zeroing finished before the rolls.
        assert!(
            s.inner.zeroed_rolls.get() >= 2,
            "{} zeroed rolls",
            s.inner.zeroed_rolls.get()
        );
        let before = (
            read_all(&s, QueueId(0)).await,
            read_all(&s, QueueId(1)).await,
        );
        drop(s);
        io.crash(CrashMode::DropUnsynced);
        let s = open(&c, &io).await;
        assert_eq!(
            (
                read_all(&s, QueueId(0)).await,
                read_all(&s, QueueId(1)).await
            ),
            before
        );
        let preps = io
            .paths()
            .iter()
            .filter(|p| p.to_string_lossy().ends_with(".prep"))
            .count();
        assert_eq!(preps, 0, "recovery removes prepared files");
    });
}

#[test]
fn wait_for_data_wakes_a_tail_reader() {
    run(|| async {
        let io = MemStorage::new();
        let s = open(&cfg("/w"), &io).await;
        let q = QueueId(5);
        let reader = {
            let s = s.clone();
            glommio::spawn_local(async move {
                s.wait_for_data(q, Offset(0)).await.unwrap();
                s.read(q, Offset(0), 1 << 20).await.unwrap().batches.len()
            })
        };
        glommio::executor().yield_task_queue_now().await;
        s.append(q, batch(1, 0, -1, -1, 10), Durability::Written)
            .await
            .unwrap();
        let deadline = async {
            // Well below the 10 s maintenance period, whose checkpoint would also wake it.
            glommio::timer::sleep(std::time::Duration::from_secs(3)).await;
            panic!("the waiting reader was never woken");
        };
        assert_eq!(futures_lite::future::or(reader, deadline).await, 1);
        // Already readable: resolves at once.
        s.wait_for_data(q, Offset(0)).await.unwrap();
        s.delete_queue(q).await.unwrap();
        assert!(matches!(
            s.wait_for_data(q, Offset(1)).await,
            Err(EngineError::QueueDeleted(_))
        ));
    });
}

/// Thousands of queues: one index file for their one segment, written at the checkpoint,
/// loaded at reopen.
#[test]
fn many_queues_checkpoint_and_reload() {
    run(|| async {
        let io = MemStorage::new();
        let c = ShardConfig {
            segment_size_bytes: 4 << 20,
            ..cfg("/m")
        };
        let s = open(&c, &io).await;
        const QUEUES: u32 = 3000;
        let tasks: Vec<_> = (0..50u32)
            .map(|t| {
                let s = s.clone();
                glommio::spawn_local(async move {
                    for q in (t..QUEUES).step_by(50) {
                        let b = batch(1 + (q % 3) as usize, 0, -1, -1, 20);
                        s.append(QueueId(q), b, Durability::Written).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        s.close().await.unwrap();
        drop(s);
        let idx = io
            .paths()
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "idx"))
            .count();
        assert_eq!(idx, 1, "one index file per segment, not per queue");
        let s = open(&c, &io).await;
        assert_eq!(s.inner.rebuilt_segments, 0);
        assert_eq!(s.queues().len(), QUEUES as usize);
        for q in [0, 1, 2, 1499, 2999] {
            assert_eq!(s.end_offset(QueueId(q)), Offset(1 + u64::from(q % 3)));
            assert_eq!(
                read_all(&s, QueueId(q)).await,
                vec![(0, 1 + (q % 3) as i32)]
            );
        }
    });
}

/// [`MemStorage`] whose directory syncs wait while `closed` is set.
struct GatedDirSync {
    mem: MemStorage,
    closed: Rc<std::cell::Cell<bool>>,
}

impl Storage for GatedDirSync {
    fn alloc(&self, len: usize) -> crate::io::IoBuf {
        self.mem.alloc(len)
    }
    fn open(
        &self,
        path: std::path::PathBuf,
        kind: crate::io::FileKind,
        create: bool,
    ) -> crate::io::IoFuture<'_, Rc<dyn crate::io::StorageFile>> {
        self.mem.open(path, kind, create)
    }
    fn remove(&self, path: std::path::PathBuf) -> crate::io::IoFuture<'_, ()> {
        self.mem.remove(path)
    }
    fn rename(
        &self,
        from: std::path::PathBuf,
        to: std::path::PathBuf,
    ) -> crate::io::IoFuture<'_, ()> {
        self.mem.rename(from, to)
    }
    fn sync_dir(&self, dir: std::path::PathBuf) -> crate::io::IoFuture<'_, ()> {
        let closed = self.closed.clone();
        Box::pin(async move {
            while closed.get() {
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
            self.mem.sync_dir(dir).await
        })
    }
    fn create_dir_all(&self, dir: std::path::PathBuf) -> crate::io::IoFuture<'_, ()> {
        self.mem.create_dir_all(dir)
    }
    fn list_dir(&self, dir: std::path::PathBuf) -> crate::io::IoFuture<'_, Vec<String>> {
        self.mem.list_dir(dir)
    }
    fn modified_ms(&self, path: std::path::PathBuf) -> crate::io::IoFuture<'_, i64> {
        self.mem.modified_ms(path)
    }
}

/// A roll does not hold appends until the new segment's name is durable, but no Durable
/// append into that segment resolves before it is (the directory sync runs in the
/// background and every later fdatasync waits for it).
#[test]
fn durable_acks_wait_for_the_directory_sync_of_a_new_segment() {
    run(|| async {
        let closed = Rc::new(std::cell::Cell::new(false));
        let io = GatedDirSync {
            mem: MemStorage::new(),
            closed: closed.clone(),
        };
        let s = Shard::open_with_io(small_cfg("/ds"), Rc::new(io) as Rc<dyn Storage>)
            .await
            .expect("open");
        closed.set(true);
        // Written appends go on across rolls while every directory sync is held.
        let mut appended = 0;
        while s.inner.state.borrow().segments.map.len() < 3 {
            s.append(QueueId(0), batch(1, 0, -1, -1, 9_000), Durability::Written)
                .await
                .expect("written append while the directory sync is pending");
            appended += 1;
            assert!(appended < 100, "the log never rolled");
        }
        let end = s.inner.state.borrow().appender.next_pos();
        let shard = s.clone();
        let durable = glommio::spawn_local(async move {
            shard
                .append(QueueId(0), batch(1, 0, -1, -1, 100), Durability::Durable)
                .await
        });
        for _ in 0..20 {
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            assert!(
                s.durable_log_pos() < end,
                "data of a segment whose name is not durable counted as durable"
            );
        }
        closed.set(false);
        durable
            .await
            .expect("durable append after the directory sync");
        assert!(s.durable_log_pos() > end);
    });
}

/// Every file the shard opens is closed explicitly by the time `close` returns (rolls,
/// prepared segments, retention deletions, checkpoints, index files, a reopen's recovery).
/// Catches: a file left to its drop (on glommio, a descriptor that leaks when the executor
/// ends, tests/descriptors.rs) on any of those paths, including buffered files, which have no
/// synchronous close on drop.
#[test]
fn close_closes_every_file_the_shard_opened() {
    run(|| async {
        let io = MemStorage::new();
        io.set_prefers_written_extents(true);
        let c = ShardConfig {
            retention_bytes: Some(256 << 10),
            ..small_cfg("/closes")
        };
        for life in 0..3 {
            let s = open(&c, &io).await;
            for i in 0..40 {
                let ack = match i % 4 {
                    0 => Durability::Durable,
                    _ => Durability::Written,
                };
                s.append(QueueId(i % 3), batch(4, 0, -1, -1, 1500), ack)
                    .await
                    .expect("append");
            }
            s.enforce_retention().await.expect("retention");
            s.close().await.expect("close");
            drop(s);
            assert_eq!(io.unclosed_drops(), 0, "life {life}");
        }
        let first = crate::log::segment_path(std::path::Path::new("/closes"), 0);
        assert!(
            !io.paths().contains(&first),
            "retention deleted the first segment: {:?}",
            io.paths()
        );
    });
}
