//! The real `ringmq` binary compacts its internal logs online: the metadata log after more than
//! `META_COMPACT_EVENTS` events, the group log after `COMPACT_MIN_RECORDS` records; after a
//! restart the state is the acknowledged one, replayed from the snapshots.

mod common;

use bytes::Bytes;
use common::{create_topic, fetch_req, name, Client};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use ringmq_broker::group::compact::COMPACT_MIN_RECORDS;
use ringmq_broker::metadata::META_COMPACT_EVENTS;
use ringmq_wire::record_batch::{BatchBuilder, ProducerStamp, Record};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for a log line before failing.
const LOG_WAIT: Duration = Duration::from_secs(60);
/// Partitions of the topic the group commits to: `COMPACT_MIN_RECORDS / WIDE` commits of every
/// partition reach the group log's threshold.
const WIDE: i32 = 1000;

/// A broker whose stderr (its tracing output) the test reads.
struct Broker {
    child: Child,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Broker {
    fn start(dir: &std::path::Path) -> Broker {
        // RINGMQ_BIN: another build of the broker (a release build for the measurement).
        let binary =
            std::env::var("RINGMQ_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ringmq").into());
        let mut command = Command::new(binary);
        command
            .args(["--cores", "1", "--segment-size-bytes", "16777216"])
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped());
        let mut child = common::spawn(command, dir);
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(without_ansi(&line));
            }
        });
        let addr = common::listening_addr(&mut child);
        Broker { child, addr, lines }
    }

    /// The first log line containing `text`, waiting for it.
    fn wait_for_line(&self, text: &str) -> String {
        let deadline = Instant::now() + LOG_WAIT;
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| l.contains(text)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {text:?}; log:\n{}",
                self.lines.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(mut self) {
        // SAFETY: signalling our own child process by its id.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert!(self.child.wait().unwrap().success(), "SIGTERM exits 0");
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn produce(c: &mut Client, topic: &str, records: usize) -> (i16, i64) {
    let mut b = BatchBuilder::new(1024);
    for i in 0..records {
        b.push(&Record {
            key: None,
            value: Some(format!("{topic}-{i}").as_bytes()),
            headers: &[],
            timestamp_ms: 1_000,
        });
    }
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(b.build(ProducerStamp::NONE, 0))))])]);
    let resp: ProduceResponse = c.call(9, &req);
    let p = &resp.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// (error, high watermark) of partition 0 of `topic`, fetched from offset 0.
fn fetch(c: &mut Client, topic: &str) -> (i16, i64) {
    let resp: FetchResponse = c.call(11, &fetch_req(topic, 0, 0, 0));
    let p = &resp.responses[0].partitions[0];
    (p.error_code, p.high_watermark)
}

fn init_producer_id(c: &mut Client) -> i64 {
    let resp: InitProducerIdResponse = c.call(4, &InitProducerIdRequest::default());
    assert_eq!(resp.error_code, 0);
    resp.producer_id.0
}

/// A simple (generation -1) commit of `offset` for each of `partitions` of "wide".
fn commit(c: &mut Client, partitions: &[i32], offset: i64) {
    commit_to(c, "g", "wide", partitions, offset);
}

fn commit_to(c: &mut Client, group: &str, topic: &str, partitions: &[i32], offset: i64) {
    let req = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(name(topic))
            .with_partitions(
                partitions
                    .iter()
                    .map(|p| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(*p)
                            .with_committed_offset(offset)
                    })
                    .collect(),
            )]);
    let resp: OffsetCommitResponse = c.call(8, &req);
    assert!(resp.topics[0].partitions.iter().all(|p| p.error_code == 0));
}

fn committed(c: &mut Client) -> Vec<i64> {
    let req = OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
        .with_group_id(GroupId(StrBytes::from_static_str("g")))
        .with_topics(Some(vec![OffsetFetchRequestTopics::default()
            .with_name(name("wide"))
            .with_partition_indexes((0..WIDE).collect())]))]);
    let resp: OffsetFetchResponse = c.call(8, &req);
    resp.groups[0].topics[0]
        .partitions
        .iter()
        .map(|p| p.committed_offset)
        .collect()
}

/// `line` without terminal colour sequences (`ESC [ ... m`).
fn without_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `name=value` field of a tracing line.
fn field(line: &str, name: &str) -> u64 {
    let at = line
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("no {name} in {line:?}"));
    line[at + name.len() + 1..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not a number in {line:?}"))
}

/// Both internal logs compact while the broker serves; a restart replays the snapshots (not
/// every event and commit) into the acknowledged state: same topics, ids and places, every
/// committed offset, producer ids and queue ids never handed out twice (a deleted topic's
/// queue id was the highest one, so only the snapshot's counter keeps it from a new topic).
#[test]
fn both_internal_logs_compact_online_and_replay_the_acknowledged_state() {
    compact_then_restart(Stop::Clean);
}

