//! The engine append benchmark: 1 KiB records in 16 KiB and 256 KiB batches, Written and
//! Durable, into a shard holding 1, 64 and 10,000 queues, from 64 concurrent appenders.
//! Throughput is quoted as a ratio to the raw O_DIRECT loop ([`crate::raw`]) with the same
//! write size, and Durable latency as a ratio to a bare 4 KiB write+fdatasync
//! ([`crate::fsync`]), both measured in the same run, interleaved with the engine runs.
//!
//! Targets (printed with each result): Written >= 0.85 x raw; 10,000 queues >= 0.9 x 1 queue;
//! Durable with 64 appenders >= 0.6 x raw; Durable p99 <= 3 x bare write+fdatasync p99.
//! Beside each Durable p99 the report prints two floors: Little's law at the fastest raw
//! rate, and the group-commit floor, the closed loop's outstanding bytes as one write + one
//! fdatasync per round with no engine at all ([`fsync::group_commit_latency`]), measured in
//! the same run into the blocks the engine writes (fallocated in a fresh log, written ones in
//! a recycling steady state).

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use ringmq_engine::{Durability, EngineError, QueueId, Shard, ShardConfig};
use ringmq_wire::record_batch::{BatchBuilder, ProducerStamp, Record};

use crate::fsync::{self, FsyncPattern};
use crate::raw::{self, FileLayout, RawWriteSpec, Throughput};
use crate::stats::{latency_histogram, median, LatencyUs};

/// Value bytes per record: with its key and framing a record takes about 1 KiB.
pub const RECORD_VALUE_BYTES: usize = 1000;
/// Distinct prebuilt batches per batch size (appends reuse them; the engine copies anyway).
pub const BATCH_POOL: usize = 16;
/// Largest batch the benchmark's shards accept (the biggest sent is ~256 KiB).
pub const MAX_BATCH_BYTES: u32 = 1 << 20;
/// Writes the raw baseline keeps in flight ("several").
pub const RAW_IN_FLIGHT: usize = 8;
/// The engine's own write shape, for a like-for-like raw figure: its staging chunk (the size of
/// every whole-chunk write, `WRITE_CHUNK_BYTES` in engine/src/log/appender.rs), issued
/// [`RAW_IN_FLIGHT`] at a time (`MAX_WRITES_IN_FLIGHT` in engine/src/commit.rs), from the same
/// executor's registered I/O memory as the engine (the bench main sizes it as the engine
/// recommends; with a 4 MiB pool only about 3 of the 8 buffers fit and this line drops to ~0.7
/// of the 256 KiB line, kernel-notes/o-direct-and-page-cache.md).
pub const ENGINE_WRITE_BYTES: usize = 1 << 20;
/// The engine's entry header in front of each batch in the log (engine/FORMAT.md).
pub const ENTRY_HEADER_BYTES: usize = ringmq_engine::format::entry::HEADER_LEN;

/// Sizes of one benchmark run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub repetitions: usize,
    pub bytes_per_run: u64,
    pub segment_size_bytes: u64,
    pub appenders: usize,
    pub batch_sizes: Vec<usize>,
    pub queue_counts: Vec<u32>,
    pub durabilities: Vec<Durability>,
    pub bare_fsync_pairs: usize,
    /// Offered rate of the open-loop run; None: [`OPEN_LOOP_LOAD`] x the closed-loop rate.
    pub open_loop_mb_per_s: Option<f64>,
    /// The engine's zero-fill of the active segment ahead of the log (`ShardConfig::zero_ahead`).
    pub zero_ahead: ZeroAhead,
    /// Retention by size of this many segments, reached before the timed window
    /// ([`RETAIN_SEGMENTS_ENV`]); None: no retention, a fresh log.
    pub retain_segments: Option<u64>,
    /// `ShardConfig::recycle_segments` ([`RECYCLE_ENV`]).
    pub recycle: bool,
    /// Rounds of the group-commit floor at least (more when `bytes_per_run` holds more).
    pub floor_min_rounds: usize,
}

/// How engine runs treat the shard's zero-fill ahead of the log ([`ZERO_AHEAD_ENV`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroAhead {
    /// Turned off: every append lands in fallocated (unwritten) blocks.
    Off,
    /// On, as configured by default, and the run starts at once: the log is never quiet long
    /// enough for it, so appends land in fallocated blocks as with `Off` (a broker under load
    /// from its first second).
    On,
    /// On, and the run starts once the fresh shard has zero-filled its active segment (a
    /// broker that was up and quiet for a moment); with a segment larger than the run, every
    /// append overwrites written blocks.
    Wait,
}

