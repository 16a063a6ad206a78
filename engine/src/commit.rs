//! Group commit: appends that arrive together share writes and fdatasyncs, and fdatasyncs
//! overlap so that no write waits for an unrelated sync to finish.
//!
//! ```text
//!  appends ──copy──► staging (appender) ──cut──► writes in flight (≤ MAX_WRITES_IN_FLIGHT)
//!                                                   │ complete, in any order
//!        written = end of the completed prefix ◄────┘ ──► wake `Written` waiters
//!
//!  written ─► fdatasync #n of the segments in [target of #n-1, written)   (≤ MAX_SYNCS_IN_FLIGHT)
//!                 │ complete, in any order
//!                 └─► synced = target of the newest sync whose predecessors all succeeded
//!                                                     ──► wake `Durable` waiters
//! ```
//!
//! Durability contract: a `Written` waiter resolves only when every write up to its entry's
//! end has completed (the data is in the file, not necessarily on stable storage); a `Durable`
//! waiter resolves only after an fdatasync that STARTED after those writes completed has
//! succeeded, and so has every fdatasync started before that one.
//!
//! Pipelined syncs. A sync's `target` is `written` when it starts: it covers exactly the log
//! below that (each fdatasync covers what completed before the call). As soon as completed
//! writes reach the end of a waiting `Durable` entry beyond the newest running sync's target,
//! another sync starts, up to [`MAX_SYNCS_IN_FLIGHT`]; a write never waits for a sync that
//! cannot cover it. A sync that would release no waiter is not started.
//!
//! Why `synced` follows the completed PREFIX of syncs (in start order) rather than the
//! largest target of any completed sync. Sync #n only fdatasyncs the segments holding bytes in
//! `[target(#n-1), target(#n))`: the earlier syncs cover the rest, so #n alone proves nothing
//! below `target(#n-1)` after a roll. Even on one file, two fdatasyncs in flight share the
//! kernel's per-file state: as we read `fsync_buffers_list` (fs/buffer.c, used by ext4
//! without a journal), a dirty metadata buffer (the extent conversion of a fallocated segment)
//! that #n-1 has taken off the inode's list is written and waited for by #n-1 only, and a
//! write-back error is reported to whichever caller collects it first. So #n returning
//! early, or successfully, says nothing until every earlier sync has succeeded too; then
//! together they cover every segment and every buffer below `target(#n)`. Measured here
//! (kernel-notes/fdatasync-and-group-commit.md): with 2-4 write+fdatasync loops on one file,
//! 10-20% of fdatasyncs complete before an earlier-started one; they then wait for it a median
//! of 1-60 us, and milliseconds only when the earlier one is stuck, which is exactly when the
//! later one's early success is not to be trusted.
//!
//! Exposed syncs. The prefix rule protects a later sync from an earlier one, not an earlier
//! one from a later one, and the buffer list is taken by whichever fdatasync reaches it first,
//! not by the first started: io_uring runs each fdatasync on its own io-wq worker. So sync
//! #n-1 can find the list empty because #n, started later, took the extent conversions of
//! #n-1's own range, and return before they are written. A sync whose range may hold such
//! conversions ("exposed": anything but blocks that `log::zero_ahead` zero-filled and synced
//! before the appends overwrote them) therefore counts only once every sync started before it
//! COMPLETED has completed too (`SyncFlight::barrier`), since only those can have taken its
//! buffers. With the next sync already in flight that holds an exposed sync's waiters until
//! the next one completes; syncs of zero-filled blocks have nothing to take and count as soon
//! as the prefix rule allows.
//!
//! Faults: a failed or short write, or a failed fdatasync, poisons the shard: every waiter
//! not yet released and every later append gets `Poisoned`, whichever of the syncs in flight
//! failed; a later sync completing successfully afterwards releases nothing. An fdatasync is
//! never retried, because after a failure the kernel may have dropped the dirty pages and a
//! retry would falsely succeed.
//!
//! Ordering hazard handled: a write ending inside a block ("partial") is followed later by a
//! rewrite of that block. Two in-flight writes of the same block may land in either order, so
//! nothing is issued while a partial write is in flight.
//!
//! Cut policy (what the committer hands to a write when a write slot is free):
//! - no write in flight: everything staged, the partial last block included;
//! - fewer than [`BUSY_WRITES`] in flight and a `Durable` append (or a flush) waits on bytes
//!   not yet cut: the same, so that its last block need not wait for the running writes to
//!   complete first (measured at a fixed 300 MB/s of 16 KiB Durable appends: open-loop p50 0.59x
//!   and p99 0.65x of cutting whole blocks only, 9 and 8 of 10 paired rounds; benches/README.md);
//! - fewer than [`BUSY_WRITES`] in flight otherwise: whole blocks only (a partial write in
//!   flight stops every other issue until it completes: cutting partial blocks eagerly for
//!   `Written` appends cost 16 KiB Written throughput 0.75-0.88x in the same test);
//! - [`BUSY_WRITES`] or more in flight: whole blocks, at least [`MIN_CUT_BYTES_WHEN_BUSY`];
//!   the completions of the running writes trigger the next cut, so under load writes stay
//!   whole-block, large and pipelined.

use crate::io::{align_up, slow};
use crate::log::appender::PendingWrite;
use crate::log::recovery::now_ms;
use crate::shard::Inner;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

