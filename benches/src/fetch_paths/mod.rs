//! Fetch paths: every way the kernel offers to move a segment file's bytes to a consumer's TCP
//! socket, measured in isolation against the loopback baseline of the same run.
//!
//! ```text
//!   core 0 (serving thread, CPU time measured)            core 1 (consumer thread)
//!   file ──(mechanism)──> TCP socket ══ loopback ══> socket ──read──> count (+ crc32c)
//! ```
//!
//! Mechanisms (see kernel-notes/sendfile-and-splice.md, send-zc.md, o-direct-reads.md):
//! - `memory-baseline`: `write(2)` of one resident buffer, the fetch size at a time: what the
//!   loopback can carry. Every other figure is printed as a ratio to it.
//! - `glommio-memory`: the same from a glommio executor through its io_uring socket, the
//!   reference for `odirect-read` (which has to send through glommio too).
//! - `odirect-read`: glommio `DmaFile::read_at_aligned`, several reads in flight, then send.
//! - `odirect-ra`: the same with engine-side readahead: 1 MiB direct reads, each sent as
//!   fetch-sized writes (what a catch-up reader can do, since direct I/O has no readahead).
//! - `pread`: buffered `pread(2)` into a user buffer (page cache), then `write(2)`.
//! - `sendfile`: `sendfile(2)` from the file to the socket.
//! - `splice`: `splice(2)` file → pipe → socket.
//! - `uring-splice`: the same through io_uring `IORING_OP_SPLICE` (run by io-wq workers, so it
//!   never blocks the submitting thread on the disk); CPU is the whole process minus the
//!   consumer.
//! - `send-zc`: io_uring `SEND_ZC` from registered buffers: for the tail the resident bytes
//!   themselves; for the backlog O_DIRECT `READ_FIXED` into registered buffers first.
//! - `tail-bytes`: `write(2)` of resident `Bytes` slices of the whole file (the tail cache).
//!
//! Cases: `tail` (file fully in the page cache, checked with mincore) and `backlog` (file
//! dropped from the page cache with fdatasync + `posix_fadvise(DONTNEED)`, also checked).
//! Runs are interleaved (every mechanism once per repetition) so drift on this shared machine
//! hits all of them alike; figures are medians.

mod consumer;
mod copy;
mod cpu;
mod direct;
mod send_zc;
mod source;
mod uring_splice;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use send_zc::ZcUsage;
pub use source::{page_cache_residency, PATTERN_SEED};

/// File size in quick mode (`cargo test`).
pub const QUICK_FILE_BYTES: u64 = 32 << 20;
/// File size of a full run unless `--size` says otherwise.
pub const DEFAULT_FILE_BYTES: u64 = 1 << 30;
/// Largest file the bench will create: the disk is shared.
pub const MAX_FILE_BYTES: u64 = 4 << 30;
/// The fetch sizes the issue asks about: a small and a large fetch.
pub const FETCH_SIZES: [usize; 2] = [16 << 10, 1 << 20];
/// Largest fetch size accepted (splice's pipe is sized to it; pipe-max-size is 1 MiB).
pub const MAX_FETCH_BYTES: usize = 1 << 20;
/// Most repetitions per configuration.
pub const MAX_REPS: usize = 15;
/// Reads kept in flight by the O_DIRECT paths.
pub const DIRECT_READS_IN_FLIGHT: usize = 4;
/// Size of each direct read of `odirect-ra`, whatever the fetch size (default).
pub const DIRECT_READAHEAD_BYTES: usize = 1 << 20;
/// Most reads `odirect-ra` may keep in flight (`--direct-depth`).
pub const MAX_DIRECT_DEPTH: usize = 64;
/// Largest `odirect-ra` read (`--direct-read`).
pub const MAX_DIRECT_READ_BYTES: usize = 8 << 20;

/// How the bytes travel from the file (or memory) to the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    MemoryBaseline,
    GlommioMemory,
    DirectRead,
    DirectReadahead,
    Pread,
    Sendfile,
    Splice,
    UringSplice,
    SendZc,
    TailBytes,
}

