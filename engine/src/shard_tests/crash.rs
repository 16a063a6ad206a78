//! Crashes (power loss on the in-memory double), injected I/O faults and on-disk damage.

use super::{batch, cfg, open, read_all, run, small_cfg};
use crate::io::{CrashMode, MemStorage, Storage};
use crate::{Durability, EngineError, Offset, QueueId, Shard};
use std::rc::Rc;

#[test]
fn crash_keeps_durable_batches_and_drops_unsynced_ones() {
    run(|| async {
        let io = MemStorage::new();
        let c = cfg("/c");
        let s = open(&c, &io).await;
        s.append(QueueId(1), batch(2, 0, -1, -1, 10), Durability::Durable)
            .await
            .unwrap();
        s.append(QueueId(1), batch(3, 0, -1, -1, 10), Durability::Written)
            .await
            .unwrap();
        drop(s);
        io.crash(CrashMode::DropUnsynced);
        let s = open(&c, &io).await;
        assert_eq!(read_all(&s, QueueId(1)).await, vec![(0, 2)]);
        // Offsets continue from the recovered end.
        let a = s
            .append(QueueId(1), batch(1, 0, -1, -1, 10), Durability::Durable)
            .await
            .unwrap();
        assert_eq!(a.base_offset, Offset(2));
        drop(s);
        io.crash(CrashMode::DropUnsynced);
        let s = open(&c, &io).await;
        assert_eq!(read_all(&s, QueueId(1)).await, vec![(0, 2), (2, 1)]);
    });
}

/// After any crash the recovered log is a prefix of what was appended that contains every
/// durable batch; recovering twice gives the same state; stale bytes left beyond a truncated
/// tail never resurface after new appends (epochs).
#[test]
fn torn_and_reordered_tails_recover_to_a_prefix() {
    let modes: Vec<CrashMode> = [0u64, 1, 100, 4096, 5000, 9000, 20_000]
        .into_iter()
        .map(|bytes| CrashMode::KeepPrefix { bytes })
        .chain(
            [0b10u64, 0b101, 0b110, u64::MAX - 1]
                .into_iter()
                .map(|mask| CrashMode::KeepWrites { mask }),
        )
        .collect();
    for mode in modes {
        run(move || async move {
            let io = MemStorage::new();
            let c = cfg("/t");
            let s = open(&c, &io).await;
            let q = QueueId(9);
            s.append(q, batch(1, 0, -1, -1, 50), Durability::Durable)
                .await
                .unwrap();
            for i in 0..12 {
                // Each Written append completes its own write (some partial), so a crash can
                // keep any subset of them.
                s.append(
                    q,
                    batch(1 + i % 3, 0, -1, -1, 900 + 37 * i),
                    Durability::Written,
                )
                .await
                .unwrap();
            }
            let all = read_all(&s, q).await;
            drop(s);
            io.crash(mode);
            let s = open(&c, &io).await;
            let got = read_all(&s, q).await;
            assert!(
                !got.is_empty() && all.starts_with(&got),
                "{mode:?}: {got:?} is not a prefix of {all:?}"
            );
            drop(s);
            let s = open(&c, &io).await;
            assert_eq!(
                read_all(&s, q).await,
                got,
                "{mode:?}: second recovery differs"
            );
            // New appends after a truncation, then a crash that keeps only them.
            let a = s
                .append(q, batch(1, 0, -1, -1, 10), Durability::Durable)
                .await
                .unwrap();
            assert_eq!(
                a.base_offset.0 as i64,
                got.last().map_or(0, |(b, n)| b + i64::from(*n))
            );
            drop(s);
            io.crash(CrashMode::DropUnsynced);
            let s = open(&c, &io).await;
            let mut expect = got.clone();
            expect.push((a.base_offset.0 as i64, 1));
            assert_eq!(
                read_all(&s, q).await,
                expect,
                "{mode:?}: stale data resurfaced"
            );
        });
    }
}

#[test]
fn failed_write_poisons_until_reopened() {
    run(|| async {
        let io = MemStorage::new();
        let c = cfg("/p");
        let s = open(&c, &io).await;
        s.append(QueueId(1), batch(1, 0, -1, -1, 10), Durability::Durable)
            .await
            .unwrap();
        io.fail_write_in(0);
        let e = s
            .append(QueueId(1), batch(1, 0, -1, -1, 10), Durability::Written)
            .await;
        assert!(matches!(e, Err(EngineError::Poisoned { .. })), "{e:?}");
        let e = s
            .append(QueueId(1), batch(1, 0, -1, -1, 10), Durability::Written)
            .await;
        assert!(
            matches!(e, Err(EngineError::Poisoned { .. })),
            "later appends fail too: {e:?}"
        );
        assert!(s.flush().await.is_err());
        drop(s);
        let s = open(&c, &io).await;
        assert_eq!(read_all(&s, QueueId(1)).await, vec![(0, 1)]);
        s.append(QueueId(1), batch(1, 0, -1, -1, 10), Durability::Durable)
            .await
            .unwrap();
    });
}