/// Environment variables that narrow a plan to a subset (comma-separated lists), so that
/// before/after comparisons of one configuration take seconds, not minutes.
pub const BATCH_KIB_ENV: &str = "RINGMQ_BENCH_BATCH_KIB";
pub const QUEUES_ENV: &str = "RINGMQ_BENCH_QUEUES";
/// `written`, `durable` or both.
pub const ACKS_ENV: &str = "RINGMQ_BENCH_ACKS";
pub const REPS_ENV: &str = "RINGMQ_BENCH_REPS";
/// Fixed offered rate (MB/s) for the open-loop run, so that A/B runs compare latency at the
/// same load (by default the rate follows each run's own closed-loop throughput).
pub const OPEN_MBPS_ENV: &str = "RINGMQ_BENCH_OPEN_MBPS";
/// MiB appended per engine run (and written per raw run); a multiple of 1 MiB.
pub const MIB_ENV: &str = "RINGMQ_BENCH_MIB";
/// Segment size in MiB (default: the plan's), e.g. to keep a run inside one segment.
pub const SEGMENT_MIB_ENV: &str = "RINGMQ_BENCH_SEGMENT_MIB";
/// `off`, `on` (default) or `wait`: see [`ZeroAhead`].
pub const ZERO_AHEAD_ENV: &str = "RINGMQ_BENCH_ZERO_AHEAD";
/// N: each engine run keeps N segments (retention by size) and first appends N + 2 segments'
/// worth of Written batches, untimed, so that the timed window sees the steady state of a
/// long-running shard: retention removing segments, and (with [`RECYCLE_ENV`] on) the rolls
/// reusing them.
pub const RETAIN_SEGMENTS_ENV: &str = "RINGMQ_BENCH_RETAIN_SEGMENTS";
/// `on` (default) or `off`: `ShardConfig::recycle_segments`.
pub const RECYCLE_ENV: &str = "RINGMQ_BENCH_RECYCLE";
/// Most segments [`RETAIN_SEGMENTS_ENV`] may keep.
pub const MAX_RETAIN_SEGMENTS: u64 = 64;
/// Most MiB per run a plan may ask for.
pub const MAX_MIB_PER_RUN: u64 = 16 << 10;
/// How long a run waits for [`ZeroAhead::Wait`] at most.
const ZERO_AHEAD_WAIT_LIMIT: Duration = Duration::from_secs(120);
/// Most repetitions a plan may ask for.
pub const MAX_REPETITIONS: usize = 50;

impl Plan {
    pub fn full() -> Plan {
        Plan {
            repetitions: 3,
            bytes_per_run: 256 << 20,
            segment_size_bytes: 128 << 20,
            appenders: 64,
            batch_sizes: vec![16 << 10, 256 << 10],
            queue_counts: vec![1, 64, 10_000],
            durabilities: vec![Durability::Written, Durability::Durable],
            bare_fsync_pairs: 1000,
            open_loop_mb_per_s: None,
            zero_ahead: ZeroAhead::On,
            retain_segments: None,
            recycle: true,
            floor_min_rounds: 50,
        }
    }

