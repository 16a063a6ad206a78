//! The checkpoint benchmark: how long one checkpoint takes once every queue of a shard with
//! 10,000 queues was written since the last one, and how long reopening that shard takes.
//!
//! `engine_append` never reaches a checkpoint inside its timed part (its runs are shorter than
//! the 10 s interval and the 256 MiB trigger), so the cost a checkpoint adds per queue is
//! measured here on its own. Each repetition, on a fresh shard on real files:
//!
//! ```text
//!  open → one 1 KiB batch into each queue (Written) → flush → time close   ("first": new files)
//!  reopen (timed) → one more batch into each queue → flush → time close    ("later")
//! ```
//!
//! `Shard::close` is a flush (already done, so free) plus a checkpoint, so its duration is the
//! checkpoint's.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringmq_engine::{Durability, EngineError, QueueId, Shard, ShardConfig};

use crate::engine_append::{build_pool, MAX_BATCH_BYTES};
use crate::stats::median;

/// Sizes of one checkpoint benchmark.
#[derive(Debug, Clone)]
pub struct Plan {
    pub queues: u32,
    pub repetitions: usize,
    pub appenders: usize,
    pub segment_size_bytes: u64,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            queues: 10_000,
            repetitions: 5,
            appenders: 64,
            segment_size_bytes: 128 << 20,
        }
    }

    /// Seconds: keeps the benchmark compiling and running under `cargo test`.
    pub fn quick() -> Plan {
        Plan {
            queues: 200,
            repetitions: 1,
            appenders: 8,
            segment_size_bytes: 2 << 20,
        }
    }
}

/// Medians over the repetitions, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub first_checkpoint_ms: f64,
    pub later_checkpoint_ms: f64,
    pub reopen_ms: f64,
}

impl Report {
    pub fn render(&self, plan: &Plan) -> String {
        format!(
            "checkpoint with {q} written queues (median of {r}): first {a:.1} ms, later {b:.1} ms; reopen {c:.1} ms\n",
            q = plan.queues,
            r = plan.repetitions,
            a = self.first_checkpoint_ms,
            b = self.later_checkpoint_ms,
            c = self.reopen_ms,
        )
    }
}

/// Runs the plan in `dir` (inside a glommio executor).
pub async fn run(dir: &Path, plan: &Plan) -> Result<Report, EngineError> {
    let pool = build_pool(1 << 10);
    let (mut first, mut later, mut reopen) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..plan.repetitions {
        let shard_dir = dir.join(format!("ckpt-{}-{rep}", std::process::id()));
        let config = ShardConfig {
            dir: shard_dir.clone(),
            segment_size_bytes: plan.segment_size_bytes,
            max_batch_bytes: MAX_BATCH_BYTES,
            ..ShardConfig::default()
        };
        let shard = Shard::open(config.clone()).await?;
        first.push(write_all_then_close(&shard, plan, &pool).await?);
        drop(shard);
        let t0 = Instant::now();
        let shard = Shard::open(config).await?;
        reopen.push(ms(t0.elapsed()));
        later.push(write_all_then_close(&shard, plan, &pool).await?);
        drop(shard);
        let _ = std::fs::remove_dir_all(&shard_dir);
    }
    Ok(Report {
        first_checkpoint_ms: median(&first),
        later_checkpoint_ms: median(&later),
        reopen_ms: median(&reopen),
    })
}

/// One batch into every queue, a flush, then the timed close; returns the close in ms.
async fn write_all_then_close(
    shard: &Rc<Shard>,
    plan: &Plan,
    pool: &[Bytes],
) -> Result<f64, EngineError> {
    let next = Rc::new(Cell::new(0u32));
    let tasks: Vec<_> = (0..plan.appenders)
        .map(|_| {
            let (shard, next, pool) = (shard.clone(), next.clone(), pool.to_vec());
            let queues = plan.queues;
            glommio::spawn_local(async move {
                loop {
                    let q = next.get();
                    if q >= queues {
                        return Ok::<_, EngineError>(());
                    }
                    next.set(q + 1);
                    let batch = pool[q as usize % pool.len()].clone();
                    shard.append(QueueId(q), batch, Durability::Written).await?;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    shard.flush().await?;
    let t0 = Instant::now();
    shard.close().await?;
    Ok(ms(t0.elapsed()))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Where the benchmark's shards go: a fresh temp dir under `RINGMQ_BENCH_DIR` (default `.`).
pub fn bench_parent_dir() -> PathBuf {
    std::env::var_os("RINGMQ_BENCH_DIR").map_or_else(|| ".".into(), PathBuf::from)
}
