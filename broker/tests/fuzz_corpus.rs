//! Replays the request-decoder fuzz corpus (`broker/fuzz/corpus/request_decoder/`) through the
//! same function the fuzz target drives, so a plain `cargo test` keeps the corpus meaningful.
//! Files named `ok-*` must decode; `bad-*` must be refused; every file must return (no panic,
//! no abort: this binary installs the broker's allocator, as the `ringmq` binary does).

use bytes::Bytes;
use ringmq_broker::alloc::LazyHugeAlloc;
use ringmq_broker::decode::decode_request;
use std::path::PathBuf;

#[global_allocator]
static ALLOCATOR: LazyHugeAlloc = LazyHugeAlloc;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/request_decoder")
}

#[test]
fn every_corpus_file_decodes_or_is_refused_without_panicking() {
    let mut seen = 0;
    for entry in std::fs::read_dir(corpus_dir()).expect("corpus directory") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let result = decode_request(Bytes::from(data.clone()));
        if name.starts_with("ok-") {
            assert!(result.is_ok(), "{name}: {:?}", result.err());
        } else if name.starts_with("bad-") {
            assert!(result.is_err(), "{name} decoded");
        }
        // Every prefix of a corpus file is a truncated frame: it must be refused, not crash.
        for cut in (0..data.len()).step_by(7) {
            let _ = decode_request(Bytes::copy_from_slice(&data[..cut]));
        }
        seen += 1;
    }
    assert!(seen >= 20, "corpus has only {seen} files");
}

/// A cheap stand-in for the fuzzer under `cargo test`: deterministic mutations of every corpus
/// file (bit flips, byte sets to 0x00/0x7f/0xff, truncations, duplications) through the decoder.
/// Any panic or abort fails the test.
#[test]
fn mutated_corpus_files_never_crash_the_decoder() {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut decoded = 0usize;
    for entry in std::fs::read_dir(corpus_dir()).expect("corpus directory") {
        let seed = std::fs::read(entry.unwrap().path()).unwrap();
        if seed.is_empty() {
            continue;
        }
        for _ in 0..1500 {
            let mut data = seed.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % data.len().max(1);
                match next() % 6 {
                    0 => data[at] ^= 1 << (next() % 8),
                    1 => data[at] = 0xff,
                    2 => data[at] = 0x7f,
                    3 => data[at] = 0,
                    4 => data.truncate(at.max(1)),
                    _ => {
                        let tail = data[at..].to_vec();
                        data.extend_from_slice(&tail);
                    }
                }
                if data.is_empty() {
                    break;
                }
            }
            if decode_request(Bytes::from(data)).is_ok() {
                decoded += 1;
            }
        }
    }
    // Some mutations still decode (e.g. a changed client id): the decoder is exercised past
    // the header, not only refusing everything.
    assert!(decoded > 100, "only {decoded} mutated frames decoded");
}

/// Writes the seed corpus (`cargo test -p ringmq-broker --test fuzz_corpus -- --ignored`).
#[test]
#[ignore]
fn regenerate_seed_corpus() {
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::{Request, StrBytes};
    use ringmq_wire::record_batch::{BatchBuilder, ProducerStamp, Record};

    fn put<R: Request>(name: &str, version: i16, body: &R) {
        let mut f = ringmq_wire::frame::encode_request(1, "seed", version, body).unwrap();
        let _ = f.split_to(4);
        std::fs::write(corpus_dir().join(name), &f[..]).unwrap();
    }
    let topic = || TopicName(StrBytes::from_static_str("seed-topic"));
    let mut b = BatchBuilder::new(128);
    b.push(&Record {
        key: Some(b"k"),
        value: Some(b"v"),
        headers: &[],
        timestamp_ms: 1,
    });
    let records = Bytes::from(b.build(ProducerStamp::NONE, 0));
    std::fs::create_dir_all(corpus_dir()).unwrap();
    for v in [0i16, 3, 4] {
        put(
            &format!("ok-api-versions-v{v}"),
            v,
            &ApiVersionsRequest::default(),
        );
    }
    for v in [1i16, 4, 9, 12] {
        let req = MetadataRequest::default().with_topics(Some(vec![
            metadata_request::MetadataRequestTopic::default().with_name(Some(topic())),
        ]));
        put(&format!("ok-metadata-v{v}"), v, &req);
    }
    for v in [3i16, 8, 9, 11] {
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(topic())
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(records.clone())),
                ])]);
        put(&format!("ok-produce-v{v}"), v, &req);
    }
    for v in [4i16, 11, 12, 13, 16] {
        let req = FetchRequest::default()
            .with_max_wait_ms(100)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(if v < 13 { topic() } else { Default::default() })
                .with_partitions(vec![
                    fetch_request::FetchPartition::default().with_partition_max_bytes(1024)
                ])]);
        put(&format!("ok-fetch-v{v}"), v, &req);
    }
    for v in [1i16, 7] {
        let req = ListOffsetsRequest::default().with_topics(vec![
            list_offsets_request::ListOffsetsTopic::default()
                .with_name(topic())
                .with_partitions(vec![
                    list_offsets_request::ListOffsetsPartition::default().with_timestamp(-1)
                ]),
        ]);
        put(&format!("ok-list-offsets-v{v}"), v, &req);
    }
    put(
        "ok-create-topics-v7",
        7,
        &CreateTopicsRequest::default().with_topics(vec![
            create_topics_request::CreatableTopic::default()
                .with_name(topic())
                .with_num_partitions(3)
                .with_replication_factor(1),
        ]),
    );
    put(
        "ok-init-producer-id-v4",
        4,
        &InitProducerIdRequest::default(),
    );
    put(
        "ok-find-coordinator-v4",
        4,
        &FindCoordinatorRequest::default()
            .with_coordinator_keys(vec![StrBytes::from_static_str("g")]),
    );
    put(
        "ok-join-group-v5",
        5,
        &JoinGroupRequest::default().with_group_id(GroupId(StrBytes::from_static_str("g"))),
    );
    put(
        "ok-offset-commit-v8",
        8,
        &OffsetCommitRequest::default().with_group_id(GroupId(StrBytes::from_static_str("g"))),
    );
    put("ok-offset-fetch-v8", 8, &OffsetFetchRequest::default());
    put(
        "ok-describe-configs-v4",
        4,
        &DescribeConfigsRequest::default(),
    );
    put("ok-heartbeat-v4", 4, &HeartbeatRequest::default());
    // Crafted: huge array lengths in tiny frames (the allocation trap), unknown key/version.
    let write = |name: &str, bytes: &[u8]| std::fs::write(corpus_dir().join(name), bytes).unwrap();
    write(
        "bad-metadata-v1-huge-array",
        &[0, 3, 0, 1, 0, 0, 0, 9, 0, 0, 0x7f, 0xff, 0xff, 0xff],
    );
    write(
        "bad-metadata-v12-huge-compact-array",
        &[
            0, 3, 0, 12, 0, 0, 0, 9, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f,
        ],
    );
    write("bad-unknown-api-key", &[0x7f, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]);
    write("bad-api-versions-v99", &[0, 18, 0, 99, 0, 0, 0, 1, 0, 0]);
    write(
        "bad-produce-v0",
        &[0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 0],
    );
    write("bad-short-header", &[0, 3, 0]);
}
