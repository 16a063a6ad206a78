//! Commits, fetches, durability, replay, tombstones, retention, deletion.

use super::super::GroupState;
use super::*;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::{
    DeleteGroupsRequest, OffsetCommitRequest, OffsetFetchRequest, TopicName,
};

const G: &str = "billing";

fn exists(topic: &str, partition: i32) -> bool {
    topic != "missing" && (0..4).contains(&partition)
}

pub(super) fn commit_req(
    group: &str,
    member: &str,
    generation: i32,
    offsets: &[(&str, i32, i64)],
) -> OffsetCommitRequest {
    let mut topics: Vec<OffsetCommitRequestTopic> = Vec::new();
    for (t, p, o) in offsets {
        let part = OffsetCommitRequestPartition::default()
            .with_partition_index(*p)
            .with_committed_offset(*o)
            .with_committed_leader_epoch(5)
            .with_committed_metadata(Some(s("meta")));
        match topics.iter_mut().find(|x| x.name.as_str() == *t) {
            Some(topic) => topic.partitions.push(part),
            None => topics.push(
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(s(t)))
                    .with_partitions(vec![part]),
            ),
        }
    }
    OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_member_id(s(member))
        .with_generation_id_or_member_epoch(generation)
        .with_topics(topics)
}

pub(super) async fn commit(c: &Coord, req: OffsetCommitRequest, version: i16) -> Vec<i16> {
    let resp = c.offset_commit(req, version, &exists).await;
    resp.topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
        .collect()
}

/// OffsetFetch v7 of one topic's partitions: (offset, leader epoch, metadata) per partition.
pub(super) fn fetch(
    c: &Coord,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Vec<(i64, i32, String)> {
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(TopicName(s(topic)))
            .with_partition_indexes(partitions.to_vec())]));
    let resp = c.offset_fetch(req, 7);
    assert_eq!(resp.error_code, 0);
    resp.topics[0]
        .partitions
        .iter()
        .map(|p| {
            (
                p.committed_offset,
                p.committed_leader_epoch,
                p.metadata.as_deref().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[test]
fn simple_commit_then_fetch_in_both_request_forms() {
    run(|| async {
        let h = harness(config(0));
        let codes = commit(
            &h.coord,
            commit_req(G, "", -1, &[("t", 0, 10), ("t", 1, 20), ("u", 3, 7)]),
            8,
        )
        .await;
        assert_eq!(codes, vec![0, 0, 0]);
        assert_eq!(h.log.batches.borrow().len(), 1, "one batch per commit");
        assert_eq!(
            fetch(&h.coord, G, "t", &[0, 1, 2]),
            vec![
                (10, 5, "meta".into()),
                (20, 5, "meta".into()),
                (-1, -1, String::new())
            ]
        );
        // v8+: several groups in one request; topics None = everything committed.
        let req = OffsetFetchRequest::default().with_groups(vec![
            OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(s(G)))
                .with_topics(None),
            OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(s("other")))
                .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                    .with_name(TopicName(s("t")))
                    .with_partition_indexes(vec![0])])),
        ]);
        let resp = h.coord.offset_fetch(req, 8);
        let all: Vec<(String, i32, i64)> = resp.groups[0]
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |p| (t.name.to_string(), p.partition_index, p.committed_offset))
            })
            .collect();
        assert_eq!(
            all,
            vec![("t".into(), 0, 10), ("t".into(), 1, 20), ("u".into(), 3, 7)]
        );
        assert_eq!(resp.groups[1].topics[0].partitions[0].committed_offset, -1);
        // Later commits replace earlier ones.
        assert_eq!(
            commit(&h.coord, commit_req(G, "", -1, &[("t", 0, 11)]), 8).await,
            vec![0]
        );
        assert_eq!(fetch(&h.coord, G, "t", &[0])[0].0, 11);
    });
}

