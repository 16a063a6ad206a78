//! Command-line configuration: the flags (clap derive) and the small value types they parse
//! into (rates, record-size distributions, key patterns, core lists, durations).
//!
//! Every number from the command line is checked against a named limit here, so the rest of the
//! tool can size buffers from it without further checks.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde_json::{json, Value};

/// Largest record value the tool will build (and so allocate per record).
pub const MAX_RECORD_BYTES: usize = 16 << 20;
/// Largest batch a producer accumulates per partition.
pub const MAX_BATCH_BYTES: usize = 64 << 20;
/// Most producers or consumers one run may start.
pub const MAX_CLIENTS: usize = 4096;
/// Most requests in flight on one producer connection.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Most partitions a topic may have for this tool (bounds per-partition state).
pub const MAX_PARTITIONS: i32 = 65_536;
/// Largest fetch response a consumer asks for.
pub const MAX_FETCH_BYTES: usize = 256 << 20;

/// `ringmq-loadgen`: drive any Kafka-compatible broker at a target rate and measure latency
/// from each record's intended send time (no coordinated omission).
#[derive(Parser, Debug, Clone)]
#[command(name = "ringmq-loadgen", version, about, long_about = None)]
pub struct Args {
    /// Broker address(es) to bootstrap from, comma separated (host:port).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,

    /// Topic to produce to and consume from.
    #[arg(long, default_value = "ringmq-loadgen")]
    pub topic: String,

    /// Create the topic first (an existing topic is fine).
    #[arg(long)]
    pub create_topic: bool,

    /// Partitions when creating the topic.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=MAX_PARTITIONS as i64))]
    pub partitions: i32,

    /// Replication factor when creating the topic.
    #[arg(long, default_value_t = 1)]
    pub replication_factor: i16,

    /// Record value size in bytes: `1024` or `uniform:100..2000`.
    #[arg(long, default_value = "1024", value_parser = SizeDist::parse)]
    pub record_size: SizeDist,

    /// Record keys: `none`, `random` or `hot:<fraction>` (that fraction of records share one key).
    #[arg(long, default_value = "none", value_parser = Keys::parse)]
    pub keys: Keys,

    /// Distinct keys drawn by `--keys random` and the cold part of `hot:`.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub key_space: u64,

    /// Bytes a producer collects per partition before sending a batch.
    #[arg(long, default_value_t = 16_384, value_parser = parse_batch_bytes)]
    pub batch_bytes: usize,

    /// Most time a record waits for its batch to fill, in milliseconds (fractions allowed).
    #[arg(long, default_value_t = 1.0, value_parser = parse_linger_ms)]
    pub linger_ms: f64,

    /// Acknowledgements the producer asks for: 0, 1, -1 (or `all`).
    #[arg(long, default_value = "1", value_parser = parse_acks, allow_hyphen_values = true)]
    pub acks: i16,

    /// Batch compression.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,

    /// Producer tasks (0: consumers only).
    #[arg(long, default_value_t = 1, value_parser = parse_clients)]
    pub producers: usize,

    /// Consumer tasks (0: producers only). With producers too, end-to-end latency is measured.
    #[arg(long, default_value_t = 1, value_parser = parse_clients)]
    pub consumers: usize,

    /// Consume as this consumer group (JoinGroup/SyncGroup/Heartbeat, range assignor) instead of
    /// assigning partitions to consumers directly.
    #[arg(long)]
    pub group: Option<String>,

    /// Where consumers start: `earliest` (read the existing backlog first) or `latest` (the
    /// log end at the start of the run). Group members start there too: no offsets are
    /// committed or fetched.
    #[arg(long, value_enum, default_value_t = StartFrom::Latest)]
    pub from: StartFrom,

    /// Consumers only (`--producers 0`): read until every partition reaches the log end
    /// found at the start of the run (a catch-up read of a backlog, with `--from earliest`),
    /// then stop; consume MB/s is then over the time from the start to the last consumer
    /// done, warm-up included. `--warmup` + `--duration` become a time limit: whatever is not
    /// read by then counts as `not_consumed`.
    #[arg(long)]
    pub until_end: bool,

