//! Serving a file's bytes to a loopback TCP consumer by every mechanism the kernel offers, for
//! tail (page cache / memory) and backlog (not cached) data, 16 KiB and 1 MiB fetches. Figures
//! are medians, printed with the ratio to the memory → socket baseline of the same run and the
//! serving thread's CPU per GiB. Notes: kernel-notes/sendfile-and-splice.md, send-zc.md,
//! o-direct-reads.md.
//!
//! `cargo bench -p ringmq-benches --bench fetch_paths [-- --size 1G --reps 5 --verify --quick
//!  --fetch 16K,1M --only sendfile,pread --direct-depth 4 --direct-read 1M]`
//! (the memory baseline always runs; the last two shape `odirect-ra`)
//! The file goes to `RINGMQ_BENCH_DIR` (default: the system temp dir, /tmp here, same ext4
//! disk) and is deleted after.

use std::path::PathBuf;

use ringmq_benches::fetch_paths::{self, parse_size, Mechanism, Plan, DEFAULT_FILE_BYTES};
use ringmq_benches::quick_mode_requested;

/// Repetitions of a full run unless `--reps` says otherwise.
const DEFAULT_REPS: usize = 3;

fn main() {
    let value_of = ringmq_benches::arg_value;
    let mut plan = if quick_mode_requested() {
        Plan::quick()
    } else {
        Plan::full(DEFAULT_FILE_BYTES, DEFAULT_REPS)
    };
    if let Some(size) = value_of("--size") {
        plan.file_bytes = parse_size(&size).unwrap_or_else(|| panic!("bad --size {size}"));
    }
    if let Some(reps) = value_of("--reps") {
        plan.reps = reps.parse().unwrap_or_else(|_| panic!("bad --reps {reps}"));
    }
    plan.verify |= std::env::args().any(|a| a == "--verify");
    if let Some(list) = value_of("--fetch") {
        plan.fetch_sizes = list
            .split(',')
            .map(|f| parse_size(f).unwrap_or_else(|| panic!("bad --fetch size {f}")) as usize)
            .collect();
    }
    if let Some(depth) = value_of("--direct-depth") {
        plan.direct_depth = depth
            .parse()
            .unwrap_or_else(|_| panic!("bad --direct-depth {depth}"));
    }
    if let Some(size) = value_of("--direct-read") {
        plan.direct_read_bytes = parse_size(&size)
            .and_then(|b| usize::try_from(b).ok())
            .unwrap_or_else(|| panic!("bad --direct-read {size}"));
    }
    if let Some(list) = value_of("--only") {
        // The baseline always runs: every figure is a ratio to it.
        plan.mechanisms
            .retain(|m| *m == Mechanism::MemoryBaseline || list.split(',').any(|n| n == m.name()));
    }
    // Not the working directory: a 1 GiB file inside the checkout can be swept into a commit.
    let dir: PathBuf = std::env::var_os("RINGMQ_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("ringmq-fetch-paths")
        .tempdir_in(dir)
        .expect("creating the bench directory");
    println!(
        "# fetch_paths: file {} MiB in {}, reps {}, verify {}, kernel {}",
        plan.file_bytes >> 20,
        dir.path().display(),
        plan.reps,
        plan.verify,
        kernel_release()
    );
    println!("# serving thread pinned to cpu 0, consumer to cpu 1; backlog = fdatasync + posix_fadvise(DONTNEED)");
    let report = fetch_paths::run(dir.path(), &plan).unwrap_or_else(|e| panic!("fetch_paths: {e}"));
    print!("{}", report.render());
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
