//! The real `ringmq` binary on a free port, driven over raw Kafka frames.

mod common;

use bytes::Bytes;
use common::{create_topic, fetch_req, name, Broker, Client};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use ringmq_wire::record_batch::{validate, BatchBuilder, ProducerStamp, Record};
use std::io::Write;
use std::time::{Duration, Instant};

fn batch(n: usize, stamp: ProducerStamp) -> Vec<u8> {
    let mut b = BatchBuilder::new(1024);
    for i in 0..n {
        let v = format!("value-{i}");
        b.push(&Record {
            key: Some(b"k"),
            value: Some(v.as_bytes()),
            headers: &[],
            timestamp_ms: 1_000 + i as i64,
        });
    }
    b.build(stamp, 0)
}

fn produce_req(topic: &str, partition: i32, records: Vec<u8>, acks: i16) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(Bytes::from(records)))])])
}

/// (error, base offset) of the single partition.
fn produce(c: &mut Client, topic: &str, partition: i32, records: Vec<u8>, acks: i16) -> (i16, i64) {
    let resp: ProduceResponse = c.call(9, &produce_req(topic, partition, records, acks));
    let p = &resp.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// Base offsets of the batches returned for one partition, with its error and high watermark.
fn fetched(resp: &FetchResponse) -> (i16, i64, Vec<i64>) {
    let p = &resp.responses[0].partitions[0];
    let records = p.records.clone().unwrap_or_default();
    let mut bases = Vec::new();
    for range in ringmq_wire::record_batch::split_batches(&records) {
        let h = validate(&records[range.unwrap()]).expect("served batches keep a valid CRC");
        bases.push(h.base_offset);
    }
    (p.error_code, p.high_watermark, bases)
}

#[test]
fn produce_and_fetch_across_cores_with_every_acks_setting() {
    let broker = Broker::start(&["--cores", "2", "--storage", "memory"]);
    let mut c = broker.client();
    create_topic(&mut c, "t", 4);
    for p in 0..4 {
        assert_eq!(
            produce(&mut c, "t", p, batch(3, ProducerStamp::NONE), 1),
            (0, 0)
        );
        assert_eq!(
            produce(&mut c, "t", p, batch(2, ProducerStamp::NONE), -1),
            (0, 3)
        );
    }
    // acks=0 gets no response: the next frame on the connection answers the Metadata request.
    c.send(9, &produce_req("t", 0, batch(1, ProducerStamp::NONE), 0));
    let cid = c.send(12, &MetadataRequest::default().with_topics(None));
    let (got, meta) = c.recv::<MetadataResponse>(ApiKey::Metadata, 12);
    assert_eq!(got, cid);
    let t = meta
        .topics
        .iter()
        .find(|t| t.name.as_ref().map(|n| n.as_str()) == Some("t"))
        .unwrap();
    assert_eq!(t.partitions.len(), 4);
    assert_ne!(t.topic_id, uuid::Uuid::nil());
    assert_eq!(t.topic_id.get_version_num(), 4);
    for p in 0..4 {
        let resp: FetchResponse = c.call(11, &fetch_req("t", p, 0, 0));
        let (err, hw, bases) = fetched(&resp);
        let expect_hw = if p == 0 { 6 } else { 5 };
        assert_eq!((err, hw), (0, expect_hw), "partition {p}");
        assert_eq!(&bases[..2], &[0, 3]);
    }
}

#[test]
fn fetch_inside_a_batch_returns_the_whole_batch_and_bad_offsets_are_errors() {
    let broker = Broker::start(&["--storage", "memory"]);
    let mut c = broker.client();
    create_topic(&mut c, "t", 1);
    produce(&mut c, "t", 0, batch(5, ProducerStamp::NONE), 1);
    produce(&mut c, "t", 0, batch(5, ProducerStamp::NONE), 1);
    let (err, hw, bases) = fetched(&c.call(11, &fetch_req("t", 0, 7, 0)));
    assert_eq!((err, hw, bases), (0, 10, vec![5]));
    let (err, _, _) = fetched(&c.call(11, &fetch_req("t", 0, 11, 0)));
    assert_eq!(err, 1, "OFFSET_OUT_OF_RANGE");
    let (err, _, _) = fetched(&c.call(11, &fetch_req("nope", 0, 0, 0)));
    assert_eq!(err, 3, "UNKNOWN_TOPIC_OR_PARTITION");
    // Flexible versions and topic ids (v13+) are encoded by hand too.
    let meta: MetadataResponse = c.call(12, &MetadataRequest::default().with_topics(None));
    let id = meta.topics[0].topic_id;
    let mut req = fetch_req("", 0, 0, 0);
    req.topics[0].topic_id = id;
    let resp: FetchResponse = c.call(16, &req);
    assert_eq!(resp.responses[0].topic_id, id);
    assert_eq!(fetched(&resp).2, vec![0, 5]);
}

#[test]
fn long_poll_waits_for_data_and_wakes_on_produce() {
    let broker = Broker::start(&["--cores", "2", "--storage", "memory"]);
    let mut admin = broker.client();
    create_topic(&mut admin, "lp", 2);
    let mut consumer = broker.client();
    // Nothing there: the fetch waits its max_wait_ms and comes back empty.
    let start = Instant::now();
    let (_, _, bases) = fetched(&consumer.call(11, &fetch_req("lp", 1, 0, 300)));
    assert!(bases.is_empty());
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "returned after {:?}",
        start.elapsed()
    );
    // A long wait is cut short by a produce from another connection.
    let cid = consumer.send(11, &fetch_req("lp", 1, 0, 15_000));
    let start = Instant::now();
    produce(&mut admin, "lp", 1, batch(2, ProducerStamp::NONE), 1);
    let (got, resp) = consumer.recv::<FetchResponse>(ApiKey::Fetch, 11);
    assert_eq!(got, cid);
    assert_eq!(fetched(&resp).2, vec![0]);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "woke after {:?}",
        start.elapsed()
    );
}

