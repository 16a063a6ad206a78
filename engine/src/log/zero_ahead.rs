//! Zero-filling the active segment ahead of the write head while the log is quiet, so that the
//! appends that follow overwrite written blocks instead of converting fallocated ones.
//!
//! Why: on ext4 an O_DIRECT write into fallocated (unwritten) blocks converts their extents at
//! completion, and every fdatasync after it writes that metadata before flushing the device;
//! an overwrite of written blocks changes no metadata, so its fdatasync is the flush alone.
//! Measured here (16 KiB Durable appends at a fixed 500 MB/s into a segment zero-filled
//! beforehand, against a fallocated one; benches/README.md, "Session 5 engine pass"): write
//! p50 246 -> 101 us, fdatasync p50 362 -> 104 us, append p50 / p99 929 / 2030 -> 309 / 1173
//! us. The zeros cost the device as much as the data they precede, and zeroing while appends
//! run made the latency worse (`log::prepare`'s docs), so this task writes only once the log
//! has been quiet for [`ZERO_AHEAD_AFTER_QUIET`]: no append write, fdatasync or staged data,
//! and neither the written position nor the backlog reads moved for that long. A broker that
//! has been idle for a moment (just started, between bursts) takes its next appends on written
//! blocks; one under constant load writes into fallocated space as before. `log::prepare`
//! zero-fills the next segment the same way (while the log is idle) before the roll reaches it.
//!
//! Ordering hazard: a zero write in flight must not land after an append's write of the same
//! blocks. Zero writes start at or past `align_up(next_pos)` while nothing is staged, one at a
//! time, and while one is in flight group commit issues no write once the staged data reaches
//! into it (`commit::GroupCommit::zero_write_from`, checked in `Inner::pump`).
//!
//! Durability: nothing to promise. Bytes past the end of the log may hold anything
//! (engine/FORMAT.md); recovery reads zeros as it reads unwritten blocks. Each zero write is
//! followed by an fdatasync of the segment (so the first append after the zeroing does not pay
//! for it), which joins group commit's chain of syncs: a data sync started while it runs
//! counts only once it has succeeded, since it may have taken the extent metadata of blocks
//! the data was written to. A failed zero write or fdatasync poisons the shard: it is I/O on
//! the active log file, and an fsync is never retried.
//!
//! After a restart the file says how far it is written (`StorageFile::unwritten_from`: ext4
//! reports unwritten extents as holes), and zeroing resumes from there.

use crate::commit::Event;
use crate::io::{align_up, slow, IoBuf, Storage};
use crate::log::prepare::ZERO_CHUNK_BYTES;
use crate::shard::{live, Inner};
use std::cell::Cell;
use std::io;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

/// How long the log must have been quiet before a zero write is issued.
pub(crate) const ZERO_AHEAD_AFTER_QUIET: Duration = Duration::from_millis(100);
/// How often the task looks while it waits for quiet.
pub(crate) const QUIET_POLL: Duration = Duration::from_millis(10);
/// How often it looks for a new active segment once the active one is zero-filled.
const DONE_POLL: Duration = Duration::from_secs(1);

/// The shard's zero-ahead state (in `Inner`).
#[derive(Default)]
pub(crate) struct ZeroAhead {
    /// `[from, upto)`: log positions of the active segment that were zero-filled, and made
    /// durably so, before any append wrote there (appends into them convert no extent); below
    /// `upto` the segment is known written. `upto` is shared with the appender, which writes a
    /// rewrite of a partly written block on its own only where unwritten blocks follow
    /// (`Appender::copy_out`).
    pub from: Cell<u64>,
    pub upto: Rc<Cell<u64>>,
    /// Bytes zero-filled ahead of the log so far (tests and metrics).
    pub bytes: Cell<u64>,
    /// Notified when a zero write completes.
    pub done: Event,
}

