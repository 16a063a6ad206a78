//! Compaction of the group log: what the snapshot keeps, replays of every log a crash can
//! leave, the gate against in-flight and new writes, the trigger.

use std::collections::BTreeMap;

use super::super::compact::{
    snapshot_batches, COMPACTION_CHECK_INTERVAL_MS, COMPACT_MIN_RECORDS, SNAPSHOT_BATCH_MAX_BYTES,
};
use super::super::{Clock, GroupState};
use super::offsets::{commit, commit_req, fetch};
use super::*;

const G: &str = "billing";

/// Every key → value the coordinator's durable view holds (what a snapshot would write).
type View = BTreeMap<Vec<u8>, Vec<u8>>;

fn view(c: &Coord) -> View {
    let inner = c.inner.borrow();
    let mut out = View::new();
    for (batch, _) in snapshot_batches(&inner, 0) {
        for r in ringmq_wire::records::records(&batch).expect("records") {
            let r = r.expect("record");
            // The no-op record of an empty snapshot is a tombstone; live keys have values.
            if let Some(value) = r.value {
                out.insert(r.key.expect("key").to_vec(), value.to_vec());
            }
        }
    }
    out
}

/// A fresh coordinator ("restart") that replayed `batches`, with `h`'s clock.
fn replayed(h: &Harness, batches: &[Bytes]) -> Harness {
    let mut fresh = harness(config(0));
    fresh.clock.advance_ms(h.clock.now_ms() - T0);
    let coord = Rc::get_mut(&mut fresh.coord).expect("sole owner");
    for batch in batches {
        coord.replay(batch).expect("replay");
    }
    fresh
}

fn log(h: &Harness) -> Vec<Bytes> {
    h.log.batches.borrow().clone()
}

/// A Stable group at generation 1 with offsets overwritten many times, one topic deleted
/// (tombstones), and a simple-commit group.
async fn busy_state(h: &Harness) -> Vec<String> {
    let ids = stable_group(h, G, 2).await;
    for round in 0..20 {
        let offsets = [("t", 0, round), ("t", 1, 100 + round), ("gone", 0, round)];
        assert_eq!(
            commit(&h.coord, commit_req(G, &ids[0], 1, &offsets), 8).await,
            vec![0, 0, 0]
        );
    }
    assert_eq!(
        commit(&h.coord, commit_req("solo", "", -1, &[("u", 2, 3)]), 8).await,
        vec![0]
    );
    h.coord.topic_deleted("gone").await;
    ids
}

/// What `busy_state` acknowledged, read through the request API.
fn assert_busy_state(c: &Coord) {
    assert_eq!(
        fetch(c, G, "t", &[0, 1]),
        vec![(19, 5, "meta".into()), (119, 5, "meta".into())]
    );
    assert_eq!(
        fetch(c, G, "gone", &[0])[0].0,
        -1,
        "tombstoned offset stays gone"
    );
    assert_eq!(fetch(c, "solo", "u", &[2])[0].0, 3);
    let inner = c.inner.borrow();
    let g = inner.groups.get(G).expect("group kept");
    assert_eq!(g.generation, 1, "generation kept");
    assert_eq!(g.protocol_type.as_deref(), Some("consumer"));
}

#[test]
fn compaction_keeps_live_keys_drops_tombstones_and_moves_the_start() {
    run(|| async {
        let h = harness(config(100));
        busy_state(&h).await;
        let old = log(&h);
        let before = view(&h.coord);
        assert_eq!(before.len(), 4, "group record, t/0, t/1, solo u/2");

        let done = h.coord.compact().await.expect("compacts").expect("ran");
        assert_eq!((done.records, done.batches), (4, 1));
        assert_eq!(
            done.log_start,
            old.len() as u64,
            "start = first snapshot batch"
        );
        assert_eq!(h.log.start.get(), done.log_start);
        assert_eq!(log(&h).len(), 1, "only the snapshot is left to replay");
        assert_eq!(view(&h.coord), before, "compaction changes no state");

        let snapshot_only = replayed(&h, &log(&h));
        assert_busy_state(&snapshot_only.coord);
        assert_eq!(view(&snapshot_only.coord), before);
        assert_eq!(snapshot_only.coord.group_state(G), Some(GroupState::Empty));

        let mut old_and_snapshot = old.clone();
        old_and_snapshot.extend(log(&h));
        let both = replayed(&h, &old_and_snapshot);
        assert_busy_state(&both.coord);
        assert_eq!(view(&both.coord), before);
    });
}

