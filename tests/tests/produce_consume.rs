//! librdkafka produces to and consumes from the real broker: every acks setting, every
//! compression codec, keyed order per partition, and a fetch that starts inside a batch.

use std::collections::{BTreeMap, HashSet};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use ringmq_system_tests::{
    assert_offsets_increase, by_partition, flush, record, send, Broker, BrokerOptions, DeliveryLog,
    Record, DEADLINE,
};

const PARTITIONS: usize = 3;

type KeyAndValue = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Produces `count` keyed records with `settings`, reads the topic back and checks that what
/// was read is exactly what was produced. Returns the delivery reports and what was read.
fn round_trip(settings: &[(&str, &str)], topic: &str, count: u64) -> (Vec<Record>, Vec<Record>) {
    let broker = Broker::start_with(BrokerOptions::default().default_partitions(PARTITIONS as u32));
    let deliveries = DeliveryLog::new();
    let producer = broker.producer(settings, &deliveries);
    let payloads: Vec<(String, String)> = (0..count)
        .map(|i| {
            (
                format!("key-{}", i % 7),
                // Compressible on purpose, so the codecs have something to do.
                format!("{topic} record {i:06} {}", "abcdefgh".repeat(16)),
            )
        })
        .collect();
    for (i, (key, payload)) in payloads.iter().enumerate() {
        send(
            &producer,
            record(topic, Some(key.as_bytes()), payload.as_bytes(), i as u64),
        );
    }
    flush(&producer);
    deliveries.assert_no_failures();
    let acked = deliveries.acked();
    assert_eq!(
        acked.len(),
        payloads.len(),
        "one delivery report per record"
    );

    let read = broker.read_all(topic, broker.partition_count(topic));
    assert_eq!(
        read.len(),
        payloads.len(),
        "read back {} records, produced {}",
        read.len(),
        payloads.len()
    );
    let produced: HashSet<KeyAndValue> = payloads
        .iter()
        .map(|(k, p)| (Some(k.clone().into_bytes()), Some(p.clone().into_bytes())))
        .collect();
    let consumed: HashSet<KeyAndValue> = read
        .iter()
        .map(|r| (r.key.clone(), r.payload.clone()))
        .collect();
    assert_eq!(consumed.len(), read.len(), "a record was read twice");
    assert_eq!(
        consumed, produced,
        "what was read differs from what was produced"
    );
    for r in &read {
        let seq: u64 = r.payload_str()[topic.len() + 8..topic.len() + 14]
            .parse()
            .expect("sequence number in payload");
        assert_eq!(
            r.headers,
            vec![("seq".to_string(), Some(seq.to_be_bytes().to_vec()))],
            "headers of {:?}",
            r.payload_str()
        );
    }
    assert_offsets_increase(&read, "consumed");
    (acked, read)
}

/// For acks 1 and all the delivery reports carry offsets: each must point at the record that
/// was acknowledged, and each partition's offsets must be 0, 1, 2, ...
fn check_reports_match(acked: &[Record], read: &[Record]) {
    let by_position: BTreeMap<(i32, i64), &Record> =
        read.iter().map(|r| ((r.partition, r.offset), r)).collect();
    for ack in acked {
        let stored = by_position
            .get(&(ack.partition, ack.offset))
            .unwrap_or_else(|| {
                panic!(
                    "acked {:?} at {}/{} but nothing is there",
                    ack.payload_str(),
                    ack.partition,
                    ack.offset
                )
            });
        assert_eq!(
            stored.payload, ack.payload,
            "record at {}/{}",
            ack.partition, ack.offset
        );
        assert_eq!(
            stored.key, ack.key,
            "key at {}/{}",
            ack.partition, ack.offset
        );
    }
    for (partition, records) in by_partition(read) {
        let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
        let expected: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(offsets, expected, "offsets of partition {partition}");
    }
}

#[test]
fn acks_0_round_trips() {
    round_trip(&[("acks", "0")], "acks-zero", 1500);
}

#[test]
fn acks_1_round_trips_and_reports_offsets() {
    let (acked, read) = round_trip(&[("acks", "1")], "acks-one", 1500);
    check_reports_match(&acked, &read);
}

