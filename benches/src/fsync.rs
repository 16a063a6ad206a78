//! The bare durability baseline: one 4 KiB O_DIRECT write followed by one fdatasync, timed
//! together, one at a time. This is what a Durable append would cost with no batching at all;
//! group commit exists to amortise it (kernel-notes/fdatasync-and-group-commit.md).

use std::io;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::io::DmaFile;
use hdrhistogram::Histogram;

use crate::raw::{prepare_layout, FileLayout, Throughput};
use crate::stats::latency_histogram;

/// Bytes per write of the bare baseline.
pub const BARE_WRITE_BYTES: usize = 4096;

/// Untimed write+fdatasync pairs before measuring (first writes allocate journal state).
pub const WARMUP_PAIRS: usize = 16;

/// Where each 4 KiB write lands; each costs the journal differently on ext4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPattern {
    /// Sequential blocks of a file preallocated with fallocate: each fdatasync also commits
    /// the unwritten-to-written extent conversion (a journal commit). This is what appending
    /// to a preallocated segment costs, so the engine's Durable latency is judged against it.
    AppendPreallocated,
    /// The same already-written block again and again: data only, no metadata to commit.
    Overwrite,
    /// Sequential blocks past the end of the file: each fdatasync also commits the new size.
    AppendGrowing,
}

impl FsyncPattern {
    pub const ALL: [FsyncPattern; 3] = [
        FsyncPattern::AppendPreallocated,
        FsyncPattern::Overwrite,
        FsyncPattern::AppendGrowing,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FsyncPattern::AppendPreallocated => "append-preallocated",
            FsyncPattern::Overwrite => "overwrite-same-block",
            FsyncPattern::AppendGrowing => "append-growing",
        }
    }
}

/// Times `pairs` write+fdatasync pairs (microseconds) in a fresh file in `dir`, removed after.
/// Must run inside a glommio executor.
pub async fn write_fdatasync_latency(
    dir: &Path,
    pattern: FsyncPattern,
    pairs: usize,
) -> io::Result<Histogram<u64>> {
    let path = dir.join(format!(
        "fsync-{}-{}.dat",
        pattern.name(),
        std::process::id()
    ));
    let file = DmaFile::create(&path).await?;
    let total = ((pairs + WARMUP_PAIRS) * BARE_WRITE_BYTES) as u64;
    match pattern {
        FsyncPattern::AppendPreallocated => file.pre_allocate(total, false).await?,
        FsyncPattern::Overwrite => {
            let zero = file.alloc_dma_buffer(BARE_WRITE_BYTES);
            file.write_at(zero, 0).await?;
            file.fdatasync().await?;
        }
        FsyncPattern::AppendGrowing => {}
    }
    let mut buf = file.alloc_dma_buffer(BARE_WRITE_BYTES);
    crate::raw::fill_pattern(buf.as_bytes_mut(), 7);
    let buf = Rc::new(buf);
    let mut hist = latency_histogram();
    for i in 0..pairs + WARMUP_PAIRS {
        let pos = match pattern {
            FsyncPattern::Overwrite => 0,
            _ => (i * BARE_WRITE_BYTES) as u64,
        };
        let started = Instant::now();
        file.write_rc_at(buf.clone(), pos).await?;
        file.fdatasync().await?;
        let us = started.elapsed().as_micros() as u64;
        if i >= WARMUP_PAIRS {
            hist.saturating_record(us.max(1));
        }
    }
    file.close().await?;
    let _ = std::fs::remove_file(&path);
    Ok(hist)
}

/// Times `rounds` group commits of `round_bytes` each: the round's bytes go out as ONE write,
/// then one fdatasync covers them, one round at a time, into a file of `layout`. Returns the
/// per-round latency in microseconds and the bytes per second of the timed rounds.
///
/// This is the simplest possible group commit: no copies, no index, no coordination, every
/// append of a round ready at its start. With `round_bytes` = what a closed loop of appenders
/// keeps outstanding, it is that loop's floor on this disk: each appender waits one round, so
/// the round's percentiles are the appenders' (the engine bench prints its latency against it).
pub async fn group_commit_latency(
    dir: &Path,
    round_bytes: usize,
    rounds: usize,
    layout: FileLayout,
) -> io::Result<(Histogram<u64>, Throughput)> {
    let round_bytes = round_bytes.next_multiple_of(BARE_WRITE_BYTES);
    let path = dir.join(format!("group-{round_bytes}-{}.dat", std::process::id()));
    let file = DmaFile::create(&path).await?;
    prepare_layout(
        &file,
        layout,
        ((rounds + WARMUP_PAIRS) * round_bytes) as u64,
    )
    .await?;
    let mut buf = file.alloc_dma_buffer(round_bytes);
    crate::raw::fill_pattern(buf.as_bytes_mut(), 11);
    let buf = Rc::new(buf);
    let mut hist = latency_histogram();
    let mut timed = Duration::ZERO;
    for i in 0..rounds + WARMUP_PAIRS {
        let started = Instant::now();
        file.write_rc_at(buf.clone(), (i * round_bytes) as u64)
            .await?;
        file.fdatasync().await?;
        let took = started.elapsed();
        if i >= WARMUP_PAIRS {
            hist.saturating_record((took.as_micros() as u64).max(1));
            timed += took;
        }
    }
    file.close().await?;
    let _ = std::fs::remove_file(&path);
    let done = Throughput {
        bytes: (rounds * round_bytes) as u64,
        elapsed: timed,
    };
    Ok((hist, done))
}

