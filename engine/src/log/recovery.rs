//! Recovery: rebuilds a shard's state from its checkpoint, the segment index files and the
//! commit log. Idempotent: opening twice yields the same state, because everything it changes
//! on disk (dropping segments past the end, orphan index files, the new checkpoint) is a
//! function of what it found.
//!
//! ```text
//!  checkpoint (state at log_pos L, per segment: index records counted + CRC)
//!  for each segment before L, in log order:
//!      load its .idx prefix (count + CRC) ──► distribute the entries to the queues
//!      └ missing / short / bad CRC / inconsistent: scan that segment up to L instead; its
//!        records are rewritten by the next checkpoint (bounded work, never a failed open)
//!  scan the log from L: verify each entry (header, epoch, CRC, batch header, dense offsets)
//!      │ valid: apply it (index entry, end offset, producer table, deletions)
//!      └ first invalid entry at T: the log ends at T; segments after T are removed
//!  fdatasync what was scanned, so the state we report is durable before anyone relies on it
//! ```
//!
//! Faults handled: a torn or partly-landed tail (writes in flight land in any order, so valid
//! entries may follow a hole: the first hole ends the log); stale entries beyond an earlier
//! truncation (their epoch is smaller than the entry before them); the entries a recycled
//! segment held in its earlier lap (each names the log position it was written at, which is
//! not where they now lie); a segment index file that
//! is missing or fails its check (that segment is scanned); an index file whose segment is gone
//! (retention crashed between its two deletions: removed); a missing checkpoint (full scan).
//! A checkpoint that exists but does not decode is fatal: `EngineError::Corrupt`, or
//! `EngineError::UnsupportedFormat` for a version this build does not read.

use super::{parse_segment_name, segment_path, Segment, SegmentSet};
use crate::format::checkpoint::{Checkpoint, SegmentIndexState};
use crate::format::entry::{verify_crc, EntryHeader, EntryKind, HEADER_LEN};
use crate::format::index_entry::IndexEntry;
use crate::format::segment_index::{
    decode_records, RecordBounds, SegmentIndexRecord, SEGMENT_INDEX_RECORD_LEN,
};
use crate::format::FormatError;
use crate::index::segments::{
    max_records, parse_index_name, segment_index_path, Persisted, SegmentIndexes,
};
use crate::index::QueueIndex;
use crate::io::{align_down, align_up, FileKind, Storage};
use crate::producers::ProducerTable;
use crate::{EngineError, QueueId, ShardConfig};
use ringmq_wire::record_batch::BatchHeader;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

/// Name of the checkpoint file in the shard directory.
pub(crate) const CHECKPOINT_FILE: &str = "checkpoint";
/// Size of the read-ahead window of the recovery scan.
const SCAN_CHUNK_BYTES: u64 = 4 << 20;

/// Everything recovery found.
pub(crate) struct Recovered {
    /// Epoch the opening shard stamps on its entries (larger than any on disk).
    pub epoch: u64,
    pub queues: HashMap<QueueId, QueueIndex>,
    pub producers: ProducerTable,
    pub segments: SegmentSet,
    /// Where the next entry goes, and the bytes of its block already in the log.
    pub next_pos: u64,
    pub tail: Vec<u8>,
    /// What each segment index file durably holds, and the records still to write (those
    /// rebuilt by a segment scan and those of batches after the checkpoint), in log order.
    pub seg_index: SegmentIndexes,
    /// Segments whose index file was unusable and had to be scanned (tests and metrics).
    pub rebuilt_segments: u64,
    /// Spare segment files kept for reuse (`log::recycle`), by their old start.
    pub spares: Vec<u64>,
}

