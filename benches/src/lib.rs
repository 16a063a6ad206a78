//! Helpers shared by the benchmarks: an executor sized to this machine's memlock limit, the
//! kernel baselines every engine figure is compared with (a raw O_DIRECT sequential-write loop
//! and a bare 4 KiB write + fdatasync), and small statistics helpers.
//!
//! Every benchmark measures its baseline in the same run as the thing it judges, because on a
//! shared virtual disk absolute figures drift by 2x between minutes; ratios drift far less.

pub mod disk_read;
pub mod engine_append;
pub mod engine_checkpoint;
pub mod executor;
pub mod fsync;
pub mod raw;
pub mod stats;

/// Environment variable that selects the quick mode (seconds, tiny volumes). `cargo test` runs
/// the benchmarks in quick mode so they keep compiling and running.
pub const QUICK_ENV: &str = "RINGMQ_BENCH_QUICK";

/// Whether the quick mode was asked for: `RINGMQ_BENCH_QUICK=1` or a `--quick` argument.
pub fn quick_mode_requested() -> bool {
    let env_quick = std::env::var(QUICK_ENV)
        .map(|v| v != "0" && !v.is_empty())
        .unwrap_or(false);
    env_quick || std::env::args().any(|a| a == "--quick")
}

/// The value after `flag` among the process's arguments (`--size 4G` -> `Some("4G")`).
pub fn arg_value(flag: &str) -> Option<String> {
    let mut args = std::env::args().skip_while(|a| a != flag);
    args.next()?;
    args.next()
}

/// Megabytes (10^6 bytes) per second.
pub fn mb_per_s(bytes: u64, elapsed: std::time::Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}
pub mod fetch_paths;
