//! Rolling to the next segment, and preparing that segment ahead of time: created under a
//! temporary name and preallocated as soon as the active segment is half full, renamed into
//! place when the log rolls, and zero-filled in between while the log is quiet.
//!
//! Why create ahead: creating a file costs milliseconds here (ext4 without a journal scans
//! the inode bitmap past recently deleted inodes, `recently_deleted` in the profile), and a
//! roll holds the append lock; renaming a ready file does not scan.
//!
//! Why zero-fill, and only when quiet: on ext4, O_DIRECT writes into fallocated (unwritten)
//! extents take the inode lock exclusively and convert extents at completion; overwrites of
//! written blocks do neither (measured 1.3-2x faster here; `log::zero_ahead` has the
//! latency figures). But zeroing writes every byte of the segment once more: paced against
//! the append rate (the earlier design) it doubled the bytes written during a saturating run,
//! and 256 KiB Written appends went from 1137-1501 MB/s to 1849-1938 MB/s in back-to-back
//! runs once it stopped competing (2026-11-21, benches/README.md). Zeroing whenever fewer than
//! 4 writes were in flight, or ahead of the write head while appends ran, made 16 KiB Durable
//! latency at half load worse (session 5: p99 1.5-1.7 -> 2.9-9.1 ms and 2.2 -> 3.6 ms): the
//! zeros cost the device as much as the data they precede, and every zero still in the
//! device's volatile cache is flushed by the next append's fdatasync. So a zeroing write is
//! issued only once the log has been quiet for a moment (`log::zero_ahead::QuietWatch`, the
//! same rule as for the active segment, which goes first), each is made durable by an
//! fdatasync of this file at once, and a busy log simply rolls onto a partly zeroed (still
//! fully preallocated) segment.
//!
//! A spare left by retention (`log::recycle`) is taken instead of a new file when there is
//! one: renamed to the temporary name, it needs no preallocation, and the blocks it reports
//! written (all of them, but for the tail of its last lap) are not zeroed again.
//!
//! Crash: a `.prep` file is not part of the log; recovery deletes any it finds. A segment's
//! bytes past the log end may hold anything (FORMAT.md), so zeros, unwritten blocks or a mix
//! are all fine. A failed preparation is not a durability event (no acknowledged data lives
//! there): the file is dropped and the roll falls back to a plain fallocated segment.
//! Ordering hazard handled: a zeroing write still in flight when the roll takes the file could
//! land after the appender's first write of the same blocks, so the roll waits for it.

use super::{recycle, Segment, SEGMENT_SUFFIX};
use crate::commit::{DirSync, Event};
use crate::io::{slow, Storage};
use crate::log::recovery::now_ms;
use crate::log::recovery::{create_segment, open_preallocated};
use crate::log::zero_ahead::{zero_buf, QuietWatch, QUIET_POLL};
use crate::shard::{live, Inner};
use crate::EngineError;
use std::cell::Cell;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};

/// Suffix of segments being prepared.
pub(crate) const PREP_SUFFIX: &str = ".prep";
/// Size of each zeroing write: an append arriving meanwhile waits for at most one of them.
pub(crate) const ZERO_CHUNK_BYTES: u64 = 1 << 20;

/// The next segment, created ahead of the roll (see the module docs).
pub(crate) struct PreparedSegment {
    pub seg: Rc<Segment>,
    /// Set by the roll when it takes the file: zeroing stops.
    taken: Cell<bool>,
    /// A zeroing write or the final fdatasync of this file is in flight.
    io_inflight: Cell<bool>,
    /// A preparation I/O failed: the file must not become part of the log.
    failed: Cell<bool>,
    /// Bytes from the file's beginning known durably written: zero-filled here, or written
    /// while the file was an earlier segment (`log::recycle`).
    pub written: Cell<u64>,
    /// The file is a recycled segment (tests and metrics).
    recycled: bool,
    /// Notified when an I/O of the preparation completes.
    io_done: Event,
}

impl PreparedSegment {
    /// Every block is written: appends into it convert no extent.
    pub fn fully_written(&self) -> bool {
        self.written.get() >= self.seg.size
    }

