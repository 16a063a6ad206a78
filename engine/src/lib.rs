//! ringmq's per-core storage engine.
//!
//! One [`Shard`] per core owns that core's queues (topic partitions), its commit log and its
//! per-queue indexes. All queues of a shard append to ONE commit log (RocketMQ's design), so the
//! disk sees sequential writes however many partitions there are; a compact per-queue index maps
//! offsets to log positions.
//!
//! ```text
//!  append(queue, batch) ──► validate CRC ──► assign offsets ──► copy into aligned buffer
//!                                                                   │
//!            commit log segments ◄── O_DIRECT writes (several in flight) ◄─┘
//!                    │                       │
//!         one fdatasync per group ──► wake Durable waiters    wake Written waiters
//! ```
//!
//! Layout: [`format`](mod@format) (pure on-disk encodings, see `engine/FORMAT.md`), [`io`] (the storage
//! seam: glommio DMA files or an in-memory fault-injecting double), `log` (segments, appender,
//! reader, recovery, retention, segment roll/preparation, zero-fill ahead of the head while the
//! log is quiet, recycling of the segments retention removes), `index` (per-queue index), `commit`
//! (group commit), `checkpoint`, `cache` (tail cache), `producers` (idempotent-producer
//! table), `shard` (the owner of it all).
//!
//! The executor that runs a shard must be built with `io_memory` under `RLIMIT_MEMLOCK`:
//! use [`recommended_io_memory_bytes`] (see `kernel-notes/io-uring-memlock.md`).

mod cache;
mod checkpoint;
mod commit;
#[cfg(feature = "commit-trace")]
mod commit_trace;
mod error;
pub mod format;
mod index;
pub mod io;
mod log;
mod producers;
mod shard;
#[cfg(test)]
mod shard_tests;

pub use error::EngineError;
pub use io::ReadPriority;
pub use log::sendfile::SENDFILE_TAIL_MARGIN_BYTES;
pub use ringmq_wire::part::{FileRange, Part};
pub use shard::{Shard, LOCK_FILE};

use std::path::PathBuf;

/// One queue (a topic partition or an internal queue) of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId(pub u32);

/// A per-queue record offset, dense from 0 (Kafka offsets are i64 on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(pub u64);

/// A byte position in a shard's commit log (segment start + offset within the segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPos(pub u64);

/// How far an append must get before it resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Durability {
    /// Resolves when the write covering the batch completed (Kafka acks=1). Lost on power
    /// failure unless a later fdatasync covered it.
    Written,
    /// Resolves only after an fdatasync covering the batch completed (Kafka acks=all).
    Durable,
}

/// Configuration of one shard. See [`ShardConfig::default`] for the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardConfig {
    /// Directory holding the shard's segments, indexes and checkpoint (created if absent).
    pub dir: PathBuf,
    /// Size of each commit-log segment file, preallocated. Multiple of 4096, at least
    /// `max_batch_bytes + 2 * 4096`. Default 1 GiB.
    pub segment_size_bytes: u64,
    /// Bytes of recent batches kept in memory so tail readers never touch disk. Default 64 MiB.
    pub tail_cache_bytes: u64,
    /// When set, a background task makes `Written` data durable within this many milliseconds.
    /// Default `None`.
    pub flush_interval_ms: Option<u64>,
    /// Whole segments whose newest entry is older than this are deleted. Default `None`.
    pub retention_ms: Option<u64>,
    /// Total commit-log bytes kept; the oldest whole segments go first. Default `None`.
    pub retention_bytes: Option<u64>,
    /// Larger batches are refused with `BatchTooLarge`. Default 8 MiB; at most
    /// [`format::entry::MAX_PAYLOAD_BYTES`].
    pub max_batch_bytes: u32,
    /// What the executor builder should pass to `LocalExecutorBuilder::io_memory`; defaults to
    /// [`recommended_io_memory_bytes`]. The shard cannot set it itself.
    pub io_memory_bytes: usize,
    /// How batches no longer in the tail cache are read. Default [`BacklogRead::Readahead`].
    pub backlog_read: BacklogRead,
    /// I/O scheduling class of those reads where the engine issues them from blocking-pool
    /// threads (`Readahead`), so that they yield the disk to the log's writes
    /// (`io::ReadPriority`). Default [`ReadPriority::Idle`].
    pub backlog_read_priority: ReadPriority,
    /// Zero-fill the active segment ahead of the write head once the log has been quiet for a
    /// moment, so later appends overwrite written blocks (cheaper writes and fdatasyncs on
    /// ext4; `log::zero_ahead`). Only on storage that prefers written extents. Default true.
    pub zero_ahead: bool,
    /// Keep segments that retention removes as spare files and reuse them as later segments,
    /// so that appends overwrite written blocks even under constant load (`log::recycle`).
    /// Only on storage that prefers written extents; at most two spares (two segments of disk
    /// beyond the retention limit). Default true.
    pub recycle_segments: bool,
    /// Queues whose retained batches retention never removes: it stops at the segment holding
    /// the first batch at or after such a queue's log start, which only
    /// [`Shard::advance_log_start`] moves (the broker's internal queues, which it compacts).
    /// Default none.
    pub pinned_queues: Vec<QueueId>,
}

