//! The classic consumer-group protocol with librdkafka: three members share six partitions, one
//! leaves and the other two take its partitions over from its committed offsets; a member that
//! joins later; a member that goes silent and is expelled after its session timeout. Every
//! record is committed before the next poll, so nothing may be read twice or skipped.

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

/// Assignment changes kept for a failure message.
const MAX_HISTORY: usize = 500;

/// What the members have read, and how their assignments changed (for failure messages).
#[derive(Default)]
struct Seen {
    /// payload -> (member index, partition, offset).
    records: HashMap<String, (usize, i32, i64)>,
    history: Vec<String>,
    last_assignment: HashMap<usize, BTreeSet<i32>>,
}

impl Seen {
    fn len(&self) -> usize {
        self.records.len()
    }

    fn contains_key(&self, payload: &str) -> bool {
        self.records.contains_key(payload)
    }

    fn values(&self) -> impl Iterator<Item = &(usize, i32, i64)> {
        self.records.values()
    }

    fn note_assignment(&mut self, member: usize, assignment: BTreeSet<i32>) {
        if self.last_assignment.get(&member) != Some(&assignment)
            && self.history.len() < MAX_HISTORY
        {
            self.history.push(format!(
                "after {} records: member {member} holds {assignment:?}",
                self.records.len()
            ));
        }
        self.last_assignment.insert(member, assignment);
    }
}

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
            let result = consumer.poll(Duration::from_millis(50));
            seen.note_assignment(index, assigned(consumer));
            let Some(result) = result else {
                continue;
            };
            let message = result.expect("consumer error");
            let payload =
                String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
            let position = (index, message.partition(), message.offset());
            if let Some(first) = seen.records.insert(payload.clone(), position) {
                panic!(
                    "{payload:?} read twice: first (member, partition, offset) {first:?}, \
                     again {position:?}; assignments seen:\n{}",
                    seen.history.join("\n")
                );
            }
            consumer
                .commit_message(&message, CommitMode::Sync)
                .unwrap_or_else(|e| panic!("member {index} committing {payload:?}: {e}"));
        }
    }
}

