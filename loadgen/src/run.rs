//! One run of the workload against one bootstrap address: discover the cluster, start one
//! executor per core with its producers and consumers, print progress every second, and
//! collect the results.
//!
//! ```text
//!  main thread: setup executor (metadata, create topic, start offsets)
//!      │ spawn, one per --cores entry (pinned):
//!      ├─► core executor: producers k ≡ core (mod n), consumers j ≡ core (mod n), reporter
//!      └─► …
//!  main thread: progress line + interval histograms each second, until every core is done
//! ```

use std::rc::Rc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use glommio::{LocalExecutorBuilder, Placement};

use crate::client::cluster::{self, Cluster};
use crate::clock::now_ns;
use crate::config::{Args, CoreList};
use crate::consumer::{self, Position};
use crate::ctx::{CoreCtx, CoreHists, Window};
use crate::producer::{self, ProducerPlan};
use crate::report::{Counts, Interval, Percentiles, Results, Section};
use crate::schedule::Schedule;
use crate::stats::{Hists, Shared};

/// io_uring buffer memory per executor: well under the 8 MiB memlock limit even with several
/// executors (and an embedded broker) on the machine; the client does no DMA file I/O.
pub const IO_MEMORY_BYTES: usize = 1 << 20;
/// Time between the end of setup and the first intended send, for the executors to start.
const START_DELAY: Duration = Duration::from_millis(200);
/// Progress line period.
const TICK: Duration = Duration::from_secs(1);

/// What a run produced: results plus the per-second histograms for the interval log.
#[derive(Debug)]
pub struct RunOutput {
    pub results: Results,
    pub intervals: Vec<Interval>,
    pub started_unix: Duration,
}

/// Runs the workload of `args` against `bootstrap` on `cores`.
pub fn run(args: &Args, bootstrap: &str, cores: &CoreList) -> anyhow::Result<RunOutput> {
    if args.until_end && (args.producers > 0 || args.group.is_some()) {
        anyhow::bail!("--until-end reads a backlog: it needs --producers 0 and no --group");
    }
    let (cluster, starts, ends) = setup(args, bootstrap)?;
    let cluster = Arc::new(cluster);
    let ends = ends.map(Arc::new);
    let positions: Arc<Vec<AtomicI64>> =
        Arc::new(starts.iter().map(|&o| AtomicI64::new(o)).collect());
    let args = Arc::new(Args {
        bootstrap: bootstrap.to_owned(),
        ..args.clone()
    });
    let shared = Arc::new(Shared::default());
    shared
        .producers_running
        .store(args.producers, Ordering::Release);
    if args.group.is_some() {
        shared
            .members_running
            .store(args.consumers, Ordering::Release);
    }
    let start_ns = now_ns() + START_DELAY.as_nanos() as u64;
    let measure_from_ns = start_ns + args.warmup.as_nanos() as u64;
    let window = Window {
        start_ns,
        measure_from_ns,
        end_ns: measure_from_ns + args.duration.as_nanos() as u64,
    };
    let started_unix = Duration::from_nanos(start_ns);

    let n_cores = cores.0.len();
    let workers_running = Arc::new(AtomicUsize::new(n_cores));
    let mut handles = Vec::with_capacity(n_cores);
    for (slot, &cpu) in cores.0.iter().enumerate() {
        let plan = CorePlan::new(&args, &cluster, &starts, window, slot, n_cores);
        let (args, cluster, shared, running) = (
            args.clone(),
            cluster.clone(),
            shared.clone(),
            workers_running.clone(),
        );
        let positions = positions.clone();
        let ends = ends.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("loadgen-{cpu}"))
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || async move {
                let total = run_core(args, cluster, shared, positions, ends, window, plan).await;
                running.fetch_sub(1, Ordering::AcqRel);
                total
            })
            .map_err(|e| anyhow::anyhow!("starting an executor on core {cpu}: {e}"))?;
        handles.push(handle);
    }

    let intervals = progress(&args, &shared, &workers_running, window);
    let mut totals = Hists::default();
    for h in handles {
        let hists = h
            .join()
            .map_err(|e| anyhow::anyhow!("a core executor failed: {e}"))?;
        totals.add(&hists);
    }
    let results = results(&args, bootstrap, &shared, &totals, window);
    Ok(RunOutput {
        results,
        intervals,
        started_unix,
    })
}

