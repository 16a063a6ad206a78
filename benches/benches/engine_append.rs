//! `cargo bench -p ringmq-benches --bench engine_append` (full: a few minutes of disk writes)
//! `RINGMQ_BENCH_QUICK=1 cargo bench -p ringmq-benches --bench engine_append` (seconds).
//! `RINGMQ_BENCH_BATCH_KIB=16 RINGMQ_BENCH_QUEUES=64 RINGMQ_BENCH_ACKS=durable RINGMQ_BENCH_REPS=5`
//! narrow a run to one configuration; `RINGMQ_BENCH_MIB=64` shortens each run;
//! `RINGMQ_BENCH_OPEN_MBPS=500` fixes the open loop's offered rate;
//! `RINGMQ_BENCH_SEGMENT_MIB=320` sets the segment size (e.g. so a run never rolls);
//! `RINGMQ_BENCH_ZERO_AHEAD=wait` starts each run once the fresh shard has zero-filled its
//! active segment (`off`: the engine never zero-fills; `on`, the default: runs start at once);
//! `RINGMQ_BENCH_IO_MEMORY_KIB` sets the executor's registered I/O memory.
//! Files go to a temp dir under `RINGMQ_BENCH_DIR` (default: the current directory, so the
//! disk measured is the one the data would live on, not a tmpfs).

use ringmq_benches::engine_append::{self, Plan};
use ringmq_benches::{executor, quick_mode_requested, raw};

fn main() {
    let quick = quick_mode_requested();
    let plan = if quick { Plan::quick() } else { Plan::full() };
    let plan = match plan.with_env_overrides() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("engine_append: {e}");
            std::process::exit(2);
        }
    };
    let dir = tempfile::Builder::new()
        .prefix("ringmq-bench-append")
        .tempdir_in(std::env::var_os("RINGMQ_BENCH_DIR").unwrap_or_else(|| ".".into()))
        .expect("creating the bench directory");
    let path = dir.path().to_path_buf();
    let io_memory = raw::io_memory_from_env();
    println!(
        "# engine_append (quick={quick}) in {}, io_memory {io_memory} B",
        path.display(),
    );
    let plan2 = plan.clone();
    let report = executor::run_with_io_memory(io_memory, move || async move {
        engine_append::run(&path, &plan2).await
    });
    match report {
        Ok(r) => print!("{}", r.render(&plan)),
        Err(e) => {
            eprintln!("engine_append failed: {e}");
            std::process::exit(1);
        }
    }
}
