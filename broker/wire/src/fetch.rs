//! The Fetch response, encoded by hand around stored record batches.
//!
//! The broker keeps every RecordBatch exactly as the producer sent it (base offset assigned).
//! Encoding the response through a generic codec would copy every record byte into one buffer;
//! here the response is a list of chunks instead: small encoded pieces (header, topic and
//! partition fields, length prefixes) interleaved with the stored batches as `Bytes`, so record
//! bytes go to the socket as they are.
//!
//! ```text
//!  size i32 | correlation_id i32 [tagged(0) v12+]
//!  throttle_time_ms i32 | error_code i16 (v7+) | session_id i32 (v7+)
//!  responses: array (compact v12+) of
//!    topic string (v4-12) | topic_id uuid (v13+)
//!    partitions: array of
//!      partition_index i32 | error_code i16 | high_watermark i64 | last_stable_offset i64
//!      log_start_offset i64 (v5+) | aborted_transactions nullable array (null here)
//!      preferred_read_replica i32 (v11+) | records bytes (compact v12+)   <- stored batches
//!      [tagged(0) v12+]
//!    [tagged(0) v12+]
//!  [tagged(0) v12+]
//! ```
//!
//! Tagged fields that would hold defaults are omitted, as Kafka does (old librdkafka misreads
//! non-empty tagged fields).

use crate::part::Part;
use bytes::{BufMut, Bytes, BytesMut};

/// Lowest Fetch version this encoder writes (what kafka-protocol decodes too).
pub const FETCH_MIN_VERSION: i16 = 4;
/// Highest Fetch version this encoder writes.
pub const FETCH_MAX_VERSION: i16 = 16;
/// First version with flexible (compact, tagged) encoding.
const FLEXIBLE_FROM: i16 = 12;
/// First version that names topics by id instead of name.
pub const TOPIC_IDS_FROM: i16 = 13;

/// One partition of a fetch response.
#[derive(Debug, Clone, Default)]
pub struct FetchPartition {
    pub partition_index: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// Whole stored batches, in offset order, sent as they are (from memory or by file range).
    pub batches: Vec<Part>,
}

/// One topic of a fetch response.
#[derive(Debug, Clone, Default)]
pub struct FetchTopic {
    pub name: String,
    pub topic_id: [u8; 16],
    pub partitions: Vec<FetchPartition>,
}

/// The top level of a fetch response.
#[derive(Debug, Clone, Default)]
pub struct FetchResponseBody {
    pub throttle_time_ms: i32,
    pub error_code: i16,
    pub session_id: i32,
    pub topics: Vec<FetchTopic>,
}

/// A response frame as a list of chunks to be written in order; the first starts with the
/// size prefix (and is always bytes).
#[derive(Debug, Default)]
pub struct Chunks {
    pub parts: Vec<Part>,
}

impl Chunks {
    /// A response of one buffer.
    pub fn one(frame: Bytes) -> Chunks {
        Chunks {
            parts: vec![Part::Bytes(frame)],
        }
    }

    pub fn total_len(&self) -> usize {
        self.parts.iter().map(Part::len).sum()
    }

    /// Whether some part is a file range (the writer must send it with `sendfile`).
    pub fn has_file_parts(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::File(_)))
    }

    /// Concatenates the chunks (for tests and small responses); None if a part is a file
    /// range (this crate does no I/O).
    pub fn to_vec(&self) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(self.total_len());
        for p in &self.parts {
            out.extend_from_slice(p.as_bytes()?);
        }
        Some(out)
    }
}