    /// Measured time after the warm-up, e.g. `10s`, `500ms`, `2m`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Time at the start whose records are sent but not measured.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Target rate over all producers: records/s (`50000`, `50k`), bytes/s (`100MB/s`,
    /// `1GiB/s`), or `max` for closed loop (as fast as acknowledgements allow).
    #[arg(long, default_value = "10000", value_parser = Rate::parse)]
    pub rate: Rate,

    /// Cores to run on, e.g. `0`, `0,1`, `0-3` (default: all, or those above the broker's with
    /// --embedded).
    #[arg(long, value_parser = parse_cores)]
    pub cores: Option<CoreList>,

    /// Produce requests in flight per producer (the producers of a core share one connection
    /// per broker, whose window is the sum).
    #[arg(long, default_value_t = 5, value_parser = parse_in_flight)]
    pub max_in_flight: usize,

    /// How long a request may wait for its response.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// After the run, how long to wait for outstanding acknowledgements and for consumers to
    /// read everything that was acknowledged.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Fetch max wait (ms): how long the broker may hold a fetch with no new data.
    #[arg(long, default_value_t = 100)]
    pub fetch_max_wait_ms: i32,

    /// Bytes asked for per fetch.
    #[arg(long, default_value_t = 8 << 20, value_parser = parse_fetch_bytes)]
    pub fetch_max_bytes: usize,

    /// Count each fetch response's records before sending the next fetch (the loadgen before
    /// session 4). By default a consumer advances its positions from the batch headers, sends
    /// the next fetch, and counts the records (CRC, record walk, latency) while the broker
    /// serves it, as librdkafka's fetcher runs ahead of the application; one fetch is in
    /// flight per broker either way.
    #[arg(long)]
    pub serial_fetch: bool,

    /// Write a JSON report (configuration, tool version, machine, results) to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Write the HDR histogram interval log (one produce and one e2e histogram per second).
    #[arg(long)]
    pub hdr_log: Option<PathBuf>,

    /// After the run, run the same workload against this second bootstrap address and print
    /// the ratios (second / first).
    #[arg(long)]
    pub compare: Option<String>,

    /// Baseline: blast bytes over loopback TCP to a built-in sink (no protocol), report MB/s.
    #[arg(long, conflicts_with_all = ["embedded", "compare"])]
    pub raw: bool,

    /// Before the workload, measure the raw loopback TCP baseline for this long (e.g. `2s`) on
    /// the same cores, and quote produce MB/s against it.
    #[arg(long, value_parser = parse_duration)]
    pub raw_baseline: Option<Duration>,

    /// Start a ringmq broker for the run (on a free port and a temporary data dir).
    #[arg(long)]
    pub embedded: bool,

    /// The `ringmq` binary for --embedded (default: next to this binary).
    #[arg(long)]
    pub broker_bin: Option<PathBuf>,

    /// Cores for the embedded broker, which pins itself to cores 0..N (default: half of
    /// them); loadgen then defaults to the cores above.
    #[arg(long, value_parser = parse_broker_cores)]
    pub broker_cores: Option<usize>,

    /// No progress lines (the final table is still printed).
    #[arg(long)]
    pub quiet: bool,
}

impl Args {
    /// The configuration as JSON, every flag with its effective value, for the report.
    pub fn to_json(&self, cores: &CoreList) -> Value {
        json!({
            "bootstrap": self.bootstrap,
            "topic": self.topic,
            "create_topic": self.create_topic,
            "partitions": self.partitions,
            "replication_factor": self.replication_factor,
            "record_size": self.record_size.to_string(),
            "keys": self.keys.to_string(),
            "key_space": self.key_space,
            "batch_bytes": self.batch_bytes,
            "linger_ms": self.linger_ms,
            "acks": self.acks,
            "compression": self.compression.name(),
            "producers": self.producers,
            "consumers": self.consumers,
            "group": self.group,
            "from": self.from.name(),
            "until_end": self.until_end,
            "duration_s": self.duration.as_secs_f64(),
            "warmup_s": self.warmup.as_secs_f64(),
            "rate": self.rate.to_string(),
            "cores": cores.to_string(),
            "max_in_flight": self.max_in_flight,
            "request_timeout_s": self.request_timeout.as_secs_f64(),
            "drain_timeout_s": self.drain_timeout.as_secs_f64(),
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
            "fetch_max_bytes": self.fetch_max_bytes,
            "serial_fetch": self.serial_fetch,
            "embedded": self.embedded,
            "raw_baseline_s": self.raw_baseline.map(|d| d.as_secs_f64()),
            "broker_cores": self.broker_cores,
            "compare": self.compare,
        })
    }
}