    /// Stops the preparation and waits until none of its I/O is in flight: the file is the
    /// caller's from then on (to append to, or to close).
    pub async fn take(&self) {
        self.taken.set(true);
        loop {
            let listen = self.io_done.listen();
            if !self.io_inflight.get() {
                return;
            }
            listen.await;
        }
    }
}

impl Inner {
    /// Ends the active segment and starts the next. Called with the append lock held.
    pub(crate) async fn roll(self: &Rc<Self>) -> Result<(), EngineError> {
        let started = std::time::Instant::now();
        let start = {
            let mut st = self.state.borrow_mut();
            st.appender.seal_segment(&*self.io, self.epoch, now_ms());
            st.appender.segment().end()
        };
        self.gc.kick.notify();
        let dir = self.cfg.dir.clone();
        let prepared = self.next_segment.borrow_mut().take();
        let prepared = match prepared {
            Some(p) => {
                // No zeroing write may be in flight once the appender writes this file.
                p.take().await;
                if p.failed.get() || p.seg.start != start {
                    // A wrongly placed segment (cannot happen: a preparation is only kept for
                    // the segment after the active one) or a failed one never joins the log.
                    p.seg.close_quietly().await;
                    let _ = self.io.remove(p.seg.path.clone()).await;
                    None
                } else {
                    Some(p)
                }
            }
            None => None,
        };
        let created = async {
            let seg = match prepared {
                // Created ahead of time: only its name changes. The rename is made durable
                // by the directory sync below, before any data of the segment is acknowledged.
                Some(p) => {
                    self.prepared_rolls.set(self.prepared_rolls.get() + 1);
                    if p.fully_written() {
                        self.zeroed_rolls.set(self.zeroed_rolls.get() + 1);
                    }
                    if p.recycled {
                        self.recycled_rolls.set(self.recycled_rolls.get() + 1);
                    }
                    let path = crate::log::segment_path(&dir, start);
                    self.io
                        .rename(p.seg.path.clone(), path.clone())
                        .await
                        .map_err(|e| EngineError::io("rename prepared segment", &p.seg.path, e))?;
                    let seg = Segment::new(start, p.seg.size, p.seg.file.clone(), path, now_ms());
                    let how = if p.recycled { "recycled" } else { "prepared" };
                    (seg, p.written.get().min(p.seg.size), how)
                }
                None => (
                    create_segment(&*self.io, &dir, start, self.cfg.segment_size_bytes).await?,
                    0,
                    "created",
                ),
            };
            Ok::<_, EngineError>(seg)
        }
        .await;
        let (seg, written, how) = match created {
            Ok(s) => s,
            Err(e) => {
                // The appender is sealed with nowhere to go: refuse appends until reopened.
                self.gc.poison(e.to_string());
                return Err(e);
            }
        };
        // The new name must be durable before an fdatasync of its data means anything. That
        // directory sync flushes the device, which took ~8 ms per roll with the append lock
        // held (measured: 10% of a 256 KiB Written run), so it runs in the background and
        // every later fdatasync waits for it instead (`commit::DirSync`). Written appends,
        // which promise no durability, go on meanwhile.
        let ds = Rc::new(DirSync::default());
        *self.gc.dir_sync.borrow_mut() = Some(ds.clone());
        let (weak, io) = (Rc::downgrade(self), self.io.clone());
        glommio::spawn_local(async move {
            let r = slow::watch("directory sync", &dir, 0, io.sync_dir(dir.clone()))
                .await
                .map_err(|e| EngineError::io("sync directory", &dir, e).to_string());
            if let (Err(cause), Some(inner)) = (&r, weak.upgrade()) {
                inner.gc.poison(cause.clone());
            }
            ds.complete(r);
        })
        .detach();
        // What the preparation zero-filled, or an earlier lap wrote, appends overwrite
        // (`log::zero_ahead` goes on from there).
        self.zero_ahead.restart(seg.start, seg.start + written);
        let mut st = self.state.borrow_mut();
        st.segments.map.insert(start, seg.clone());
        st.appender.start_segment(&*self.io, seg);
        self.prep_started.set(false);
        // One line per segment (a GiB by default), as Kafka logs its rolls: how long appends
        // waited, and how much of the new file appends will overwrite rather than convert.
        tracing::info!(
            start,
            file = how,
            written_ahead = written,
            took_us = started.elapsed().as_micros() as u64,
            "rolled to a new segment"
        );
        Ok(())
    }

