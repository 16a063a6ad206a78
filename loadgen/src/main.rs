//! `ringmq-loadgen`: see `ringmq-loadgen --help` and `loadgen/README.md`.
//!
//! Exit status: 0 when every run finished without errors, 1 when a run counted errors (or
//! lost records), 2 when the tool could not run at all (bad setup, unreachable broker).

use std::fs::File;
use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use ringmq_loadgen::config::{Args, CoreList};
use ringmq_loadgen::embedded::EmbeddedBroker;
use ringmq_loadgen::raw::run_raw;
use ringmq_loadgen::report::{self, Report};
use ringmq_loadgen::run::{run, RunOutput};

/// Responses come from brokers we do not control: kafka-protocol's decoders size vectors from
/// the lengths they carry, and this allocator keeps a crafted length from aborting the tool.
#[global_allocator]
static ALLOC: ringmq_wire::alloc::LazyHugeAlloc = ringmq_wire::alloc::LazyHugeAlloc;

fn main() -> ExitCode {
    let args = Args::parse();
    match main_inner(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ringmq-loadgen: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Returns whether every run was clean.
fn main_inner(args: &Args) -> anyhow::Result<bool> {
    let online = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let broker_cores = args.broker_cores.unwrap_or((online / 2).max(1));
    let cores = args
        .cores
        .clone()
        .unwrap_or_else(|| default_cores(online, args.embedded.then_some(broker_cores)));
    if args.raw {
        return raw_only(args, &cores);
    }
    let _broker;
    let mut args = args.clone();
    if args.embedded {
        let broker = EmbeddedBroker::start(args.broker_bin.as_deref(), broker_cores)?;
        eprintln!(
            "embedded broker on {} ({broker_cores} cores from core 0; loadgen on cores {cores})",
            broker.addr
        );
        args.bootstrap = broker.addr.clone();
        args.create_topic = true;
        _broker = broker;
    }
    let raw_mb_per_s = match args.raw_baseline {
        Some(d) => Some(run_raw(&cores, args.producers, d / 4, d)?.mb_per_s),
        None => None,
    };
    let mut first = run(&args, &args.bootstrap, &cores)?;
    first.results.raw_mb_per_s = raw_mb_per_s;
    print!("{}", report::table(&first.results));
    let mut ok = first.results.ok;
    let second = match &args.compare {
        Some(other) => {
            let mut second = run(&args, other, &cores)?;
            second.results.raw_mb_per_s = raw_mb_per_s;
            print!("{}", report::table(&second.results));
            print!("{}", report::compare_table(&first.results, &second.results));
            ok &= second.results.ok;
            Some(second)
        }
        None => None,
    };
    write_outputs(&args, &cores, &first, second.as_ref())?;
    Ok(ok)
}

fn raw_only(args: &Args, cores: &CoreList) -> anyhow::Result<bool> {
    let r = run_raw(cores, args.producers, args.warmup, args.duration)?;
    println!(
        "raw loopback TCP: {:.2} MB/s ({} connections, {} KiB writes, {:.1}s measured)",
        r.mb_per_s,
        r.connections,
        ringmq_loadgen::raw::RAW_WRITE_BYTES >> 10,
        args.duration.as_secs_f64()
    );
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "tool": "ringmq-loadgen",
            "version": env!("CARGO_PKG_VERSION"),
            "machine": report::Machine::detect(),
            "config": args.to_json(cores),
            "raw": {"mb_per_s": r.mb_per_s, "bytes": r.bytes, "connections": r.connections},
        });
        write_json(path, &doc)?;
    }
    Ok(true)
}

fn write_outputs(
    args: &Args,
    cores: &CoreList,
    first: &RunOutput,
    second: Option<&RunOutput>,
) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        let started = first.started_unix.as_secs();
        let report = |r: &RunOutput| {
            Report::new(
                args.to_json(cores),
                r.results.clone(),
                &r.intervals,
                started,
            )
        };
        let doc = match second {
            None => serde_json::to_value(report(first))?,
            Some(s) => serde_json::json!({
                "runs": [report(first), report(s)],
                "ratios": report::compare_json(&first.results, &s.results),
            }),
        };
        write_json(path, &doc)?;
    }
    if let Some(path) = &args.hdr_log {
        let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let runs: Vec<_> = std::iter::once(first)
            .chain(second)
            .map(|r| (r.started_unix, r.intervals.as_slice()))
            .collect();
        report::write_hdr_log(&mut f, &runs)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

fn write_json(path: &std::path::Path, doc: &serde_json::Value) -> anyhow::Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    serde_json::to_writer_pretty(&mut f, doc)?;
    writeln!(f)?;
    Ok(())
}

/// All cores; with an embedded broker (which pins itself to cores `0..broker_cores`), the
/// cores above the broker's, or all of them if none are left.
fn default_cores(online: usize, broker_cores: Option<usize>) -> CoreList {
    let first = broker_cores.filter(|&b| b < online).unwrap_or(0);
    CoreList((first..online).collect())
}
