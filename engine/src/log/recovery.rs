//! Recovery: rebuilds a shard's state from its checkpoint and the commit log. Idempotent:
//! opening twice yields the same state, because everything it changes on disk (dropping
//! segments past the end, the new checkpoint) is a function of what it found.
//!
//! ```text
//!  checkpoint (state at log_pos L) ──► load index files (count + CRC from the checkpoint)
//!  scan the log from L: verify each entry (header, epoch, CRC, batch header, dense offsets)
//!      │ valid: apply it (index entry, end offset, producer table, deletions)
//!      └ first invalid entry at T: the log ends at T; segments after T are removed
//!  fdatasync what was scanned, so the state we report is durable before anyone relies on it
//! ```
//!
//! Faults handled: a torn or partly-landed tail (writes in flight land in any order, so valid
//! entries may follow a hole: the first hole ends the log); stale entries beyond an earlier
//! truncation (their epoch is smaller than the entry before them); an index file that fails
//! its CRC (its queue's index is rebuilt from the log); a missing checkpoint (full scan).
//! A checkpoint that exists but does not decode is fatal: `EngineError::Corrupt`.

use super::{parse_segment_name, segment_path, Segment, SegmentSet};
use crate::format::checkpoint::Checkpoint;
use crate::format::entry::{verify_crc, EntryHeader, EntryKind, HEADER_LEN};
use crate::format::index_entry::{decode_file, IndexEntry, INDEX_ENTRY_LEN};
use crate::index::{index_path, QueueIndex, INDEX_DIR, MAX_INDEX_FILE_BYTES};
use crate::io::{align_down, align_up, FileKind, Storage};
use crate::producers::ProducerTable;
use crate::{EngineError, QueueId, ShardConfig};
use ringmq_wire::record_batch::BatchHeader;
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
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
}

