//! Coordinator CPU cost per request (in-memory log, so no I/O is measured). Ignored by default;
//! run: `cargo test -p ringmq-broker --lib group::tests::measure -- --ignored --nocapture`.

use super::*;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, TopicName};
use std::time::Instant;

const HEARTBEATS: u32 = 200_000;
const COMMITS: u32 = 20_000;
const PARTITIONS_PER_COMMIT: i32 = 10;

#[test]
#[ignore = "measurement; run by hand"]
fn measure_heartbeat_and_commit_cost() {
    run(|| async {
        let h = harness(config(100));
        let ids = stable_group(&h, "m", 3).await;
        let start = Instant::now();
        for i in 0..HEARTBEATS {
            assert_eq!(heartbeat(&h.coord, "m", &ids[(i % 3) as usize], 1), 0);
        }
        let hb_ns = start.elapsed().as_nanos() / u128::from(HEARTBEATS);
        let partitions: Vec<_> = (0..PARTITIONS_PER_COMMIT)
            .map(|p| OffsetCommitRequestPartition::default().with_partition_index(p))
            .collect();
        let topic = OffsetCommitRequestTopic::default()
            .with_name(TopicName(s("t")))
            .with_partitions(partitions);
        let req = OffsetCommitRequest::default()
            .with_group_id(GroupId(s("m")))
            .with_member_id(s(&ids[0]))
            .with_generation_id_or_member_epoch(1)
            .with_topics(vec![topic]);
        let start = Instant::now();
        for _ in 0..COMMITS {
            let r = h.coord.offset_commit(req.clone(), 9, &|_, _| true).await;
            assert_eq!(r.topics[0].partitions[0].error_code, 0);
        }
        let commit_ns = start.elapsed().as_nanos() / u128::from(COMMITS);
        println!(
            "heartbeat: {hb_ns} ns/request; offset commit of {PARTITIONS_PER_COMMIT} partitions: \
             {commit_ns} ns/request (batch build + in-memory append + apply)"
        );
    });
}
