//! Hostile and broken bytes over raw TCP: the broker answers with the proper error or closes
//! that connection, never dies, never stops serving other clients, never damages stored data.
//! Also the configured limits (connections, frame size) and two protocol traps (acks=0 gets no
//! response; ApiVersions v3 carries no tagged fields).
//!
//! The frames are written byte by byte here, independently of the project's own codec, so a
//! bug shared by our encoder and decoder cannot hide.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};

use rdkafka::producer::BaseRecord;
use ringmq_system_tests::{flush, send, wait_until, Broker, BrokerOptions, DeliveryLog, DEADLINE};

const API_PRODUCE: i16 = 0;
const API_METADATA: i16 = 3;
const API_VERSIONS: i16 = 18;
const UNSUPPORTED_VERSION: i16 = 35;
const CORRUPT_MESSAGE: i16 = 2;

fn connect(broker: &Broker) -> TcpStream {
    let stream = TcpStream::connect(broker.addr()).expect("connecting to the broker");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// A request frame: size, then header v1 (or v2 when `flexible`, with an empty tagged-field
/// section), then `body`. The client id is null.
fn frame(
    api_key: i16,
    api_version: i16,
    correlation_id: i32,
    flexible: bool,
    body: &[u8],
) -> Vec<u8> {
    let mut message = Vec::new();
    message.extend(api_key.to_be_bytes());
    message.extend(api_version.to_be_bytes());
    message.extend(correlation_id.to_be_bytes());
    message.extend((-1i16).to_be_bytes());
    if flexible {
        message.push(0);
    }
    message.extend(body);
    let mut out = i32::try_from(message.len())
        .expect("small frame")
        .to_be_bytes()
        .to_vec();
    out.extend(message);
    out
}

/// What came back on a connection.
#[derive(Debug, PartialEq)]
enum Reply {
    /// One response frame (without its size prefix).
    Response(Vec<u8>),
    /// The broker closed the connection.
    Closed,
}

fn read_reply(stream: &mut TcpStream) -> Reply {
    let mut size = [0u8; 4];
    match stream.read_exact(&mut size) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
            ) =>
        {
            return Reply::Closed
        }
        Err(e) => {
            panic!("reading a reply: {e} (neither a response nor a close within {DEADLINE:?})")
        }
    }
    let size = usize::try_from(i32::from_be_bytes(size)).expect("response size >= 0");
    assert!(size < 64 << 20, "response of {size} bytes");
    let mut body = vec![0u8; size];
    match stream.read_exact(&mut body) {
        Ok(()) => Reply::Response(body),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
            ) =>
        {
            Reply::Closed
        }
        Err(e) => panic!("reading a response body: {e}"),
    }
}

/// Writes, ignoring a broker that closed before reading everything (that is allowed).
fn write_all_or_closed(stream: &mut TcpStream, bytes: &[u8]) {
    match stream.write_all(bytes) {
        Ok(()) => {}
        Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {}
        Err(e) => panic!("writing to the broker: {e}"),
    }
}

fn i16_at(bytes: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(bytes[at..at + 2].try_into().expect("2 bytes"))
}

