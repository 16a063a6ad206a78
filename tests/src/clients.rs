//! What the clients saw (records, delivery reports) and small helpers around librdkafka's
//! producer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use crate::DEADLINE;

/// A record as a client saw it (from a delivery report or from a consumer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp_ms: Option<i64>,
}

impl Record {
    pub fn from_message(message: &impl Message) -> Record {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Record {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: message.timestamp().to_millis(),
        }
    }

    pub fn payload_str(&self) -> &str {
        std::str::from_utf8(self.payload.as_deref().unwrap_or_default()).unwrap_or("<not utf-8>")
    }
}

/// Every delivery report a producer received.
#[derive(Default)]
pub struct DeliveryLog {
    pub acked: Mutex<Vec<Record>>,
    pub failed: Mutex<Vec<(Record, KafkaError)>>,
}

impl DeliveryLog {
    pub fn new() -> Arc<DeliveryLog> {
        Arc::new(DeliveryLog::default())
    }

    pub fn acked(&self) -> Vec<Record> {
        self.acked.lock().expect("delivery log lock").clone()
    }

    pub fn acked_count(&self) -> usize {
        self.acked.lock().expect("delivery log lock").len()
    }

    /// Panics, listing a few, if any delivery failed.
    pub fn assert_no_failures(&self) {
        let failed = self.failed.lock().expect("delivery log lock");
        assert!(
            failed.is_empty(),
            "{} deliveries failed, first ones: {:?}",
            failed.len(),
            failed.iter().take(5).collect::<Vec<_>>()
        );
    }
}

/// Producer context that records delivery reports into a [`DeliveryLog`].
pub struct RecordingContext(pub Arc<DeliveryLog>);

impl ClientContext for RecordingContext {}

impl ProducerContext for RecordingContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        match result {
            Ok(message) => self
                .0
                .acked
                .lock()
                .expect("delivery log lock")
                .push(Record::from_message(message)),
            Err((err, message)) => self
                .0
                .failed
                .lock()
                .expect("delivery log lock")
                .push((Record::from_message(message), err.clone())),
        }
    }
}

/// Enqueues one record, serving delivery reports while librdkafka's queue is full.
pub fn send<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, [u8], [u8]>,
) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                assert!(Instant::now() < deadline, "producer queue stayed full");
                record = back;
                producer.poll(Duration::from_millis(50));
            }
            Err((err, _)) => panic!("enqueueing a record failed: {err}"),
        }
    }
}

/// Flushes a producer (waits for every delivery report) within the deadline.
pub fn flush<C: ProducerContext>(producer: &BaseProducer<C>) {
    producer.flush(DEADLINE).expect("flushing the producer");
}

/// Builds a record for `topic` with optional key, a payload, and one header `seq`.
pub fn record<'a>(
    topic: &'a str,
    key: Option<&'a [u8]>,
    payload: &'a [u8],
    seq: u64,
) -> BaseRecord<'a, [u8], [u8]> {
    let headers = rdkafka::message::OwnedHeaders::new().insert(Header {
        key: "seq",
        value: Some(&seq.to_be_bytes()),
    });
    let record = BaseRecord::to(topic).payload(payload).headers(headers);
    match key {
        Some(key) => record.key(key),
        None => record,
    }
}

/// Groups records by partition, keeping their order.
pub fn by_partition(records: &[Record]) -> BTreeMap<i32, Vec<Record>> {
    let mut map: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
    for record in records {
        map.entry(record.partition)
            .or_default()
            .push(record.clone());
    }
    map
}

/// Asserts that offsets within each partition strictly increase in the order given.
pub fn assert_offsets_increase(records: &[Record], what: &str) {
    for (partition, records) in by_partition(records) {
        for pair in records.windows(2) {
            assert!(
                pair[0].offset < pair[1].offset,
                "{what}: partition {partition} offsets go {} then {} ({:?} then {:?})",
                pair[0].offset,
                pair[1].offset,
                pair[0].payload_str(),
                pair[1].payload_str()
            );
        }
    }
}

/// Blocks on a future (used for the admin client, whose futures librdkafka's own thread completes).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    futures_executor::block_on(future)
}
