//! Topic administration through librdkafka's AdminClient: create, describe configs, create
//! partitions, delete; and ListOffsets (earliest, latest, by timestamp).

use std::time::Duration;

use rdkafka::admin::{AdminOptions, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::BaseRecord;
use rdkafka::{Message, Offset, TopicPartitionList};
use ringmq_system_tests::{
    block_on, flush, send, wait_until, Broker, BrokerOptions, DeliveryLog, DEADLINE,
};

fn options() -> AdminOptions {
    AdminOptions::new().request_timeout(Some(DEADLINE))
}

/// Topic names in the broker's full metadata (no auto-creation: no topic is named).
fn listed_topics(broker: &Broker) -> Vec<String> {
    let consumer = broker.consumer(&[]);
    let metadata = consumer.fetch_metadata(None, DEADLINE).expect("metadata");
    metadata
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .collect()
}

#[test]
fn create_describe_grow_and_delete_topics() {
    let broker = Broker::start_with(BrokerOptions::default().cores(2));
    let admin = broker.admin();

    let topic =
        NewTopic::new("admin-topic", 3, TopicReplication::Fixed(1)).set("retention.ms", "3600000");
    let results = block_on(admin.create_topics([&topic], &options())).expect("create_topics");
    assert_eq!(results, vec![Ok("admin-topic".to_string())]);
    assert_eq!(broker.partition_count("admin-topic"), 3);

    // Creating it again is refused with TOPIC_ALREADY_EXISTS.
    let again = block_on(admin.create_topics([&topic], &options())).expect("create_topics");
    assert_eq!(
        again,
        vec![Err((
            "admin-topic".to_string(),
            RDKafkaErrorCode::TopicAlreadyExists
        ))]
    );

    // Bad requests get the proper error codes.
    let zero = NewTopic::new("zero-partitions", 0, TopicReplication::Fixed(1));
    let three_replicas = NewTopic::new("three-replicas", 1, TopicReplication::Fixed(3));
    let bad =
        block_on(admin.create_topics([&zero, &three_replicas], &options())).expect("create_topics");
    assert_eq!(
        bad,
        vec![
            Err((
                "zero-partitions".to_string(),
                RDKafkaErrorCode::InvalidPartitions
            )),
            Err((
                "three-replicas".to_string(),
                RDKafkaErrorCode::InvalidReplicationFactor
            )),
        ]
    );

    // DescribeConfigs returns the value set at creation.
    let configs =
        block_on(admin.describe_configs([&ResourceSpecifier::Topic("admin-topic")], &options()))
            .expect("describe_configs");
    assert_eq!(configs.len(), 1);
    let resource = configs[0].as_ref().expect("describe_configs result");
    let retention = resource
        .get("retention.ms")
        .expect("retention.ms is described");
    assert_eq!(retention.value.as_deref(), Some("3600000"));

    // CreatePartitions grows it to 5; partition 4 takes records.
    let grow = NewPartitions::new("admin-topic", 5);
    let grown = block_on(admin.create_partitions([&grow], &options())).expect("create_partitions");
    assert_eq!(grown, vec![Ok("admin-topic".to_string())]);
    wait_until(DEADLINE, "5 partitions in metadata", || {
        (broker.partition_count("admin-topic") == 5).then_some(())
    });
    let deliveries = DeliveryLog::new();
    {
        let producer = broker.producer(&[("acks", "all")], &deliveries);
        for partition in 0..5 {
            send(
                &producer,
                BaseRecord::to("admin-topic")
                    .partition(partition)
                    .payload(b"x".as_slice()),
            );
        }
        flush(&producer);
    }
    deliveries.assert_no_failures();
    assert_eq!(broker.watermarks("admin-topic", 4), (0, 1));

    // Shrinking is refused.
    let shrink = NewPartitions::new("admin-topic", 2);
    let refused =
        block_on(admin.create_partitions([&shrink], &options())).expect("create_partitions");
    assert_eq!(
        refused,
        vec![Err((
            "admin-topic".to_string(),
            RDKafkaErrorCode::InvalidPartitions
        ))]
    );

    // DeleteTopics removes it from the metadata; created again, it starts empty.
    let deleted =
        block_on(admin.delete_topics(&["admin-topic"], &options())).expect("delete_topics");
    assert_eq!(deleted, vec![Ok("admin-topic".to_string())]);
    wait_until(DEADLINE, "admin-topic gone from metadata", || {
        (!listed_topics(&broker).contains(&"admin-topic".to_string())).then_some(())
    });
    let recreate = NewTopic::new("admin-topic", 1, TopicReplication::Fixed(1));
    let results = block_on(admin.create_topics([&recreate], &options())).expect("create_topics");
    assert_eq!(results, vec![Ok("admin-topic".to_string())]);
    assert_eq!(broker.partition_count("admin-topic"), 1);
    assert_eq!(
        broker.watermarks("admin-topic", 0),
        (0, 0),
        "recreated topic is empty"
    );

    // Deleting an unknown topic is UNKNOWN_TOPIC_OR_PARTITION.
    let unknown =
        block_on(admin.delete_topics(&["no-such-topic"], &options())).expect("delete_topics");
    assert_eq!(
        unknown,
        vec![Err((
            "no-such-topic".to_string(),
            RDKafkaErrorCode::UnknownTopicOrPartition
        ))]
    );
}

const BASE_TS: i64 = 1_700_000_000_000;

/// Fills partition 0 of `topic` with 40 records: offsets 0..20 one record per batch with
/// timestamps BASE + 1000 * i, offsets 20..40 in one batch with BASE + 100_000 + 1000 * j.
fn produce_timestamped(broker: &Broker, topic: &str) {
    let deliveries = DeliveryLog::new();
    {
        // Offsets 0..20: one record per batch, timestamps BASE + 1000 * i.
        let producer = broker.producer(&[("acks", "all"), ("linger.ms", "0")], &deliveries);
        for i in 0..20i64 {
            let p = format!("single {i}");
            send(
                &producer,
                BaseRecord::to(topic)
                    .payload(p.as_bytes())
                    .timestamp(BASE_TS + 1000 * i),
            );
            flush(&producer);
        }
    }
    {
        // Offsets 20..40 in one batch, timestamps BASE + 100_000 + 1000 * j.
        let producer = broker.producer(
            &[
                ("acks", "all"),
                ("linger.ms", "200"),
                ("batch.num.messages", "1000"),
            ],
            &deliveries,
        );
        for j in 0..20i64 {
            let p = format!("batched {j}");
            send(
                &producer,
                BaseRecord::to(topic)
                    .payload(p.as_bytes())
                    .timestamp(BASE_TS + 100_000 + 1000 * j),
            );
        }
        flush(&producer);
    }
    deliveries.assert_no_failures();
    assert_eq!(deliveries.acked_count(), 40);
}

/// The offset ListOffsets gives for `timestamp` (librdkafka's offsets_for_times).
fn offset_for_time(consumer: &BaseConsumer, topic: &str, timestamp: i64) -> Offset {
    let mut query = TopicPartitionList::new();
    query
        .add_partition_offset(topic, 0, Offset::Offset(timestamp))
        .expect("tpl");
    let answer = consumer
        .offsets_for_times(query, DEADLINE)
        .expect("offsets_for_times");
    let elements = answer.elements_for_topic(topic);
    assert_eq!(elements.len(), 1, "answer for timestamp {timestamp}");
    assert_eq!(elements[0].error(), Ok(()), "timestamp {timestamp}");
    elements[0].offset()
}

/// ListOffsets: earliest and latest (watermarks); by timestamp before, between and after
/// batches and past the end; and a consumer starting at a tail offset (which librdkafka
/// resolves with ListOffsets latest).
#[test]
fn list_offsets_earliest_latest_and_by_timestamp() {
    let broker = Broker::start();
    let topic = "list-offsets";
    produce_timestamped(&broker, topic);
    assert_eq!(broker.watermarks(topic, 0), (0, 40), "earliest and latest");

    let consumer: BaseConsumer = broker.consumer(&[]);
    let cases = [
        (BASE_TS - 5, Offset::Offset(0)),
        (BASE_TS, Offset::Offset(0)),
        (BASE_TS + 5_500, Offset::Offset(6)),
        (BASE_TS + 19_000, Offset::Offset(19)),
        (BASE_TS + 50_000, Offset::Offset(20)),
        (BASE_TS + 100_000, Offset::Offset(20)),
        (BASE_TS + 119_001, Offset::End),
    ];
    for (timestamp, expected) in cases {
        assert_eq!(
            offset_for_time(&consumer, topic, timestamp),
            expected,
            "offset for timestamp BASE+{}",
            timestamp - BASE_TS
        );
    }
    // A consumer at OffsetTail(5) reads offsets 35..40.
    let tail: BaseConsumer = broker.consumer(&[]);
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::OffsetTail(5))
        .expect("tpl");
    tail.assign(&assignment).expect("assign");
    let mut offsets = Vec::new();
    wait_until(DEADLINE, "the last 5 records", || {
        if let Some(message) = tail.poll(Duration::from_millis(100)) {
            offsets.push(message.expect("consumer error").offset());
        }
        (offsets.len() >= 5).then_some(())
    });
    assert_eq!(offsets, vec![35, 36, 37, 38, 39]);
}

/// ListOffsets by a timestamp that falls inside a multi-record batch answers the first record
/// of the batch whose timestamp is at least the target, as Kafka does, not the batch's start.
#[test]
fn list_offsets_by_timestamp_inside_a_batch() {
    let broker = Broker::start();
    let topic = "list-offsets-in-batch";
    produce_timestamped(&broker, topic);
    let consumer: BaseConsumer = broker.consumer(&[]);
    for (timestamp, expected) in [
        (BASE_TS + 100_500, Offset::Offset(21)),
        (BASE_TS + 103_500, Offset::Offset(24)),
        (BASE_TS + 119_000, Offset::Offset(39)),
    ] {
        assert_eq!(
            offset_for_time(&consumer, topic, timestamp),
            expected,
            "offset for timestamp BASE+{}",
            timestamp - BASE_TS
        );
    }
}