#[test]
fn bad_batches_and_unknown_partitions_get_kafka_errors() {
    let broker = Broker::start(&["--storage", "memory"]);
    let mut c = broker.client();
    create_topic(&mut c, "t", 1);
    let mut bad = batch(2, ProducerStamp::NONE);
    let last = bad.len() - 1;
    bad[last] ^= 0x40;
    assert_eq!(produce(&mut c, "t", 0, bad, 1).0, 2, "CORRUPT_MESSAGE");
    let mut old_magic = batch(1, ProducerStamp::NONE);
    old_magic[16] = 1;
    assert_eq!(
        produce(&mut c, "t", 0, old_magic, 1).0,
        43,
        "UNSUPPORTED_FOR_MESSAGE_FORMAT"
    );
    assert_eq!(
        produce(&mut c, "t", 5, batch(1, ProducerStamp::NONE), 1).0,
        3
    );
    assert_eq!(
        produce(&mut c, "absent", 0, batch(1, ProducerStamp::NONE), 1).0,
        3
    );
    assert_eq!(
        produce(&mut c, "t", 0, batch(1, ProducerStamp::NONE), 7).0,
        21,
        "INVALID_REQUIRED_ACKS"
    );
    // Nothing bad was stored.
    let (_, hw, _) = fetched(&c.call(11, &fetch_req("t", 0, 0, 0)));
    assert_eq!(hw, 0);
}

#[test]
fn metadata_auto_creates_topics_unless_disabled() {
    let broker = Broker::start(&["--storage", "memory", "--default-partitions", "3"]);
    let mut c = broker.client();
    let req = MetadataRequest::default()
        .with_allow_auto_topic_creation(true)
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(name("auto")))
        ]));
    let resp: MetadataResponse = c.call(12, &req);
    assert_eq!(
        (resp.topics[0].error_code, resp.topics[0].partitions.len()),
        (0, 3)
    );
    let off = Broker::start(&["--storage", "memory", "--auto-create-topics", "false"]);
    let resp: MetadataResponse = off.client().call(12, &req);
    assert_eq!(resp.topics[0].error_code, 3);
}

