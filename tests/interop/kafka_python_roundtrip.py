"""kafka-python against a running ringmq broker.

Usage: kafka_python_roundtrip.py BOOTSTRAP SCENARIO

SCENARIO is one of `admin`, `produce`, `times` or `group`. The script drives the broker through
kafka-python (an unchanged client nobody on this project wrote), gathers what it observed and
prints it as one JSON object on stdout. It judges nothing itself: the Rust test that runs it
(tests/tests/kafka_python.rs) asserts on the summary, so a wrong answer shows up there with the
facts beside it. Any exception ends the script with a traceback and a non-zero exit status.

Every wait is on a condition with a deadline; nothing sleeps for correctness.
"""

import json
import logging
import sys
import threading
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka import codec
from kafka import errors
from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic

# How long any single condition may take to become true on a loaded 2-core machine.
DEADLINE_S = 30.0

# How often a wait re-checks its condition.
POLL_INTERVAL_S = 0.02

# Every codec kafka-python offers; the pinned requirements install the libraries of all of them.
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]

# Records per (codec, acks) case of the produce scenario, and the keys they cycle through.
RECORDS_PER_CASE = 120
KEYS_PER_CASE = 6
PRODUCE_PARTITIONS = 3

# The group scenario: a topic of GROUP_PARTITIONS partitions, two rounds of RECORDS_PER_ROUND
# records, and the member that leaves does so after this many records of the second round.
GROUP_PARTITIONS = 4
RECORDS_PER_ROUND = 200
LEAVER_QUOTA = 10

# Kafka's consumer-group timings, shortened so that joins and rebalances finish quickly.
GROUP_TIMINGS = {
    "session_timeout_ms": 10000,
    "heartbeat_interval_ms": 300,
}


def main():
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    bootstrap, scenario = sys.argv[1], sys.argv[2]
    scenarios = {
        "admin": admin_scenario,
        "produce": produce_scenario,
        "times": times_scenario,
        "group": group_scenario,
    }
    summary = scenarios[scenario](bootstrap)
    json.dump(summary, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


# ---------------------------------------------------------------------------------------------
# admin: CreateTopics, Metadata, DescribeConfigs, AlterConfigs, CreatePartitions, DeleteTopics,
# DescribeCluster


def admin_scenario(bootstrap):
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="kp-admin")
    topic = "kp-admin"
    summary = {}

    with_retention = NewTopic(topic, 3, 1, topic_configs={"retention.ms": "3600000"})
    summary["create"] = outcome(admin.create_topics, [with_retention])
    summary["create_again"] = outcome(admin.create_topics, [NewTopic(topic, 3, 1)])
    summary["create_zero_partitions"] = outcome(admin.create_topics, [NewTopic("kp-zero", 0, 1)])
    summary["create_three_replicas"] = outcome(
        admin.create_topics, [NewTopic("kp-three-replicas", 1, 3)]
    )
    summary["listed_after_create"] = topic in admin.list_topics()
    summary["partitions_after_create"] = partition_count(admin, topic)

    error_code, name, config_entries = described_configs(admin, topic)
    summary["describe_configs_error"] = error_name(error_code)
    summary["describe_configs_resource"] = name
    summary["retention_ms"] = config_entries.get("retention.ms")

    # AlterConfigs (v1 from kafka-python) replaces the topic's explicit configs.
    summary["alter_configs"] = alter_configs(admin, topic, {"retention.bytes": "1048576"})
    summary["alter_configs_bad_value"] = alter_configs(admin, topic, {"retention.ms": "soon"})
    _code, _name, config_entries = described_configs(admin, topic)
    summary["retention_bytes_after_alter"] = config_entries.get("retention.bytes")
    summary["retention_ms_after_alter"] = config_entries.get("retention.ms")

    # DeleteRecords (v0 from kafka-python): partition 0 loses its records below offset 4.
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i in range(10):
        producer.send(topic, value=b"d%d" % i, partition=0)
    producer.flush()
    producer.close()
    first = TopicPartition(topic, 0)
    deleted = admin.delete_records({first: 4})
    summary["delete_records_low_watermark"] = deleted[first]["low_watermark"]
    summary["delete_records_past_end"] = outcome(admin.delete_records, {first: 100})
    reader = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    reader.assign([first])
    reader.seek_to_beginning(first)
    summary["earliest_after_delete_records"] = reader.position(first)
    reader.close()

    summary["create_partitions"] = outcome(
        admin.create_partitions, {topic: NewPartitions(total_count=5)}
    )
    summary["partitions_after_grow"] = partition_count(admin, topic)

    cluster = admin.describe_cluster()
    summary["cluster_brokers"] = [
        f"{broker['host']}:{broker['port']}" for broker in cluster["brokers"]
    ]
    summary["cluster_controller_id"] = cluster["controller_id"]

    summary["delete"] = outcome(admin.delete_topics, [topic])
    summary["delete_unknown"] = outcome(admin.delete_topics, ["kp-never-created"])
    summary["gone_after_delete"] = wait_for(
        "the deleted topic to leave the topic list",
        lambda: topic not in admin.list_topics(),
    )
    admin.close()
    return summary