fn i32_at(bytes: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// The broker process is alive and answers ApiVersions v0 on a fresh connection with error 0
/// and the Produce and Fetch keys.
fn assert_serving(broker: &mut Broker, after: &str) {
    assert!(broker.is_running(), "the broker died after {after}");
    let mut stream = connect(broker);
    stream
        .write_all(&frame(API_VERSIONS, 0, 4242, false, &[]))
        .expect("sending ApiVersions");
    let Reply::Response(body) = read_reply(&mut stream) else {
        panic!("after {after}: ApiVersions on a fresh connection got the connection closed");
    };
    assert_eq!(i32_at(&body, 0), 4242, "correlation id, after {after}");
    assert_eq!(i16_at(&body, 4), 0, "ApiVersions error code, after {after}");
    let count = usize::try_from(i32_at(&body, 6)).expect("api count");
    let keys: Vec<i16> = (0..count).map(|i| i16_at(&body, 10 + 6 * i)).collect();
    assert!(
        keys.contains(&API_PRODUCE) && keys.contains(&1),
        "after {after}: ApiVersions lists {keys:?}"
    );
}

/// A deterministic byte stream (xorshift), so a failure can be replayed.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// Zigzag varint, as in record batches.
fn varint(value: i64, out: &mut Vec<u8>) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A RecordBatch v2 holding one record with value `value`; `good_crc` false breaks its CRC.
fn record_batch(value: &[u8], good_crc: bool) -> Vec<u8> {
    let mut record = vec![0u8]; // attributes
    varint(0, &mut record); // timestamp delta
    varint(0, &mut record); // offset delta
    varint(-1, &mut record); // null key
    varint(i64::try_from(value.len()).expect("len"), &mut record);
    record.extend(value);
    varint(0, &mut record); // no headers
    let mut records = Vec::new();
    varint(i64::try_from(record.len()).expect("len"), &mut records);
    records.extend(record);

    let mut after_crc = Vec::new();
    after_crc.extend(0i16.to_be_bytes()); // attributes: no compression, create time
    after_crc.extend(0i32.to_be_bytes()); // last offset delta
    after_crc.extend(1_700_000_000_000i64.to_be_bytes()); // first timestamp
    after_crc.extend(1_700_000_000_000i64.to_be_bytes()); // max timestamp
    after_crc.extend((-1i64).to_be_bytes()); // producer id
    after_crc.extend((-1i16).to_be_bytes()); // producer epoch
    after_crc.extend((-1i32).to_be_bytes()); // base sequence
    after_crc.extend(1i32.to_be_bytes()); // record count
    after_crc.extend(records);
    let crc = crc32c::crc32c(&after_crc) ^ if good_crc { 0 } else { 0x5a5a_5a5a };

    let mut batch = Vec::new();
    batch.extend(0i64.to_be_bytes()); // base offset
    let batch_length = 4 + 1 + 4 + after_crc.len(); // leader epoch, magic, crc, rest
    batch.extend(i32::try_from(batch_length).expect("len").to_be_bytes());
    batch.extend(0i32.to_be_bytes()); // partition leader epoch
    batch.push(2); // magic
    batch.extend(crc.to_be_bytes());
    batch.extend(after_crc);
    batch
}

/// Produce v3 body: one topic, partition 0, one batch.
fn produce_body(topic: &str, acks: i16, batch: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend((-1i16).to_be_bytes()); // no transactional id
    body.extend(acks.to_be_bytes());
    body.extend(30_000i32.to_be_bytes()); // timeout ms
    body.extend(1i32.to_be_bytes()); // one topic
    body.extend(i16::try_from(topic.len()).expect("len").to_be_bytes());
    body.extend(topic.as_bytes());
    body.extend(1i32.to_be_bytes()); // one partition
    body.extend(0i32.to_be_bytes()); // partition 0
    body.extend(i32::try_from(batch.len()).expect("len").to_be_bytes());
    body.extend(batch);
    body
}

/// The error code of the single partition in a Produce v3 response.
fn produce_error(body: &[u8], topic: &str) -> i16 {
    // correlation id, topic count, topic name, partition count, partition index, error code
    let name_len = usize::try_from(i16_at(body, 8)).expect("name length");
    assert_eq!(
        &body[10..10 + name_len],
        topic.as_bytes(),
        "topic in produce response"
    );
    let at = 10 + name_len;
    assert_eq!(i32_at(body, at), 1, "partition count in produce response");
    assert_eq!(
        i32_at(body, at + 4),
        0,
        "partition index in produce response"
    );
    i16_at(body, at + 8)
}

fn produce_one(broker: &Broker, topic: &str, value: &[u8]) {
    let deliveries = DeliveryLog::new();
    let producer = broker.producer(&[("acks", "all")], &deliveries);
    send(&producer, BaseRecord::to(topic).payload(value));
    flush(&producer);
    deliveries.assert_no_failures();
}

/// DeleteRecords v0 for partitions of `topic`: (error code, low watermark) of each, as
/// answered.
fn delete_records(broker: &Broker, topic: &str, at: &[(i32, i64)]) -> Vec<(i16, i64)> {
    let mut body = Vec::new();
    body.extend(1i32.to_be_bytes()); // one topic
    body.extend(i16::try_from(topic.len()).expect("len").to_be_bytes());
    body.extend(topic.as_bytes());
    body.extend(i32::try_from(at.len()).expect("count").to_be_bytes());
    for (partition, offset) in at {
        body.extend(partition.to_be_bytes());
        body.extend(offset.to_be_bytes());
    }
    body.extend(30_000i32.to_be_bytes()); // timeout ms
    let mut stream = connect(broker);
    stream
        .write_all(&frame(21, 0, 7, false, &body))
        .expect("sending DeleteRecords");
    let Reply::Response(r) = read_reply(&mut stream) else {
        panic!("DeleteRecords got no response");
    };
    // correlation id, throttle time, topic count, name, partition count, then per partition:
    // index, low watermark, error code.
    assert_eq!(i32_at(&r, 0), 7, "correlation id");
    assert_eq!(i32_at(&r, 8), 1, "topic count");
    let name_len = usize::try_from(i16_at(&r, 12)).expect("name length");
    let mut pos = 14 + name_len;
    assert_eq!(i32_at(&r, pos), i32::try_from(at.len()).expect("count"));
    pos += 4;
    at.iter()
        .map(|(partition, _)| {
            assert_eq!(i32_at(&r, pos), *partition, "partition index");
            let low = i64::from_be_bytes(r[pos + 4..pos + 12].try_into().expect("8 bytes"));
            let error = i16_at(&r, pos + 12);
            pos += 14;
            (error, low)
        })
        .collect()
}

#[test]
fn delete_records_of_unknown_partitions_and_bad_offsets_get_error_codes() {
    let broker = Broker::start();
    produce_one(&broker, "dr-known", b"x"); // auto-created with one partition, end offset 1
    const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    const OFFSET_OUT_OF_RANGE: i16 = 1;
    assert_eq!(
        delete_records(&broker, "dr-known", &[(5, 0), (0, 2), (0, -7), (0, 1)]),
        vec![
            (UNKNOWN_TOPIC_OR_PARTITION, -1),
            (OFFSET_OUT_OF_RANGE, -1),
            (OFFSET_OUT_OF_RANGE, -1),
            (0, 1),
        ]
    );
    assert_eq!(
        delete_records(&broker, "dr-no-such-topic", &[(0, 0)]),
        vec![(UNKNOWN_TOPIC_OR_PARTITION, -1)]
    );
}

#[test]
fn garbage_frames_are_refused_and_the_broker_keeps_serving() {
    let mut broker = Broker::start();
    for seed in 1..=8u64 {
        // A plausible size prefix, then random bytes as header and body.
        let len = 7 + 40 * seed as usize;
        let mut bytes = i32::try_from(len).expect("len").to_be_bytes().to_vec();
        bytes.extend(garbage(seed, len));
        let mut stream = connect(&broker);
        write_all_or_closed(&mut stream, &bytes);
        // Any reply is acceptable (an error response or a close); silence is not.
        let _ = read_reply(&mut stream);
        assert_serving(&mut broker, &format!("garbage frame (seed {seed})"));
    }
    // A raw stream of garbage with no framing at all.
    let mut stream = connect(&broker);
    write_all_or_closed(&mut stream, &garbage(99, 64 * 1024));
    drop(stream);
    assert_serving(&mut broker, "64 KiB of unframed garbage");
}

#[test]
fn sizes_out_of_range_close_the_connection() {
    let mut broker = Broker::start();
    for (size, what) in [
        (i32::MAX, "size prefix i32::MAX"),
        (0x4000_0000, "size prefix 1 GiB"),
        (-1, "negative size prefix"),
        (i32::MIN, "size prefix i32::MIN"),
    ] {
        let mut stream = connect(&broker);
        write_all_or_closed(&mut stream, &size.to_be_bytes());
        write_all_or_closed(&mut stream, &[0u8; 64]);
        assert_eq!(read_reply(&mut stream), Reply::Closed, "{what}");
        assert_serving(&mut broker, what);
    }
    let mut stream = connect(&broker);
    write_all_or_closed(&mut stream, &0i32.to_be_bytes());
    let _ = read_reply(&mut stream);
    assert_serving(&mut broker, "empty frame");
}

#[test]
fn truncated_frame_does_not_block_other_clients() {
    let mut broker = Broker::start();
    // Announce 100 bytes, send 10, keep the connection open: other clients must be served
    // meanwhile (the connection's core must not block on it).
    let mut stalled = connect(&broker);
    let full = frame(API_VERSIONS, 0, 7, false, &[0u8; 86]);
    stalled
        .write_all(&full[..14])
        .expect("writing a partial frame");
    assert_serving(&mut broker, "a stalled partial frame");
    produce_one(&broker, "while-stalled", b"still served");
    let read = broker.read_all("while-stalled", 1);
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].payload_str(), "still served");

    // End of stream in the middle of the frame: the broker closes its side.
    stalled.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(
        read_reply(&mut stalled),
        Reply::Closed,
        "EOF inside a frame"
    );
    assert_serving(&mut broker, "EOF inside a frame");

    // A frame cut short inside the request header.
    let mut stream = connect(&broker);
    let mut bytes = 3i32.to_be_bytes().to_vec();
    bytes.extend([0, 18, 0]);
    stream.write_all(&bytes).expect("write");
    let _ = read_reply(&mut stream);
    assert_serving(&mut broker, "a 3-byte request header");
}

