//! The bare durability baseline: one 4 KiB O_DIRECT write followed by one fdatasync, timed
//! together, one at a time. This is what a Durable append would cost with no batching at all;
//! group commit exists to amortise it (kernel-notes/fdatasync-and-group-commit.md).

use std::io;
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use glommio::io::DmaFile;
use hdrhistogram::Histogram;

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

/// Times `rounds` group commits of `appends` 4 KiB appends each: the appends' bytes go out as
/// one write, then one fdatasync covers them all, as the engine's group commit does. Returns
/// the per-round latency in microseconds; the per-append cost is that divided by `appends`.
pub async fn group_commit_latency(
    dir: &Path,
    appends: usize,
    rounds: usize,
) -> io::Result<Histogram<u64>> {
    let path = dir.join(format!("group-{appends}-{}.dat", std::process::id()));
    let file = DmaFile::create(&path).await?;
    let round_bytes = appends * BARE_WRITE_BYTES;
    file.pre_allocate(((rounds + WARMUP_PAIRS) * round_bytes) as u64, false)
        .await?;
    let mut buf = file.alloc_dma_buffer(round_bytes);
    crate::raw::fill_pattern(buf.as_bytes_mut(), 11);
    let buf = Rc::new(buf);
    let mut hist = latency_histogram();
    for i in 0..rounds + WARMUP_PAIRS {
        let started = Instant::now();
        file.write_rc_at(buf.clone(), (i * round_bytes) as u64)
            .await?;
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
