//! Warnings for single file operations that took long: the first thing to look at when
//! append latency spikes.
//!
//! On the machine these notes were measured on (a Firecracker microVM's virtio disk), single
//! O_DIRECT writes of the log take 20-300 ms now and then while an independent 4 KiB probe
//! writing its own file stalls at the same instants, with no guest thread blocked in the
//! kernel meanwhile (kernel-notes/the-disk.md): the time is the device's. A warning per
//! operation past [`SLOW_IO`] says when and where, at a cost of one clock read per I/O.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

/// A file operation taking at least this long is logged as a warning.
pub(crate) const SLOW_IO: Duration = Duration::from_millis(100);

/// Runs `op` (`what` on `path` at file position `pos`) and warns if it took [`SLOW_IO`] or
/// more.
pub(crate) async fn watch<T>(
    what: &'static str,
    path: &Path,
    pos: u64,
    op: impl Future<Output = T>,
) -> T {
    let started = Instant::now();
    let out = op.await;
    let took = started.elapsed();
    if took >= SLOW_IO {
        tracing::warn!(
            what,
            path = %path.display(),
            pos,
            took_ms = took.as_millis() as u64,
            "slow file operation"
        );
    }
    out
}