#[test]
fn unknown_api_keys_and_versions() {
    let mut broker = Broker::start();

    // Unknown API key: an error response or a close, and the broker lives on.
    let mut stream = connect(&broker);
    stream
        .write_all(&frame(999, 0, 11, false, &[]))
        .expect("write");
    let _ = read_reply(&mut stream);
    assert_serving(&mut broker, "API key 999");

    // ApiVersions with a version from the future: error 35 (UNSUPPORTED_VERSION) in a v0
    // response, so the client can retry with a version the broker knows.
    let mut stream = connect(&broker);
    // v3 body: client software name and version (compact strings), no tagged fields.
    let body = [5, b't', b'e', b's', b't', 4, b'1', b'.', b'0', 0];
    stream
        .write_all(&frame(API_VERSIONS, 99, 12, true, &body))
        .expect("write");
    match read_reply(&mut stream) {
        Reply::Response(body) => {
            assert_eq!(i32_at(&body, 0), 12, "correlation id");
            assert_eq!(
                i16_at(&body, 4),
                UNSUPPORTED_VERSION,
                "error code for ApiVersions v99"
            );
        }
        Reply::Closed => panic!("ApiVersions v99 closed the connection instead of error 35"),
    }

    // A known key at a version above the advertised range: the response or a close.
    let mut stream = connect(&broker);
    stream
        .write_all(&frame(API_METADATA, 200, 13, true, &[0, 0]))
        .expect("write");
    let _ = read_reply(&mut stream);
    assert_serving(&mut broker, "Metadata v200");
}

