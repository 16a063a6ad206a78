//! Readahead for backlog reads: the commit log is read in large aligned chunks, kept in a
//! small per-shard cache, and batches are handed out as zero-copy slices of those chunks.
//!
//! Why: the queues of a shard share one log, so one queue's batches are interleaved with the
//! others'. Read per batch (or per run of nearby batches), a catch-up consumer of 16 queues
//! costs one ~16 KiB O_DIRECT read per batch, which ran at 0.14–0.29 of loopback here; 1 MiB
//! reads sliced into fetches ran at 0.55–1.0 (`kernel-notes/o-direct-reads.md`). A chunk read
//! for one queue also holds the neighbouring batches of the other queues, which their fetches
//! then take from the cache.
//!
//! ```text
//!  segment file   |<- CHUNK_BYTES ->|<- CHUNK_BYTES ->|<- CHUNK_BYTES ->| ...   (2 MiB)
//!  entries        | hdr batch | hdr batch | hdr ba|tch | hdr batch |        (64-byte headers)
//!  a read         needs chunks k..=m, loads the missing ones (at most MAX_CHUNK_READS_IN_FLIGHT
//!                 per shard), then queues READAHEAD_CHUNKS beyond m for background reads
//!                 (on their own read slots: MAX_READAHEAD_IN_FLIGHT at a time while the log
//!                 writes, MAX_READAHEAD_IN_FLIGHT_IDLE while it does not)
//!  a chunk read   one 2 MiB request while the log is idle; while it writes, requests of
//!                 PIECE_BYTES_WHILE_WRITING into the same buffer, the rest at once when idle
//!  batches        slices of a chunk; a batch that straddles chunks is copied into one buffer
//! ```
//!
//! Invariants:
//! - Only bytes below the log's written position when the chunk was read are kept (a chunk
//!   of the active segment is trimmed there): those bytes never change until the shard is
//!   reopened (the tail block is rewritten, but with the same prefix), so a cached chunk is
//!   never stale. A read that needs bytes past a chunk's kept length reads the chunk again.
//! - Every entry handed out is checked as the direct path checks it (header matches the
//!   index, CRC-32C over header and payload) before it leaves the engine: a flipped bit in a
//!   chunk is `Corrupt`, never served.
//! - Memory: at most [`MAX_CACHED_CHUNKS`] chunks in the cache, [`MAX_CHUNK_READS_IN_FLIGHT`]
//!   demand reads and [`MAX_READAHEAD_IN_FLIGHT_IDLE`] readahead reads in flight; batches
//!   handed out keep their chunk alive until the caller drops them. A chunk is the storage's
//!   own read buffer (`StorageFile::read_shared`: no copy after the read), so a batch may
//!   be sent by another core.
//! - Disk queue: demand and readahead have separate read slots, so queued readahead never
//!   takes a slot a demand read needs (a read that needs a chunk already queued for
//!   readahead waits for that read). A readahead read starts only while fewer than
//!   [`MAX_READAHEAD_IN_FLIGHT`] are in flight, or fewer than
//!   [`MAX_READAHEAD_IN_FLIGHT_IDLE`] while the log is idle (no write or fdatasync in flight
//!   and none completed for [`LOG_QUIET_AFTER`], [`ChunkCache::log_writing`]). While the log
//!   writes, each chunk read asks the disk for at most [`PIECE_BYTES_WHILE_WRITING`] at a time
//!   (`StorageFile::read_shared`), so its writes queue behind at most
//!   `(MAX_CHUNK_READS_IN_FLIGHT + MAX_READAHEAD_IN_FLIGHT) x PIECE_BYTES_WHILE_WRITING` of
//!   the shard's reads (plus, once, the whole chunks a read started while the log was idle);
//!   at most [`MAX_LOADING_CHUNKS`] chunks are queued or being read.
//!
//! Not durable: a cache of bytes already in the log; empty after a restart.

