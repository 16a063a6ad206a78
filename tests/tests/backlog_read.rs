//! Catch-up reads with librdkafka: a backlog larger than the broker's tail cache (64 MiB),
//! produced, then read from the beginning after a restart (the tail cache is empty, so every
//! record comes from disk), with each `--fetch-backlog-read` mode (in `sendfile` mode most of
//! it leaves through sendfile(2) from the page cache). Every acknowledged record
//! must come back at its offset with its exact payload.

use std::collections::BTreeMap;

use rdkafka::producer::BaseRecord;
use ringmq_system_tests::{flush, send, Broker, BrokerOptions, DeliveryLog};

const PARTITIONS: usize = 4;
/// Records of [`RECORD_BYTES`]: about 80 MB, more than the 64 MiB tail cache.
const RECORDS: u64 = 20_000;
const RECORD_BYTES: usize = 4_000;

/// A payload that differs in every byte position from record to record.
fn payload(i: u64) -> Vec<u8> {
    let mut v = format!("rec-{i:08}-").into_bytes();
    v.extend((0..RECORD_BYTES - v.len()).map(|k| (i as usize * 131 + k * 7) as u8));
    v
}

fn catch_up_after_restart(mode: &str) {
    let options = BrokerOptions::default()
        .cores(2)
        .default_partitions(PARTITIONS as u32)
        .arg("--fetch-backlog-read")
        .arg(mode);
    let mut broker = Broker::start_with(options);
    let topic = "backlog";
    assert_eq!(broker.partition_count(topic), PARTITIONS);
    let deliveries = DeliveryLog::new();
    {
        let producer = broker.producer(
            &[("linger.ms", "5"), ("batch.size", "262144"), ("acks", "1")],
            &deliveries,
        );
        for i in 0..RECORDS {
            let p = payload(i);
            let key = i.to_be_bytes();
            send(
                &producer,
                BaseRecord::to(topic)
                    .partition((i % PARTITIONS as u64) as i32)
                    .key(&key[..])
                    .payload(&p[..]),
            );
        }
        flush(&producer);
    }
    deliveries.assert_no_failures();
    let acked = deliveries.acked();
    assert_eq!(acked.len() as u64, RECORDS);
    assert!(broker.terminate().success());
    broker.restart();
    let read = broker.read_all(topic, PARTITIONS);
    let stored: BTreeMap<(i32, i64), _> =
        read.iter().map(|r| ((r.partition, r.offset), r)).collect();
    assert_eq!(read.len(), acked.len(), "{mode}: records read");
    for ack in &acked {
        let i = u64::from_be_bytes(
            ack.key
                .as_deref()
                .and_then(|k| k.try_into().ok())
                .expect("8-byte key"),
        );
        let got = stored.get(&(ack.partition, ack.offset)).unwrap_or_else(|| {
            panic!(
                "{mode}: record {i} at {}/{} missing",
                ack.partition, ack.offset
            )
        });
        assert!(
            got.payload.as_deref() == Some(&payload(i)[..]),
            "{mode}: record {i} at {}/{} has other bytes",
            ack.partition,
            ack.offset
        );
    }
}

#[test]
fn catch_up_after_restart_with_readahead() {
    catch_up_after_restart("readahead");
}

#[test]
fn catch_up_after_restart_with_direct_reads() {
    catch_up_after_restart("direct");
}

#[test]
fn catch_up_after_restart_with_sendfile() {
    catch_up_after_restart("sendfile");
}
