//! Changing a topic's configs after creation, against the real binary on two cores, through
//! librdkafka: AlterConfigs (v2) and IncrementalAlterConfigs (v1). DescribeConfigs on fresh
//! connections shows the change, each core's retention task applies it without a restart, and
//! it survives kill -9.
//!
//! The rdkafka crate (0.39) binds only AlterConfigs, and its `alter_configs` reports every
//! resource as `Ok` whatever the broker answered (it never reads the resource's error), so the
//! answers are read through librdkafka's C API ([`alter_through_c`]); the crate's own call is
//! used once, for a change that succeeds.

use std::ffi::{CStr, CString};
use std::ptr;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewTopic, OwnedResourceSpecifier,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::bindings as rd;
use rdkafka::bindings::rd_kafka_ResourceType_t::{
    RD_KAFKA_RESOURCE_BROKER, RD_KAFKA_RESOURCE_TOPIC,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use ringmq_system_tests::{block_on, wait_until, Broker, BrokerOptions, DEADLINE};

type Admin = AdminClient<DefaultClientContext>;

/// The broker's `--retention-ms`: what DescribeConfigs reports for a topic's `retention.ms`
/// without one of its own (a day, so that the old records of the tests are not removed by it).
const BROKER_RETENTION_MS: &str = "86400000";

/// A broker on two cores: a topic of two partitions has one on each.
fn start_broker() -> Broker {
    Broker::start_with(
        BrokerOptions::default()
            .cores(2)
            .arg("--retention-ms")
            .arg(BROKER_RETENTION_MS),
    )
}

fn options() -> AdminOptions {
    AdminOptions::new().request_timeout(Some(DEADLINE))
}

fn create(admin: &Admin, topic: &NewTopic<'_>) {
    let name = topic.name.to_string();
    let results = block_on(admin.create_topics([topic], &options())).expect("create_topics");
    assert_eq!(results, vec![Ok(name)]);
}

/// A topic config as DescribeConfigs reports it: value and source (librdkafka's name for it:
/// `ConfigSource` is neither `Clone` nor `Copy`).
fn described(broker: &Broker, topic: &str, key: &str) -> (Option<String>, String) {
    // A new client each time: a new connection, on either core.
    let admin = broker.admin();
    let resources =
        block_on(admin.describe_configs([&ResourceSpecifier::Topic(topic)], &options()))
            .expect("describe_configs");
    let resource = resources[0].as_ref().expect("describe_configs result");
    let entry = resource
        .get(key)
        .unwrap_or_else(|| panic!("{key} is not described"));
    (entry.value.clone(), format!("{:?}", entry.source))
}

/// A value from the broker's defaults (DEFAULT_CONFIG, 5).
fn default_value(value: &str) -> (Option<String>, String) {
    (
        Some(value.to_string()),
        format!("{:?}", ConfigSource::Default),
    )
}

/// A value the topic holds explicitly (DYNAMIC_TOPIC_CONFIG, 1).
fn topic_value(value: &str) -> (Option<String>, String) {
    (
        Some(value.to_string()),
        format!("{:?}", ConfigSource::DynamicTopic),
    )
}

/// The state after `alter_configs_replaces_a_topics_configs_durably`'s one accepted change.
fn assert_replaced(broker: &Broker) {
    assert_eq!(
        described(broker, "altered", "retention.bytes"),
        topic_value("1048576")
    );
    assert_eq!(
        described(broker, "altered", "retention.ms"),
        default_value(BROKER_RETENTION_MS),
        "AlterConfigs replaces the set: retention.ms, not given, reverts"
    );
}

/// Which request librdkafka sends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Api {
    /// AlterConfigs: the resource's whole new set (only `Op::Set`).
    Alter,
    IncrementalAlter,
}

/// One config change, as librdkafka's `rd_kafka_AlterConfigOpType_t`.
#[derive(Debug, Clone, Copy)]
enum Op {
    Set(&'static str, &'static str),
    Delete(&'static str),
    Append(&'static str, &'static str),
}

/// One config resource: its type and name.
type Resource<'a> = (rd::rd_kafka_ResourceType_t, &'a str);

fn topic(name: &str) -> Resource<'_> {
    (RD_KAFKA_RESOURCE_TOPIC, name)
}

