//! Zero-filling the active segment ahead of the log (`log::zero_ahead`).

use super::{batch, cfg, open, read_all, real_cfg, run, wait_until};
use crate::io::{align_up, CrashMode, MemStorage};
use crate::{Durability, QueueId, Shard, ShardConfig};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// A quiet shard zero-fills its active segment from the block after the head to the end, and
/// the appends that follow land intact, before and after a crash.
#[test]
fn a_quiet_log_is_zero_filled_ahead_and_appends_follow_intact() {
    run(|| async {
        let io = MemStorage::new();
        io.set_prefers_written_extents(true);
        let c = cfg("/za");
        let s = open(&c, &io).await;
        s.append(QueueId(0), batch(2, 0, -1, -1, 3_000), Durability::Durable)
            .await
            .unwrap();
        let head = s.inner.state.borrow().appender.next_pos();
        wait_until("the active segment is zero-filled", || s.zero_ahead().1).await;
        let (bytes, _) = s.zero_ahead();
        assert_eq!(
            bytes,
            c.segment_size_bytes - align_up(head),
            "zeroes exactly from the block after the head to the segment end"
        );
        let zeros = io
            .write_log()
            .into_iter()
            .filter(|(p, pos, _)| p.to_string_lossy().ends_with(".log") && *pos >= align_up(head))
            .map(|(_, _, len)| len as u64)
            .sum::<u64>();
        assert_eq!(zeros, bytes, "the zero writes seen by the storage");
        for i in 0..20 {
            s.append(
                QueueId(i % 2),
                batch(3, i as i64, -1, -1, 2_000 + 500 * i as usize),
                Durability::Durable,
            )
            .await
            .unwrap();
        }
        let before = (
            read_all(&s, QueueId(0)).await,
            read_all(&s, QueueId(1)).await,
        );
        assert_eq!(before.0.len(), 11);
        assert_eq!(s.zero_ahead().0, bytes, "nothing is zeroed twice");
        drop(s);
        io.crash(CrashMode::DropUnsynced);
        let s = open(&c, &io).await;
        let after = (
            read_all(&s, QueueId(0)).await,
            read_all(&s, QueueId(1)).await,
        );
        assert_eq!(after, before);
    });
}