    /// This plan narrowed by [`BATCH_KIB_ENV`], [`QUEUES_ENV`], [`ACKS_ENV`] and [`REPS_ENV`]
    /// where they are set.
    pub fn with_env_overrides(mut self) -> Result<Plan, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if let Some(v) = var(BATCH_KIB_ENV) {
            self.batch_sizes = parse_list::<usize>(BATCH_KIB_ENV, &v)?
                .into_iter()
                .map(|k| k << 10)
                .collect();
        }
        if let Some(v) = var(QUEUES_ENV) {
            self.queue_counts = parse_list(QUEUES_ENV, &v)?;
        }
        if let Some(v) = var(ACKS_ENV) {
            self.durabilities = v
                .split(',')
                .map(|a| match a.trim() {
                    "written" => Ok(Durability::Written),
                    "durable" => Ok(Durability::Durable),
                    other => Err(format!("{ACKS_ENV}: unknown ack {other:?}")),
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = var(MIB_ENV) {
            let mib: u64 = v
                .trim()
                .parse()
                .ok()
                .filter(|m| (1..=MAX_MIB_PER_RUN).contains(m))
                .ok_or_else(|| format!("{MIB_ENV}: want 1..={MAX_MIB_PER_RUN}, got {v:?}"))?;
            self.bytes_per_run = mib << 20;
        }
        if let Some(v) = var(SEGMENT_MIB_ENV) {
            let mib: u64 = v
                .trim()
                .parse()
                .ok()
                .filter(|m| (1..=MAX_MIB_PER_RUN).contains(m))
                .ok_or_else(|| {
                    format!("{SEGMENT_MIB_ENV}: want 1..={MAX_MIB_PER_RUN}, got {v:?}")
                })?;
            self.segment_size_bytes = mib << 20;
        }
        if let Some(v) = var(OPEN_MBPS_ENV) {
            self.open_loop_mb_per_s = Some(
                v.trim()
                    .parse()
                    .ok()
                    .filter(|r: &f64| *r > 0.0 && r.is_finite())
                    .ok_or_else(|| format!("{OPEN_MBPS_ENV}: want a positive rate, got {v:?}"))?,
            );
        }
        if let Some(v) = var(ZERO_AHEAD_ENV) {
            self.zero_ahead = match v.trim() {
                "off" => ZeroAhead::Off,
                "on" => ZeroAhead::On,
                "wait" => ZeroAhead::Wait,
                other => {
                    return Err(format!(
                        "{ZERO_AHEAD_ENV}: want off, on or wait, got {other:?}"
                    ))
                }
            };
        }
        if let Some(v) = var(RETAIN_SEGMENTS_ENV) {
            self.retain_segments = Some(
                v.trim()
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_RETAIN_SEGMENTS).contains(n))
                    .ok_or_else(|| {
                        format!("{RETAIN_SEGMENTS_ENV}: want 1..={MAX_RETAIN_SEGMENTS}, got {v:?}")
                    })?,
            );
        }
        if let Some(v) = var(RECYCLE_ENV) {
            self.recycle = match v.trim() {
                "on" => true,
                "off" => false,
                other => return Err(format!("{RECYCLE_ENV}: want on or off, got {other:?}")),
            };
        }
        if let Some(v) = var(REPS_ENV) {
            self.repetitions = v
                .trim()
                .parse()
                .ok()
                .filter(|r| (1..=MAX_REPETITIONS).contains(r))
                .ok_or_else(|| format!("{REPS_ENV}: want 1..={MAX_REPETITIONS}, got {v:?}"))?;
        }
        Ok(self)
    }

    /// Seconds, not minutes: keeps the benchmark compiling and running under `cargo test`.
    pub fn quick() -> Plan {
        Plan {
            repetitions: 1,
            bytes_per_run: 4 << 20,
            segment_size_bytes: 2 << 20,
            bare_fsync_pairs: 40,
            floor_min_rounds: 4,
            ..Plan::full()
        }
    }

    /// The blocks the engine's timed appends land in: overwrites of written blocks in a steady
    /// state that recycles segments or after the active segment was zero-filled, unwritten
    /// (fallocated) blocks in a fresh log.
    pub fn engine_layout(&self) -> FileLayout {
        let recycled = self.retain_segments.is_some() && self.recycle;
        if recycled || self.zero_ahead == ZeroAhead::Wait {
            FileLayout::Zeroed
        } else {
            FileLayout::Fallocated
        }
    }
}

/// One engine configuration's medians.
#[derive(Debug, Clone)]
pub struct Row {
    pub batch_bytes: usize,
    pub durability: Durability,
    pub queues: u32,
    pub mb_per_s: f64,
    pub latency: Option<LatencyUs>,
    /// CPU time of the executor thread over the run's wall time (1.0 = one core saturated).
    pub cpu_busy: f64,
    /// Bytes the closed loop keeps outstanding: appenders x mean batch length.
    pub outstanding_bytes: f64,
}

/// The closed loop's group-commit floor for one batch size ([`fsync::group_commit_latency`]):
/// what the appenders' outstanding bytes cost the disk as one write and one fdatasync per round.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    pub batch_bytes: usize,
    /// Bytes per round: appenders x (batch + entry header), rounded up to a block.
    pub round_bytes: usize,
    pub layout: FileLayout,
    pub latency: LatencyUs,
    pub mb_per_s: f64,
}

/// Everything one benchmark run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Per batch size: (raw MB/s into a fallocated file, raw MB/s into a zero-filled file).
    pub raw_mb_per_s: Vec<(usize, f64, f64)>,
    /// Raw MB/s into a fallocated file with the engine's write shape ([`ENGINE_WRITE_BYTES`]).
    pub raw_engine_shape_mb_per_s: f64,
    pub bare_fsync: LatencyUs,
    pub rows: Vec<Row>,
    /// Durable appends paced open loop at [`OPEN_LOOP_LOAD`] of the closed-loop Durable
    /// throughput, one per batch size.
    pub open_loop: Vec<OpenLoopRow>,
    /// One per batch size that ran Durable.
    pub floors: Vec<Floor>,
}

