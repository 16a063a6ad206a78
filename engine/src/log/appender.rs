//! The appender: copies entries into block-aligned staging chunks and cuts them into O_DIRECT
//! writes. It performs no I/O itself; group commit (`crate::commit`) issues the writes.
//!
//! ```text
//!  log:   ... | chunk (1 MiB, block aligned) ..................... | next chunk
//!             chunk_pos        cut_mark            next_pos
//!             |== handed to writes ==|== staged, unwritten ==|  free
//! ```
//!
//! Two kinds of write leave here:
//! - a FULL chunk whose bytes were never handed out goes as is, zero-copy, and its buffer comes
//!   back for reuse when the write completes (fresh 1 MiB buffers cost page faults);
//! - anything else (group commit cutting what is staged when the disk is idle, or the rest of a
//!   chunk after such cuts) is copied into an exactly-sized buffer, from the start of the block
//!   holding `cut_mark`, so a block that was written while partly filled is rewritten whole.
//!
//! Copies of 32 KiB and more use streaming stores (`log::stream_copy`): a staged chunk is read
//! by the device, and by the CPU only when a cut copies part of it out.
//!
//! Invariants: `chunk_pos` is block aligned; `chunk_pos <= cut_mark <= next_pos <= chunk end`;
//! bytes before `cut_mark` have been handed to a write. Group commit must not issue a rewrite
//! of a block while an earlier write of it is in flight (in-flight writes of one block may land
//! in either order); [`PendingWrite::partial`] marks the writes that end inside a block.
//! Entries never cross a segment end: [`Appender::seal_segment`] pads the rest.
//!
//! Crash: nothing here is durable; a staged entry that never reached a completed fdatasync is
//! simply absent after recovery, and its append was never acknowledged as `Durable`.

use super::Segment;
use crate::format::entry::{EntryHeader, EntryKind, HEADER_LEN};
use crate::io::{align_down, align_up, IoBuf, Storage};
use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;

/// Size of one staging chunk, hence the largest single write.
pub(crate) const WRITE_CHUNK_BYTES: u64 = 1 << 20;
/// Chunk buffers kept for reuse, at most.
const MAX_FREE_CHUNKS: usize = 16;

/// A write cut from the staging chunks, waiting to be issued.
pub(crate) struct PendingWrite {
    pub seg: Rc<Segment>,
    /// Position within the segment file (block aligned).
    pub file_pos: u64,
    /// Block-aligned bytes to write; may be empty (a marker that only advances positions).
    pub buf: IoBuf,
    /// Log position just past the data this write completes.
    pub data_end: u64,
    /// The write ends inside a block that a later write will rewrite.
    pub partial: bool,
}

pub(crate) struct Appender {
    seg: Rc<Segment>,
    chunk: IoBuf,
    chunk_pos: u64,
    cut_mark: u64,
    next_pos: u64,
    sealed: VecDeque<PendingWrite>,
    free: Vec<IoBuf>,
    /// Log position below which the active segment's blocks are known written (appended,
    /// zero-filled or an earlier lap's: `ZeroAhead::upto`, shared).
    written_upto: Rc<Cell<u64>>,
    /// Whole chunks written zero-copy, and chunk buffers reused (tests and metrics).
    pub zero_copy_chunks: u64,
    pub reused_chunks: u64,
}

impl Appender {
    /// Resumes appending at `next_pos` in `seg`. `tail` holds the bytes already in the log
    /// between the block start `align_down(next_pos)` and `next_pos` (they are rewritten).
    /// `written_upto`: see [`Appender::copy_out`].
    pub fn new(
        io: &dyn Storage,
        seg: Rc<Segment>,
        next_pos: u64,
        tail: &[u8],
        written_upto: Rc<Cell<u64>>,
    ) -> Appender {
        let chunk_pos = align_down(next_pos);
        assert_eq!(tail.len() as u64, next_pos - chunk_pos, "tail block bytes");
        assert!(
            seg.start <= chunk_pos && next_pos <= seg.end(),
            "position outside its segment"
        );
        let mut chunk = io.alloc(chunk_len(&seg, chunk_pos));
        chunk.as_mut_slice()[..tail.len()].copy_from_slice(tail);
        Appender {
            seg,
            chunk,
            chunk_pos,
            cut_mark: next_pos,
            next_pos,
            sealed: VecDeque::new(),
            free: Vec::new(),
            written_upto,
            zero_copy_chunks: 0,
            reused_chunks: 0,
        }
    }