/// While a zero write is in flight, group commit issues no write that reaches into its range:
/// an append's write landing first would be overwritten by the zeros. (Without the hold in
/// `Inner::pump` the append's write starts while the zero write is still gated.)
#[test]
fn no_append_write_starts_while_a_zero_write_of_its_blocks_is_in_flight() {
    run(|| async {
        let io = MemStorage::new();
        io.set_prefers_written_extents(true);
        let c = cfg("/zh");
        let s = open(&c, &io).await;
        s.append(QueueId(0), batch(1, 0, -1, -1, 1_000), Durability::Durable)
            .await
            .unwrap();
        let zero_from = align_up(s.inner.state.borrow().appender.next_pos());
        io.gate_writes(true);
        wait_until("the zero write is in flight", || {
            io.write_log().last().is_some_and(|(p, pos, _)| {
                p.to_string_lossy().ends_with(".log") && *pos == zero_from
            })
        })
        .await;
        let writes = io.write_log().len();
        // Big enough to cross into the block the zero write starts at.
        let append = {
            let s = s.clone();
            glommio::spawn_local(async move {
                s.append(QueueId(0), batch(4, 1, -1, -1, 6_000), Durability::Durable)
                    .await
                    .unwrap()
            })
        };
        for _ in 0..50 {
            glommio::yield_if_needed().await;
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(
            io.write_log().len(),
            writes,
            "a write was issued while the zero write of its blocks was in flight: {:?}",
            &io.write_log()[writes..]
        );
        io.gate_writes(false);
        append.await;
        let before = read_all(&s, QueueId(0)).await;
        assert_eq!(before, vec![(0, 1), (1, 4)]);
        drop(s);
        io.crash(CrashMode::DropUnsynced);
        let s = open(&c, &io).await;
        assert_eq!(read_all(&s, QueueId(0)).await, before);
    });
}

/// Turned off in the configuration, nothing is zero-filled however quiet the log is.
#[test]
fn zero_ahead_off_writes_no_zeros() {
    run(|| async {
        let io = MemStorage::new();
        io.set_prefers_written_extents(true);
        let c = ShardConfig {
            zero_ahead: false,
            ..cfg("/zo")
        };
        let s = open(&c, &io).await;
        s.append(QueueId(0), batch(1, 0, -1, -1, 1_000), Durability::Durable)
            .await
            .unwrap();
        let writes = io.write_log().len();
        // Well past the quiet period (a sleep is the point here: nothing must happen).
        glommio::timer::sleep(4 * crate::log::zero_ahead::ZERO_AHEAD_AFTER_QUIET).await;
        assert_eq!(io.write_log().len(), writes);
        assert_eq!(s.zero_ahead(), (0, false));
    });
}

/// On real files: a fresh shard zero-fills its segment, takes Durable appends on the written
/// blocks, and recovers them; closing while the zeroing runs leaves no write in flight.
#[test]
fn real_files_zero_ahead_then_append_and_recover() {
    run(|| async {
        let tmp = tempfile::tempdir().unwrap();
        let c = real_cfg(tmp.path());
        let s = Shard::open(c.clone()).await.unwrap();
        wait_until("the active segment is zero-filled", || s.zero_ahead().1).await;
        for i in 0..50 {
            s.append(
                QueueId(i % 3),
                batch(2, i as i64, -1, -1, 700 + 90 * i as usize),
                Durability::Durable,
            )
            .await
            .unwrap();
        }
        let before: Vec<_> = [
            read_all(&s, QueueId(0)).await,
            read_all(&s, QueueId(1)).await,
            read_all(&s, QueueId(2)).await,
        ]
        .into();
        drop(s);
        let s = Shard::open(c.clone()).await.unwrap();
        for q in 0..3u32 {
            assert_eq!(read_all(&s, QueueId(q)).await, before[q as usize]);
        }
        // Reopened: the zeroing starts again from the head; close while it may run.
        glommio::timer::sleep(crate::log::zero_ahead::ZERO_AHEAD_AFTER_QUIET).await;
        s.close().await.unwrap();
        drop(s);
        let s = Shard::open(c).await.unwrap();
        for q in 0..3u32 {
            assert_eq!(read_all(&s, QueueId(q)).await, before[q as usize]);
        }
        s.close().await.unwrap();
    });
}

/// On ext4, XFS or btrfs, a reopened shard learns from the file
/// (`StorageFile::unwritten_from`) that its segment is zero-filled already and writes no zeros
/// again. (Skipped elsewhere: there is no hint.)
#[test]
fn a_reopened_shard_does_not_zero_fill_its_segment_again() {
    run(|| async {
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::fs::File::open(tmp.path()).unwrap();
        if !crate::io::glommio_impl::seek_hole_knows_unwritten(dir.as_raw_fd()) {
            eprintln!(
                "skipped: {} reports no unwritten extents",
                tmp.path().display()
            );
            return;
        }
        let c = real_cfg(tmp.path());
        let s = Shard::open(c.clone()).await.unwrap();
        s.append(QueueId(0), batch(2, 0, -1, -1, 3_000), Durability::Durable)
            .await
            .unwrap();
        wait_until("the active segment is zero-filled", || s.zero_ahead().1).await;
        assert!(s.zero_ahead().0 > 0);
        s.close().await.unwrap();
        drop(s);
        let s = Shard::open(c).await.unwrap();
        assert_eq!(s.zero_ahead(), (0, true), "the file says it is written");
        glommio::timer::sleep(3 * crate::log::zero_ahead::ZERO_AHEAD_AFTER_QUIET).await;
        assert_eq!(s.zero_ahead().0, 0, "zeros written again");
        assert_eq!(read_all(&s, QueueId(0)).await, vec![(0, 2)]);
        s.close().await.unwrap();
    });
}