#[test]
fn huge_array_lengths_do_not_allocate_or_crash() {
    let mut broker = Broker::start();
    // Metadata v1: topics array claiming i32::MAX entries, none present. A decoder that
    // reserves capacity from this count aborts the process.
    let mut stream = connect(&broker);
    stream
        .write_all(&frame(API_METADATA, 1, 21, false, &i32::MAX.to_be_bytes()))
        .expect("write");
    let _ = read_reply(&mut stream);
    assert_serving(&mut broker, "Metadata v1 with 2^31-1 topics");

    // Metadata v12 (flexible): compact array length as a varint near u32::MAX.
    let mut stream = connect(&broker);
    let body = [0xf0, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0];
    stream
        .write_all(&frame(API_METADATA, 12, 22, true, &body))
        .expect("write");
    let _ = read_reply(&mut stream);
    assert_serving(
        &mut broker,
        "Metadata v12 with a 4-billion-entry compact array",
    );

    // Produce v3 whose topic array claims i32::MAX topics.
    let mut stream = connect(&broker);
    let mut body = Vec::new();
    body.extend((-1i16).to_be_bytes());
    body.extend(1i16.to_be_bytes());
    body.extend(1000i32.to_be_bytes());
    body.extend(i32::MAX.to_be_bytes());
    stream
        .write_all(&frame(API_PRODUCE, 3, 23, false, &body))
        .expect("write");
    let _ = read_reply(&mut stream);
    assert_serving(&mut broker, "Produce v3 with 2^31-1 topics");
}

