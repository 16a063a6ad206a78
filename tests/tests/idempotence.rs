//! The idempotent producer (enable.idempotence=true): records land exactly once and in order,
//! also when Produce responses are lost and librdkafka retries the same batches.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::producer::BaseRecord;
use ringmq_system_tests::{
    assert_offsets_increase, by_partition, flush, send, wait_until, Broker, BrokerOptions,
    DeliveryLog, Record, ResponseDroppingProxy, ADVERTISED_PORT_FLAG, DEADLINE,
};

const PARTITIONS: i32 = 3;

fn produce_idempotently(broker: &Broker, settings: &[(&str, &str)], topic: &str, count: u32) {
    produce(broker, true, settings, topic, count);
}

fn produce(broker: &Broker, idempotent: bool, settings: &[(&str, &str)], topic: &str, count: u32) {
    let deliveries = DeliveryLog::new();
    let mut all = vec![
        (
            "enable.idempotence",
            if idempotent { "true" } else { "false" },
        ),
        ("acks", "all"),
        ("linger.ms", "5"),
        ("max.in.flight.requests.per.connection", "5"),
    ];
    all.extend_from_slice(settings);
    {
        let producer = broker.producer(&all, &deliveries);
        for i in 0..count {
            let partition = i32::try_from(i % PARTITIONS as u32).expect("i32");
            let payload = format!("idem-{partition}-{:06}", i / PARTITIONS as u32);
            send(
                &producer,
                BaseRecord::to(topic)
                    .partition(partition)
                    .payload(payload.as_bytes()),
            );
        }
        flush(&producer);
    }
    deliveries.assert_no_failures();
    assert_eq!(deliveries.acked_count(), count as usize, "delivery reports");
}

/// Each partition holds its records exactly once, in the order sent, at offsets 0, 1, 2, ...
fn check_exactly_once_in_order(read: &[Record], count: u32) {
    let mut seen: HashMap<&str, i64> = HashMap::new();
    for r in read {
        if let Some(first) = seen.insert(r.payload_str(), r.offset) {
            panic!(
                "{:?} stored twice (offsets {first} and {}) in partition {}",
                r.payload_str(),
                r.offset,
                r.partition
            );
        }
    }
    assert_eq!(read.len(), count as usize, "records stored");
    assert_offsets_increase(read, "idempotent");
    for (partition, records) in by_partition(read) {
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.payload_str(), format!("idem-{partition}-{i:06}"), "order");
            assert_eq!(
                r.offset, i as i64,
                "offset of record {i} of partition {partition}"
            );
        }
    }
}

#[test]
fn idempotent_producer_stores_each_record_once_in_order() {
    let broker = Broker::start_with(
        BrokerOptions::default()
            .cores(2)
            .default_partitions(PARTITIONS as u32),
    );
    let topic = "idempotent";
    produce_idempotently(&broker, &[], topic, 3000);
    check_exactly_once_in_order(&broker.read_all(topic, PARTITIONS as usize), 3000);
}

/// Settings that send a producer through `proxy` and make it reconnect and retry quickly, in
/// small batches so that there are many Produce requests whose answers can be lost.
fn through_proxy(bootstrap: &str) -> [(&str, &str); 5] {
    [
        ("bootstrap.servers", bootstrap),
        ("reconnect.backoff.ms", "10"),
        ("reconnect.backoff.max.ms", "100"),
        ("retry.backoff.ms", "10"),
        ("batch.num.messages", "10"),
    ]
}

/// A broker on two cores that tells clients to connect through `proxy`.
fn broker_behind(proxy: &ResponseDroppingProxy) -> Broker {
    let broker = Broker::start_with(
        BrokerOptions::default()
            .cores(2)
            .default_partitions(PARTITIONS as u32)
            .arg(ADVERTISED_PORT_FLAG)
            .arg(proxy.addr().port().to_string()),
    );
    proxy.set_upstream(broker.addr());
    broker
}

