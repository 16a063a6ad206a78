//! The load generator against the REAL `ringmq` binary: records sent = acknowledged =
//! consumed. Builds the broker first (`cargo build -p ringmq-broker --bin ringmq`).
//!
//! A broker that cannot be built or never prints its listening line fails the test. The same
//! workload also runs against the in-test fake broker, so a failure says which side broke.

mod support;

use std::path::PathBuf;
use std::process::Command;

use ringmq_loadgen::embedded::EmbeddedBroker;
use support::fake_broker::{FakeBroker, Faults};
use support::{assert_counts_add_up, loadgen};

const WORKLOAD: &[&str] = &[
    "--topic",
    "loadgen-it",
    "--create-topic",
    "--partitions",
    "2",
    "--producers",
    "2",
    "--consumers",
    "2",
    "--rate",
    "2000",
    "--warmup",
    "200ms",
    "--duration",
    "1s",
    "--drain-timeout",
    "10s",
];

/// Builds the broker; `Err` says why it could not be built.
fn build_broker() -> Result<PathBuf, String> {
    let out = Command::new(env!("CARGO"))
        .args(["build", "-p", "ringmq-broker", "--bin", "ringmq"])
        .output()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        return Err(format!(
            "cargo build -p ringmq-broker failed:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    // This test runs from target/<profile>/deps; the binary sits in target/<profile>.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .ok_or("no target dir")?;
    let bin = profile_dir.join("ringmq");
    bin.is_file()
        .then_some(bin.clone())
        .ok_or_else(|| format!("{} not found after building", bin.display()))
}

#[test]
fn counts_add_up_against_the_real_broker() {
    // The fake broker half: always runs.
    let fake = FakeBroker::start(Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--bootstrap", fake.addr.as_str(), "--cores", "0"];
    args.extend_from_slice(WORKLOAD);
    let (out, report) = loadgen(dir.path(), &args);
    let sent = assert_counts_add_up(&out, &report);
    assert_eq!(fake.records("loadgen-it"), sent);

    // The real broker half, through --embedded (which also tests starting and stopping it).
    let bin = build_broker().unwrap_or_else(|why| panic!("cannot build the broker: {why}"));
    let probe = EmbeddedBroker::start(Some(&bin), 1)
        .unwrap_or_else(|e| panic!("the broker does not serve: {e:#}"));
    drop(probe);
    let bin_s = bin.to_str().unwrap().to_owned();
    // The broker pins itself to core 0; loadgen takes core 1 where there is one.
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let loadgen_core = if online > 1 { "1" } else { "0" };
    let mut args = vec![
        "--embedded",
        "--broker-bin",
        bin_s.as_str(),
        "--broker-cores",
        "1",
        "--cores",
        loadgen_core,
    ];
    args.extend_from_slice(WORKLOAD);
    let (out, report) = loadgen(dir.path(), &args);
    assert_counts_add_up(&out, &report);
}