impl Mechanism {
    pub const ALL: [Mechanism; 10] = [
        Mechanism::MemoryBaseline,
        Mechanism::GlommioMemory,
        Mechanism::DirectRead,
        Mechanism::DirectReadahead,
        Mechanism::Pread,
        Mechanism::Sendfile,
        Mechanism::Splice,
        Mechanism::UringSplice,
        Mechanism::SendZc,
        Mechanism::TailBytes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::MemoryBaseline => "memory-baseline",
            Mechanism::GlommioMemory => "glommio-memory",
            Mechanism::DirectRead => "odirect-read",
            Mechanism::DirectReadahead => "odirect-ra",
            Mechanism::Pread => "pread",
            Mechanism::Sendfile => "sendfile",
            Mechanism::Splice => "splice",
            Mechanism::UringSplice => "uring-splice",
            Mechanism::SendZc => "send-zc",
            Mechanism::TailBytes => "tail-bytes",
        }
    }

    /// The cases that mean something for this mechanism. Memory sends have no page cache to
    /// warm or drop, so they run once, under `Case::Memory`.
    pub fn cases(self) -> &'static [Case] {
        match self {
            Mechanism::MemoryBaseline | Mechanism::GlommioMemory | Mechanism::TailBytes => {
                &[Case::Memory]
            }
            // Direct reads ignore the page cache: `odirect-read` shows tail == backlog.
            Mechanism::DirectReadahead => &[Case::Backlog],
            _ => &[Case::Tail, Case::Backlog],
        }
    }

    /// Whether the consumer must receive the file's bytes in order (every mechanism but the
    /// baselines, which repeat one buffer).
    fn sends_the_file(self) -> bool {
        !matches!(self, Mechanism::MemoryBaseline | Mechanism::GlommioMemory)
    }
}

/// Where the served bytes are before the fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// Already in process memory; no file involved.
    Memory,
    /// The file is wholly in the page cache.
    Tail,
    /// The file is not in the page cache (dropped before every run).
    Backlog,
}

impl Case {
    pub fn name(self) -> &'static str {
        match self {
            Case::Memory => "memory",
            Case::Tail => "tail",
            Case::Backlog => "backlog",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub file_bytes: u64,
    pub fetch_sizes: Vec<usize>,
    pub reps: usize,
    /// The consumer computes crc32c of everything it receives and the report compares it with
    /// the expected stream. Costs consumer CPU, so full runs leave it off unless asked.
    pub verify: bool,
    pub mechanisms: Vec<Mechanism>,
    /// Reads `odirect-ra` keeps in flight.
    pub direct_depth: usize,
    /// Size of each `odirect-ra` read.
    pub direct_read_bytes: usize,
}

impl Plan {
    /// Every mechanism once on a 32 MiB file, content verified: what `cargo test` runs.
    pub fn quick() -> Plan {
        Plan {
            file_bytes: QUICK_FILE_BYTES,
            fetch_sizes: FETCH_SIZES.to_vec(),
            reps: 1,
            verify: true,
            mechanisms: Mechanism::ALL.to_vec(),
            direct_depth: DIRECT_READS_IN_FLIGHT,
            direct_read_bytes: DIRECT_READAHEAD_BYTES,
        }
    }

    pub fn full(file_bytes: u64, reps: usize) -> Plan {
        Plan {
            file_bytes,
            fetch_sizes: FETCH_SIZES.to_vec(),
            reps,
            verify: false,
            mechanisms: Mechanism::ALL.to_vec(),
            direct_depth: DIRECT_READS_IN_FLIGHT,
            direct_read_bytes: DIRECT_READAHEAD_BYTES,
        }
    }

