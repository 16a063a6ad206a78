//! Injected I/O failures on the in-memory storage double: a failed write or fdatasync must
//! poison the shard (every later append fails with `Poisoned` until reopened), must never be
//! retried into a false success, and must not turn any in-flight Durable append into an ack.
//! After a power loss right after the failure, every batch acknowledged Durable before it is
//! still there, byte-identical, and each queue holds a prefix of what was appended. The same
//! holds for a failure inside a checkpoint (segment index files, checkpoint file).
//!
//! Catches the "fsyncgate" bug class: retrying fdatasync after an error (the kernel may have
//! dropped the dirty data, so the retry succeeds on nothing), acknowledging waiters of a failed
//! group, or accepting appends after a failure.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;
use ringmq_engine::io::{CrashMode, MemStorage, Storage};
use ringmq_engine::{Durability, EngineError, Offset, QueueId, Shard};

use common::{make_batch, record_count, run_glommio, small_config, stored_mismatch};

/// Appends issued together in each case (several groups, several writes in flight).
const APPENDS: usize = 40;
const QUEUES: u32 = 3;

#[test]
fn failed_fdatasync_poisons_and_acks_nothing_it_covered() {
    let hit = (0..12)
        .filter(|&n| {
            run_case(Fault::Fsync(n)).unwrap_or_else(|e| panic!("fdatasync #{n} fails: {e}"))
        })
        .count();
    assert!(
        hit >= 6,
        "only {hit} of 12 injected fdatasync failures were reached"
    );
}

#[test]
fn failed_write_poisons_and_acks_nothing_after_it() {
    let hit = (0..12)
        .filter(|&n| run_case(Fault::Write(n)).unwrap_or_else(|e| panic!("write #{n} fails: {e}")))
        .count();
    assert!(
        hit >= 6,
        "only {hit} of 12 injected write failures were reached"
    );
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The n-th next fdatasync (counted after open) fails.
    Fsync(u64),
    /// The n-th next write fails.
    Write(u64),
}

