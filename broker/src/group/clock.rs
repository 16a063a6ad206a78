//! The time seam of the coordinator: every deadline and timestamp comes from a [`Clock`], so
//! tests drive session and rebalance timeouts by moving a [`ManualClock`] instead of sleeping.

use std::cell::Cell;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, never going backwards.
pub trait Clock {
    fn now_ms(&self) -> u64;
}

/// Wall-clock time read once at start, advanced by a monotonic clock: timestamps look like
/// wall time, deadlines never jump when the system clock is set.
#[derive(Debug, Clone)]
pub struct SystemClock {
    start_wall_ms: u64,
    start: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        let start_wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        SystemClock {
            start_wall_ms,
            start: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        self.start_wall_ms + self.start.elapsed().as_millis() as u64
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: Cell<u64>,
}

impl ManualClock {
    pub fn new(now_ms: u64) -> Self {
        ManualClock {
            now_ms: Cell::new(now_ms),
        }
    }

    pub fn advance_ms(&self, ms: u64) {
        self.now_ms.set(self.now_ms.get() + ms);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.get()
    }
}