/// How [`Shard::read`] and [`Shard::read_sendable`] read batches that are not in the tail
/// cache (older data). `Readahead` and `Direct` verify every entry's header and CRC before
/// handing out its batch, and hand out `Bytes` slices of their read buffers (no copy of the
/// record bytes, except for a batch that straddles two readahead chunks). See
/// `kernel-notes/o-direct-reads.md` and `kernel-notes/sendfile-and-splice.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BacklogRead {
    /// O_DIRECT reads of the log in aligned 1 MiB chunks, kept in a small per-shard cache
    /// (48 MiB) with a bounded number of reads in flight, sliced into batches. Queues whose
    /// batches lie near each other in the log share the chunks. The default (see `Sendfile`).
    #[default]
    Readahead,
    /// One O_DIRECT read per run of nearby entries of the requested queue, sized by the fetch
    /// (for interleaved queues that is about one read per batch). Kept to be measured against.
    Direct,
    /// [`Shard::read_sendable`] returns batches in sealed log blocks (more than
    /// `SENDFILE_TAIL_MARGIN_BYTES` below the written position) as [`Part::File`] ranges of a
    /// buffered read-only descriptor of their segment, for the caller to `sendfile` through
    /// the page cache; nothing is read by the engine and **the entry CRC is not checked** on
    /// this path (as in Kafka: consumers check each batch's own CRC-32C). Batches nearer the
    /// tail, and every batch [`Shard::read`] returns, are read as in `Readahead`. Not the
    /// default: two quiet catch-up runs disagreed (6.9 GB backlog: 1.4x `Readahead`'s MB/s;
    /// 10 GiB backlog: 0.73x, and same-core appends delayed more), BENCHMARKS.md, Issue 5.
    Sendfile,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            dir: PathBuf::from("ringmq-data/shard-0"),
            segment_size_bytes: 1 << 30,
            tail_cache_bytes: 64 << 20,
            flush_interval_ms: None,
            retention_ms: None,
            retention_bytes: None,
            max_batch_bytes: 8 << 20,
            io_memory_bytes: recommended_io_memory_bytes(),
            backlog_read: BacklogRead::default(),
            backlog_read_priority: ReadPriority::default(),
            zero_ahead: true,
            recycle_segments: true,
            pinned_queues: Vec::new(),
        }
    }
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: Offset,
    pub last_offset: Offset,
    /// The shard's clock when the batch was appended (for LogAppendTime topics).
    pub log_append_time_ms: i64,
}

/// The answer to [`Shard::read`] (`B` = `Bytes`) and [`Shard::read_sendable`] (`B` =
/// [`Part`]: bytes, or a file range of a sealed segment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult<B = bytes::Bytes> {
    /// Whole stored RecordBatch v2 byte strings, in offset order, base offsets assigned.
    pub batches: Vec<B>,
    /// Next offset after the data visible to readers (written data; high watermark).
    pub end_offset: Offset,
    pub log_start_offset: Offset,
}

/// One batch an idempotent producer appended, as recorded from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub epoch: i16,
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: Offset,
    pub last_offset: Offset,
}