/// Fraction of the closed-loop Durable throughput the open-loop run offers: latency targets
/// are about a loaded engine, not a saturated one (a saturated closed loop only measures its
/// own queue: by Little's law its mean latency is the bytes outstanding over the throughput).
pub const OPEN_LOOP_LOAD: f64 = 0.5;

/// One open-loop Durable run's medians.
#[derive(Debug, Clone)]
pub struct OpenLoopRow {
    pub batch_bytes: usize,
    pub queues: u32,
    /// Offered rate.
    pub offered_mb_per_s: f64,
    /// Achieved rate (below the offered one when the engine could not keep up).
    pub mb_per_s: f64,
    /// From each append's scheduled start, not its actual start (no coordinated omission).
    pub latency: LatencyUs,
}

impl Report {
    fn raw_for(&self, batch_bytes: usize) -> (f64, f64) {
        self.raw_mb_per_s
            .iter()
            .find(|r| r.0 == batch_bytes)
            .map_or((f64::NAN, f64::NAN), |r| (r.1, r.2))
    }

    fn row(&self, batch_bytes: usize, durability: Durability, queues: u32) -> Option<&Row> {
        self.rows.iter().find(|r| {
            r.batch_bytes == batch_bytes && r.durability == durability && r.queues == queues
        })
    }

    /// The report as printed: one line per configuration, then the targets.
    pub fn render(&self, plan: &Plan) -> String {
        let mut out = String::new();
        let line = |out: &mut String, s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(
            &mut out,
            format!(
                "engine append: 1 KiB records, {} appenders, {} MiB per run, segments {} MiB, zero-ahead {:?}, retained segments {}, recycle {}, median of {}",
                plan.appenders,
                plan.bytes_per_run >> 20,
                plan.segment_size_bytes >> 20,
                plan.zero_ahead,
                plan.retain_segments.map_or("all".to_string(), |n| n.to_string()),
                plan.recycle,
                plan.repetitions
            ),
        );
        for (b, f, z) in &self.raw_mb_per_s {
            line(
                &mut out,
                format!(
                    "raw O_DIRECT {:>3} KiB x{RAW_IN_FLIGHT} in flight: fallocated {f:>6.0} MB/s, zero-filled {z:>6.0} MB/s",
                    b >> 10
                ),
            );
        }
        line(
            &mut out,
            format!(
                "raw O_DIRECT {:>3} KiB x{RAW_IN_FLIGHT} in flight (the engine's write shape): fallocated {:>6.0} MB/s",
                ENGINE_WRITE_BYTES >> 10,
                self.raw_engine_shape_mb_per_s
            ),
        );
        let bare = self.bare_fsync;
        line(
            &mut out,
            format!(
                "bare 4 KiB write+fdatasync ({}): p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us",
                FsyncPattern::AppendPreallocated.name(),
                bare.p50,
                bare.p99,
                bare.p999
            ),
        );
        for f in &self.floors {
            line(
                &mut out,
                format!(
                    "group-commit floor {:>3} KiB: {} appenders' {} KiB as one write + one fdatasync per round, {}: {:.0} MB/s, round p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us",
                    f.batch_bytes >> 10,
                    plan.appenders,
                    f.round_bytes >> 10,
                    f.layout.name(),
                    f.mb_per_s,
                    f.latency.p50,
                    f.latency.p99,
                    f.latency.p999
                ),
            );
        }
        line(
            &mut out,
            "batch    durability queues    MB/s  /raw(falloc) /raw(zeroed)  cpu  p50/p99/p99.9 us"
                .into(),
        );
        for r in &self.rows {
            let (f, z) = self.raw_for(r.batch_bytes);
            let lat = r.latency.map_or(String::new(), |l| {
                format!("{:.0}/{:.0}/{:.0}", l.p50, l.p99, l.p999)
            });
            line(
                &mut out,
                format!(
                    "{:>3} KiB  {:<10} {:>6}  {:>6.0}  {:>12.2} {:>12.2}  {:>3.0}%  {lat}",
                    r.batch_bytes >> 10,
                    format!("{:?}", r.durability),
                    r.queues,
                    r.mb_per_s,
                    r.mb_per_s / f,
                    r.mb_per_s / z,
                    r.cpu_busy * 100.0
                ),
            );
        }
        for o in &self.open_loop {
            line(
                &mut out,
                format!(
                    "{:>3} KiB  Durable open loop {} queues: offered {:.0} MB/s ({OPEN_LOOP_LOAD} x closed loop), achieved {:.0} MB/s, p50/p99/p99.9 {:.0}/{:.0}/{:.0} us",
                    o.batch_bytes >> 10,
                    o.queues,
                    o.offered_mb_per_s,
                    o.mb_per_s,
                    o.latency.p50,
                    o.latency.p99,
                    o.latency.p999
                ),
            );
        }
        line(&mut out, "targets (ratio vs raw into a fallocated file, as the engine's segments are; zero-filled in brackets):".into());
        for &b in &plan.batch_sizes {
            let (f, z) = self.raw_for(b);
            for &q in &plan.queue_counts {
                if let Some(r) = self.row(b, Durability::Written, q) {
                    line(
                        &mut out,
                        target(
                            format!("{} KiB Written {q} queues >= 0.85 x raw", b >> 10),
                            r.mb_per_s / f,
                            r.mb_per_s / z,
                            0.85,
                        ),
                    );
                }
            }
            let one = self.row(b, Durability::Written, 1);
            let many = self.row(b, Durability::Written, 10_000);
            if let (Some(one), Some(many)) = (one, many) {
                let ratio = many.mb_per_s / one.mb_per_s;
                line(
                    &mut out,
                    target(
                        format!("{} KiB Written 10000 queues >= 0.9 x 1 queue", b >> 10),
                        ratio,
                        ratio,
                        0.9,
                    ),
                );
            }
            for &q in &plan.queue_counts {
                if let Some(r) = self.row(b, Durability::Durable, q) {
                    line(
                        &mut out,
                        target(
                            format!("{} KiB Durable {q} queues >= 0.6 x raw", b >> 10),
                            r.mb_per_s / f,
                            r.mb_per_s / z,
                            0.6,
                        ),
                    );
                    if let Some(l) = r.latency {
                        let ratio = bare.p99 / l.p99; // >= 1/3 means p99 <= 3 x bare
                        line(
                            &mut out,
                            format!(
                                "  {} KiB Durable {q} queues p99 {:.0} us = {:.2} x bare p99 (target <= 3): {}",
                                b >> 10,
                                l.p99,
                                l.p99 / bare.p99,
                                if ratio >= 1.0 / 3.0 { "MET" } else { "MISSED" }
                            ),
                        );
                        line(&mut out, self.littles_law(plan, r, l));
                        if let Some(f) = self.floors.iter().find(|f| f.batch_bytes == b) {
                            line(&mut out, self.against_floor(f, l));
                        }
                    }
                }
            }
        }
        for o in &self.open_loop {
            line(
                &mut out,
                format!(
                    "  {} KiB Durable open loop at {OPEN_LOOP_LOAD} x max, {} queues: p99 {:.0} us = {:.2} x bare p99 (target <= 3): {}",
                    o.batch_bytes >> 10,
                    o.queues,
                    o.latency.p99,
                    o.latency.p99 / bare.p99,
                    if o.latency.p99 <= 3.0 * bare.p99 { "MET" } else { "MISSED" }
                ),
            );
        }
        out
    }
}

