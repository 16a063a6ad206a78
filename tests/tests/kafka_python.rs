//! kafka-python, a pure-Python client with its own implementation of the protocol, against the
//! real broker: topic administration (AlterConfigs included), produce with every acks setting
//! and codec, keyed order, ListOffsets by time, and a consumer group of two whose members
//! commit as they go while one of them leaves mid-stream.
//!
//! The client runs `tests/interop/kafka_python_roundtrip.py` in a virtual environment that the
//! first test builds under the target directory from `tests/interop/requirements.txt` (pinned
//! versions, from the package index). The script reports what it saw as JSON; the assertions are
//! here. Without python3 (and its venv module) these tests fail, saying so.

use std::path::Path;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use ringmq_system_tests::{kafka_python, run_python_script, Broker, BrokerOptions, DEADLINE};
use serde_json::{json, Value};

/// The script's own waits are 30 s each; this bounds a script that hangs outside them.
const SCRIPT_LIMIT: Duration = Duration::from_secs(120);

const SCRIPT: &str = "kafka_python_roundtrip.py";

/// Runs one scenario of the script against `broker`, returns its summary.
fn scenario(broker: &Broker, name: &str) -> Value {
    let python = kafka_python(Path::new(env!("CARGO_TARGET_TMPDIR")));
    let summary = run_python_script(python, SCRIPT, &[&broker.bootstrap(), name], SCRIPT_LIMIT);
    eprintln!("kafka-python {name} summary: {summary:#}");
    summary
}

/// Builds the environment before the broker starts: its first build must not count against
/// the broker's hung-test watchdog.
fn start_broker(options: BrokerOptions) -> Broker {
    kafka_python(Path::new(env!("CARGO_TARGET_TMPDIR")));
    Broker::start_with(options)
}

/// The broker survived the client: still running and answering librdkafka's metadata request.
fn assert_still_serving(broker: &mut Broker, topic: &str, partitions: usize) {
    assert!(
        broker.is_running(),
        "ringmq exited during the kafka-python run"
    );
    assert_eq!(broker.existing_partition_count(topic), partitions);
}

#[test]
fn kafka_python_admin_client_manages_topics() {
    let mut broker = start_broker(BrokerOptions::default());
    let s = scenario(&broker, "admin");

    // kafka-python raises the first error of an admin response: one topic per request.
    assert_eq!(s["create"], json!("NoError"));
    assert_eq!(s["create_again"], json!("TopicAlreadyExistsError"));
    assert_eq!(s["create_zero_partitions"], json!("InvalidPartitionsError"));
    assert_eq!(
        s["create_three_replicas"],
        json!("InvalidReplicationFactorError")
    );
    assert_eq!(s["listed_after_create"], json!(true));
    assert_eq!(s["partitions_after_create"], json!(3));
    assert_eq!(s["describe_configs_error"], json!("NoError"));
    assert_eq!(s["describe_configs_resource"], json!("kp-admin"));
    assert_eq!(s["retention_ms"], json!("3600000"));
    // AlterConfigs v1 replaces the explicit set: retention.ms, not given, is the broker's
    // default again (7 days); a bad value is refused and changes nothing.
    assert_eq!(s["alter_configs"], json!("NoError"));
    assert_eq!(
        s["alter_configs_bad_value"],
        json!("InvalidConfigurationError")
    );
    assert_eq!(s["retention_bytes_after_alter"], json!("1048576"));
    assert_eq!(s["retention_ms_after_alter"], json!("604800000"));
    // DeleteRecords v0: the new low watermark, OFFSET_OUT_OF_RANGE past the end, and a
    // consumer's earliest position afterwards.
    assert_eq!(s["delete_records_low_watermark"], json!(4));
    assert_eq!(s["delete_records_past_end"], json!("OffsetOutOfRangeError"));
    assert_eq!(s["earliest_after_delete_records"], json!(4));
    assert_eq!(s["create_partitions"], json!("NoError"));
    assert_eq!(s["partitions_after_grow"], json!(5));
    assert_eq!(s["cluster_brokers"], json!([broker.bootstrap()]));
    assert!(s["cluster_controller_id"]
        .as_i64()
        .is_some_and(|id| id >= 0));
    assert_eq!(s["delete"], json!("NoError"));
    assert_eq!(s["delete_unknown"], json!("UnknownTopicOrPartitionError"));
    assert_eq!(s["gone_after_delete"], json!(true));

    // Deleted means gone for other clients too: asking librdkafka without auto-creation.
    let consumer = broker.consumer(&[("allow.auto.create.topics", "false")]);
    let metadata = consumer.fetch_metadata(None, DEADLINE).expect("metadata");
    assert!(metadata.topics().iter().all(|t| t.name() != "kp-admin"));
    assert!(broker.is_running());
}

