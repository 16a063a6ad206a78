//! The engine on real glommio DMA files in a temporary directory.

use super::{batch, cfg, read_all, real_cfg, run};
use crate::{Durability, Offset, QueueId, Shard, ShardConfig};

#[test]
fn real_files_round_trip_and_recover() {
    run(|| async {
        let tmp = tempfile::tempdir().unwrap();
        let c = real_cfg(tmp.path());
        let s = Shard::open(c.clone()).await.unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let s = s.clone();
                glommio::spawn_local(async move {
                    s.append(
                        QueueId(i % 5),
                        batch(3, i as i64, -1, -1, 300 + i as usize * 40),
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
        let mut before = Vec::new();
        for q in 0..5u32 {
            before.push(read_all(&s, QueueId(q)).await);
        }
        drop(s); // no close: recovery scans from the open-time checkpoint
        let s = Shard::open(c).await.unwrap();
        for q in 0..5u32 {
            assert_eq!(read_all(&s, QueueId(q)).await, before[q as usize]);
            assert_eq!(s.end_offset(QueueId(q)), Offset(120));
        }
        s.close().await.unwrap();
    });
}

/// Sanity throughput on real files (the real benchmark lives in `benches/`). Run with
/// `cargo test -p ringmq-engine --lib throughput -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, prints figures"]
fn throughput_sanity() {
    run(|| async {
        let tmp = tempfile::tempdir().unwrap();
        let c = ShardConfig {
            segment_size_bytes: 256 << 20,
            ..cfg(tmp.path().to_str().unwrap())
        };
        let s = Shard::open(c.clone()).await.unwrap();
        for (label, tasks, per_task, fill, durability) in [
            (
                "64 KiB batches, Written, 16 tasks",
                16usize,
                128usize,
                64 << 10,
                Durability::Written,
            ),
            (
                "64 KiB batches, Written, 128 tasks",
                128,
                32,
                64 << 10,
                Durability::Written,
            ),
            (
                "64 KiB batches, Durable, 128 tasks",
                128,
                32,
                64 << 10,
                Durability::Durable,
            ),
            (
                "1 KiB batches, Durable, 64 tasks",
                64,
                100,
                1 << 10,
                Durability::Durable,
            ),
        ] {
            let b = batch(1, 0, -1, -1, fill);
            let t0 = std::time::Instant::now();
            let hs: Vec<_> = (0..tasks)
                .map(|i| {
                    let (s, b) = (s.clone(), b.clone());
                    glommio::spawn_local(async move {
                        for _ in 0..per_task {
                            s.append(QueueId(i as u32 % 8), b.clone(), durability)
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            for h in hs {
                h.await;
            }
            s.flush().await.unwrap();
            let secs = t0.elapsed().as_secs_f64();
            let n = tasks * per_task;
            eprintln!(
                "{label}: {n} appends, {:.0} appends/s, {:.0} MB/s",
                n as f64 / secs,
                (n * b.len()) as f64 / secs / 1e6
            );
        }
        {
            let st = s.inner.state.borrow();
            eprintln!(
                "whole chunks written zero-copy: {}, chunk buffers reused: {}",
                st.appender.zero_copy_chunks, st.appender.reused_chunks
            );
        }
        // Read everything back (older data comes from disk with O_DIRECT, the tail from cache).
        let t0 = std::time::Instant::now();
        let mut bytes = 0usize;
        for q in 0..8u32 {
            let mut from = Offset(0);
            loop {
                let r = s.read(QueueId(q), from, 1 << 20).await.unwrap();
                if r.batches.is_empty() {
                    break;
                }
                bytes += r.batches.iter().map(|b| b.len()).sum::<usize>();
                let last = r
                    .batches
                    .last()
                    .map(|b| ringmq_wire::record_batch::validate(b).unwrap());
                from = Offset(last.map_or(from.0, |h| h.last_offset() as u64 + 1));
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "read back {} MB in {:.2} s: {:.0} MB/s",
            bytes / 1_000_000,
            secs,
            bytes as f64 / secs / 1e6
        );
        // Recovery without a checkpoint after the data: a full scan of the log.
        s.flush().await.unwrap();
        let ends: Vec<_> = (0..8u32).map(|q| s.end_offset(QueueId(q))).collect();
        drop(s);
        // Without its checkpoint the shard rebuilds everything from a full scan of the log.
        std::fs::remove_file(c.dir.join("checkpoint")).unwrap();
        let t0 = std::time::Instant::now();
        let s = Shard::open(c).await.unwrap();
        let secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "full recovery scan of {} MB: {:.2} s",
            bytes / 1_000_000,
            secs
        );
        assert_eq!(
            (0..8u32)
                .map(|q| s.end_offset(QueueId(q)))
                .collect::<Vec<_>>(),
            ends
        );
        s.close().await.unwrap();
    });
}

/// On real files: a flipped bit in the 8th of 10 entries (no checkpoint after them) ends the
/// log there; reopening again agrees; appends continue at the recovered end and survive.
#[test]
fn real_files_corrupt_entry_truncates_the_log_there() {
    run(|| async {
        let tmp = tempfile::tempdir().unwrap();
        let c = real_cfg(tmp.path());
        let b = batch(2, 0, -1, -1, 500);
        let entry_len = (crate::format::entry::HEADER_LEN + b.len()) as u64;
        let s = Shard::open(c.clone()).await.unwrap();
        for _ in 0..10 {
            s.append(QueueId(1), b.clone(), Durability::Durable)
                .await
                .unwrap();
        }
        drop(s); // no close: the last checkpoint is the one written at open, at position 0
        let seg = tmp.path().join("00000000000000000000.log");
        {
            use std::io::{Read, Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&seg)
                .unwrap();
            let at = 7 * entry_len + 100;
            let mut byte = [0u8; 1];
            f.seek(SeekFrom::Start(at)).unwrap();
            f.read_exact(&mut byte).unwrap();
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&[byte[0] ^ 0x20]).unwrap();
            f.sync_all().unwrap();
        }
        let s = Shard::open(c.clone()).await.unwrap();
        assert_eq!(s.end_offset(QueueId(1)), Offset(14));
        assert_eq!(read_all(&s, QueueId(1)).await.len(), 7);
        drop(s);
        let s = Shard::open(c.clone()).await.unwrap();
        assert_eq!(
            s.end_offset(QueueId(1)),
            Offset(14),
            "second recovery agrees"
        );
        let a = s
            .append(QueueId(1), b.clone(), Durability::Durable)
            .await
            .unwrap();
        assert_eq!(a.base_offset, Offset(14));
        drop(s);
        let s = Shard::open(c).await.unwrap();
        assert_eq!(read_all(&s, QueueId(1)).await.len(), 8);
        s.close().await.unwrap();
    });
}

#[test]
fn a_second_opener_of_a_locked_directory_is_refused() {
    run(|| async {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(tmp.path().to_str().unwrap());
        let first = Shard::open(c.clone()).await.unwrap();
        match Shard::open(c.clone()).await {
            Err(crate::EngineError::Locked { path }) => {
                assert_eq!(path, tmp.path().join(crate::shard::LOCK_FILE))
            }
            other => panic!(
                "second open must fail with Locked, got {:?}",
                other.map(|_| ())
            ),
        }
        first.close().await.unwrap();
        drop(first);
        let again = Shard::open(c).await.unwrap();
        again.close().await.unwrap();
    });
}

#[test]
fn a_relative_directory_works() {
    run(|| async {
        let tmp = tempfile::tempdir_in(".").unwrap();
        let rel = tmp.path().file_name().unwrap().to_str().unwrap().to_owned();
        let s = Shard::open(cfg(&rel)).await.unwrap();
        s.append(QueueId(0), batch(1, 0, -1, -1, 10), Durability::Durable)
            .await
            .unwrap();
        s.close().await.unwrap();
    });
}
