//! Kernel baselines on this machine, the figures quoted in kernel-notes/:
//! raw O_DIRECT sequential writes at several sizes and depths, bare 4 KiB write+fdatasync in
//! three file layouts, and group commits of k appends sharing one fdatasync.
//!
//! `cargo bench -p ringmq-benches --bench baselines` (add `-- --quick` for a smoke run).

use std::path::PathBuf;

use ringmq_benches::fsync::{self, FsyncPattern};
use ringmq_benches::raw::{self, FileLayout, RawWriteSpec};
use ringmq_benches::stats::{median, LatencyUs};
use ringmq_benches::{executor, quick_mode_requested};

fn main() {
    let quick = quick_mode_requested();
    let dir = tempfile::Builder::new()
        .prefix("ringmq-baselines")
        .tempdir_in(std::env::var_os("RINGMQ_BENCH_DIR").unwrap_or_else(|| ".".into()))
        .expect("creating the bench directory");
    let path = dir.path().to_path_buf();
    println!("# baselines (quick={quick}) in {}", path.display());
    let io_memory = raw::io_memory_from_env();
    println!(
        "# io_memory={io_memory} B, memlock={:?} B",
        executor::memlock_limit_bytes()
    );
    executor::run_with_io_memory(io_memory, move || async move { run_all(path, quick).await });
}

async fn run_all(dir: PathBuf, quick: bool) {
    let reps = if quick { 1 } else { 3 };
    let default_mib = if quick { 8 } else { 256 };
    let total_mib: u64 = std::env::var("RINGMQ_BENCH_RAW_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_mib);
    let total_bytes = total_mib << 20;
    println!(
        "raw O_DIRECT sequential write, {} MiB per run, median of {reps}:",
        total_bytes >> 20
    );
    // RINGMQ_BENCH_RAW_MIB=0 skips the raw section (fdatasync figures only).
    // RINGMQ_BENCH_RAW_KIB="256,1024", RINGMQ_BENCH_RAW_DEPTHS="1,2,4,8" and
    // RINGMQ_BENCH_RAW_LAYOUTS="fallocated,zeroed" narrow the sweep.
    let list = |name: &str, default: &[usize]| -> Vec<usize> {
        std::env::var(name)
            .ok()
            .and_then(|v| v.split(',').map(|x| x.trim().parse().ok()).collect())
            .unwrap_or_else(|| default.to_vec())
    };
    let sizes_kib = list("RINGMQ_BENCH_RAW_KIB", &[16, 256, 1024]);
    let depths = list("RINGMQ_BENCH_RAW_DEPTHS", &[1, 4, 16]);
    let layouts: Vec<FileLayout> = match std::env::var("RINGMQ_BENCH_RAW_LAYOUTS") {
        _ if total_bytes == 0 => Vec::new(),
        Ok(v) => FileLayout::ALL
            .into_iter()
            .filter(|l| v.split(',').any(|n| n.trim() == l.name()))
            .collect(),
        Err(_) => FileLayout::ALL.to_vec(),
    };
    for &layout in &layouts {
        for write_bytes in sizes_kib.iter().map(|k| k << 10) {
            for &in_flight in &depths {
                raw_row(
                    &dir,
                    RawWriteSpec {
                        write_bytes,
                        total_bytes,
                        in_flight,
                        layout,
                    },
                    reps,
                )
                .await;
            }
        }
    }
    let pairs = if quick { 50 } else { 2000 };
    println!("bare 4 KiB write+fdatasync, {pairs} pairs per run, median of {reps} runs (us):");
    for pattern in FsyncPattern::ALL {
        let mut runs = Vec::new();
        for _ in 0..reps {
            let h = fsync::write_fdatasync_latency(&dir, pattern, pairs)
                .await
                .expect("fsync loop");
            runs.push(LatencyUs::of(&h));
        }
        let l = LatencyUs::median_of(&runs);
        println!(
            "  {:<22} p50={:>6.0} p99={:>6.0} p99.9={:>6.0} max={:>6.0}",
            pattern.name(),
            l.p50,
            l.p99,
            l.p999,
            l.max
        );
    }
    // RINGMQ_BENCH_OVERLAP_WRITERS="1,2,3,4": write+fdatasync loops side by side on one file.
    let writers: Vec<usize> = std::env::var("RINGMQ_BENCH_OVERLAP_WRITERS")
        .ok()
        .map(|v| v.split(',').filter_map(|k| k.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 3, 4]);
    println!("overlapping fdatasyncs: n tasks each looping 4 KiB write + fdatasync on one file, {pairs} pairs in all, median of {reps}:");
    for n in writers.into_iter().filter(|&n| n > 0) {
        let mut runs = Vec::new();
        let (mut rates, mut ooo, mut waits) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            let o = fsync::overlapping_write_fdatasync(&dir, n, pairs / n)
                .await
                .expect("overlap loop");
            runs.push(LatencyUs::of(&o.latency));
            rates.push(o.pairs_per_s);
            ooo.push(o.out_of_order as f64);
            if !o.prefix_wait.is_empty() {
                waits.push(LatencyUs::of(&o.prefix_wait));
            }
        }
        let l = LatencyUs::median_of(&runs);
        // NaN when no fdatasync ever overtook an earlier one.
        let w = LatencyUs::median_of(&waits);
        println!(
            "  n={n}: pair p50={:>6.0} p99={:>6.0} us  pairs/s={:>7.0}  out-of-order completions={:.0}, each waiting for the earlier ones p50={:.0} p99={:.0} us",
            l.p50,
            l.p99,
            median(&rates),
            median(&ooo),
            w.p50,
            w.p99,
        );
    }
    let rounds = if quick { 30 } else { 1000 };
    println!("group commit: k x 4 KiB in one write + one fdatasync, {rounds} rounds (us):");
    // RINGMQ_BENCH_GROUP_KS="1,8,32" picks the group sizes.
    let ks: Vec<usize> = std::env::var("RINGMQ_BENCH_GROUP_KS")
        .ok()
        .map(|v| v.split(',').filter_map(|k| k.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 4, 16, 64, 256]);
    for k in ks {
        let mut runs = Vec::new();
        for _ in 0..reps {
            let (h, _) = fsync::group_commit_latency(
                &dir,
                k * fsync::BARE_WRITE_BYTES,
                rounds,
                FileLayout::Fallocated,
            )
            .await
            .expect("group loop");
            runs.push(LatencyUs::of(&h));
        }
        let l = LatencyUs::median_of(&runs);
        println!(
            "  k={k:>3}: round p50={:>6.0} p99={:>6.0}  per append p50={:>7.1}  appends/s at p50={:>8.0}",
            l.p50,
            l.p99,
            l.p50 / k as f64,
            k as f64 * 1e6 / l.p50
        );
    }
}

async fn raw_row(dir: &std::path::Path, spec: RawWriteSpec, reps: usize) {
    let mut mbps = Vec::new();
    for _ in 0..reps {
        let t = raw::sequential_write(dir, spec)
            .await
            .expect("raw write loop");
        mbps.push(t.mb_per_s());
    }
    println!(
        "  {:<10} write={:>5} KiB in_flight={:>2}: {:>7.0} MB/s  (runs: {})",
        spec.layout.name(),
        spec.write_bytes >> 10,
        spec.in_flight,
        median(&mbps),
        fmt_runs(&mbps)
    );
}

fn fmt_runs(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}
