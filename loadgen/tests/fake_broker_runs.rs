//! The load generator end to end against an in-memory fake broker: the counts add up, a
//! stalled broker shows as latency, broker errors fail the run, bad input is explained.

mod support;

use support::fake_broker::{FakeBroker, Faults};
use support::{assert_counts_add_up, describe, loadgen};

const QUICK: &[&str] = &[
    "--cores",
    "0",
    "--warmup",
    "200ms",
    "--duration",
    "1s",
    "--drain-timeout",
    "5s",
];

fn args<'a>(broker: &'a FakeBroker, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--bootstrap",
        broker.addr.as_str(),
        "--topic",
        "t",
        "--create-topic",
    ];
    v.extend_from_slice(extra);
    for pair in QUICK.chunks(2) {
        if !extra.contains(&pair[0]) {
            v.extend_from_slice(pair);
        }
    }
    v
}

#[test]
fn sent_equals_acknowledged_equals_consumed() {
    // Catches: records lost or double counted between producer, acknowledgement and fetch
    // (offset bookkeeping, partial batches, consumers stopping before the log end).
    let broker = FakeBroker::start(Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let (out, report) = loadgen(
        dir.path(),
        &args(
            &broker,
            &[
                "--partitions",
                "3",
                "--producers",
                "2",
                "--consumers",
                "2",
                "--keys",
                "random",
                "--rate",
                "3000",
                "--record-size",
                "uniform:20..300",
            ],
        ),
    );
    let sent = assert_counts_add_up(&out, &report);
    assert_eq!(broker.records("t"), sent, "broker stored a different count");
    // 3000 records/s for 1.2 s in all; the measured second alone about 3000.
    let produced = report["results"]["produce"]["records"].as_u64().unwrap();
    assert!(
        (2400..=3600).contains(&produced),
        "measured {produced}\n{}",
        describe(&out)
    );
    assert!(
        report["results"]["end_to_end"]["latency"]["samples"]
            .as_u64()
            .unwrap()
            > 2000
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("produce") && table.contains("end-to-end") && table.contains("errors: none"),
        "{table}"
    );
}

#[test]
fn compressed_acks_all_closed_loop_counts_add_up() {
    // Catches: compressed batches miscounted by the consumer; closed loop losing records.
    let broker = FakeBroker::start(Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let (out, report) = loadgen(
        dir.path(),
        &args(
            &broker,
            &[
                "--compression",
                "zstd",
                "--acks",
                "all",
                "--rate",
                "max",
                "--max-in-flight",
                "2",
                "--duration",
                "500ms",
            ],
        ),
    );
    assert_counts_add_up(&out, &report);
    assert_eq!(report["config"]["compression"], "zstd");
    // Closed loop runs flat out: far more than a handful of batches in half a second.
    let produced = report["results"]["produce"]["records"].as_u64().unwrap();
    assert!(
        produced > 2_000,
        "closed loop produced only {produced}\n{}",
        describe(&out)
    );
}

/// One loadgen run (no warm-up, one request in flight, `extra` arguments) against a fake broker
/// that sits on the first produce request for 400 ms.
fn run_with_first_produce_stalled(
    extra: &[&str],
) -> (FakeBroker, std::process::Output, serde_json::Value) {
    let broker = FakeBroker::start(Faults {
        stall_first_produce: std::time::Duration::from_millis(400),
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec!["--warmup", "0s", "--max-in-flight", "1"];
    all.extend_from_slice(extra);
    let (out, report) = loadgen(dir.path(), &args(&broker, &all));
    (broker, out, report)
}

#[test]
fn a_stalled_broker_shows_as_latency_not_as_a_lower_rate() {
    // The broker sits on the first produce request for 400 ms. Records due meanwhile must be
    // sent late and measured from their intended times: about a quarter of the records then
    // carry 0-400 ms of latency, so p90 lands far above the few-ms latency of a healthy
    // broker. A tool measuring from the actual send (coordinated omission) reports a low p90.
    let (_broker, out, report) = run_with_first_produce_stalled(&[
        "--consumers",
        "0",
        "--rate",
        "1000",
        "--duration",
        "1500ms",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let p = &report["results"]["produce"];
    let sent = p["records"].as_u64().unwrap();
    assert!(
        (1400..=1600).contains(&sent),
        "the rate must not drop: {sent}\n{}",
        describe(&out)
    );
    let p90 = p["latency"]["p90_us"].as_u64().unwrap();
    let max = p["latency"]["max_us"].as_u64().unwrap();
    assert!(
        p90 >= 150_000,
        "p90 {p90} us hides the stall\n{}",
        describe(&out)
    );
    assert!(max >= 380_000, "max {max} us\n{}", describe(&out));
}

#[test]
fn records_queued_behind_a_full_window_leave_together() {
    // The broker sits on the first produce request for 400 ms with one request in flight;
    // ~800 records (~55 full batches over 8 partitions) queue meanwhile. When the slot frees,
    // the next request must carry a batch of every partition that has one, as Kafka's producer
    // drains its accumulator; one batch per request behind each other (what loadgen did before)
    // made a backlog after any stall outlast it many times. The stall still shows as latency.
    let (broker, out, report) = run_with_first_produce_stalled(&[
        "--partitions",
        "8",
        "--rate",
        "2000",
        "--duration",
        "1s",
    ]);
    assert_counts_add_up(&out, &report);
    let widest = broker.widest_produce_request();
    assert!(
        widest >= 6,
        "widest produce request had {widest} batches\n{}",
        describe(&out)
    );
    let p90 = report["results"]["produce"]["latency"]["p90_us"]
        .as_u64()
        .unwrap();
    assert!(p90 >= 100_000, "p90 {p90} us hides the stall");
}

#[test]
fn broker_errors_are_counted_and_fail_the_run() {
    // Catches: error codes in produce responses ignored (counted as acknowledged).
    let broker = FakeBroker::start(Faults {
        fail_partition: Some((0, 6)),
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let (out, report) = loadgen(
        dir.path(),
        &args(
            &broker,
            &["--consumers", "0", "--rate", "500", "--duration", "300ms"],
        ),
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let errors = &report["results"]["errors"];
    assert!(
        errors["NotLeaderOrFollower"].as_u64().unwrap_or(0) > 0,
        "{errors}\n{}",
        describe(&out)
    );
    assert_eq!(report["results"]["ok"], false);
    assert_eq!(report["results"]["counts"]["acknowledged"], 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("RUN FAILED"));
}

#[test]
fn a_missing_topic_and_bad_flags_get_clear_messages() {
    let broker = FakeBroker::start(Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = loadgen(
        dir.path(),
        &[
            "--bootstrap",
            &broker.addr,
            "--topic",
            "nope",
            "--cores",
            "0",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--create-topic"),
        "{}",
        describe(&out)
    );
    let (out, _) = loadgen(dir.path(), &["--rate", "banana"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--rate"),
        "{}",
        describe(&out)
    );
    let (out, _) = loadgen(
        dir.path(),
        &[
            "--bootstrap",
            "127.0.0.1:1",
            "--cores",
            "0",
            "--request-timeout",
            "2s",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[test]
fn compare_runs_both_and_writes_ratios_and_an_hdr_log() {
    let (a, b) = (
        FakeBroker::start(Faults::default()),
        FakeBroker::start(Faults::default()),
    );
    let dir = tempfile::tempdir().unwrap();
    let hdr = dir.path().join("run.hdr");
    let hdr_s = hdr.to_str().unwrap();
    let (out, report) = loadgen(
        dir.path(),
        &args(
            &a,
            &[
                "--compare",
                &b.addr,
                "--rate",
                "1000",
                "--duration",
                "500ms",
                "--hdr-log",
                hdr_s,
            ],
        ),
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(report["runs"].as_array().map(Vec::len), Some(2), "{report}");
    assert!(report["ratios"]["produce"]["mb_per_s"].is_f64(), "{report}");
    assert_eq!(
        a.records("t"),
        report["runs"][0]["results"]["counts"]["sent"]
            .as_u64()
            .unwrap()
    );
    assert_eq!(
        b.records("t"),
        report["runs"][1]["results"]["counts"]["sent"]
            .as_u64()
            .unwrap()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ratios"));
    let log = std::fs::read_to_string(&hdr).unwrap();
    assert!(log.contains("produce") && log.contains("e2e"), "{log}");
}

#[test]
fn a_consumer_group_shares_the_partitions_and_reads_everything() {
    // Catches: a member reading partitions it was not assigned (double counting), or an
    // assignment that leaves partitions unread (consumed < sent).
    let broker = FakeBroker::start(Faults {
        group_size: 2,
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let (out, report) = loadgen(
        dir.path(),
        &args(
            &broker,
            &[
                "--partitions",
                "3",
                "--consumers",
                "2",
                "--group",
                "g",
                "--rate",
                "1000",
            ],
        ),
    );
    assert_counts_add_up(&out, &report);
    assert_eq!(report["config"]["group"], "g");
}

#[test]
fn consumers_alone_catch_up_on_a_backlog_from_earliest() {
    // Catches: --from earliest ignored (a consumer-only run starting at the log end reads 0).
    let broker = FakeBroker::start(Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let fill = [
        "--consumers",
        "0",
        "--rate",
        "2000",
        "--warmup",
        "0s",
        "--duration",
        "500ms",
    ];
    let (out, report) = loadgen(dir.path(), &args(&broker, &fill));
    assert!(out.status.success(), "{}", describe(&out));
    let backlog = report["results"]["counts"]["acknowledged"]
        .as_u64()
        .unwrap();
    assert!(backlog > 500, "{}", describe(&out));
    let read = [
        "--producers",
        "0",
        "--consumers",
        "2",
        "--partitions",
        "1",
        "--from",
        "earliest",
        "--warmup",
        "0s",
    ];
    let (out, report) = loadgen(dir.path(), &args(&broker, &read));
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        report["results"]["counts"]["consumed"],
        backlog,
        "{}",
        describe(&out)
    );
    assert_eq!(
        report["results"]["consume"]["records"],
        backlog,
        "{}",
        describe(&out)
    );
    assert!(report["results"]["produce"].is_null());
}

#[test]
fn a_broker_that_goes_away_fails_the_run_and_the_run_still_ends() {
    // Catches: disconnects not counted, or producers/consumers retrying forever against a
    // dead broker (the test would hang).
    let broker = FakeBroker::start(Faults {
        die_after_produce_requests: Some(20),
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let (out, report) = loadgen(
        dir.path(),
        &args(
            &broker,
            &[
                "--rate",
                "1000",
                "--warmup",
                "0s",
                "--drain-timeout",
                "2s",
                "--request-timeout",
                "2s",
            ],
        ),
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let errors = &report["results"]["errors"];
    assert!(
        errors["disconnect"].as_u64().unwrap_or(0) > 0,
        "{errors}\n{}",
        describe(&out)
    );
    assert!(report["results"]["counts"]["failed"].as_u64().unwrap() > 0);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn until_end_reads_the_whole_backlog_then_stops() {
    // Catches: a catch-up run that stops at its time limit instead of at the log end (the
    // limit here is 60 s, the backlog takes well under a second), one that misses records of
    // the backlog, or a consume rate computed over the time limit instead of the catch-up.
    let broker = FakeBroker::start(Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let fill = [
        "--partitions",
        "3",
        "--producers",
        "1",
        "--consumers",
        "0",
        "--rate",
        "5000",
    ];
    let (out, report) = loadgen(dir.path(), &args(&broker, &fill));
    assert!(out.status.success(), "{}", describe(&out));
    let stored = broker.records("t");
    assert!(stored > 4000, "stored {stored}\n{}", describe(&out));
    let started = std::time::Instant::now();
    let read = [
        "--producers",
        "0",
        "--consumers",
        "2",
        "--from",
        "earliest",
        "--until-end",
        "--warmup",
        "0s",
        "--duration",
        "60s",
    ];
    let (out, report2) = loadgen(dir.path(), &args(&broker, &read));
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "did not stop at the log end\n{}",
        describe(&out)
    );
    let consume = &report2["results"]["consume"];
    assert_eq!(consume["records"], stored, "{}", describe(&out));
    assert!(
        report2["results"]["measured_s"].as_f64().unwrap() < 30.0,
        "rate over the time limit: {report2}"
    );
    let _ = report;
    // A producing run cannot use it.
    let (out, _) = loadgen(
        dir.path(),
        &args(&broker, &["--until-end", "--producers", "1"]),
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}
