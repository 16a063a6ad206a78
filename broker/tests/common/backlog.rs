//! Helpers of the tests that fill a topic with varied batches and read them back byte for
//! byte (backlog.rs, send_zc.rs).

use super::Client;
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use ringmq_wire::record_batch::{
    set_base_offset, split_batches, BatchBuilder, ProducerStamp, Record,
};

pub fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

/// A batch of `records` records of `value_len` bytes whose contents depend on (p, i):
/// misplaced, truncated or shifted bytes cannot compare equal to another batch.
pub fn varied_batch(p: i32, i: usize, records: usize, value_len: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(records * (value_len + 64));
    for r in 0..records {
        let seed = (p as usize) << 24 ^ i << 8 ^ r;
        let value: Vec<u8> = (0..value_len)
            .map(|k| (seed.wrapping_mul(2_654_435_761) ^ k.wrapping_mul(40_503)) as u8)
            .collect();
        b.push(&Record {
            key: None,
            value: Some(&value),
            headers: &[],
            timestamp_ms: 1_000 + i as i64,
        });
    }
    b.build(ProducerStamp::NONE, 0)
}

/// Creates `topic` with `partitions` and produces `batch(p, i)` round-robin over them until
/// `bytes` are in; returns each partition's batches as stored (base offsets assigned).
pub fn fill(
    c: &mut Client,
    topic: &str,
    partitions: i32,
    bytes: usize,
    batch: impl Fn(i32, usize) -> Vec<u8>,
) -> Vec<Vec<Bytes>> {
    let req = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
        .with_name(topic_name(topic))
        .with_num_partitions(partitions)
        .with_replication_factor(1)]);
    let resp: CreateTopicsResponse = c.call(7, &req);
    assert_eq!(resp.topics[0].error_code, 0);
    let mut want = vec![Vec::new(); partitions as usize];
    let (mut total, mut i) = (0, 0);
    while total < bytes {
        for p in 0..partitions {
            let b = batch(p, i);
            let req = ProduceRequest::default()
                .with_acks(1)
                .with_timeout_ms(10_000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(topic_name(topic))
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(p)
                        .with_records(Some(Bytes::from(b.clone())))])]);
            let resp: ProduceResponse = c.call(9, &req);
            let part = &resp.responses[0].partition_responses[0];
            assert_eq!(part.error_code, 0, "produce p{p} #{i}");
            let mut stored = BytesMut::from(&b[..]);
            set_base_offset(&mut stored, part.base_offset);
            total += b.len();
            want[p as usize].push(stored.freeze());
        }
        i += 1;
    }
    want
}

/// A fetch of partition p of `topic` from `next[p]`, for every p.
pub fn fetch_from(
    topic: &str,
    next: &[i64],
    partition_max_bytes: i32,
    max_bytes: i32,
) -> FetchRequest {
    let parts = next
        .iter()
        .enumerate()
        .map(|(p, &at)| {
            FetchPartition::default()
                .with_partition(p as i32)
                .with_fetch_offset(at)
                .with_partition_max_bytes(partition_max_bytes)
        })
        .collect();
    FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(max_bytes)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(parts)])
}

/// Checks a fetch response's batches against `want` byte for byte, advancing `next` (the
/// next offset) and `got` (batches seen) per partition.
pub fn check(
    resp: &FetchResponse,
    want: &[Vec<Bytes>],
    next: &mut [i64],
    got: &mut [usize],
    what: &str,
) {
    for part in &resp.responses[0].partitions {
        let p = part.partition_index as usize;
        assert_eq!(part.error_code, 0, "{what}: partition {p}");
        let records = part.records.clone().unwrap_or_default();
        for range in split_batches(&records) {
            let range = range.expect("whole batches");
            let k = got[p];
            assert!(
                k < want[p].len(),
                "{what}: p{p} returned more batches than sent"
            );
            assert!(
                records[range.clone()] == want[p][k][..],
                "{what}: partition {p} batch {k} differs from what was produced"
            );
            let h = ringmq_wire::record_batch::validate(&records[range]).unwrap();
            next[p] = h.last_offset() + 1;
            got[p] += 1;
        }
    }
}

/// Whether some partition has batches in `want` that `got` has not seen yet.
pub fn unread(want: &[Vec<Bytes>], got: &[usize]) -> bool {
    got.iter().zip(want).any(|(g, w)| *g < w.len())
}
