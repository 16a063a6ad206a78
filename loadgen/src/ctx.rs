//! What every task on one core shares: the run's configuration, the cluster, the cross-core
//! counters, the measurement window, and this core's histograms.

use std::cell::RefCell;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use crate::client::cluster::Cluster;
use crate::config::Args;
use crate::stats::{ErrorKind, Hists, Kind, Shared};

/// The run's time line, in [`crate::clock::now_ns`] nanoseconds.
///
/// ```text
///  start ──── warm-up ────► measure_from ──── duration ────► end ── drain ──►
///  records sent, not measured │ records measured            │ no new records
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start_ns: u64,
    pub measure_from_ns: u64,
    pub end_ns: u64,
}

impl Window {
    /// Whether a record intended at `t_ns` is measured.
    pub fn measures(&self, t_ns: u64) -> bool {
        t_ns >= self.measure_from_ns && t_ns < self.end_ns
    }

    pub fn measured_secs(&self) -> f64 {
        (self.end_ns - self.measure_from_ns) as f64 / 1e9
    }
}

/// This core's histograms: `interval` (everything since the last publish, warm-up included,
/// for the progress line and interval log) and `total` (the measured window only).
#[derive(Debug, Default)]
pub struct CoreHists {
    pub interval: Hists,
    pub total: Hists,
}

/// Per-core context, shared by the core's tasks through an `Rc`.
pub struct CoreCtx {
    pub args: Arc<Args>,
    pub cluster: Arc<Cluster>,
    pub shared: Arc<Shared>,
    pub window: Window,
    pub hists: RefCell<CoreHists>,
    /// Whether this run has producers (consumers then drain to what they acknowledged).
    pub with_producers: bool,
    /// Next offset to read, per partition, shared by every core: consumer-group members
    /// resume from here when partitions move between them.
    pub positions: Arc<Vec<AtomicI64>>,
    /// With `--until-end`: the log end offset per partition found at setup, to read up to.
    pub ends: Option<Arc<Vec<i64>>>,
}

impl CoreCtx {
    /// Records a latency sample; only samples in the measured window reach the totals.
    pub fn record(&self, kind: Kind, latency_ns: u64, measured: bool) {
        let mut h = self.hists.borrow_mut();
        h.interval.get_mut(kind).record_ns(latency_ns);
        if measured {
            h.total.get_mut(kind).record_ns(latency_ns);
        }
    }

    pub fn error(&self, kind: ErrorKind) {
        self.shared.error(kind, 1);
    }

    /// Publishes how far a partition has been read.
    pub fn set_position(&self, partition: i32, offset: i64) {
        if let Some(p) = self.positions.get(partition as usize) {
            p.fetch_max(offset, Ordering::AcqRel);
        }
    }

    pub fn position(&self, partition: i32) -> i64 {
        self.positions
            .get(partition as usize)
            .map_or(0, |p| p.load(Ordering::Acquire))
    }

    /// Moves this core's interval histograms to the shared slot.
    pub fn publish_interval(&self) {
        let interval = self.hists.borrow_mut().interval.take();
        self.shared.publish_interval(&interval);
    }
}
