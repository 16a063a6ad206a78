//! One clock for every thread of the run: nanoseconds since the Unix epoch, read from the
//! monotonic clock after a single anchoring at first use.
//!
//! Producers stamp intended send times with it and consumers (on other cores) subtract them, so
//! both must read the same timeline; a monotonic source keeps a wall-clock step (NTP) from
//! showing up as latency.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

struct Anchor {
    instant: Instant,
    epoch_ns: u64,
}

static ANCHOR: OnceLock<Anchor> = OnceLock::new();

/// Nanoseconds since the Unix epoch, monotonic within this process.
pub fn now_ns() -> u64 {
    let anchor = ANCHOR.get_or_init(|| Anchor {
        instant: Instant::now(),
        epoch_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    });
    anchor.epoch_ns + anchor.instant.elapsed().as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_back_and_is_near_wall_time() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(wall.abs_diff(b) < 1_000_000_000, "clock {b} vs wall {wall}");
    }
}