impl Report {
    /// The closed loop's latency floor by Little's law, beside the target and the measured
    /// latency: with `outstanding` bytes always in flight, the mean latency is outstanding /
    /// throughput, at this run's throughput and at the fastest rate any raw loop of the run
    /// reached (a floor for any engine on this disk: no engine writes faster than the disk).
    fn littles_law(&self, plan: &Plan, r: &Row, l: LatencyUs) -> String {
        let target = 3.0 * self.bare_fsync.p99;
        let fastest = self
            .raw_mb_per_s
            .iter()
            .flat_map(|&(_, f, z)| [f, z])
            .chain([self.raw_engine_shape_mb_per_s])
            .filter(|x| x.is_finite())
            .fold(0.0f64, f64::max);
        // bytes / (MB/s) = us
        let at_run = r.outstanding_bytes / r.mb_per_s;
        let at_disk = r.outstanding_bytes / fastest;
        format!(
            "    Little's law: {} appenders x {:.0} KiB outstanding -> mean latency {:.0} us at this run's {:.0} MB/s (measured: p50 {:.0}, p99 {:.0} us); >= {:.0} us at the fastest raw rate of the run ({:.0} MB/s) for ANY engine; target p99 <= {:.0} us: {}",
            plan.appenders,
            r.outstanding_bytes / plan.appenders as f64 / 1024.0,
            at_run,
            r.mb_per_s,
            l.p50,
            l.p99,
            at_disk,
            fastest,
            target,
            if at_disk > target {
                "out of reach of any engine for this closed loop"
            } else {
                "not excluded by the bound"
            }
        )
    }

