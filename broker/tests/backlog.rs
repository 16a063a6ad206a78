//! Backlog reads through the real binary: a backlog larger than the engine's tail cache
//! (64 MiB), read back byte-exact before a restart (its oldest part from disk) and after
//! restarts (all from disk) with each `--fetch-backlog-read` mode, on two cores (so part of
//! every fetch is read on the other core).

mod common;

use bytes::{Bytes, BytesMut};
use common::{Broker, Client};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use ringmq_wire::record_batch::{
    set_base_offset, split_batches, BatchBuilder, ProducerStamp, Record,
};

const TOPIC: &str = "backlog";
const PARTITIONS: i32 = 4;
/// More than the engine's default tail cache (64 MiB).
const BACKLOG_BYTES: usize = 72 << 20;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

/// A batch whose sizes and contents depend on (partition, i): misplaced, truncated or
/// shifted bytes cannot compare equal to another batch.
fn batch(p: i32, i: usize) -> Vec<u8> {
    let records = 1 + (i * 7 + p as usize) % 9;
    let value_len = 2_000 + ((p as usize * 31 + i * 17) % 13) * 9_000;
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

/// Produces batches round-robin over the partitions until the backlog holds
/// [`BACKLOG_BYTES`]; returns each partition's batches as stored (base offsets assigned).
fn fill(c: &mut Client) -> Vec<Vec<Bytes>> {
    let req = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
        .with_name(name(TOPIC))
        .with_num_partitions(PARTITIONS)
        .with_replication_factor(1)]);
    let resp: CreateTopicsResponse = c.call(7, &req);
    assert_eq!(resp.topics[0].error_code, 0);
    let mut want = vec![Vec::new(); PARTITIONS as usize];
    let mut total = 0;
    let mut i = 0;
    while total < BACKLOG_BYTES {
        for p in 0..PARTITIONS {
            let b = batch(p, i);
            let req = ProduceRequest::default()
                .with_acks(1)
                .with_timeout_ms(10_000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(name(TOPIC))
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

/// Fetches every partition from offset 0 to its high watermark (all partitions in each
/// request) and checks every batch byte for byte.
fn read_back(c: &mut Client, want: &[Vec<Bytes>], what: &str) {
    let mut next = vec![0i64; want.len()];
    let mut got = vec![0usize; want.len()];
    let mut fetches = 0;
    while got.iter().zip(want).any(|(g, w)| *g < w.len()) {
        fetches += 1;
        assert!(fetches < 10_000, "{what}: no progress");
        let parts = (0..PARTITIONS)
            .map(|p| {
                FetchPartition::default()
                    .with_partition(p)
                    .with_fetch_offset(next[p as usize])
                    .with_partition_max_bytes(3 << 20)
            })
            .collect();
        let req = FetchRequest::default()
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(8 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(name(TOPIC))
                .with_partitions(parts)]);
        let resp: FetchResponse = c.call(11, &req);
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
}

#[test]
fn a_backlog_larger_than_the_tail_cache_reads_back_byte_exact_in_every_mode() {
    let broker = Broker::start(&["--cores", "2", "--fetch-backlog-read", "readahead"]);
    let mut c = broker.client();
    let want = fill(&mut c);
    // Before a restart: the oldest batches were evicted from the tail cache (disk), the rest
    // come from memory.
    read_back(&mut c, &want, "readahead, before restart");
    drop(c);
    let (status, mut dir) = broker.stop();
    assert!(status.success());
    // After a restart the tail cache is empty: everything comes from disk.
    for mode in ["direct", "readahead"] {
        let broker = Broker::start_in(dir, &["--cores", "2", "--fetch-backlog-read", mode]);
        let mut c = broker.client();
        read_back(&mut c, &want, &format!("{mode}, after restart"));
        drop(c);
        let (status, d) = broker.stop();
        assert!(status.success());
        dir = d;
    }
}
