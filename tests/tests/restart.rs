//! Durability across restarts of the real process: after SIGTERM and after SIGKILL under
//! acks=all load, every acknowledged record is where its delivery report said, in order per
//! partition; topics and committed group offsets survive too.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::{BaseRecord, Producer, PurgeConfig};
use rdkafka::{Offset, TopicPartitionList};
use ringmq_system_tests::{
    assert_offsets_increase, by_partition, flush, send, wait_until, Broker, BrokerOptions,
    DeliveryLog, Record, DEADLINE,
};

const PARTITIONS: usize = 4;

/// Commit-log segments in the load tests: as small as the broker allows (more than its 8 MiB
/// largest batch plus two blocks), so the acknowledged records fill more than one segment per
/// core and recovery walks across segment boundaries.
const SMALL_SEGMENT_BYTES: u64 = 9 << 20;

/// Acknowledged records per round before the broker is stopped. With 4 KiB records spread
/// evenly over 4 partitions on 2 cores, two rounds put at least 12 MiB on each core.
const ACKED_PER_ROUND: usize = 3000;

/// Padding that makes each record about 4 KiB, so the records fill segments quickly.
const PADDING: &str = concat!(
    "................................................................",
    "................................................................"
);

fn payload(tag: &str, i: u64) -> String {
    format!("{tag}-{i:07}")
}

fn padded_payload(tag: &str, i: u64) -> String {
    format!("{tag}-{i:07}-{}", PADDING.repeat(32))
}

/// Commit-log segment files (`*.log`) under the broker's data directory.
fn segment_files(broker: &Broker) -> usize {
    fn walk(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .expect("reading the data dir")
            .map(|entry| entry.expect("data dir entry").path())
            .map(|path| {
                if path.is_dir() {
                    walk(&path)
                } else {
                    usize::from(path.extension().is_some_and(|e| e == "log"))
                }
            })
            .sum()
    }
    walk(broker.data_dir())
}

/// Checks what was read after a restart against the delivery reports:
/// - every acknowledged record is at the partition and offset its report named;
/// - each partition's offsets are 0, 1, 2, ... (recovery left no hole and no reordering);
/// - every record read is one that was sent (recovery produced no garbage).
fn check_acked_are_stored(acked: &[Record], read: &[Record], sent: &HashSet<String>) {
    let stored: BTreeMap<(i32, i64), &Record> =
        read.iter().map(|r| ((r.partition, r.offset), r)).collect();
    for ack in acked {
        let Some(found) = stored.get(&(ack.partition, ack.offset)) else {
            panic!(
                "acknowledged {:?} at {}/{} is missing after restart ({} records read)",
                ack.payload_str(),
                ack.partition,
                ack.offset,
                read.len()
            );
        };
        assert_eq!(
            found.payload_str(),
            ack.payload_str(),
            "record at {}/{} after restart",
            ack.partition,
            ack.offset
        );
    }
    assert_offsets_increase(read, "after restart");
    for (partition, records) in by_partition(read) {
        for (expected, r) in records.iter().enumerate() {
            assert_eq!(
                r.offset, expected as i64,
                "partition {partition}: offsets after restart are not contiguous"
            );
        }
    }
    for r in read {
        assert!(
            sent.contains(r.payload_str()),
            "read {:?}, which was never sent",
            r.payload_str()
        );
    }
}