    /// The closed loop's p99 against the group-commit floor of the same run, and the floor
    /// against the target: when the floor's own p99 is above 3 x bare, no engine meets the
    /// target on this disk in this run.
    fn against_floor(&self, f: &Floor, l: LatencyUs) -> String {
        let target = 3.0 * self.bare_fsync.p99;
        format!(
            "    group-commit floor: p99 {:.0} us = {:.2} x bare p99, engine p99 = {:.2} x floor p99 (p50 {:.2} x): the target is {}",
            f.latency.p99,
            f.latency.p99 / self.bare_fsync.p99,
            l.p99 / f.latency.p99,
            l.p50 / f.latency.p50,
            if f.latency.p99 > target {
                "below this disk's floor in this run"
            } else {
                "above the floor in this run"
            }
        )
    }
}

fn parse_list<T: std::str::FromStr>(name: &str, v: &str) -> Result<Vec<T>, String> {
    v.split(',')
        .map(|x| {
            x.trim()
                .parse()
                .map_err(|_| format!("{name}: cannot parse {x:?}"))
        })
        .collect()
}

fn target(what: String, ratio: f64, ratio_alt: f64, goal: f64) -> String {
    let verdict = if ratio >= goal { "MET" } else { "MISSED" };
    format!("  {what}: {ratio:.2} [{ratio_alt:.2}] {verdict}")
}

/// Runs the whole plan in `dir` (inside a glommio executor) and returns the medians.
pub async fn run(dir: &Path, plan: &Plan) -> Result<Report, String> {
    let mut raw_mb_per_s = Vec::new();
    let mut engine_shape = Vec::new();
    let mut rows = Vec::new();
    let mut bare_runs = Vec::new();
    let mut open_loop = Vec::new();
    let mut floors = Vec::new();
    let durable = plan.durabilities.contains(&Durability::Durable);
    for &batch_bytes in &plan.batch_sizes {
        let mut falloc = Vec::new();
        let mut zeroed = Vec::new();
        let pool = build_pool(batch_bytes);
        let round_bytes = (plan.appenders
            * (mean_batch_bytes(&pool) as usize + ENTRY_HEADER_BYTES))
            .next_multiple_of(fsync::BARE_WRITE_BYTES);
        let floor_rounds = (plan.bytes_per_run as usize / round_bytes).max(plan.floor_min_rounds);
        let mut floor_runs = Vec::new();
        type PerConfig = (Durability, u32, Vec<f64>, Vec<LatencyUs>, Vec<f64>);
        let mut per_config: Vec<PerConfig> = Vec::new();
        for &durability in &plan.durabilities {
            for &q in &plan.queue_counts {
                per_config.push((durability, q, Vec::new(), Vec::new(), Vec::new()));
            }
        }
        for _ in 0..plan.repetitions {
            // Baselines and engine runs interleave, so they share the machine's mood.
            falloc
                .push(raw_mb(dir, batch_bytes, plan.bytes_per_run, FileLayout::Fallocated).await?);
            zeroed.push(raw_mb(dir, batch_bytes, plan.bytes_per_run, FileLayout::Zeroed).await?);
            engine_shape.push(
                raw_mb(
                    dir,
                    ENGINE_WRITE_BYTES,
                    plan.bytes_per_run,
                    FileLayout::Fallocated,
                )
                .await?,
            );
            let h = fsync::write_fdatasync_latency(
                dir,
                FsyncPattern::AppendPreallocated,
                plan.bare_fsync_pairs,
            )
            .await
            .map_err(|e| format!("bare fdatasync loop: {e}"))?;
            bare_runs.push(LatencyUs::of(&h));
            if durable {
                let (h, t) = fsync::group_commit_latency(
                    dir,
                    round_bytes,
                    floor_rounds,
                    plan.engine_layout(),
                )
                .await
                .map_err(|e| format!("group-commit floor: {e}"))?;
                floor_runs.push((LatencyUs::of(&h), t.mb_per_s()));
            }
            for (durability, q, mbs, lats, cpus) in per_config.iter_mut() {
                let (t, h, cpu) = append_run(dir, plan, &pool, *durability, *q, None)
                    .await
                    .map_err(|e| {
                        format!("engine run ({batch_bytes} B, {durability:?}, {q} queues): {e}")
                    })?;
                mbs.push(t.mb_per_s());
                lats.push(LatencyUs::of(&h));
                cpus.push(cpu.as_secs_f64() / t.elapsed.as_secs_f64().max(1e-9));
            }
        }
        raw_mb_per_s.push((batch_bytes, median(&falloc), median(&zeroed)));
        if !floor_runs.is_empty() {
            let lats: Vec<_> = floor_runs.iter().map(|r| r.0).collect();
            let mbs: Vec<_> = floor_runs.iter().map(|r| r.1).collect();
            floors.push(Floor {
                batch_bytes,
                round_bytes,
                layout: plan.engine_layout(),
                latency: LatencyUs::median_of(&lats),
                mb_per_s: median(&mbs),
            });
        }
        // Open loop at a fraction of the closed-loop Durable rate, with the most queues that
        // ran Durable (the hardest case for the index).
        let closed = per_config
            .iter()
            .filter(|c| c.0 == Durability::Durable)
            .max_by_key(|c| c.1)
            .map(|c| (c.1, median(&c.2)));
        if let Some((queues, closed_mb_s)) = closed {
            let offered = plan
                .open_loop_mb_per_s
                .unwrap_or(closed_mb_s * OPEN_LOOP_LOAD);
            let mut mbs = Vec::new();
            let mut lats = Vec::new();
            for _ in 0..plan.repetitions {
                let (t, h, _) = append_run(
                    dir,
                    plan,
                    &pool,
                    Durability::Durable,
                    queues,
                    Some(offered * 1e6),
                )
                .await
                .map_err(|e| format!("open-loop run ({batch_bytes} B): {e}"))?;
                mbs.push(t.mb_per_s());
                lats.push(LatencyUs::of(&h));
            }
            open_loop.push(OpenLoopRow {
                batch_bytes,
                queues,
                offered_mb_per_s: offered,
                mb_per_s: median(&mbs),
                latency: LatencyUs::median_of(&lats),
            });
        }
        for (durability, queues, mbs, lats, cpus) in per_config {
            let latency = (durability == Durability::Durable).then(|| LatencyUs::median_of(&lats));
            rows.push(Row {
                batch_bytes,
                durability,
                queues,
                mb_per_s: median(&mbs),
                latency,
                cpu_busy: median(&cpus),
                outstanding_bytes: plan.appenders as f64 * mean_batch_bytes(&pool),
            });
        }
    }
    Ok(Report {
        raw_mb_per_s,
        raw_engine_shape_mb_per_s: median(&engine_shape),
        bare_fsync: LatencyUs::median_of(&bare_runs),
        rows,
        open_loop,
        floors,
    })
}