pub(crate) async fn recover(cfg: &ShardConfig, io: &dyn Storage) -> Result<Recovered, EngineError> {
    let dir = &cfg.dir;
    io.create_dir_all(dir.clone())
        .await
        .map_err(|e| EngineError::io("create shard directory", dir, e))?;
    // A checkpoint that exists but does not decode is an error, not "no checkpoint": it was
    // renamed into place only when complete, so damage means the disk lies, and guessing
    // (scanning from 0) could resurrect data retention or deletion had removed.
    let ckpt = load_checkpoint(io, dir).await?;
    let names = io
        .list_dir(dir.to_path_buf())
        .await
        .map_err(|e| EngineError::io("list shard directory", dir, e))?;
    let mut segments = open_segments(io, dir, &names, cfg.segment_size_bytes).await?;
    let keep_spares = cfg.recycle_segments && io.prefers_written_extents();
    let spares =
        super::recycle::recover_spares(io, dir, &names, cfg.segment_size_bytes, keep_spares)
            .await?;
    remove_orphan_indexes(io, dir, &names, &segments).await?;
    let first_start = segments.map.keys().next().copied();

    let mut scan = match &ckpt {
        Some(c) => Scan::from_checkpoint(c),
        None => Scan::default(),
    };
    if let Some(c) = &ckpt {
        scan.load_segment_indexes(io, dir, &segments, c).await?;
    }
    let ckpt_pos = scan.ckpt_pos;
    // Retention checkpoints past a segment before deleting it, so the checkpoint position
    // normally lies in an existing segment; the clamp only matters when it is missing.
    let from = first_start.map_or(ckpt_pos, |first| ckpt_pos.max(first));
    let end = scan.run(&segments, from, u64::MAX).await?;

    // Segments after the end hold nothing valid: forget them, so a second open agrees.
    let stale: Vec<u64> = segments.map.keys().copied().filter(|&s| s > end).collect();
    for s in &stale {
        if let Some(seg) = segments.map.remove(s) {
            tracing::warn!(segment = %seg.path.display(), "removing segment past the end of the log");
            seg.file
                .close()
                .await
                .map_err(|e| EngineError::io("close segment", &seg.path, e))?;
            io.remove(seg.path.clone())
                .await
                .map_err(|e| EngineError::io("remove segment", &seg.path, e))?;
            remove_if_present(io, segment_index_path(dir, seg.start)).await?;
        }
    }
    if segments.find(end).is_none() {
        // Fresh shard, or the log ends exactly at a segment end: the next segment starts here.
        let seg = create_segment(io, dir, end, cfg.segment_size_bytes).await?;
        segments.map.insert(end, seg);
    }
    // Whatever we scanned may sit only in the page cache (the process died, not the machine):
    // make it durable before the state built from it is reported or checkpointed.
    for seg in segments
        .map
        .values()
        .filter(|s| s.end() > ckpt_pos.min(end))
    {
        seg.file
            .fdatasync()
            .await
            .map_err(|e| EngineError::io("fdatasync segment", &seg.path, e))?;
    }
    io.sync_dir(dir.clone())
        .await
        .map_err(|e| EngineError::io("sync directory", dir, e))?;

    let active = segments.find(end).cloned().ok_or(EngineError::Corrupt {
        path: dir.clone(),
        offset: end,
        reason: "no segment holds the end of the log",
    })?;
    // The appender rewrites the block holding `end` whole: it needs the valid bytes before
    // `end` (what follows in that block is garbage and will be overwritten with zeros).
    let tail = read_tail(&active, end).await?;
    for q in scan.queues.values_mut() {
        q.settle_log_start();
    }
    Ok(Recovered {
        // Larger than every epoch on disk, including those of stale entries past `end` (their
        // writers persisted their epoch in a checkpoint before writing them).
        epoch: scan.ckpt_epoch.max(scan.max_epoch) + 1,
        queues: scan.queues,
        producers: scan.producers,
        segments,
        next_pos: end,
        tail,
        seg_index: scan.seg_index,
        rebuilt_segments: scan.rebuilt_segments,
        spares,
    })
}

/// Creates, preallocates and names a new segment starting at log position `start`.
pub(crate) async fn create_segment(
    io: &dyn Storage,
    dir: &Path,
    start: u64,
    size: u64,
) -> Result<Rc<Segment>, EngineError> {
    let path = segment_path(dir, start);
    open_preallocated(io, path.clone(), start, size)
        .await
        .map_err(|e| EngineError::io("create segment", &path, e))
}