    /// Whether the log has no write, fdatasync or staged data pending: a zeroing write now
    /// takes the disk from nobody.
    pub(crate) fn log_idle(&self) -> bool {
        self.gc.quiescent() && self.state.borrow().appender.staged_bytes() == 0
    }

    /// Starts preparing the segment after the active one once the active one is half full
    /// (short-lived shards, such as tests, never pay for it).
    pub(crate) fn maybe_prepare_next(self: &Rc<Self>) {
        if self.prep_started.get() || !self.io.prefers_written_extents() {
            return;
        }
        let (start, half_full) = {
            let st = self.state.borrow();
            let seg = st.appender.segment();
            (seg.end(), st.appender.next_pos() - seg.start > seg.size / 2)
        };
        if !half_full {
            return;
        }
        self.prep_started.set(true);
        let weak = Rc::downgrade(self);
        let (io, dir, size) = (
            self.io.clone(),
            self.cfg.dir.clone(),
            self.cfg.segment_size_bytes,
        );
        glommio::spawn_local(async move {
            // Still the segment after the active one, on a live shard?
            let current = |weak: &Weak<Inner>| {
                weak.upgrade()
                    .filter(|i| !i.stopped() && i.state.borrow().appender.segment().end() == start)
            };
            let Some(spare) = take_spare(&weak).await else {
                return;
            };
            let (seg, written, recycled) = match prepare_file(&*io, &dir, start, size, spare).await
            {
                Ok(prepared) => prepared,
                Err(e) => {
                    // Not a durability event: no acknowledged data lives in this file.
                    tracing::warn!(error = %e, start, "preparing the next segment failed");
                    let _ = io.remove(prep_path(&dir, start)).await;
                    return;
                }
            };
            let Some(inner) = current(&weak) else {
                // The log rolled before we finished: this file will never be this segment. A
                // recycled one goes back to the spares (its old start names it again).
                seg.close_quietly().await;
                let back = match (recycled, spare, weak.upgrade()) {
                    (true, Some(old), Some(inner)) => {
                        let r = io
                            .rename(seg.path.clone(), recycle::spare_path(&dir, old))
                            .await;
                        r.map(|()| inner.spares.borrow_mut().push(old)).is_ok()
                    }
                    _ => false,
                };
                if !back {
                    let _ = io.remove(seg.path.clone()).await;
                }
                return;
            };
            let p = Rc::new(PreparedSegment {
                seg,
                taken: Cell::new(false),
                io_inflight: Cell::new(false),
                failed: Cell::new(false),
                written: Cell::new(written),
                recycled,
                io_done: Event::default(),
            });
            *inner.next_segment.borrow_mut() = Some(p.clone());
            drop(inner);
            // Held weakly between I/Os: a shard dropped while this task waits (its executor
            // may end then, never to run the task again) must drop, and close, the file.
            let weak_p = Rc::downgrade(&p);
            drop(p);
            let quiet = QuietWatch::default();
            zero_fill_when_quiet(&*io, &weak_p, || {
                let inner = current(&weak)?;
                Some(quiet.quiet(&inner))
            })
            .await;
            let Some(p) = weak_p.upgrade() else { return };
            if p.failed.get() && !p.taken.get() {
                // Not a durability event either; the roll will create a plain segment.
                if let Some(inner) = weak.upgrade() {
                    let mine = inner
                        .next_segment
                        .borrow()
                        .as_ref()
                        .is_some_and(|n| Rc::ptr_eq(n, &p));
                    if mine {
                        inner.next_segment.borrow_mut().take();
                    }
                }
                p.seg.close_quietly().await;
                let _ = io.remove(p.seg.path.clone()).await;
            }
        })
        .detach();
    }
}

