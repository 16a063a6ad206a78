//! The disk's own latency for a paced stream of durable writes, with no broker: the floor
//! under every acks=all (and, for the write alone, acks=1) latency figure taken at that rate.
//!
//! One thread runs the simplest group commit there is: records of `--record` bytes fall due
//! at `--rate` bytes/s (open loop: a record's latency counts from when it was due, so a stall
//! delays every record due meanwhile, as it does a producer's); each round writes everything
//! due so far, from the position where the last round ended, as one O_DIRECT `pwrite` of
//! whole 4 KiB blocks, then `fdatasync`s the file, then records (now - due) of each of its
//! records (`--no-sync`: no fdatasync, a record is done when its write is: the floor under
//! acks=1 and under what a tailing consumer sees). The file is preallocated and zero-filled first (the broker's appends overwrite
//! written blocks too, `log::zero_ahead`). Prints the write, fdatasync and record latency
//! percentiles, and how many writes or syncs took 20 ms or more, and 100 ms or more.
//! Notes: kernel-notes/the-disk.md.
//!
//! `cargo run --release -p ringmq-benches --bin ringmq-disk-write -- [--rate 50M] [--record 16K]
//!  [--duration 10s] [--no-sync] [--file PATH] [--size 2G] [--summary]`
//! `--rate` is in bytes/s (`50M`). Without `--file` the file lives in `RINGMQ_BENCH_DIR`
//! (default: the system temp dir) and is deleted after. `--summary` ends with
//! `disk_write record_p50_us=… record_p99_us=… record_p999_us=… record_max_us=…` for scripts.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ringmq_benches::fetch_paths::parse_size;
use ringmq_benches::stats::{latency_histogram, LatencyUs};

/// O_DIRECT granularity.
const BLOCK: u64 = 4096;
/// Operations at least this slow are counted ("stalls").
const STALL: Duration = Duration::from_millis(20);
const LONG_STALL: Duration = Duration::from_millis(100);
/// Largest single write: a round after a stall writes at most this much, the rest next round.
const MAX_WRITE: u64 = 8 << 20;

fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    if let Some(ms) = t.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    t.strip_suffix('s')
        .unwrap_or(t)
        .parse::<f64>()
        .ok()
        .map(Duration::from_secs_f64)
}

/// Index of the first record not yet due `elapsed` into the run, records falling due every
/// `period` from time 0 (record 0 is due at once).
fn due_upto(elapsed: Duration, period: Duration) -> u64 {
    (elapsed.as_nanos() / period.as_nanos().max(1)) as u64 + 1
}

/// `len` bytes of `fill` starting on a block boundary (O_DIRECT buffers must be aligned).
struct Aligned {
    storage: Vec<u8>,
    offset: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize, fill: u8) -> Aligned {
        let storage = vec![fill; len + BLOCK as usize];
        let offset = storage.as_ptr().align_offset(BLOCK as usize);
        Aligned {
            storage,
            offset,
            len,
        }
    }

    fn slice(&self, len: usize) -> &[u8] {
        &self.storage[self.offset..self.offset + len.min(self.len)]
    }
}

fn print(name: &str, l: &LatencyUs) {
    println!(
        "  {name:<10} n={:<7} p50 {:>7.0} us  p99 {:>7.0} us  p99.9 {:>8.0} us  max {:>8.0} us",
        l.count, l.p50, l.p99, l.p999, l.max
    );
}

