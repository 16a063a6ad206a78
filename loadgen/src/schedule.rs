//! The open-loop rate scheduler: record `i` of a producer is due at `start + i / rate`,
//! whatever happened to records before it.
//!
//! Intended times are computed from the index, never by adding intervals, so they do not drift
//! however long the run. A producer that falls behind (broker stall, full in-flight window)
//! generates every overdue record at once when it resumes, each with its own intended time, and
//! latency is measured from that time: a stall shows as latency, not as a lower send rate. That
//! is what keeps the tool free of coordinated omission.

/// When each record of one producer is meant to be sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    start_ns: u64,
    /// Nanoseconds between records; `None` = closed loop (records are due as soon as there is
    /// room for them, and their intended time is when they were made).
    interval_ns: Option<f64>,
}

impl Schedule {
    /// Open loop at `records_per_sec`, first record due at `start_ns`.
    pub fn open(start_ns: u64, records_per_sec: f64) -> Schedule {
        assert!(
            records_per_sec > 0.0,
            "rate must be positive, got {records_per_sec}"
        );
        Schedule {
            start_ns,
            interval_ns: Some(1e9 / records_per_sec),
        }
    }

    /// Closed loop starting at `start_ns`.
    pub fn closed(start_ns: u64) -> Schedule {
        Schedule {
            start_ns,
            interval_ns: None,
        }
    }

    pub fn is_open_loop(&self) -> bool {
        self.interval_ns.is_some()
    }

    pub fn start_ns(&self) -> u64 {
        self.start_ns
    }

    /// Intended send time of record `index`, or `None` in closed loop.
    pub fn intended_ns(&self, index: u64) -> Option<u64> {
        self.interval_ns
            .map(|iv| self.start_ns + (index as f64 * iv) as u64)
    }

    /// How many records (from index 0) are due at `now_ns`: all of them up to `now_ns`, however
    /// far behind the producer is. Closed loop: unbounded.
    pub fn due_count(&self, now_ns: u64) -> u64 {
        match self.interval_ns {
            None => u64::MAX,
            Some(_) if now_ns < self.start_ns => 0,
            Some(iv) => ((now_ns - self.start_ns) as f64 / iv) as u64 + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Hist;

    #[test]
    fn intended_times_follow_the_rate() {
        let s = Schedule::open(1_000, 1_000.0);
        assert_eq!(s.intended_ns(0), Some(1_000));
        assert_eq!(s.intended_ns(1), Some(1_001_000));
        assert_eq!(s.intended_ns(250), Some(250_001_000));
    }

    #[test]
    fn no_drift_over_a_long_run() {
        // An accumulating scheduler (t += 1/3 µs) drifts by many ns over 10^9 steps; computing
        // from the index lands on the exact second.
        let s = Schedule::open(0, 3_000_000.0);
        assert_eq!(s.intended_ns(3_000_000_000), Some(1_000_000_000_000));
        let s = Schedule::open(5, 7.0);
        assert_eq!(s.intended_ns(7 * 3600), Some(3600 * 1_000_000_000 + 5));
    }

    #[test]
    fn due_count_counts_every_overdue_record() {
        let s = Schedule::open(1_000_000, 1_000.0); // one per ms
        assert_eq!(s.due_count(0), 0);
        assert_eq!(s.due_count(1_000_000), 1);
        assert_eq!(s.due_count(1_999_999), 1);
        assert_eq!(s.due_count(2_000_000), 2);
        assert_eq!(s.due_count(101_000_000), 101);
        assert_eq!(Schedule::closed(0).due_count(0), u64::MAX);
        assert_eq!(Schedule::closed(0).intended_ns(3), None);
    }

    #[test]
    fn catch_up_after_a_stall_accrues_latency() {
        // 1000 records/s; the producer stalls for the first 100 ms and then sends everything due
        // at once. Every record's latency counts from its own intended time, so the stall shows
        // as latencies spread from ~0 to 100 ms, not as 101 records with zero latency.
        let s = Schedule::open(0, 1_000.0);
        let resume_ns = 100_000_000;
        let mut hist = Hist::new();
        for i in 0..s.due_count(resume_ns) {
            let intended = s.intended_ns(i).unwrap();
            hist.record_ns(resume_ns - intended);
        }
        assert_eq!(hist.len(), 101);
        let max = hist.max_us();
        assert!((99_900..=100_100).contains(&max), "max {max} us");
        let p50 = hist.quantile_us(0.5);
        assert!((49_000..=51_000).contains(&p50), "p50 {p50} us");
        assert!(hist.quantile_us(0.99) >= 98_000);
    }
}
