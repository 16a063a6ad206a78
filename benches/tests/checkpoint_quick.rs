//! The checkpoint benchmark in quick mode, so it keeps compiling and running under `cargo test`.

use ringmq_benches::engine_checkpoint::{self, Plan};
use ringmq_benches::executor;

#[test]
fn engine_checkpoint_quick_mode_runs() {
    let plan = Plan::quick();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let path = dir.path().to_path_buf();
    let plan2 = plan.clone();
    let r = executor::run(move || async move { engine_checkpoint::run(&path, &plan2).await })
        .unwrap_or_else(|e| panic!("quick checkpoint benchmark failed: {e}"));
    println!("{}", r.render(&plan));
    for v in [r.first_checkpoint_ms, r.later_checkpoint_ms, r.reopen_ms] {
        assert!(v.is_finite() && v > 0.0, "empty figure in {r:?}");
    }
}
