//! The fetch-path bench in quick mode: every mechanism once on a 32 MiB file. Fails if a
//! mechanism delivers the wrong number of bytes or the wrong bytes (crc32c of the stream: a
//! fetch sent from the wrong offset, twice, or not at all), if the backlog case was not
//! actually out of the page cache (or the tail case not in it), or if SEND_ZC never delivers
//! its notifications.

use ringmq_benches::fetch_paths::{self, Case, Mechanism, Plan};

#[test]
fn every_fetch_path_delivers_exactly_the_file() {
    let plan = Plan::quick();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let report = fetch_paths::run(dir.path(), &plan).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", report.render());

    let per_size: usize = plan.mechanisms.iter().map(|m| m.cases().len()).sum();
    assert_eq!(report.rows.len(), per_size * plan.fetch_sizes.len());
    for row in &report.rows {
        let what = format!(
            "{} {} {}",
            row.mechanism.name(),
            row.case.name(),
            row.fetch_bytes
        );
        assert_eq!(row.samples.len(), plan.reps, "{what}");
        for s in &row.samples {
            assert_eq!(s.bytes_received, plan.file_bytes, "{what}: byte count");
            assert_eq!(s.received_crc, row.expected_crc, "{what}: content");
            assert!(s.received_crc.is_some(), "{what}: quick mode verifies");
            match row.case {
                // A dropped cache leaves at most a folio or two that were still referenced (one
                // 2 MiB folio = 6% of the quick file has been seen after sendfile); a
                // DONTNEED that did nothing leaves 100%.
                Case::Backlog => assert!(s.residency_before < 0.15, "{what}: not cold: {s:?}"),
                Case::Tail => assert!(s.residency_before > 0.95, "{what}: not warm: {s:?}"),
                Case::Memory => {}
            }
            if row.mechanism == Mechanism::SendZc {
                let zc = s.zc.expect("send-zc reports its notifications");
                assert!(zc.sends > 0, "{what}: {zc:?}");
                assert!(zc.notifs > 0 && zc.copied <= zc.notifs, "{what}: {zc:?}");
            }
        }
        assert!(row.mb_per_s() > 0.0, "{what}");
    }
    for fetch in &plan.fetch_sizes {
        assert!(report.baseline_mb_per_s(*fetch).is_some_and(|b| b > 0.0));
    }
}
