//! Helpers shared by the integration tests.

#![allow(dead_code)] // each test file uses a different subset

pub mod fake_broker;

use std::path::Path;
use std::process::{Command, Output};

/// Runs the loadgen binary with `args` plus `--json <dir>/report.json --quiet`; returns the
/// process output and the parsed report (Null if none was written).
pub fn loadgen(dir: &Path, args: &[&str]) -> (Output, serde_json::Value) {
    let json = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_ringmq-loadgen"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--quiet")
        .output()
        .expect("run ringmq-loadgen");
    let report = std::fs::read(&json)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    (out, report)
}

/// The output of a run, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Checks sent = acknowledged = consumed, nothing failed, no errors, and returns that count.
pub fn assert_counts_add_up(out: &Output, report: &serde_json::Value) -> u64 {
    let c = &report["results"]["counts"];
    let sent = c["sent"]
        .as_u64()
        .unwrap_or_else(|| panic!("no counts in report\n{}", describe(out)));
    assert!(sent > 0, "nothing sent\n{}", describe(out));
    assert_eq!(
        c["acknowledged"],
        sent,
        "acknowledged != sent\n{}",
        describe(out)
    );
    assert_eq!(c["consumed"], sent, "consumed != sent\n{}", describe(out));
    assert_eq!(c["failed"], 0, "{}", describe(out));
    assert_eq!(
        report["results"]["errors"],
        serde_json::json!({}),
        "{}",
        describe(out)
    );
    assert_eq!(report["results"]["ok"], true, "{}", describe(out));
    assert!(out.status.success(), "{}", describe(out));
    sent
}