def outcome(request, argument):
    """The name of the Kafka error an admin request failed with, or `NoError`. kafka-python's
    admin client raises the first error of a response: each request names one topic."""
    try:
        request(argument)
    except errors.KafkaError as error:
        return type(error).__name__
    return "NoError"


def described_configs(admin, topic):
    """DescribeConfigs of one topic: (error code, resource name, {key: value})."""
    found = None
    for response in admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)]):
        for resource in response.resources:
            error_code, _message, _type, name, entries = resource[:5]
            found = (error_code, name, {entry[0]: entry[1] for entry in entries})
    return found


def alter_configs(admin, topic, configs):
    """The error name AlterConfigs answered for `topic` (kafka-python returns the response
    rather than raising)."""
    response = admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])
    ((error_code, _message, _type, _name),) = [tuple(r)[:4] for r in response.resources]
    return error_name(error_code)


def partition_count(admin, topic):
    (described,) = admin.describe_topics([topic])
    return len(described["partitions"])


def error_name(code):
    """Kafka's name for an error code (`NoError` for 0), as kafka-python spells it."""
    return errors.for_code(code).__name__


# ---------------------------------------------------------------------------------------------
# produce: every codec with acks 0, 1 and all; keyed records read back in order


def produce_scenario(bootstrap):
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="kp-produce-admin")
    cases = [(codec_name, acks) for codec_name in CODECS for acks in (0, 1, "all")]
    admin.create_topics(
        [NewTopic(case_topic(*case), PRODUCE_PARTITIONS, 1) for case in cases]
    )
    admin.close()

    sent = {case: produce_case(bootstrap, *case) for case in cases}
    received = read_everything(bootstrap, [case_topic(*case) for case in cases])
    return {
        "codecs_available": available_codecs(),
        "cases": [
            check_case(*case, sent[case], received[case_topic(*case)]) for case in cases
        ],
    }


def case_topic(codec_name, acks):
    return f"kp-produce-{codec_name}-acks-{acks}"


def available_codecs():
    """The codecs kafka-python can use here: gzip is built in, the others need libraries."""
    probes = {
        "gzip": codec.has_gzip,
        "snappy": codec.has_snappy,
        "lz4": codec.has_lz4,
        "zstd": codec.has_zstd,
    }
    return ["none"] + [name for name, available in probes.items() if available()]


