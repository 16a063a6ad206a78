//! kcat from the system's packages against the real broker. On Debian 12 it runs on
//! librdkafka 2.0.2, older than the librdkafka the other tests link: it negotiates older API
//! versions (ListOffsets v2, Metadata v4, ...) and misreads non-empty tagged fields (librdkafka
//! before 2.2.0), so it checks what the broker leaves out as much as what it sends. Produces
//! keyed lines with every codec and acks setting and reads them back, lists metadata, finds
//! offsets by timestamp, and consumes as a group member that commits. Without kcat on PATH
//! these tests fail, saying what to install (`.ci/run` installs it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use ringmq_system_tests::{
    require_program, run_checked, wait_until, Broker, BrokerOptions, ToolOutput, DEADLINE,
};
use serde_json::Value;

/// One kcat run; every wait inside it is kcat's own, this bounds a kcat that hangs.
const KCAT_LIMIT: Duration = Duration::from_secs(60);

/// Lines per produced topic, and the keys they cycle through.
const LINES: usize = 100;
const KEYS: usize = 5;

/// Topics kcat auto-creates get this many partitions.
const PARTITIONS: u32 = 3;

fn kcat_path() -> PathBuf {
    require_program(
        "kcat",
        "install it (Debian/Ubuntu: apt-get install kcat; .ci/run does that)",
    )
}

fn kcat(broker: &Broker, args: &[&str], stdin: &[u8]) -> ToolOutput {
    run_checked(
        Command::new(kcat_path())
            .arg("-b")
            .arg(broker.bootstrap())
            // Fail fast rather than retrying past the test's deadline.
            .args([
                "-X",
                "message.timeout.ms=30000",
                "-X",
                "socket.timeout.ms=30000",
            ])
            .args(args),
        stdin,
        KCAT_LIMIT,
    )
}

/// Fails at once, before a broker is built and started, where kcat is missing; logs which
/// librdkafka the kcat in use runs on (the one it loads, as `kcat -V` reports it).
fn start_broker() -> Broker {
    let version = run_checked(Command::new(kcat_path()).arg("-V"), b"", KCAT_LIMIT);
    let librdkafka = version
        .stdout
        .lines()
        .find(|line| line.contains("librdkafka"))
        .unwrap_or("librdkafka version not reported");
    eprintln!("kcat: {librdkafka}");
    Broker::start_with(
        BrokerOptions::default()
            .cores(2)
            .default_partitions(PARTITIONS)
            .no_group_delay(),
    )
}

/// `key-(i % KEYS):value-i` for i in 0..LINES, one per line, as `kcat -P -K :` reads them.
fn keyed_lines(topic: &str) -> (Vec<(String, String)>, String) {
    let records: Vec<(String, String)> = (0..LINES)
        .map(|i| (format!("key-{}", i % KEYS), format!("{topic}-value-{i}")))
        .collect();
    let text = records
        .iter()
        .map(|(key, value)| format!("{key}:{value}\n"))
        .collect();
    (records, text)
}

/// A record as `kcat -C -J` prints it.
#[derive(Debug)]
struct Consumed {
    partition: i64,
    offset: i64,
    timestamp_ms: i64,
    key: String,
    payload: String,
}

fn parse_consumed(output: &ToolOutput) -> Vec<Consumed> {
    output
        .stdout
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let record: Value = serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("kcat -J printed a non-JSON line {line:?}: {err}"));
            Consumed {
                partition: record["partition"].as_i64().expect("partition"),
                offset: record["offset"].as_i64().expect("offset"),
                timestamp_ms: record["ts"].as_i64().expect("ts"),
                key: record["key"].as_str().expect("key").to_string(),
                payload: record["payload"].as_str().expect("payload").to_string(),
            }
        })
        .collect()
}

