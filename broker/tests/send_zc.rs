//! `--fetch-send zc` through the real binary on two cores: batches read back byte-exact from
//! the tail cache (in-memory `Bytes`, SENDMSG_ZC) and, after a restart, from the backlog
//! (`--fetch-backlog-read sendfile` file ranges, read into registered slots, SEND_ZC), with
//! pipelined small responses between the zero-copy ones; consumers that close their
//! connection in the middle of a zero-copy response.

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

const TOPIC: &str = "zc";
const PARTITIONS: i32 = 4;
/// Less than the engine's tail cache (64 MiB): before a restart every fetch is served from
/// memory.
const DATA_BYTES: usize = 40 << 20;
const ARGS: [&str; 6] = [
    "--cores",
    "2",
    "--fetch-send",
    "zc",
    "--fetch-backlog-read",
    "sendfile",
];

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

/// A batch whose size (a few KiB to ~300 KiB, so responses mix pieces below and above the
/// zero-copy thresholds) and contents depend on (partition, i).
fn batch(p: i32, i: usize) -> Vec<u8> {
    let records = 1 + (i * 5 + p as usize) % 4;
    let value_len = 1_000 + ((p as usize * 37 + i * 13) % 11) * 7_000 * (1 + i % 3);
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

/// Produces round-robin until [`DATA_BYTES`]; returns each partition's batches as stored.
fn fill(c: &mut Client) -> Vec<Vec<Bytes>> {
    let req = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
        .with_name(name(TOPIC))
        .with_num_partitions(PARTITIONS)
        .with_replication_factor(1)]);
    let resp: CreateTopicsResponse = c.call(7, &req);
    assert_eq!(resp.topics[0].error_code, 0);
    let mut want = vec![Vec::new(); PARTITIONS as usize];
    let (mut total, mut i) = (0, 0);
    while total < DATA_BYTES {
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

/// A fetch of every partition from `next`.
fn fetch_from(next: &[i64], partition_max_bytes: i32, max_bytes: i32) -> FetchRequest {
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
            .with_topic(name(TOPIC))
            .with_partitions(parts)])
}

/// Checks a fetch response's batches against `want`, advancing `next` and `got`.
fn check(
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

/// Reads every partition back byte for byte. Each round pipelines a large fetch, a small
/// request (ApiVersions, written by the executor through its buffer) and a fetch of the
/// same offsets: responses must arrive complete and in request order.
fn read_back(c: &mut Client, want: &[Vec<Bytes>], what: &str) {
    let mut next = vec![0i64; want.len()];
    let mut got = vec![0usize; want.len()];
    let mut rounds = 0;
    while got.iter().zip(want).any(|(g, w)| *g < w.len()) {
        rounds += 1;
        assert!(rounds < 10_000, "{what}: no progress");
        let req = fetch_from(&next, 3 << 20, 8 << 20);
        let first = c.send(11, &req);
        let middle = c.send(3, &ApiVersionsRequest::default());
        let again = c.send(11, &req);
        let (cid, a): (i32, FetchResponse) = c.recv(ApiKey::Fetch, 11);
        assert_eq!(cid, first, "{what}: response order");
        let (cid, v): (i32, ApiVersionsResponse) = c.recv(ApiKey::ApiVersions, 3);
        assert_eq!((cid, v.error_code), (middle, 0), "{what}: response order");
        let (cid, b): (i32, FetchResponse) = c.recv(ApiKey::Fetch, 11);
        assert_eq!(cid, again, "{what}: response order");
        let (mut next_b, mut got_b) = (next.clone(), got.clone());
        check(&a, want, &mut next, &mut got, what);
        check(&b, want, &mut next_b, &mut got_b, what);
        assert_eq!(
            got, got_b,
            "{what}: the same fetch twice returned different batches"
        );
    }
}

/// io_uring instances `pid` has open (glommio's, plus one per pool thread that sent with
/// SEND_ZC).
fn rings(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|t| t.to_string_lossy().contains("io_uring"))
        .count()
}

#[test]
fn zero_copy_sends_read_back_byte_exact_from_the_tail_and_the_backlog() {
    let broker = Broker::start(&ARGS);
    let mut c = broker.client();
    let want = fill(&mut c);
    let before = rings(broker.child.id());
    read_back(&mut c, &want, "zc, tail cache");
    // Catches a zc mode that silently copies: pool threads created their rings.
    assert!(
        rings(broker.child.id()) > before,
        "no SEND_ZC ring was created"
    );
    drop(c);
    let (status, dir) = broker.stop();
    assert!(status.success());
    // After a restart the tail cache is empty: file ranges, read into slots, SEND_ZC.
    let broker = Broker::start_in(dir, &ARGS);
    let mut c = broker.client();
    let before = rings(broker.child.id());
    read_back(&mut c, &want, "zc, backlog");
    assert!(
        rings(broker.child.id()) > before,
        "no SEND_ZC ring was created"
    );
    drop(c);
    let (status, _) = broker.stop();
    assert!(status.success());
}

#[test]
fn consumers_closing_mid_zero_copy_send_leave_the_broker_serving_others() {
    // Catches: a pool thread stuck on (or its pinned budget held by) a connection that is
    // gone, SIGPIPE, a kernel error turned into a panic, a failed send leaving the
    // connection's write loop or the core stuck; in both the tail (bytes) and backlog (file
    // ranges) paths.
    let broker = Broker::start(&ARGS);
    let mut c = broker.client();
    let want = fill(&mut c);
    drop(c);
    let mut broker = broker;
    for phase in ["tail", "backlog"] {
        // One consumer stops reading mid-response and stays connected: its send holds a pool
        // thread (until the stall timeout) and pinned pages, and must hold nothing else.
        let mut staller = broker.client();
        staller.send(
            11,
            &fetch_from(&[0; PARTITIONS as usize], 16 << 20, 60 << 20),
        );
        let mut size = [0u8; 4];
        std::io::Read::read_exact(&mut staller.stream, &mut size).unwrap();
        for round in 0..8 {
            let mut quitter = broker.client();
            quitter.send(
                11,
                &fetch_from(&[0; PARTITIONS as usize], 16 << 20, 60 << 20),
            );
            // Tens of MiB cannot fit the socket buffers: the broker is mid-send when the
            // consumer goes.
            let mut size = [0u8; 4];
            std::io::Read::read_exact(&mut quitter.stream, &mut size).unwrap();
            let size = i32::from_be_bytes(size);
            assert!(
                size > 16 << 20,
                "{phase} round {round}: response of {size} bytes"
            );
            drop(quitter);
        }
        let mut c = broker.client();
        read_back(
            &mut c,
            &want,
            &format!("zc {phase}, after consumers left mid-response"),
        );
        assert!(broker.alive());
        drop(staller);
        drop(c);
        let (status, dir) = broker.stop();
        assert!(status.success());
        broker = Broker::start_in(dir, &ARGS);
    }
    let (status, _) = broker.stop();
    assert!(status.success());
}