/// Encodes a whole fetch response frame (size prefix, response header, body) for `version`
/// (`FETCH_MIN_VERSION..=FETCH_MAX_VERSION`, checked by the caller).
pub fn encode_fetch_response(
    correlation_id: i32,
    version: i16,
    body: &FetchResponseBody,
) -> Chunks {
    debug_assert!(
        (FETCH_MIN_VERSION..=FETCH_MAX_VERSION).contains(&version),
        "version {version}"
    );
    let flexible = version >= FLEXIBLE_FROM;
    let mut w = ChunkWriter::new();
    w.cur.put_i32(0); // size, patched at the end
    w.cur.put_i32(correlation_id);
    if flexible {
        w.cur.put_u8(0); // response header v1: no tagged fields
    }
    w.cur.put_i32(body.throttle_time_ms);
    if version >= 7 {
        w.cur.put_i16(body.error_code);
        w.cur.put_i32(body.session_id);
    }
    w.array_len(flexible, body.topics.len());
    for topic in &body.topics {
        if version >= TOPIC_IDS_FROM {
            w.cur.put_slice(&topic.topic_id);
        } else {
            w.string(flexible, &topic.name);
        }
        w.array_len(flexible, topic.partitions.len());
        for p in &topic.partitions {
            w.cur.put_i32(p.partition_index);
            w.cur.put_i16(p.error_code);
            w.cur.put_i64(p.high_watermark);
            w.cur.put_i64(p.last_stable_offset);
            if version >= 5 {
                w.cur.put_i64(p.log_start_offset);
            }
            // aborted_transactions: null (no transactions are stored yet).
            if flexible {
                w.cur.put_u8(0);
            } else {
                w.cur.put_i32(-1);
            }
            if version >= 11 {
                w.cur.put_i32(-1); // preferred_read_replica: none
            }
            let records_len: usize = p.batches.iter().map(Part::len).sum();
            if flexible {
                put_uvarint(&mut w.cur, records_len as u64 + 1);
            } else {
                w.cur.put_i32(records_len as i32);
            }
            for batch in &p.batches {
                w.push_shared(batch.clone());
            }
            if flexible {
                w.cur.put_u8(0); // partition tagged fields
            }
        }
        if flexible {
            w.cur.put_u8(0); // topic tagged fields
        }
    }
    if flexible {
        w.cur.put_u8(0); // top-level tagged fields
    }
    w.finish()
}

/// Accumulates small encoded pieces in `cur`, cutting a chunk each time a shared buffer or a
/// file range is pushed.
struct ChunkWriter {
    first: Option<BytesMut>,
    parts: Vec<Part>,
    cur: BytesMut,
}

impl ChunkWriter {
    fn new() -> ChunkWriter {
        ChunkWriter {
            first: None,
            parts: Vec::new(),
            cur: BytesMut::with_capacity(256),
        }
    }

    fn cut(&mut self) {
        if self.cur.is_empty() {
            return;
        }
        let piece = self.cur.split();
        if self.first.is_none() {
            self.first = Some(piece);
        } else {
            self.parts.push(Part::Bytes(piece.freeze()));
        }
    }

    fn push_shared(&mut self, b: Part) {
        if b.is_empty() {
            return;
        }
        self.cut();
        self.parts.push(b);
    }

    fn array_len(&mut self, flexible: bool, n: usize) {
        if flexible {
            put_uvarint(&mut self.cur, n as u64 + 1);
        } else {
            self.cur.put_i32(n as i32);
        }
    }

    fn string(&mut self, flexible: bool, s: &str) {
        if flexible {
            put_uvarint(&mut self.cur, s.len() as u64 + 1);
        } else {
            self.cur.put_i16(s.len() as i16);
        }
        self.cur.put_slice(s.as_bytes());
    }

    fn finish(mut self) -> Chunks {
        self.cut();
        let mut first = self
            .first
            .take()
            .expect("the header is always written first");
        let total: usize = first.len() + self.parts.iter().map(Part::len).sum::<usize>();
        let size = (total - crate::frame::SIZE_PREFIX_LEN) as i32;
        first[..4].copy_from_slice(&size.to_be_bytes());
        let mut parts = Vec::with_capacity(self.parts.len() + 1);
        parts.push(Part::Bytes(first.freeze()));
        parts.append(&mut self.parts);
        Chunks { parts }
    }
}