pub(crate) async fn recover(cfg: &ShardConfig, io: &dyn Storage) -> Result<Recovered, EngineError> {
    let dir = &cfg.dir;
    io.create_dir_all(dir.join(INDEX_DIR))
        .await
        .map_err(|e| EngineError::io("create shard directory", dir, e))?;
    // A checkpoint that exists but does not decode is an error, not "no checkpoint": it was
    // renamed into place only when complete, so damage means the disk lies, and guessing
    // (scanning from 0) could resurrect data retention or deletion had removed.
    let ckpt = load_checkpoint(io, dir).await?;
    let mut segments = open_segments(io, dir, cfg.segment_size_bytes).await?;
    let first_start = segments.map.keys().next().copied();

    let (mut scan, ckpt_pos, ckpt_epoch) = match &ckpt {
        Some(c) => (Scan::from_checkpoint(io, dir, c).await?, c.log_pos, c.epoch),
        None => (Scan::default(), 0, 0),
    };
    // Queues whose index file failed need the log from its first retained byte.
    let mut from = if scan.rebuild.is_empty() {
        ckpt_pos
    } else {
        first_start.unwrap_or(0).min(ckpt_pos)
    };
    // Retention checkpoints past a segment before deleting it, so `from` normally lies in an
    // existing segment; the clamp only matters when the checkpoint is missing.
    if let Some(first) = first_start {
        from = from.max(first);
    }
    scan.ckpt_pos = ckpt_pos;
    scan.ckpt_epoch = ckpt_epoch;
    let end = scan.run(&segments, from).await?;
    if end < ckpt_pos {
        // Only a rebuild scans before the checkpoint, and everything there was durable when
        // the checkpoint was written: damage there is not a torn tail. Truncating would throw
        // away acknowledged data (and every segment after it), so refuse instead.
        return Err(EngineError::Corrupt {
            path: dir.clone(),
            offset: end,
            reason: "commit log damaged before the checkpoint position",
        });
    }

    // Segments after the end hold nothing valid: forget them, so a second open agrees.
    let stale: Vec<u64> = segments.map.keys().copied().filter(|&s| s > end).collect();
    for s in &stale {
        if let Some(seg) = segments.map.remove(s) {
            tracing::warn!(segment = %seg.path.display(), "removing segment past the end of the log");
            io.remove(seg.path.clone())
                .await
                .map_err(|e| EngineError::io("remove segment", &seg.path, e))?;
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
    if let Some(first) = segments.map.keys().next().copied() {
        for q in scan.queues.values_mut() {
            q.trim_before(first);
        }
    }
    Ok(Recovered {
        // Larger than every epoch on disk, including those of stale entries past `end` (their
        // writers persisted their epoch in a checkpoint before writing them).
        epoch: ckpt_epoch.max(scan.max_epoch) + 1,
        queues: scan.queues,
        producers: scan.producers,
        segments,
        next_pos: end,
        tail,
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
    file.preallocate(size).await?;
    Ok(Rc::new(Segment {
        start,
        size,
        file,
        path,
        modified_ms: Cell::new(now_ms()),
    }))
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
    let size = file
        .size()
        .await
        .map_err(|e| EngineError::io("stat checkpoint", &path, e))?;
    if size > crate::format::checkpoint::MAX_CHECKPOINT_BYTES {
        return Err(EngineError::Corrupt {
            path,
            offset: 0,
            reason: "checkpoint larger than its limit",
        });
    }
    let bytes = file
        .read_at(0, size as usize)
        .await
        .map_err(|e| EngineError::io("read checkpoint", &path, e))?;
    Checkpoint::decode(&bytes)
        .map(Some)
        .map_err(|_| EngineError::Corrupt {
            path,
            offset: 0,
            reason: "checkpoint does not decode",
        })
}

async fn open_segments(
    io: &dyn Storage,
    dir: &Path,
    default_size: u64,
) -> Result<SegmentSet, EngineError> {
    let names = io
        .list_dir(dir.to_path_buf())
        .await
        .map_err(|e| EngineError::io("list shard directory", dir, e))?;
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
        set.map.insert(
            start,
            Rc::new(Segment {
                start,
                size,
                file,
                path,
                modified_ms: Cell::new(modified),
            }),
        );
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
    /// Queues whose index file did not verify: rebuilt from entries before the checkpoint.
    rebuild: HashSet<QueueId>,
    ckpt_pos: u64,
    /// Every entry at or after `ckpt_pos` was written by the run that wrote the checkpoint or
    /// a later one, so its epoch is at least this.
    ckpt_epoch: u64,
    max_epoch: u64,
}

impl Scan {
    async fn from_checkpoint(
        io: &dyn Storage,
        dir: &Path,
        c: &Checkpoint,
    ) -> Result<Scan, EngineError> {
        let mut scan = Scan {
            producers: ProducerTable::from_states(&c.producers, c.max_producer_id),
            max_epoch: c.epoch,
            ..Scan::default()
        };
        for qs in &c.queues {
            let id = QueueId(qs.queue_id);
            let mut q = QueueIndex {
                end_offset: qs.end_offset,
                log_start_offset: qs.log_start_offset,
                deleted: qs.deleted,
                persisted: qs.index_entries,
                persisted_crc: qs.index_crc,
                ..QueueIndex::default()
            };
            if !qs.deleted && qs.index_entries > 0 {
                match load_index(io, dir, qs.queue_id, qs.index_entries, qs.index_crc).await {
                    Ok(entries) => entries.into_iter().for_each(|e| q.push_persisted(e)),
                    Err(reason) => {
                        tracing::warn!(
                            queue = qs.queue_id,
                            reason,
                            "index file unusable; rebuilding it from the log"
                        );
                        q.persisted = 0;
                        q.persisted_crc = 0;
                        scan.rebuild.insert(id);
                    }
                }
            }
            scan.queues.insert(id, q);
        }
        Ok(scan)
    }

    /// Verifies and applies entries from `from` on; returns the log position where the valid
    /// log ends.
    async fn run(&mut self, segments: &SegmentSet, from: u64) -> Result<u64, EngineError> {
        let mut pos = from;
        let mut last_epoch = 0u64;
        let mut win = Window::default();
        while let Some(seg) = segments.find(pos).cloned() {
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
                let q = self.queues.entry(id).or_default();
                if before_ckpt {
                    // The checkpoint already counts this batch; only a rebuilt index needs it.
                    if self.rebuild.contains(&id) && !q.deleted {
                        let end = q.end_offset;
                        q.push(entry);
                        q.end_offset = end;
                    }
                    return Ok(());
                }
                if q.deleted {
                    return Ok(());
                }
                // A CRC-valid entry whose offset does not continue its queue cannot be part of
                // this log (offsets are assigned densely in log order): end the log here.
                if h.base_offset != q.end_offset {
                    return Err("batch offsets are not dense");
                }
                q.push(entry);
                self.producers.record(id, &b, h.base_offset, last);
            }
            EntryKind::QueueDeleted => {
                if !before_ckpt {
                    let q = self.queues.entry(id).or_default();
                    q.deleted = true;
                    q.slots.clear();
                    q.unpersisted.clear();
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

async fn load_index(
    io: &dyn Storage,
    dir: &Path,
    queue: u32,
    count: u64,
    crc: u32,
) -> Result<Vec<IndexEntry>, &'static str> {
    let bytes = count
        .checked_mul(INDEX_ENTRY_LEN as u64)
        .ok_or("entry count overflows")?;
    if bytes > MAX_INDEX_FILE_BYTES {
        return Err("index file larger than its limit");
    }
    let path = index_path(dir, queue);
    let file = io
        .open(path, FileKind::Buffered, false)
        .await
        .map_err(|_| "index file missing")?;
    let data = file
        .read_at(0, bytes as usize)
        .await
        .map_err(|_| "index file unreadable")?;
    decode_file(&data, count, crc).map_err(|_| "index file does not match the checkpoint")
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
