//! DeleteRecords through librdkafka's AdminClient against the real binary: partitions on two
//! cores lose their records below the given offsets (or all of them), consumers start at the
//! new log start, bad offsets are refused, an acknowledged deletion survives kill -9, and
//! segments that no partition needs any more leave the disk. (librdkafka
//! refuses unknown partitions itself; tests/tests/bad_input.rs sends those raw.)

use std::time::Duration;

use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::BaseRecord;
use rdkafka::{Message, Offset, TopicPartitionList};
use ringmq_system_tests::{
    block_on, flush, send, wait_until, Broker, BrokerOptions, DeliveryLog, DEADLINE,
};

const TOPIC: &str = "delete-records";
const RECORDS: i64 = 50;

fn options() -> AdminOptions {
    AdminOptions::new().request_timeout(Some(DEADLINE))
}

/// Asks to delete below `offset` in each (partition, offset); returns each partition's low
/// watermark or error code, in order.
fn delete(
    broker: &Broker,
    topic: &str,
    at: &[(i32, Offset)],
) -> Vec<Result<i64, RDKafkaErrorCode>> {
    let mut list = TopicPartitionList::new();
    for (partition, offset) in at {
        list.add_partition_offset(topic, *partition, *offset)
            .expect("offset in list");
    }
    let answer =
        block_on(broker.admin().delete_records(&list, &options())).expect("delete_records");
    at.iter()
        .map(|(partition, _)| {
            let elem = answer
                .find_partition(topic, *partition)
                .expect("a result per partition");
            match elem.error() {
                Ok(()) => match elem.offset() {
                    Offset::Offset(low) => Ok(low),
                    other => panic!("low watermark {other:?}"),
                },
                Err(KafkaError::OffsetFetch(code)) => Err(code),
                Err(e) => panic!("unexpected error {e}"),
            }
        })
        .collect()
}

/// The offsets a fresh consumer reads from partition `partition` from the beginning up to
/// `end`.
fn offsets_from_beginning(broker: &Broker, partition: i32, end: i64) -> Vec<i64> {
    let consumer: BaseConsumer = broker.consumer(&[]);
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(TOPIC, partition, Offset::Beginning)
        .expect("offset in list");
    consumer.assign(&list).expect("assign");
    let mut seen = Vec::new();
    wait_until(DEADLINE, "records up to the end", || {
        while let Some(m) = consumer.poll(Duration::from_millis(100)) {
            seen.push(m.expect("a record").offset());
        }
        (seen.last() == Some(&(end - 1))).then_some(())
    });
    seen
}

#[test]
fn delete_records_moves_log_starts_and_keeps_them() {
    let mut broker = Broker::start_with(BrokerOptions::default().cores(2));
    let topic = NewTopic::new(TOPIC, 2, TopicReplication::Fixed(1));
    let created =
        block_on(broker.admin().create_topics([&topic], &options())).expect("create_topics");
    assert_eq!(created, vec![Ok(TOPIC.to_string())]);
    let deliveries = DeliveryLog::new();
    {
        // Small batches, so that offset 20 falls inside the log rather than at its start.
        let producer = broker.producer(&[("acks", "all"), ("linger.ms", "0")], &deliveries);
        for i in 0..RECORDS {
            for partition in 0..2 {
                let payload = format!("r{i}");
                send(
                    &producer,
                    BaseRecord::to(TOPIC)
                        .partition(partition)
                        .payload(payload.as_bytes()),
                );
            }
        }
        flush(&producer);
    }
    deliveries.assert_no_failures();
    assert_eq!(broker.watermarks(TOPIC, 0), (0, RECORDS));

    // Partition 0 below offset 20, partition 1 everything (Offset::End is -1, the high
    // watermark). The partitions live on the two cores.
    assert_eq!(
        delete(&broker, TOPIC, &[(0, Offset::Offset(20)), (1, Offset::End)]),
        vec![Ok(20), Ok(RECORDS)]
    );
    assert_eq!(broker.watermarks(TOPIC, 0), (20, RECORDS));
    assert_eq!(broker.watermarks(TOPIC, 1), (RECORDS, RECORDS));
    let read = offsets_from_beginning(&broker, 0, RECORDS);
    assert_eq!(read, (20..RECORDS).collect::<Vec<_>>(), "reads start at 20");

    // Past the high watermark: OFFSET_OUT_OF_RANGE, nothing moves. Below the start: no change.
    assert_eq!(
        delete(&broker, TOPIC, &[(0, Offset::Offset(RECORDS + 1))]),
        vec![Err(RDKafkaErrorCode::OffsetOutOfRange)]
    );
    assert_eq!(
        delete(&broker, TOPIC, &[(0, Offset::Offset(5))]),
        vec![Ok(20)]
    );
    assert_eq!(broker.watermarks(TOPIC, 0), (20, RECORDS));

    // An acknowledged deletion is durable: kill -9 at once, and the starts are still there
    // (the engine's periodic checkpoint is seconds away; the answer waited for one).
    broker.kill9();
    broker.restart();
    assert_eq!(broker.watermarks(TOPIC, 0), (20, RECORDS));
    assert_eq!(broker.watermarks(TOPIC, 1), (RECORDS, RECORDS));
}

/// Segment files (`*.log`) in every shard directory of the broker.
fn segment_files(broker: &Broker) -> usize {
    let mut n = 0;
    for shard in std::fs::read_dir(broker.data_dir()).expect("data dir") {
        let shard = shard.expect("entry").path();
        if !shard.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&shard).expect("shard dir") {
            let name = f.expect("entry").file_name();
            n += usize::from(name.to_string_lossy().ends_with(".log"));
        }
    }
    n
}

/// Catches: deleted records that keep their segments on disk for ever when no age or size
/// limit applies (only the core's own retention ever removed segments).
#[test]
fn segments_no_partition_needs_leave_the_disk() {
    const SEGMENT_BYTES: u64 = 9 << 20;
    const RECORD_BYTES: usize = 4000;
    const RECORDS: i64 = 8000; // ~32 MB per partition: three to four segments
    let broker = Broker::start_with(
        BrokerOptions::default()
            .cores(2)
            .segment_size_bytes(SEGMENT_BYTES)
            .arg("--retention-ms")
            .arg("-1"),
    );
    let topic = NewTopic::new("space", 2, TopicReplication::Fixed(1));
    block_on(broker.admin().create_topics([&topic], &options())).expect("create_topics");
    let deliveries = DeliveryLog::new();
    {
        let producer = broker.producer(&[("acks", "1"), ("linger.ms", "5")], &deliveries);
        let value = "s".repeat(RECORD_BYTES);
        for _ in 0..RECORDS {
            for partition in 0..2 {
                send(
                    &producer,
                    BaseRecord::to("space")
                        .partition(partition)
                        .payload(value.as_bytes()),
                );
            }
        }
        flush(&producer);
    }
    deliveries.assert_no_failures();
    let before = segment_files(&broker);
    assert!(before >= 6, "{before} segment files");
    assert_eq!(
        delete(&broker, "space", &[(0, Offset::End), (1, Offset::End)]),
        vec![Ok(RECORDS), Ok(RECORDS)]
    );
    // Within a retention pass or two (every 10 s), whatever holds only deleted records goes.
    let after = wait_until(DEADLINE, "segments of deleted records removed", || {
        let n = segment_files(&broker);
        (n + 3 <= before).then_some(n)
    });
    println!("segment files: {before} -> {after}");
}