    /// Log position below which every byte has been handed to a write.
    pub fn cut_mark(&self) -> u64 {
        self.cut_mark
    }

    /// Log position of the next entry.
    pub fn next_pos(&self) -> u64 {
        self.next_pos
    }

    pub fn segment(&self) -> &Rc<Segment> {
        &self.seg
    }

    /// Whether an entry of `entry_len` bytes fits in the active segment.
    pub fn fits(&self, entry_len: u64) -> bool {
        self.next_pos + entry_len <= self.seg.end()
    }

    /// Bytes staged in memory and not yet handed to a write (for back-pressure).
    pub fn staged_bytes(&self) -> u64 {
        let sealed: u64 = self.sealed.iter().map(|w| w.buf.len() as u64).sum();
        sealed + (self.next_pos - self.cut_mark)
    }

    /// Copies one entry (header, then the payload parts in order) into the staging chunks.
    /// Returns the entry's log position. The caller checked [`Appender::fits`].
    pub fn push_entry(
        &mut self,
        io: &dyn Storage,
        header: &[u8; HEADER_LEN],
        parts: &[&[u8]],
    ) -> u64 {
        let pos = self.next_pos;
        let len = HEADER_LEN as u64 + parts.iter().map(|p| p.len() as u64).sum::<u64>();
        assert!(
            self.fits(len),
            "entry of {len} bytes at {pos} overflows segment {}",
            self.seg.start
        );
        debug_assert_eq!(
            EntryHeader::encoded_log_pos(header),
            pos,
            "an entry header names the position it is written at"
        );
        self.push(io, header);
        for p in parts {
            self.push(io, p);
        }
        pos
    }

    /// Ends the active segment: pads its rest and stages the final write, whose `data_end` is
    /// the segment end so that positions advance past the gap. Call
    /// [`Appender::start_segment`] next.
    pub fn seal_segment(&mut self, io: &dyn Storage, epoch: u64, now_ms: i64) {
        let end = self.seg.end();
        let room = end - self.next_pos;
        if room >= HEADER_LEN as u64 {
            // Recovery skips to the next segment when it meets this entry.
            let pad = EntryHeader {
                kind: EntryKind::Padding,
                queue_id: 0,
                record_count: 0,
                base_offset: 0,
                log_pos: self.next_pos,
                max_timestamp: 0,
                append_time_ms: now_ms,
                epoch,
                payload_len: (room - HEADER_LEN as u64) as u32,
                crc: 0,
            };
            self.push(io, &pad.encode(&[]));
        }
        if !self.cut_to_sealed(io, true, 0) {
            self.sealed.push_back(PendingWrite {
                seg: self.seg.clone(),
                file_pos: self.chunk_pos - self.seg.start,
                buf: IoBuf::Heap(Vec::new()),
                data_end: end,
                partial: false,
            });
        }
        if let Some(last) = self.sealed.back_mut() {
            last.data_end = end;
            // The next write goes to another file: nothing will rewrite this block.
            last.partial = false;
        }
        // The segment is logically full: the end of the log is its end. A checkpoint taken
        // while the next segment is being created must record this position, not the byte
        // after the padding header (recovery would read the padding's "payload" as the log).
        self.next_pos = end;
        self.cut_mark = end;
    }

    /// Starts appending at the beginning of a fresh segment.
    pub fn start_segment(&mut self, io: &dyn Storage, seg: Rc<Segment>) {
        assert_eq!(seg.start, self.seg.end(), "segments must be contiguous");
        let next = self.new_chunk(io, &seg, seg.start);
        let old = std::mem::replace(&mut self.chunk, next);
        self.recycle(old);
        self.chunk_pos = seg.start;
        self.cut_mark = seg.start;
        self.next_pos = seg.start;
        self.seg = seg;
    }

    /// The oldest write staged by a full chunk or a segment end, if any.
    pub fn take_sealed(&mut self) -> Option<PendingWrite> {
        self.sealed.pop_front()
    }

