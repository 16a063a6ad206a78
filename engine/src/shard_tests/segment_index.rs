//! Segment index files: rebuilt when damaged, written once per segment per checkpoint, removed
//! with their segment by retention, and never trusted once their segment is gone.

use super::{batch, open, run, small_cfg};
use crate::format::checkpoint::VERSION;
use crate::io::{CrashMode, FileKind, IoBuf, MemStorage, Storage};
use crate::{Durability, EngineError, Offset, QueueId, Shard, ShardConfig};
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Everything a client can observe of one queue.
#[derive(Debug, PartialEq)]
struct QueueView {
    queue: u32,
    end: Offset,
    log_start: Offset,
    batches: Vec<Bytes>,
    /// Offset found for a few timestamps (the time index is rebuilt with the entries).
    by_time: Vec<Option<(Offset, i64)>>,
}

async fn view(s: &Shard, queues: u32) -> Vec<QueueView> {
    let mut out = Vec::new();
    for q in 0..queues {
        let id = QueueId(q);
        let mut batches = Vec::new();
        let mut from = s.log_start_offset(id);
        loop {
            let r = s.read(id, from, 1 << 20).await.expect("read");
            let Some(last) = r.batches.last() else { break };
            let h = ringmq_wire::record_batch::validate(last).expect("stored CRC");
            from = Offset(h.last_offset() as u64 + 1);
            batches.extend(r.batches);
        }
        let mut by_time = Vec::new();
        for ts in [0, 55, 160, 10_000] {
            by_time.push(s.offset_for_timestamp(id, ts).await.expect("time lookup"));
        }
        out.push(QueueView {
            queue: q,
            end: s.end_offset(id),
            log_start: s.log_start_offset(id),
            batches,
            by_time,
        });
    }
    out
}

fn idx_path(dir: &str, start: u64) -> PathBuf {
    Path::new(dir).join(format!("{start:020}.idx"))
}