/// Every 5th Produce response is lost on the way back (the connection is cut instead), so
/// librdkafka resends batches the broker already stored. The broker must recognise the
/// repeated sequence numbers and store nothing twice.
#[test]
fn idempotent_producer_retries_after_lost_responses_store_nothing_twice() {
    let proxy = ResponseDroppingProxy::start(5);
    let broker = broker_behind(&proxy);
    let topic = "idempotent-retried";
    let bootstrap = proxy.addr().to_string();
    produce_idempotently(&broker, &through_proxy(&bootstrap), topic, 2000);
    assert!(
        proxy.dropped() > 0,
        "the proxy lost no Produce response ({} went through it), so nothing was retried",
        proxy.produce_responses()
    );
    check_exactly_once_in_order(&broker.read_all(topic, PARTITIONS as usize), 2000);
}

/// The control for the test above: the same lost responses with idempotence off make
/// librdkafka store records twice. Were this to stop happening, the proxy would no longer
/// cause resends of stored batches, and the test above would prove nothing.
#[test]
fn lost_responses_cause_duplicates_without_idempotence() {
    let proxy = ResponseDroppingProxy::start(5);
    let broker = broker_behind(&proxy);
    let topic = "not-idempotent-retried";
    let bootstrap = proxy.addr().to_string();
    produce(&broker, false, &through_proxy(&bootstrap), topic, 2000);
    let read = broker.read_all(topic, PARTITIONS as usize);
    let distinct: HashSet<&str> = read.iter().map(Record::payload_str).collect();
    assert_eq!(distinct.len(), 2000, "every record is stored at least once");
    assert!(
        read.len() > distinct.len(),
        "no record was stored twice although {} Produce responses were lost",
        proxy.dropped()
    );
}

/// Producer-id state survives a restart: an idempotent producer keeps producing through a
/// broker that is stopped (SIGTERM) and started again under it, while Produce responses keep
/// getting lost. Batches resent after the restart must be recognised from the persisted
/// sequence state: every record exactly once, in order.
#[test]
fn idempotent_producer_across_a_broker_restart() {
    let proxy = ResponseDroppingProxy::start(5);
    let mut broker = broker_behind(&proxy);
    let topic = "idempotent-restarted";
    let bootstrap = proxy.addr().to_string();
    let deliveries = DeliveryLog::new();
    let mut settings = vec![
        ("enable.idempotence", "true"),
        ("acks", "all"),
        ("max.in.flight.requests.per.connection", "5"),
    ];
    settings.extend_from_slice(&through_proxy(&bootstrap));
    let producer = broker.producer(&settings, &deliveries);
    const COUNT: u32 = 2000;
    let payload = |i: u32| {
        let partition = i % PARTITIONS as u32;
        format!("idem-{partition}-{:06}", i / PARTITIONS as u32)
    };
    for i in 0..COUNT / 2 {
        let partition = i32::try_from(i % PARTITIONS as u32).expect("i32");
        let p = payload(i);
        send(
            &producer,
            BaseRecord::to(topic)
                .partition(partition)
                .payload(p.as_bytes()),
        );
    }
    wait_until(DEADLINE, "a third of the records acknowledged", || {
        producer.poll(Duration::from_millis(10));
        (deliveries.acked_count() >= COUNT as usize / 3).then_some(())
    });
    let status = broker.terminate();
    assert!(status.success(), "SIGTERM should exit 0, got {status}");
    broker.restart();
    proxy.set_upstream(broker.addr());
    for i in COUNT / 2..COUNT {
        let partition = i32::try_from(i % PARTITIONS as u32).expect("i32");
        let p = payload(i);
        send(
            &producer,
            BaseRecord::to(topic)
                .partition(partition)
                .payload(p.as_bytes()),
        );
    }
    flush(&producer);
    deliveries.assert_no_failures();
    assert_eq!(deliveries.acked_count(), COUNT as usize);
    check_exactly_once_in_order(&broker.read_all(topic, PARTITIONS as usize), COUNT);
}