    fn check(&self) -> Result<(), FetchBenchError> {
        let bad = |what: String| Err(FetchBenchError::BadPlan(what));
        if self.file_bytes == 0 || self.file_bytes > MAX_FILE_BYTES {
            return bad(format!(
                "file size {} B outside 1..={MAX_FILE_BYTES}",
                self.file_bytes
            ));
        }
        if !(1..=MAX_DIRECT_DEPTH).contains(&self.direct_depth) {
            return bad(format!(
                "direct depth {} outside 1..={MAX_DIRECT_DEPTH}",
                self.direct_depth
            ));
        }
        let r = self.direct_read_bytes;
        if r == 0 || !r.is_multiple_of(4096) || r > MAX_DIRECT_READ_BYTES {
            return bad(format!(
                "direct read size {r} must be a 4 KiB multiple <= {MAX_DIRECT_READ_BYTES}"
            ));
        }
        if !(1..=MAX_REPS).contains(&self.reps) {
            return bad(format!("reps {} outside 1..={MAX_REPS}", self.reps));
        }
        if !self
            .file_bytes
            .is_multiple_of(self.direct_read_bytes as u64)
        {
            return bad(format!(
                "file size {} must be a multiple of the direct read size {}",
                self.file_bytes, self.direct_read_bytes
            ));
        }
        for &f in &self.fetch_sizes {
            let aligned = f > 0 && f % 4096 == 0 && f <= MAX_FETCH_BYTES;
            // odirect-ra slices each read of max(read size, fetch) into whole fetches.
            let divides_reads = self.direct_read_bytes.max(f).is_multiple_of(f);
            if !aligned || !divides_reads || !self.file_bytes.is_multiple_of(f as u64) {
                return bad(format!(
                    "fetch size {f} must be a 4 KiB multiple <= {MAX_FETCH_BYTES} dividing the \
                     direct read size {} and the file size {}",
                    self.direct_read_bytes, self.file_bytes
                ));
            }
        }
        Ok(())
    }
}

/// Errors of the fetch-path bench, with the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchBenchError {
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("read at {pos} returned {got} bytes, expected {expected}")]
    ShortRead {
        pos: u64,
        got: usize,
        expected: usize,
    },
    #[error("invalid plan: {0}")]
    BadPlan(String),
    #[error("{0} thread panicked")]
    ThreadPanicked(&'static str),
}

pub(crate) fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> FetchBenchError {
    move |source| FetchBenchError::Io { op, source }
}

/// One measured run.
#[derive(Debug, Clone)]
pub struct Sample {
    pub bytes_received: u64,
    /// crc32c of the received stream when the plan verifies.
    pub received_crc: Option<u32>,
    /// From the serving side's first byte offered to the consumer's end of stream.
    pub elapsed: Duration,
    /// user + system CPU of the serving thread (loopback delivery runs in its softirq too).
    pub server_cpu: Duration,
    /// user + system CPU of the consumer thread.
    pub consumer_cpu: Duration,
    /// Fraction of the file's pages in the page cache just before the run.
    pub residency_before: f64,
    pub zc: Option<ZcUsage>,
}

/// All runs of one configuration.
#[derive(Debug, Clone)]
pub struct Row {
    pub mechanism: Mechanism,
    pub case: Case,
    pub fetch_bytes: usize,
    pub expected_bytes: u64,
    pub expected_crc: Option<u32>,
    pub samples: Vec<Sample>,
}

impl Row {
    pub fn mb_per_s(&self) -> f64 {
        let v: Vec<f64> = self
            .samples
            .iter()
            .map(|s| crate::mb_per_s(s.bytes_received, s.elapsed))
            .collect();
        crate::stats::median(&v)
    }

    /// Median CPU seconds of the serving thread per GiB served.
    pub fn server_cpu_s_per_gib(&self) -> f64 {
        self.cpu_per_gib(|s| s.server_cpu)
    }

    pub fn consumer_cpu_s_per_gib(&self) -> f64 {
        self.cpu_per_gib(|s| s.consumer_cpu)
    }

    pub fn residency_before(&self) -> f64 {
        let v: Vec<f64> = self.samples.iter().map(|s| s.residency_before).collect();
        crate::stats::median(&v)
    }

    fn cpu_per_gib(&self, f: fn(&Sample) -> Duration) -> f64 {
        let v: Vec<f64> = self
            .samples
            .iter()
            .map(|s| f(s).as_secs_f64() / (s.bytes_received.max(1) as f64 / (1u64 << 30) as f64))
            .collect();
        crate::stats::median(&v)
    }
}

/// Every row of a run.
#[derive(Debug, Clone)]
pub struct Report {
    pub file_bytes: u64,
    pub rows: Vec<Row>,
}