/// Creates the file at `path`, preallocates `size` bytes and wraps it as the segment that
/// starts at log position `start` (under its final name, or a temporary one while prepared).
pub(crate) async fn open_preallocated(
    io: &dyn Storage,
    path: std::path::PathBuf,
    start: u64,
    size: u64,
) -> std::io::Result<Rc<Segment>> {
    let file = io.open(path.clone(), FileKind::Direct, true).await?;
    if let Err(e) = file.preallocate(size).await {
        let _ = file.close().await;
        return Err(e);
    }
    Ok(Segment::new(start, size, file, path, now_ms()))
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn load_checkpoint(io: &dyn Storage, dir: &Path) -> Result<Option<Checkpoint>, EngineError> {
    let path = dir.join(CHECKPOINT_FILE);
    let file = match io.open(path.clone(), FileKind::Buffered, false).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(EngineError::io("open checkpoint", &path, e)),
    };
    let bytes = read_checkpoint(&*file, &path).await;
    file.close()
        .await
        .map_err(|e| EngineError::io("close checkpoint", &path, e))?;
    let bytes = bytes?;
    match Checkpoint::decode(&bytes) {
        Ok(c) => Ok(Some(c)),
        // Magic right, version not ours: a directory written by another format version (v1
        // kept one index file per queue). Refused as such, not reported as damage.
        Err(FormatError::BadVersion(found)) => Err(EngineError::UnsupportedFormat {
            path,
            found,
            supported: crate::format::checkpoint::VERSION,
        }),
        Err(_) => Err(EngineError::Corrupt {
            path,
            offset: 0,
            reason: "checkpoint does not decode",
        }),
    }
}

/// The checkpoint file's bytes, bounded by its named limit.
async fn read_checkpoint(
    file: &dyn crate::io::StorageFile,
    path: &Path,
) -> Result<Vec<u8>, EngineError> {
    let size = file
        .size()
        .await
        .map_err(|e| EngineError::io("stat checkpoint", path, e))?;
    if size > crate::format::checkpoint::MAX_CHECKPOINT_BYTES {
        return Err(EngineError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason: "checkpoint larger than its limit",
        });
    }
    file.read_at(0, size as usize)
        .await
        .map_err(|e| EngineError::io("read checkpoint", path, e))
}

/// Removes index files whose segment is gone: retention removes a segment's `.log` (durably)
/// before its `.idx`, so a crash between the two leaves such an orphan. Nothing reads it.
async fn remove_orphan_indexes(
    io: &dyn Storage,
    dir: &Path,
    names: &[String],
    segments: &SegmentSet,
) -> Result<(), EngineError> {
    for start in names.iter().filter_map(|n| parse_index_name(n)) {
        if !segments.map.contains_key(&start) {
            let path = segment_index_path(dir, start);
            tracing::info!(path = %path.display(), "removing the index file of a deleted segment");
            remove_if_present(io, path).await?;
        }
    }
    Ok(())
}

async fn remove_if_present(io: &dyn Storage, path: std::path::PathBuf) -> Result<(), EngineError> {
    match io.remove(path.clone()).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(EngineError::io("remove segment index", &path, e)),
    }
}

async fn open_segments(
    io: &dyn Storage,
    dir: &Path,
    names: &[String],
    default_size: u64,
) -> Result<SegmentSet, EngineError> {
    // Half-prepared next segments are not part of the log.
    for n in names
        .iter()
        .filter(|n| n.ends_with(super::prepare::PREP_SUFFIX))
    {
        let path = dir.join(n);
        io.remove(path.clone())
            .await
            .map_err(|e| EngineError::io("remove prepared segment", &path, e))?;
    }
    let mut starts: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    starts.sort_unstable();
    let mut set = SegmentSet::default();
    for start in starts {
        let path = segment_path(dir, start);
        let file = io
            .open(path.clone(), FileKind::Direct, false)
            .await
            .map_err(|e| EngineError::io("open segment", &path, e))?;
        let mut size = file
            .size()
            .await
            .map_err(|e| EngineError::io("stat segment", &path, e))?;
        if size == 0 || size % crate::io::BLOCK_BYTES != 0 {
            // Created but never (fully) preallocated: a crash during a roll.
            size = align_up(size).max(default_size);
            file.preallocate(size)
                .await
                .map_err(|e| EngineError::io("preallocate segment", &path, e))?;
        }
        let modified = io
            .modified_ms(path.clone())
            .await
            .unwrap_or_else(|_| now_ms());
        set.map
            .insert(start, Segment::new(start, size, file, path, modified));
    }
    Ok(set)
}

async fn read_tail(seg: &Segment, end: u64) -> Result<Vec<u8>, EngineError> {
    let block = align_down(end);
    if block == end {
        return Ok(Vec::new());
    }
    let data = seg
        .file
        .read_at(block - seg.start, crate::io::BLOCK_BYTES as usize)
        .await
        .map_err(|e| EngineError::io("read tail block", &seg.path, e))?;
    let n = (end - block) as usize;
    if data.len() < n {
        return Err(EngineError::Corrupt {
            path: seg.path.clone(),
            offset: block,
            reason: "tail block unreadable",
        });
    }
    Ok(data[..n].to_vec())
}