fn produce(broker: &Broker, first: u32, count: u32) {
    let deliveries = DeliveryLog::new();
    // Idempotent, so a record read twice cannot be a producer retry stored twice.
    let producer = broker.producer(
        &[("acks", "all"), ("enable.idempotence", "true")],
        &deliveries,
    );
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
    let mut seen = Seen::default();
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
    let mut seen = Seen::default();
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

/// A hand-written group member speaking JoinGroup v5 / SyncGroup v3 over raw TCP, so the test
/// can make a member go silent: no heartbeats and no LeaveGroup, as when its process dies.
mod raw_member {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    const API_JOIN_GROUP: i16 = 11;
    const API_SYNC_GROUP: i16 = 14;
    const MEMBER_ID_REQUIRED: i16 = 79;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend(i16::try_from(s.len()).expect("short string").to_be_bytes());
        out.extend(s.as_bytes());
    }

    fn call(stream: &mut TcpStream, api_key: i16, version: i16, body: &[u8]) -> Vec<u8> {
        let mut message = Vec::new();
        message.extend(api_key.to_be_bytes());
        message.extend(version.to_be_bytes());
        message.extend(7i32.to_be_bytes());
        string(&mut message, "raw-member");
        message.extend(body);
        let size = i32::try_from(message.len()).expect("small request");
        stream.write_all(&size.to_be_bytes()).expect("write");
        stream.write_all(&message).expect("write");
        let mut size = [0u8; 4];
        stream.read_exact(&mut size).expect("response size");
        let size = usize::try_from(i32::from_be_bytes(size)).expect("size >= 0");
        assert!(size < 1 << 20, "response of {size} bytes");
        let mut response = vec![0u8; size];
        stream.read_exact(&mut response).expect("response");
        response
    }

    struct Reader<'a>(&'a [u8], usize);

    impl Reader<'_> {
        fn take(&mut self, n: usize) -> &[u8] {
            let out = &self.0[self.1..self.1 + n];
            self.1 += n;
            out
        }
        fn i16(&mut self) -> i16 {
            i16::from_be_bytes(self.take(2).try_into().expect("2 bytes"))
        }
        fn i32(&mut self) -> i32 {
            i32::from_be_bytes(self.take(4).try_into().expect("4 bytes"))
        }
        fn string(&mut self) -> String {
            let len = usize::try_from(self.i16()).expect("non-null string");
            String::from_utf8_lossy(self.take(len)).into_owned()
        }
    }

    /// Joins `group` subscribed to `topic` with the given timeouts, follows the leader's
    /// assignment through SyncGroup, and returns the connection without ever heartbeating.
    /// Blocks until the group's rebalance completes (the other members must keep polling).
    pub fn join_and_go_silent(
        addr: std::net::SocketAddr,
        group: &str,
        topic: &str,
        session_timeout_ms: i32,
    ) -> TcpStream {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(super::DEADLINE))
            .expect("read timeout");
        // ConsumerProtocolSubscription v0: version, topics, no user data.
        let mut subscription = Vec::new();
        subscription.extend(0i16.to_be_bytes());
        subscription.extend(1i32.to_be_bytes());
        string(&mut subscription, topic);
        subscription.extend((-1i32).to_be_bytes());

        let mut member_id = String::new();
        let (generation, member_id) = loop {
            let mut body = Vec::new();
            string(&mut body, group);
            body.extend(session_timeout_ms.to_be_bytes());
            body.extend(session_timeout_ms.to_be_bytes()); // rebalance timeout
            string(&mut body, &member_id);
            body.extend((-1i16).to_be_bytes()); // no group instance id
            string(&mut body, "consumer");
            body.extend(1i32.to_be_bytes());
            string(&mut body, "range");
            body.extend(
                i32::try_from(subscription.len())
                    .expect("len")
                    .to_be_bytes(),
            );
            body.extend(&subscription);
            let response = call(&mut stream, API_JOIN_GROUP, 5, &body);
            let mut r = Reader(&response, 4); // after the correlation id
            let _throttle = r.i32();
            let error = r.i16();
            let generation = r.i32();
            let _protocol = r.string();
            let _leader = r.string();
            let assigned_id = r.string();
            match error {
                0 => break (generation, assigned_id),
                MEMBER_ID_REQUIRED => member_id = assigned_id,
                other => panic!("raw member JoinGroup failed with error {other}"),
            }
        };

        let mut body = Vec::new();
        string(&mut body, group);
        body.extend(generation.to_be_bytes());
        string(&mut body, &member_id);
        body.extend((-1i16).to_be_bytes()); // no group instance id
        body.extend(0i32.to_be_bytes()); // a follower sends no assignments
        let response = call(&mut stream, API_SYNC_GROUP, 3, &body);
        let mut r = Reader(&response, 4);
        let _throttle = r.i32();
        assert_eq!(r.i16(), 0, "raw member SyncGroup error");
        stream
    }
}

/// A member that stops heartbeating without leaving (its process died) is removed after its
/// session timeout; the remaining member takes all partitions back and reads every record
/// exactly once.
#[test]
fn silent_member_is_removed_after_its_session_timeout() {
    let broker = Broker::start_with(
        BrokerOptions::default()
            .default_partitions(PARTITIONS as u32)
            .no_group_delay(),
    );
    assert_eq!(broker.partition_count(TOPIC), PARTITIONS as usize);
    let a = member(&broker);
    let mut seen = Seen::default();
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

    // The raw member joins; its JoinGroup completes only once A rejoins, so A keeps polling
    // while the raw member's thread waits.
    let addr = broker.addr();
    let joiner =
        std::thread::spawn(move || raw_member::join_and_go_silent(addr, GROUP, TOPIC, 6000));
    pump(
        &[&a],
        &mut seen,
        "A to hand three partitions to the raw member",
        |_| joiner.is_finished() && assigned(&a).len() == 3,
    );
    let silent = joiner.join().expect("raw member thread");

    // No heartbeat from the raw member: after 6 s it is expelled and A gets everything back.
    pump(
        &[&a],
        &mut seen,
        "A to hold all six partitions again",
        |_| balanced(&[&a], 6),
    );
    produce(&broker, 600, 600);
    pump(&[&a], &mut seen, "all 1200 records", |s| s.len() == 1200);
    drop(silent);
}