impl Report {
    /// Median baseline MB/s for a fetch size.
    pub fn baseline_mb_per_s(&self, fetch_bytes: usize) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.mechanism == Mechanism::MemoryBaseline && r.fetch_bytes == fetch_bytes)
            .map(Row::mb_per_s)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{:<16} {:<8} {:>6} {:>9} {:>6} {:>8} {:>8} {:>7}  notes\n",
            "mechanism", "case", "fetch", "MB/s", "ratio", "srvCPU", "conCPU", "cached"
        ));
        out.push_str(&format!(
            "{:<16} {:<8} {:>6} {:>9} {:>6} {:>8} {:>8} {:>7}\n",
            "", "", "", "(median)", "", "s/GiB", "s/GiB", "before"
        ));
        for r in &self.rows {
            let ratio = self
                .baseline_mb_per_s(r.fetch_bytes)
                .map(|b| r.mb_per_s() / b)
                .unwrap_or(f64::NAN);
            let mut notes = Vec::new();
            if let Some(zc) = r.samples.last().and_then(|s| s.zc) {
                notes.push(format!(
                    "registered={} notifs={} copied={}",
                    zc.registered, zc.notifs, zc.copied
                ));
            }
            if let Some(expected) = r.expected_crc {
                let ok = r.samples.iter().all(|s| {
                    s.received_crc == Some(expected) && s.bytes_received == r.expected_bytes
                });
                notes.push(if ok { "verified" } else { "CONTENT MISMATCH" }.to_string());
            }
            out.push_str(&format!(
                "{:<16} {:<8} {:>6} {:>9.0} {:>6.2} {:>8.3} {:>8.3} {:>6.0}%  {}\n",
                r.mechanism.name(),
                r.case.name(),
                format_size(r.fetch_bytes),
                r.mb_per_s(),
                ratio,
                r.server_cpu_s_per_gib(),
                r.consumer_cpu_s_per_gib(),
                r.residency_before() * 100.0,
                notes.join(" ")
            ));
        }
        out
    }
}

/// Creates the test file in `dir`, runs the plan, deletes the file.
pub fn run(dir: &Path, plan: &Plan) -> Result<Report, FetchBenchError> {
    plan.check()?;
    let file = source::TestFile::create(dir, plan.file_bytes)?;
    let result = run_on(&file, plan);
    file.remove();
    result
}

fn run_on(file: &source::TestFile, plan: &Plan) -> Result<Report, FetchBenchError> {
    // The resident copy the tail-cache mechanisms send from (and send-zc registers).
    let tail = if plan
        .mechanisms
        .iter()
        .any(|m| matches!(m, Mechanism::TailBytes | Mechanism::SendZc))
    {
        file.load()?
    } else {
        Bytes::new()
    };
    let file_crc = plan.verify.then(|| source::pattern_crc(plan.file_bytes));
    let mut rows = Vec::new();
    for &fetch in &plan.fetch_sizes {
        let first_row = rows.len();
        for &m in &plan.mechanisms {
            for &case in m.cases() {
                let expected_crc = match (plan.verify, m.sends_the_file()) {
                    (false, _) => None,
                    (true, true) => file_crc,
                    (true, false) => Some(source::repeated_chunk_crc(fetch, plan.file_bytes)),
                };
                rows.push(Row {
                    mechanism: m,
                    case,
                    fetch_bytes: fetch,
                    expected_bytes: plan.file_bytes,
                    expected_crc,
                    samples: Vec::new(),
                });
            }
        }
        for _ in 0..plan.reps {
            for row in &mut rows[first_row..] {
                let ctx = RunContext {
                    path: file.path.clone(),
                    file_bytes: plan.file_bytes,
                    fetch_bytes: fetch,
                    tail: tail.clone(),
                    verify: plan.verify,
                    direct_depth: plan.direct_depth,
                    direct_read_bytes: plan.direct_read_bytes,
                };
                let sample = measure(row.mechanism, row.case, &ctx, file)?;
                row.samples.push(sample);
            }
        }
    }
    Ok(Report {
        file_bytes: plan.file_bytes,
        rows,
    })
}

/// What a serving side needs for one run.
#[derive(Clone)]
pub(crate) struct RunContext {
    pub path: PathBuf,
    pub file_bytes: u64,
    pub fetch_bytes: usize,
    pub tail: Bytes,
    pub verify: bool,
    pub direct_depth: usize,
    pub direct_read_bytes: usize,
}

