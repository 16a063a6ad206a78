//! Group commit: appends that arrive together share writes and ONE fdatasync.
//!
//! ```text
//!  appends ──copy──► staging (appender) ──cut──► writes in flight (≤ MAX_WRITES_IN_FLIGHT)
//!                                                   │ complete, in any order
//!        written = end of the completed prefix ◄────┘ ──► wake `Written` waiters
//!        fdatasync(segments in [synced, written)) ──► synced = written at its start
//!                                                     ──► wake `Durable` waiters
//! ```
//!
//! Durability contract: a `Written` waiter resolves only when every write up to its entry's
//! end has completed (the data is in the file, not necessarily on stable storage); a `Durable`
//! waiter resolves only after an fdatasync that STARTED after those writes completed. Only
//! one fdatasync is in flight; appends arriving meanwhile form the next group.
//!
//! Faults: a failed or short write, or a failed fdatasync, poisons the shard: every waiter
//! and every later append gets `Poisoned`. An fdatasync is never retried, because after a
//! failure the kernel may have dropped the dirty pages and a retry would falsely succeed.
//!
//! Ordering hazard handled: a write ending inside a block ("partial") is followed later by a
//! rewrite of that block. Two in-flight writes of the same block may land in either order, so
//! nothing is issued while a partial write is in flight. Partial writes are only cut when no
//! write is in flight (otherwise only whole blocks are cut and the completion of the running
//! writes triggers the next cut), so under load writes stay whole-block and pipelined.

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

/// Positions, in-flight writes and waiters of one shard's commit log.
///
/// Durability contract: `written()` only covers bytes whose write completed, `synced()` only
/// bytes covered by a completed fdatasync that started after their write completed; neither
/// moves again after the first I/O failure (poisoned).
pub(crate) struct GroupCommit {
    /// Every byte before this log position is in a completed write.
    written: Cell<u64>,
    /// Every byte before this log position is covered by a completed fdatasync.
    synced: Cell<u64>,
    poisoned: RefCell<Option<String>>,
    inflight: RefCell<VecDeque<Flight>>,
    next_id: Cell<u64>,
    partial_inflight: Cell<bool>,
    syncing: Cell<bool>,
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
            syncing: Cell::new(false),
            sync_wanted: Cell::new(pos),
            written_waiters: RefCell::new(VecDeque::new()),
            durable_waiters: RefCell::new(VecDeque::new()),
            dir_sync: RefCell::new(None),
            kick: Rc::new(Event::default()),
            progress: Event::default(),
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
        }
        OneShotWait(shot)
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
        self.idle() && !self.syncing.get()
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
        wake_upto(&self.written_waiters, self.written.get());
        self.progress.notify();
        self.kick.notify();
    }

    /// The position an fdatasync should cover now, if one is wanted and none is running.
    fn sync_target(&self) -> Option<u64> {
        let written = self.written.get();
        let wanted =
            !self.durable_waiters.borrow().is_empty() || self.sync_wanted.get() > self.synced.get();
        let ok = self.poisoned.borrow().is_none() && !self.syncing.get();
        (ok && wanted && written > self.synced.get()).then_some(written)
    }

    fn on_sync_done(&self, target: u64, r: WaitResult) {
        self.syncing.set(false);
        if let Err(cause) = r {
            self.poison(cause);
            return;
        }
        self.synced.set(self.synced.get().max(target));
        wake_upto(&self.durable_waiters, self.synced.get());
        self.progress.notify();
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
                // Sealed writes are older than the active buffer: issue them first so that
                // `data_end` grows in issue order.
                match st.appender.take_sealed() {
                    Some(w) => Some(w),
                    None if idle => st.appender.cut(&*self.io, true, 0),
                    None if busy => st.appender.cut(&*self.io, false, MIN_CUT_BYTES_WHEN_BUSY),
                    None => st.appender.cut(&*self.io, false, 0),
                }
            };
            match w {
                Some(w) => self.issue(w),
                None => break,
            }
        }
        if let Some(target) = self.gc.sync_target() {
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
            let r = seg.file.write_at(buf, file_pos).await;
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
        self.gc.syncing.set(true);
        let synced = self.gc.synced();
        // Every segment holding bytes in [synced, target): usually one, two across a roll.
        let segs: Vec<_> = {
            let st = self.state.borrow();
            st.segments
                .map
                .values()
                .filter(|s| s.end() > synced && s.start < target)
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
                if let Err(e) = s.file.fdatasync().await {
                    r = Err(format!("fdatasync of {} failed: {e}", s.path.display()));
                    break;
                }
            }
            if let Some(inner) = weak.upgrade() {
                inner.gc.on_sync_done(target, r);
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
        gc.syncing.set(true);
        assert_eq!(gc.sync_target(), None, "one fdatasync at a time");
        gc.on_sync_done(100, Ok(()));
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
}