/// Writes issued and not yet completed, at most.
pub(crate) const MAX_WRITES_IN_FLIGHT: usize = 8;
/// While at least [`BUSY_WRITES`] writes are in flight, a new write is cut only once this much
/// is staged: the running writes' completions trigger the next cut anyway, and waiting lets
/// chunks fill and go out whole (zero-copy, large). With fewer in flight, cutting at once keeps
/// latency low (measured: a 256 KiB minimum at any depth cut 1 KiB durable appends/s by 4x).
pub(crate) const MIN_CUT_BYTES_WHEN_BUSY: u64 = 256 << 10;
/// In-flight writes from which the disk counts as busy.
pub(crate) const BUSY_WRITES: usize = 4;
/// Staged bytes beyond which appends wait for writes to drain (back-pressure).
pub(crate) const MAX_STAGED_BYTES: u64 = 64 << 20;
/// fdatasyncs in flight at most (1 is the classic one-sync-at-a-time group commit). Measured
/// here, two write+fdatasync loops on one file complete 1.7-2.6x the pairs per second of one
/// at about the same latency; more loops add little and each costs an io-wq thread.
pub(crate) const MAX_SYNCS_IN_FLIGHT: usize = 3;

/// What a waiter learns: done, or the poison cause.
pub(crate) type WaitResult = Result<(), String>;

/// A single-use completion slot.
#[derive(Default)]
pub(crate) struct OneShot {
    result: RefCell<Option<WaitResult>>,
    waker: RefCell<Option<Waker>>,
}

impl OneShot {
    fn complete(&self, r: WaitResult) {
        let mut slot = self.result.borrow_mut();
        if slot.is_none() {
            *slot = Some(r);
            if let Some(w) = self.waker.borrow_mut().take() {
                w.wake();
            }
        }
    }
}

/// Future resolving when its [`OneShot`] completes.
pub(crate) struct OneShotWait(Rc<OneShot>);