    /// Cuts a write of the not-yet-written data of the active chunk: whole blocks only, or
    /// everything including a partial last block when `include_partial`. None if nothing new,
    /// or fewer than `min_bytes` new bytes.
    /// The cut may come out as two writes (see [`Appender::copy_out`]): the first is returned,
    /// the second is staged and [`Appender::take_sealed`] hands it out next.
    pub fn cut(
        &mut self,
        io: &dyn Storage,
        include_partial: bool,
        min_bytes: u64,
    ) -> Option<PendingWrite> {
        if self.cut_to_sealed(io, include_partial, min_bytes) {
            self.sealed.pop_front()
        } else {
            None
        }
    }

    /// Like [`Appender::cut`], but stages the write(s) behind any sealed ones. Returns
    /// whether anything was cut.
    fn cut_to_sealed(&mut self, io: &dyn Storage, include_partial: bool, min_bytes: u64) -> bool {
        let c = if include_partial {
            self.next_pos
        } else {
            align_down(self.next_pos)
        };
        if c <= self.cut_mark || c - self.cut_mark < min_bytes {
            return false;
        }
        self.copy_out(io, c);
        self.cut_mark = c;
        true
    }

    /// Takes back the buffer of a completed write for reuse, if it is a whole chunk.
    pub fn recycle(&mut self, buf: IoBuf) {
        if buf.len() as u64 == WRITE_CHUNK_BYTES && self.free.len() < MAX_FREE_CHUNKS {
            self.free.push(buf);
        }
    }

    fn push(&mut self, io: &dyn Storage, mut data: &[u8]) {
        while !data.is_empty() {
            let off = (self.next_pos - self.chunk_pos) as usize;
            let n = (self.chunk.len() - off).min(data.len());
            super::stream_copy::copy(&mut self.chunk.as_mut_slice()[off..off + n], &data[..n]);
            self.next_pos += n as u64;
            data = &data[n..];
            if self.next_pos == self.chunk_pos + self.chunk.len() as u64 {
                self.seal_full_chunk(io);
            }
        }
    }

    /// The chunk is full (it ends on a block boundary): stage it as one large write.
    fn seal_full_chunk(&mut self, io: &dyn Storage) {
        let end = self.next_pos;
        if self.cut_mark < end {
            if self.cut_mark == self.chunk_pos {
                self.zero_copy_chunks += 1;
                let next = self.new_chunk(io, &self.seg.clone(), end);
                self.sealed.push_back(PendingWrite {
                    seg: self.seg.clone(),
                    file_pos: self.chunk_pos - self.seg.start,
                    buf: std::mem::replace(&mut self.chunk, next),
                    data_end: end,
                    partial: false,
                });
            } else {
                // Part of it went out in earlier cuts: copy only the rest.
                self.copy_out(io, end);
                let next = self.new_chunk(io, &self.seg.clone(), end);
                let old = std::mem::replace(&mut self.chunk, next);
                self.recycle(old);
            }
        } else {
            let next = self.new_chunk(io, &self.seg.clone(), end);
            let old = std::mem::replace(&mut self.chunk, next);
            self.recycle(old);
        }
        self.chunk_pos = end;
        self.cut_mark = end;
    }

    /// Stages the write(s) of `[align_down(cut_mark), c)` copied out of the active chunk,
    /// zero-padded to the block end.
    ///
    /// When the block holding `cut_mark` was already written partly filled and the cut
    /// reaches unwritten (fallocated) blocks, its rewrite goes out as a write of its own, and
    /// the rest as a second write from the next block. Why: on ext4 a direct write whose range
    /// holds written blocks followed by unwritten ones needs the inode lock exclusively, so
    /// io_uring's non-blocking attempt fails and the write is punted to an io-wq worker, where
    /// writes to one file run one at a time (measured: 268 of 291 such writes punted, 3 of 647
    /// others; kernel-notes/fdatasync-and-group-commit.md). A block of its own is a plain
    /// overwrite, and a write starting at a block boundary in unwritten space is one extent:
    /// both stay inline. Where every block of the cut is written already (below
    /// `written_upto`: a recycled or zero-filled segment, the steady state of a busy log) the
    /// whole cut is one plain overwrite, and splitting it would only cost the device one more
    /// request (measured: 16 KiB Durable closed loop in the recycling steady state, one write
    /// instead of two per cut: p50 0.93x, MB/s 1.07-1.19x; benches/README.md, session 9).
    fn copy_out(&mut self, io: &dyn Storage, c: u64) {
        let from = align_down(self.cut_mark);
        let rewrite_end = from + crate::io::BLOCK_BYTES;
        let reaches_unwritten = align_up(c) > self.written_upto.get();
        if from < self.cut_mark && c > rewrite_end && reaches_unwritten {
            let head = self.copy_range(io, from, rewrite_end);
            self.sealed.push_back(head);
            let rest = self.copy_range(io, rewrite_end, c);
            self.sealed.push_back(rest);
        } else {
            let w = self.copy_range(io, from, c);
            self.sealed.push_back(w);
        }
    }