#[test]
fn acks_all_round_trips_and_reports_offsets() {
    let (acked, read) = round_trip(&[("acks", "all")], "acks-all", 1500);
    check_reports_match(&acked, &read);
}

/// Settings that make librdkafka put many records in each (compressed) batch.
fn compressed(codec: &'static str) -> [(&'static str, &'static str); 4] {
    [
        ("compression.type", codec),
        ("linger.ms", "50"),
        ("batch.num.messages", "500"),
        ("acks", "all"),
    ]
}

fn codec_round_trip(codec: &'static str) {
    let topic = format!("codec-{codec}");
    let (acked, read) = round_trip(&compressed(codec), &topic, 1000);
    check_reports_match(&acked, &read);
}

#[test]
fn gzip_round_trips() {
    codec_round_trip("gzip");
}

#[test]
fn snappy_round_trips() {
    codec_round_trip("snappy");
}

#[test]
fn lz4_round_trips() {
    codec_round_trip("lz4");
}

#[test]
fn zstd_round_trips() {
    codec_round_trip("zstd");
}

/// A consumer that starts at an offset in the middle of a multi-record compressed batch gets
/// exactly the records from that offset on, in order.
#[test]
fn fetch_starting_inside_a_compressed_batch() {
    let broker = Broker::start();
    let topic = "inside-batch";
    let deliveries = DeliveryLog::new();
    let producer = broker.producer(&compressed("lz4"), &deliveries);
    let payloads: Vec<String> = (0..400).map(|i| format!("inside {i:04}")).collect();
    for (i, payload) in payloads.iter().enumerate() {
        send(&producer, record(topic, None, payload.as_bytes(), i as u64));
    }
    flush(&producer);
    deliveries.assert_no_failures();

    for start in [1_i64, 137, 399] {
        let consumer: BaseConsumer = broker.consumer(&[]);
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, 0, Offset::Offset(start))
            .expect("assignment");
        consumer.assign(&assignment).expect("assign");
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + DEADLINE;
        while got.len() < payloads.len() - start as usize {
            assert!(
                std::time::Instant::now() < deadline,
                "from offset {start}: only {} records arrived",
                got.len()
            );
            if let Some(message) = consumer.poll(std::time::Duration::from_millis(200)) {
                let message = message.expect("consumer error");
                got.push((
                    message.offset(),
                    String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
                ));
            }
        }
        let expected: Vec<(i64, String)> = (start..payloads.len() as i64)
            .map(|o| (o, payloads[o as usize].clone()))
            .collect();
        assert_eq!(got, expected, "records read from offset {start}");
    }
}

/// Keyed records keep their order per key: all records of a key land in one partition, in the
/// order sent, with the offsets their delivery reports named. Two cores, so the partitions are
/// spread over both shards and requests cross cores.
#[test]
fn keyed_records_stay_in_order_per_partition() {
    let broker = Broker::start_with(BrokerOptions::default().cores(2).default_partitions(6));
    let topic = "keyed";
    let deliveries = DeliveryLog::new();
    let producer = broker.producer(&[("acks", "all"), ("linger.ms", "5")], &deliveries);
    const KEYS: u64 = 24;
    const PER_KEY: u64 = 100;
    let mut sent = Vec::new();
    for round in 0..PER_KEY {
        for key in 0..KEYS {
            sent.push((
                format!("key-{key:02}"),
                format!("key-{key:02} seq {round:04}"),
            ));
        }
    }
    for (i, (key, payload)) in sent.iter().enumerate() {
        send(
            &producer,
            record(topic, Some(key.as_bytes()), payload.as_bytes(), i as u64),
        );
    }
    flush(&producer);
    deliveries.assert_no_failures();
    let acked = deliveries.acked();

    let read = broker.read_all(topic, 6);
    assert_eq!(read.len(), sent.len(), "records read back");
    check_reports_match(&acked, &read);
    assert!(
        by_partition(&read).len() > 1,
        "24 keys over 6 partitions all landed in one partition"
    );

    let mut per_key: BTreeMap<Vec<u8>, Vec<&Record>> = BTreeMap::new();
    for r in &read {
        per_key
            .entry(r.key.clone().expect("keyed record"))
            .or_default()
            .push(r);
    }
    assert_eq!(per_key.len(), KEYS as usize);
    for (key, records) in per_key {
        let key = String::from_utf8_lossy(&key).into_owned();
        let partitions: HashSet<i32> = records.iter().map(|r| r.partition).collect();
        assert_eq!(
            partitions.len(),
            1,
            "{key} is spread over partitions {partitions:?}"
        );
        let order: Vec<String> = records
            .iter()
            .map(|r| r.payload_str().to_string())
            .collect();
        let expected: Vec<String> = (0..PER_KEY).map(|s| format!("{key} seq {s:04}")).collect();
        assert_eq!(order, expected, "order of {key}");
    }
}

