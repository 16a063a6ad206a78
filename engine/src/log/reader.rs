//! Reads stored batches back from segment files with O_DIRECT, and verifies them: the
//! `direct` backlog-read mode ([`crate::BacklogRead::Direct`]); `readahead` reads whole chunks
//! instead (`log::readahead`) and shares [`check_entry`].
//!
//! A read covers the aligned range around one or more entries that lie close together in the
//! log (one I/O for a run of a queue's batches), then checks each entry's header and CRC
//! before handing out its batch as a zero-copy slice of the read buffer. A mismatch is
//! reported as [`EngineError::Corrupt`], never served.

use super::readahead::read_entries_ahead;
use super::Segment;
use crate::format::entry::{verify_crc, EntryHeader, EntryKind, HEADER_LEN};
use crate::io::{align_down, align_up};
use crate::shard::Inner;
use crate::{BacklogRead, EngineError, Offset, QueueId};
use bytes::Bytes;
use std::rc::Rc;

impl Inner {
    /// Reads the given entries of `queue` (not in the tail cache; all in `seg`, in log
    /// order) by the configured [`BacklogRead`] mode. Readahead may return a prefix of them
    /// (never none). A read that failed because retention deleted the segment meanwhile is
    /// reported as the offset being out of range, as it would be if the read came later.
    pub(crate) async fn read_backlog(
        self: &Rc<Self>,
        queue: QueueId,
        from: Offset,
        seg: &Rc<Segment>,
        locs: &[EntryLoc],
    ) -> Result<Vec<Bytes>, EngineError> {
        let got = match self.cfg.backlog_read {
            // Sendfile mode reads (batches near the tail, `Shard::read`) as readahead does.
            BacklogRead::Readahead | BacklogRead::Sendfile => {
                let log = Rc::downgrade(self);
                read_entries_ahead(&self.chunks, &log, seg, locs, self.gc.written()).await
            }
            BacklogRead::Direct => read_entries(seg, locs).await,
        };
        match got {
            Err(EngineError::Io { .. })
                if !self.state.borrow().segments.map.contains_key(&seg.start) =>
            {
                Err(self.out_of_range(queue, from))
            }
            other => other,
        }
    }
}

/// Entries further apart than this are read with separate I/Os.
pub(crate) const MAX_READ_GAP_BYTES: u64 = 64 << 10;
/// Largest single read issued for a run of entries.
pub(crate) const MAX_READ_BYTES: u64 = 16 << 20;

/// Where one wanted entry lies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryLoc {
    pub queue_id: u32,
    pub base_offset: u64,
    pub log_pos: u64,
    pub entry_len: u32,
}

/// Reads issued at once by one call, at most (a queue's batches are interleaved with other
/// queues' in the log, so a fetch of one queue is often many small reads; one at a time they
/// ran at ~200 MB/s here).
pub(crate) const MAX_READS_IN_FLIGHT: usize = 16;

/// Reads the given entries (all in `seg`, in log order) and returns their batches.
pub(crate) async fn read_entries(
    seg: &Rc<Segment>,
    locs: &[EntryLoc],
) -> Result<Vec<Bytes>, EngineError> {
    // Group entries that lie close together into one read each.
    let mut runs: Vec<Vec<EntryLoc>> = Vec::new();
    for loc in locs {
        let joins = runs
            .last()
            .and_then(|r| r.first().zip(r.last()))
            .is_some_and(|(first, prev)| {
                let prev_end = prev.log_pos + u64::from(prev.entry_len);
                let end = loc.log_pos + u64::from(loc.entry_len);
                loc.log_pos <= prev_end + MAX_READ_GAP_BYTES
                    && end - first.log_pos <= MAX_READ_BYTES
            });
        match runs.last_mut() {
            Some(r) if joins => r.push(*loc),
            _ => runs.push(vec![*loc]),
        }
    }
    let mut out = Vec::with_capacity(locs.len());
    for wave in runs.chunks(MAX_READS_IN_FLIGHT) {
        let tasks: Vec<_> = wave
            .iter()
            .map(|run| {
                let (seg, run) = (seg.clone(), run.clone());
                glommio::spawn_local(async move {
                    let mut got = Vec::with_capacity(run.len());
                    read_run(&seg, &run, &mut got).await.map(|()| got)
                })
            })
            .collect();
        for t in tasks {
            out.extend(t.await?);
        }
    }
    Ok(out)
}

async fn read_run(
    seg: &Segment,
    run: &[EntryLoc],
    out: &mut Vec<Bytes>,
) -> Result<(), EngineError> {
    let first = run[0].log_pos - seg.start;
    let last = run[run.len() - 1];
    let end = last.log_pos + u64::from(last.entry_len) - seg.start;
    let start = align_down(first);
    let len = align_up(end) - start;
    let data = seg
        .file
        .read_at(start, len as usize)
        .await
        .map_err(|e| EngineError::io("read segment", &seg.path, e))?;
    let data = Bytes::from(data);
    for loc in run {
        let at = (loc.log_pos - seg.start - start) as usize;
        out.push(check_entry(seg, &data, at, loc)?);
    }
    Ok(())
}

/// Verifies the entry at `data[at..]` is the one the index promised and returns its batch.
pub(crate) fn check_entry(
    seg: &Segment,
    data: &Bytes,
    at: usize,
    loc: &EntryLoc,
) -> Result<Bytes, EngineError> {
    let corrupt = |reason| EngineError::Corrupt {
        path: seg.path.clone(),
        offset: loc.log_pos - seg.start,
        reason,
    };
    let end = at + loc.entry_len as usize;
    if data.len() < end {
        return Err(corrupt("segment shorter than the indexed entry"));
    }
    let h = EntryHeader::decode(&data[at..]).map_err(|_| corrupt("bad entry header"))?;
    if h.kind != EntryKind::Batch
        || h.queue_id != loc.queue_id
        || h.base_offset != loc.base_offset
        || h.entry_len() != u64::from(loc.entry_len)
    {
        return Err(corrupt("entry does not match the queue index"));
    }
    let payload = &data[at + HEADER_LEN..end];
    verify_crc(&data[at..], &h, payload).map_err(|_| corrupt("entry CRC mismatch"))?;
    Ok(data.slice(at + HEADER_LEN..end))
}