#[test]
fn idempotent_producer_dedups_retries_and_refuses_gaps() {
    let broker = Broker::start(&["--cores", "2", "--storage", "memory"]);
    let mut c = broker.client();
    create_topic(&mut c, "idem", 2);
    let init: InitProducerIdResponse = c.call(
        4,
        &InitProducerIdRequest::default().with_transaction_timeout_ms(-1),
    );
    assert_eq!(init.error_code, 0);
    let pid = init.producer_id.0;
    let again: InitProducerIdResponse = c.call(4, &InitProducerIdRequest::default());
    assert_ne!(
        again.producer_id.0, pid,
        "producer ids are never handed out twice"
    );
    let stamp = |seq| ProducerStamp {
        producer_id: pid,
        producer_epoch: init.producer_epoch,
        base_sequence: seq,
    };
    let first = batch(3, stamp(0));
    assert_eq!(produce(&mut c, "idem", 1, first.clone(), -1), (0, 0));
    assert_eq!(produce(&mut c, "idem", 1, batch(2, stamp(3)), -1), (0, 3));
    // A retry of the first batch succeeds with its original offset and stores nothing.
    assert_eq!(produce(&mut c, "idem", 1, first, -1), (0, 0));
    assert_eq!(
        produce(&mut c, "idem", 1, batch(1, stamp(9)), -1).0,
        45,
        "OUT_OF_ORDER_SEQUENCE_NUMBER"
    );
    let (_, hw, _) = fetched(&c.call(11, &fetch_req("idem", 1, 0, 0)));
    assert_eq!(hw, 5);
}

#[test]
fn api_versions_of_an_unknown_version_answers_error_35_in_v0() {
    let broker = Broker::start(&["--storage", "memory"]);
    let mut c = broker.client();
    let mut frame =
        ringmq_wire::frame::encode_request(77, "x", 3, &ApiVersionsRequest::default()).unwrap();
    frame[6..8].copy_from_slice(&42i16.to_be_bytes());
    c.stream.write_all(&frame).unwrap();
    let (cid, resp) = c.recv::<ApiVersionsResponse>(ApiKey::ApiVersions, 0);
    assert_eq!((cid, resp.error_code), (77, 35));
    let produce = resp.api_keys.iter().find(|k| k.api_key == 0).unwrap();
    assert_eq!(produce.min_version, 0);
    // The connection stays usable.
    let ok: ApiVersionsResponse = c.call(3, &ApiVersionsRequest::default());
    assert_eq!(ok.error_code, 0);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let broker = Broker::start(&["--cores", "2", "--storage", "memory"]);
    let mut c = broker.client();
    create_topic(&mut c, "p", 2);
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(if i % 2 == 0 {
            (
                ApiKey::Produce,
                9,
                c.send(
                    9,
                    &produce_req("p", i % 2, batch(1, ProducerStamp::NONE), 1),
                ),
            )
        } else {
            (
                ApiKey::Metadata,
                12,
                c.send(12, &MetadataRequest::default().with_topics(None)),
            )
        });
    }
    for (key, v, cid) in sent {
        let (got, _) = c.recv_raw(key, v).unwrap();
        assert_eq!(got, cid);
    }
}