use super::reader::{check_entry, EntryLoc};
use super::Segment;
use crate::commit::Event;
use crate::shard::Inner;
use crate::EngineError;
use bytes::{Bytes, BytesMut};
use glommio::sync::Semaphore;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Size of one readahead read (and cache unit): one transparent huge page, read into a
/// buffer of our own (`io::AlignedBuf`, huge-page backed), so the read reaches the disk as one
/// 2 MiB request. What decides this disk's rate is the size of its requests, not how many are
/// in flight: 512 KiB requests (what a 1 MiB direct read into 4 KiB pages became) read at
/// 1.0-1.3 GB/s at any depth, 2 MiB ones at 2.0-3.0 GB/s with 1-2 in flight
/// (kernel-notes/o-direct-reads.md, "The disk's read ceiling"; 2026-11-22). 4 MiB chunks (one
/// 4 MiB request) read a catch-up 13% faster but doubled the appends' delay during it (p50
/// 8.3-10.5 against 4.8-4.9 ms; BENCHMARKS.md, Issue 5, session 5): the bytes in flight set it.
pub(crate) const CHUNK_BYTES: u64 = crate::io::HUGE_PAGE_BYTES as u64;
/// Chunks kept per shard (64 MiB): a fetch of 16 interleaved queues at 1 MiB each spans about
/// 16 MiB, which the next queue of the same fetch reads again, and readahead keeps two
/// fetches' span ([`READAHEAD_CHUNKS`]) beyond it.
pub(crate) const MAX_CACHED_CHUNKS: usize = (64 << 20) / CHUNK_BYTES as usize;
/// Demand chunk reads in flight per shard: bounds the disk queue a catch-up consumer builds
/// in front of the shard's own log writes. 4 demand + 2 readahead reads read the backlog at
/// 590-750 MB/s here but delayed appends on the same core by 15-90 ms at the median (and
/// by seconds in some runs); 1 + 1 read it at 480-550 MB/s with appends 5-7 ms late at the
/// median (direct reads: 350-400 MB/s, 3-5 ms). benches/scripts/consume.sh, phase c.
pub(crate) const MAX_CHUNK_READS_IN_FLIGHT: usize = 1;
/// Chunks queued for reading ahead of the last one a read needed: what two fetches of 16
/// interleaved queues at 1 MiB span (32 MiB), so the next fetch finds its chunks read while
/// this one is sent (a consumer has one fetch in flight; without this the disk idles while
/// it is sent). With 1 MiB chunks two fetches' span read no faster than one (session 4: the
/// disk was the limit); with 2 MiB chunks it read 1511-1583 against 1362-1511 MB/s (session 5,
/// 3 alternating pairs).
pub(crate) const READAHEAD_CHUNKS: u64 = (32 << 20) / CHUNK_BYTES;
/// Readahead reads in flight per shard while the log is writing ([`ChunkCache::log_writing`]):
/// their own slots, beside the demand reads' (see [`MAX_CHUNK_READS_IN_FLIGHT`]
/// for the trade-off against appends).
pub(crate) const MAX_READAHEAD_IN_FLIGHT: usize = 1;
/// Readahead reads in flight per shard while the log is idle (not
/// [`ChunkCache::log_writing`]): with nothing of the log's own to delay, the disk is kept busy. With 1 MiB reads
/// (two 512 KiB device requests of ~1 ms) one read in flight left the disk idle ~40% of a
/// catch-up and 4 were used (BENCHMARKS.md, Session 4 consume); a 2 MiB chunk read is one
/// request, and 1-2 of them in flight reach the disk's rate (session 5). A read already issued
/// when appends resume still delays them: at most this many, then one at a time again. With
/// the demand read, at most `(1 + 2) x 2 MiB` are in flight in front of the log's writes
/// (session 4: `(1 + 4) x 1 MiB`). No more than the storage's owned-read slots
/// (`io::MAX_OWNED_READS_IN_FLIGHT`) minus the demand read: a read past those is copied.
pub(crate) const MAX_READAHEAD_IN_FLIGHT_IDLE: usize = 2;
/// Most bytes one chunk read asks of the disk at a time while the log is writing (see
/// [`ChunkCache::log_writing`]): the chunk's buffer is filled by a sequence of reads of this
/// size (each one device request, issued back to back by the pool thread), so an append's
/// write or fdatasync queues behind at most this much per read in flight instead of a whole
/// 2 MiB chunk. Once the log is idle again, the rest of the chunk is read in one request.
/// Measured with appends (10k rec/s, acks=1) during a catch-up (BENCHMARKS.md, Issue 5,
/// session 5b): whole 2 MiB chunks delayed them p50 3.4-4.2 ms; 512 KiB pieces 0.9-1.6 ms,
/// 256 KiB 0.53-0.68 ms, 128 KiB 0.46-0.50 ms (alone ~0.27 ms), each halving costing the
/// catch-up more while appends run (128 against 256 KiB: -6%).
pub(crate) const PIECE_BYTES_WHILE_WRITING: usize = 256 << 10;
/// How long after the log's written position last moved it still counts as writing: between
/// two appends of a steady producer the log is briefly idle, and a whole chunk read started in
/// that gap would delay the next append by the full chunk. Costs a catch-up at most this long
/// at the piece size after appends stop. Chosen, not measured: a producer whose appends come
/// less than 100 ms apart counts as steady.
pub(crate) const LOG_QUIET_AFTER: std::time::Duration = std::time::Duration::from_millis(100);
/// Chunks marked as being read (queued or in flight) per shard, beyond which no more
/// readahead is queued: many catch-up readers at different positions cannot pile up reads.
pub(crate) const MAX_LOADING_CHUNKS: usize = (64 << 20) / CHUNK_BYTES as usize;
/// Chunks one read may need (32 MiB); a read of a sparse queue stops at the batch that would
/// need more (it returns fewer batches; the consumer fetches again).
pub(crate) const MAX_CHUNKS_PER_READ: usize = (32 << 20) / CHUNK_BYTES as usize;