#[test]
fn clean_restart_keeps_records_topics_and_group_offsets() {
    let mut broker = Broker::start_with(
        BrokerOptions::default()
            .cores(2)
            .default_partitions(PARTITIONS as u32),
    );
    let topic = "clean-restart";
    let deliveries = DeliveryLog::new();
    let mut sent = HashSet::new();
    {
        let producer = broker.producer(&[("acks", "all"), ("linger.ms", "5")], &deliveries);
        for i in 0..2000u64 {
            let p = payload("clean", i);
            let partition = i32::try_from(i % PARTITIONS as u64).expect("i32");
            send(
                &producer,
                BaseRecord::to(topic)
                    .partition(partition)
                    .payload(p.as_bytes()),
            );
            sent.insert(p);
        }
        flush(&producer);
    }
    deliveries.assert_no_failures();
    let acked = deliveries.acked();
    assert_eq!(acked.len(), 2000);

    // Commit group offsets 100, 200, 300, 400 for partitions 0..4.
    let mut commits = TopicPartitionList::new();
    for partition in 0..PARTITIONS as i32 {
        commits
            .add_partition_offset(
                topic,
                partition,
                Offset::Offset(100 * (i64::from(partition) + 1)),
            )
            .expect("tpl");
    }
    {
        let consumer = broker.consumer(&[("group.id", "restart-group")]);
        consumer
            .commit(&commits, CommitMode::Sync)
            .expect("committing offsets");
    }

    let status = broker.terminate();
    assert!(status.success(), "SIGTERM should exit 0, got {status}");
    broker.restart();

    assert_eq!(
        broker.existing_partition_count(topic),
        PARTITIONS,
        "partitions after restart"
    );
    let read = broker.read_all(topic, PARTITIONS);
    assert_eq!(
        read.len(),
        acked.len(),
        "clean shutdown: every record and no more"
    );
    check_acked_are_stored(&acked, &read, &sent);

    let consumer = broker.consumer(&[("group.id", "restart-group")]);
    let mut query = TopicPartitionList::new();
    for partition in 0..PARTITIONS as i32 {
        query.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(query, DEADLINE)
        .expect("committed offsets");
    for element in committed.elements() {
        assert_eq!(
            element.offset(),
            Offset::Offset(100 * (i64::from(element.partition()) + 1)),
            "committed offset of partition {} after restart",
            element.partition()
        );
    }

    // New records continue the offsets where they were.
    let after = DeliveryLog::new();
    {
        let producer = broker.producer(&[("acks", "all")], &after);
        for partition in 0..PARTITIONS as i32 {
            let p = format!("after-restart-{partition}");
            send(
                &producer,
                BaseRecord::to(topic)
                    .partition(partition)
                    .payload(p.as_bytes()),
            );
        }
        flush(&producer);
    }
    after.assert_no_failures();
    for ack in after.acked() {
        assert_eq!(
            ack.offset, 500,
            "first offset after restart in partition {}",
            ack.partition
        );
    }
}

/// Produces with acks=all from a background thread until told to stop, then purges what is
/// still queued (the broker is gone) and returns. Every report lands in `deliveries`.
fn produce_until_stopped(
    broker: &Broker,
    acks: &str,
    topic: &'static str,
    tag: &'static str,
    deliveries: &Arc<DeliveryLog>,
    stop: &Arc<AtomicBool>,
) -> thread::JoinHandle<HashSet<String>> {
    let producer = broker.producer(
        &[
            ("acks", acks),
            ("linger.ms", "2"),
            // Keep the backlog small: unacked records are allowed to vanish, acked ones not.
            ("queue.buffering.max.messages", "2000"),
            ("message.timeout.ms", "20000"),
        ],
        deliveries,
    );
    let stop = Arc::clone(stop);
    thread::spawn(move || {
        let mut sent = HashSet::new();
        let mut i = 0u64;
        while !stop.load(Ordering::Acquire) {
            let p = padded_payload(tag, i);
            let partition = i32::try_from(i % PARTITIONS as u64).expect("i32");
            let record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
                .partition(partition)
                .payload(p.as_bytes());
            match producer.send(record) {
                Ok(()) => {
                    sent.insert(p);
                    i += 1;
                }
                // Queue full (or broker gone): serve reports and try again.
                Err(_) => producer.poll(Duration::from_millis(10)),
            }
            producer.poll(Duration::ZERO);
        }
        producer.purge(PurgeConfig::default().queue().inflight());
        producer.poll(Duration::from_millis(100));
        sent
    })
}

/// Produces under load, SIGKILLs the broker mid-stream, restarts it, and checks every
/// acknowledged record; twice, so recovery of an already-recovered log is covered too.
#[test]
fn kill_9_under_acks_all_load_loses_no_acknowledged_record() {
    let mut broker = Broker::start_with(
        BrokerOptions::default()
            .cores(2)
            .default_partitions(PARTITIONS as u32)
            .segment_size_bytes(SMALL_SEGMENT_BYTES),
    );
    let topic = "kill-nine";
    let mut all_acked = Vec::new();
    let mut all_sent = HashSet::new();
    for (round, tag) in ["round-one", "round-two"].into_iter().enumerate() {
        let deliveries = DeliveryLog::new();
        let stop = Arc::new(AtomicBool::new(false));
        let producer = produce_until_stopped(&broker, "all", topic, tag, &deliveries, &stop);
        let target = ACKED_PER_ROUND;
        wait_until(DEADLINE, "acknowledged records before the kill", || {
            (deliveries.acked_count() >= target).then_some(())
        });
        broker.kill9();
        stop.store(true, Ordering::Release);
        let sent = producer.join().expect("producer thread");
        let acked = deliveries.acked();
        assert!(
            acked.len() >= target,
            "round {round}: {} acked",
            acked.len()
        );
        all_acked.extend(acked);
        all_sent.extend(sent);

        broker.restart();
        let read = broker.read_all(topic, PARTITIONS);
        check_acked_are_stored(&all_acked, &read, &all_sent);
    }
    let segments = segment_files(&broker);
    assert!(
        segments > 2,
        "the records filled only {segments} segment files on 2 cores: recovery never crossed a segment"
    );
}

/// SIGTERM while an acks=1 producer is busy: the broker finishes what it has in flight, exits
/// 0, and every record it acknowledged is there after the restart.
#[test]
fn sigterm_under_acks_1_load_loses_no_acknowledged_record() {
    let mut broker = Broker::start_with(
        BrokerOptions::default()
            .cores(2)
            .default_partitions(PARTITIONS as u32)
            .segment_size_bytes(SMALL_SEGMENT_BYTES),
    );
    let topic = "sigterm-acks-one";
    let deliveries = DeliveryLog::new();
    let stop = Arc::new(AtomicBool::new(false));
    let producer = produce_until_stopped(&broker, "1", topic, "acks-one", &deliveries, &stop);
    wait_until(DEADLINE, "acknowledged records before SIGTERM", || {
        (deliveries.acked_count() >= ACKED_PER_ROUND).then_some(())
    });
    let status = broker.terminate();
    stop.store(true, Ordering::Release);
    let sent = producer.join().expect("producer thread");
    assert!(
        status.success(),
        "SIGTERM under load should exit 0, got {status}"
    );
    broker.restart();
    let read = broker.read_all(topic, PARTITIONS);
    check_acked_are_stored(&deliveries.acked(), &read, &sent);
}