fn starts(io: &MemStorage, ext: &str) -> Vec<u64> {
    let mut v: Vec<u64> = io
        .paths()
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .filter_map(|p| p.file_stem()?.to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

async fn write_file(io: &MemStorage, path: &Path, bytes: &[u8]) {
    let f = io
        .open(path.to_path_buf(), FileKind::Buffered, true)
        .await
        .unwrap();
    f.write_at(IoBuf::Heap(bytes.to_vec()), 0).await.unwrap();
    f.truncate(bytes.len() as u64).await.unwrap();
    f.fdatasync().await.unwrap();
}

const QUEUES: u32 = 5;

/// Five queues, batches of assorted sizes and timestamps over at least four 64 KiB segments.
async fn fill(s: &Shard) {
    for i in 0..60u32 {
        let q = QueueId(i * 7 % QUEUES);
        let b = batch(
            1 + (i % 3) as usize,
            i64::from(i) * 5,
            -1,
            -1,
            800 + 37 * i as usize,
        );
        s.append(q, b, Durability::Written).await.unwrap();
    }
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    FlipBit,
    Missing,
    Short,
}

/// A damaged segment index costs a scan of that segment, never the open, and yields the same
/// state; the rebuilt file is rewritten (byte for byte what it was), so the next open loads it.
#[test]
fn damaged_segment_index_is_rebuilt_with_the_same_state() {
    for damage in [Damage::FlipBit, Damage::Missing, Damage::Short] {
        run(move || async move {
            let io = MemStorage::new();
            let dir = "/rb";
            let c = small_cfg(dir);
            let s = open(&c, &io).await;
            fill(&s).await;
            s.close().await.unwrap();
            drop(s);
            assert!(starts(&io, "log").len() >= 4, "{:?}", starts(&io, "log"));
            let s = open(&c, &io).await;
            assert_eq!(s.inner.rebuilt_segments, 0);
            let before = view(&s, QUEUES).await;
            s.close().await.unwrap();
            drop(s);
            // A middle segment: its queues have entries before and after it.
            let victim = idx_path(dir, 64 << 10);
            let original = io.contents(&victim).expect("index file of segment 1");
            assert!(original.len() >= 3 * 48, "{damage:?}");
            match damage {
                Damage::FlipBit => assert!(io.flip_bit(&victim, 100, 2)),
                Damage::Missing => io.remove(victim.clone()).await.unwrap(),
                Damage::Short => write_file(&io, &victim, &original[..original.len() - 48]).await,
            }
            let s = open(&c, &io).await;
            assert_eq!(s.inner.rebuilt_segments, 1, "{damage:?}");
            assert_eq!(view(&s, QUEUES).await, before, "{damage:?}");
            let rewritten = io.contents(&victim).expect("rewritten");
            assert_eq!(rewritten[..original.len()], original[..], "{damage:?}");
            drop(s);
            io.crash(CrashMode::DropUnsynced);
            let s = open(&c, &io).await;
            assert_eq!(
                s.inner.rebuilt_segments, 0,
                "{damage:?}: rewrite was durable"
            );
            assert_eq!(view(&s, QUEUES).await, before, "{damage:?}");
        });
    }
}

/// A checkpoint after 1,000 queues were written costs one fdatasync per segment index file
/// touched (one here) plus the checkpoint's own, not one per queue.
#[test]
fn checkpoint_fsyncs_scale_with_segments_not_queues() {
    run(|| async {
        let io = MemStorage::new();
        let c = super::cfg("/fs");
        let s = open(&c, &io).await;
        for round in 0..2 {
            let tasks: Vec<_> = (0..20u32)
                .map(|t| {
                    let s = s.clone();
                    glommio::spawn_local(async move {
                        for q in (t..1000).step_by(20) {
                            let b = batch(1, 0, -1, -1, 30);
                            s.append(QueueId(q), b, Durability::Written).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
            s.flush().await.unwrap();
            assert_eq!(starts(&io, "log"), vec![0], "all in one segment");
            let before = io.fsync_count();
            s.inner.checkpoint().await.unwrap();
            let syncs = io.fsync_count() - before;
            assert_eq!(
                syncs, 2,
                "round {round}: one segment index file + the checkpoint, got {syncs}"
            );
        }
        assert_eq!(starts(&io, "idx"), vec![0]);
        let len = io.contents(&idx_path("/fs", 0)).unwrap().len();
        assert_eq!(len, 2000 * 48);
    });
}

/// Retention deletes a segment's index file with its log. A crash between the two deletions
/// leaves an orphan index: recovery must not trust it (its batches are gone) and removes it;
/// the queues' log starts are where retention moved them, although the checkpoint on disk was
/// written before retention trimmed them.
#[test]
fn retention_removes_index_files_and_survives_a_crash_between_deletions() {
    run(|| async {
        let io = MemStorage::new();
        let dir = "/rt";
        let c = ShardConfig {
            retention_bytes: Some(3 * (64 << 10)),
            ..small_cfg(dir)
        };
        let s = open(&c, &io).await;
        fill(&s).await;
        s.flush().await.unwrap();
        s.inner.checkpoint().await.unwrap();
        let logs = starts(&io, "log");
        let idx_before: Vec<(u64, Vec<u8>)> = starts(&io, "idx")
            .into_iter()
            .map(|st| (st, io.contents(&idx_path(dir, st)).unwrap()))
            .collect();
        assert!(idx_before.len() >= 4, "{idx_before:?}");
        s.enforce_retention().await.unwrap();
        let kept = starts(&io, "log");
        assert!(kept.len() < logs.len(), "retention deleted nothing");
        assert_eq!(
            starts(&io, "idx"),
            kept.iter()
                .copied()
                .filter(|k| idx_before.iter().any(|(st, _)| st == k))
                .collect::<Vec<_>>(),
            "index files of deleted segments are gone, the others stay"
        );
        let after = view(&s, QUEUES).await;
        assert!(after.iter().any(|q| q.log_start.0 > 0), "{after:?}");
        // Crash between the deletions of the first deleted segment: its index file is back.
        drop(s);
        let (orphan, bytes) = &idx_before[0];
        assert!(!kept.contains(orphan));
        write_file(&io, &idx_path(dir, *orphan), bytes).await;
        io.crash(CrashMode::DropUnsynced);
        let s = open(&c, &io).await;
        assert!(
            io.contents(&idx_path(dir, *orphan)).is_none(),
            "orphan removed"
        );
        assert_eq!(view(&s, QUEUES).await, after);
        assert_eq!(s.inner.rebuilt_segments, 0);
    });
}

/// A directory written by format version 1 is refused with a typed error, untouched.
#[test]
fn a_version_1_checkpoint_is_refused() {
    run(|| async {
        let io = MemStorage::new();
        let c = small_cfg("/v1");
        let s = open(&c, &io).await;
        s.append(QueueId(0), batch(1, 0, -1, -1, 10), Durability::Durable)
            .await
            .unwrap();
        s.close().await.unwrap();
        drop(s);
        let path = Path::new("/v1/checkpoint");
        let mut b = io.contents(path).unwrap();
        b[4..6].copy_from_slice(&1u16.to_le_bytes());
        let end = b.len() - 4;
        let crc = crc32c::crc32c(&b[..end]);
        b[end..].copy_from_slice(&crc.to_le_bytes());
        write_file(&io, path, &b).await;
        let files = io.paths();
        let e = Shard::open_with_io(c, Rc::new(io.process_view()) as Rc<dyn Storage>)
            .await
            .err();
        assert!(
            matches!(
                e,
                Some(EngineError::UnsupportedFormat {
                    found: 1,
                    supported: VERSION,
                    ..
                })
            ),
            "{e:?}"
        );
        assert_eq!(io.paths(), files, "nothing changed");
        assert_eq!(io.contents(path), Some(b));
    });
}
