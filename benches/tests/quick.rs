//! The benchmarks in quick mode, so they keep compiling and running under `cargo test`.
//! They fail if the engine or a baseline errors, or if a figure comes out empty or absurd.

use ringmq_benches::engine_append::{self, Plan};
use ringmq_benches::executor;
use ringmq_engine::Durability;

#[test]
fn engine_append_quick_mode_runs_and_reports_every_configuration() {
    let plan = Plan::quick();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let path = dir.path().to_path_buf();
    let plan2 = plan.clone();
    let report = executor::run(move || async move { engine_append::run(&path, &plan2).await })
        .unwrap_or_else(|e| panic!("quick benchmark failed: {e}"));
    let rendered = report.render(&plan);
    println!("{rendered}");
    let configs = plan.batch_sizes.len() * plan.queue_counts.len() * 2;
    assert_eq!(report.rows.len(), configs, "one row per configuration");
    for r in &report.rows {
        assert!(
            r.mb_per_s.is_finite() && r.mb_per_s > 0.0,
            "empty throughput in {r:?}"
        );
        assert_eq!(
            r.latency.is_some(),
            r.durability == Durability::Durable,
            "{r:?}"
        );
        if let Some(l) = r.latency {
            assert!(
                l.p50 > 0.0 && l.p50 <= l.p99 && l.p99 <= l.p999,
                "inconsistent latency {l:?}"
            );
        }
    }
    assert_eq!(
        report.open_loop.len(),
        plan.batch_sizes.len(),
        "one open-loop row per batch size"
    );
    for o in &report.open_loop {
        assert!(
            o.mb_per_s > 0.0 && o.offered_mb_per_s > 0.0 && o.latency.p50 <= o.latency.p99,
            "open-loop row {o:?}"
        );
    }
    for (b, f, z) in &report.raw_mb_per_s {
        assert!(*f > 0.0 && *z > 0.0, "raw baseline for {b} B is empty");
    }
    assert!(
        report.raw_engine_shape_mb_per_s > 0.0,
        "raw baseline with the engine's write shape is empty"
    );
    assert!(
        report.bare_fsync.p99 > 0.0,
        "bare fdatasync baseline is empty"
    );
    assert!(
        rendered.contains("MET") || rendered.contains("MISSED"),
        "targets are printed"
    );
}