#[test]
fn batch_with_bad_crc_is_refused_and_stored_data_is_intact() {
    let mut broker = Broker::start();
    let topic = "crc-check";
    produce_one(&broker, topic, b"first, good");

    let mut stream = connect(&broker);
    let body = produce_body(topic, 1, &record_batch(b"bad crc", false));
    stream
        .write_all(&frame(API_PRODUCE, 3, 31, false, &body))
        .expect("write");
    match read_reply(&mut stream) {
        Reply::Response(body) => {
            assert_eq!(i32_at(&body, 0), 31, "correlation id");
            assert_eq!(
                produce_error(&body, topic),
                CORRUPT_MESSAGE,
                "error for a bad CRC"
            );
        }
        Reply::Closed => panic!("a bad CRC should get CORRUPT_MESSAGE, the connection was closed"),
    }
    assert_serving(&mut broker, "a batch with a bad CRC");

    // The same batch with a good CRC is stored after the first record.
    let body = produce_body(topic, 1, &record_batch(b"second, good", true));
    stream
        .write_all(&frame(API_PRODUCE, 3, 32, false, &body))
        .expect("write");
    match read_reply(&mut stream) {
        Reply::Response(body) => {
            assert_eq!(i32_at(&body, 0), 32, "correlation id");
            assert_eq!(produce_error(&body, topic), 0, "error for a good batch");
        }
        Reply::Closed => panic!("a good produce closed the connection"),
    }
    let read = broker.read_all(topic, 1);
    let values: Vec<&str> = read.iter().map(|r| r.payload_str()).collect();
    assert_eq!(values, vec!["first, good", "second, good"]);
    assert_eq!(read[1].offset, 1);
}

#[test]
fn acks_0_produce_gets_no_response() {
    let mut broker = Broker::start();
    let topic = "acks-zero-raw";
    produce_one(&broker, topic, b"created");
    let mut stream = connect(&broker);
    let body = produce_body(topic, 0, &record_batch(b"fire and forget", true));
    stream
        .write_all(&frame(API_PRODUCE, 3, 41, false, &body))
        .expect("write");
    stream
        .write_all(&frame(API_VERSIONS, 0, 42, false, &[]))
        .expect("write");
    // The first response on the connection must be the ApiVersions one.
    match read_reply(&mut stream) {
        Reply::Response(body) => assert_eq!(
            i32_at(&body, 0),
            42,
            "first response after an acks=0 produce (41 means the produce was answered)"
        ),
        Reply::Closed => panic!("connection closed after an acks=0 produce"),
    }
    assert_serving(&mut broker, "an acks=0 produce");
    let read = broker.read_all(topic, 1);
    let values: Vec<&str> = read.iter().map(|r| r.payload_str()).collect();
    assert_eq!(values, vec!["created", "fire and forget"]);
}

/// Reads an unsigned varint (as in compact arrays and tagged-field counts) at `*at`.
fn uvarint(bytes: &[u8], at: &mut usize) -> u64 {
    let mut value = 0u64;
    for shift in (0..35).step_by(7) {
        let byte = bytes[*at];
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
    }
    panic!("varint longer than 5 bytes");
}

