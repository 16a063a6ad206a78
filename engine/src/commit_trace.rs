//! Where a `Durable` append's time goes, by group-commit phase (feature `commit-trace`, off by
//! default; measurement only): append → the write holding its end is issued ("cut") → the
//! completed writes reach its end → the first fdatasync covering it starts → synced. Printed
//! to stderr when the shard's group commit is dropped.
//!
//! `cargo bench -p ringmq-benches --features ringmq-engine/commit-trace --bench engine_append`

use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::Instant;

/// Samples kept per phase, at most (later ones are dropped).
const MAX_SAMPLES: usize = 1 << 22;

struct Stamp {
    end: u64,
    pushed: Instant,
    cut: Option<Instant>,
    written: Option<Instant>,
    sync_started: Option<Instant>,
}

#[derive(Default)]
pub(crate) struct Trace {
    waiting: RefCell<VecDeque<Stamp>>,
    /// µs per phase: to cut, cut to written, written to sync start, sync start to synced, and
    /// the whole.
    phases: RefCell<[Vec<u32>; 5]>,
    writes: RefCell<VecDeque<(u64, Instant)>>,
    write_us: RefCell<Vec<u32>>,
    syncs: RefCell<VecDeque<(u64, Instant)>>,
    sync_us: RefCell<Vec<u32>>,
    /// KiB per write issued while a `Durable` append waits, and the data end of the last one.
    write_kib: RefCell<Vec<u32>>,
    last_data_end: std::cell::Cell<u64>,
}

fn us(from: Instant, to: Instant) -> u32 {
    to.saturating_duration_since(from).as_micros() as u32
}

fn push(v: &mut Vec<u32>, x: u32) {
    if v.len() < MAX_SAMPLES {
        v.push(x);
    }
}

impl Trace {
    pub fn durable_waiter(&self, end: u64) {
        self.waiting.borrow_mut().push_back(Stamp {
            end,
            pushed: Instant::now(),
            cut: None,
            written: None,
            sync_started: None,
        });
    }

    pub fn write_issued(&self, id: u64, data_end: u64) {
        let now = Instant::now();
        self.writes.borrow_mut().push_back((id, now));
        let last = self.last_data_end.replace(data_end);
        if !self.waiting.borrow().is_empty() && last > 0 {
            push(
                &mut self.write_kib.borrow_mut(),
                (data_end.saturating_sub(last) >> 10) as u32,
            );
        }
        for s in self.waiting.borrow_mut().iter_mut() {
            if s.cut.is_none() && s.end <= data_end {
                s.cut = Some(now);
            }
        }
    }

    pub fn write_done(&self, id: u64, written: u64) {
        let now = Instant::now();
        let mut ws = self.writes.borrow_mut();
        if let Some(i) = ws.iter().position(|w| w.0 == id) {
            if let Some((_, t)) = ws.remove(i) {
                push(&mut self.write_us.borrow_mut(), us(t, now));
            }
        }
        for s in self.waiting.borrow_mut().iter_mut() {
            if s.written.is_none() && s.end <= written {
                s.written = Some(now);
            }
        }
    }

    pub fn sync_started(&self, id: u64, target: u64) {
        let now = Instant::now();
        self.syncs.borrow_mut().push_back((id, now));
        for s in self.waiting.borrow_mut().iter_mut() {
            if s.sync_started.is_none() && s.end <= target {
                s.sync_started = Some(now);
            }
        }
    }

    pub fn sync_done(&self, id: u64, synced: u64) {
        let now = Instant::now();
        let mut ss = self.syncs.borrow_mut();
        if let Some(i) = ss.iter().position(|s| s.0 == id) {
            if let Some((_, t)) = ss.remove(i) {
                push(&mut self.sync_us.borrow_mut(), us(t, now));
            }
        }
        let mut w = self.waiting.borrow_mut();
        let mut p = self.phases.borrow_mut();
        while w.front().is_some_and(|s| s.end <= synced) {
            let Some(s) = w.pop_front() else { break };
            let cut = s.cut.unwrap_or(now);
            let written = s.written.unwrap_or(now);
            let started = s.sync_started.unwrap_or(now);
            push(&mut p[0], us(s.pushed, cut));
            push(&mut p[1], us(cut, written));
            push(&mut p[2], us(written, started));
            push(&mut p[3], us(started, now));
            push(&mut p[4], us(s.pushed, now));
        }
    }
}

fn summary(v: &mut [u32]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_unstable();
    let q = |f: f64| v[((v.len() - 1) as f64 * f) as usize];
    let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
    format!(
        "n {} mean {mean:.0} p50 {} p90 {} p99 {}",
        v.len(),
        q(0.5),
        q(0.9),
        q(0.99)
    )
}

impl Drop for Trace {
    fn drop(&mut self) {
        let p = self.phases.get_mut();
        if p[4].is_empty() {
            return;
        }
        let names = [
            "append->cut",
            "cut->written",
            "written->sync start",
            "sync start->synced",
            "total",
        ];
        for (n, v) in names.iter().zip(p.iter_mut()) {
            eprintln!("commit-trace {n:<20} us: {}", summary(v));
        }
        eprintln!(
            "commit-trace {:<20} us: {}",
            "write duration",
            summary(self.write_us.get_mut())
        );
        eprintln!(
            "commit-trace {:<20} us: {}",
            "sync duration",
            summary(self.sync_us.get_mut())
        );
        eprintln!(
            "commit-trace {:<20} KiB: {}",
            "durable-load write",
            summary(self.write_kib.get_mut())
        );
    }
}