#[test]
fn failed_fdatasync_poisons_and_is_not_retried() {
    run(|| async {
        let io = MemStorage::new();
        let s = open(&cfg("/f"), &io).await;
        io.fail_fsync_in(0);
        let before = io.fsync_count();
        let e = s
            .append(QueueId(1), batch(1, 0, -1, -1, 10), Durability::Durable)
            .await;
        assert!(matches!(e, Err(EngineError::Poisoned { .. })), "{e:?}");
        assert_eq!(
            io.fsync_count(),
            before,
            "no fdatasync succeeded after the failure"
        );
        assert!(matches!(
            s.append(QueueId(1), batch(1, 0, -1, -1, 10), Durability::Durable)
                .await,
            Err(EngineError::Poisoned { .. })
        ));
    });
}

#[test]
fn index_files_are_loaded_or_rebuilt_when_damaged() {
    run(|| async {
        let io = MemStorage::new();
        let c = small_cfg("/i");
        let s = open(&c, &io).await;
        for i in 0..30 {
            s.append(
                QueueId(i % 2),
                batch(2, i as i64 * 10, -1, -1, 3000),
                Durability::Written,
            )
            .await
            .unwrap();
        }
        s.close().await.unwrap();
        drop(s);
        let s = open(&c, &io).await;
        let q0 = read_all(&s, QueueId(0)).await;
        assert_eq!(q0.len(), 15);
        drop(s);
        assert!(io.flip_bit(std::path::Path::new("/i/00000000000000000000.idx"), 45, 3));
        let s = open(&c, &io).await;
        assert_eq!(
            s.inner.rebuilt_segments, 1,
            "the damaged segment index was rebuilt"
        );
        assert_eq!(
            read_all(&s, QueueId(0)).await,
            q0,
            "index rebuilt from the log"
        );
        assert_eq!(
            s.offset_for_timestamp(QueueId(0), 101)
                .await
                .unwrap()
                .map(|x| x.0),
            Some(Offset(10))
        );
    });
}

#[test]
fn corrupt_checkpoint_is_reported_not_ignored() {
    run(|| async {
        let io = MemStorage::new();
        let c = cfg("/k");
        open(&c, &io).await.close().await.unwrap();
        assert!(io.flip_bit(std::path::Path::new("/k/checkpoint"), 10, 0));
        let e = Shard::open_with_io(c, Rc::new(io.process_view()) as Rc<dyn Storage>)
            .await
            .err();
        assert!(matches!(e, Some(EngineError::Corrupt { .. })), "{e:?}");
    });
}

/// The case epochs exist for: a crash keeps a later write (C) but not an earlier one (B); the
/// next run truncates at B and writes D with B's exact length, ending on a block boundary, so
/// C's old header sits intact right where the entry after D would be, with the right offset.
/// It must not come back.
#[test]
fn stale_entry_after_a_rewritten_tail_does_not_resurface() {
    run(|| async {
        let io = MemStorage::new();
        let c = cfg("/e");
        let q = QueueId(1);
        let a = batch(1, 0, -1, -1, 100);
        // B's entry ends exactly on a block boundary (entry header is 64 bytes).
        let target = 3 * 4096 - 64 - (64 + a.len());
        let fill = (0..target)
            .find(|&f| batch(1, 0, -1, -1, f).len() == target)
            .expect("some fill fits");
        let s = open(&c, &io).await;
        s.append(q, a, Durability::Durable).await.unwrap(); // A
        s.append(q, batch(1, 0, -1, -1, fill), Durability::Written)
            .await
            .unwrap(); // B
        s.append(q, batch(3, 0, -1, -1, 10), Durability::Written)
            .await
            .unwrap(); // C
        drop(s);
        io.crash(CrashMode::KeepWrites { mask: 0b10 }); // B's write lost, C's landed
        let s = open(&c, &io).await;
        assert_eq!(read_all(&s, q).await, vec![(0, 1)]);
        s.append(q, batch(1, 0, -1, -1, fill), Durability::Durable)
            .await
            .unwrap(); // D, as long as B
        drop(s);
        io.crash(CrashMode::DropUnsynced);
        let s = open(&c, &io).await;
        assert_eq!(
            read_all(&s, q).await,
            vec![(0, 1), (1, 1)],
            "C came back from the dead"
        );
        assert_eq!(s.end_offset(q), Offset(2));
    });
}

/// A damaged index file makes recovery rebuild it from the log; if the log itself is damaged
/// before the checkpoint (acknowledged, durable data), opening fails instead of truncating.
#[test]
fn damage_before_the_checkpoint_is_refused_not_truncated() {
    run(|| async {
        let io = MemStorage::new();
        let c = small_cfg("/dd");
        let s = open(&c, &io).await;
        for _ in 0..10 {
            s.append(QueueId(0), batch(1, 0, -1, -1, 300), Durability::Written)
                .await
                .unwrap();
        }
        s.close().await.unwrap();
        drop(s);
        assert!(io.flip_bit(std::path::Path::new("/dd/00000000000000000000.idx"), 3, 1));
        assert!(io.flip_bit(std::path::Path::new("/dd/00000000000000000000.log"), 200, 4));
        let e = Shard::open_with_io(c, Rc::new(io.process_view()) as Rc<dyn Storage>)
            .await
            .err();
        assert!(matches!(e, Some(EngineError::Corrupt { .. })), "{e:?}");
        let logs = io
            .paths()
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .count();
        assert_eq!(logs, 1, "nothing was deleted");
    });
}