/// Frames that used to be able to kill or wedge a broker. Each gets its connection closed (or
/// a Kafka error); afterwards another client is served normally and the process is alive.
#[test]
fn garbage_truncated_and_crafted_frames_leave_the_broker_serving() {
    let mut broker = Broker::start(&[
        "--cores",
        "2",
        "--storage",
        "memory",
        "--max-frame-bytes",
        "65536",
    ]);
    let evil: Vec<Vec<u8>> = vec![
        // Size above --max-frame-bytes: refused before allocating.
        [&(1i32 << 30).to_be_bytes()[..], b"xxxx"].concat(),
        // Negative size.
        (-5i32).to_be_bytes().to_vec(),
        // Unknown API key.
        frame_of(&[0x7f, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]),
        // Header too short.
        frame_of(&[0, 3, 0]),
        // Metadata v1 whose topics array claims 2^31-1 entries in a 14-byte frame: the codec
        // pre-allocates from the length (hundreds of GiB) before noticing the frame is short.
        frame_of(&[0, 3, 0, 1, 0, 0, 0, 9, 0, 0, 0x7f, 0xff, 0xff, 0xff]),
        // The same with a compact (flexible, Metadata v12) array length of 2^32-2.
        frame_of(&[
            0, 3, 0, 12, 0, 0, 0, 9, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f,
        ]),
        // Fetch v11 with a huge topics array.
        frame_of(&[
            0, 1, 0, 11, 0, 0, 0, 9, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
            1, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff,
        ]),
        // Produce v0: advertised, refused (message format 0).
        frame_of(&[0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 0]),
        // Random bytes.
        (0..200u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
    ];
    for bytes in &evil {
        let mut c = broker.client();
        c.stream.write_all(bytes).unwrap();
        assert!(
            c.closed_by_peer(),
            "connection should be closed for {:02x?}",
            &bytes[..bytes.len().min(16)]
        );
    }
    // Truncated frames: the client goes away mid-frame.
    for cut in [2usize, 4, 9] {
        let mut c = broker.client();
        let frame =
            ringmq_wire::frame::encode_request(1, "x", 12, &MetadataRequest::default()).unwrap();
        c.stream.write_all(&frame[..cut]).unwrap();
        drop(c);
    }
    assert!(broker.alive(), "broker died");
    let mut c = broker.client();
    let resp: ApiVersionsResponse = c.call(3, &ApiVersionsRequest::default());
    assert_eq!(resp.error_code, 0);
    let meta: MetadataResponse = c.call(12, &MetadataRequest::default().with_topics(None));
    assert_eq!(meta.brokers.len(), 1);
}

fn frame_of(body: &[u8]) -> Vec<u8> {
    [&(body.len() as i32).to_be_bytes()[..], body].concat()
}

#[test]
fn data_topics_and_producer_ids_survive_a_clean_restart() {
    let broker = Broker::start(&["--cores", "2"]);
    let mut c = broker.client();
    create_topic(&mut c, "keep", 3);
    for p in 0..3 {
        assert_eq!(
            produce(&mut c, "keep", p, batch(4, ProducerStamp::NONE), -1),
            (0, 0)
        );
    }
    let pid = c
        .call::<_, InitProducerIdResponse>(4, &InitProducerIdRequest::default())
        .producer_id
        .0;
    let stamp = |seq| ProducerStamp {
        producer_id: pid,
        producer_epoch: 0,
        base_sequence: seq,
    };
    create_topic(&mut c, "idem", 1);
    assert_eq!(produce(&mut c, "idem", 0, batch(2, stamp(0)), -1), (0, 0));
    assert_eq!(produce(&mut c, "idem", 0, batch(2, stamp(2)), -1), (0, 2));
    let meta: MetadataResponse = c.call(12, &MetadataRequest::default().with_topics(None));
    drop(c);
    let (status, dir) = broker.stop();
    assert!(status.success(), "SIGTERM should exit 0, got {status}");
    let broker = Broker::start_in(dir, &["--cores", "2"]);
    let mut c = broker.client();
    let again: MetadataResponse = c.call(12, &MetadataRequest::default().with_topics(None));
    assert_eq!(again.topics, meta.topics, "same topics, partitions and ids");
    for p in 0..3 {
        let (err, hw, bases) = fetched(&c.call(11, &fetch_req("keep", p, 0, 0)));
        assert_eq!((err, hw, bases), (0, 4, vec![0]));
    }
    let pid2 = c
        .call::<_, InitProducerIdResponse>(4, &InitProducerIdRequest::default())
        .producer_id
        .0;
    // Idempotence state survives: a retry is still a duplicate, a gap still refused.
    assert_eq!(produce(&mut c, "idem", 0, batch(2, stamp(2)), -1), (0, 2));
    assert_eq!(produce(&mut c, "idem", 0, batch(1, stamp(7)), -1).0, 45);
    assert_eq!(produce(&mut c, "idem", 0, batch(1, stamp(4)), -1), (0, 4));
    assert!(
        pid2 > pid,
        "producer id {pid2} reissued after restart (had {pid})"
    );
}

/// Fetches reserve their response size against the per-connection in-flight budget, in
/// request order: many pipelined fetches on a small budget all complete (no deadlock) and in
/// order, each capped to what fits.
#[test]
fn pipelined_fetches_on_a_small_in_flight_budget_all_complete_in_order() {
    let broker = Broker::start(&[
        "--storage",
        "memory",
        "--max-inflight-bytes-per-connection",
        "1048576",
        "--max-frame-bytes",
        "1048576",
    ]);
    let mut c = broker.client();
    create_topic(&mut c, "big", 1);
    let value = vec![7u8; 100_000];
    for _ in 0..8 {
        let mut b = BatchBuilder::new(110_000);
        b.push(&Record {
            key: None,
            value: Some(&value),
            headers: &[],
            timestamp_ms: 1,
        });
        assert_eq!(
            produce(&mut c, "big", 0, b.build(ProducerStamp::NONE, 0), 1).0,
            0
        );
    }
    let cids: Vec<i32> = (0..30)
        .map(|_| c.send(11, &fetch_req("big", 0, 0, 0)))
        .collect();
    for cid in cids {
        let (got, resp) = c.recv::<FetchResponse>(ApiKey::Fetch, 11);
        assert_eq!(got, cid);
        let bytes = resp.responses[0].partitions[0]
            .records
            .as_ref()
            .map_or(0, |r| r.len());
        assert!(
            (100_000..=600_000).contains(&bytes),
            "fetch returned {bytes} bytes"
        );
    }
}

#[test]
fn connections_above_the_limit_are_closed() {
    let broker = Broker::start(&["--storage", "memory", "--max-connections", "2"]);
    let mut a = broker.client();
    let mut b = broker.client();
    let _: ApiVersionsResponse = a.call(3, &ApiVersionsRequest::default());
    let _: ApiVersionsResponse = b.call(3, &ApiVersionsRequest::default());
    let mut third = broker.client();
    assert!(third.closed_by_peer());
    drop(a);
    // The freed slot is usable again (the count drops once the broker sees the close).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut d = broker.client();
        d.send(3, &ApiVersionsRequest::default());
        if d.recv_raw(ApiKey::ApiVersions, 3).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
    }
}