/// Every sent record read exactly once, each key on one partition in the order sent, and each
/// partition read in increasing offsets.
fn assert_read_back(label: &str, sent: &[(String, String)], read: &[Consumed]) {
    let mut got: Vec<&str> = read.iter().map(|r| r.payload.as_str()).collect();
    got.sort_unstable();
    let mut want: Vec<&str> = sent.iter().map(|(_, value)| value.as_str()).collect();
    want.sort_unstable();
    assert_eq!(got, want, "{label}: records read back");

    let mut by_key: BTreeMap<&str, Vec<&Consumed>> = BTreeMap::new();
    for record in read {
        by_key.entry(record.key.as_str()).or_default().push(record);
    }
    for (key, records) in &mut by_key {
        assert!(
            records.iter().all(|r| r.partition == records[0].partition),
            "{label}: key {key} on several partitions: {records:?}"
        );
        records.sort_by_key(|r| r.offset);
        let read_order: Vec<&str> = records.iter().map(|r| r.payload.as_str()).collect();
        let sent_order: Vec<&str> = sent
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, value)| value.as_str())
            .collect();
        assert_eq!(read_order, sent_order, "{label}: order of key {key}");
    }
    let mut last_offset: BTreeMap<i64, i64> = BTreeMap::new();
    for record in read {
        if let Some(previous) = last_offset.insert(record.partition, record.offset) {
            assert!(
                record.offset > previous,
                "{label}: partition {} went from offset {previous} to {}",
                record.partition,
                record.offset
            );
        }
    }
}

/// Waits until the partitions of `topic` (empty before) hold `count` records.
fn wait_until_stored(broker: &Broker, topic: &str, count: usize) {
    let consumer = broker.consumer(&[]);
    wait_until(
        DEADLINE,
        &format!("{count} records stored in {topic}"),
        || {
            let stored: i64 = (0..PARTITIONS as i32)
                .map(|partition| {
                    let (_low, high) = consumer
                        .fetch_watermarks(topic, partition, DEADLINE)
                        .expect("fetching watermarks");
                    high
                })
                .sum();
            (stored >= count as i64).then_some(())
        },
    );
}

#[test]
fn kcat_produces_keyed_lines_with_every_codec_and_acks_and_reads_them_back() {
    let mut broker = start_broker();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        for acks in ["0", "1", "all"] {
            let topic = format!("kcat-{codec}-acks-{acks}");
            let label = format!("codec {codec} acks {acks}");
            let (sent, lines) = keyed_lines(&topic);
            let produce_settings = [format!("compression.codec={codec}"), format!("acks={acks}")];
            kcat(
                &broker,
                &[
                    "-P",
                    "-t",
                    &topic,
                    "-K",
                    ":",
                    "-X",
                    &produce_settings[0],
                    "-X",
                    &produce_settings[1],
                ],
                lines.as_bytes(),
            );
            if acks == "0" {
                // kcat exits once the records are written to the socket: nothing says the
                // broker has appended them yet.
                wait_until_stored(&broker, &topic, LINES);
            }
            // -e: exit at the end of every partition; -J: one JSON object per record.
            let consumed = kcat(
                &broker,
                &["-C", "-t", &topic, "-o", "beginning", "-e", "-J"],
                b"",
            );
            assert_read_back(&label, &sent, &parse_consumed(&consumed));
        }
    }
    assert!(broker.is_running(), "ringmq exited during the kcat runs");
}