const _: () = assert!(CHUNK_BYTES % crate::io::BLOCK_BYTES == 0);
const _: () = assert!(MAX_CHUNKS_PER_READ <= MAX_CACHED_CHUNKS);
// Zero slots would leave queued chunks unread and their readers waiting forever.
const _: () = assert!(MAX_CHUNK_READS_IN_FLIGHT > 0 && MAX_READAHEAD_IN_FLIGHT > 0);
const _: () = assert!(MAX_READAHEAD_IN_FLIGHT_IDLE >= MAX_READAHEAD_IN_FLIGHT);
// Every read the readahead may have in flight gets an owned buffer (no copy).
const _: () = assert!(
    MAX_CHUNK_READS_IN_FLIGHT + MAX_READAHEAD_IN_FLIGHT_IDLE
        <= crate::io::MAX_OWNED_READS_IN_FLIGHT
);

/// The per-shard chunk cache.
pub(crate) struct ChunkCache {
    state: RefCell<CacheState>,
    /// Read slots: one permit per demand chunk read in flight.
    reads: Rc<Semaphore>,
    /// Readahead reads in flight (see [`AheadSlot`]).
    ahead_running: Cell<usize>,
    /// Notified whenever a readahead read ends (a waiting one may start).
    pub(crate) ahead_done: Event,
    /// Chunk reads issued (tests and metrics).
    pub reads_issued: Cell<u64>,
    /// The log's written position when [`ChunkCache::log_writing`] last looked, and when it
    /// last saw it move.
    seen_written: Cell<Option<u64>>,
    moved_at: Cell<Option<Instant>>,
    /// The piece size chunk reads use now ([`ChunkCache::piece_bytes`]), set at every look at
    /// the log and read by the threads doing the reads before each piece.
    pace: Arc<AtomicUsize>,
}

#[derive(Default)]
struct CacheState {
    /// Chunk start (log position) -> kept bytes and the tick of its last use.
    ready: HashMap<u64, (Bytes, u64)>,
    /// Chunks being read; waiters are woken when the semaphore is closed.
    loading: HashMap<u64, Rc<Semaphore>>,
    tick: u64,
}

impl ChunkCache {
    pub fn new() -> ChunkCache {
        ChunkCache {
            state: RefCell::new(CacheState::default()),
            reads: Rc::new(Semaphore::new(MAX_CHUNK_READS_IN_FLIGHT as u64)),
            ahead_running: Cell::new(0),
            ahead_done: Event::default(),
            reads_issued: Cell::new(0),
            seen_written: Cell::new(None),
            moved_at: Cell::new(None),
            pace: Arc::new(AtomicUsize::new(CHUNK_BYTES as usize)),
        }
    }

    /// Whether the shard's log is writing: a write or fdatasync in flight, or its written
    /// position moved less than [`LOG_QUIET_AFTER`] ago (as far as this cache has looked: at
    /// every chunk read's start and every readahead slot taken, about once a millisecond
    /// during a catch-up). Sets the piece size the chunk reads in flight use from now on.
    pub(crate) fn log_writing(&self, inner: &Inner) -> bool {
        let now = Instant::now();
        let written = inner.gc.written();
        match self.seen_written.replace(Some(written)) {
            // The first look: nothing seen moving yet.
            None => {}
            Some(w) if w != written => self.moved_at.set(Some(now)),
            Some(_) => {}
        }
        let recent = self
            .moved_at
            .get()
            .is_some_and(|t| now.duration_since(t) < LOG_QUIET_AFTER);
        let writing = recent || !inner.gc.quiescent();
        let piece = if writing {
            PIECE_BYTES_WHILE_WRITING
        } else {
            CHUNK_BYTES as usize
        };
        self.pace.store(piece, Ordering::Relaxed);
        writing
    }

    /// The most bytes the next piece of a chunk read may ask of the disk now (looking at the
    /// log again), as the chunk reads in flight will see it.
    fn piece_bytes(&self, log: &Weak<Inner>) -> usize {
        match log.upgrade() {
            Some(inner) => {
                self.log_writing(&inner);
            }
            None => self.pace.store(CHUNK_BYTES as usize, Ordering::Relaxed),
        }
        self.pace.load(Ordering::Relaxed)
    }

    /// Chunks held now (tests).
    #[cfg(test)]
    pub fn cached_chunks(&self) -> usize {
        self.state.borrow().ready.len()
    }

    /// The kept bytes of the chunk at `start`, if they reach `need_end` (a log position).
    fn lookup(&self, start: u64, need_end: u64) -> Option<Bytes> {
        let mut st = self.state.borrow_mut();
        st.tick += 1;
        let tick = st.tick;
        let (bytes, used) = st.ready.get_mut(&start)?;
        if start + bytes.len() as u64 >= need_end {
            *used = tick;
            Some(bytes.clone())
        } else {
            None
        }
    }

    fn insert(&self, start: u64, bytes: Bytes) {
        let mut st = self.state.borrow_mut();
        st.tick += 1;
        let tick = st.tick;
        st.ready.insert(start, (bytes, tick));
        while st.ready.len() > MAX_CACHED_CHUNKS {
            // Few entries: a scan for the least recently used one is cheaper than an index.
            let oldest = st
                .ready
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => st.ready.remove(&k),
                None => break,
            };
        }
    }
}