/// Sends `api` for one resource through librdkafka's C API and returns the error code the
/// broker answered for that resource (the request itself must succeed).
fn alter_through_c(
    admin: &Admin,
    (resource_type, resource_name): Resource<'_>,
    api: Api,
    ops: &[Op],
    validate_only: bool,
) -> RDKafkaErrorCode {
    use rd::rd_kafka_AlterConfigOpType_t as OpType;
    use rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR as NO_ERROR;
    let rk = admin.inner().native_ptr();
    let name = CString::new(resource_name).expect("resource name");
    let c = |text: &str| CString::new(text).expect("no NUL");
    let mut errstr = [0 as std::ffi::c_char; 512];
    let timeout_ms = i32::try_from(DEADLINE.as_millis()).expect("deadline fits");
    // SAFETY: every pointer handed to librdkafka is live for the call that takes it (the
    // CStrings outlive the calls; librdkafka copies the resource and the options into the
    // request, so both are destroyed right after it is queued); the result event is read
    // before it is destroyed; each object is destroyed exactly once.
    unsafe {
        let resource = rd::rd_kafka_ConfigResource_new(resource_type, name.as_ptr());
        for op in ops {
            let (key, kind, value) = match *op {
                Op::Set(k, v) => (c(k), OpType::RD_KAFKA_ALTER_CONFIG_OP_TYPE_SET, Some(c(v))),
                Op::Delete(k) => (c(k), OpType::RD_KAFKA_ALTER_CONFIG_OP_TYPE_DELETE, None),
                Op::Append(k, v) => (
                    c(k),
                    OpType::RD_KAFKA_ALTER_CONFIG_OP_TYPE_APPEND,
                    Some(c(v)),
                ),
            };
            let value = value.as_ref().map_or(ptr::null(), |v| v.as_ptr());
            if api == Api::Alter {
                assert_eq!(kind, OpType::RD_KAFKA_ALTER_CONFIG_OP_TYPE_SET, "{op:?}");
                let set = rd::rd_kafka_ConfigResource_set_config(resource, key.as_ptr(), value);
                assert_eq!(set, NO_ERROR, "{op:?}");
                continue;
            }
            let error = rd::rd_kafka_ConfigResource_add_incremental_config(
                resource,
                key.as_ptr(),
                kind,
                value,
            );
            if !error.is_null() {
                let text = CStr::from_ptr(rd::rd_kafka_error_string(error))
                    .to_string_lossy()
                    .into_owned();
                rd::rd_kafka_error_destroy(error);
                panic!("librdkafka refused {op:?}: {text}");
            }
        }
        let admin_op = match api {
            Api::Alter => rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_ALTERCONFIGS,
            Api::IncrementalAlter => {
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_INCREMENTALALTERCONFIGS
            }
        };
        let options = rd::rd_kafka_AdminOptions_new(rk, admin_op);
        let timeout = rd::rd_kafka_AdminOptions_set_request_timeout(
            options,
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        let validate = rd::rd_kafka_AdminOptions_set_validate_only(
            options,
            i32::from(validate_only),
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        assert_eq!((timeout, validate), (NO_ERROR, NO_ERROR));
        let queue = rd::rd_kafka_queue_new(rk);
        let mut resources = [resource];
        match api {
            Api::Alter => rd::rd_kafka_AlterConfigs(rk, resources.as_mut_ptr(), 1, options, queue),
            Api::IncrementalAlter => {
                rd::rd_kafka_IncrementalAlterConfigs(rk, resources.as_mut_ptr(), 1, options, queue)
            }
        }
        rd::rd_kafka_ConfigResource_destroy(resource);
        rd::rd_kafka_AdminOptions_destroy(options);
        let event = rd::rd_kafka_queue_poll(queue, timeout_ms);
        assert!(!event.is_null(), "no {api:?} result within {DEADLINE:?}");
        let request_error = rd::rd_kafka_event_error(event);
        let outcome = if request_error != NO_ERROR {
            let text = CStr::from_ptr(rd::rd_kafka_event_error_string(event)).to_string_lossy();
            Err(format!(
                "{api:?} failed as a whole: {request_error:?} {text}"
            ))
        } else {
            let mut count = 0;
            let answered = match api {
                Api::Alter => rd::rd_kafka_AlterConfigs_result_resources(
                    rd::rd_kafka_event_AlterConfigs_result(event),
                    &mut count,
                ),
                Api::IncrementalAlter => rd::rd_kafka_IncrementalAlterConfigs_result_resources(
                    rd::rd_kafka_event_IncrementalAlterConfigs_result(event),
                    &mut count,
                ),
            };
            assert_eq!(count, 1, "one resource answered");
            let answer = *answered;
            let answered_name = CStr::from_ptr(rd::rd_kafka_ConfigResource_name(answer));
            assert_eq!(answered_name.to_str(), Ok(resource_name));
            Ok(RDKafkaErrorCode::from(rd::rd_kafka_ConfigResource_error(
                answer,
            )))
        };
        rd::rd_kafka_event_destroy(event);
        rd::rd_kafka_queue_destroy(queue);
        outcome.unwrap_or_else(|why| panic!("{why}"))
    }
}

/// AlterConfigs (librdkafka sends v2) replaces the topic's explicit set; bad values, keys
/// ringmq does not apply, unknown keys, unknown topics and a broker resource are refused with
/// their codes and change nothing; validate_only changes nothing; the change survives kill -9.
/// Catches: the API not served (librdkafka fails the request), a merge instead of a
/// replacement (retention.ms kept), a change visible only on the core that handled it, a
/// refusal or a validate_only request that still changes the topic, a change installed in
/// memory but not logged (gone after the restart), and a broker resource that closes the
/// connection or gets a topic's answer.
#[test]
fn alter_configs_replaces_a_topics_configs_durably() {
    let mut broker = start_broker();
    let admin = broker.admin();
    create(
        &admin,
        &NewTopic::new("altered", 2, TopicReplication::Fixed(1)).set("retention.ms", "3600000"),
    );
    assert_eq!(
        described(&broker, "altered", "retention.ms"),
        topic_value("3600000")
    );

    // The crate's own call, for the change that succeeds.
    let change =
        AlterConfig::new(ResourceSpecifier::Topic("altered")).set("retention.bytes", "1048576");
    let results = block_on(admin.alter_configs([&change], &options())).expect("alter_configs");
    assert_eq!(
        results,
        vec![Ok(OwnedResourceSpecifier::Topic("altered".into()))]
    );
    assert_replaced(&broker);

    let alter = |resource: Resource<'_>, key: &'static str, value: &'static str, validate_only| {
        alter_through_c(
            &admin,
            resource,
            Api::Alter,
            &[Op::Set(key, value)],
            validate_only,
        )
    };
    for (key, value) in [
        ("retention.ms", "soon"),
        ("retention.bytes", "-2"),
        ("cleanup.policy", "compact"),
        ("no.such.config", "1"),
    ] {
        assert_eq!(
            alter(topic("altered"), key, value, false),
            RDKafkaErrorCode::InvalidConfig,
            "{key}={value}"
        );
    }
    assert_eq!(
        alter(topic("altered"), "retention.ms", "1234", true),
        RDKafkaErrorCode::NoError,
        "validate_only"
    );
    assert_eq!(
        alter(topic("no-such-topic"), "retention.ms", "1", false),
        RDKafkaErrorCode::UnknownTopicOrPartition
    );
    assert_eq!(
        alter(
            (RD_KAFKA_RESOURCE_BROKER, "0"),
            "log.retention.ms",
            "1",
            false
        ),
        RDKafkaErrorCode::InvalidRequest
    );
    assert_replaced(&broker);
    assert!(
        !broker.output().contains("closing connection"),
        "a refused alter closed a connection"
    );

    broker.kill9();
    broker.restart();
    assert_replaced(&broker);
}

/// IncrementalAlterConfigs (librdkafka sends v1): SET of retention.ms moves the earliest
/// offset of the topic's partitions on both cores without a restart; APPEND and bad values are
/// INVALID_CONFIG and change nothing; validate_only changes nothing; DELETE reverts to the
/// default; the last change survives kill -9.
/// Catches: the new value stored but not seen by the retention task of the core that owns a
/// partition (the change published to the handling core only, or the limits read once at
/// start), SET replacing the whole set, DELETE not reverting, APPEND accepted on a non-list
/// config, and an incremental change not logged durably.
#[test]
fn incremental_alter_configs_sets_retention_live_and_delete_reverts() {
    let mut broker = start_broker();
    let admin = broker.admin();
    create(
        &admin,
        &NewTopic::new("shrinking", 2, TopicReplication::Fixed(1))
            .set("message.timestamp.type", "CreateTime"),
    );
    // Old records (two minutes) and new ones on each partition; one partition per core.
    broker.produce_old_then_new(&["shrinking"], 2, 120_000);
    for partition in 0..2 {
        assert_eq!(broker.watermarks("shrinking", partition), (0, 10));
    }

    let incremental = |admin: &Admin, ops: &[Op], validate_only| {
        alter_through_c(
            admin,
            topic("shrinking"),
            Api::IncrementalAlter,
            ops,
            validate_only,
        )
    };
    let set_one_minute = [Op::Set("retention.ms", "60000")];
    assert_eq!(
        incremental(&admin, &set_one_minute, true),
        RDKafkaErrorCode::NoError
    );
    assert_eq!(
        described(&broker, "shrinking", "retention.ms"),
        default_value(BROKER_RETENTION_MS),
        "validate_only changed the topic"
    );

    assert_eq!(
        incremental(&admin, &set_one_minute, false),
        RDKafkaErrorCode::NoError
    );
    assert_eq!(
        described(&broker, "shrinking", "retention.ms"),
        topic_value("60000")
    );
    assert_eq!(
        described(&broker, "shrinking", "message.timestamp.type"),
        topic_value("CreateTime"),
        "SET keeps the other explicit configs"
    );
    wait_until(
        DEADLINE,
        "the old records of both partitions expire",
        || {
            (0..2)
                .all(|p| broker.watermarks("shrinking", p) == (5, 10))
                .then_some(())
        },
    );

    for refused in [
        Op::Append("retention.ms", "1"),
        Op::Set("retention.ms", "soon"),
        Op::Set("message.timestamp.type", "Yesterday"),
    ] {
        assert_eq!(
            incremental(&admin, &[refused], false),
            RDKafkaErrorCode::InvalidConfig,
            "{refused:?}"
        );
    }
    assert_eq!(
        described(&broker, "shrinking", "retention.ms"),
        topic_value("60000")
    );

    assert_eq!(
        incremental(&admin, &[Op::Delete("retention.ms")], false),
        RDKafkaErrorCode::NoError
    );
    assert_eq!(
        described(&broker, "shrinking", "retention.ms"),
        default_value(BROKER_RETENTION_MS)
    );
    assert_eq!(
        incremental(
            &admin,
            &[Op::Set("message.timestamp.type", "LogAppendTime")],
            false
        ),
        RDKafkaErrorCode::NoError
    );

    broker.kill9();
    broker.restart();
    assert_eq!(
        described(&broker, "shrinking", "retention.ms"),
        default_value(BROKER_RETENTION_MS)
    );
    assert_eq!(
        described(&broker, "shrinking", "message.timestamp.type"),
        topic_value("LogAppendTime")
    );
    // The earliest offsets are not checked here: a moved start is durable with the engine's
    // next checkpoint, and with retention.ms deleted nothing moves it again after a crash.
    for partition in 0..2 {
        assert_eq!(broker.watermarks("shrinking", partition).1, 10);
    }
}

/// Changes beyond the metadata log's compaction threshold (`META_COMPACT_EVENTS`, 1000): the
/// broker writes a snapshot of its metadata and moves the log's start past the events it
/// replaces, and after kill -9 a topic's altered configs come back from that snapshot.
/// Catches: a snapshot that writes each topic with the configs it was created with (the
/// altered value of `kept` is only in events the snapshot replaces), and a replay that cannot
/// read the events after a snapshot.
#[test]
fn altered_configs_survive_metadata_compaction_and_kill_9() {
    /// More single-event changes than the threshold.
    const CHANGES: usize = 1010;
    let toggled_value = |i: usize| ["1000000", "2000000"][i % 2];
    let mut broker = start_broker();
    let admin = broker.admin();
    for name in ["kept", "toggled"] {
        create(&admin, &NewTopic::new(name, 1, TopicReplication::Fixed(1)));
    }
    let set = |name: &'static str, key: &'static str, value: &'static str| {
        alter_through_c(
            &admin,
            topic(name),
            Api::IncrementalAlter,
            &[Op::Set(key, value)],
            false,
        )
    };
    assert_eq!(
        set("kept", "retention.bytes", "777"),
        RDKafkaErrorCode::NoError
    );
    for i in 0..CHANGES {
        let value = toggled_value(i);
        assert_eq!(
            set("toggled", "retention.ms", value),
            RDKafkaErrorCode::NoError
        );
    }
    wait_until(DEADLINE, "the metadata log to be compacted", || {
        broker
            .output()
            .contains("metadata log compacted")
            .then_some(())
    });
    let last = toggled_value(CHANGES - 1);

    broker.kill9();
    broker.restart();
    assert_eq!(
        described(&broker, "kept", "retention.bytes"),
        topic_value("777")
    );
    assert_eq!(
        described(&broker, "toggled", "retention.ms"),
        topic_value(last)
    );
}
