//! Measurements: HDR latency histograms (microseconds) and the run's shared counters.
//!
//! Each core records into its own histograms (no locking on the hot path) and once a second
//! adds its interval histograms into [`Shared::interval`], where the progress line and the
//! HDR interval log pick them up. Counters that decide when the run ends (sent, acknowledged,
//! consumed) are atomics in [`Shared`], read by every core.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;

/// Highest latency a histogram holds: one hour, in microseconds. Longer values are clamped.
pub const LATENCY_MAX_US: u64 = 3_600_000_000;
/// Significant decimal digits kept by every histogram.
const SIGNIFICANT_DIGITS: u8 = 3;

/// A latency histogram in microseconds (1 µs .. 1 h, 3 significant digits).
#[derive(Debug, Clone)]
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist::new()
    }
}

impl Hist {
    pub fn new() -> Hist {
        let h = Histogram::new_with_bounds(1, LATENCY_MAX_US, SIGNIFICANT_DIGITS)
            .expect("static histogram bounds are valid");
        Hist(h)
    }

    /// Records one latency given in nanoseconds. Sub-microsecond values count as 1 µs and values
    /// above the bound as the bound, so no sample is ever dropped.
    pub fn record_ns(&mut self, latency_ns: u64) {
        let us = (latency_ns / 1_000).clamp(1, LATENCY_MAX_US);
        self.0.saturating_record(us);
    }

    pub fn add(&mut self, other: &Hist) {
        // Both have the same bounds, so adding cannot fail.
        self.0.add(&other.0).expect("histograms share bounds");
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn quantile_us(&self, q: f64) -> u64 {
        self.0.value_at_quantile(q)
    }

    pub fn max_us(&self) -> u64 {
        self.0.max()
    }

    pub fn mean_us(&self) -> f64 {
        self.0.mean()
    }

    pub fn reset(&mut self) {
        self.0.reset();
    }

    /// Takes the contents, leaving this histogram empty.
    pub fn take(&mut self) -> Hist {
        let out = self.clone();
        self.reset();
        out
    }

    pub fn inner(&self) -> &Histogram<u64> {
        &self.0
    }
}

/// Latency histograms of one kind of measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Intended send time → produce acknowledgement.
    Produce,
    /// Intended send time → record read by a consumer.
    EndToEnd,
    /// Produce request written → its response read: the broker's and the network's part of
    /// [`Kind::Produce`], one sample per request (Kafka's producer metric `request-latency`).
    /// What `Produce` adds to it is the record's wait in the client (linger, a free in-flight
    /// slot).
    Request,
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Produce => "produce",
            Kind::EndToEnd => "e2e",
            Kind::Request => "request",
        }
    }
}

/// The histograms, one per [`Kind`].
#[derive(Debug, Clone, Default)]
pub struct Hists {
    pub produce: Hist,
    pub e2e: Hist,
    pub request: Hist,
}

impl Hists {
    pub fn get_mut(&mut self, kind: Kind) -> &mut Hist {
        match kind {
            Kind::Produce => &mut self.produce,
            Kind::EndToEnd => &mut self.e2e,
            Kind::Request => &mut self.request,
        }
    }

    pub fn add(&mut self, other: &Hists) {
        self.produce.add(&other.produce);
        self.e2e.add(&other.e2e);
        self.request.add(&other.request);
    }

    pub fn take(&mut self) -> Hists {
        Hists {
            produce: self.produce.take(),
            e2e: self.e2e.take(),
            request: self.request.take(),
        }
    }
}

/// What kind of failure an error counter counts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// A Kafka error code returned by the broker (by name where known).
    Broker(String),
    Timeout,
    Disconnect,
    /// A response the client could not decode or did not expect.
    Protocol,
    /// Acknowledged records no consumer read before the drain deadline.
    NotConsumed,
    /// A response telling the client it is being throttled (`throttle_time_ms` > 0).
    Throttled,
}

impl ErrorKind {
    pub fn from_code(code: i16) -> ErrorKind {
        match kafka_protocol::ResponseError::try_from_code(code) {
            Some(e) => ErrorKind::Broker(format!("{e:?}")),
            None => ErrorKind::Broker(format!("error code {code}")),
        }
    }

