//! `cargo bench -p ringmq-benches --bench engine_checkpoint` (full: 10,000 queues, ~a minute)
//! `RINGMQ_BENCH_QUICK=1 cargo bench -p ringmq-benches --bench engine_checkpoint` (seconds).
//! Files go to a temp dir under `RINGMQ_BENCH_DIR` (default: the current directory).

use ringmq_benches::engine_checkpoint::{self, bench_parent_dir, Plan};
use ringmq_benches::{executor, quick_mode_requested};

fn main() {
    let quick = quick_mode_requested();
    let plan = if quick { Plan::quick() } else { Plan::full() };
    let dir = tempfile::Builder::new()
        .prefix("ringmq-bench-checkpoint")
        .tempdir_in(bench_parent_dir())
        .expect("creating the bench directory");
    let path = dir.path().to_path_buf();
    println!("# engine_checkpoint (quick={quick}) in {}", path.display());
    let plan2 = plan.clone();
    let report = executor::run(move || async move { engine_checkpoint::run(&path, &plan2).await });
    match report {
        Ok(r) => print!("{}", r.render(&plan)),
        Err(e) => {
            eprintln!("engine_checkpoint failed: {e}");
            std::process::exit(1);
        }
    }
}