/// Returns whether the fault was reached (some append failed).
fn run_case(fault: Fault) -> Result<bool, String> {
    run_glommio(move || async move {
        let mem = MemStorage::new();
        let cfg = small_config(PathBuf::from("/mem/faults"), 32 << 10, 16 << 10);
        let io: Rc<dyn Storage> = Rc::new(mem.process_view());
        let shard = Shard::open_with_io(cfg.clone(), io)
            .await
            .map_err(|e| format!("open: {e}"))?;
        match fault {
            Fault::Fsync(n) => mem.fail_fsync_in(n),
            Fault::Write(n) => mem.fail_write_in(n),
        }
        let batches: Vec<(u32, Bytes)> = (0..APPENDS)
            .map(|i| {
                (
                    (i as u32) % QUEUES,
                    make_batch(i as u64 + 1, 2, 700 + i * 37),
                )
            })
            .collect();
        // Half are issued at once, the rest one by one after them, so the failure can land in
        // a shared group or between sequential appends.
        let mut results: Vec<Option<Result<u64, String>>> = vec![None; APPENDS];
        let tasks: Vec<_> = batches[..APPENDS / 2]
            .iter()
            .map(|(q, b)| {
                let (shard, q, b) = (shard.clone(), *q, b.clone());
                glommio::spawn_local(async move {
                    shard.append(QueueId(q), b, Durability::Durable).await
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            results[i] = Some(t.await.map(|a| a.base_offset.0).map_err(|e| e.to_string()));
        }
        for i in APPENDS / 2..APPENDS {
            let (q, b) = &batches[i];
            let r = shard
                .append(QueueId(*q), b.clone(), Durability::Durable)
                .await;
            results[i] = Some(r.map(|a| a.base_offset.0).map_err(|e| e.to_string()));
        }
        let failed = results.iter().flatten().filter(|r| r.is_err()).count();
        if failed == 0 {
            // The fault lay beyond this workload's I/O: nothing to check but a clean run.
            return Ok(false);
        }
        // Poisoned: appends and flushes keep failing, whatever the storage does now.
        let after = shard
            .append(QueueId(0), make_batch(999, 1, 10), Durability::Written)
            .await;
        if !matches!(after, Err(EngineError::Poisoned { .. })) {
            return Err(format!(
                "append after a failed I/O: {after:?} (want Poisoned)"
            ));
        }
        if shard.flush().await.is_ok() {
            return Err("flush after a failed I/O succeeded".into());
        }
        // Power loss now; only what was synced counts.
        mem.crash(CrashMode::DropUnsynced);
        drop(shard);
        let io: Rc<dyn Storage> = Rc::new(mem.process_view());
        let shard = Shard::open_with_io(cfg, io)
            .await
            .map_err(|e| format!("reopen: {e}"))?;
        let mut acked: BTreeMap<u32, BTreeMap<u64, usize>> = BTreeMap::new();
        for (i, r) in results.iter().enumerate() {
            if let Some(Ok(base)) = r {
                acked.entry(batches[i].0).or_default().insert(*base, i);
            }
        }
        for q in 0..QUEUES {
            let end = shard.end_offset(QueueId(q)).0;
            let acked_q = acked.remove(&q).unwrap_or_default();
            let acked_end = acked_q
                .iter()
                .map(|(base, i)| base + record_count(&batches[*i].1))
                .max()
                .unwrap_or(0);
            if end < acked_end {
                return Err(format!(
                    "q{q}: end {end} after reopen, Durable acks reach {acked_end}"
                ));
            }
            let mut at = 0;
            while at < end {
                let r = shard
                    .read(QueueId(q), Offset(at), 64 << 10)
                    .await
                    .map_err(|e| format!("q{q}: read at {at}: {e}"))?;
                for stored in &r.batches {
                    // An acknowledged batch must be exactly where it was acknowledged; an
                    // unacknowledged survivor must at least be one we sent to this queue.
                    let sent = match acked_q.get(&at) {
                        Some(i) => &batches[*i].1,
                        None => batches
                            .iter()
                            .filter(|(bq, _)| *bq == q)
                            .map(|(_, b)| b)
                            .find(|b| stored_mismatch(stored, b, Offset(at)).is_none())
                            .ok_or_else(|| format!("q{q}: batch at {at} was never sent here"))?,
                    };
                    if let Some(why) = stored_mismatch(stored, sent, Offset(at)) {
                        return Err(format!("q{q}: acknowledged batch at {at}: {why}"));
                    }
                    at += record_count(sent);
                }
                if r.batches.is_empty() {
                    return Err(format!("q{q}: empty read at {at} < end {end}"));
                }
            }
        }
        // The reopened shard takes appends again.
        shard
            .append(QueueId(0), make_batch(1000, 1, 10), Durability::Durable)
            .await
            .map_err(|e| format!("append after reopen: {e}"))?;
        Ok(true)
    })
}

/// A write or fdatasync that fails during a checkpoint (segment index files, then the
/// checkpoint file) poisons the shard like any other, and after a power loss nothing
/// acknowledged is lost: the previous checkpoint still counts only what its files hold.
#[test]
fn failed_checkpoint_io_poisons_and_loses_nothing() {
    for fault in (0..3).flat_map(|n| [Fault::Write(n), Fault::Fsync(n)]) {
        run_checkpoint_case(fault).unwrap_or_else(|e| panic!("{fault:?} in a checkpoint: {e}"));
    }
}

fn run_checkpoint_case(fault: Fault) -> Result<(), String> {
    run_glommio(move || async move {
        let mem = MemStorage::new();
        let cfg = small_config(PathBuf::from("/mem/ckpt-faults"), 32 << 10, 16 << 10);
        let open = |mem: &MemStorage| {
            let io: Rc<dyn Storage> = Rc::new(mem.process_view());
            Shard::open_with_io(cfg.clone(), io)
        };
        let shard = open(&mem).await.map_err(|e| format!("open: {e}"))?;
        // Two rounds across several 32 KiB segments, a clean reopen in between, so the failing
        // checkpoint appends to index files an earlier one counted.
        let mut acked: Vec<(u32, u64, Bytes)> = Vec::new();
        let mut shard = shard;
        for round in 0..2u64 {
            for i in 0..20u64 {
                let q = (i % u64::from(QUEUES)) as u32;
                let b = make_batch(round * 100 + i + 1, 2, 900 + i as usize * 53);
                let a = shard
                    .append(QueueId(q), b.clone(), Durability::Durable)
                    .await
                    .map_err(|e| format!("append: {e}"))?;
                acked.push((q, a.base_offset.0, b));
            }
            if round == 0 {
                shard.close().await.map_err(|e| format!("close: {e}"))?;
                drop(shard);
                shard = open(&mem).await.map_err(|e| format!("reopen: {e}"))?;
            }
        }
        // Everything is durable: the next writes and fdatasyncs are the checkpoint's own.
        match fault {
            Fault::Fsync(n) => mem.fail_fsync_in(n),
            Fault::Write(n) => mem.fail_write_in(n),
        }
        if shard.close().await.is_ok() {
            return Err("a checkpoint whose I/O failed succeeded".into());
        }
        mem.crash(CrashMode::DropUnsynced);
        drop(shard);
        let shard = open(&mem).await.map_err(|e| format!("reopen: {e}"))?;
        for (q, base, sent) in &acked {
            let r = shard
                .read(QueueId(*q), Offset(*base), 1)
                .await
                .map_err(|e| format!("q{q}: read at {base}: {e}"))?;
            let stored = r
                .batches
                .first()
                .ok_or_else(|| format!("q{q}: acknowledged batch at {base} is missing"))?;
            if let Some(why) = stored_mismatch(stored, sent, Offset(*base)) {
                return Err(format!("q{q}: acknowledged batch at {base}: {why}"));
            }
        }
        Ok(())
    })
}