impl Future for OneShotWait {
    type Output = WaitResult;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<WaitResult> {
        if let Some(r) = self.0.result.borrow_mut().take() {
            return Poll::Ready(r);
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A broadcast "something changed" signal. Listeners created before a `notify` complete.
#[derive(Default)]
pub(crate) struct Event {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Event {
    pub fn notify(&self) {
        self.generation.set(self.generation.get() + 1);
        for w in std::mem::take(&mut *self.wakers.borrow_mut()) {
            w.wake();
        }
    }

    /// Create the listener BEFORE checking the condition it waits for (no lost wake-ups).
    pub fn listen(&self) -> Listen<'_> {
        Listen {
            event: self,
            generation: self.generation.get(),
        }
    }
}

pub(crate) struct Listen<'a> {
    event: &'a Event,
    generation: u64,
}

impl Future for Listen<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.event.generation.get() != self.generation {
            return Poll::Ready(());
        }
        self.event.wakers.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

/// A directory sync that makes a new segment's name durable, run in the background by the
/// roll so that appends into the new segment need not wait for a device flush.
///
/// Durability contract: an fdatasync of a segment whose directory entry is not durable yet
/// proves nothing (after a power failure the file may be gone), so `start_sync` waits for the
/// latest `DirSync` before it syncs, and a failed one poisons the shard.
#[derive(Default)]
pub(crate) struct DirSync {
    result: RefCell<Option<WaitResult>>,
    done: Event,
}

impl DirSync {
    pub fn complete(&self, r: WaitResult) {
        *self.result.borrow_mut() = Some(r);
        self.done.notify();
    }

    pub async fn wait(&self) -> WaitResult {
        loop {
            let listen = self.done.listen();
            if let Some(r) = self.result.borrow().clone() {
                return r;
            }
            listen.await;
        }
    }
}

struct Flight {
    id: u64,
    data_end: u64,
    done: bool,
}

/// An fdatasync in flight: it covers the log below `target` (`written` when it started).
struct SyncFlight {
    id: u64,
    target: u64,
    done: bool,
    /// Its range may hold blocks whose extent conversion no sync has made durable yet (module
    /// docs, "Exposed syncs").
    exposed: bool,
    /// Set at completion for an exposed sync: the newest sync started by then. It counts only
    /// once every sync up to that one has completed too.
    barrier: Option<u64>,
}

/// Positions, in-flight writes and waiters of one shard's commit log.
///
/// Durability contract: `written()` only covers bytes whose write completed, `synced()` only
/// bytes covered by a successful fdatasync that started after their write completed and
/// whose predecessors all succeeded; neither moves again after the first I/O failure
/// (poisoned).
pub(crate) struct GroupCommit {
    /// Every byte before this log position is in a completed write.
    written: Cell<u64>,
    /// Every byte before this log position is covered by a completed fdatasync.
    synced: Cell<u64>,
    poisoned: RefCell<Option<String>>,
    inflight: RefCell<VecDeque<Flight>>,
    next_id: Cell<u64>,
    partial_inflight: Cell<bool>,
    /// fdatasyncs in flight, in start order (so targets ascend).
    syncs: RefCell<VecDeque<SyncFlight>>,
    next_sync_id: Cell<u64>,
    /// `flush`/the interval flusher ask for durability up to here.
    sync_wanted: Cell<u64>,
    written_waiters: RefCell<VecDeque<(u64, Rc<OneShot>)>>,
    durable_waiters: RefCell<VecDeque<(u64, Rc<OneShot>)>>,
    /// The directory sync of the newest segment (see [`DirSync`]); a later directory sync
    /// also covers every earlier rename, so only the newest is waited for.
    pub dir_sync: RefCell<Option<Rc<DirSync>>>,
    /// Wakes the committer task.
    pub kick: Rc<Event>,
    /// Notified whenever positions advance or the shard is poisoned.
    pub progress: Event,
    /// Log position where a zero-ahead write in flight starts (`log::zero_ahead`): no write
    /// reaching into it may be issued until it completes.
    zero_write_from: Cell<Option<u64>>,
    #[cfg(feature = "commit-trace")]
    trace: crate::commit_trace::Trace,
}

impl GroupCommit {
    /// Starts with everything before `pos` written and durable (recovery synced it).
    pub fn new(pos: u64) -> GroupCommit {
        GroupCommit {
            written: Cell::new(pos),
            synced: Cell::new(pos),
            poisoned: RefCell::new(None),
            inflight: RefCell::new(VecDeque::new()),
            next_id: Cell::new(0),
            partial_inflight: Cell::new(false),
            syncs: RefCell::new(VecDeque::new()),
            next_sync_id: Cell::new(0),
            sync_wanted: Cell::new(pos),
            written_waiters: RefCell::new(VecDeque::new()),
            durable_waiters: RefCell::new(VecDeque::new()),
            dir_sync: RefCell::new(None),
            kick: Rc::new(Event::default()),
            progress: Event::default(),
            zero_write_from: Cell::new(None),
            #[cfg(feature = "commit-trace")]
            trace: Default::default(),
        }
    }

    pub fn written(&self) -> u64 {
        self.written.get()
    }

    pub fn synced(&self) -> u64 {
        self.synced.get()
    }

    pub fn poisoned(&self) -> Option<String> {
        self.poisoned.borrow().clone()
    }

    /// Records the first I/O failure and fails every waiter. Later failures keep the first cause.
    pub fn poison(&self, cause: String) {
        {
            let mut p = self.poisoned.borrow_mut();
            if p.is_none() {
                tracing::error!(%cause, "shard poisoned");
                *p = Some(cause);
            }
        }
        let cause = self.poisoned().unwrap_or_default();
        let ws: Vec<_> = self.written_waiters.borrow_mut().drain(..).collect();
        let ds: Vec<_> = self.durable_waiters.borrow_mut().drain(..).collect();
        for (_, w) in ws.into_iter().chain(ds) {
            w.complete(Err(cause.clone()));
        }
        self.progress.notify();
        self.kick.notify();
    }

    /// A future resolving once `end` is written (`durable == false`) or durable.
    pub fn wait_for(&self, end: u64, durable: bool) -> OneShotWait {
        let shot = Rc::new(OneShot::default());
        if let Some(cause) = self.poisoned() {
            shot.complete(Err(cause));
        } else if (if durable {
            self.synced.get()
        } else {
            self.written.get()
        }) >= end
        {
            shot.complete(Ok(()));
        } else {
            let q = if durable {
                &self.durable_waiters
            } else {
                &self.written_waiters
            };
            // Waiters are registered in log order, so each queue stays sorted by position.
            q.borrow_mut().push_back((end, shot.clone()));
            #[cfg(feature = "commit-trace")]
            if durable {
                self.trace.durable_waiter(end);
            }
        }
        OneShotWait(shot)
    }

    /// Where the zero-ahead write in flight starts, if one is.
    pub fn zero_write_from(&self) -> Option<u64> {
        self.zero_write_from.get()
    }

    /// Records the start of a zero-ahead write being issued (`Some`), or its completion.
    pub fn set_zero_write_from(&self, from: Option<u64>) {
        self.zero_write_from.set(from);
    }

    /// Asks for an fdatasync covering `pos` even if no `Durable` append waits.
    pub fn want_sync(&self, pos: u64) {
        self.sync_wanted.set(self.sync_wanted.get().max(pos));
        self.kick.notify();
    }

    fn may_issue(&self) -> bool {
        self.poisoned.borrow().is_none()
            && !self.partial_inflight.get()
            && self.inflight.borrow().len() < MAX_WRITES_IN_FLIGHT
    }

    fn idle(&self) -> bool {
        self.inflight.borrow().is_empty()
    }

    /// No write and no fdatasync in flight (background work may use the disk).
    pub fn quiescent(&self) -> bool {
        self.idle() && self.syncs.borrow().is_empty()
    }

    /// Whether a `Durable` waiter or a `want_sync` position lies beyond `pos`.
    fn durability_wanted_beyond(&self, pos: u64) -> bool {
        self.sync_wanted.get() > pos
            || self
                .durable_waiters
                .borrow()
                .back()
                .is_some_and(|(end, _)| *end > pos)
    }

    fn busy(&self) -> bool {
        self.inflight.borrow().len() >= BUSY_WRITES
    }

    fn begin_write(&self, data_end: u64, partial: bool) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        self.inflight.borrow_mut().push_back(Flight {
            id,
            data_end,
            done: false,
        });
        if partial {
            self.partial_inflight.set(true);
        }
        #[cfg(feature = "commit-trace")]
        self.trace.write_issued(id, data_end);
        id
    }

    fn on_write_done(&self, id: u64, partial: bool, r: WaitResult) {
        if partial {
            self.partial_inflight.set(false);
        }
        if let Err(cause) = r {
            self.poison(cause);
            return;
        }
        {
            let mut inflight = self.inflight.borrow_mut();
            if let Some(f) = inflight.iter_mut().find(|f| f.id == id) {
                f.done = true;
            }
            // Writes complete in any order; only a completed prefix counts as written.
            while inflight.front().is_some_and(|f| f.done) {
                if let Some(f) = inflight.pop_front() {
                    self.written.set(self.written.get().max(f.data_end));
                }
            }
        }
        #[cfg(feature = "commit-trace")]
        self.trace.write_done(id, self.written.get());
        wake_upto(&self.written_waiters, self.written.get());
        self.progress.notify();
        self.kick.notify();
    }

    /// The log position below which the syncs started so far cover (successful or not).
    fn sync_started_upto(&self) -> u64 {
        self.syncs
            .borrow()
            .back()
            .map_or(self.synced.get(), |s| s.target)
    }

    /// The position a new fdatasync should cover now, if one should start: fewer than
    /// [`MAX_SYNCS_IN_FLIGHT`] run, and the writes completed since the newest one started
    /// reach the end of a `Durable` waiter (or a `want_sync` position) that no running sync
    /// covers. A sync that would release nobody is not started: it would cost a device flush
    /// and delay the one that does.
    fn sync_target(&self) -> Option<u64> {
        if self.poisoned.borrow().is_some() || self.syncs.borrow().len() >= MAX_SYNCS_IN_FLIGHT {
            return None;
        }
        let (from, written) = (self.sync_started_upto(), self.written.get());
        if written <= from {
            return None;
        }
        // The nearest position beyond `from` somebody waits for.
        let waiter = {
            let q = self.durable_waiters.borrow();
            let i = q.partition_point(|(end, _)| *end <= from);
            q.get(i).map(|(end, _)| *end)
        };
        let wanted = Some(self.sync_wanted.get()).filter(|&w| w > from);
        let need = match (waiter, wanted) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // A want_sync position may lie beyond what is written yet (data still staged): then
        // sync what is written, but only with no sync running, or every write completion
        // until it is reached would start one.
        let idle = self.syncs.borrow().is_empty();
        let useful = need.is_some_and(|n| n <= written || (idle && Some(n) == wanted));
        useful.then_some(written)
    }

    /// Registers an fdatasync covering the log below `target`; returns its id. `exposed`:
    /// see [`SyncFlight::exposed`].
    fn begin_sync(&self, target: u64, exposed: bool) -> u64 {
        let id = self.next_sync_id.get();
        self.next_sync_id.set(id + 1);
        let mut syncs = self.syncs.borrow_mut();
        assert!(
            syncs.back().is_none_or(|s| s.target < target) && target > self.synced.get(),
            "sync targets must ascend: {target} after {:?} (synced {})",
            syncs.back().map(|s| s.target),
            self.synced.get()
        );
        syncs.push_back(SyncFlight {
            id,
            target,
            done: false,
            exposed,
            barrier: None,
        });
        #[cfg(feature = "commit-trace")]
        self.trace.sync_started(id, target);
        id
    }

    /// Registers an fdatasync that covers no new log bytes: `log::zero_ahead`'s, after zero
    /// writes into the active segment. Its target is where the syncs started so far reach, so
    /// like any sync it counts only once every earlier one has succeeded, and every sync
    /// started after it counts only once it has succeeded too: it may have taken extent
    /// metadata those need off the inode's list (module docs). Returns its id for
    /// [`GroupCommit::on_sync_done`].
    pub(crate) fn begin_background_sync(&self) -> u64 {
        let id = self.next_sync_id.get();
        self.next_sync_id.set(id + 1);
        let target = self.sync_started_upto();
        self.syncs.borrow_mut().push_back(SyncFlight {
            id,
            target,
            done: false,
            exposed: false,
            barrier: None,
        });
        id
    }

    /// Records the completion of sync `id`; a failure poisons the shard.
    pub(crate) fn on_sync_done(&self, id: u64, r: WaitResult) {
        let advanced = {
            let mut syncs = self.syncs.borrow_mut();
            let i = syncs
                .iter()
                .position(|s| s.id == id)
                .unwrap_or_else(|| panic!("sync {id} completed twice or never started"));
            if r.is_err() || self.poisoned.borrow().is_some() {
                // Nothing moves after a failure, whichever sync it came from; syncs that
                // completed but never counted are forgotten (only ones in flight stay).
                syncs.remove(i);
                syncs.retain(|s| !s.done);
                false
            } else {
                syncs[i].done = true;
                if syncs[i].exposed {
                    syncs[i].barrier = Some(self.next_sync_id.get() - 1);
                }
                // Only the completed prefix counts (module docs: why not any completed sync),
                // and an exposed sync only once the syncs started before it completed have
                // completed too ("Exposed syncs").
                let mut to = None;
                while let Some(front) = syncs.front().filter(|s| s.done) {
                    let waits = front
                        .barrier
                        .is_some_and(|b| syncs.iter().any(|s| !s.done && s.id <= b));
                    if waits {
                        break;
                    }
                    to = syncs.pop_front().map(|s| s.target);
                }
                if let Some(t) = to {
                    self.synced.set(self.synced.get().max(t));
                }
                to.is_some()
            }
        };
        if let Err(cause) = r {
            self.poison(cause);
            return;
        }
        #[cfg(feature = "commit-trace")]
        self.trace.sync_done(id, self.synced.get());
        if advanced {
            wake_upto(&self.durable_waiters, self.synced.get());
            self.progress.notify();
        }
        self.kick.notify();
    }
}

fn wake_upto(q: &RefCell<VecDeque<(u64, Rc<OneShot>)>>, pos: u64) {
    let mut ready = Vec::new();
    {
        let mut q = q.borrow_mut();
        while q.front().is_some_and(|(end, _)| *end <= pos) {
            if let Some((_, w)) = q.pop_front() {
                ready.push(w);
            }
        }
    }
    for w in ready {
        w.complete(Ok(()));
    }
}

impl Inner {
    /// One round of the committer: issue every write allowed now, then start an fdatasync if
    /// one is wanted. Never awaits; completions call back through `GroupCommit`.
    pub(crate) fn pump(self: &Rc<Self>) {
        while self.gc.may_issue() {
            let w = {
                let mut st = self.state.borrow_mut();
                let (idle, busy) = (self.gc.idle(), self.gc.busy());
                // A Durable append (or a flush) waiting on bytes not yet cut: while the disk is
                // not busy, its partial last block goes out now rather than after the writes
                // in flight complete (module docs, "Cut policy").
                let eager = !busy && self.gc.durability_wanted_beyond(st.appender.cut_mark());
                // A zero-ahead write in flight must not land after a write of the same blocks:
                // hold everything staged once it reaches into it (pending writes lie below
                // `align_up(next_pos)`); its completion kicks the pump again.
                if self
                    .gc
                    .zero_write_from()
                    .is_some_and(|from| align_up(st.appender.next_pos()) > from)
                {
                    break;
                }
                // Sealed writes are older than the active buffer: issue them first so that
                // `data_end` grows in issue order.
                match st.appender.take_sealed() {
                    Some(w) => Some(w),
                    None if idle || eager => st.appender.cut(&*self.io, true, 0),
                    None if busy => st.appender.cut(&*self.io, false, MIN_CUT_BYTES_WHEN_BUSY),
                    None => st.appender.cut(&*self.io, false, 0),
                }
            };
            match w {
                Some(w) => self.issue(w),
                None => break,
            }
        }
        while let Some(target) = self.gc.sync_target() {
            self.start_sync(target);
        }
    }

