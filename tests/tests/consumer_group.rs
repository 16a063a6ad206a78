//! The classic consumer-group protocol with librdkafka: three members share six partitions,
//! one leaves, the other two take its partitions over from its committed offsets.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::BaseRecord;
use rdkafka::{Message, Offset, TopicPartitionList};
use ringmq_system_tests::{flush, send, Broker, BrokerOptions, DeliveryLog, DEADLINE};

const TOPIC: &str = "group-topic";
const GROUP: &str = "group-of-three";
const PARTITIONS: i32 = 6;

fn member(broker: &Broker) -> BaseConsumer {
    let consumer = broker.consumer(&[
        ("group.id", GROUP),
        ("enable.auto.commit", "false"),
        ("heartbeat.interval.ms", "500"),
        ("session.timeout.ms", "10000"),
        ("partition.assignment.strategy", "range"),
    ]);
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    consumer
}

fn assigned(consumer: &BaseConsumer) -> BTreeSet<i32> {
    consumer
        .assignment()
        .expect("assignment")
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect()
}

/// What the members have read: payload -> (member index, partition, offset).
type Seen = HashMap<String, (usize, i32, i64)>;

/// Polls every member in turn; every record read is committed synchronously before the next
/// poll, so a member's progress is always committed when a rebalance can take its partitions.
/// Stops when `done` holds.
fn pump(members: &[&BaseConsumer], seen: &mut Seen, what: &str, done: impl Fn(&Seen) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done(seen) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {} records read, assignments {:?}",
            seen.len(),
            members.iter().map(|m| assigned(m)).collect::<Vec<_>>()
        );
        for (index, consumer) in members.iter().enumerate() {
            let Some(result) = consumer.poll(Duration::from_millis(50)) else {
                continue;
            };
            let message = result.expect("consumer error");
            let payload =
                String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
            let position = (index, message.partition(), message.offset());
            if let Some(first) = seen.insert(payload.clone(), position) {
                panic!("{payload:?} read twice: first {first:?}, again {position:?}");
            }
            consumer
                .commit_message(&message, CommitMode::Sync)
                .unwrap_or_else(|e| panic!("member {index} committing {payload:?}: {e}"));
        }
    }
}

fn produce(broker: &Broker, first: u32, count: u32) {
    let deliveries = DeliveryLog::new();
    let producer = broker.producer(&[("acks", "all")], &deliveries);
    let payloads: Vec<String> = (first..first + count)
        .map(|i| format!("msg-{i:05}"))
        .collect();
    for (i, payload) in payloads.iter().enumerate() {
        let partition = i32::try_from((first as usize + i) % PARTITIONS as usize).expect("i32");
        send(
            &producer,
            BaseRecord::to(TOPIC)
                .partition(partition)
                .payload(payload.as_bytes()),
        );
    }
    flush(&producer);
    deliveries.assert_no_failures();
    assert_eq!(deliveries.acked_count(), count as usize);
}

/// Asserts the members' assignments are disjoint and together cover every partition, each
/// member holding `per_member` partitions.
fn balanced(members: &[&BaseConsumer], per_member: usize) -> bool {
    let sets: Vec<BTreeSet<i32>> = members.iter().map(|m| assigned(m)).collect();
    let all: BTreeSet<i32> = sets.iter().flatten().copied().collect();
    let total: usize = sets.iter().map(BTreeSet::len).sum();
    sets.iter().all(|s| s.len() == per_member)
        && total == all.len()
        && all.len() == PARTITIONS as usize
}

/// ListGroups + DescribeGroups (librdkafka's group list): the group is Stable, with `members`
/// members, consumer protocol type and the range assignor the members asked for.
fn check_described(consumer: &BaseConsumer, members: usize) {
    let list = consumer
        .fetch_group_list(Some(GROUP), DEADLINE)
        .expect("listing and describing groups");
    let group = list
        .groups()
        .iter()
        .find(|g| g.name() == GROUP)
        .unwrap_or_else(|| panic!("group {GROUP} not listed"));
    assert_eq!(group.state(), "Stable", "group state");
    assert_eq!(group.protocol_type(), "consumer", "protocol type");
    assert_eq!(group.protocol(), "range", "assignment protocol");
    assert_eq!(group.members().len(), members, "members of {GROUP}");
}