#[test]
fn per_partition_errors() {
    run(|| async {
        let h = harness(config(0));
        let mut req = commit_req(G, "", -1, &[("missing", 0, 1), ("t", 9, 1), ("t", 0, 1)]);
        req.topics[1].partitions[1].committed_metadata = Some(StrBytes::from_string(
            "x".repeat(super::super::MAX_OFFSET_METADATA_BYTES + 1),
        ));
        assert_eq!(commit(&h.coord, req, 8).await, vec![3, 3, 12]);
        assert!(
            h.log.batches.borrow().is_empty(),
            "nothing valid, nothing written"
        );
        assert_eq!(
            commit(&h.coord, commit_req("", "", -1, &[("t", 0, 1)]), 8).await,
            vec![24]
        );
        // A topic name longer than any real topic is refused even if the broker would say yes.
        let long = "t".repeat(super::super::MAX_TOPIC_NAME_BYTES + 1);
        let resp = h
            .coord
            .offset_commit(commit_req(G, "", -1, &[(&long, 0, 1)]), 8, &|_, _| true)
            .await;
        assert_eq!(resp.topics[0].partitions[0].error_code, 3);
    });
}

#[test]
fn member_commits_are_checked_against_the_generation() {
    run(|| async {
        let h = harness(config(100));
        let ids = stable_group(&h, G, 2).await;
        assert_eq!(
            commit(&h.coord, commit_req(G, &ids[0], 1, &[("t", 0, 5)]), 8).await,
            vec![0]
        );
        assert_eq!(
            commit(&h.coord, commit_req(G, &ids[0], 2, &[("t", 0, 6)]), 8).await,
            vec![22]
        );
        assert_eq!(
            commit(&h.coord, commit_req(G, "ghost", 1, &[("t", 0, 6)]), 8).await,
            vec![25]
        );
        // No member id, no generation: refused while members manage the group.
        assert_eq!(
            commit(&h.coord, commit_req(G, "", -1, &[("t", 0, 6)]), 8).await,
            vec![25]
        );
        // Unknown group with a generation: ILLEGAL_GENERATION before v9, GROUP_ID_NOT_FOUND after.
        assert_eq!(
            commit(&h.coord, commit_req("nope", "m", 1, &[("t", 0, 6)]), 8).await,
            vec![22]
        );
        assert_eq!(
            commit(&h.coord, commit_req("nope", "m", 1, &[("t", 0, 6)]), 9).await,
            vec![69]
        );
        assert_eq!(fetch(&h.coord, G, "t", &[0])[0].0, 5);
        // During the sync phase of a new generation a commit must wait for the rebalance.
        let (_d, _td) = join_new(&h.coord, G).await;
        let tasks: Vec<_> = ids
            .iter()
            .map(|id| spawn_join(&h.coord, join_req(G, id, RANGE)))
            .collect();
        for t in tasks {
            assert_eq!(t.await.generation_id, 2);
        }
        assert_eq!(
            h.coord.group_state(G),
            Some(GroupState::CompletingRebalance)
        );
        assert_eq!(
            commit(&h.coord, commit_req(G, &ids[0], 2, &[("t", 0, 6)]), 8).await,
            vec![27]
        );
    });
}

#[test]
fn a_commit_is_acknowledged_only_once_durable() {
    run(|| async {
        let h = harness(config(0));
        h.log.held.set(true);
        let c = h.coord.clone();
        let pending = glommio::spawn_local(async move {
            commit(&c, commit_req(G, "", -1, &[("t", 0, 42)]), 8).await
        });
        let waiting = h.log.waiting.clone();
        until("append in flight", move || waiting.get() == 1).await;
        assert_eq!(
            fetch(&h.coord, G, "t", &[0])[0].0,
            -1,
            "not visible before durable"
        );
        h.log.held.set(false);
        h.log.release.notify();
        assert_eq!(pending.await, vec![0]);
        assert_eq!(fetch(&h.coord, G, "t", &[0])[0].0, 42);
    });
}