/// Group requests reach the coordinator of the core that owns each group; batched requests
/// (OffsetFetch v8) are split per core and merged in order; offsets survive a restart.
#[test]
fn groups_on_several_cores_join_commit_and_fetch_offsets() {
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_fetch_request::{
        OffsetFetchRequestGroup, OffsetFetchRequestTopics,
    };
    let broker = Broker::start(&["--cores", "2"]);
    let mut c = broker.client();
    create_topic(&mut c, "gt", 2);
    let groups = ["alpha", "beta", "gamma", "delta", "epsilon"];
    let owners: std::collections::BTreeSet<usize> = groups
        .iter()
        .map(|g| ringmq_broker::group::group_core(g, 2))
        .collect();
    assert_eq!(owners.len(), 2, "the test needs groups on both cores");
    let gid = |g: &str| GroupId(StrBytes::from_string(g.to_owned()));
    for (i, g) in groups.iter().enumerate() {
        let join = JoinGroupRequest::default()
            .with_group_id(gid(g))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(10_000)
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str("range"))
                .with_metadata(Bytes::from_static(b"m"))]);
        let first: JoinGroupResponse = c.call(5, &join);
        let member = first.member_id.clone();
        let joined: JoinGroupResponse = if first.error_code == 79 {
            c.call(5, &join.clone().with_member_id(member.clone()))
        } else {
            first
        };
        assert_eq!(joined.error_code, 0, "join {g}");
        let sync = SyncGroupRequest::default()
            .with_group_id(gid(g))
            .with_generation_id(joined.generation_id)
            .with_member_id(joined.member_id.clone());
        let synced: SyncGroupResponse = c.call(3, &sync);
        assert_eq!(synced.error_code, 0, "sync {g}");
        let commit = OffsetCommitRequest::default()
            .with_group_id(gid(g))
            .with_generation_id_or_member_epoch(joined.generation_id)
            .with_member_id(joined.member_id.clone())
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(name("gt"))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(1)
                    .with_committed_offset(100 + i as i64)])]);
        let committed: OffsetCommitResponse = c.call(8, &commit);
        assert_eq!(
            committed.topics[0].partitions[0].error_code, 0,
            "commit {g}"
        );
    }
    let (_, dir) = broker.stop();
    let broker = Broker::start_in(dir, &["--cores", "2"]);
    let mut c = broker.client();
    let fetch = OffsetFetchRequest::default().with_groups(
        groups
            .iter()
            .rev()
            .map(|g| {
                OffsetFetchRequestGroup::default()
                    .with_group_id(gid(g))
                    .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                        .with_name(name("gt"))
                        .with_partition_indexes(vec![1])]))
            })
            .collect(),
    );
    let resp: OffsetFetchResponse = c.call(8, &fetch);
    let got: Vec<(String, i64)> = resp
        .groups
        .iter()
        .map(|g| {
            (
                g.group_id.to_string(),
                g.topics[0].partitions[0].committed_offset,
            )
        })
        .collect();
    let want: Vec<(String, i64)> = groups
        .iter()
        .enumerate()
        .rev()
        .map(|(i, g)| (g.to_string(), 100 + i as i64))
        .collect();
    assert_eq!(got, want);
}

