//! Medians of repeated runs and latency summaries.

use hdrhistogram::Histogram;

/// Median of the values (mean of the middle two for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Percentiles of a latency histogram recorded in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyUs {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub count: u64,
}

impl LatencyUs {
    pub fn of(h: &Histogram<u64>) -> LatencyUs {
        LatencyUs {
            p50: h.value_at_quantile(0.50) as f64,
            p99: h.value_at_quantile(0.99) as f64,
            p999: h.value_at_quantile(0.999) as f64,
            max: h.max() as f64,
            count: h.len(),
        }
    }

    /// Field-wise median over repeated runs.
    pub fn median_of(runs: &[LatencyUs]) -> LatencyUs {
        let pick = |f: fn(&LatencyUs) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        LatencyUs {
            p50: pick(|l| l.p50),
            p99: pick(|l| l.p99),
            p999: pick(|l| l.p999),
            max: pick(|l| l.max),
            count: runs.iter().map(|l| l.count).sum(),
        }
    }
}

/// A histogram for latencies from 1 us to 60 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