/// Discovers the cluster (creating the topic if asked), the consumers' start offsets and,
/// with `--until-end`, the log end offsets to read up to, on a short-lived executor on this
/// thread.
#[allow(clippy::type_complexity)]
fn setup(args: &Args, bootstrap: &str) -> anyhow::Result<(Cluster, Vec<i64>, Option<Vec<i64>>)> {
    let ex = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(IO_MEMORY_BYTES)
        .make()
        .map_err(|e| anyhow::anyhow!("starting the setup executor: {e}"))?;
    let args = args.clone();
    let bootstrap = bootstrap.to_owned();
    ex.run(async move {
        let create = args
            .create_topic
            .then_some((args.partitions, args.replication_factor));
        let cluster = cluster::discover(&bootstrap, &args.topic, create, args.request_timeout)
            .await
            .with_context(|| format!("discovering topic `{}` via {bootstrap}", args.topic))?;
        let mut starts = vec![0i64; cluster.partitions() as usize];
        let mut ends = args.until_end.then(|| vec![0i64; starts.len()]);
        if args.consumers > 0 {
            let all: Vec<i32> = (0..cluster.partitions()).collect();
            for (addr, parts) in cluster.by_leader(&all)? {
                let mut conn = crate::client::Conn::connect(&addr, args.request_timeout).await?;
                let offsets = cluster::list_offsets(
                    &mut conn,
                    &args.topic,
                    &parts,
                    args.from.list_offsets_timestamp(),
                )
                .await
                .with_context(|| format!("listing start offsets on {addr}"))?;
                for (p, o) in parts.iter().zip(offsets) {
                    starts[*p as usize] = o;
                }
                if let Some(ends) = ends.as_mut() {
                    let latest = cluster::list_offsets(&mut conn, &args.topic, &parts, -1)
                        .await
                        .with_context(|| format!("listing end offsets on {addr}"))?;
                    for (p, o) in parts.iter().zip(latest) {
                        ends[*p as usize] = o;
                    }
                }
            }
        }
        Ok((cluster, starts, ends))
    })
}

/// The producers and consumers one core runs.
#[derive(Debug, Clone)]
struct CorePlan {
    producers: Vec<ProducerPlan>,
    /// Consumers with partitions assigned by this tool.
    consumers: Vec<Vec<Position>>,
    /// Consumer-group members (partitions assigned by the group's leader).
    members: usize,
}