    fn issue(self: &Rc<Self>, w: PendingWrite) {
        let partial = w.partial;
        let id = self.gc.begin_write(w.data_end, partial);
        if w.buf.is_empty() {
            self.gc.on_write_done(id, partial, Ok(()));
            return;
        }
        let weak: Weak<Inner> = Rc::downgrade(self);
        glommio::spawn_local(async move {
            let PendingWrite {
                seg, file_pos, buf, ..
            } = w;
            let r = slow::watch(
                "log write",
                &seg.path,
                file_pos,
                seg.file.write_at(buf, file_pos),
            )
            .await;
            seg.modified_ms.set(now_ms());
            let Some(inner) = weak.upgrade() else { return };
            let r = match r {
                Ok(back) => {
                    // A whole chunk comes back for reuse (fresh buffers cost page faults).
                    if let Some(b) = back {
                        inner.state.borrow_mut().appender.recycle(b);
                    }
                    Ok(())
                }
                Err(e) => Err(format!(
                    "write to {} at {file_pos} failed: {e}",
                    seg.path.display()
                )),
            };
            inner.gc.on_write_done(id, partial, r);
        })
        .detach();
    }

    fn start_sync(self: &Rc<Self>, target: u64) {
        // The syncs started before this one cover the log below `from`; this one covers every
        // segment holding bytes in [from, target): usually one, two across a roll.
        let from = self.gc.sync_started_upto();
        let id = self
            .gc
            .begin_sync(target, !self.in_zeroed_blocks(from, target));
        let segs: Vec<_> = {
            let st = self.state.borrow();
            st.segments
                .map
                .values()
                .filter(|s| s.end() > from && s.start < target)
                .cloned()
                .collect()
        };
        // Taken now: the roll registers a segment's directory sync before that segment takes
        // any data, so the newest one registered covers every segment holding bytes below
        // `target`.
        let dir_sync = self.gc.dir_sync.borrow().clone();
        let weak: Weak<Inner> = Rc::downgrade(self);
        glommio::spawn_local(async move {
            let mut r = match &dir_sync {
                Some(d) => d.wait().await,
                None => Ok(()),
            };
            for s in segs.iter().filter(|_| r.is_ok()) {
                if let Err(e) = slow::watch("fdatasync", &s.path, 0, s.file.fdatasync()).await {
                    r = Err(format!("fdatasync of {} failed: {e}", s.path.display()));
                    break;
                }
            }
            if let Some(inner) = weak.upgrade() {
                inner.gc.on_sync_done(id, r);
            }
        })
        .detach();
    }
}

/// Spawns the committer task: it runs [`Inner::pump`] whenever kicked, holding the shard only
/// while it works, so dropping the shard ends it.
pub(crate) fn spawn_committer(inner: &Rc<Inner>) -> glommio::task::JoinHandle<()> {
    let weak = Rc::downgrade(inner);
    let kick = inner.gc.kick.clone();
    glommio::spawn_local(async move {
        loop {
            let listen = kick.listen();
            match weak.upgrade() {
                Some(inner) if !inner.stopped() => inner.pump(),
                _ => break,
            }
            listen.await;
        }
    })
    .detach()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_advances_only_over_a_completed_prefix() {
        let gc = GroupCommit::new(0);
        let a = gc.begin_write(100, false);
        let b = gc.begin_write(200, false);
        let w = gc.wait_for(150, false);
        gc.on_write_done(b, false, Ok(()));
        assert_eq!(gc.written(), 0, "the first write has not completed");
        gc.on_write_done(a, false, Ok(()));
        assert_eq!(gc.written(), 200);
        assert_eq!(futures_lite::future::block_on(w), Ok(()));
    }

    #[test]
    fn durable_waiters_need_a_sync_and_poison_fails_everyone() {
        let gc = GroupCommit::new(0);
        let a = gc.begin_write(100, true);
        assert!(
            !gc.may_issue(),
            "nothing may be issued while a partial write is in flight"
        );
        let d = gc.wait_for(100, true);
        gc.on_write_done(a, true, Ok(()));
        assert!(gc.may_issue());
        assert_eq!(gc.sync_target(), Some(100));
        let s = gc.begin_sync(100, true);
        assert_eq!(
            gc.sync_target(),
            None,
            "nothing written beyond the running sync"
        );
        gc.on_sync_done(s, Ok(()));
        assert_eq!(futures_lite::future::block_on(d), Ok(()));
        let w = gc.wait_for(300, false);
        gc.begin_write(300, false);
        gc.on_write_done(1, false, Err("disk on fire".into()));
        assert_eq!(
            futures_lite::future::block_on(w),
            Err("disk on fire".into())
        );
        assert!(!gc.may_issue());
        let later = gc.wait_for(1, false);
        assert!(futures_lite::future::block_on(later).is_err());
    }

    /// What a waiter has learnt so far, without waiting.
    fn peek(w: &OneShotWait) -> Option<WaitResult> {
        w.0.result.borrow().clone()
    }

    /// Completes one write of the log up to `end`.
    fn write(gc: &GroupCommit, end: u64) {
        let id = gc.begin_write(end, false);
        gc.on_write_done(id, false, Ok(()));
    }

    /// Catches: a sync releasing a waiter whose write completed after the sync started
    /// (`synced` taken from `written` at completion instead of at start).
    #[test]
    fn a_sync_covers_only_writes_completed_before_it_started() {
        let gc = GroupCommit::new(0);
        let (x, y) = (gc.wait_for(100, true), gc.wait_for(200, true));
        write(&gc, 100);
        let a = gc.begin_sync(gc.sync_target().expect("x waits"), true);
        write(&gc, 200);
        gc.on_sync_done(a, Ok(()));
        assert_eq!(gc.synced(), 100);
        assert_eq!(peek(&x), Some(Ok(())));
        assert_eq!(peek(&y), None, "y's write completed after the sync started");
        assert_eq!(gc.sync_target(), Some(200));
    }

    /// Catches: waiting for the running sync instead of overlapping (one in flight at most),
    /// and starting more than the limit.
    #[test]
    fn syncs_overlap_up_to_the_limit() {
        let gc = GroupCommit::new(0);
        let n = MAX_SYNCS_IN_FLIGHT as u64;
        let waiters: Vec<_> = (1..=n + 1).map(|i| gc.wait_for(i * 100, true)).collect();
        let mut ids = Vec::new();
        for i in 1..=n {
            write(&gc, i * 100);
            assert_eq!(
                gc.sync_target(),
                Some(i * 100),
                "sync #{i} while {} run",
                i - 1
            );
            ids.push(gc.begin_sync(i * 100, false));
        }
        write(&gc, (n + 1) * 100);
        assert_eq!(gc.sync_target(), None, "{n} syncs in flight at most");
        gc.on_sync_done(ids[0], Ok(()));
        assert_eq!(peek(&waiters[0]), Some(Ok(())));
        assert_eq!(peek(&waiters[1]), None);
        assert_eq!(gc.sync_target(), Some((n + 1) * 100));
    }

    /// Catches: syncs that release nobody (each costs a device flush and delays the next).
    #[test]
    fn a_sync_starts_only_when_it_releases_someone() {
        let gc = GroupCommit::new(0);
        let _w = gc.wait_for(300, true);
        write(&gc, 100);
        assert_eq!(
            gc.sync_target(),
            None,
            "the waiter's entry is not all written"
        );
        write(&gc, 300);
        assert_eq!(gc.sync_target(), Some(300));
        // A flush position beyond what is written: sync what is written, once.
        let gc = GroupCommit::new(0);
        gc.want_sync(500);
        write(&gc, 100);
        let a = gc.begin_sync(gc.sync_target().expect("flush wanted"), true);
        write(&gc, 200);
        assert_eq!(gc.sync_target(), None, "one partial flush sync at a time");
        write(&gc, 500);
        assert_eq!(gc.sync_target(), Some(500));
        gc.on_sync_done(a, Ok(()));
        assert_eq!(gc.synced(), 100);
    }

    /// Catches: `synced` jumping to the target of a later sync that completed first, before
    /// the earlier ones succeeded (module docs).
    #[test]
    fn a_later_sync_completing_first_releases_nothing_until_earlier_ones_succeed() {
        let gc = GroupCommit::new(0);
        let (x, y) = (gc.wait_for(100, true), gc.wait_for(200, true));
        write(&gc, 100);
        let a = gc.begin_sync(100, true);
        write(&gc, 200);
        let b = gc.begin_sync(gc.sync_target().expect("y waits beyond a"), true);
        gc.on_sync_done(b, Ok(()));
        assert_eq!((gc.synced(), peek(&x), peek(&y)), (0, None, None));
        gc.on_sync_done(a, Ok(()));
        assert_eq!(gc.synced(), 200);
        assert_eq!((peek(&x), peek(&y)), (Some(Ok(())), Some(Ok(()))));
        assert!(gc.quiescent());
    }

    /// Catches: an exposed sync counting while a sync started before its completion still
    /// runs (that one may have taken its extent conversions, "Exposed syncs"), and a sync of
    /// zero-filled blocks being held back for no reason.
    #[test]
    fn an_exposed_sync_counts_only_after_the_syncs_started_before_it_completed() {
        for exposed in [true, false] {
            let gc = GroupCommit::new(0);
            let (x, y) = (gc.wait_for(100, true), gc.wait_for(200, true));
            write(&gc, 100);
            let a = gc.begin_sync(100, exposed);
            write(&gc, 200);
            let b = gc.begin_sync(200, exposed);
            gc.on_sync_done(a, Ok(()));
            if exposed {
                assert_eq!((gc.synced(), peek(&x)), (0, None), "b may hold a's buffers");
            } else {
                assert_eq!((gc.synced(), peek(&x)), (100, Some(Ok(()))));
            }
            assert_eq!(peek(&y), None);
            gc.on_sync_done(b, Ok(()));
            assert_eq!(gc.synced(), 200);
            assert_eq!((peek(&x), peek(&y)), (Some(Ok(())), Some(Ok(()))));
            assert!(gc.quiescent());
        }
        // A sync started after an exposed one completed cannot have taken its buffers.
        let gc = GroupCommit::new(0);
        let x = gc.wait_for(100, true);
        write(&gc, 100);
        let a = gc.begin_sync(100, true);
        gc.on_sync_done(a, Ok(()));
        assert_eq!((gc.synced(), peek(&x)), (100, Some(Ok(()))));
    }

    /// Catches: a failure of one of two syncs in flight releasing (or leaving hanging) a
    /// waiter that no successful earlier sync covered, and a success after the failure
    /// moving `synced`.
    #[test]
    fn a_failure_of_either_of_two_syncs_fails_every_waiter_not_yet_covered() {
        for earlier_fails in [true, false] {
            let gc = GroupCommit::new(0);
            let w0 = gc.wait_for(50, true);
            write(&gc, 50);
            let s0 = gc.begin_sync(50, true);
            gc.on_sync_done(s0, Ok(()));
            assert_eq!(peek(&w0), Some(Ok(())));
            let (x, y) = (gc.wait_for(100, true), gc.wait_for(200, true));
            write(&gc, 100);
            let a = gc.begin_sync(100, true);
            write(&gc, 200);
            let b = gc.begin_sync(200, true);
            let (bad, good) = if earlier_fails { (a, b) } else { (b, a) };
            gc.on_sync_done(bad, Err("flush failed".into()));
            gc.on_sync_done(good, Ok(()));
            let case = format!("earlier fails: {earlier_fails}");
            assert_eq!(peek(&w0), Some(Ok(())), "{case}");
            assert_eq!(peek(&x), Some(Err("flush failed".into())), "{case}");
            assert_eq!(peek(&y), Some(Err("flush failed".into())), "{case}");
            assert_eq!(gc.synced(), 50, "{case}: nothing moves after a failure");
            assert_eq!(gc.sync_target(), None, "{case}: never retried");
            assert!(gc.quiescent(), "{case}");
        }
    }

    // Shard-level interleavings on the in-memory storage with strict, held fdatasyncs: each
    // covers only the writes completed before it started, and completes when the test says.

    use crate::io::{CrashMode, MemStorage};
    use crate::shard_tests::{batch, cfg, open, read_all, run, small_cfg, wait_until};
    use crate::{Durability, EngineError, QueueId, Shard};

    /// Indexes (in `MemStorage::held_fsyncs`) of the held fdatasyncs of segment files.
    fn held_segment_syncs(io: &MemStorage) -> Vec<usize> {
        let held = io.held_fsyncs();
        let is_segment = |p: &std::path::PathBuf| p.extension().is_some_and(|e| e == "log");
        (0..held.len()).filter(|&i| is_segment(&held[i])).collect()
    }

    /// Lets the other tasks run until `cond` holds (bounded, so a missing event fails).
    async fn until(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..100_000 {
            if cond() {
                return;
            }
            futures_lite::future::yield_now().await;
        }
        panic!("never happened: {what}");
    }

    fn durable_append(
        s: &Rc<Shard>,
        fill: usize,
    ) -> glommio::task::JoinHandle<Result<crate::Appended, EngineError>> {
        let s = s.clone();
        glommio::spawn_local(async move {
            s.append(QueueId(1), batch(1, 0, -1, -1, fill), Durability::Durable)
                .await
        })
        .detach()
    }

    /// Two syncs in flight, y's write completed between their starts. Catches: the first sync
    /// releasing y (a target read at completion), and no overlap at all (the test then never
    /// sees the second sync start).
    #[test]
    fn a_durable_ack_needs_a_sync_started_after_its_write_completed() {
        // Appends into zero-filled blocks (x's sync is not exposed: x is acknowledged when it
        // completes) and into fallocated ones (it is: x waits for y's sync too).
        for zeroed in [true, false] {
            run(move || async move {
                let io = MemStorage::new();
                let c = cfg("/pipelined-ack");
                let s = open(&c, &io).await;
                if zeroed {
                    io.set_prefers_written_extents(true);
                    drop(s);
                    let s2 = open(&c, &io).await;
                    wait_until("the segment is zero-filled", || s2.zero_ahead().1).await;
                    run_pipelined_ack_case(&c, &io, s2, zeroed).await;
                } else {
                    run_pipelined_ack_case(&c, &io, s, zeroed).await;
                }
            });
        }
    }

    async fn run_pipelined_ack_case(
        c: &crate::ShardConfig,
        io: &MemStorage,
        s: Rc<Shard>,
        zeroed: bool,
    ) {
        io.set_strict_fsync(true);
        io.hold_fsyncs(true);
        let x = durable_append(&s, 100);
        until("x's sync starts", || held_segment_syncs(io).len() == 1).await;
        let y = durable_append(&s, 200);
        until("y's sync starts beside x's", || {
            held_segment_syncs(io).len() == 2
        })
        .await;
        let held = held_segment_syncs(io);
        assert!(io.finish_held_fsync(held[0], true));
        let x = if zeroed {
            let xr = x.await;
            assert!(matches!(xr, Some(Ok(_))), "x is covered by the first sync");
            None
        } else {
            for _ in 0..100 {
                futures_lite::future::yield_now().await;
            }
            assert!(
                s.durable_log_pos() < s.inner.gc.written(),
                "an exposed sync counted while a sync started before it completed still runs"
            );
            Some(x)
        };
        // Power fails with y's sync still open: y must not have been acknowledged (nor x, when
        // its sync was exposed).
        io.crash(CrashMode::DropUnsynced);
        io.finish_held_fsync(held[1], true);
        let yr = y.await;
        assert!(
            matches!(yr, Some(Err(EngineError::Poisoned { .. }))),
            "y acknowledged by a sync that started before its write completed: {yr:?}"
        );
        if let Some(x) = x {
            let xr = x.await;
            assert!(
                matches!(xr, Some(Err(EngineError::Poisoned { .. }))),
                "x acknowledged by an exposed sync: {xr:?}"
            );
        }
        drop(s);
        io.hold_fsyncs(false);
        let s = open(c, io).await;
        assert_eq!(read_all(&s, QueueId(1)).await, vec![(0, 1)]);
    }

    /// Two syncs in flight, one fails. Catches: acknowledging a waiter that no successful
    /// earlier sync covered (x when the second sync fails first, or when the second succeeds
    /// before the first fails), leaving waiters hanging, accepting later appends, or retrying.
    #[test]
    fn a_failure_of_either_of_two_syncs_in_flight_poisons_and_fails_the_uncovered() {
        // (which fails, finish the failing one first)
        for (first_fails, failing_first) in [(true, true), (false, true), (true, false)] {
            run(move || async move {
                let case = format!("first fails {first_fails}, failing one first {failing_first}");
                let io = MemStorage::new();
                let s = open(&cfg("/pipelined-fault"), &io).await;
                io.set_strict_fsync(true);
                io.hold_fsyncs(true);
                let x = durable_append(&s, 100);
                until("x's sync starts", || held_segment_syncs(&io).len() == 1).await;
                let y = durable_append(&s, 200);
                until("y's sync starts", || held_segment_syncs(&io).len() == 2).await;
                let held = held_segment_syncs(&io);
                let (bad, good) = match first_fails {
                    true => (held[0], held[1]),
                    false => (held[1], held[0]),
                };
                let order = match failing_first {
                    true => [(bad, false), (good, true)],
                    false => [(good, true), (bad, false)],
                };
                for (i, ok) in order {
                    assert!(io.finish_held_fsync(i, ok), "{case}");
                }
                for (name, r) in [("x", x.await), ("y", y.await)] {
                    assert!(
                        matches!(r, Some(Err(EngineError::Poisoned { .. }))),
                        "{case}: {name} got {r:?}"
                    );
                }
                let later = s
                    .append(QueueId(1), batch(1, 0, -1, -1, 10), Durability::Written)
                    .await;
                assert!(
                    matches!(later, Err(EngineError::Poisoned { .. })),
                    "{case}: {later:?}"
                );
                assert_eq!(
                    held_segment_syncs(&io).len(),
                    2,
                    "{case}: a sync was retried"
                );
            });
        }
    }

    /// A sync started after a roll covers the rest of the old segment (its last write, the
    /// padding) and the new one, while the sync started before the roll is still open.
    /// Catches: syncing only the active segment, and counting the later sync before the
    /// earlier one succeeded.
    #[test]
    fn overlapping_syncs_across_a_segment_roll_cover_both_segments() {
        run(|| async {
            let io = MemStorage::new();
            let c = small_cfg("/pipelined-roll");
            let s = open(&c, &io).await;
            // Fill the first segment to within 4 KiB of its end with Written appends.
            let room = |s: &Shard| {
                let st = s.inner.state.borrow();
                st.appender.segment().end() - st.appender.next_pos()
            };
            let mut filled = 0;
            while room(&s) >= 4096 {
                s.append(QueueId(1), batch(1, 0, -1, -1, 2000), Durability::Written)
                    .await
                    .expect("written append");
                filled += 1;
            }
            s.flush().await.expect("flush");
            let durable_before = s.durable_log_pos();
            let fsyncs_before = io.fsync_count();
            io.set_strict_fsync(true);
            io.hold_fsyncs(true);
            let x = durable_append(&s, 100);
            until("x's sync starts", || held_segment_syncs(&io).len() == 1).await;
            let y = durable_append(&s, 8000);
            // y does not fit: the log rolls, and y's sync covers both segments, one after the
            // other.
            until("y's sync of the old segment", || {
                held_segment_syncs(&io).len() == 2
            })
            .await;
            let held = held_segment_syncs(&io);
            let paths = io.held_fsyncs();
            assert_eq!(paths[held[0]], paths[held[1]]);
            assert!(io.finish_held_fsync(held[1], true));
            until("y's sync of the new segment", || {
                held_segment_syncs(&io).len() == 3
            })
            .await;
            let held = held_segment_syncs(&io);
            let paths = io.held_fsyncs();
            assert_ne!(paths[held[1]], paths[held[2]]);
            assert!(io.finish_held_fsync(held[2], true));
            until("y's sync completes", || {
                io.fsync_count() == fsyncs_before + 2
            })
            .await;
            assert_eq!(
                s.durable_log_pos(),
                durable_before,
                "a later sync counted before the earlier one succeeded"
            );
            assert!(io.finish_held_fsync(held[0], true));
            assert!(matches!(x.await, Some(Ok(_))));
            assert!(matches!(y.await, Some(Ok(_))));
            drop(s);
            io.hold_fsyncs(false);
            io.crash(CrashMode::DropUnsynced);
            let s = open(&c, &io).await;
            let got = read_all(&s, QueueId(1)).await;
            assert_eq!(got.len(), filled + 2, "x and y survive the crash: {got:?}");
        });
    }

    /// Log bytes of a batch of one record with `fill` value bytes, as an entry.
    fn entry_len(fill: usize) -> u64 {
        (crate::format::entry::HEADER_LEN + batch(1, 0, -1, -1, fill).len()) as u64
    }

    /// The cut policy with a whole-block write in flight (module docs): a Durable append's
    /// partial last block is written at once, a Written append's waits for the running write.
    /// Catches: Durable appends waiting for unrelated writes to complete before their last
    /// block is even issued (the half-load latency of session 2), and partial blocks cut
    /// eagerly for Written appends (each one stops the write pipeline while in flight).
    #[test]
    fn a_durable_appends_last_block_is_cut_while_other_writes_are_in_flight() {
        // A first entry ending exactly on a block boundary: its write is a whole-block one.
        let whole = (3000..9000)
            .find(|&f| entry_len(f) % crate::io::BLOCK_BYTES == 0)
            .expect("some fill ends on a block boundary");
        for durable in [true, false] {
            run(move || async move {
                let io = MemStorage::new();
                let s = open(&cfg("/cut-policy"), &io).await;
                io.gate_writes(true);
                let before = io.write_log().len();
                let first = durable_append(&s, whole);
                until("the first write starts", || {
                    io.write_log().len() == before + 1
                })
                .await;
                let ack = match durable {
                    true => Durability::Durable,
                    false => Durability::Written,
                };
                let s2 = s.clone();
                let second = glommio::spawn_local(async move {
                    s2.append(QueueId(1), batch(1, 0, -1, -1, 100), ack).await
                })
                .detach();
                if durable {
                    until("the second append's partial block is cut", || {
                        io.write_log().len() == before + 2
                    })
                    .await;
                } else {
                    for _ in 0..1000 {
                        futures_lite::future::yield_now().await;
                    }
                    assert_eq!(
                        io.write_log().len(),
                        before + 1,
                        "a Written append's partial block waits for the write in flight"
                    );
                }
                io.gate_writes(false);
                assert!(matches!(first.await, Some(Ok(_))));
                assert!(matches!(second.await, Some(Ok(_))));
                assert_eq!(read_all(&s, QueueId(1)).await, vec![(0, 1), (1, 1)]);
            });
        }
    }
}