#[test]
fn a_failed_append_fails_the_commit_and_changes_nothing() {
    run(|| async {
        let h = harness(config(0));
        assert_eq!(
            commit(&h.coord, commit_req(G, "", -1, &[("t", 0, 1)]), 8).await,
            vec![0]
        );
        h.log.fail.set(true);
        assert_eq!(
            commit(
                &h.coord,
                commit_req(G, "", -1, &[("t", 0, 2), ("missing", 0, 2)]),
                8
            )
            .await,
            vec![15, 3]
        );
        assert_eq!(fetch(&h.coord, G, "t", &[0])[0].0, 1);
    });
}

/// A fresh coordinator that replays every batch `h`'s log captured ("restart").
fn restarted(h: &Harness) -> Harness {
    let mut fresh = harness(config(0));
    fresh.clock.advance_ms(h.clock.now_ms() - T0);
    let coord = Rc::get_mut(&mut fresh.coord).expect("sole owner");
    for batch in h.log.batches.borrow().iter() {
        coord.replay(batch).expect("replay");
    }
    fresh
}

use super::super::Clock;

#[test]
fn replay_after_restart_restores_offsets_and_generation() {
    run(|| async {
        let h = harness(config(100));
        let ids = stable_group(&h, G, 2).await;
        assert_eq!(
            commit(
                &h.coord,
                commit_req(G, &ids[0], 1, &[("t", 0, 5), ("t", 1, 6)]),
                8
            )
            .await,
            vec![0, 0]
        );
        assert_eq!(
            commit(&h.coord, commit_req(G, &ids[1], 1, &[("t", 1, 9)]), 8).await,
            vec![0]
        );
        assert_eq!(
            commit(&h.coord, commit_req("solo", "", -1, &[("u", 2, 3)]), 8).await,
            vec![0]
        );
        let r = restarted(&h);
        assert_eq!(
            fetch(&r.coord, G, "t", &[0, 1]),
            vec![(5, 5, "meta".into()), (9, 5, "meta".into())]
        );
        assert_eq!(fetch(&r.coord, "solo", "u", &[2])[0].0, 3);
        assert_eq!(r.coord.group_state(G), Some(GroupState::Empty));
        // Old members are unknown after the restart; a commit at the old generation fails.
        assert_eq!(heartbeat(&r.coord, G, &ids[0], 1), 25);
        assert_eq!(
            commit(&r.coord, commit_req(G, &ids[0], 1, &[("t", 0, 1)]), 8).await,
            vec![25]
        );
        // The stored generation continues.
        let (_a, ta) = join_new(&r.coord, G).await;
        assert_eq!(ta.await.generation_id, 2);
    });
}

#[test]
fn tombstones_delete_on_replay_too() {
    run(|| async {
        let h = harness(config(0));
        commit(
            &h.coord,
            commit_req(G, "", -1, &[("t", 0, 5), ("u", 0, 6)]),
            8,
        )
        .await;
        commit(&h.coord, commit_req("g2", "", -1, &[("t", 1, 7)]), 8).await;
        h.coord.topic_deleted("t").await;
        assert_eq!(fetch(&h.coord, G, "t", &[0])[0].0, -1);
        assert_eq!(fetch(&h.coord, "g2", "t", &[1])[0].0, -1);
        assert_eq!(fetch(&h.coord, G, "u", &[0])[0].0, 6);
        let r = restarted(&h);
        assert_eq!(
            fetch(&r.coord, G, "t", &[0])[0].0,
            -1,
            "tombstone wins on replay"
        );
        assert_eq!(fetch(&r.coord, G, "u", &[0])[0].0, 6);
        // A commit after the tombstone wins again.
        commit(&r.coord, commit_req(G, "", -1, &[("t", 0, 8)]), 8).await;
        assert_eq!(fetch(&r.coord, G, "t", &[0])[0].0, 8);
    });
}

