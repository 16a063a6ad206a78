//! The results of a run: the final table, the JSON report, the HDR interval log, and the
//! comparison of two runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::stats::{Hist, Hists};

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub p9999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Percentiles {
    pub fn of(h: &Hist) -> Percentiles {
        Percentiles {
            samples: h.len(),
            p50_us: h.quantile_us(0.5),
            p90_us: h.quantile_us(0.9),
            p99_us: h.quantile_us(0.99),
            p999_us: h.quantile_us(0.999),
            p9999_us: h.quantile_us(0.9999),
            max_us: h.max_us(),
            mean_us: h.mean_us(),
        }
    }

    fn columns(&self) -> [u64; 6] {
        [
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.p9999_us,
            self.max_us,
        ]
    }
}

/// Throughput and latency of one measurement (produce, end-to-end, consume).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Section {
    pub records: u64,
    pub bytes: u64,
    pub records_per_s: f64,
    pub mb_per_s: f64,
    /// `None` where this measurement has no latency (consume-only runs).
    pub latency: Option<Percentiles>,
}

impl Section {
    pub fn new(records: u64, bytes: u64, secs: f64, hist: Option<&Hist>) -> Section {
        let secs = secs.max(1e-9);
        Section {
            records,
            bytes,
            records_per_s: records as f64 / secs,
            mb_per_s: bytes as f64 / secs / 1e6,
            latency: hist.map(Percentiles::of),
        }
    }
}

/// Record counts over the whole run (warm-up and drain included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub sent: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub consumed: u64,
}

/// Everything a run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Results {
    pub bootstrap: String,
    pub measured_s: f64,
    pub produce: Option<Section>,
    /// Produce request written → response read, per request (producers with acks 1 or all):
    /// the part of `produce`'s latency spent outside the client.
    pub produce_request: Option<Percentiles>,
    pub end_to_end: Option<Section>,
    pub consume: Option<Section>,
    /// Raw loopback TCP baseline (MB/s), when measured.
    pub raw_mb_per_s: Option<f64>,
    pub counts: Counts,
    pub errors: BTreeMap<String, u64>,
    /// No errors, nothing failed, and (with producers) every sent record acknowledged.
    pub ok: bool,
}

/// Facts about the machine, so runs on different machines are not compared by mistake.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_kib: u64,
    pub hostname: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model: field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into()),
            kernel: read_trim("/proc/sys/kernel/osrelease"),
            memory_kib: field(&meminfo, "MemTotal")
                .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0),
            hostname: read_trim("/proc/sys/kernel/hostname"),
        }
    }
}

fn field(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// The JSON document written by `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub started_at_unix_s: u64,
    pub machine: Machine,
    pub config: Value,
    pub results: Results,
    /// Latency second by second (warm-up included): a p99 made by one stall of tens of
    /// milliseconds reads differently from one made by every second.
    pub intervals: Vec<IntervalSummary>,
}

impl Report {
    pub fn new(
        config: Value,
        results: Results,
        intervals: &[Interval],
        started_at_unix_s: u64,
    ) -> Report {
        Report {
            tool: "ringmq-loadgen",
            version: env!("CARGO_PKG_VERSION"),
            started_at_unix_s,
            machine: Machine::detect(),
            config,
            results,
            intervals: intervals.iter().map(IntervalSummary::of).collect(),
        }
    }
}

/// One interval of the run in the JSON report; the HDR interval log (`--hdr-log`) keeps the
/// whole histograms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntervalSummary {
    /// Start of the interval since the run's start, in seconds.
    pub start_s: f64,
    pub length_s: f64,
    /// `None` where the interval recorded no sample of that kind.
    pub produce: Option<Percentiles>,
    pub e2e: Option<Percentiles>,
    pub request: Option<Percentiles>,
}

impl IntervalSummary {
    fn of(iv: &Interval) -> IntervalSummary {
        let summary = |h: &Hist| (!h.is_empty()).then(|| Percentiles::of(h));
        IntervalSummary {
            start_s: iv.start.as_secs_f64(),
            length_s: iv.length.as_secs_f64(),
            produce: summary(&iv.hists.produce),
            e2e: summary(&iv.hists.e2e),
            request: summary(&iv.hists.request),
        }
    }
}