/// What the serving side reports back.
pub(crate) struct Served {
    pub started: Instant,
    pub cpu: Duration,
    /// `cpu` is the whole process's (io-wq workers included), consumer thread included.
    pub cpu_includes_consumer: bool,
    pub zc: Option<ZcUsage>,
}

fn measure(
    mechanism: Mechanism,
    case: Case,
    ctx: &RunContext,
    file: &source::TestFile,
) -> Result<Sample, FetchBenchError> {
    match case {
        Case::Tail => file.warm()?,
        Case::Backlog => {
            file.drop_from_page_cache()?;
        }
        Case::Memory => {}
    }
    let residency_before = if case == Case::Memory {
        0.0
    } else {
        page_cache_residency(&ctx.path)?
    };
    let consumer = consumer::Consumer::spawn(ctx.verify)?;
    let served = serve(mechanism, case, consumer.addr, ctx);
    if served.is_err() {
        // The server may have failed before connecting: release the consumer's accept.
        drop(std::net::TcpStream::connect(consumer.addr));
    }
    let received = consumer.join()?;
    let served = served?;
    Ok(Sample {
        bytes_received: received.bytes,
        received_crc: received.crc,
        elapsed: received.done_at.saturating_duration_since(served.started),
        server_cpu: if served.cpu_includes_consumer {
            served.cpu.saturating_sub(received.cpu)
        } else {
            served.cpu
        },
        consumer_cpu: received.cpu,
        residency_before,
        zc: served.zc,
    })
}

fn serve(
    mechanism: Mechanism,
    case: Case,
    addr: SocketAddr,
    ctx: &RunContext,
) -> Result<Served, FetchBenchError> {
    match mechanism {
        Mechanism::GlommioMemory => direct::serve(direct::Source::Memory, addr, ctx),
        Mechanism::DirectRead => {
            let read_bytes = ctx.fetch_bytes;
            direct::serve(direct::Source::DirectFile { read_bytes }, addr, ctx)
        }
        Mechanism::DirectReadahead => {
            let read_bytes = ctx.direct_read_bytes.max(ctx.fetch_bytes);
            direct::serve(direct::Source::DirectFile { read_bytes }, addr, ctx)
        }
        Mechanism::SendZc => send_zc::serve(case, addr, ctx),
        Mechanism::UringSplice => uring_splice::serve(addr, ctx),
        Mechanism::MemoryBaseline => copy::serve(copy::SyncPath::Memory, addr, ctx),
        Mechanism::Pread => copy::serve(copy::SyncPath::Pread, addr, ctx),
        Mechanism::Sendfile => copy::serve(copy::SyncPath::Sendfile, addr, ctx),
        Mechanism::Splice => copy::serve(copy::SyncPath::Splice, addr, ctx),
        Mechanism::TailBytes => copy::serve(copy::SyncPath::TailBytes, addr, ctx),
    }
}

/// "16K", "1M".
pub fn format_size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{}M", bytes >> 20)
    } else {
        format!("{}K", bytes >> 10)
    }
}

/// Parses "1G", "512M", "32m", "65536" into bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, shift) = match t.chars().last()?.to_ascii_uppercase() {
        'G' => (&t[..t.len() - 1], 30),
        'M' => (&t[..t.len() - 1], 20),
        'K' => (&t[..t.len() - 1], 10),
        _ => (t, 0),
    };
    num.parse::<u64>().ok()?.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_format() {
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("32m"), Some(32 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("x"), None);
        assert_eq!(format_size(16 << 10), "16K");
        assert_eq!(format_size(1 << 20), "1M");
    }

    #[test]
    fn plan_rejects_fetch_sizes_that_do_not_divide_the_file() {
        let mut p = Plan::quick();
        p.fetch_sizes = vec![3 << 20];
        assert!(p.check().is_err());
        p.fetch_sizes = vec![12 << 10];
        p.file_bytes = 32 << 20;
        assert!(p.check().is_err(), "12 KiB does not divide 32 MiB");
        assert!(Plan::quick().check().is_ok());
    }
}
