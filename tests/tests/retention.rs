//! Retention against the real binary: a core whose commit log outgrows `--retention-bytes`
//! deletes its oldest segments (the partitions' earliest offsets move up), while the broker's
//! own state kept in the same log — the topics, the committed group offsets — was written in
//! those segments and survives both the retention (compacted forward) and a kill -9.

use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::BaseRecord;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use ringmq_system_tests::{
    block_on, flush, send, wait_until, Broker, BrokerOptions, DeliveryLog, DEADLINE,
};

/// As small as the broker allows (its largest batch, 8 MiB, plus two blocks).
const SEGMENT_BYTES: u64 = 9 << 20;
/// Three segments per core.
const RETENTION_BYTES: u64 = 3 * SEGMENT_BYTES;
/// Records of about 4 KiB; one round fills about one segment.
const RECORD_BYTES: usize = 4000;
const RECORDS_PER_ROUND: u64 = 2300;
/// Most rounds before the test gives up on retention (~30 segments).
const MAX_ROUNDS: u64 = 30;

/// Earliest and end offsets of partition 0.
fn watermarks(broker: &Broker, topic: &str) -> (i64, i64) {
    broker.watermarks(topic, 0)
}

fn earliest(broker: &Broker, topic: &str) -> i64 {
    watermarks(broker, topic).0
}

fn committed(broker: &Broker, group: &str, topic: &str) -> Offset {
    let consumer = broker.consumer(&[("group.id", group)]);
    let mut query = TopicPartitionList::new();
    query.add_partition(topic, 0);
    let committed = consumer
        .committed_offsets(query, DEADLINE)
        .expect("committed offsets");
    committed.elements()[0].offset()
}

/// Catches: retention that never runs in the broker, retention that deletes the segments
/// holding the topic metadata or the group log (topics and offsets gone after a restart), and
/// internal queues that pin the log's first segment for ever (the earliest offset never moves).
#[test]
fn retention_removes_old_segments_and_keeps_topics_and_group_offsets() {
    let mut broker = Broker::start_with(
        BrokerOptions::default()
            .segment_size_bytes(SEGMENT_BYTES)
            .arg("--retention-bytes")
            .arg(RETENTION_BYTES.to_string()),
    );
    // The broker's own state first: it lands at the very start of the log.
    let kept = DeliveryLog::new();
    {
        let producer = broker.producer(&[("acks", "all")], &kept);
        send(
            &producer,
            BaseRecord::to("kept").payload("first".as_bytes()),
        );
        flush(&producer);
    }
    kept.assert_no_failures();
    let mut commit = TopicPartitionList::new();
    commit
        .add_partition_offset("kept", 0, Offset::Offset(1))
        .expect("tpl");
    broker
        .consumer(&[("group.id", "keeper")])
        .commit(&commit, CommitMode::Sync)
        .expect("commit");

    let bulk = DeliveryLog::new();
    let value = "x".repeat(RECORD_BYTES);
    let mut rounds = 0;
    loop {
        let producer = broker.producer(&[("acks", "1"), ("linger.ms", "5")], &bulk);
        for _ in 0..RECORDS_PER_ROUND {
            send(&producer, BaseRecord::to("bulk").payload(value.as_bytes()));
        }
        flush(&producer);
        rounds += 1;
        if earliest(&broker, "bulk") > 0 {
            break;
        }
        assert!(
            rounds < MAX_ROUNDS,
            "{} MiB written, retention of {} MiB never moved the earliest offset",
            (rounds * RECORDS_PER_ROUND * RECORD_BYTES as u64) >> 20,
            RETENTION_BYTES >> 20
        );
    }
    bulk.assert_no_failures();
    let start = earliest(&broker, "bulk");
    // The removed segments were kept as spares for later segments (--recycle-segments).
    assert!(
        broker
            .output()
            .contains("retention keeps segment as a spare"),
        "no segment was recycled"
    );
    println!("retention moved bulk's earliest offset to {start} after {rounds} rounds");

    broker.kill9();
    broker.restart();
    assert!(
        earliest(&broker, "bulk") >= start,
        "the earliest offset went back"
    );
    assert_eq!(broker.existing_partition_count("kept"), 1, "topic lost");
    // Its one record was in the first segment, which retention removed (the limit is per
    // core, not per partition); its offsets go on from where they were.
    assert_eq!(watermarks(&broker, "kept"), (1, 1));
    assert_eq!(committed(&broker, "keeper", "kept"), Offset::Offset(1));
}

/// A topic's own `retention.ms` hides its partitions' records older than that (whole batches),
/// while another topic on the same core keeps everything; an invalid value is refused at
/// creation. Catches: topic configs stored and reported but not enforced.
#[test]
fn a_topics_retention_ms_moves_its_earliest_offset() {
    let broker = Broker::start();
    let admin = broker.admin();
    let options = AdminOptions::new().operation_timeout(Some(DEADLINE));
    let short = NewTopic::new("short", 1, TopicReplication::Fixed(1)).set("retention.ms", "60000");
    let bad = NewTopic::new("bad", 1, TopicReplication::Fixed(1)).set("retention.ms", "soon");
    let results = block_on(admin.create_topics([&short, &bad], &options)).expect("create");
    assert_eq!(results[0], Ok("short".to_string()));
    assert_eq!(
        results[1],
        Err(("bad".to_string(), RDKafkaErrorCode::InvalidConfig))
    );

    // Five records stamped two minutes ago, then five stamped now, in separate batches; the
    // same into a topic without a limit of its own.
    broker.produce_old_then_new(&["short", "long"], 1, 120_000);

    wait_until(DEADLINE, "the old records of `short` expire", || {
        (earliest(&broker, "short") == 5).then_some(())
    });
    assert_eq!(watermarks(&broker, "short"), (5, 10));
    let kept: Vec<String> = broker
        .read_all("short", 1)
        .iter()
        .map(|r| r.payload_str().to_string())
        .collect();
    assert_eq!(kept, (0..5).map(|i| format!("new-{i}")).collect::<Vec<_>>());
    assert_eq!(watermarks(&broker, "long"), (0, 10), "no limit of its own");
}