/// Reads the given entries (all in `seg`, in log order, all below `written`, the log's
/// written position) through the chunk cache and returns their batches, verified. May return
/// fewer batches than asked (never none) when they would need more than
/// [`MAX_CHUNKS_PER_READ`] chunks.
pub(crate) async fn read_entries_ahead(
    cache: &Rc<ChunkCache>,
    log: &Weak<Inner>,
    seg: &Rc<Segment>,
    locs: &[EntryLoc],
    written: u64,
) -> Result<Vec<Bytes>, EngineError> {
    let limit = written.min(seg.end());
    // The chunks each entry needs, in order, deduplicated; entries past the per-read chunk
    // budget are left for the next read.
    let mut needed: Vec<u64> = Vec::new();
    let mut take = 0;
    for loc in locs {
        let (first, last) = chunk_span(seg, loc);
        // Entries come in log order: only chunks past the last one listed are new.
        let from = needed.last().map_or(first, |&l| first.max(l + CHUNK_BYTES));
        let new = if last >= from {
            ((last - from) / CHUNK_BYTES + 1) as usize
        } else {
            0
        };
        if take > 0 && needed.len() + new > MAX_CHUNKS_PER_READ {
            break;
        }
        needed.extend((from..=last).step_by(CHUNK_BYTES as usize));
        take += 1;
    }
    let locs = &locs[..take];
    // Cached chunks are taken at once; the missing ones load concurrently (the read slots
    // bound the disk queue).
    let mut chunks: HashMap<u64, Bytes> = HashMap::with_capacity(needed.len());
    let mut tasks = Vec::new();
    for &start in &needed {
        let need_end = (start + CHUNK_BYTES).min(limit);
        match cache.lookup(start, need_end) {
            Some(bytes) => {
                chunks.insert(start, bytes);
            }
            None => {
                let (cache, seg, log) = (cache.clone(), seg.clone(), log.clone());
                let task = glommio::spawn_local(async move {
                    get_chunk(&cache, &log, &seg, start, need_end, limit).await
                });
                tasks.push((start, task));
            }
        }
    }
    for (start, task) in tasks {
        chunks.insert(start, task.await?);
    }
    if let Some(&last) = needed.last() {
        read_ahead(cache, log, seg, last, limit);
    }
    // Verifying is a CRC over every byte (up to MAX_CHUNKS_PER_READ MiB): let the executor
    // run other tasks (appends of the same core) between entries when its time slice is up.
    let mut out = Vec::with_capacity(locs.len());
    for loc in locs {
        out.push(slice_entry(seg, &chunks, loc)?);
        glommio::yield_if_needed().await;
    }
    Ok(out)
}

/// First and last chunk start (log positions) holding the entry.
fn chunk_span(seg: &Segment, loc: &EntryLoc) -> (u64, u64) {
    let rel = loc.log_pos - seg.start;
    let end = rel + u64::from(loc.entry_len);
    let first = rel / CHUNK_BYTES * CHUNK_BYTES;
    let last = (end - 1) / CHUNK_BYTES * CHUNK_BYTES;
    (seg.start + first, seg.start + last)
}

/// The entry's batch, verified: a slice of its chunk, or a copy when it straddles chunks.
fn slice_entry(
    seg: &Segment,
    chunks: &HashMap<u64, Bytes>,
    loc: &EntryLoc,
) -> Result<Bytes, EngineError> {
    let (first, last) = chunk_span(seg, loc);
    let short = || EngineError::Corrupt {
        path: seg.path.clone(),
        offset: loc.log_pos - seg.start,
        reason: "segment shorter than the indexed entry",
    };
    let chunk = chunks.get(&first).ok_or_else(short)?;
    let at = (loc.log_pos - first) as usize;
    if first == last {
        return check_entry(seg, chunk, at, loc);
    }
    let mut whole = BytesMut::with_capacity(loc.entry_len as usize);
    let mut pos = loc.log_pos;
    let end = loc.log_pos + u64::from(loc.entry_len);
    let mut start = first;
    while pos < end {
        let c = chunks.get(&start).ok_or_else(short)?;
        let from = (pos - start) as usize;
        let to = ((end.min(start + CHUNK_BYTES) - start) as usize).min(c.len());
        if from >= to {
            return Err(short());
        }
        whole.extend_from_slice(&c[from..to]);
        pos = start + to as u64;
        start += CHUNK_BYTES;
    }
    check_entry(seg, &whole.freeze(), 0, loc)
}

/// The chunk at `start` with at least the bytes up to `need_end`: from the cache, from a
/// read already in flight, or read now (waiting for a read slot).
async fn get_chunk(
    cache: &Rc<ChunkCache>,
    log: &Weak<Inner>,
    seg: &Rc<Segment>,
    start: u64,
    need_end: u64,
    limit: u64,
) -> Result<Bytes, EngineError> {
    loop {
        if let Some(b) = cache.lookup(start, need_end) {
            return Ok(b);
        }
        let in_flight = cache.state.borrow().loading.get(&start).cloned();
        if let Some(done) = in_flight {
            // Closed when that read ends (either way); then look again.
            let _ = done.acquire(1).await;
            continue;
        }
        let guard = Loading::begin(cache, start);
        let permit = cache
            .reads
            .acquire_permit(1)
            .await
            .map_err(|_| EngineError::Closed)?;
        let got = load(cache, log, seg, start, limit).await;
        drop(permit);
        drop(guard);
        let bytes = got?;
        if start + bytes.len() as u64 >= need_end {
            return Ok(bytes);
        }
        // Shorter than needed only if the file is: the entry is not all there.
        return Err(EngineError::Corrupt {
            path: seg.path.clone(),
            offset: need_end.saturating_sub(seg.start),
            reason: "segment shorter than the indexed entry",
        });
    }
}