/// Record value sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeDist {
    Fixed(usize),
    /// Uniform over `min..=max`.
    Uniform {
        min: usize,
        max: usize,
    },
}

impl SizeDist {
    pub fn parse(s: &str) -> Result<SizeDist, String> {
        let dist = match s.strip_prefix("uniform:") {
            Some(range) => {
                let (lo, hi) = range
                    .split_once("..")
                    .ok_or_else(|| format!("expected `uniform:MIN..MAX`, got `{s}`"))?;
                let min = parse_bytes(lo)?;
                let max = parse_bytes(hi)?;
                if min > max {
                    return Err(format!("uniform range {min}..{max} is empty"));
                }
                SizeDist::Uniform { min, max }
            }
            None => SizeDist::Fixed(parse_bytes(s)?),
        };
        if dist.max() > MAX_RECORD_BYTES {
            return Err(format!(
                "record size above the limit of {MAX_RECORD_BYTES} bytes"
            ));
        }
        Ok(dist)
    }

    pub fn max(&self) -> usize {
        match *self {
            SizeDist::Fixed(n) => n,
            SizeDist::Uniform { max, .. } => max,
        }
    }

    /// Mean size, to turn a byte rate into a record rate.
    pub fn mean(&self) -> f64 {
        match *self {
            SizeDist::Fixed(n) => n as f64,
            SizeDist::Uniform { min, max } => (min + max) as f64 / 2.0,
        }
    }

    /// Draws one size from a uniform random `u64`.
    pub fn sample(&self, random: u64) -> usize {
        match *self {
            SizeDist::Fixed(n) => n,
            SizeDist::Uniform { min, max } => min + (random % (max - min + 1) as u64) as usize,
        }
    }
}

impl fmt::Display for SizeDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeDist::Fixed(n) => write!(f, "{n}"),
            SizeDist::Uniform { min, max } => write!(f, "uniform:{min}..{max}"),
        }
    }
}

/// How record keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Keys {
    None,
    Random,
    /// This fraction of records use one hot key; the rest draw random keys.
    Hot(f64),
}

impl Keys {
    pub fn parse(s: &str) -> Result<Keys, String> {
        match s {
            "none" => Ok(Keys::None),
            "random" => Ok(Keys::Random),
            _ => {
                let f = s
                    .strip_prefix("hot:")
                    .ok_or_else(|| format!("expected none, random or hot:<fraction>, got `{s}`"))?;
                let fraction: f64 = f
                    .parse()
                    .map_err(|_| format!("hot key fraction `{f}` is not a number"))?;
                if !(0.0..=1.0).contains(&fraction) {
                    return Err(format!("hot key fraction {fraction} is not within 0..1"));
                }
                Ok(Keys::Hot(fraction))
            }
        }
    }
}

impl fmt::Display for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keys::None => write!(f, "none"),
            Keys::Random => write!(f, "random"),
            Keys::Hot(x) => write!(f, "hot:{x}"),
        }
    }
}

/// Target send rate over all producers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// Closed loop: as fast as the in-flight bound allows.
    Max,
    RecordsPerSec(f64),
    BytesPerSec(f64),
}

impl Rate {
    pub fn parse(s: &str) -> Result<Rate, String> {
        if s == "max" {
            return Ok(Rate::Max);
        }
        let rate = if let Some(bytes) = s.strip_suffix("/s").filter(|b| b.ends_with('B')) {
            let n = parse_scaled(bytes.trim_end_matches('B').trim_end_matches('i'), true)?;
            let per = if bytes.ends_with("iB") {
                binary_unit(bytes)
            } else {
                decimal_unit(bytes)
            };
            Rate::BytesPerSec(n * per)
        } else {
            Rate::RecordsPerSec(parse_scaled(s.trim_end_matches("/s"), false)?)
        };
        match rate {
            Rate::RecordsPerSec(r) | Rate::BytesPerSec(r) if !(r.is_finite() && r > 0.0) => {
                Err(format!("rate `{s}` must be above zero"))
            }
            _ => Ok(rate),
        }
    }