/// What [`overlapping_write_fdatasync`] measured.
#[derive(Debug)]
pub struct Overlap {
    /// Latency of each write+fdatasync pair (us).
    pub latency: Histogram<u64>,
    pub pairs_per_s: f64,
    /// fdatasyncs that completed after one started later than them had completed.
    pub out_of_order: u64,
    /// For each fdatasync that completed before an earlier-started one: how long until every
    /// earlier-started one had completed too (us), i.e. what counting only the completed
    /// prefix of syncs costs it.
    pub prefix_wait: Histogram<u64>,
}

/// `writers` tasks each loop on a 4 KiB O_DIRECT write then an fdatasync, all on one
/// preallocated file, so up to `writers` fdatasyncs are in flight together (as with the
/// engine's pipelined group commit). Shows whether the kernel runs overlapping fdatasyncs in
/// parallel, serialises them, or merges their device flushes, and whether they complete in
/// the order they started.
pub async fn overlapping_write_fdatasync(
    dir: &Path,
    writers: usize,
    pairs_per_writer: usize,
) -> io::Result<Overlap> {
    use std::cell::{Cell, RefCell};
    let path = dir.join(format!("overlap-{writers}-{}.dat", std::process::id()));
    let file = Rc::new(DmaFile::create(&path).await?);
    let total = ((pairs_per_writer + WARMUP_PAIRS) * writers * BARE_WRITE_BYTES) as u64;
    file.pre_allocate(total, false).await?;
    let next_pos = Rc::new(Cell::new(0u64));
    let next_sync = Rc::new(Cell::new(0u64));
    let newest_done = Rc::new(Cell::new(None::<u64>));
    let out_of_order = Rc::new(Cell::new(0u64));
    let hist = Rc::new(RefCell::new(latency_histogram()));
    // Completion time of each fdatasync, by start sequence number.
    let done_at = Rc::new(RefCell::new(Vec::<Option<Instant>>::new()));
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (file, next_pos, next_sync) = (file.clone(), next_pos.clone(), next_sync.clone());
            let (newest_done, out_of_order, hist, done_at) = (
                newest_done.clone(),
                out_of_order.clone(),
                hist.clone(),
                done_at.clone(),
            );
            glommio::spawn_local(async move {
                let mut buf = file.alloc_dma_buffer(BARE_WRITE_BYTES);
                crate::raw::fill_pattern(buf.as_bytes_mut(), w as u64);
                let buf = Rc::new(buf);
                for i in 0..pairs_per_writer + WARMUP_PAIRS {
                    let t0 = Instant::now();
                    let pos = next_pos.get();
                    next_pos.set(pos + BARE_WRITE_BYTES as u64);
                    file.write_rc_at(buf.clone(), pos).await?;
                    let seq = next_sync.get();
                    next_sync.set(seq + 1);
                    file.fdatasync().await?;
                    {
                        let mut d = done_at.borrow_mut();
                        if d.len() <= seq as usize {
                            d.resize(seq as usize + 1, None);
                        }
                        d[seq as usize] = Some(Instant::now());
                    }
                    if newest_done.get().is_some_and(|n| n > seq) {
                        out_of_order.set(out_of_order.get() + 1);
                    }
                    newest_done.set(Some(newest_done.get().map_or(seq, |n| n.max(seq))));
                    if i >= WARMUP_PAIRS {
                        let us = t0.elapsed().as_micros() as u64;
                        hist.borrow_mut().saturating_record(us.max(1));
                    }
                }
                Ok::<_, io::Error>(())
            })
        })
        .collect();
    let mut first_error = None;
    for t in tasks {
        if let Err(e) = t.await {
            first_error.get_or_insert(e);
        }
    }
    let elapsed = started.elapsed();
    drop(Rc::try_unwrap(file).map(|f| f.close()));
    let _ = std::fs::remove_file(&path);
    if let Some(e) = first_error {
        return Err(e);
    }
    // Walk completions in start order: a sync waits for the latest completion before it.
    let mut prefix_wait = latency_histogram();
    let mut latest: Option<Instant> = None;
    for t in done_at.borrow().iter().flatten() {
        match latest {
            Some(l) if l > *t => {
                prefix_wait.saturating_record(((l - *t).as_micros() as u64).max(1));
            }
            _ => latest = Some(*t),
        }
    }
    let latency = Rc::try_unwrap(hist)
        .map(RefCell::into_inner)
        .unwrap_or_else(|h| h.borrow().clone());
    Ok(Overlap {
        latency,
        pairs_per_s: ((pairs_per_writer + WARMUP_PAIRS) * writers) as f64
            / elapsed.as_secs_f64().max(1e-9),
        out_of_order: out_of_order.get(),
        prefix_wait,
    })
}