/// Records larger than the consumer's fetch limits still come through: the broker returns the
/// first batch whole even when it exceeds max.partition.fetch.bytes and fetch.max.bytes, as
/// Kafka does, instead of an empty answer the consumer would repeat forever.
#[test]
fn records_larger_than_the_fetch_limits_are_still_served() {
    let broker = Broker::start();
    let topic = "large-records";
    let deliveries = DeliveryLog::new();
    let payloads: Vec<Vec<u8>> = (0..40u8)
        .map(|i| {
            let mut p = vec![i; 20 * 1024];
            p[0] = b'L';
            p
        })
        .collect();
    {
        let producer = broker.producer(&[("acks", "all")], &deliveries);
        for (i, payload) in payloads.iter().enumerate() {
            send(&producer, record(topic, None, payload, i as u64));
        }
        flush(&producer);
    }
    deliveries.assert_no_failures();

    let consumer: BaseConsumer = broker.consumer(&[
        // librdkafka insists on fetch.max.bytes >= message.max.bytes.
        ("message.max.bytes", "1000"),
        ("fetch.max.bytes", "1024"),
        ("max.partition.fetch.bytes", "1024"),
        ("receive.message.max.bytes", "1000000"),
    ]);
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .expect("assignment");
    consumer.assign(&assignment).expect("assign");
    let mut got: Vec<Vec<u8>> = Vec::new();
    let deadline = std::time::Instant::now() + DEADLINE;
    while got.len() < payloads.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {} large records arrived",
            got.len(),
            payloads.len()
        );
        if let Some(message) = consumer.poll(std::time::Duration::from_millis(200)) {
            let message = message.expect("consumer error");
            got.push(message.payload().unwrap_or_default().to_vec());
        }
    }
    assert!(
        got == payloads,
        "large records differ from what was produced"
    );
}

/// One producer writing to several topics at once, their partitions spread over two cores: each
/// Produce request carries parts for both shards, and every record lands where it was sent.
#[test]
fn one_producer_many_topics_across_cores() {
    let broker = Broker::start_with(BrokerOptions::default().cores(2).default_partitions(4));
    let topics: Vec<String> = (0..5).map(|t| format!("multi-{t}")).collect();
    let deliveries = DeliveryLog::new();
    let mut sent = Vec::new();
    {
        let producer = broker.producer(&[("acks", "all"), ("linger.ms", "20")], &deliveries);
        for i in 0..2000u64 {
            let topic = &topics[(i % 5) as usize];
            let partition = i32::try_from((i / 5) % 4).expect("i32");
            let payload = format!("{topic}/{partition}/{i:05}");
            send(
                &producer,
                rdkafka::producer::BaseRecord::to(topic)
                    .partition(partition)
                    .payload(payload.as_bytes()),
            );
            sent.push(payload);
        }
        flush(&producer);
    }
    deliveries.assert_no_failures();
    assert_eq!(deliveries.acked_count(), sent.len());
    let mut read_back = Vec::new();
    for topic in &topics {
        let read = broker.read_all(topic, 4);
        assert_offsets_increase(&read, topic);
        for r in &read {
            let payload = r.payload_str();
            assert!(
                payload.starts_with(&format!("{topic}/{}/", r.partition)),
                "{payload:?} read from {topic}/{}",
                r.partition
            );
            read_back.push(payload.to_string());
        }
    }
    read_back.sort();
    sent.sort();
    assert!(read_back == sent, "records read differ from records sent");
}