    /// Records per second over all producers for records of `mean_bytes`; `None` = closed loop.
    pub fn records_per_sec(&self, mean_bytes: f64) -> Option<f64> {
        match *self {
            Rate::Max => None,
            Rate::RecordsPerSec(r) => Some(r),
            Rate::BytesPerSec(b) => Some(b / mean_bytes.max(1.0)),
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Max => write!(f, "max"),
            Rate::RecordsPerSec(r) => write!(f, "{r} records/s"),
            Rate::BytesPerSec(b) => write!(f, "{} MB/s", b / 1e6),
        }
    }
}

/// A number with an optional k/M/G suffix (decimal), e.g. `50k`.
fn parse_scaled(s: &str, unit_follows: bool) -> Result<f64, String> {
    let s = s.trim();
    let (digits, mult) = if unit_follows {
        (s.trim_end_matches(['k', 'K', 'M', 'G']), 1.0)
    } else {
        match s.chars().last() {
            Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
            Some('M' | 'm') => (&s[..s.len() - 1], 1e6),
            Some('G' | 'g') => (&s[..s.len() - 1], 1e9),
            _ => (s, 1.0),
        }
    };
    let n: f64 = digits.parse().map_err(|_| format!("`{s}` is not a rate"))?;
    Ok(n * mult)
}

fn decimal_unit(s: &str) -> f64 {
    let s = s.trim_end_matches('B');
    match s.chars().last() {
        Some('k' | 'K') => 1e3,
        Some('M') => 1e6,
        Some('G') => 1e9,
        _ => 1.0,
    }
}

fn binary_unit(s: &str) -> f64 {
    let s = s.trim_end_matches("iB");
    match s.chars().last() {
        Some('K' | 'k') => 1024.0,
        Some('M') => 1024.0 * 1024.0,
        Some('G') => 1024.0 * 1024.0 * 1024.0,
        _ => 1.0,
    }
}

/// Produce acknowledgements.
fn parse_acks(s: &str) -> Result<i16, String> {
    match s {
        "0" => Ok(0),
        "1" => Ok(1),
        "-1" | "all" => Ok(-1),
        _ => Err(format!("acks must be 0, 1, -1 or all, got `{s}`")),
    }
}

/// Batch compression codecs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl CompressionArg {
    pub fn name(&self) -> &'static str {
        match self {
            CompressionArg::None => "none",
            CompressionArg::Gzip => "gzip",
            CompressionArg::Snappy => "snappy",
            CompressionArg::Lz4 => "lz4",
            CompressionArg::Zstd => "zstd",
        }
    }
}

/// Where consumers start reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StartFrom {
    Earliest,
    Latest,
}

impl StartFrom {
    pub fn name(&self) -> &'static str {
        match self {
            StartFrom::Earliest => "earliest",
            StartFrom::Latest => "latest",
        }
    }

    /// The ListOffsets timestamp that asks for this position.
    pub fn list_offsets_timestamp(&self) -> i64 {
        match self {
            StartFrom::Earliest => -2,
            StartFrom::Latest => -1,
        }
    }
}

/// A list of CPU ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreList(pub Vec<usize>);

impl fmt::Display for CoreList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|c| c.to_string()).collect();
        write!(f, "{}", parts.join(","))
    }
}

/// Most CPU ids a core list may name.
const MAX_CORES: usize = 1024;

/// `0`, `0,2`, `0-3`, `0-1,4`.
pub fn parse_cores(s: &str) -> Result<CoreList, String> {
    let mut cores = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (parse_core(lo)?, parse_core(hi)?),
            None => (parse_core(part)?, parse_core(part)?),
        };
        if lo > hi {
            return Err(format!("core range `{part}` is empty"));
        }
        for c in lo..=hi {
            if !cores.contains(&c) {
                cores.push(c);
            }
        }
    }
    if cores.is_empty() {
        return Err("the core list is empty".into());
    }
    Ok(CoreList(cores))
}

fn parse_core(s: &str) -> Result<usize, String> {
    let c: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a core number"))?;
    if c >= MAX_CORES {
        return Err(format!("core {c} is above the limit of {MAX_CORES}"));
    }
    Ok(c)
}