/// A spare segment file for the next segment, if recycling has one (`None` inside: create a
/// file); `None` when the shard is gone. Under retention the segments it is about to remove
/// are removed now, so that the roll reuses one of them rather than retention deleting them
/// all on its next periodic pass (one spare per roll is the steady state).
async fn take_spare(weak: &Weak<Inner>) -> Option<Option<u64>> {
    let inner = live(weak)?;
    let recycling = inner.cfg.recycle_segments;
    if recycling && inner.spares.borrow().is_empty() {
        if let Err(e) = inner.enforce_retention().await {
            tracing::warn!(error = %e, "retention before preparing a segment failed");
        }
    }
    // Closed meanwhile: no file operation after the shard's close.
    let inner = live(weak)?;
    let spare = inner.spares.borrow_mut().pop();
    Some(spare)
}

pub(crate) fn prep_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}{SEGMENT_SUFFIX}{PREP_SUFFIX}"))
}

/// The segment that will start at `start`, under its temporary name: the spare that started
/// at `spare` if there is one and it can be reused (`log::recycle`), else a new file,
/// preallocated. Returns it, how many bytes from its beginning are known written, and
/// whether it is a recycled one.
async fn prepare_file(
    io: &dyn Storage,
    dir: &Path,
    start: u64,
    size: u64,
    spare: Option<u64>,
) -> io::Result<(Rc<Segment>, u64, bool)> {
    let to = prep_path(dir, start);
    if let Some(old) = spare {
        match recycle::reuse_spare(io, dir, old, to.clone(), start, size).await {
            Ok((seg, written)) => return Ok((seg, written, true)),
            Err(e) => {
                tracing::warn!(error = %e, start, "reusing a spare segment failed; creating one");
                let _ = io.remove(recycle::spare_path(dir, old)).await;
                let _ = io.remove(to.clone()).await;
            }
        }
    }
    let seg = open_preallocated(io, to, start, size).await?;
    Ok((seg, 0, false))
}

/// Zero-fills `p` front to back, one write at a time, each only when `may_write()` says the
/// log is quiet (`Some(false)`: wait, `None`: stop), and fdatasyncs the file after each write:
/// the zeros then never wait in the device's volatile cache for an append's fdatasync to
/// flush them, and the appender's first fdatasync after the roll has no extent conversion to
/// write. Stops when the roll takes the file, or when `p` is gone. A failure marks `p`
/// failed. Holds `p` only during its own I/Os.
async fn zero_fill_when_quiet(
    io: &dyn Storage,
    weak_p: &Weak<PreparedSegment>,
    may_write: impl Fn() -> Option<bool>,
) {
    let Some(size) = weak_p.upgrade().map(|p| p.seg.size) else {
        return;
    };
    let mut buf: Option<crate::io::IoBuf> = None;
    let Some(mut pos) = weak_p.upgrade().map(|p| p.written.get()) else {
        return;
    };
    while pos < size {
        let Some(p) = weak_p.upgrade().filter(|p| !p.taken.get()) else {
            return;
        };
        match may_write() {
            None => return,
            Some(false) => {
                drop(p);
                glommio::timer::sleep(QUIET_POLL).await;
                continue;
            }
            Some(true) => {}
        }
        let n = (size - pos).min(ZERO_CHUNK_BYTES);
        let b = zero_buf(io, buf.take(), n as usize);
        p.io_inflight.set(true);
        let r = slow::watch("zero write", &p.seg.path, pos, p.seg.file.write_at(b, pos)).await;
        let r = match r {
            Ok(back) => {
                buf = back;
                if p.taken.get() {
                    // The roll waits for us: the appender's own fdatasyncs cover the file now.
                    Ok(())
                } else {
                    slow::watch("fdatasync", &p.seg.path, 0, p.seg.file.fdatasync())
                        .await
                        .map(|()| {
                            pos += n;
                            p.written.set(pos);
                        })
                }
            }
            Err(e) => Err(e),
        };
        p.io_inflight.set(false);
        p.io_done.notify();
        if let Err(e) = r {
            // The file is never used after this: an error reported here must not be one the
            // appender's own fdatasync of the same file would then miss.
            tracing::warn!(error = %e, start = p.seg.start, "zero-filling the next segment failed");
            p.failed.set(true);
            return;
        }
    }
}
