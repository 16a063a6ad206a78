//! What a glommio executor itself leaves open after it ends (its own binary, so that no other
//! test's executors run meanwhile): measured, printed, and bounded.
//!
//! glommio 0.9 keeps each executor's sleep notifier (an eventfd) in a process-wide registry
//! of weak references; anything still holding the notifier when the executor ends keeps the
//! eventfd open. The bound below is what we measured (kernel-notes/o-direct-and-page-cache.md,
//! "Descriptors"); the test fails if executors start leaking more, e.g. their io_uring rings.

mod common;

use common::{make_batch, run_glommio, small_config};
use ringmq_engine::{Durability, QueueId, Shard};
use std::collections::BTreeMap;

const EXECUTORS: usize = 20;
/// Descriptors an ended executor may leave behind, at most (measured: see the module docs).
const MAX_LEFT_PER_EXECUTOR: usize = 1;

/// This process's open descriptors, counted by what they point at (`anon_inode:[eventfd]`,
/// `anon_inode:[io_uring]`, `file` for paths, ...).
fn descriptors_by_kind() -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir("/proc/self/fd")
        .expect("procfs")
        .flatten()
    {
        if let Ok(t) = std::fs::read_link(e.path()) {
            let t = t.to_string_lossy().into_owned();
            let kind = if t.starts_with('/') { "file".into() } else { t };
            *out.entry(kind).or_insert(0) += 1;
        }
    }
    out
}

fn growth(before: &BTreeMap<String, usize>, after: &BTreeMap<String, usize>) -> Vec<(String, i64)> {
    after
        .iter()
        .map(|(k, n)| (k.clone(), *n as i64 - *before.get(k).unwrap_or(&0) as i64))
        .filter(|(_, d)| *d != 0)
        .collect()
}

/// Catches: executors (empty, or running a shard that is opened, written and closed) leaving
/// more than the measured glommio residue behind once they end.
#[test]
fn an_ended_executor_leaves_at_most_its_measured_residue() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Warm-up: process-wide state glommio creates once (its global "disconnected" notifier).
    run_glommio(|| async {});
    let before = descriptors_by_kind();
    for _ in 0..EXECUTORS {
        run_glommio(|| async {});
    }
    let empty = descriptors_by_kind();
    for i in 0..EXECUTORS {
        let c = small_config(tmp.path().join("shard"), 256 << 10, 64 << 10);
        run_glommio(move || async move {
            let s = Shard::open(c).await.expect("open");
            for j in 0..8u64 {
                s.append(
                    QueueId(0),
                    make_batch(i as u64 * 100 + j, 10, 1000),
                    Durability::Durable,
                )
                .await
                .expect("append");
            }
            s.close().await.expect("close");
        });
    }
    let total = |g: &[(String, i64)]| g.iter().map(|(_, d)| *d).sum::<i64>();
    // A helper thread of an ended executor (glommio's blocking pool) may still hold its
    // notifier for a moment on a loaded machine: wait for the count to settle, boundedly. A
    // leak stays; a late thread exit does not.
    let settle_until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut after = descriptors_by_kind();
    while total(&growth(&empty, &after)) > (EXECUTORS * MAX_LEFT_PER_EXECUTOR) as i64
        && std::time::Instant::now() < settle_until
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
        after = descriptors_by_kind();
    }
    let (g_empty, g_shard) = (growth(&before, &empty), growth(&empty, &after));
    println!("{EXECUTORS} empty executors left: {g_empty:?}");
    println!("{EXECUTORS} executors with a shard left: {g_shard:?}");
    for (what, g) in [("empty", &g_empty), ("with a shard", &g_shard)] {
        assert!(
            total(g) <= (EXECUTORS * MAX_LEFT_PER_EXECUTOR) as i64,
            "{EXECUTORS} executors ({what}) left {g:?}"
        );
    }
}