fn main() {
    let value_of = ringmq_benches::arg_value;
    let size_arg = |flag: &str, default: u64| {
        value_of(flag).map_or(default, |s| {
            parse_size(&s).unwrap_or_else(|| panic!("bad {flag} {s}"))
        })
    };
    let rate = size_arg("--rate", 50 << 20).max(1);
    let record = size_arg("--record", 16 << 10).max(1);
    let size = size_arg("--size", 2 << 30).max(MAX_WRITE * 2) / BLOCK * BLOCK;
    let duration = value_of("--duration").map_or(Duration::from_secs(10), |s| {
        parse_duration(&s).unwrap_or_else(|| panic!("bad --duration {s}"))
    });
    let sync = !std::env::args().any(|a| a == "--no-sync");
    let (path, remove) = match value_of("--file") {
        Some(p) => (PathBuf::from(p), false),
        None => {
            let dir = std::env::var("RINGMQ_BENCH_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| std::env::temp_dir());
            (
                dir.join(format!("ringmq-disk-write-{}.dat", std::process::id())),
                true,
            )
        }
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    zero_fill(&file, size);

    let period = Duration::from_nanos((record as u128 * 1_000_000_000 / rate as u128) as u64);
    let buf = Aligned::new((MAX_WRITE + BLOCK) as usize, b'w');
    let (mut writes, mut syncs, mut records) = (
        latency_histogram(),
        latency_histogram(),
        latency_histogram(),
    );
    let (mut stalls, mut long_stalls) = (0u64, 0u64);
    let mut count_op = |took: Duration| {
        stalls += u64::from(took >= STALL);
        long_stalls += u64::from(took >= LONG_STALL);
    };
    let start = Instant::now();
    let (mut done, mut log_end) = (0u64, 0u64);
    while start.elapsed() < duration {
        let due = due_upto(start.elapsed(), period).min(done + MAX_WRITE / record);
        if due == done {
            std::thread::sleep(period / 4);
            continue;
        }
        // Everything due, from the block holding the previous round's end (rewritten, as the
        // broker rewrites a partly filled tail block).
        let end = log_end + (due - done) * record;
        let from = log_end / BLOCK * BLOCK;
        let len = (end.div_ceil(BLOCK) * BLOCK - from) as usize;
        let at = from % (size - MAX_WRITE - BLOCK);
        let t = Instant::now();
        file.write_all_at(buf.slice(len), at)
            .unwrap_or_else(|e| panic!("write: {e}"));
        let took = t.elapsed();
        writes.saturating_record(took.as_micros() as u64);
        count_op(took);
        if sync {
            let t = Instant::now();
            file.sync_data()
                .unwrap_or_else(|e| panic!("fdatasync: {e}"));
            let took = t.elapsed();
            syncs.saturating_record(took.as_micros() as u64);
            count_op(took);
        }
        let now = start.elapsed();
        for i in done..due {
            let due_at = Duration::from_nanos(period.as_nanos() as u64 * i);
            records.saturating_record(now.saturating_sub(due_at).as_micros() as u64);
        }
        done = due;
        log_end = end;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "disk write: {:.1} MB/s of {} B records due at {:.1} MB/s, {:.1} s, file {}",
        (log_end as f64) / secs / 1e6,
        record,
        rate as f64 / 1e6,
        secs,
        path.display()
    );
    let rec = LatencyUs::of(&records);
    print("write", &LatencyUs::of(&writes));
    if sync {
        print("fdatasync", &LatencyUs::of(&syncs));
    }
    print("record", &rec);
    println!("  writes or syncs >= 20 ms: {stalls}, >= 100 ms: {long_stalls}");
    if remove {
        let _ = std::fs::remove_file(&path);
    }
    if std::env::args().any(|a| a == "--summary") {
        println!(
            "disk_write record_p50_us={:.0} record_p99_us={:.0} record_p999_us={:.0} record_max_us={:.0} stalls_20ms={stalls} stalls_100ms={long_stalls}",
            rec.p50, rec.p99, rec.p999, rec.max
        );
    }
}

/// Preallocates `size` bytes and writes zeros over them, then syncs: later writes overwrite
/// written blocks (no extent conversion).
fn zero_fill(file: &File, size: u64) {
    let zeros = Aligned::new(MAX_WRITE as usize, 0);
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(MAX_WRITE) as usize;
        file.write_all_at(zeros.slice(n), pos)
            .unwrap_or_else(|e| panic!("zero-fill: {e}"));
        pos += n as u64;
    }
    file.sync_all().unwrap_or_else(|e| panic!("sync: {e}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_fall_due_from_time_zero() {
        let p = Duration::from_millis(10);
        assert_eq!(due_upto(Duration::ZERO, p), 1);
        assert_eq!(due_upto(Duration::from_millis(9), p), 1);
        assert_eq!(due_upto(Duration::from_millis(10), p), 2);
        assert_eq!(due_upto(Duration::from_millis(35), p), 4);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("x"), None);
    }
}