/// Reads the chunk at `start` (kept up to `limit`) and caches it.
async fn load(
    cache: &ChunkCache,
    log: &Weak<Inner>,
    seg: &Segment,
    start: u64,
    limit: u64,
) -> Result<Bytes, EngineError> {
    let rel = start - seg.start;
    let end = (start + CHUNK_BYTES).min(seg.end());
    let keep = limit.min(end).saturating_sub(start) as usize;
    let len = crate::io::align_up(keep as u64) as usize;
    cache.reads_issued.set(cache.reads_issued.get() + 1);
    // Owned memory where the storage can (no copy out of glommio's `!Send` buffer): the
    // batches sliced from it may be sent by other cores. In pieces while the log writes
    // (as the last look at the log, here or by any other read or readahead slot, found it).
    cache.piece_bytes(log);
    let pace = cache.pace.clone();
    let mut bytes = seg
        .file
        .read_shared(rel, len, Arc::new(move || pace.load(Ordering::Relaxed)))
        .await
        .map_err(|e| EngineError::io("read segment", &seg.path, e))?;
    bytes.truncate(keep);
    cache.insert(start, bytes.clone());
    Ok(bytes)
}

/// Queues reads of up to [`READAHEAD_CHUNKS`] whole chunks after `last` (those neither cached
/// nor being read), in the background on the readahead slots. A chunk is marked as being read
/// from the moment it is queued, so a demand read of it waits for it instead of reading it
/// twice.
fn read_ahead(cache: &Rc<ChunkCache>, log: &Weak<Inner>, seg: &Rc<Segment>, last: u64, limit: u64) {
    for i in 1..=READAHEAD_CHUNKS {
        let start = last + i * CHUNK_BYTES;
        let end = (start + CHUNK_BYTES).min(seg.end());
        if start >= seg.end() || end > limit {
            return;
        }
        {
            let st = cache.state.borrow();
            if st.loading.len() >= MAX_LOADING_CHUNKS {
                return;
            }
            if st.ready.contains_key(&start) || st.loading.contains_key(&start) {
                continue;
            }
        }
        let (cache, log, seg) = (cache.clone(), log.clone(), seg.clone());
        let guard = Loading::begin(&cache, start);
        glommio::spawn_local(async move {
            let Some(_slot) = AheadSlot::take(&cache, &log).await else {
                return;
            };
            // A failed readahead is forgotten: the demand read will fail and report it.
            let _ = load(&cache, &log, &seg, start, limit).await;
            drop(guard);
        })
        .detach();
    }
}

/// One readahead read in flight. [`MAX_READAHEAD_IN_FLIGHT`] are always allowed, up to
/// [`MAX_READAHEAD_IN_FLIGHT_IDLE`] while the log is idle (not [`ChunkCache::log_writing`]).
struct AheadSlot {
    cache: Rc<ChunkCache>,
}

impl AheadSlot {
    /// Waits for a slot; None if the shard is gone (nothing left to read for).
    async fn take(cache: &Rc<ChunkCache>, log: &Weak<Inner>) -> Option<AheadSlot> {
        loop {
            // A stopped shard wakes its waiters (`Inner::stop`); this one then lets go of it.
            let inner = log.upgrade().filter(|i| !i.stopped())?;
            // Listeners first, then the check (no lost wake-ups).
            let ended = cache.ahead_done.listen();
            let changed = inner.gc.progress.listen();
            let allowed = if cache.log_writing(&inner) {
                MAX_READAHEAD_IN_FLIGHT
            } else {
                MAX_READAHEAD_IN_FLIGHT_IDLE
            };
            let running = cache.ahead_running.get();
            if running < allowed {
                cache.ahead_running.set(running + 1);
                return Some(AheadSlot {
                    cache: cache.clone(),
                });
            }
            // A read ended, or the log's writes moved (it may be idle now).
            futures_lite::future::or(ended, changed).await;
        }
    }
}

impl Drop for AheadSlot {
    fn drop(&mut self) {
        let c = &self.cache;
        c.ahead_running.set(c.ahead_running.get().saturating_sub(1));
        c.ahead_done.notify();
    }
}

/// Marks a chunk as being read; dropping it (success, failure or cancellation) unmarks it and
/// wakes the readers waiting for it.
struct Loading {
    cache: Rc<ChunkCache>,
    start: u64,
    done: Rc<Semaphore>,
}

impl Loading {
    fn begin(cache: &Rc<ChunkCache>, start: u64) -> Loading {
        let done = Rc::new(Semaphore::new(0));
        cache.state.borrow_mut().loading.insert(start, done.clone());
        Loading {
            cache: cache.clone(),
            start,
            done,
        }
    }
}