/// State accumulated by the scan.
#[derive(Default)]
struct Scan {
    queues: HashMap<QueueId, QueueIndex>,
    producers: ProducerTable,
    seg_index: SegmentIndexes,
    rebuilt_segments: u64,
    ckpt_pos: u64,
    /// Every entry at or after `ckpt_pos` was written by the run that wrote the checkpoint or
    /// a later one, so its epoch is at least this.
    ckpt_epoch: u64,
    max_epoch: u64,
}

impl Scan {
    /// The queues' offsets and the producer table as the checkpoint saw them; their index
    /// entries come from [`Scan::load_segment_indexes`].
    fn from_checkpoint(c: &Checkpoint) -> Scan {
        let queues = c
            .queues
            .iter()
            .map(|qs| {
                let q = QueueIndex {
                    end_offset: qs.end_offset,
                    log_start_offset: qs.log_start_offset,
                    deleted: qs.deleted,
                    ..QueueIndex::default()
                };
                (QueueId(qs.queue_id), q)
            })
            .collect();
        Scan {
            queues,
            producers: ProducerTable::from_states(&c.producers, c.max_producer_id),
            max_epoch: c.epoch,
            ckpt_pos: c.log_pos,
            ckpt_epoch: c.epoch,
            ..Scan::default()
        }
    }