    pub fn label(&self) -> String {
        match self {
            ErrorKind::Broker(name) => name.clone(),
            ErrorKind::Timeout => "timeout".into(),
            ErrorKind::Disconnect => "disconnect".into(),
            ErrorKind::Protocol => "protocol".into(),
            ErrorKind::NotConsumed => "not_consumed".into(),
            ErrorKind::Throttled => "throttled".into(),
        }
    }
}

/// A monotonically growing pair of counts: records and their value bytes.
#[derive(Debug, Default)]
pub struct Count {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
}

impl Count {
    pub fn add(&self, records: u64, bytes: u64) {
        self.records.fetch_add(records, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn get(&self) -> (u64, u64) {
        (
            self.records.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// State shared by every core of one run.
#[derive(Debug, Default)]
pub struct Shared {
    /// Records handed to the socket (all, warm-up included).
    pub sent: Count,
    /// Records acknowledged without error (all).
    pub acked: Count,
    /// Records acknowledged while the measured window was open (produce throughput).
    pub acked_measured: Count,
    /// Records read by consumers (all, backlog included).
    pub consumed: Count,
    /// Records consumed while the measured window was open (consume throughput).
    pub consumed_measured: Count,
    /// Records a producer gave up on (error response, timeout, disconnect).
    pub failed: AtomicU64,
    /// Producers still running; consumers drain once it reaches zero.
    pub producers_running: AtomicUsize,
    /// Consumer-group members still reading; members leave the group once it reaches zero,
    /// so an early leaver does not make the others rebalance while they drain.
    pub members_running: AtomicUsize,
    /// With `--until-end`: when the last fetch loop reached its end offsets (`now_ns`).
    pub caught_up_ns: AtomicU64,
    /// Error counts by kind.
    pub errors: Mutex<BTreeMap<ErrorKind, u64>>,
    /// Interval histograms added by the cores since the progress line last took them.
    pub interval: Mutex<Hists>,
}

impl Shared {
    pub fn error(&self, kind: ErrorKind, n: u64) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        *errors.entry(kind).or_insert(0) += n;
    }

    pub fn error_total(&self) -> u64 {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum()
    }

    pub fn errors_snapshot(&self) -> BTreeMap<String, u64> {
        let errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        errors.iter().map(|(k, v)| (k.label(), *v)).collect()
    }

    /// Adds a core's interval histograms for the progress line and the interval log.
    pub fn publish_interval(&self, hists: &Hists) {
        self.interval
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(hists);
    }

    pub fn take_interval(&self) -> Hists {
        self.interval
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_microseconds_and_clamps() {
        let mut h = Hist::new();
        h.record_ns(500); // below 1 µs: counted as 1 µs, not dropped
        h.record_ns(2_000_000); // 2 ms
        h.record_ns(u64::MAX); // far above the bound: clamped, not dropped
        assert_eq!(h.len(), 3);
        assert_eq!(h.quantile_us(0.0), 1);
        assert!(
            (1_999..=2_001).contains(&h.quantile_us(0.5)),
            "{}",
            h.quantile_us(0.5)
        );
        assert!(
            h.max_us() >= LATENCY_MAX_US && h.max_us() <= LATENCY_MAX_US + LATENCY_MAX_US / 500
        );
    }

    #[test]
    fn quantiles_of_a_uniform_spread() {
        let mut h = Hist::new();
        for us in 1..=10_000u64 {
            h.record_ns(us * 1_000);
        }
        for (q, want) in [(0.5, 5_000u64), (0.9, 9_000), (0.99, 9_900), (0.999, 9_990)] {
            let got = h.quantile_us(q);
            assert!(
                got.abs_diff(want) <= want / 500 + 1,
                "q{q}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn interval_take_empties_and_totals_add() {
        let shared = Shared::default();
        let mut a = Hists::default();
        a.produce.record_ns(1_000_000);
        a.e2e.record_ns(3_000_000);
        a.request.record_ns(500_000);
        shared.publish_interval(&a);
        shared.publish_interval(&a);
        let taken = shared.take_interval();
        assert_eq!(
            (taken.produce.len(), taken.e2e.len(), taken.request.len()),
            (2, 2, 2)
        );
        assert!(shared.take_interval().produce.is_empty());
        shared.error(ErrorKind::from_code(3), 2);
        shared.error(ErrorKind::Timeout, 1);
        let errs = shared.errors_snapshot();
        assert_eq!(errs.get("timeout"), Some(&1));
        assert_eq!(shared.error_total(), 3);
        assert!(errs.keys().any(|k| k.contains("UnknownTopic")), "{errs:?}");
    }
}