def produce_case(bootstrap, codec_name, acks):
    """Sends RECORDS_PER_CASE keyed records; returns [(key, value, partition, offset)] in send
    order, where partition and offset are what the producer's acknowledgement said (offset -1
    with acks=0, which gets no response)."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=f"kp-producer-{codec_name}-{acks}",
        acks=acks,
        compression_type=None if codec_name == "none" else codec_name,
        linger_ms=5,
        # One request in flight per connection: retries cannot reorder records of a key.
        max_in_flight_requests_per_connection=1,
        # kafka-python 2.3.3 writes a request out only while its future is pending, and the
        # future of an acks=0 produce completes when it is queued: its bytes then wait in the
        # connection's buffer for the next request on that connection. A metadata refresh
        # every 100 ms is that next request (see wait_until_stored).
        metadata_max_age_ms=100 if acks == 0 else 300000,
    )
    topic = case_topic(codec_name, acks)
    futures = []
    for i in range(RECORDS_PER_CASE):
        key = f"key-{i % KEYS_PER_CASE}"
        value = f"{topic}#{i}"
        future = producer.send(topic, key=key.encode(), value=value.encode())
        futures.append((key, value, future))
    producer.flush(timeout=DEADLINE_S)
    sent = []
    for key, value, future in futures:
        metadata = future.get(timeout=DEADLINE_S)
        sent.append((key, value, metadata.partition, metadata.offset))
    if acks == 0:
        # Nothing acknowledges these records: closing now could drop those still queued.
        wait_until_stored(bootstrap, topic, RECORDS_PER_CASE)
    producer.close(timeout=DEADLINE_S)
    return sent


def wait_until_stored(bootstrap, topic, count):
    """Waits until the partitions of `topic` hold `count` records (their end offsets add up to
    it: the topic was empty before)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, client_id="kp-acks0-watch", enable_auto_commit=False
    )
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    wait_for(
        f"{count} acks=0 records to be stored in {topic}",
        lambda: sum(consumer.end_offsets(partitions).values()) >= count,
    )
    consumer.close()


def read_everything(bootstrap, topics):
    """Reads every partition of `topics` from the beginning up to the end offsets seen at the
    start; returns {topic: [(key, value, partition, offset)]} in the order consumed."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id="kp-reader",
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
    )
    partitions = [
        TopicPartition(topic, partition)
        for topic in topics
        for partition in sorted(consumer.partitions_for_topic(topic) or ())
    ]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    end = consumer.end_offsets(partitions)
    received = {topic: [] for topic in topics}

    def caught_up():
        for records in consumer.poll(timeout_ms=100).values():
            for record in records:
                received[record.topic].append(
                    (decode(record.key), decode(record.value), record.partition, record.offset)
                )
        return all(consumer.position(tp) >= end[tp] for tp in partitions)

    wait_for("the reader to reach the end offsets", caught_up)
    consumer.close()
    return received


def check_case(codec_name, acks, sent, received):
    """What a reader of the case's topic saw compared with what was sent to it."""
    sent_values = [value for _key, value, _partition, _offset in sent]
    received_values = [value for _key, value, _partition, _offset in received]
    at = {value: (partition, offset) for _key, value, partition, offset in received}
    acked_elsewhere = [
        value
        for _key, value, partition, offset in sent
        if offset >= 0 and at.get(value) != (partition, offset)
    ]
    return {
        "codec": codec_name,
        "acks": str(acks),
        "sent": len(sent),
        "acked_with_offset": sum(1 for *_rest, offset in sent if offset >= 0),
        "received": len(received),
        "missing": sorted(set(sent_values) - set(received_values)),
        "duplicated": sorted({v for v in received_values if received_values.count(v) > 1}),
        "acked_elsewhere": acked_elsewhere,
        "partitions_used": len({partition for _key, _value, partition, _offset in received}),
        "keys_on_several_partitions": keys_on_several_partitions(received),
        "keys_out_of_order": keys_out_of_order(sent, received),
    }


def keys_on_several_partitions(received):
    partitions_of = {}
    for key, _value, partition, _offset in received:
        partitions_of.setdefault(key, set()).add(partition)
    return sorted(key for key, partitions in partitions_of.items() if len(partitions) > 1)


def keys_out_of_order(sent, received):
    """Keys whose records, sorted by offset, are not in the order they were sent."""
    sent_order = {}
    for key, value, _partition, _offset in sent:
        sent_order.setdefault(key, []).append(value)
    read_order = {}
    for key, value, _partition, _offset in sorted(received, key=lambda r: (r[2], r[3])):
        read_order.setdefault(key, []).append(value)
    return sorted(key for key in sent_order if read_order.get(key) != sent_order[key])


def decode(raw):
    return None if raw is None else raw.decode()


# ---------------------------------------------------------------------------------------------
# times: ListOffsets by timestamp, earliest and latest