impl ZeroAhead {
    /// The state of a shard whose log ends at `head` in its active segment `seg`: blocks past
    /// the head that the file reports written (zero-filled before a restart) are not zeroed
    /// again.
    /// Those blocks' extent conversions may not be durable yet (a restart after kill -9 finds
    /// the kernel's state, not the disk's), so the segment is fdatasynced first when there are
    /// any.
    pub async fn resumed(seg: &super::Segment, head: u64) -> io::Result<ZeroAhead> {
        let from = align_up(head);
        let upto = seg
            .file
            .unwritten_from(from - seg.start)
            .map(|p| seg.start + p.min(seg.size))
            .filter(|&u| u >= from)
            .unwrap_or(from);
        if upto > from {
            seg.file.fdatasync().await?;
        }
        let za = ZeroAhead::default();
        za.restart(from, upto);
        Ok(za)
    }

    /// Resets the state for a new active segment, zero-filled over `[from, upto)`.
    pub fn restart(&self, from: u64, upto: u64) {
        self.from.set(from);
        self.upto.set(upto);
    }
}

/// What the task does next.
enum Step {
    /// Write zeros over `[from, to)` (log positions) of the active segment.
    Zero {
        seg: Rc<super::Segment>,
        from: u64,
        to: u64,
    },
    /// The log is not quiet (yet).
    Wait,
    /// The active segment (starting at `segment`) is written to its end; `room`: the log has
    /// not reached that end (the zeros are what the appends will land on).
    Done { segment: u64, room: bool },
}

/// Whether a shard's log has been quiet for [`ZERO_AHEAD_AFTER_QUIET`], as far as the
/// caller's looks tell (it looks often enough: at every step of a zeroing task).
#[derive(Default)]
pub(crate) struct QuietWatch(Cell<Option<Quiet>>);

/// The log's activity as last seen, and since when it has not changed.
#[derive(Clone, Copy)]
struct Quiet {
    written: u64,
    reads: u64,
    since: Instant,
}

impl QuietWatch {
    /// True once no append write, fdatasync or staged data was seen, and neither the written
    /// position nor the backlog reads moved, for [`ZERO_AHEAD_AFTER_QUIET`].
    pub fn quiet(&self, inner: &Inner) -> bool {
        let now = Instant::now();
        let (written, reads) = (inner.gc.written(), inner.backlog_reads.get());
        match self.0.get() {
            Some(q) if q.written == written && q.reads == reads && inner.log_idle() => {
                now.duration_since(q.since) >= ZERO_AHEAD_AFTER_QUIET
            }
            _ => {
                self.0.set(Some(Quiet {
                    written,
                    reads,
                    since: now,
                }));
                false
            }
        }
    }
}

/// Spawns the zero-ahead task of `inner` (only on storage where written extents pay).
pub(crate) fn spawn(inner: &Rc<Inner>) {
    if !inner.cfg.zero_ahead || !inner.io.prefers_written_extents() {
        return;
    }
    let weak = Rc::downgrade(inner);
    // Detached, not cancelled by `stop`: a zero write in flight must complete before the
    // shard closes its files (`Inner::close_files` waits for it). Holds the shard weakly
    // between writes, so a dropped shard ends it.
    glommio::spawn_local(run(weak)).detach();
}