#[test]
fn delete_groups_needs_an_empty_group() {
    run(|| async {
        let h = harness(config(100));
        let _ids = stable_group(&h, G, 1).await;
        commit(&h.coord, commit_req("idle", "", -1, &[("t", 0, 5)]), 8).await;
        let req = DeleteGroupsRequest::default().with_groups_names(vec![
            GroupId(s(G)),
            GroupId(s("idle")),
            GroupId(s("never")),
        ]);
        let codes: Vec<i16> = h
            .coord
            .delete_groups(req, 2)
            .await
            .results
            .iter()
            .map(|r| r.error_code)
            .collect();
        assert_eq!(codes, vec![68, 0, 69]);
        assert_eq!(h.coord.group_state("idle"), None);
        let r = restarted(&h);
        assert_eq!(
            r.coord.group_state("idle"),
            None,
            "deleted group stays deleted"
        );
        assert_eq!(fetch(&r.coord, "idle", "t", &[0])[0].0, -1);
    });
}

#[test]
fn retention_expires_offsets_of_empty_groups_only() {
    run(|| async {
        let h = harness(config(100));
        let ids = stable_group(&h, G, 1).await;
        commit(&h.coord, commit_req(G, &ids[0], 1, &[("t", 0, 5)]), 8).await;
        commit(&h.coord, commit_req("simple", "", -1, &[("t", 0, 5)]), 8).await;
        let mut v2 = commit_req("short", "", -1, &[("t", 0, 5)]);
        v2.retention_time_ms = 1000;
        commit(&h.coord, v2, 2).await;
        h.clock.advance_ms(1000);
        h.coord.expire_offsets().await;
        assert_eq!(
            fetch(&h.coord, "short", "t", &[0])[0].0,
            -1,
            "own retention passed"
        );
        assert_eq!(
            h.coord.group_state("short"),
            None,
            "empty group without offsets removed"
        );
        // Keep the member alive across the retention period.
        for _ in 0..(super::super::OFFSETS_RETENTION_MS / 5000) {
            h.clock.advance_ms(5000);
            assert_eq!(heartbeat(&h.coord, G, &ids[0], 1), 0);
        }
        h.coord.expire_offsets().await;
        assert_eq!(
            fetch(&h.coord, "simple", "t", &[0])[0].0,
            -1,
            "simple commit expired"
        );
        assert_eq!(
            fetch(&h.coord, G, "t", &[0])[0].0,
            5,
            "live group keeps its offsets"
        );
        assert_eq!(leave(&h.coord, G, &[&ids[0]]).await, vec![0]);
        h.clock.advance_ms(super::super::OFFSETS_RETENTION_MS);
        h.coord.expire_offsets().await;
        assert_eq!(fetch(&h.coord, G, "t", &[0])[0].0, -1);
        let r = restarted(&h);
        assert_eq!(fetch(&r.coord, G, "t", &[0])[0].0, -1, "expiry is durable");
    });
}

#[test]
fn replay_refuses_damaged_or_unknown_records() {
    run(|| async {
        let h = harness(config(0));
        commit(&h.coord, commit_req(G, "", -1, &[("t", 0, 5)]), 8).await;
        let good = h.log.batches.borrow()[0].to_vec();
        let mut fresh = harness(config(0));
        let coord = Rc::get_mut(&mut fresh.coord).expect("sole owner");
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(coord.replay(&flipped).is_err(), "CRC mismatch refused");
        assert!(
            coord.replay(&good[..good.len() - 1]).is_err(),
            "truncated batch refused"
        );
        // A record this build does not understand (key type 9) is an error, not skipped.
        let unknown = super::super::codec::build_batch(&[(vec![9, 0], None)], 0);
        assert!(coord.replay(&unknown).is_err());
        coord.replay(&good).expect("the intact batch replays");
        assert_eq!(fetch(&fresh.coord, G, "t", &[0])[0].0, 5);
    });
}

#[test]
fn commit_answers_encode_at_every_version() {
    use kafka_protocol::protocol::Encodable;
    run(|| async {
        let h = harness(config(0));
        for v in 2..=9 {
            let resp = h
                .coord
                .offset_commit(commit_req(G, "", -1, &[("t", 0, v as i64)]), v, &exists)
                .await;
            assert_eq!(resp.topics[0].partitions[0].error_code, 0, "v{v}");
            resp.encode(&mut bytes::BytesMut::new(), v).unwrap();
        }
        assert_eq!(fetch(&h.coord, G, "t", &[0])[0].0, 9);
    });
}