/// CPU time (user + system) the calling thread has used so far.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the struct we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

async fn raw_mb(
    dir: &Path,
    write_bytes: usize,
    total_bytes: u64,
    layout: FileLayout,
) -> Result<f64, String> {
    let spec = RawWriteSpec {
        write_bytes,
        total_bytes,
        in_flight: RAW_IN_FLIGHT,
        layout,
    };
    raw::sequential_write(dir, spec)
        .await
        .map(|t| t.mb_per_s())
        .map_err(|e| format!("raw loop: {e}"))
}

/// Mean length of the batches in `pool`.
pub fn mean_batch_bytes(pool: &[Bytes]) -> f64 {
    pool.iter().map(|b| b.len() as f64).sum::<f64>() / pool.len().max(1) as f64
}

/// Prebuilt batches of about `batch_bytes` made of ~1 KiB records.
pub fn build_pool(batch_bytes: usize) -> Vec<Bytes> {
    let records = (batch_bytes / 1024).max(1);
    (0..BATCH_POOL)
        .map(|i| {
            let mut value = vec![0u8; RECORD_VALUE_BYTES];
            crate::raw::fill_pattern(&mut value, i as u64 + 1);
            let key = (i as u64).to_be_bytes();
            let mut b = BatchBuilder::new(batch_bytes + 4096);
            for r in 0..records {
                b.push(&Record {
                    key: Some(&key),
                    value: Some(&value),
                    headers: &[],
                    timestamp_ms: 1_700_000_000_000 + r as i64,
                });
            }
            Bytes::from(b.build(ProducerStamp::NONE, 0))
        })
        .collect()
}