impl Drop for Loading {
    fn drop(&mut self) {
        self.cache.state.borrow_mut().loading.remove(&self.start);
        self.done.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemStorage;
    use crate::shard_tests::{batch, open, run};
    use crate::{BacklogRead, Durability, Offset, QueueId, Shard, ShardConfig};
    use ringmq_wire::record_batch::set_base_offset;

    /// Chunks in units of the 1 MiB the tests' sizes were written for: the same geometry
    /// (entries straddling one, two chunk boundaries) at any chunk size.
    const K: usize = (CHUNK_BYTES >> 20) as usize;

    fn cfg(dir: &str, mode: BacklogRead) -> ShardConfig {
        ShardConfig {
            dir: dir.into(),
            segment_size_bytes: (4 << 20) * K as u64,
            max_batch_bytes: (2 << 20) * K as u32,
            tail_cache_bytes: 0,
            backlog_read: mode,
            ..ShardConfig::default()
        }
    }

    /// The batch as a reader must see it: as appended, with its base offset assigned.
    fn stored(b: &Bytes, base: u64) -> Bytes {
        let mut m = BytesMut::from(&b[..]);
        set_base_offset(&mut m, base as i64);
        m.freeze()
    }

    /// Every batch of `q` from offset 0, in reads of at most `max_bytes`.
    async fn read_queue(s: &Shard, q: QueueId, max_bytes: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut from = Offset(0);
        loop {
            let r = s.read(q, from, max_bytes).await.expect("read");
            let Some(last) = r.batches.last() else {
                return out;
            };
            let h = ringmq_wire::record_batch::validate(last).expect("valid batch");
            from = Offset(h.last_offset() as u64 + 1);
            out.extend(r.batches);
        }
    }

    /// Appends batches of two interleaved queues with sizes that straddle chunk boundaries
    /// (one batch spans three chunks); returns what each queue must read back.
    async fn fill(s: &Shard) -> [Vec<Bytes>; 2] {
        let mut want: [Vec<Bytes>; 2] = [Vec::new(), Vec::new()];
        let sizes = [70_001, 130_003, 1_500_007, 90_011, 250_013, 33_017];
        for round in 0..4 {
            for (i, fill) in sizes.iter().enumerate() {
                let q = (round + i) % 2;
                let b = batch(1, 0, -1, -1, *fill * K);
                let a = s
                    .append(QueueId(q as u32), b.clone(), Durability::Written)
                    .await
                    .unwrap();
                want[q].push(stored(&b, a.base_offset.0));
            }
        }
        want
    }

    #[test]
    fn batches_come_back_byte_exact_across_chunk_boundaries() {
        // Catches: entry headers left in the returned bytes, wrong slice offsets for a batch
        // that straddles chunks (or spans three), base offsets not assigned, a read that
        // stops early or skips a batch.
        run(|| async {
            for mode in [BacklogRead::Readahead, BacklogRead::Direct] {
                let io = MemStorage::new();
                let s = open(&cfg("/ra", mode), &io).await;
                let want = fill(&s).await;
                let straddles = {
                    let st = s.inner.state.borrow();
                    st.queues
                        .values()
                        .flat_map(|q| q.slots.iter())
                        .filter(|slot| {
                            let e = slot.entry;
                            e.log_pos % CHUNK_BYTES + u64::from(e.entry_len) > CHUNK_BYTES
                        })
                        .count()
                };
                assert!(
                    straddles >= 3,
                    "the test needs straddling entries: {straddles}"
                );
                for (q, w) in want.iter().enumerate() {
                    for max_bytes in [1, 300_000 * K, (8 << 20) * K] {
                        let got = read_queue(&s, QueueId(q as u32), max_bytes).await;
                        assert_eq!(got.len(), w.len(), "{mode:?} queue {q} max {max_bytes}");
                        for (i, (g, w)) in got.iter().zip(w).enumerate() {
                            assert!(g == w, "{mode:?} queue {q} batch {i} differs");
                        }
                    }
                }
            }
        });
    }

    #[test]
    fn chunks_are_shared_between_queues_and_reads_are_bounded() {
        // Catches: a cache that never hits (every read goes to the disk), or one that grows
        // past its bound.
        run(|| async {
            let io = MemStorage::new();
            let s = open(&cfg("/rb", BacklogRead::Readahead), &io).await;
            let want = fill(&s).await;
            let a = read_queue(&s, QueueId(0), 8 << 20).await;
            let reads = s.inner.chunks.reads_issued.get();
            let b = read_queue(&s, QueueId(1), 8 << 20).await;
            assert_eq!((a.len(), b.len()), (want[0].len(), want[1].len()));
            // Both queues live in the same chunks: the second reads (almost) nothing.
            let more = s.inner.chunks.reads_issued.get() - reads;
            assert!(
                more <= 1,
                "queue 1 issued {more} reads after queue 0's {reads}"
            );
            // The same batch read twice is the same memory (a slice of the cached chunk).
            let x = s.read(QueueId(0), Offset(0), 1).await.unwrap().batches;
            let y = s.read(QueueId(0), Offset(0), 1).await.unwrap().batches;
            assert_eq!(x[0].as_ptr(), y[0].as_ptr());
            assert!(s.inner.chunks.cached_chunks() <= MAX_CACHED_CHUNKS);
        });
    }

    #[test]
    fn readahead_slots_are_bounded_while_the_log_is_idle() {
        // Catches: a gate that never goes deeper than one read while the log is idle (the
        // catch-up speed-up lost), one that hands out more than its bound, and a waiting read
        // that is not woken when a slot is given back (readahead stalls for good).
        run(|| async {
            let io = MemStorage::new();
            let s = open(&cfg("/rg", BacklogRead::Readahead), &io).await;
            let log = Rc::downgrade(&s.inner);
            let cache = s.inner.chunks.clone();
            assert!(s.inner.gc.quiescent());
            let mut held = Vec::new();
            for _ in 0..MAX_READAHEAD_IN_FLIGHT_IDLE {
                let slot = futures_lite::future::poll_once(Box::pin(AheadSlot::take(&cache, &log)))
                    .await
                    .expect("an idle log's slot is free at once")
                    .expect("the shard is open");
                held.push(slot);
            }
            let mut more = Box::pin(AheadSlot::take(&cache, &log));
            assert!(
                futures_lite::future::poll_once(&mut more).await.is_none(),
                "a readahead slot past the bound"
            );
            held.pop();
            let got = futures_lite::future::poll_once(&mut more).await;
            assert!(matches!(got, Some(Some(_))), "not woken by a freed slot");
            assert_eq!(cache.ahead_running.get(), MAX_READAHEAD_IN_FLIGHT_IDLE);
            drop(got);
            drop(held);
            assert_eq!(cache.ahead_running.get(), 0);
        });
    }

    #[test]
    fn the_log_counts_as_writing_until_it_has_been_quiet_a_while() {
        // Catches: chunk reads in pieces (and one readahead read) that never go back to whole
        // chunks once appends stop (a catch-up slowed for good), and an append between two
        // looks that goes unnoticed (whole chunks in front of a steady producer's appends).
        run(|| async {
            let io = MemStorage::new();
            let s = open(&cfg("/rw", BacklogRead::Readahead), &io).await;
            let log = Rc::downgrade(&s.inner);
            let cache = s.inner.chunks.clone();
            assert!(!cache.log_writing(&s.inner), "a fresh shard is idle");
            assert_eq!(cache.piece_bytes(&log), CHUNK_BYTES as usize);
            s.append(QueueId(0), batch(1, 0, -1, -1, 100), Durability::Written)
                .await
                .unwrap();
            let t0 = Instant::now();
            assert!(cache.log_writing(&s.inner), "an append went unnoticed");
            assert_eq!(cache.piece_bytes(&log), PIECE_BYTES_WHILE_WRITING);
            // Idle again once LOG_QUIET_AFTER has passed without a write.
            while cache.log_writing(&s.inner) {
                assert!(t0.elapsed() < 50 * LOG_QUIET_AFTER, "never idle again");
                glommio::timer::sleep(LOG_QUIET_AFTER / 10).await;
            }
            assert!(t0.elapsed() >= LOG_QUIET_AFTER);
            assert_eq!(cache.piece_bytes(&log), CHUNK_BYTES as usize);
            drop(s);
            assert_eq!(
                cache.piece_bytes(&log),
                CHUNK_BYTES as usize,
                "a gone shard"
            );
        });
    }

    #[test]
    fn a_readahead_waiting_for_a_slot_ends_when_the_shard_stops() {
        // Catches: a waiting readahead read that keeps the stopped shard (its state, cache
        // and files) alive for as long as no slot frees up, possibly forever.
        run(|| async {
            let io = MemStorage::new();
            let s = open(&cfg("/rs", BacklogRead::Readahead), &io).await;
            let log = Rc::downgrade(&s.inner);
            let cache = s.inner.chunks.clone();
            let mut held = Vec::new();
            for _ in 0..MAX_READAHEAD_IN_FLIGHT_IDLE {
                held.push(
                    AheadSlot::take(&cache, &log)
                        .await
                        .expect("the shard is open"),
                );
            }
            let mut waiting = Box::pin(AheadSlot::take(&cache, &log));
            assert!(futures_lite::future::poll_once(&mut waiting)
                .await
                .is_none());
            drop(s);
            let got = futures_lite::future::poll_once(&mut waiting).await;
            assert!(
                matches!(got, Some(None)),
                "still waiting on a stopped shard"
            );
            drop(waiting);
            assert!(log.upgrade().is_none(), "the stopped shard is still held");
            drop(held);
        });
    }

    #[test]
    fn a_sparse_queue_is_read_in_prefixes_of_bounded_chunks() {
        // Catches: a read of a queue whose batches are far apart in the log loading chunks
        // without bound, or a prefix read that skips or repeats batches.
        run(|| async {
            let io = MemStorage::new();
            let c = ShardConfig {
                segment_size_bytes: (64 << 20) * K as u64,
                ..cfg("/rf", BacklogRead::Readahead)
            };
            let s = open(&c, &io).await;
            let mut want = Vec::new();
            for _ in 0..40 {
                let b = batch(1, 0, -1, -1, 1000);
                let a = s
                    .append(QueueId(0), b.clone(), Durability::Written)
                    .await
                    .unwrap();
                want.push(stored(&b, a.base_offset.0));
                let big = batch(1, 0, -1, -1, 1_100_000 * K);
                s.append(QueueId(1), big, Durability::Written)
                    .await
                    .unwrap();
            }
            let first = s.read(QueueId(0), Offset(0), 8 << 20).await.unwrap();
            let n = first.batches.len();
            assert!(
                (1..=MAX_CHUNKS_PER_READ).contains(&n),
                "first read: {n} batches"
            );
            assert_eq!(read_queue(&s, QueueId(0), 8 << 20).await, want);
        });
    }

    #[test]
    fn a_chunk_read_at_the_tail_is_read_again_for_later_entries() {
        // Catches: a chunk cached while the log ended inside it being served for entries
        // written after (zeros or garbage where the later entry is: Corrupt, or worse).
        run(|| async {
            let io = MemStorage::new();
            let s = open(&cfg("/rc", BacklogRead::Readahead), &io).await;
            let q = QueueId(3);
            let a = batch(1, 0, -1, -1, 5000);
            s.append(q, a.clone(), Durability::Written).await.unwrap();
            let r = s.read(q, Offset(0), 1 << 20).await.unwrap();
            assert!(r.batches[0] == stored(&a, 0));
            let b = batch(2, 0, -1, -1, 7000);
            s.append(q, b.clone(), Durability::Written).await.unwrap();
            let r = s.read(q, Offset(1), 1 << 20).await.unwrap();
            assert_eq!(r.batches.len(), 1);
            assert!(r.batches[0] == stored(&b, 1));
            let all = read_queue(&s, q, 1 << 20).await;
            assert_eq!(all.len(), 2);
        });
    }

    #[test]
    fn a_flipped_bit_in_a_chunk_is_reported_not_served() {
        // Catches: readahead slicing batches without verifying them (the direct path checks
        // every entry's CRC; this one must too).
        run(|| async {
            let io = MemStorage::new();
            let c = cfg("/rd", BacklogRead::Readahead);
            let s = open(&c, &io).await;
            let want = fill(&s).await;
            let victim = {
                let st = s.inner.state.borrow();
                st.queues[&QueueId(1)].slots[2].entry
            };
            s.close().await.unwrap();
            drop(s);
            // A payload bit of queue 1's third batch, past its header.
            let seg = std::path::Path::new("/rd/00000000000000000000.log");
            assert!(io.flip_bit(seg, victim.log_pos + 64 + 500, 2));
            let s = open(&c, &io).await;
            let e = s.read(QueueId(1), Offset(victim.base_offset), 1).await;
            assert!(matches!(e, Err(EngineError::Corrupt { .. })), "{e:?}");
            // Queue 0 shares the chunks and is intact.
            let got = read_queue(&s, QueueId(0), 8 << 20).await;
            assert_eq!(got, want[0]);
        });
    }

    #[test]
    fn reads_racing_retention_and_rolls_get_exact_bytes_or_out_of_range() {
        // Catches: a read whose segment retention deleted meanwhile failing with an I/O
        // error (or serving garbage) instead of OffsetOutOfRange; reads during appends that
        // roll segments returning wrong bytes.
        run(|| async {
            let io = MemStorage::new();
            let c = ShardConfig {
                segment_size_bytes: 2 << 20,
                max_batch_bytes: 256 << 10,
                retention_bytes: Some(6 << 20),
                ..cfg("/re", BacklogRead::Readahead)
            };
            let s = open(&c, &io).await;
            let q = QueueId(0);
            let mut want: Vec<Bytes> = Vec::new();
            let (mut ok, mut gone) = (0, 0);
            for round in 0..60u64 {
                for _ in 0..4 {
                    let b = batch(1, 0, -1, -1, 60_000 + round as usize);
                    let a = s.append(q, b.clone(), Durability::Written).await.unwrap();
                    want.push(stored(&b, a.base_offset.0));
                }
                // A read of the oldest data races a retention pass and more appends.
                let from = s.log_start_offset(q);
                let reader = {
                    let s = s.clone();
                    glommio::spawn_local(async move { s.read(q, from, 1 << 20).await })
                };
                let (ret, _) = futures_lite::future::zip(
                    s.enforce_retention(),
                    s.append(q, batch(1, 0, -1, -1, 10), Durability::Written),
                )
                .await;
                want.push(Bytes::new()); // placeholder for the small batch, checked by count
                ret.unwrap();
                match reader.await {
                    Ok(r) => {
                        ok += 1;
                        for (i, b) in r.batches.iter().enumerate() {
                            let at = (from.0 as usize) + i;
                            if !want[at].is_empty() {
                                assert!(*b == want[at], "round {round} offset {at} differs");
                            }
                        }
                    }
                    Err(EngineError::OffsetOutOfRange { .. }) => gone += 1,
                    Err(e) => panic!("round {round}: {e:?}"),
                }
            }
            assert!(ok > 0, "no read succeeded ({gone} out of range)");
            assert!(s.log_start_offset(q).0 > 0, "retention never ran");
        });
    }
}