async fn run(weak: Weak<Inner>) {
    let quiet = QuietWatch::default();
    let mut buf: Option<IoBuf> = None;
    // The last segment said to be zero-filled (logged once per segment: benchmark scripts
    // wait for the line).
    let mut announced = None;
    loop {
        let step = match live(&weak) {
            Some(inner) => inner.zero_ahead_step(&quiet),
            None => return,
        };
        let (seg, from, to) = match step {
            Step::Zero { seg, from, to } => (seg, from, to),
            Step::Wait => {
                glommio::timer::sleep(QUIET_POLL).await;
                continue;
            }
            Step::Done { segment, room } => {
                if room && announced != Some(segment) {
                    announced = Some(segment);
                    tracing::info!(segment, "active segment zero-filled ahead of the log");
                }
                buf = None;
                glommio::timer::sleep(DONE_POLL).await;
                continue;
            }
        };
        let Some(inner) = live(&weak) else { return };
        let b = zero_buf(&*inner.io, buf.take(), (to - from) as usize);
        // Set before the write is submitted (no await in between): from now on the pump
        // holds back any write reaching into [from, to).
        inner.gc.set_zero_write_from(Some(from));
        drop(inner);
        let pos = from - seg.start;
        let r = slow::watch("zero write", &seg.path, pos, seg.file.write_at(b, pos)).await;
        let Some(inner) = weak.upgrade() else { return };
        inner.gc.set_zero_write_from(None);
        inner.zero_ahead.done.notify();
        inner.gc.kick.notify();
        match r {
            Ok(back) => buf = back,
            Err(e) => {
                let cause = format!(
                    "zero-filling {} at {} failed: {e}",
                    seg.path.display(),
                    from - seg.start
                );
                tracing::error!(%cause, "poisoning the shard");
                inner.gc.poison(cause);
                return;
            }
        }
        // Made durable at once, while the log is still quiet: otherwise the first group-commit
        // fdatasync after the zeroing pays for it (the extent conversions, and the device
        // flushing every zero still in its volatile cache: open-loop p99 ~30 ms at 500 MB/s of
        // 16 KiB Durable appends without this sync, benches/README.md, session 6). A sync in
        // group commit's chain (`GroupCommit::begin_background_sync`): a data sync that starts
        // while it runs counts only after it.
        let id = inner.gc.begin_background_sync();
        drop(inner);
        let r = slow::watch("fdatasync", &seg.path, 0, seg.file.fdatasync()).await;
        let r = r.map_err(|e| {
            format!(
                "fdatasync of {} after zero-filling failed: {e}",
                seg.path.display()
            )
        });
        let Some(inner) = weak.upgrade() else { return };
        let failed = r.is_err();
        inner.gc.on_sync_done(id, r);
        if failed {
            return;
        }
        let za = &inner.zero_ahead;
        za.bytes.set(za.bytes.get() + (to - from));
        if inner.state.borrow().appender.segment().start == seg.start {
            if from != za.upto.get() {
                // Appends went past the zeroed range meanwhile: a new range starts here.
                za.from.set(from);
            }
            za.upto.set(to);
        }
    }
}

/// A buffer of `len` zeros: `reuse` (a zero buffer a write handed back) when it has that
/// length, else a fresh one.
pub(crate) fn zero_buf(io: &dyn Storage, reuse: Option<IoBuf>, len: usize) -> IoBuf {
    match reuse {
        Some(b) if b.len() == len => b,
        _ => {
            // Not zeroed by `alloc`.
            let mut b = io.alloc(len);
            b.as_mut_slice().fill(0);
            b
        }
    }
}

impl Inner {
    /// The next zero-ahead step (`quiet` looks at the log once).
    fn zero_ahead_step(&self, quiet: &QuietWatch) -> Step {
        let (seg, head) = {
            let st = self.state.borrow();
            (st.appender.segment().clone(), st.appender.next_pos())
        };
        let from = self.zero_ahead.upto.get().max(align_up(head));
        if from >= seg.end() {
            return Step::Done {
                segment: seg.start,
                room: head < seg.end(),
            };
        }
        if !quiet.quiet(self) {
            return Step::Wait;
        }
        // Whole zeroing chunks of the file from the first boundary on: the device sees the
        // same request shape as the appender's chunk writes.
        let file_from = from - seg.start;
        let file_to = ((file_from / ZERO_CHUNK_BYTES + 1) * ZERO_CHUNK_BYTES).min(seg.size);
        Step::Zero {
            to: seg.start + file_to,
            from,
            seg,
        }
    }

    /// Whether the log range `[a, b)` lies in blocks zero-filled (durably) before any append
    /// wrote them: a sync of it has no extent metadata to write, so no other sync can take
    /// that metadata from it (commit.rs, "Exposed syncs").
    pub(crate) fn in_zeroed_blocks(&self, a: u64, b: u64) -> bool {
        let za = &self.zero_ahead;
        za.from.get() <= a && b <= za.upto.get()
    }

    /// Waits until no zero-ahead write is in flight (the shard is stopped: none starts after).
    pub(crate) async fn zero_ahead_settled(&self) {
        loop {
            let listen = self.zero_ahead.done.listen();
            if self.gc.zero_write_from().is_none() {
                return;
            }
            listen.await;
        }
    }
}