#[test]
fn kafka_python_produces_with_every_acks_and_codec_and_reads_keys_in_order() {
    let mut broker = start_broker(BrokerOptions::default().cores(2));
    let s = scenario(&broker, "produce");

    assert_eq!(
        s["codecs_available"],
        json!(["none", "gzip", "snappy", "lz4", "zstd"]),
        "the pinned requirements install every codec's library"
    );
    let cases = s["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 15, "5 codecs x 3 acks settings");
    for case in cases {
        let label = format!("codec {} acks {}", case["codec"], case["acks"]);
        // acks=0 gets no response, so no offset; every other acknowledgement names one.
        let acked = if case["acks"] == "0" { 0 } else { 120 };
        assert_eq!(case["sent"], json!(120), "{label}");
        assert_eq!(case["acked_with_offset"], json!(acked), "{label}");
        assert_eq!(case["received"], json!(120), "{label}: {case:#}");
        // Six keys over three partitions: order per key is checked across partitions.
        assert!(
            case["partitions_used"].as_u64() > Some(1),
            "{label}: {case:#}"
        );
        for empty in [
            "missing",
            "duplicated",
            "acked_elsewhere",
            "keys_on_several_partitions",
            "keys_out_of_order",
        ] {
            assert_eq!(case[empty], json!([]), "{label}: {empty}");
        }
    }
    assert_still_serving(&mut broker, "kp-produce-zstd-acks-all", 3);
}

#[test]
fn kafka_python_finds_offsets_by_timestamp() {
    let mut broker = start_broker(BrokerOptions::default());
    let s = scenario(&broker, "times");

    let base = s["base_ms"].as_i64().expect("base_ms");
    // Records 0..10 carry timestamps base + 1000 * i.
    assert_eq!(s["at_or_after_4500"], json!([5, base + 5000]));
    assert_eq!(s["at_0"], json!([0, base]));
    assert_eq!(s["before_all"], json!([0, base]));
    assert_eq!(s["after_all"], Value::Null, "no record at or after it");
    assert_eq!(s["beginning"], json!(0));
    assert_eq!(s["end"], json!(10));
    assert_still_serving(&mut broker, "kp-times", 1);
}

#[test]
fn kafka_python_group_of_two_hands_over_a_leavers_partitions_at_its_commits() {
    let mut broker = start_broker(BrokerOptions::default().cores(2).no_group_delay());
    let s = scenario(&broker, "group");

    // While both were members, each owned two of the four partitions and read only those.
    let leaver: Vec<u64> = serde_json::from_value(s["leaver_partitions_while_both"].clone())
        .expect("leaver partitions");
    let stayer: Vec<u64> = serde_json::from_value(s["stayer_partitions_while_both"].clone())
        .expect("stayer partitions");
    let mut all = [leaver.clone(), stayer.clone()].concat();
    all.sort_unstable();
    assert_eq!((leaver.len(), stayer.len()), (2, 2), "{s:#}");
    assert_eq!(all, [0, 1, 2, 3], "{s:#}");
    assert_eq!(s["first_round_read_outside_own_partitions"], json!(0));

    // The leaver left after >= 10 of its 100 second-round records; the stayer read exactly the
    // rest of them, from the leaver's last commit on: nothing lost, nothing read twice.
    let left_after = s["leaver_second_round_read"].as_u64().expect("count");
    assert!((10..100).contains(&left_after), "{s:#}");
    assert_eq!(
        s["stayer_read_from_leaver_partitions_in_second_round"],
        json!(100 - left_after),
        "{s:#}"
    );
    assert_eq!(s["total_read"], json!(400), "{s:#}");
    assert_eq!(s["missing"], json!([]));
    assert_eq!(s["duplicated"], json!([]));
    assert_eq!(s["commit_failures"], json!([]));

    // The admin API's view once both are gone: an empty group holding offsets at each end.
    assert_eq!(s["group_listed"], json!(true));
    assert_eq!(s["group_state"], json!("Empty"));
    assert_eq!(s["group_members"], json!(0));
    assert_eq!(
        s["committed"],
        json!({"0": 100, "1": 100, "2": 100, "3": 100})
    );
    assert_still_serving(&mut broker, "kp-group", 4);
}