#[test]
fn kcat_lists_metadata_of_the_broker_and_its_topics() {
    let mut broker = start_broker();
    let (_, lines) = keyed_lines("kcat-listed");
    kcat(
        &broker,
        &["-P", "-t", "kcat-listed", "-K", ":"],
        lines.as_bytes(),
    );

    let listed = kcat(&broker, &["-L", "-J"], b"");
    let metadata: Value = serde_json::from_str(&listed.stdout)
        .unwrap_or_else(|err| panic!("kcat -L -J printed no JSON ({err}): {}", listed.stdout));
    let brokers = metadata["brokers"].as_array().expect("brokers");
    assert_eq!(brokers.len(), 1, "{metadata:#}");
    assert_eq!(brokers[0]["name"], Value::from(broker.bootstrap()));
    let broker_id = brokers[0]["id"].as_i64().expect("broker id");
    assert_eq!(metadata["controllerid"].as_i64(), Some(broker_id));

    let topics = metadata["topics"].as_array().expect("topics");
    let topic = topics
        .iter()
        .find(|t| t["topic"] == "kcat-listed")
        .unwrap_or_else(|| panic!("kcat-listed is not in {metadata:#}"));
    assert!(topic.get("error").is_none(), "{topic:#}");
    let partitions = topic["partitions"].as_array().expect("partitions");
    let mut ids: Vec<i64> = partitions
        .iter()
        .map(|p| p["partition"].as_i64().expect("partition id"))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [0, 1, 2]);
    for partition in partitions {
        assert_eq!(
            partition["leader"].as_i64(),
            Some(broker_id),
            "{partition:#}"
        );
        assert!(partition.get("error").is_none(), "{partition:#}");
    }

    // The plain listing says the same in words.
    let text = kcat(&broker, &["-L", "-t", "kcat-listed"], b"").stdout;
    assert!(text.contains(" 1 brokers:"), "{text}");
    assert!(
        text.contains(&format!("broker {broker_id} at {}", broker.bootstrap())),
        "{text}"
    );
    assert!(
        text.contains("topic \"kcat-listed\" with 3 partitions:"),
        "{text}"
    );
    assert!(broker.is_running());
}

#[test]
fn kcat_group_consumer_commits_and_a_second_run_reads_nothing_again() {
    let mut broker = start_broker();
    let topic = "kcat-group";
    let (sent, lines) = keyed_lines(topic);
    kcat(
        &broker,
        &["-P", "-t", topic, "-K", ":", "-X", "acks=all"],
        lines.as_bytes(),
    );

    // -G joins a balanced consumer group (JoinGroup, SyncGroup, Heartbeat, OffsetCommit on
    // close) and -e leaves once every assigned partition is at its end.
    let group_run = [
        "-G",
        "kcat-group-members",
        topic,
        "-e",
        "-J",
        "-X",
        "auto.offset.reset=earliest",
    ];
    let first = kcat(&broker, &group_run, b"");
    assert_read_back("group member", &sent, &parse_consumed(&first));

    // The first member committed where it stopped: a new member starts there.
    let second = kcat(&broker, &group_run, b"");
    let again = parse_consumed(&second);
    assert!(again.is_empty(), "read again after the commit: {again:?}");
    assert!(broker.is_running());
}

/// `kcat -Q` asks ListOffsets v2 (librdkafka 2.0.2) for the first offset at or after a
/// timestamp; `-o beginning` asks it for the earliest. Two produce runs give two timestamps.
#[test]
fn kcat_finds_offsets_by_timestamp() {
    let mut broker = start_broker();
    let topic = "kcat-times";
    for run in ["first", "second"] {
        let (_, lines) = keyed_lines(&format!("{topic}-{run}"));
        kcat(
            &broker,
            &["-P", "-t", topic, "-p", "0", "-K", ":"],
            lines.as_bytes(),
        );
    }
    let read = parse_consumed(&kcat(
        &broker,
        &["-C", "-t", topic, "-p", "0", "-o", "beginning", "-e", "-J"],
        b"",
    ));
    assert_eq!(read.len(), 2 * LINES);
    let last_ts = read.iter().map(|r| r.timestamp_ms).max().expect("records");
    let first_at_last_ts = read
        .iter()
        .filter(|r| r.timestamp_ms >= last_ts)
        .map(|r| r.offset)
        .min()
        .expect("a record at the last timestamp");

    let query = |timestamp_ms: i64| {
        let partition = format!("{topic}:0:{timestamp_ms}");
        kcat(&broker, &["-Q", "-t", &partition], b"").stdout
    };
    let offset_line = |offset: i64| format!("{topic} [0] offset {offset}");
    assert!(query(0).contains(&offset_line(0)));
    assert!(query(last_ts).contains(&offset_line(first_at_last_ts)));
    // No record at or after it: Kafka answers offset -1.
    assert!(query(last_ts + 3_600_000).contains(&offset_line(-1)));
    assert!(broker.is_running());
}