    /// Gives every queue its entries of the batches before the checkpoint, segment by segment
    /// in log order (so each queue's entries stay in offset order): from the segment's index
    /// file when it verifies, else by scanning that segment (its records then wait in
    /// `seg_index.pending` for the next checkpoint to rewrite the file).
    async fn load_segment_indexes(
        &mut self,
        io: &dyn Storage,
        dir: &Path,
        segments: &SegmentSet,
        c: &Checkpoint,
    ) -> Result<(), EngineError> {
        let ckpt_pos = c.log_pos;
        for seg in segments.map.values().filter(|s| s.start < ckpt_pos) {
            let bounds = RecordBounds {
                start: seg.start,
                end: seg.end().min(ckpt_pos),
            };
            let state = c
                .segments
                .binary_search_by_key(&seg.start, |s| s.segment_start)
                .ok()
                .map(|i| c.segments[i]);
            let applied = match state {
                Some(st) => load_segment_index(io, dir, seg, st, bounds)
                    .await
                    .and_then(|records| self.distribute(&records))
                    .map(|()| st),
                None => Err("segment missing from the checkpoint"),
            };
            match applied {
                Ok(st) => {
                    if st.records > 0 {
                        let p = Persisted {
                            records: st.records,
                            crc: st.crc,
                        };
                        self.seg_index.persisted.insert(seg.start, p);
                    }
                }
                Err(reason) => {
                    tracing::warn!(
                        segment = %seg.path.display(),
                        reason,
                        "segment index unusable; rebuilding it from the segment"
                    );
                    self.rebuilt_segments += 1;
                    let end = self.run(segments, seg.start, bounds.end).await?;
                    if end < bounds.end {
                        // Everything before the checkpoint position was durable when the
                        // checkpoint was written: damage there is not a torn tail. Truncating
                        // would throw away acknowledged data (and every segment after it).
                        return Err(EngineError::Corrupt {
                            path: seg.path.clone(),
                            offset: end - seg.start,
                            reason: "commit log damaged before the checkpoint position",
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Appends a segment's loaded records to their queues, after checking that they continue
    /// each queue densely and stay below its checkpointed end (a file that passed its CRC but
    /// disagrees with the checkpoint is not trusted: nothing is applied, the segment is
    /// scanned instead). Records of queues the checkpoint marks deleted are skipped.
    fn distribute(&mut self, records: &[SegmentIndexRecord]) -> Result<(), &'static str> {
        let mut next: HashMap<u32, u64> = HashMap::new();
        for r in records {
            let Some(q) = self.queues.get(&QueueId(r.queue_id)) else {
                return Err("record of a queue the checkpoint does not know");
            };
            if q.deleted {
                continue;
            }
            let e = &r.entry;
            let expected = next
                .get(&r.queue_id)
                .copied()
                .or_else(|| q.slots.back().map(|s| s.entry.last_offset + 1));
            if expected.is_some_and(|x| x != e.base_offset) || e.last_offset >= q.end_offset {
                return Err("records do not continue their queue");
            }
            next.insert(r.queue_id, e.last_offset + 1);
        }
        for r in records {
            if let Some(q) = self
                .queues
                .get_mut(&QueueId(r.queue_id))
                .filter(|q| !q.deleted)
            {
                q.push_recovered(r.entry);
            }
        }
        Ok(())
    }

    /// Verifies and applies entries from `from` on, up to `until` at most; returns the log
    /// position where the valid log ends (or `until`).
    async fn run(
        &mut self,
        segments: &SegmentSet,
        from: u64,
        until: u64,
    ) -> Result<u64, EngineError> {
        let mut pos = from;
        let mut last_epoch = 0u64;
        let mut win = Window::default();
        while pos < until {
            let Some(seg) = segments.find(pos).cloned() else {
                break;
            };
            // Fewer than a header's bytes left: the appender never starts an entry there.
            if seg.end() - pos < HEADER_LEN as u64 {
                pos = seg.end();
                continue;
            }
            let mut hdr = [0u8; HEADER_LEN];
            // A read error is returned (the disk failed us); short or undecodable bytes are
            // the end of the log (a torn or never-written tail).
            let got = win.get(&seg, pos, HEADER_LEN).await?;
            if got.len() < HEADER_LEN {
                break;
            }
            hdr.copy_from_slice(got);
            let h = match EntryHeader::decode(&hdr) {
                Ok(h) => h,
                Err(e) => {
                    stop(&seg, pos, &e.to_string());
                    break;
                }
            };
            // A recycled segment holds the entries of its earlier lap until new ones overwrite
            // them: whole and CRC-valid, but written at another position.
            if h.log_pos != pos {
                stop(
                    &seg,
                    pos,
                    "entry written at another log position (a recycled segment's)",
                );
                break;
            }
            // Epochs never decrease along the log; a smaller one is a leftover of an earlier
            // run, beyond a tail that run's successor truncated.
            let floor = if pos >= self.ckpt_pos {
                last_epoch.max(self.ckpt_epoch)
            } else {
                last_epoch
            };
            if h.epoch < floor {
                stop(&seg, pos, "stale entry from an earlier epoch");
                break;
            }
            // A length that runs past the segment is garbage even if the header looks valid.
            if pos + h.entry_len() > seg.end() {
                stop(&seg, pos, "entry crosses the segment end");
                break;
            }
            if h.kind == EntryKind::Padding {
                if verify_crc(&hdr, &h, &[]).is_err() {
                    stop(&seg, pos, "padding CRC mismatch");
                    break;
                }
                last_epoch = h.epoch;
                self.max_epoch = self.max_epoch.max(h.epoch);
                pos = seg.end();
                continue;
            }
            let payload = win
                .get(&seg, pos + HEADER_LEN as u64, h.payload_len as usize)
                .await?;
            // The payload is read before its CRC is checked, but its length was bounded by
            // MAX_PAYLOAD_BYTES and the segment end above, so garbage cannot make us allocate.
            if let Err(e) = verify_crc(&hdr, &h, payload) {
                stop(&seg, pos, &e.to_string());
                break;
            }
            if let Err(reason) = self.apply(&h, pos, payload) {
                stop(&seg, pos, reason);
                break;
            }
            last_epoch = h.epoch;
            self.max_epoch = self.max_epoch.max(h.epoch);
            pos += h.entry_len();
        }
        Ok(pos)
    }

    fn apply(&mut self, h: &EntryHeader, pos: u64, payload: &[u8]) -> Result<(), &'static str> {
        let id = QueueId(h.queue_id);
        let before_ckpt = pos < self.ckpt_pos;
        match h.kind {
            EntryKind::Batch => {
                let b = BatchHeader::parse(payload).map_err(|_| "payload is not a record batch")?;
                if b.base_offset as u64 != h.base_offset
                    || b.total_len() != payload.len()
                    || b.last_offset_delta < 0
                {
                    return Err("batch header disagrees with its entry");
                }
                let last = h.base_offset + b.last_offset_delta as u64;
                let entry = IndexEntry {
                    base_offset: h.base_offset,
                    last_offset: last,
                    log_pos: pos,
                    entry_len: h.entry_len() as u32,
                    tag_hash: 0,
                    max_timestamp: h.max_timestamp,
                };
                let record = SegmentIndexRecord {
                    queue_id: id.0,
                    entry,
                };
                if before_ckpt {
                    // Only a segment whose index file failed is scanned before the checkpoint:
                    // the checkpoint counts this batch (offsets, producers); the queue needs
                    // its entry, and the index file its record back.
                    if let Some(q) = self.queues.get_mut(&id).filter(|q| !q.deleted) {
                        q.push_recovered(entry);
                        self.seg_index.pending.push(record);
                    }
                    return Ok(());
                }
                let q = self.queues.entry(id).or_default();
                if q.deleted {
                    return Ok(());
                }
                // A CRC-valid entry whose offset does not continue its queue cannot be part of
                // this log (offsets are assigned densely in log order): end the log here.
                if h.base_offset != q.end_offset {
                    return Err("batch offsets are not dense");
                }
                q.push(entry);
                self.seg_index.pending.push(record);
                self.producers.record(id, &b, h.base_offset, last);
            }
            EntryKind::QueueDeleted => {
                if !before_ckpt {
                    let q = self.queues.entry(id).or_default();
                    q.deleted = true;
                    q.slots.clear();
                    self.producers.remove_queue(id);
                }
            }
            EntryKind::Padding => return Err("padding handled by the caller"),
        }
        Ok(())
    }
}

fn stop(seg: &Segment, pos: u64, reason: &str) {
    tracing::info!(segment = %seg.path.display(), at = pos - seg.start, reason, "commit log ends here");
}

/// Reads and verifies the prefix of a segment's index file that the checkpoint counts. Any
/// failure is a reason to scan the segment instead, never an error of the open.
async fn load_segment_index(
    io: &dyn Storage,
    dir: &Path,
    seg: &Segment,
    st: SegmentIndexState,
    bounds: RecordBounds,
) -> Result<Vec<SegmentIndexRecord>, &'static str> {
    if st.records == 0 {
        return Ok(Vec::new());
    }
    // The count comes from disk: bound it before allocating (a segment of n bytes holds at
    // most n / MIN_BATCH_ENTRY_LEN batches, and never more than MAX_SEGMENT_INDEX_BYTES).
    if st.records > max_records(seg.size) {
        return Err("index record count larger than its segment can hold");
    }
    let bytes = st.records * SEGMENT_INDEX_RECORD_LEN as u64;
    let file = io
        .open(
            segment_index_path(dir, seg.start),
            FileKind::Buffered,
            false,
        )
        .await
        .map_err(|_| "index file missing")?;
    let data = async {
        // A short file (torn, or its last write lost) is known without reading it.
        let size = file.size().await.map_err(|_| "index file unreadable")?;
        if size < bytes {
            return Err("index file shorter than the checkpoint counts");
        }
        file.read_at(0, bytes as usize)
            .await
            .map_err(|_| "index file unreadable")
    }
    .await;
    // Not closing it is a leaked descriptor, not a reason to distrust the records.
    if let Err(e) = file.close().await {
        tracing::warn!(error = %e, "closing a segment index file failed");
    }
    let data = data?;
    decode_records(&data, st.records, st.crc, bounds)
        .map_err(|_| "index file does not match the checkpoint")
}

/// A read-ahead window over one segment.
#[derive(Default)]
struct Window {
    seg_start: Option<u64>,
    file_pos: u64,
    data: Vec<u8>,
}

impl Window {
    /// Up to `len` bytes at log position `pos` (fewer only at the end of the file).
    async fn get(&mut self, seg: &Segment, pos: u64, len: usize) -> Result<&[u8], EngineError> {
        let fpos = pos - seg.start;
        let hit = self.seg_start == Some(seg.start)
            && fpos >= self.file_pos
            && fpos + len as u64 <= self.file_pos + self.data.len() as u64;
        if !hit {
            let start = align_down(fpos);
            let end = align_up(fpos + len as u64)
                .max(start + SCAN_CHUNK_BYTES)
                .min(seg.size);
            self.data = seg
                .file
                .read_at(start, (end - start) as usize)
                .await
                .map_err(|e| EngineError::io("read segment", &seg.path, e))?;
            self.file_pos = start;
            self.seg_start = Some(seg.start);
        }
        let off = (fpos - self.file_pos) as usize;
        let off = off.min(self.data.len());
        let end = (off + len).min(self.data.len());
        Ok(&self.data[off..end])
    }
}