/// Formats a latency for a table cell: µs below 1 ms, ms below 10 s, seconds above.
pub fn fmt_us(us: u64) -> String {
    match us {
        0..=999 => format!("{us}us"),
        1_000..=9_999_999 => format!("{:.2}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

const COLUMNS: [&str; 6] = ["p50", "p90", "p99", "p99.9", "p99.99", "max"];

/// The final table: one row per measurement.
pub fn table(r: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "results for {} over {:.1}s measured:",
        r.bootstrap, r.measured_s
    );
    let _ = write!(out, "{:<12} {:>10} {:>12}", "", "MB/s", "records/s");
    for c in COLUMNS {
        let _ = write!(out, " {c:>9}");
    }
    out.push('\n');
    let rows = [
        ("produce", &r.produce),
        ("end-to-end", &r.end_to_end),
        ("consume", &r.consume),
    ];
    for (name, section) in rows {
        let Some(s) = section else { continue };
        let _ = write!(
            out,
            "{name:<12} {:>10.2} {:>12.1}",
            s.mb_per_s, s.records_per_s
        );
        match &s.latency {
            Some(p) => {
                for v in p.columns() {
                    let _ = write!(out, " {:>9}", fmt_us(v));
                }
            }
            None => {
                for _ in COLUMNS {
                    let _ = write!(out, " {:>9}", "-");
                }
            }
        }
        out.push('\n');
    }
    if let Some(p) = &r.produce_request {
        let _ = write!(out, "{:<12} {:>10} {:>12}", "  request", "-", "-");
        for v in p.columns() {
            let _ = write!(out, " {:>9}", fmt_us(v));
        }
        out.push('\n');
    }
    if let Some(raw) = r.raw_mb_per_s {
        let _ = write!(out, "{:<12} {raw:>10.2}", "raw tcp");
        if let Some(p) = &r.produce {
            let _ = write!(
                out,
                "   (produce = {:.1}% of raw)",
                100.0 * p.mb_per_s / raw.max(1e-9)
            );
        }
        out.push('\n');
    }
    let c = &r.counts;
    let _ = writeln!(
        out,
        "records: sent {} acknowledged {} failed {} consumed {}",
        c.sent, c.acknowledged, c.failed, c.consumed
    );
    if r.errors.is_empty() {
        let _ = writeln!(out, "errors: none");
    } else {
        let list: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(out, "ERRORS: {}", list.join(", "));
    }
    if !r.ok {
        let _ = writeln!(out, "RUN FAILED: see errors and counts above");
    }
    out
}

/// Ratios of a second run to the first: throughput and latency columns.
pub fn compare_table(first: &Results, second: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "ratios {} / {}:", second.bootstrap, first.bootstrap);
    let _ = write!(out, "{:<12} {:>10} {:>12}", "", "MB/s", "records/s");
    for c in COLUMNS {
        let _ = write!(out, " {c:>9}");
    }
    out.push('\n');
    let rows = [
        ("produce", &first.produce, &second.produce),
        ("end-to-end", &first.end_to_end, &second.end_to_end),
        ("consume", &first.consume, &second.consume),
    ];
    for (name, a, b) in rows {
        let (Some(a), Some(b)) = (a, b) else { continue };
        let _ = write!(
            out,
            "{name:<12} {:>10} {:>12}",
            ratio(b.mb_per_s, a.mb_per_s),
            ratio(b.records_per_s, a.records_per_s)
        );
        if let (Some(pa), Some(pb)) = (&a.latency, &b.latency) {
            for (x, y) in pa.columns().iter().zip(pb.columns()) {
                let _ = write!(out, " {:>9}", ratio(y as f64, *x as f64));
            }
        }
        out.push('\n');
    }
    out
}

/// The ratios of [`compare_table`] as JSON.
pub fn compare_json(first: &Results, second: &Results) -> Value {
    let mut rows = serde_json::Map::new();
    let pairs = [
        ("produce", &first.produce, &second.produce),
        ("end_to_end", &first.end_to_end, &second.end_to_end),
        ("consume", &first.consume, &second.consume),
    ];
    for (name, a, b) in pairs {
        let (Some(a), Some(b)) = (a, b) else { continue };
        let mut row = serde_json::Map::new();
        row.insert("mb_per_s".into(), ratio_value(b.mb_per_s, a.mb_per_s));
        row.insert(
            "records_per_s".into(),
            ratio_value(b.records_per_s, a.records_per_s),
        );
        if let (Some(pa), Some(pb)) = (&a.latency, &b.latency) {
            for ((col, x), y) in ["p50", "p90", "p99", "p999", "p9999", "max"]
                .iter()
                .zip(pa.columns())
                .zip(pb.columns())
            {
                row.insert(format!("{col}_us"), ratio_value(y as f64, x as f64));
            }
        }
        rows.insert(name.into(), Value::Object(row));
    }
    Value::Object(rows)
}

fn ratio(b: f64, a: f64) -> String {
    if a > 0.0 {
        format!("{:.2}x", b / a)
    } else {
        "-".into()
    }
}

fn ratio_value(b: f64, a: f64) -> Value {
    if a > 0.0 {
        serde_json::json!(b / a)
    } else {
        Value::Null
    }
}

/// One second's histograms, for the HDR interval log.
#[derive(Debug, Clone)]
pub struct Interval {
    /// Start of the interval since the run's start.
    pub start: Duration,
    pub length: Duration,
    pub hists: Hists,
}

/// Writes the HDR interval log: per interval, a `produce`, an `e2e` and a `request` histogram (values in
/// microseconds; the max column is divided by 1000 so it reads in milliseconds). Several runs
/// (`--compare`) share one log: the intervals of run `n` > 0 are tagged `run<n>-produce` and
/// `run<n>-e2e`, with start times relative to the first run.
pub fn write_hdr_log<W: std::io::Write>(
    out: &mut W,
    runs: &[(Duration, &[Interval])],
) -> Result<(), String> {
    use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
    use hdrhistogram::serialization::V2DeflateSerializer;
    let mut serializer = V2DeflateSerializer::new();
    let Some(&(base, _)) = runs.first() else {
        return Ok(());
    };
    let start = std::time::UNIX_EPOCH + base;
    let mut log = IntervalLogWriterBuilder::new()
        .add_comment("ringmq-loadgen interval log; values in microseconds")
        .with_start_time(start)
        .with_base_time(start)
        .with_max_value_divisor(1000.0)
        .begin_log_with(out, &mut serializer)
        .map_err(|e| e.to_string())?;
    for (n, &(run_start, intervals)) in runs.iter().enumerate() {
        let prefix = if n == 0 {
            String::new()
        } else {
            format!("run{n}-")
        };
        let offset = run_start.saturating_sub(base);
        for iv in intervals {
            let kinds = [
                ("produce", &iv.hists.produce),
                ("e2e", &iv.hists.e2e),
                ("request", &iv.hists.request),
            ];
            for (kind, h) in kinds {
                if h.is_empty() {
                    continue;
                }
                let tag = format!("{prefix}{kind}");
                log.write_histogram(h.inner(), offset + iv.start, iv.length, Tag::new(&tag))
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results() -> Results {
        let mut h = Hist::new();
        for us in 1..=1000u64 {
            h.record_ns(us * 1000);
        }
        Results {
            bootstrap: "127.0.0.1:9092".into(),
            measured_s: 10.0,
            produce: Some(Section::new(100_000, 100_000_000, 10.0, Some(&h))),
            produce_request: None,
            end_to_end: Some(Section::new(100_000, 100_000_000, 10.0, Some(&h))),
            consume: None,
            raw_mb_per_s: Some(1000.0),
            counts: Counts {
                sent: 120_000,
                acknowledged: 120_000,
                failed: 0,
                consumed: 120_000,
            },
            errors: BTreeMap::new(),
            ok: true,
        }
    }

    #[test]
    fn table_shows_throughput_and_percentiles() {
        let t = table(&results());
        let produce = t.lines().find(|l| l.starts_with("produce")).unwrap();
        // 100 MB over 10 s = 10 MB/s, 10000 records/s; p50 of 1..1000 ms spread ~500 us.
        assert!(
            produce.contains("10.00") && produce.contains("10000.0"),
            "{t}"
        );
        assert!(
            produce.contains("500us") || produce.contains("501us"),
            "{t}"
        );
        assert!(produce.contains("1.00ms"), "{t}");
        assert!(t.contains("errors: none") && !t.contains("FAILED"), "{t}");
        assert!(t.contains("(produce = 1.0% of raw)"), "{t}");
        assert!(
            !t.contains("request"),
            "no request row without samples: {t}"
        );
        let mut with_requests = results();
        let mut req = Hist::new();
        req.record_ns(250_000);
        with_requests.produce_request = Some(Percentiles::of(&req));
        let t = table(&with_requests);
        let row = t.lines().find(|l| l.trim_start().starts_with("request"));
        assert!(row.is_some_and(|l| l.contains("250us")), "{t}");
        let mut bad = results();
        bad.errors.insert("timeout".into(), 3);
        bad.ok = false;
        let t = table(&bad);
        assert!(
            t.contains("ERRORS: timeout 3") && t.contains("RUN FAILED"),
            "{t}"
        );
    }

    #[test]
    fn json_report_has_config_version_machine_and_results() {
        let mut second = Hists::default();
        for us in [100, 200, 40_000] {
            second.produce.record_ns(us * 1000);
        }
        let ivs = [Interval {
            start: Duration::from_secs(3),
            length: Duration::from_secs(1),
            hists: second,
        }];
        let r = Report::new(
            serde_json::json!({"acks": 1}),
            results(),
            &ivs,
            1_700_000_000,
        );
        let v: Value = serde_json::to_value(&r).unwrap();
        let iv = &v["intervals"][0];
        assert_eq!(iv["start_s"], 3.0);
        assert_eq!(iv["produce"]["samples"], 3);
        assert!(iv["produce"]["max_us"].as_u64().unwrap() >= 39_000, "{iv}");
        assert!(
            iv["e2e"].is_null(),
            "an empty histogram is reported as null: {iv}"
        );
        assert_eq!(v["tool"], "ringmq-loadgen");
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(v["config"]["acks"], 1);
        assert!(v["machine"]["cores"].as_u64().unwrap() >= 1);
        assert!(v["machine"]["kernel"].is_string() && v["machine"]["cpu_model"].is_string());
        let p = &v["results"]["produce"];
        assert_eq!(p["records"], 100_000);
        assert_eq!(p["mb_per_s"], 10.0);
        for key in [
            "p50_us", "p90_us", "p99_us", "p999_us", "p9999_us", "max_us",
        ] {
            assert!(p["latency"][key].is_u64(), "{key} missing: {p}");
        }
        assert_eq!(v["results"]["counts"]["acknowledged"], 120_000);
        assert_eq!(v["results"]["ok"], true);
    }

    #[test]
    fn compare_prints_ratios() {
        let a = results();
        let mut b = results();
        b.bootstrap = "other:9092".into();
        b.produce = Some(Section::new(200_000, 200_000_000, 10.0, None));
        let t = compare_table(&a, &b);
        assert!(
            t.lines()
                .any(|l| l.starts_with("produce") && l.contains("2.00x")),
            "{t}"
        );
        let j = compare_json(&a, &b);
        assert_eq!(j["produce"]["mb_per_s"], 2.0);
        assert_eq!(j["end_to_end"]["p99_us"], 1.0);
    }

    #[test]
    fn hdr_log_round_trips() {
        use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
        let mut hists = Hists::default();
        hists.produce.record_ns(2_000_000);
        hists.e2e.record_ns(5_000_000);
        let iv = Interval {
            start: Duration::from_secs(1),
            length: Duration::from_secs(1),
            hists,
        };
        let mut buf = Vec::new();
        let t0 = Duration::from_secs(1_700_000_000);
        let ivs = [iv.clone(), iv];
        let later = t0 + Duration::from_secs(9);
        write_hdr_log(&mut buf, &[(t0, &ivs), (later, &ivs[..1])]).unwrap();
        let tags: Vec<String> = IntervalLogIterator::new(&buf)
            .filter_map(|e| match e {
                Ok(LogEntry::Interval(h)) => h.tag().map(|t| t.as_str().to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(
            tags,
            [
                "produce",
                "e2e",
                "produce",
                "e2e",
                "run1-produce",
                "run1-e2e"
            ]
        );
    }

    #[test]
    fn latency_cells_pick_a_readable_unit() {
        assert_eq!(fmt_us(999), "999us");
        assert_eq!(fmt_us(1_500), "1.50ms");
        assert_eq!(fmt_us(12_000_000), "12.00s");
    }
}