/// ListOffsets by timestamp answers the first record at or after the timestamp, inside plain
/// and compressed batches alike (not the start of the batch holding it); max timestamp (-3)
/// answers the record holding the largest timestamp, wherever it is.
#[test]
fn list_offsets_by_timestamp_and_max_timestamp_find_the_record_inside_plain_and_gzip_batches() {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::records::{
        Compression, Record as KRecord, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let broker = Broker::start(&["--cores", "2"]);
    let mut c = broker.client();
    create_topic(&mut c, "ts", 1);
    // Offsets 0..5 plain, timestamps 1000..1004; offsets 5..10 gzip, timestamps 2000..2004.
    assert_eq!(
        produce(&mut c, "ts", 0, batch(5, ProducerStamp::NONE), 1),
        (0, 0)
    );
    let records: Vec<KRecord> = (0..5)
        .map(|i| KRecord {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: -1,
            timestamp: 2000 + i,
            key: None,
            value: Some(Bytes::from(vec![b'z'; 300])),
            headers: Default::default(),
        })
        .collect();
    let mut gz = bytes::BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::Gzip,
    };
    RecordBatchEncoder::encode(&mut gz, &records, &options).unwrap();
    assert_eq!(produce(&mut c, "ts", 0, gz.to_vec(), 1), (0, 5));
    // Offsets 10..15 plain again, timestamps back at 1000..1004: the largest timestamp is
    // now inside the gzip batch, not at the end.
    assert_eq!(
        produce(&mut c, "ts", 0, batch(5, ProducerStamp::NONE), 1),
        (0, 10)
    );
    for (ts, want_offset, want_ts) in [
        (1002, 2, 1002),
        (1500, 5, 2000),
        (2003, 8, 2003),
        (9999, -1, -1),
        // -3: the record with the largest timestamp.
        (-3, 9, 2004),
    ] {
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(name("ts"))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(ts)])]);
        let resp: ListOffsetsResponse = c.call(7, &req);
        let p = &resp.topics[0].partitions[0];
        assert_eq!(
            (p.error_code, p.offset, p.timestamp),
            (0, want_offset, want_ts),
            "timestamp {ts}"
        );
    }
}

/// Topics created with message.timestamp.type=LogAppendTime store batches stamped with the
/// broker's time (attribute bit set, CRC still valid) and report it in the produce response.
#[test]
fn log_append_time_topics_stamp_batches_with_the_broker_clock() {
    use kafka_protocol::messages::create_topics_request::CreatableTopicConfig;
    let broker = Broker::start(&["--storage", "memory"]);
    let mut c = broker.client();
    let req = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
        .with_name(name("lat"))
        .with_num_partitions(1)
        .with_replication_factor(1)
        .with_configs(vec![CreatableTopicConfig::default()
            .with_name(StrBytes::from_static_str("message.timestamp.type"))
            .with_value(Some(StrBytes::from_static_str("LogAppendTime")))])]);
    let created: CreateTopicsResponse = c.call(7, &req);
    assert_eq!(created.topics[0].error_code, 0);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let resp: ProduceResponse = c.call(9, &produce_req("lat", 0, batch(3, ProducerStamp::NONE), 1));
    let p = &resp.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 0);
    assert!(
        p.log_append_time_ms >= before,
        "log append time {}",
        p.log_append_time_ms
    );
    let fetched: FetchResponse = c.call(11, &fetch_req("lat", 0, 0, 0));
    let records = fetched.responses[0].partitions[0].records.clone().unwrap();
    let h = validate(&records).expect("CRC recomputed");
    assert!(h.is_log_append_time());
    assert_eq!(h.max_timestamp, p.log_append_time_ms);
}

/// The defaults use a relative data directory (./ringmq-data): it must work with the engine.
#[test]
fn relative_data_dir_works_and_sigterm_exits_zero() {
    use std::io::BufRead;
    let cwd = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .current_dir(cwd.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--segment-size-bytes",
            "16777216",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("ringmq listening on 127.0.0.1:"),
        "{line:?}"
    );
    assert!(cwd.path().join("ringmq-data/shard-0").is_dir());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}