/// ApiVersions v3 answers with a v0 response header and no tagged fields that hold defaults:
/// librdkafka before 2.2.0 (still in Debian stable, with kcat) misreads a response whose
/// tagged-field sections are not empty, starting with this one.
#[test]
fn api_versions_v3_response_has_empty_tagged_fields() {
    let broker = Broker::start();
    let mut stream = connect(&broker);
    let body = [5, b't', b'e', b's', b't', 4, b'1', b'.', b'0', 0];
    stream
        .write_all(&frame(API_VERSIONS, 3, 51, true, &body))
        .expect("write");
    let Reply::Response(body) = read_reply(&mut stream) else {
        panic!("ApiVersions v3 closed the connection");
    };
    // v0 response header: the correlation id only, no tagged fields.
    assert_eq!(i32_at(&body, 0), 51, "correlation id");
    assert_eq!(i16_at(&body, 4), 0, "error code");
    let mut at = 6;
    let count = uvarint(&body, &mut at)
        .checked_sub(1)
        .expect("api_keys is not null");
    let mut keys = Vec::new();
    for _ in 0..count {
        keys.push(i16_at(&body, at));
        at += 6;
        assert_eq!(
            uvarint(&body, &mut at),
            0,
            "tagged fields of an api_keys entry"
        );
    }
    assert!(keys.contains(&API_PRODUCE), "ApiVersions v3 lists {keys:?}");
    at += 4; // throttle_time_ms
    assert_eq!(
        uvarint(&body, &mut at),
        0,
        "top-level tagged fields of ApiVersions v3"
    );
    assert_eq!(at, body.len(), "bytes after the ApiVersions v3 response");
}

/// True when the broker answers ApiVersions on `stream` (false when it closed the connection).
fn answers(stream: &mut TcpStream, correlation_id: i32) -> bool {
    write_all_or_closed(stream, &frame(API_VERSIONS, 0, correlation_id, false, &[]));
    match read_reply(stream) {
        Reply::Response(body) => {
            assert_eq!(i32_at(&body, 0), correlation_id, "correlation id");
            true
        }
        Reply::Closed => false,
    }
}

/// --max-connections bounds the connections served at once: one more is closed at accept, and
/// capacity comes back when connections close (a leaked count would lock clients out for good).
#[test]
fn connection_limit_refuses_extra_connections_and_recovers() {
    let mut broker = Broker::start_with(BrokerOptions::default().arg("--max-connections").arg("4"));
    let mut open: Vec<TcpStream> = (0..4).map(|_| connect(&broker)).collect();
    for (i, stream) in open.iter_mut().enumerate() {
        assert!(
            answers(stream, i as i32),
            "connection {i} of 4 was not served"
        );
    }
    let mut extra = connect(&broker);
    assert!(
        !answers(&mut extra, 99),
        "a 5th connection was served with --max-connections 4"
    );

    // Close two, then two new connections must be served (the broker may notice the closes a
    // little later: wait for it).
    open.truncate(2);
    for attempt in 0..2 {
        wait_until(DEADLINE, "a freed connection slot", || {
            let mut stream = connect(&broker);
            answers(&mut stream, 100 + attempt).then(|| open.push(stream))
        });
    }
    assert_serving_with_all_slots_used(&mut broker, open);
}

/// With every slot taken, the broker is alive but refuses; after they close, it serves again.
fn assert_serving_with_all_slots_used(broker: &mut Broker, open: Vec<TcpStream>) {
    assert!(
        broker.is_running(),
        "the broker died at its connection limit"
    );
    let mut refused = connect(broker);
    assert!(
        !answers(&mut refused, 200),
        "served a 5th connection after slots were reused"
    );
    drop(open);
    wait_until(DEADLINE, "slots freed after all connections closed", || {
        let mut stream = connect(broker);
        answers(&mut stream, 201).then_some(())
    });
}

/// --max-frame-bytes: a frame announced above the configured maximum closes the connection;
/// real clients with smaller requests keep working.
#[test]
fn frames_above_the_configured_maximum_are_refused() {
    let mut broker = Broker::start_with(
        BrokerOptions::default()
            .arg("--max-frame-bytes")
            .arg("65536"),
    );
    let mut stream = connect(&broker);
    write_all_or_closed(&mut stream, &100_000i32.to_be_bytes());
    write_all_or_closed(&mut stream, &[0u8; 1024]);
    assert_eq!(
        read_reply(&mut stream),
        Reply::Closed,
        "100000-byte frame, limit 65536"
    );
    assert_serving(&mut broker, "a frame above --max-frame-bytes");
    produce_one(&broker, "small-frames", b"fits");
    assert_eq!(broker.read_all("small-frames", 1).len(), 1);
}
