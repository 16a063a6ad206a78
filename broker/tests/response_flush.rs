//! Responses leave as soon as they are ready, in request order: a finished response is not
//! held in the connection's write buffer while a later request on the same connection is
//! still being handled.

mod common;

use bytes::Bytes;
use common::Broker;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use ringmq_wire::record_batch::{BatchBuilder, ProducerStamp, Record};
use std::time::{Duration, Instant};

/// How long the pipelined fetch may wait for data; the produce answer must come well before.
const FETCH_MAX_WAIT_MS: i32 = 30_000;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

fn produce_req(topic: &str, partition: i32) -> ProduceRequest {
    let mut b = BatchBuilder::new(64);
    b.push(&Record {
        value: Some(b"v"),
        ..Default::default()
    });
    ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(Bytes::from(b.build(ProducerStamp::NONE, 0))))])])
}

/// Catches a write loop that writes a finished response into its buffer and then awaits the
/// next request's handler before flushing: the produce answer would wait for the long poll
/// (here: until the read timeout fails the test).
#[test]
fn a_produce_answer_does_not_wait_behind_a_pipelined_long_poll() {
    let broker = Broker::start(&["--cores", "1", "--storage", "memory"]);
    let mut c = broker.client();
    let req = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
        .with_name(name("lp"))
        .with_num_partitions(2)
        .with_replication_factor(1)]);
    let created: CreateTopicsResponse = c.call(7, &req);
    assert_eq!(created.topics[0].error_code, 0);

    let produce_cid = c.send(9, &produce_req("lp", 0));
    let fetch = FetchRequest::default()
        .with_max_wait_ms(FETCH_MAX_WAIT_MS)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name("lp"))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(1)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let fetch_cid = c.send(12, &fetch);
    let sent = Instant::now();
    let (cid, resp): (i32, ProduceResponse) = c.recv(ApiKey::Produce, 9);
    let waited = sent.elapsed();
    assert_eq!(cid, produce_cid);
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 0);
    assert!(
        waited < Duration::from_millis(FETCH_MAX_WAIT_MS as u64 / 2),
        "the produce answer waited {waited:?}, behind the long poll"
    );

    // Data for the polled partition ends the long poll; its answer follows, in order.
    let mut other = broker.client();
    let _: ProduceResponse = other.call(9, &produce_req("lp", 1));
    let (cid, resp): (i32, FetchResponse) = c.recv(ApiKey::Fetch, 12);
    assert_eq!(cid, fetch_cid);
    let p = &resp.responses[0].partitions[0];
    assert_eq!((p.error_code, p.high_watermark), (0, 1));
}