    /// A write of `[from, c)` (`from` block aligned) copied out of the active chunk,
    /// zero-padded to the block end.
    fn copy_range(&self, io: &dyn Storage, from: u64, c: u64) -> PendingWrite {
        let to = align_up(c);
        let mut buf = io.alloc((to - from) as usize);
        let src =
            &self.chunk.as_slice()[(from - self.chunk_pos) as usize..(c - self.chunk_pos) as usize];
        let out = buf.as_mut_slice();
        super::stream_copy::copy(&mut out[..src.len()], src);
        // Buffers are not zeroed when allocated: a reader of the block must see zeros after
        // the data, not leftovers of freed memory.
        out[src.len()..].fill(0);
        PendingWrite {
            seg: self.seg.clone(),
            file_pos: from - self.seg.start,
            buf,
            data_end: c,
            partial: c % crate::io::BLOCK_BYTES != 0,
        }
    }

    fn new_chunk(&mut self, io: &dyn Storage, seg: &Segment, pos: u64) -> IoBuf {
        let len = chunk_len(seg, pos);
        if len as u64 == WRITE_CHUNK_BYTES {
            if let Some(b) = self.free.pop() {
                self.reused_chunks += 1;
                return b;
            }
        }
        io.alloc(len)
    }
}

/// Length of a staging chunk starting at `pos`: a chunk, or less at the segment end.
fn chunk_len(seg: &Segment, pos: u64) -> usize {
    WRITE_CHUNK_BYTES.min(seg.end() - pos) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{FileKind, MemStorage, BLOCK_BYTES};

    fn seg(io: &MemStorage, start: u64, size: u64) -> Rc<Segment> {
        let file = futures_lite::future::block_on(io.open(
            format!("/s/{start}").into(),
            FileKind::Direct,
            true,
        ))
        .unwrap();
        Segment::new(start, size, file, format!("/s/{start}").into(), 0)
    }

    /// The header of a batch entry of `len` payload bytes written at log position `pos`.
    fn header(pos: u64, len: u32) -> [u8; HEADER_LEN] {
        EntryHeader {
            kind: EntryKind::Batch,
            queue_id: 1,
            record_count: 1,
            base_offset: 0,
            log_pos: pos,
            max_timestamp: 0,
            append_time_ms: 0,
            epoch: 1,
            payload_len: len,
            crc: 0,
        }
        .encode(&vec![7; len as usize])
    }

    /// Every write of one cut: the one `cut` returns, then any it staged.
    fn cut_all(io: &MemStorage, a: &mut Appender) -> Vec<PendingWrite> {
        let mut ws: Vec<_> = a.cut(io, true, 0).into_iter().collect();
        while let Some(w) = a.take_sealed() {
            ws.push(w);
        }
        ws
    }

    /// Applying every cut write, in order, to a byte image reproduces the appended stream, and
    /// a partial block is carried into (and rewritten by) the next write, alone when the
    /// write reaches past it into unwritten blocks (so that it never spans written and
    /// unwritten blocks), with the rest when every block is written already.
    #[test]
    fn cuts_cover_the_stream_and_rewrite_partial_blocks() {
        for written in [false, true] {
            cuts_cover_the_stream(written);
        }
    }

    fn cuts_cover_the_stream(written: bool) {
        let io = MemStorage::new();
        let s = seg(&io, 0, 64 * BLOCK_BYTES);
        let upto = Rc::new(Cell::new(if written { s.end() } else { 0 }));
        let mut a = Appender::new(&io, s, 0, &[], upto);
        let mut expect = Vec::new();
        let mut image = vec![0u8; 64 * BLOCK_BYTES as usize];
        for (i, len) in [100u32, 5000, 10, 3000, 9000].into_iter().enumerate() {
            let h = header(a.next_pos(), len);
            let payload = vec![i as u8; len as usize];
            let pos = a.push_entry(&io, &h, &[&payload]);
            assert_eq!(pos, expect.len() as u64);
            let cut_mark = expect.len() as u64;
            expect.extend_from_slice(&h);
            expect.extend_from_slice(&payload);
            let ws = cut_all(&io, &mut a);
            let last = ws.last().expect("something to write");
            assert_eq!(last.data_end, expect.len() as u64);
            assert_eq!(last.partial, expect.len() as u64 % BLOCK_BYTES != 0);
            // A partly written block is rewritten alone when the cut reaches past it.
            let rewrites = cut_mark % BLOCK_BYTES != 0;
            let past = expect.len() as u64 > align_down(cut_mark) + BLOCK_BYTES;
            let alone = rewrites && past && !written;
            assert_eq!(
                ws.len(),
                if alone { 2 } else { 1 },
                "cut {i}, written {written}"
            );
            let mut prev_end = align_down(cut_mark);
            for w in &ws {
                assert_eq!(w.file_pos, prev_end, "writes are contiguous");
                assert_eq!(w.buf.len() as u64 % BLOCK_BYTES, 0);
                assert!(!w.partial || w.data_end == expect.len() as u64);
                prev_end = w.file_pos + w.buf.len() as u64;
                image[w.file_pos as usize..w.file_pos as usize + w.buf.len()]
                    .copy_from_slice(w.buf.as_slice());
            }
            assert_eq!(&image[..expect.len()], &expect[..]);
        }
        assert!(a.cut(&io, true, 0).is_none(), "nothing new to write");
    }

    #[test]
    fn whole_block_cut_keeps_the_partial_tail_staged() {
        let io = MemStorage::new();
        let mut a = Appender::new(&io, seg(&io, 0, 64 * BLOCK_BYTES), 0, &[], Rc::default());
        a.push_entry(&io, &header(0, 5000), &[&vec![1; 5000]]);
        let w = a.cut(&io, false, 0).unwrap();
        assert_eq!((w.buf.len(), w.data_end, w.partial), (4096, 4096, false));
        assert_eq!(w.file_pos, 0);
        assert_eq!(a.staged_bytes(), 5064 - 4096);
        assert!(a.cut(&io, false, 0).is_none());
    }

    #[test]
    fn full_buffers_are_sealed_and_segments_padded() {
        let io = MemStorage::new();
        let size = WRITE_CHUNK_BYTES * 3;
        let mut a = Appender::new(&io, seg(&io, 0, size), 0, &[], Rc::default());
        let big = vec![3u8; (WRITE_CHUNK_BYTES + 10) as usize];
        a.push_entry(&io, &header(0, big.len() as u32), &[&big]);
        let w = a.take_sealed().unwrap();
        assert_eq!(w.buf.len() as u64, WRITE_CHUNK_BYTES);
        assert!(a.take_sealed().is_none());
        a.seal_segment(&io, 1, 0);
        let last = a.take_sealed().unwrap();
        assert_eq!(last.data_end, size);
        // The padding header sits right after the entry.
        let off = (WRITE_CHUNK_BYTES + 10 + 64 - WRITE_CHUNK_BYTES) as usize;
        let pad = EntryHeader::decode(&last.buf.as_slice()[off..]).unwrap();
        assert_eq!(pad.kind, EntryKind::Padding);
        assert_eq!(pad.entry_len(), size - (WRITE_CHUNK_BYTES + 10 + 64));
        assert_eq!(
            a.next_pos(),
            size,
            "a sealed segment ends the log at its end"
        );
        assert_eq!(a.staged_bytes(), 0);
        assert!(!a.fits(1));
        a.start_segment(&io, seg(&io, size, size));
        assert_eq!(a.next_pos(), size);
    }
}