fn put_uvarint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_response;
    use kafka_protocol::messages::fetch_response::{
        FetchableTopicResponse, PartitionData as KPartition,
    };
    use kafka_protocol::messages::{FetchResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;

    fn sample() -> FetchResponseBody {
        FetchResponseBody {
            throttle_time_ms: 0,
            error_code: 0,
            session_id: 0,
            topics: vec![
                FetchTopic {
                    name: "alpha".into(),
                    topic_id: [7; 16],
                    partitions: vec![
                        FetchPartition {
                            partition_index: 0,
                            error_code: 0,
                            high_watermark: 10,
                            last_stable_offset: 10,
                            log_start_offset: 0,
                            batches: vec![
                                Bytes::from_static(b"batch-one").into(),
                                Bytes::from_static(b"batch-two!").into(),
                            ],
                        },
                        FetchPartition {
                            partition_index: 3,
                            error_code: 1,
                            high_watermark: -1,
                            last_stable_offset: -1,
                            log_start_offset: -1,
                            batches: vec![],
                        },
                    ],
                },
                FetchTopic {
                    name: "b".into(),
                    topic_id: [9; 16],
                    partitions: vec![],
                },
            ],
        }
    }

    /// The same response built with kafka-protocol's generic encoder.
    fn reference(body: &FetchResponseBody) -> FetchResponse {
        let topics = body
            .topics
            .iter()
            .map(|t| {
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let records: Vec<u8> = p
                            .batches
                            .iter()
                            .flat_map(|b| b.as_bytes().expect("in memory").to_vec())
                            .collect();
                        KPartition::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(p.error_code)
                            .with_high_watermark(p.high_watermark)
                            .with_last_stable_offset(p.last_stable_offset)
                            .with_log_start_offset(p.log_start_offset)
                            .with_aborted_transactions(None)
                            .with_preferred_read_replica((-1).into())
                            .with_records(Some(Bytes::from(records)))
                    })
                    .collect();
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_string(t.name.clone())))
                    .with_topic_id(uuid::Uuid::from_bytes(t.topic_id))
                    .with_partitions(partitions)
            })
            .collect();
        FetchResponse::default()
            .with_throttle_time_ms(body.throttle_time_ms)
            .with_error_code(body.error_code)
            .with_session_id(body.session_id)
            .with_responses(topics)
    }

    #[test]
    fn matches_the_generic_encoder_for_every_version() {
        let body = sample();
        for version in FETCH_MIN_VERSION..=FETCH_MAX_VERSION {
            let mine = encode_fetch_response(42, version, &body).to_vec().unwrap();
            let mut theirs_resp = reference(&body);
            if version < TOPIC_IDS_FROM {
                theirs_resp
                    .responses
                    .iter_mut()
                    .for_each(|t| t.topic_id = Default::default());
            } else {
                theirs_resp
                    .responses
                    .iter_mut()
                    .for_each(|t| t.topic = Default::default());
            }
            let theirs = encode_response(42, version, &theirs_resp).unwrap();
            assert_eq!(mine, theirs.to_vec(), "version {version}");
        }
    }

    #[test]
    fn record_bytes_are_shared_not_copied() {
        let batch = Bytes::from(vec![5u8; 1000]);
        let body = FetchResponseBody {
            topics: vec![FetchTopic {
                name: "t".into(),
                partitions: vec![FetchPartition {
                    batches: vec![batch.clone().into()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let chunks = encode_fetch_response(1, 11, &body);
        assert!(chunks
            .parts
            .iter()
            .any(|p| p.as_bytes().is_some_and(|b| b.as_ptr() == batch.as_ptr())));
        let first = chunks.parts[0].as_bytes().unwrap();
        let size = i32::from_be_bytes(first[..4].try_into().unwrap()) as usize;
        assert_eq!(size + 4, chunks.total_len());
    }

    #[test]
    fn file_ranges_are_parts_of_their_own_and_count_in_the_sizes() {
        // Catches: a file range folded into a neighbouring bytes chunk, or left out of the
        // records length / frame size (the client would misparse the response).
        let file = std::sync::Arc::new(std::fs::File::open("/dev/null").unwrap());
        let range = crate::part::FileRange {
            file,
            pos: 4096,
            len: 777,
        };
        let body = FetchResponseBody {
            topics: vec![FetchTopic {
                name: "t".into(),
                partitions: vec![FetchPartition {
                    batches: vec![Bytes::from(vec![1u8; 10]).into(), Part::File(range)],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let chunks = encode_fetch_response(1, 12, &body);
        assert!(chunks.has_file_parts());
        assert!(chunks.to_vec().is_none());
        let files: Vec<_> = chunks
            .parts
            .iter()
            .filter_map(|p| match p {
                Part::File(f) => Some((f.pos, f.len)),
                Part::Bytes(_) => None,
            })
            .collect();
        assert_eq!(files, vec![(4096, 777)]);
        let first = chunks.parts[0].as_bytes().unwrap();
        let size = i32::from_be_bytes(first[..4].try_into().unwrap()) as usize;
        assert_eq!(size + 4, chunks.total_len());
        // The bytes-only equivalent has the same layout around the records.
        let same = FetchResponseBody {
            topics: vec![FetchTopic {
                name: "t".into(),
                partitions: vec![FetchPartition {
                    batches: vec![
                        Bytes::from(vec![1u8; 10]).into(),
                        Bytes::from(vec![0u8; 777]).into(),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            encode_fetch_response(1, 12, &same).total_len(),
            chunks.total_len()
        );
    }
}