#[test]
fn every_crash_cut_inside_a_multi_batch_snapshot_replays_the_acknowledged_state() {
    run(|| async {
        let h = harness(config(0));
        let big = "m".repeat(4000);
        // 4 partitions x 300 topics of ~4 KiB records: several snapshot batches.
        for t in 0..300 {
            let topic = format!("t{t}");
            let parts: Vec<(&str, i32, i64)> = (0..4).map(|p| (topic.as_str(), p, 7)).collect();
            let mut req = commit_req("solo", "", -1, &parts);
            for p in &mut req.topics[0].partitions {
                p.committed_metadata = Some(s(&big));
            }
            assert_eq!(commit(&h.coord, req, 8).await, vec![0; 4]);
        }
        let old = log(&h);
        let acknowledged = view(&h.coord);
        let done = h.coord.compact().await.expect("compacts").expect("ran");
        let snapshot = log(&h);
        assert_eq!(done.records, 1200);
        assert!(done.batches >= 4, "{} batches", done.batches);
        assert_eq!(snapshot.len(), done.batches);
        assert!(snapshot.iter().all(|b| b.len() <= SNAPSHOT_BATCH_MAX_BYTES));
        for cut in 0..=snapshot.len() {
            let mut crashed = old.clone();
            crashed.extend(snapshot[..cut].iter().cloned());
            let r = replayed(&h, &crashed);
            assert_eq!(
                view(&r.coord),
                acknowledged,
                "old log + {cut} snapshot batches"
            );
        }
        let r = replayed(&h, &snapshot);
        assert_eq!(view(&r.coord), acknowledged, "snapshot only");
        assert_eq!(
            fetch(&r.coord, "solo", "t299", &[3])[0],
            (7, 5, big.clone())
        );
    });
}

/// The hazard the gate exists for: a commit whose batch is in the log but not yet acknowledged
/// (so not in memory) when compaction starts. Without the gate the snapshot captures the older
/// offset and lands after the commit: a replay would lose the acknowledged commit.
#[test]
fn a_commit_in_flight_is_never_overtaken_by_the_snapshot() {
    run(|| async {
        let h = harness(config(0));
        let first = commit_req("solo", "", -1, &[("t", 0, 1)]);
        assert_eq!(commit(&h.coord, first, 8).await, vec![0]);
        h.log.hold_after_push.set(1);
        let c = h.coord.clone();
        let second = glommio::spawn_local(async move {
            commit(&c, commit_req("solo", "", -1, &[("t", 0, 2)]), 8).await
        });
        let w = h.log.waiting.clone();
        until("second commit is in the log, unacknowledged", move || {
            w.get() == 1
        })
        .await;
        let c = h.coord.clone();
        let compaction = glommio::spawn_local(async move { c.compact().await });
        for _ in 0..100 {
            futures_lite::future::yield_now().await;
        }
        assert_eq!(log(&h).len(), 2, "no snapshot while a write is in flight");
        h.log.release.notify();
        assert_eq!(second.await, vec![0]);
        compaction.await.expect("compacts").expect("ran");
        assert_eq!(
            fetch(&replayed(&h, &log(&h)).coord, "solo", "t", &[0])[0].0,
            2
        );
    });
}

/// A commit issued while the snapshot is being written waits at the gate and lands after it.
#[test]
fn a_commit_issued_during_compaction_waits_and_lands_after_the_snapshot() {
    run(|| async {
        let h = harness(config(0));
        assert_eq!(
            commit(&h.coord, commit_req("solo", "", -1, &[("t", 0, 1)]), 8).await,
            vec![0]
        );
        h.log.hold_after_push.set(1);
        let c = h.coord.clone();
        let compaction = glommio::spawn_local(async move { c.compact().await });
        let w = h.log.waiting.clone();
        until("snapshot batch is written, not yet durable", move || {
            w.get() == 1
        })
        .await;
        let c = h.coord.clone();
        let during = glommio::spawn_local(async move {
            commit(&c, commit_req("solo", "", -1, &[("t", 0, 2)]), 8).await
        });
        for _ in 0..100 {
            futures_lite::future::yield_now().await;
        }
        assert_eq!(log(&h).len(), 2, "the commit waits at the gate");
        assert_eq!(fetch(&h.coord, "solo", "t", &[0])[0].0, 1);
        h.log.release.notify();
        let done = compaction.await.expect("compacts").expect("ran");
        assert_eq!(during.await, vec![0]);
        assert_eq!(done.log_start, 1);
        let after = log(&h);
        assert_eq!(after.len(), 2, "snapshot, then the commit");
        assert_eq!(
            fetch(&replayed(&h, &after).coord, "solo", "t", &[0])[0].0,
            2
        );
    });
}