#[test]
fn group_of_three_rebalances_when_one_leaves_without_loss_or_duplicates() {
    let broker = Broker::start_with(
        BrokerOptions::default()
            .cores(2)
            .default_partitions(PARTITIONS as u32)
            .no_group_delay(),
    );
    // Create the topic (auto-creation) before anyone subscribes, so the first assignment
    // already sees six partitions.
    assert_eq!(broker.partition_count(TOPIC), PARTITIONS as usize);

    let a = member(&broker);
    let b = member(&broker);
    let c = member(&broker);
    let mut seen = Seen::new();
    pump(
        &[&a, &b, &c],
        &mut seen,
        "three members with two partitions each",
        |_| balanced(&[&a, &b, &c], 2),
    );

    check_described(&a, 3);

    produce(&broker, 0, 1200);
    pump(&[&a, &b, &c], &mut seen, "the first 1200 records", |s| {
        s.len() == 1200
    });
    for (index, m) in [&a, &b, &c].iter().enumerate() {
        assert!(
            seen.values().any(|(member, _, _)| *member == index),
            "member {index} read nothing though it holds {:?}",
            assigned(m)
        );
    }
    let c_partitions = assigned(&c);

    // C leaves the group (close sends LeaveGroup); A and B must split all six partitions.
    drop(c);
    pump(
        &[&a, &b],
        &mut seen,
        "two members with three partitions each",
        |_| balanced(&[&a, &b], 3),
    );

    check_described(&a, 2);

    produce(&broker, 1200, 1200);
    pump(&[&a, &b], &mut seen, "all 2400 records", |s| {
        s.len() == 2400
    });
    assert!(
        seen.values().any(|(member, partition, offset)| *member < 2
            && c_partitions.contains(partition)
            && *offset >= 200),
        "nobody read C's partitions {c_partitions:?} after it left"
    );

    // Nothing lost: every record produced was read (exactly once, checked while reading).
    for i in 0..2400 {
        assert!(
            seen.contains_key(&format!("msg-{i:05}")),
            "msg-{i:05} never read"
        );
    }

    // The committed offsets are the ends of the partitions.
    let mut tpl = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        tpl.add_partition(TOPIC, partition);
    }
    let committed = a
        .committed_offsets(tpl, DEADLINE)
        .expect("fetching committed offsets");
    for element in committed.elements() {
        assert_eq!(
            element.offset(),
            Offset::Offset(400),
            "committed offset of partition {}",
            element.partition()
        );
    }
}

/// A member that joins later triggers a rebalance and takes partitions over from the
/// offsets the first member committed: nothing is read twice, nothing is skipped.
#[test]
fn member_joining_later_takes_over_from_committed_offsets() {
    let broker = Broker::start_with(
        BrokerOptions::default()
            .default_partitions(PARTITIONS as u32)
            .no_group_delay(),
    );
    assert_eq!(broker.partition_count(TOPIC), PARTITIONS as usize);
    let a = member(&broker);
    let mut seen = Seen::new();
    pump(
        &[&a],
        &mut seen,
        "one member with all six partitions",
        |_| balanced(&[&a], 6),
    );
    produce(&broker, 0, 600);
    pump(&[&a], &mut seen, "the first 600 records", |s| {
        s.len() == 600
    });

    let b = member(&broker);
    pump(
        &[&a, &b],
        &mut seen,
        "two members with three partitions each",
        |_| balanced(&[&a, &b], 3),
    );
    produce(&broker, 600, 600);
    pump(&[&a, &b], &mut seen, "all 1200 records", |s| {
        s.len() == 1200
    });
    assert!(
        seen.values().any(|(member, _, _)| *member == 1),
        "the member that joined read nothing"
    );
}