def times_scenario(bootstrap):
    topic = "kp-times"
    # Whole seconds in the recent past: inside any retention, distinct and easy to read.
    base_ms = (int(time.time()) - 600) * 1000
    producer = KafkaProducer(bootstrap_servers=bootstrap, client_id="kp-times", acks="all")
    for i in range(10):
        producer.send(topic, value=f"t{i}".encode(), timestamp_ms=base_ms + 1000 * i)
    producer.flush(timeout=DEADLINE_S)
    producer.close(timeout=DEADLINE_S)

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, client_id="kp-times-reader", enable_auto_commit=False
    )
    tp = TopicPartition(topic, 0)
    summary = {"base_ms": base_ms}
    for name, timestamp in [
        ("at_or_after_4500", base_ms + 4500),
        ("at_0", base_ms),
        ("before_all", base_ms - 1000),
        ("after_all", base_ms + 60000),
    ]:
        found = consumer.offsets_for_times({tp: timestamp})[tp]
        summary[name] = None if found is None else [found.offset, found.timestamp]
    summary["beginning"] = consumer.beginning_offsets([tp])[tp]
    summary["end"] = consumer.end_offsets([tp])[tp]
    consumer.close()
    return summary


# ---------------------------------------------------------------------------------------------
# group: two members share a topic, commit as they go; one leaves mid-stream


class Member(threading.Thread):
    """One consumer-group member in its own thread (a KafkaConsumer serves a single thread).

    After every poll that returned records it commits synchronously, then publishes what it
    read and its assignment. With a quota set, it leaves the group (LeaveGroup, no further
    commit) once it has read that many records of the second round.
    """

    def __init__(self, name, bootstrap, topic, group):
        super().__init__(name=name, daemon=True)
        self.bootstrap, self.topic, self.group = bootstrap, topic, group
        self.lock = threading.Lock()
        self.records = []
        self.assignment = set()
        self.commit_failures = []
        self.second_round_quota = None
        self.stop = threading.Event()
        self.error = None

    def run(self):
        try:
            self.consume()
        except Exception as error:  # reported to the main thread, which fails the scenario
            self.error = repr(error)

    def consume(self):
        consumer = KafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            client_id=self.name,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=5,
            fetch_max_wait_ms=100,
            **GROUP_TIMINGS,
        )
        while not self.stop.is_set():
            batch = [
                (record.partition, record.offset, decode(record.value))
                for records in consumer.poll(timeout_ms=100).values()
                for record in records
            ]
            failure = None
            if batch:
                try:
                    consumer.commit()
                except errors.KafkaError as error:
                    failure = repr(error)
            with self.lock:
                if failure is not None:
                    self.commit_failures.append(failure)
                self.records.extend(batch)
                self.assignment = {tp.partition for tp in consumer.assignment()}
                if self.quota_reached():
                    break
        consumer.close(autocommit=False)
        with self.lock:
            self.assignment = set()

    def quota_reached(self):
        if self.second_round_quota is None:
            return False
        second_round = sum(1 for *_rest, value in self.records if value.startswith("r2-"))
        return second_round >= self.second_round_quota

    def snapshot(self):
        with self.lock:
            return list(self.records), set(self.assignment)