#[test]
fn a_failed_snapshot_leaves_the_start_and_reopens_the_gate() {
    run(|| async {
        let h = harness(config(0));
        assert_eq!(
            commit(&h.coord, commit_req("solo", "", -1, &[("t", 0, 1)]), 8).await,
            vec![0]
        );
        h.log.fail.set(true);
        assert!(h.coord.compact().await.is_err());
        assert_eq!(h.log.start.get(), 0, "log start unchanged");
        h.log.fail.set(false);
        assert_eq!(
            commit(&h.coord, commit_req("solo", "", -1, &[("t", 0, 2)]), 8).await,
            vec![0],
            "the gate reopened"
        );
        assert!(h.coord.compact().await.expect("compacts").is_some());
        assert_eq!(
            fetch(&replayed(&h, &log(&h)).coord, "solo", "t", &[0])[0].0,
            2
        );
    });
}

#[test]
fn an_empty_state_compacts_to_a_no_op_record() {
    run(|| async {
        let h = harness(config(0));
        assert_eq!(
            commit(&h.coord, commit_req("solo", "", -1, &[("t", 0, 1)]), 8).await,
            vec![0]
        );
        h.coord.topic_deleted("t").await;
        let done = h.coord.compact().await.expect("compacts").expect("ran");
        assert_eq!((done.records, done.log_start), (1, 2));
        let r = replayed(&h, &log(&h));
        assert!(view(&r.coord).is_empty());
        assert_eq!(r.coord.group_count(), 0);
    });
}

/// The timer driver compacts once enough records were appended since the last snapshot, and
/// not before.
#[test]
fn the_driver_compacts_past_the_threshold() {
    run(|| async {
        let h = harness(config(0));
        h.coord.start();
        for i in 0..COMPACT_MIN_RECORDS - 1 {
            let req = commit_req("solo", "", -1, &[("t", (i % 4) as i32, i as i64)]);
            assert_eq!(commit(&h.coord, req, 8).await, vec![0]);
        }
        for _ in 0..100 {
            futures_lite::future::yield_now().await;
        }
        assert_eq!(h.log.start.get(), 0, "below the threshold nothing happens");
        let req = commit_req("solo", "", -1, &[("t", 0, -5)]);
        assert_eq!(commit(&h.coord, req, 8).await, vec![0]);
        let start = h.log.start.clone();
        until("driver compacted", move || start.get() > 0).await;
        assert_eq!(h.log.start.get(), COMPACT_MIN_RECORDS);
        let r = replayed(&h, &log(&h));
        assert_eq!(fetch(&r.coord, "solo", "t", &[0])[0].0, -5);
        assert_eq!(view(&r.coord), view(&h.coord));
    });
}

/// The retention trigger: a log start holding back more than `compact_retained_bytes` of the
/// shared log is compacted at the next check, however few records the log has; and a state
/// larger than that limit does not compact at every check.
#[test]
fn a_start_holding_back_retention_is_compacted_at_the_next_check() {
    run(|| async {
        let h = harness(config(0));
        assert_eq!(
            commit(&h.coord, commit_req("solo", "", -1, &[("t", 0, 1)]), 8).await,
            vec![0]
        );
        let limit = h.coord.config().compact_retained_bytes;
        h.log.retained.set(limit + 1);
        assert!(!h.coord.compaction_due(), "not before the check interval");
        h.clock.advance_ms(COMPACTION_CHECK_INTERVAL_MS);
        assert!(h.coord.compaction_due());
        assert!(!h.coord.compaction_due(), "one look per interval");
        h.clock.advance_ms(COMPACTION_CHECK_INTERVAL_MS);
        h.log.retained.set(limit);
        assert!(
            !h.coord.compaction_due(),
            "at the limit nothing is held back yet"
        );

        // A snapshot larger than half the limit raises it.
        h.coord.compact().await.expect("compacts").expect("ran");
        h.coord.inner.borrow_mut().compaction.last_snapshot_bytes = limit;
        h.clock.advance_ms(COMPACTION_CHECK_INTERVAL_MS);
        h.log.retained.set(limit + 1);
        assert!(
            !h.coord.compaction_due(),
            "limit is twice the last snapshot"
        );
        h.clock.advance_ms(COMPACTION_CHECK_INTERVAL_MS);
        h.log.retained.set(2 * limit + 1);
        assert!(h.coord.compaction_due());
    });
}