/// One engine run on a fresh shard: `plan.appenders` tasks append until `bytes_per_run` bytes
/// were claimed. Returns the throughput, every append's latency (us) and the CPU time the
/// executor thread used in the timed window.
///
/// `pace_bytes_per_s`: None is a closed loop (each appender appends again as soon as its
/// append resolves). Some(rate) is an open loop: append number n is scheduled at
/// `n × mean batch / rate` after the start, the appenders take the schedule in turn, and each
/// latency counts from the scheduled time, so an engine that falls behind is charged for
/// the wait it caused.
pub async fn append_run(
    dir: &Path,
    plan: &Plan,
    pool: &[Bytes],
    durability: Durability,
    queues: u32,
    pace_bytes_per_s: Option<f64>,
) -> Result<(Throughput, Histogram<u64>, Duration), EngineError> {
    let mean_batch = mean_batch_bytes(pool);
    let interval = pace_bytes_per_s
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(mean_batch / r));
    let shard_dir = fresh_dir(dir);
    let config = ShardConfig {
        dir: shard_dir.clone(),
        segment_size_bytes: plan.segment_size_bytes,
        max_batch_bytes: MAX_BATCH_BYTES,
        zero_ahead: plan.zero_ahead != ZeroAhead::Off,
        retention_bytes: plan.retain_segments.map(|n| n * plan.segment_size_bytes),
        recycle_segments: plan.recycle,
        ..ShardConfig::default()
    };
    let shard = Shard::open(config).await?;
    if let Some(n) = plan.retain_segments {
        prefill(
            &shard,
            plan,
            pool,
            queues,
            (n + 2) * plan.segment_size_bytes,
        )
        .await?;
    }
    if plan.zero_ahead == ZeroAhead::Wait {
        let t0 = Instant::now();
        while !shard.zero_ahead().1 {
            if t0.elapsed() > ZERO_AHEAD_WAIT_LIMIT {
                return Err(EngineError::Config(
                    "the shard did not zero-fill its active segment in time",
                ));
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }
    let claimed = Rc::new(Cell::new(0u64));
    let next_append = Rc::new(Cell::new(0u64));
    // Made before the clock starts: each histogram is ~400 KiB of zeroed counters, and when
    // every task made its own on its first poll, those polls stalled the executor at the start
    // of every run and the open loop charged the appends scheduled meanwhile with the wait
    // (open-loop p99 median 4.8 -> 2.3 ms once fixed; benches/README.md, session 5).
    let hists: Vec<_> = (0..plan.appenders).map(|_| latency_histogram()).collect();
    let started = Instant::now();
    let cpu_started = thread_cpu_time();
    let tasks: Vec<_> = hists
        .into_iter()
        .map(|mut hist| {
            let (shard, claimed, next_append) =
                (shard.clone(), claimed.clone(), next_append.clone());
            let pool = pool.to_vec();
            let limit = plan.bytes_per_run;
            glommio::spawn_local(async move {
                while claimed.get() < limit {
                    let n = next_append.get();
                    next_append.set(n + 1);
                    let batch = pool[(n % pool.len() as u64) as usize].clone();
                    claimed.set(claimed.get() + batch.len() as u64);
                    let queue = QueueId((n % u64::from(queues)) as u32);
                    let t0 = match interval {
                        Some(every) => {
                            let due = started + every.mul_f64(n as f64);
                            let now = Instant::now();
                            if due > now {
                                glommio::timer::sleep(due - now).await;
                            }
                            due
                        }
                        None => Instant::now(),
                    };
                    shard.append(queue, batch, durability).await?;
                    hist.saturating_record((t0.elapsed().as_micros() as u64).max(1));
                }
                Ok::<_, EngineError>(hist)
            })
        })
        .collect();
    let mut hist = latency_histogram();
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(h) => hist.add(&h).expect("histograms share bounds"),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let elapsed: Duration = started.elapsed();
    let cpu = thread_cpu_time().saturating_sub(cpu_started);
    let closed = shard.close().await;
    drop(shard);
    let _ = std::fs::remove_dir_all(&shard_dir);
    if let Some(e) = first_error {
        return Err(e);
    }
    closed?;
    Ok((
        Throughput {
            bytes: claimed.get(),
            elapsed,
        },
        hist,
        cpu,
    ))
}

/// Appends `bytes` of Written batches from the plan's appenders, untimed.
async fn prefill(
    shard: &Rc<Shard>,
    plan: &Plan,
    pool: &[Bytes],
    queues: u32,
    bytes: u64,
) -> Result<(), EngineError> {
    let claimed = Rc::new(Cell::new(0u64));
    let tasks: Vec<_> = (0..plan.appenders)
        .map(|_| {
            let (shard, claimed, pool) = (shard.clone(), claimed.clone(), pool.to_vec());
            glommio::spawn_local(async move {
                let mut n = 0u64;
                while claimed.get() < bytes {
                    let batch = pool[(n % pool.len() as u64) as usize].clone();
                    claimed.set(claimed.get() + batch.len() as u64);
                    let queue = QueueId((n % u64::from(queues)) as u32);
                    shard.append(queue, batch, Durability::Written).await?;
                    n += 1;
                }
                Ok::<_, EngineError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    Ok(())
}

fn fresh_dir(dir: &Path) -> PathBuf {
    thread_local!(static RUN: Cell<u64> = const { Cell::new(0) });
    let n = RUN.with(|r| {
        r.set(r.get() + 1);
        r.get()
    });
    dir.join(format!("shard-{}-{n}", std::process::id()))
}