/// Bytes of io_uring registered buffer memory an executor should use.
///
/// Where `RLIMIT_MEMLOCK` binds: half of it, at most [`IO_MEMORY_LIMITED_MAX_BYTES`] (glommio's
/// default of 10 MiB exceeds a typical 8 MiB limit, and then every DMA read fails with
/// EOPNOTSUPP). Where it does not (the process holds `CAP_IPC_LOCK`, or the limit is
/// unlimited): [`IO_MEMORY_UNLIMITED_BYTES`], enough for every staging chunk a saturated shard
/// keeps in flight and staged. A write from a buffer outside the registered memory is pinned
/// page by page on every submission: 1 MiB writes, 8 in flight, ran at 0.66 of the registered
/// rate here, and the engine's 256 KiB appends at ~0.8 (kernel-notes/o-direct-and-page-cache.md,
/// benches/README.md).
/// Every executor running a [`Shard`] must be built with
/// `LocalExecutorBuilder::io_memory(recommended_io_memory_bytes())` (or, with several
/// executors in one process, [`io_memory_per_executor`]); the memory is pinned (resident) for
/// the executor's life.
pub fn recommended_io_memory_bytes() -> usize {
    io_memory_per_executor(1)
}

/// [`recommended_io_memory_bytes`] for each of `executors` executors of one process: where
/// `RLIMIT_MEMLOCK` binds, the process's share split between them (the limit is per process,
/// and an executor whose registration goes over it fails every DMA read); where it does not,
/// each gets [`IO_MEMORY_UNLIMITED_BYTES`] for its own shard.
pub fn io_memory_per_executor(executors: usize) -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other memory is touched.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if rc != 0 {
        return 0;
    }
    if lim.rlim_cur == libc::RLIM_INFINITY || holds_cap_ipc_lock() {
        return IO_MEMORY_UNLIMITED_BYTES;
    }
    let process = (lim.rlim_cur / 2).min(IO_MEMORY_LIMITED_MAX_BYTES as u64);
    // Registered buffers come in whole pages.
    ((process / executors.max(1) as u64) & !4095) as usize
}

/// Most registered I/O memory [`recommended_io_memory_bytes`] suggests under a binding
/// `RLIMIT_MEMLOCK`.
pub const IO_MEMORY_LIMITED_MAX_BYTES: usize = 4 << 20;

/// Registered I/O memory [`recommended_io_memory_bytes`] suggests when `RLIMIT_MEMLOCK` does
/// not apply: the staging chunks of 64 closed-loop 256 KiB appenders (16 MiB outstanding) plus
/// the writes in flight (`MAX_WRITES_IN_FLIGHT` x `WRITE_CHUNK_BYTES` = 8 MiB), rounded up.
/// Measured (256 KiB appends, 64 queues; benches/README.md, session 4): 16 MiB and 64 MiB
/// bracket it; 64 MiB adds ~10% to Durable for twice the pinned memory.
pub const IO_MEMORY_UNLIMITED_BYTES: usize = 32 << 20;

/// Whether the process's effective capabilities include `CAP_IPC_LOCK`, which exempts it from
/// `RLIMIT_MEMLOCK` (kernel-notes/io-uring-memlock.md). False when /proc cannot tell.
fn holds_cap_ipc_lock() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| status_has_cap_ipc_lock(&s))
}

/// Whether a /proc/<pid>/status text's `CapEff` mask holds `CAP_IPC_LOCK` (bit 14).
fn status_has_cap_ipc_lock(status: &str) -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_ipc_lock_is_read_from_the_effective_mask() {
        let status = |eff: &str| format!("Name:\tx\nCapInh:\t0000000000004000\nCapEff:\t{eff}\n");
        assert!(status_has_cap_ipc_lock(&status("000001fffeffffff")));
        assert!(status_has_cap_ipc_lock(&status("0000000000004000")));
        assert!(!status_has_cap_ipc_lock(&status("0000000000003fff")));
        assert!(!status_has_cap_ipc_lock(&status("000001fffeffbfff")));
        assert!(!status_has_cap_ipc_lock("CapEff:\tnot-hex\n"));
        assert!(!status_has_cap_ipc_lock("Name:\tx\n"));
    }

    #[test]
    fn io_memory_fits_under_memlock() {
        let n = recommended_io_memory_bytes() as u64;
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) },
            0
        );
        let four = io_memory_per_executor(4) as u64;
        if holds_cap_ipc_lock() || lim.rlim_cur == libc::RLIM_INFINITY {
            assert_eq!(n, IO_MEMORY_UNLIMITED_BYTES as u64, "memlock does not bind");
            assert_eq!(four, n, "each executor has its own budget");
        } else {
            assert!(
                n <= lim.rlim_cur && n <= IO_MEMORY_LIMITED_MAX_BYTES as u64,
                "{n} vs limit {}",
                lim.rlim_cur
            );
            assert!(
                4 * four <= n,
                "four executors share one process's budget: {four}"
            );
        }
        assert_eq!(n % 4096, 0);
        assert_eq!(four % 4096, 0);
    }
}