def group_scenario(bootstrap):
    topic, group = "kp-group", "kp-group-members"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="kp-group-admin")
    admin.create_topics([NewTopic(topic, GROUP_PARTITIONS, 1)])
    all_partitions = set(range(GROUP_PARTITIONS))

    leaver = Member("kp-member-leaver", bootstrap, topic, group)
    stayer = Member("kp-member-stayer", bootstrap, topic, group)
    leaver.start()
    stayer.start()

    def split_between_both():
        (_, a), (_, b) = leaver.snapshot(), stayer.snapshot()
        check_members(leaver, stayer)
        return bool(a and b and not (a & b) and (a | b) == all_partitions)

    wait_for("both members to share the partitions", split_between_both)
    _, leaver_partitions = leaver.snapshot()
    _, stayer_partitions = stayer.snapshot()

    produce_round(bootstrap, topic, "r1")
    wait_for(
        "the first round to be read",
        lambda: distinct_values(leaver, stayer) >= all_records("r1"),
    )

    with leaver.lock:
        leaver.second_round_quota = LEAVER_QUOTA
    produce_round(bootstrap, topic, "r2")
    wait_for("the leaver to leave", lambda: not leaver.is_alive())
    wait_for(
        "the stayer to own every partition",
        lambda: stayer.snapshot()[1] == all_partitions,
    )
    # Each partition is read in offset order, so once every record was read once, any record
    # read twice (a resumption before the committed offset) has already been read.
    wait_for(
        "every record to be read",
        lambda: distinct_values(leaver, stayer) >= all_records(),
    )
    stayer.stop.set()
    stayer.join(DEADLINE_S)
    check_members(leaver, stayer)

    summary = summarize_group(leaver, stayer, leaver_partitions, stayer_partitions)
    summary.update(describe_group(admin, group, topic))
    admin.close()
    return summary


def check_members(*members):
    for member in members:
        if member.error is not None:
            raise RuntimeError(f"{member.name} failed: {member.error}")


def distinct_values(*members):
    check_members(*members)
    return {value for member in members for *_rest, value in member.snapshot()[0]}


def all_records(*prefixes):
    """The values of the records the group scenario produces in the rounds named by `prefixes`
    (both rounds if none is named)."""
    rounds = prefixes or ("r1", "r2")
    return {f"{prefix}-{i}" for prefix in rounds for i in range(RECORDS_PER_ROUND)}


def produce_round(bootstrap, topic, prefix):
    """RECORDS_PER_ROUND records spread evenly over the partitions, acknowledged."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, client_id="kp-group-producer", acks="all")
    futures = [
        producer.send(topic, value=f"{prefix}-{i}".encode(), partition=i % GROUP_PARTITIONS)
        for i in range(RECORDS_PER_ROUND)
    ]
    producer.flush(timeout=DEADLINE_S)
    for future in futures:
        future.get(timeout=DEADLINE_S)
    producer.close(timeout=DEADLINE_S)


def summarize_group(leaver, stayer, leaver_partitions, stayer_partitions):
    leaver_records, _ = leaver.snapshot()
    stayer_records, _ = stayer.snapshot()
    values = [value for *_rest, value in leaver_records + stayer_records]
    return {
        "leaver_partitions_while_both": sorted(leaver_partitions),
        "stayer_partitions_while_both": sorted(stayer_partitions),
        "leaver_read": len(leaver_records),
        "leaver_second_round_read": sum(
            1 for *_rest, value in leaver_records if value.startswith("r2-")
        ),
        "stayer_read": len(stayer_records),
        "stayer_read_from_leaver_partitions_in_second_round": sum(
            1
            for partition, _offset, value in stayer_records
            if partition in leaver_partitions and value.startswith("r2-")
        ),
        "first_round_read_outside_own_partitions": sum(
            1
            for member_records, owned in (
                (leaver_records, leaver_partitions),
                (stayer_records, stayer_partitions),
            )
            for partition, _offset, value in member_records
            if value.startswith("r1-") and partition not in owned
        ),
        "total_read": len(values),
        "missing": sorted(all_records() - set(values)),
        "duplicated": sorted({v for v in values if values.count(v) > 1}),
        "commit_failures": leaver.commit_failures + stayer.commit_failures,
    }


def describe_group(admin, group, topic):
    """What the admin API says about the group once both members are gone."""
    listed = [entry[0] for entry in admin.list_consumer_groups()]
    (described,) = admin.describe_consumer_groups([group])
    committed = admin.list_consumer_group_offsets(group)
    return {
        "group_listed": group in listed,
        "group_state": described.state,
        "group_members": len(described.members),
        "committed": {
            str(tp.partition): meta.offset for tp, meta in committed.items() if tp.topic == topic
        },
    }


# ---------------------------------------------------------------------------------------------


def wait_for(what, check):
    """Calls `check` until it returns something other than None or False, and returns that;
    raises naming `what` after DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {DEADLINE_S} s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


if __name__ == "__main__":
    main()