impl CorePlan {
    /// Producer `k` runs on core slot `k % n`, at `rate / producers`, its schedule offset by
    /// `k / rate` so the producers interleave rather than fire together. Consumer `j` runs on
    /// slot `j % n` and reads partitions `p` with `p % consumers == j` (or, with `--group`,
    /// whatever the group assigns it).
    fn new(
        args: &Args,
        cluster: &Cluster,
        starts: &[i64],
        window: Window,
        slot: usize,
        n: usize,
    ) -> CorePlan {
        let total_rate = args.rate.records_per_sec(args.record_size.mean());
        let producers = (0..args.producers)
            .filter(|k| k % n == slot)
            .map(|k| {
                let schedule = match total_rate {
                    Some(rate) => {
                        let offset_ns = (k as f64 * 1e9 / rate) as u64;
                        Schedule::open(window.start_ns + offset_ns, rate / args.producers as f64)
                    }
                    None => Schedule::closed(window.start_ns),
                };
                ProducerPlan { id: k, schedule }
            })
            .collect();
        let consumers = (0..args.consumers)
            .filter(|j| j % n == slot)
            .map(|j| {
                (0..cluster.partitions())
                    .filter(|p| *p as usize % args.consumers == j)
                    .map(|p| Position {
                        partition: p,
                        offset: starts[p as usize],
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|parts| !parts.is_empty() && args.group.is_none())
            .collect();
        let mine = (0..args.consumers).filter(|j| j % n == slot).count();
        CorePlan {
            producers,
            consumers,
            members: if args.group.is_some() { mine } else { 0 },
        }
    }
}

/// Everything one core runs; returns its measured-window histograms.
async fn run_core(
    args: Arc<Args>,
    cluster: Arc<Cluster>,
    shared: Arc<Shared>,
    positions: Arc<Vec<AtomicI64>>,
    ends: Option<Arc<Vec<i64>>>,
    window: Window,
    plan: CorePlan,
) -> Hists {
    let with_producers = args.producers > 0;
    let group = args.group.clone();
    let ctx = Rc::new(CoreCtx {
        args,
        cluster,
        shared,
        window,
        hists: Default::default(),
        with_producers,
        positions,
        ends,
    });
    let reporter = glommio::spawn_local({
        let ctx = ctx.clone();
        async move {
            loop {
                glommio::timer::sleep(TICK / 4).await;
                ctx.publish_interval();
            }
        }
    });
    let mut tasks = Vec::new();
    // One connection per broker per core, shared by the core's producers.
    let pool = Rc::new(producer::Pool::new(
        plan.producers.len(),
        ctx.args.max_in_flight,
    ));
    for p in plan.producers {
        tasks.push(glommio::spawn_local(producer::run(
            ctx.clone(),
            pool.clone(),
            p,
        )));
    }
    for positions in plan.consumers {
        tasks.push(glommio::spawn_local(consumer::run(ctx.clone(), positions)));
    }
    if let Some(group) = group {
        for _ in 0..plan.members {
            let member = consumer::run_member(ctx.clone(), group.clone());
            tasks.push(glommio::spawn_local(member));
        }
    }
    for task in tasks {
        task.await;
    }
    drop(reporter);
    ctx.publish_interval();
    let CoreHists { total, .. } = std::mem::take(&mut *ctx.hists.borrow_mut());
    total
}

/// Prints a progress line every second until every core is done; returns the intervals.
fn progress(args: &Args, shared: &Shared, running: &AtomicUsize, window: Window) -> Vec<Interval> {
    let mut intervals = Vec::new();
    let begin = Instant::now();
    let mut last_tick = begin;
    let (mut last_acked, mut last_consumed) = (shared.acked.get(), shared.consumed.get());
    loop {
        let next = last_tick + TICK;
        while Instant::now() < next && running.load(Ordering::Acquire) > 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        let now = Instant::now();
        let secs = (now - last_tick).as_secs_f64().max(1e-9);
        let hists = shared.take_interval();
        let (acked, consumed) = (shared.acked.get(), shared.consumed.get());
        if !args.quiet {
            let phase = match now_ns() {
                t if t < window.measure_from_ns => "warmup",
                t if t < window.end_ns => "run",
                _ => "drain",
            };
            let prod = (acked.0 - last_acked.0) as f64 / secs;
            let mb = (acked.1 - last_acked.1) as f64 / secs / 1e6;
            let cons = (consumed.0 - last_consumed.0) as f64 / secs;
            let p99 = |h: &crate::stats::Hist| {
                if h.is_empty() {
                    "-".to_owned()
                } else {
                    crate::report::fmt_us(h.quantile_us(0.99))
                }
            };
            eprintln!(
                "[{:>6.1}s {phase:>6}] produce {prod:>10.0} rec/s {mb:>8.2} MB/s p99 {:>8} | consume {cons:>10.0} rec/s e2e p99 {:>8} | errors {}",
                (now - begin).as_secs_f64(),
                p99(&hists.produce),
                p99(&hists.e2e),
                shared.error_total()
            );
        }
        intervals.push(Interval {
            start: last_tick - begin,
            length: now - last_tick,
            hists,
        });
        last_tick = now;
        (last_acked, last_consumed) = (acked, consumed);
        if running.load(Ordering::Acquire) == 0 {
            return intervals;
        }
    }
}

fn results(
    args: &Args,
    bootstrap: &str,
    shared: &Shared,
    totals: &Hists,
    window: Window,
) -> Results {
    // A catch-up read is timed from the start to the moment the last consumer was done.
    let caught_up = shared.caught_up_ns.load(Ordering::Acquire);
    let secs = if args.until_end {
        (caught_up.max(window.start_ns + 1) - window.start_ns) as f64 / 1e9
    } else {
        window.measured_secs()
    };
    let (produce, end_to_end, consume) = {
        let acked = shared.acked_measured.get();
        let consumed = if args.until_end {
            shared.consumed.get()
        } else {
            shared.consumed_measured.get()
        };
        let produce = (args.producers > 0)
            .then(|| Section::new(acked.0, acked.1, secs, Some(&totals.produce)));
        let both = args.producers > 0 && args.consumers > 0;
        let e2e = both.then(|| Section::new(consumed.0, consumed.1, secs, Some(&totals.e2e)));
        let consume =
            (args.consumers > 0 && !both).then(|| Section::new(consumed.0, consumed.1, secs, None));
        (produce, e2e, consume)
    };
    let counts = Counts {
        sent: shared.sent.get().0,
        acknowledged: shared.acked.get().0,
        failed: shared.failed.load(Ordering::Relaxed),
        consumed: shared.consumed.get().0,
    };
    let errors = shared.errors_snapshot();
    let ok = errors.is_empty() && counts.failed == 0 && counts.sent == counts.acknowledged;
    let produce_request = (!totals.request.is_empty()).then(|| Percentiles::of(&totals.request));
    Results {
        bootstrap: bootstrap.to_owned(),
        measured_s: secs,
        produce,
        produce_request,
        end_to_end,
        consume,
        raw_mb_per_s: None,
        counts,
        errors,
        ok,
    }
}
