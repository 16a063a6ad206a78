//! Deadlines: session expiry, join and sync timeouts, pending member ids, offset retention;
//! and the group log's compaction, which the driver runs when an append wakes it past the
//! threshold (never on a request's path).
//!
//! Each group keeps its own deadlines; the coordinator keeps a min-heap of (deadline, group)
//! with lazy invalidation: an entry whose deadline no longer matches the group's
//! `timer_at_ms` is stale and skipped. A heartbeat only moves a member's deadline later, so it
//! never touches the heap; the group is re-examined when its old deadline comes and re-queued
//! at its real next deadline. One driver task per coordinator sleeps until the earliest
//! deadline, or until woken because an earlier one was queued.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::rc::Weak;
use std::task::{Poll, Waker};
use std::time::Duration;

use super::{GroupCoordinator, GroupLog, Inner, OFFSETS_RETENTION_CHECK_INTERVAL_MS};

/// Stale entries may pile up when groups keep getting earlier deadlines; past this many
/// entries per group the heap is rebuilt from the groups' own deadlines.
const MAX_TIMER_ENTRIES_PER_GROUP: usize = 4;

/// Min-heap of (deadline ms, group id).
#[derive(Debug, Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Reverse<(u64, String)>>,
}

impl TimerQueue {
    pub fn push(&mut self, at_ms: u64, group_id: &str) {
        self.heap.push(Reverse((at_ms, group_id.to_owned())));
    }

    pub fn next_ms(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Pops the earliest entry if it is due at `now_ms`.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(u64, String)> {
        if self.next_ms()? > now_ms {
            return None;
        }
        self.heap.pop().map(|Reverse(entry)| entry)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn clear(&mut self) {
        self.heap.clear();
    }
}

/// A single-threaded wake-up flag: `notify` wakes the task waiting in `notified`, or makes its
/// next wait return at once.
#[derive(Debug, Default)]
pub(crate) struct Notify {
    state: RefCell<(bool, Option<Waker>)>,
}

impl Notify {
    pub fn notify(&self) {
        let mut state = self.state.borrow_mut();
        state.0 = true;
        if let Some(waker) = state.1.take() {
            waker.wake();
        }
    }

    pub async fn notified(&self) {
        poll_fn(|cx| {
            let mut state = self.state.borrow_mut();
            if std::mem::take(&mut state.0) {
                Poll::Ready(())
            } else {
                state.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

impl<L: GroupLog> GroupCoordinator<L> {
    /// Applies every group deadline that has passed (session expiry, join and sync timeouts,
    /// unused member ids). The driver started by `start` calls it; tests call it after moving
    /// a `ManualClock`.
    pub fn tick(&self) {
        let now = self.clock.now_ms();
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        while let Some((at, group_id)) = inner.timers.pop_due(now) {
            let Some(group) = inner.groups.get_mut(&group_id) else {
                continue;
            };
            if group.timer_at_ms != Some(at) {
                continue;
            }
            group.timer_at_ms = None;
            group.expire(now);
            inner.reschedule(&group_id);
        }
        if inner.timers.len() > MAX_TIMER_ENTRIES_PER_GROUP * (inner.groups.len() + 1) {
            rebuild(inner);
        }
    }

    /// Called after a mutation of `group_id`: queues its next deadline and wakes the driver if
    /// that deadline is earlier than the instant it sleeps until.
    pub(super) fn reschedule(&self, inner: &mut Inner, group_id: &str) {
        if let Some(at) = inner.reschedule(group_id) {
            if at < self.armed_at_ms.get() {
                self.wake.notify();
            }
        }
    }

    /// When the driver must next run: the earliest group deadline, the retention sweep or the
    /// compaction check.
    fn next_wake_ms(&self) -> u64 {
        let sweep = {
            let inner = self.inner.borrow();
            inner
                .timers
                .next_ms()
                .map_or(inner.next_retention_check_ms, |at| {
                    at.min(inner.next_retention_check_ms)
                })
        };
        sweep.min(self.next_compaction_check_ms())
    }

    /// Whether the offset-retention sweep is due; if so, books the next one.
    fn retention_due(&self) -> bool {
        let now = self.clock.now_ms();
        let mut inner = self.inner.borrow_mut();
        if now < inner.next_retention_check_ms {
            return false;
        }
        inner.next_retention_check_ms = now + OFFSETS_RETENTION_CHECK_INTERVAL_MS;
        true
    }
}

fn rebuild(inner: &mut Inner) {
    inner.timers.clear();
    for group in inner.groups.values_mut() {
        group.timer_at_ms = None;
    }
    let ids: Vec<String> = inner.groups.keys().cloned().collect();
    for id in ids {
        inner.reschedule(&id);
    }
}

/// The driver task. Holds the coordinator weakly, so dropping the coordinator ends it at its
/// next wake-up.
pub(crate) async fn drive<L: GroupLog>(coordinator: Weak<GroupCoordinator<L>>) {
    loop {
        let (wait, wake) = {
            let Some(c) = coordinator.upgrade() else {
                return;
            };
            c.tick();
            if c.retention_due() {
                c.expire_offsets().await;
            }
            if c.compaction_due() {
                // A failure is logged and retried later by `compact` itself.
                let _ = c.compact().await;
            }
            let now = c.clock.now_ms();
            let at = c.next_wake_ms().max(now);
            c.armed_at_ms.set(at);
            (Duration::from_millis(at - now), c.wake.clone())
        };
        let mut sleep = pin!(glommio::timer::sleep(wait));
        let mut woken = pin!(wake.notified());
        poll_fn(|cx| {
            if sleep.as_mut().poll(cx).is_ready() || woken.as_mut().poll(cx).is_ready() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}