/// `10s`, `500ms`, `2m`, `1.5s`, `250us`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 10s, 500ms)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" => n / 1e6,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit `{unit}` in duration `{s}`")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("duration `{s}`: {e}"))
}

/// `1024`, `16KiB`, `1MiB`, `4k`.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count"))?;
    let mult = match unit {
        "" | "B" => 1,
        "k" | "K" | "KiB" | "KB" => 1 << 10,
        "M" | "MiB" | "MB" => 1 << 20,
        _ => return Err(format!("unknown unit `{unit}` in `{s}`")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

fn parse_batch_bytes(s: &str) -> Result<usize, String> {
    let n = parse_bytes(s)?;
    if n == 0 || n > MAX_BATCH_BYTES {
        return Err(format!("batch bytes must be within 1..={MAX_BATCH_BYTES}"));
    }
    Ok(n)
}

fn parse_fetch_bytes(s: &str) -> Result<usize, String> {
    let n = parse_bytes(s)?;
    if n == 0 || n > MAX_FETCH_BYTES {
        return Err(format!("fetch bytes must be within 1..={MAX_FETCH_BYTES}"));
    }
    Ok(n)
}

fn parse_linger_ms(s: &str) -> Result<f64, String> {
    let n: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of milliseconds"))?;
    if !(0.0..=60_000.0).contains(&n) {
        return Err("linger must be within 0..=60000 ms".into());
    }
    Ok(n)
}

fn parse_clients(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("`{s}` is not a count"))?;
    if n > MAX_CLIENTS {
        return Err(format!("at most {MAX_CLIENTS}"));
    }
    Ok(n)
}

fn parse_broker_cores(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("`{s}` is not a core count"))?;
    if n == 0 || n > MAX_CORES {
        return Err(format!("broker cores must be within 1..={MAX_CORES}"));
    }
    Ok(n)
}

fn parse_in_flight(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("`{s}` is not a count"))?;
    if n == 0 || n > MAX_IN_FLIGHT {
        return Err(format!(
            "in-flight requests must be within 1..={MAX_IN_FLIGHT}"
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(Rate::parse("50000"), Ok(Rate::RecordsPerSec(50_000.0)));
        assert_eq!(Rate::parse("50k"), Ok(Rate::RecordsPerSec(50_000.0)));
        assert_eq!(Rate::parse("100MB/s"), Ok(Rate::BytesPerSec(100e6)));
        assert_eq!(
            Rate::parse("1GiB/s"),
            Ok(Rate::BytesPerSec(1024.0 * 1024.0 * 1024.0))
        );
        assert_eq!(Rate::parse("max"), Ok(Rate::Max));
        assert!(Rate::parse("0").is_err());
        assert!(Rate::parse("fast").is_err());
        assert_eq!(
            Rate::BytesPerSec(1e6).records_per_sec(100.0),
            Some(10_000.0)
        );
    }

    #[test]
    fn sizes_keys_cores_durations_parse() {
        assert_eq!(SizeDist::parse("100"), Ok(SizeDist::Fixed(100)));
        assert_eq!(
            SizeDist::parse("uniform:100..2000"),
            Ok(SizeDist::Uniform {
                min: 100,
                max: 2000
            })
        );
        assert!(SizeDist::parse("uniform:5..1").is_err());
        assert!(SizeDist::parse("999M").is_err());
        let u = SizeDist::Uniform { min: 10, max: 12 };
        assert!((0..100)
            .map(|r| u.sample(r))
            .all(|s| (10..=12).contains(&s)));
        assert_eq!(Keys::parse("hot:0.9"), Ok(Keys::Hot(0.9)));
        assert!(Keys::parse("hot:2").is_err());
        assert_eq!(parse_cores("0-2,5"), Ok(CoreList(vec![0, 1, 2, 5])));
        assert!(parse_cores("3-1").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_bytes("16KiB"), Ok(16384));
    }

    #[test]
    fn bad_flags_get_clear_messages() {
        let err = Args::try_parse_from(["ringmq-loadgen", "--acks", "2"]).unwrap_err();
        assert!(
            err.to_string().contains("acks must be 0, 1, -1 or all"),
            "{err}"
        );
        let ok = Args::try_parse_from(["ringmq-loadgen", "--acks", "-1", "--rate", "100MB/s"]);
        assert_eq!(ok.unwrap().acks, -1);
    }
}