/// The same, killed with SIGKILL right after the last commit: the moved log starts may not have
/// reached a checkpoint, so the replay may start below the snapshots; the state is the same.
#[test]
fn after_sigkill_the_state_is_the_acknowledged_one() {
    compact_then_restart(Stop::Kill);
}

#[derive(PartialEq)]
enum Stop {
    Clean,
    Kill,
}

fn compact_then_restart(stop: Stop) {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let mut c = Client::connect(broker.addr);
    create_topic(&mut c, "wide", WIDE);
    create_topic(&mut c, "gone", 1);
    assert_eq!(produce(&mut c, "gone", 3), (0, 0));
    let deleted: DeleteTopicsResponse = c.call(
        4,
        &DeleteTopicsRequest::default().with_topic_names(vec![name("gone")]),
    );
    assert_eq!(deleted.responses[0].error_code, 0);
    let mut last_pid = 0;
    for _ in 0..META_COMPACT_EVENTS {
        last_pid = init_producer_id(&mut c);
    }
    let line = broker.wait_for_line("metadata log compacted");
    assert!(field(&line, "log_start") > 0, "{line}");
    last_pid = last_pid.max(init_producer_id(&mut c));

    let all: Vec<i32> = (0..WIDE).collect();
    let rounds = COMPACT_MIN_RECORDS as i64 / i64::from(WIDE);
    for round in 0..rounds {
        commit(&mut c, &all, round);
    }
    let line = broker.wait_for_line("group log compacted");
    assert_eq!(field(&line, "records"), WIDE as u64, "{line}");
    commit(&mut c, &[0], 999);
    let meta: MetadataResponse = c.call(12, &MetadataRequest::default().with_topics(None));
    drop(c);
    match stop {
        Stop::Clean => broker.stop(),
        Stop::Kill => broker.kill9(),
    }

    let broker = Broker::start(dir.path());
    let replayed = broker.wait_for_line("group log replayed");
    if stop == Stop::Clean {
        // The clean shutdown's checkpoint holds the moved start.
        assert!(
            field(&replayed, "batches") <= 2,
            "replay starts at the snapshot: {replayed}"
        );
    }
    let loaded = broker.wait_for_line("metadata loaded");
    assert_eq!(field(&loaded, "topics"), 1, "{loaded}");
    let mut c = Client::connect(broker.addr);
    let again: MetadataResponse = c.call(12, &MetadataRequest::default().with_topics(None));
    assert_eq!(again.topics, meta.topics, "same topics, ids and partitions");
    let offsets = committed(&mut c);
    assert_eq!(offsets[0], 999, "the commit after the snapshot");
    assert!(
        offsets[1..].iter().all(|&o| o == rounds - 1),
        "every offset of the last round"
    );
    assert!(
        init_producer_id(&mut c) > last_pid,
        "producer ids not reissued"
    );
    create_topic(&mut c, "fresh", 1);
    assert_eq!(produce(&mut c, "fresh", 2), (0, 0), "a fresh queue id");
    assert_eq!(fetch(&mut c, "fresh"), (0, 2));
    broker.stop();
}

/// Measurement, run by hand (`cargo test -p ringmq-broker --test compaction -- --ignored
/// --nocapture`; `RINGMQ_BIN` picks the broker build): 10 groups commit 10,000 partitions each
/// (100,000 live offsets) for `MEASURE_ROUNDS` rounds (default 30: 3 million records); prints
/// the compactions with how long each kept the gate closed (commits wait that long at most),
/// and how long a restart takes to replay the group log.
#[test]
#[ignore = "measurement; run by hand"]
fn measure_compaction_of_100k_offsets() {
    const PARTITIONS: i32 = 10_000;
    const GROUPS: usize = 10;
    let rounds: i64 = std::env::var("MEASURE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let mut c = Client::connect(broker.addr);
    create_topic(&mut c, "big", PARTITIONS);
    let all: Vec<i32> = (0..PARTITIONS).collect();
    let started = Instant::now();
    for round in 0..rounds {
        for g in 0..GROUPS {
            commit_to(&mut c, &format!("g{g}"), "big", &all, round);
        }
    }
    println!(
        "{rounds} rounds x {GROUPS} commits of {PARTITIONS} partitions in {:?}",
        started.elapsed()
    );
    drop(c);
    let lines = broker.lines.clone();
    broker.stop();
    for l in lines.lock().unwrap().iter() {
        if l.contains("group log compacted") {
            println!("{l}");
        }
    }
    let restart = Instant::now();
    let broker = Broker::start(dir.path());
    println!(
        "restart to listening: {:?}; {}",
        restart.elapsed(),
        broker.wait_for_line("group log replayed")
    );
    broker.stop();
}
