//! Kafka RecordBatch v2 ("magic 2"), the unit ringmq stores and serves unchanged.
//!
//! ```text
//!  off len field                  notes
//!    0   8 base_offset            assigned by the broker; rewritten in place on append
//!    8   4 batch_length           bytes after this field: total = batch_length + 12
//!   12   4 partition_leader_epoch
//!   16   1 magic                  must be 2
//!   17   4 crc                    CRC-32C of bytes [21, total)
//!   21   2 attributes             bits 0-2 compression, 3 timestamp type, 4 transactional, 5 control
//!   23   4 last_offset_delta
//!   27   8 base_timestamp
//!   35   8 max_timestamp
//!   43   8 producer_id
//!   51   2 producer_epoch
//!   53   4 base_sequence
//!   57   4 record_count
//!   61   . records (possibly compressed)
//! ```
//!
//! All integers are big-endian, as on Kafka's wire. Because the CRC starts at `attributes`,
//! the broker may rewrite `base_offset` and `partition_leader_epoch` without recomputing it.

use crate::varint::put_varint;
use thiserror::Error;

/// Length of the fixed batch header.
pub const HEADER_LEN: usize = 61;
/// Bytes of the header that precede `batch_length`'s count (`base_offset` + `batch_length`).
pub const LOG_OVERHEAD: usize = 12;
/// The only batch format ringmq accepts.
pub const MAGIC_V2: i8 = 2;
/// Where the CRC-covered region starts.
const CRC_START: usize = 21;

const _: () = assert!(HEADER_LEN == 61 && LOG_OVERHEAD == 12);

/// Why a byte string is not a valid RecordBatch v2.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    #[error("record batch truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("unsupported record batch magic {0} (only v2 is accepted)")]
    BadMagic(i8),
    #[error("record batch length {0} is invalid")]
    BadLength(i32),
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("record batch counts are inconsistent: record_count {record_count}, last_offset_delta {last_offset_delta}")]
    BadCounts {
        record_count: i32,
        last_offset_delta: i32,
    },
}

/// Compression codec named by the low three attribute bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
    /// Codec ids 5-7 are not defined by Kafka.
    Unknown(u8),
}

/// The decoded fixed header of one batch. Plain values: the batch bytes stay where they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Decodes the header at the front of `buf` and checks that the whole batch it announces is
    /// present. Does not check the CRC (see [`validate`]).
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Truncated {
                need: HEADER_LEN,
                have: buf.len(),
            });
        }
        let magic = buf[16] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::BadMagic(magic));
        }
        let batch_length = be_i32(buf, 8);
        if batch_length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
            return Err(BatchError::BadLength(batch_length));
        }
        let total = batch_length as usize + LOG_OVERHEAD;
        if buf.len() < total {
            return Err(BatchError::Truncated {
                need: total,
                have: buf.len(),
            });
        }
        Ok(BatchHeader {
            base_offset: be_i64(buf, 0),
            batch_length,
            partition_leader_epoch: be_i32(buf, 12),
            magic,
            crc: be_i32(buf, 17) as u32,
            attributes: be_i16(buf, 21),
            last_offset_delta: be_i32(buf, 23),
            base_timestamp: be_i64(buf, 27),
            max_timestamp: be_i64(buf, 35),
            producer_id: be_i64(buf, 43),
            producer_epoch: be_i16(buf, 51),
            base_sequence: be_i32(buf, 53),
            record_count: be_i32(buf, 57),
        })
    }

    /// Bytes the batch occupies, header included.
    pub fn total_len(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD
    }

    /// Offset of the last record, given the batch's base offset.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    pub fn compression(&self) -> Compression {
        match self.attributes & 0x7 {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => Compression::Unknown(other as u8),
        }
    }

    /// Timestamps are LogAppendTime (set by the broker) rather than CreateTime.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & 0x8 != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }

    /// The batch comes from an idempotent or transactional producer.
    pub fn has_producer_id(&self) -> bool {
        self.producer_id >= 0
    }
}

/// Parses the header, checks the counts a producer must send (`record_count` records at offset
/// deltas `0..record_count`) and verifies the CRC-32C. Returns the header on success.
pub fn validate(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(batch)?;
    if header.record_count <= 0 || header.last_offset_delta != header.record_count - 1 {
        return Err(BatchError::BadCounts {
            record_count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    let computed = crc32c::crc32c(&batch[CRC_START..header.total_len()]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// Rewrites the base offset in place. The CRC does not cover it, so the batch stays valid.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Rewrites the partition leader epoch in place (not covered by the CRC either).
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[12..16].copy_from_slice(&epoch.to_be_bytes());
}

/// Iterates over the batches concatenated in a produce request's `records` field. Yields the
/// byte range of each whole batch; a trailing partial batch yields one error and ends.
pub fn split_batches(records: &[u8]) -> SplitBatches<'_> {
    SplitBatches {
        records,
        pos: 0,
        failed: false,
    }
}

/// Iterator returned by [`split_batches`].
pub struct SplitBatches<'a> {
    records: &'a [u8],
    pos: usize,
    failed: bool,
}

impl Iterator for SplitBatches<'_> {
    type Item = Result<std::ops::Range<usize>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos == self.records.len() {
            return None;
        }
        match BatchHeader::parse(&self.records[self.pos..]) {
            Ok(h) => {
                let range = self.pos..self.pos + h.total_len();
                self.pos = range.end;
                Some(Ok(range))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// One record to put in a batch.
#[derive(Debug, Clone, Default)]
pub struct Record<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
    /// Milliseconds since the epoch (CreateTime).
    pub timestamp_ms: i64,
}

/// Producer identity stamped on a batch (idempotent or transactional producers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStamp {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl ProducerStamp {
    /// The stamp of a producer without an id (plain, non-idempotent).
    pub const NONE: ProducerStamp = ProducerStamp {
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
    };
}

/// Builds an uncompressed RecordBatch v2, for producers (loadgen, tests).
#[derive(Debug)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    scratch: Vec<u8>,
}

impl BatchBuilder {
    pub fn new(capacity_bytes: usize) -> BatchBuilder {
        let mut buf = Vec::with_capacity(capacity_bytes.max(HEADER_LEN));
        buf.resize(HEADER_LEN, 0);
        BatchBuilder {
            buf,
            count: 0,
            base_timestamp: 0,
            max_timestamp: 0,
            scratch: Vec::new(),
        }
    }

    pub fn len_records(&self) -> i32 {
        self.count
    }

    /// Bytes the batch would take if built now.
    pub fn size_bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn push(&mut self, record: &Record<'_>) {
        if self.count == 0 {
            self.base_timestamp = record.timestamp_ms;
            self.max_timestamp = record.timestamp_ms;
        }
        self.max_timestamp = self.max_timestamp.max(record.timestamp_ms);
        let body = &mut self.scratch;
        body.clear();
        body.push(0); // record attributes: unused
        put_varint(body, record.timestamp_ms - self.base_timestamp);
        put_varint(body, i64::from(self.count));
        put_bytes(body, record.key);
        put_bytes(body, record.value);
        put_varint(body, record.headers.len() as i64);
        for (name, value) in record.headers {
            put_bytes(body, Some(name.as_bytes()));
            put_bytes(body, *value);
        }
        put_varint(&mut self.buf, body.len() as i64);
        self.buf.extend_from_slice(body);
        self.count += 1;
    }

    /// Finishes the batch: fills the header and the CRC. `base_offset` is 0, as producers send it.
    pub fn build(mut self, stamp: ProducerStamp, attributes: i16) -> Vec<u8> {
        assert!(self.count > 0, "a record batch needs at least one record");
        let batch_length = (self.buf.len() - LOG_OVERHEAD) as i32;
        let b = &mut self.buf;
        b[0..8].copy_from_slice(&0i64.to_be_bytes());
        b[8..12].copy_from_slice(&batch_length.to_be_bytes());
        b[12..16].copy_from_slice(&(-1i32).to_be_bytes());
        b[16] = MAGIC_V2 as u8;
        b[21..23].copy_from_slice(&attributes.to_be_bytes());
        b[23..27].copy_from_slice(&(self.count - 1).to_be_bytes());
        b[27..35].copy_from_slice(&self.base_timestamp.to_be_bytes());
        b[35..43].copy_from_slice(&self.max_timestamp.to_be_bytes());
        b[43..51].copy_from_slice(&stamp.producer_id.to_be_bytes());
        b[51..53].copy_from_slice(&stamp.producer_epoch.to_be_bytes());
        b[53..57].copy_from_slice(&stamp.base_sequence.to_be_bytes());
        b[57..61].copy_from_slice(&self.count.to_be_bytes());
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        self.buf
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(n: usize) -> Vec<u8> {
        let mut b = BatchBuilder::new(1024);
        for i in 0..n {
            let v = format!("value-{i}");
            b.push(&Record {
                key: Some(b"k"),
                value: Some(v.as_bytes()),
                headers: &[("h", Some(b"x"))],
                timestamp_ms: 1_700_000_000_000 + i as i64,
            });
        }
        b.build(ProducerStamp::NONE, 0)
    }

    #[test]
    fn built_batch_validates() {
        let batch = sample(3);
        let h = validate(&batch).unwrap();
        assert_eq!((h.record_count, h.last_offset_delta), (3, 2));
        assert_eq!(h.total_len(), batch.len());
        assert_eq!(h.max_timestamp, 1_700_000_000_002);
        assert_eq!(h.compression(), Compression::None);
    }

    #[test]
    fn base_offset_rewrite_keeps_crc_valid() {
        let mut batch = sample(2);
        set_base_offset(&mut batch, 42);
        set_partition_leader_epoch(&mut batch, 7);
        let h = validate(&batch).unwrap();
        assert_eq!(
            (h.base_offset, h.last_offset(), h.partition_leader_epoch),
            (42, 43, 7)
        );
    }

    #[test]
    fn truncated_batch_is_refused() {
        let batch = sample(2);
        for cut in [0, 10, HEADER_LEN - 1, HEADER_LEN, batch.len() - 1] {
            assert!(
                matches!(validate(&batch[..cut]), Err(BatchError::Truncated { .. })),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn flipped_payload_bit_fails_crc() {
        let mut batch = sample(2);
        let last = batch.len() - 1;
        batch[last] ^= 1;
        assert!(matches!(
            validate(&batch),
            Err(BatchError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn bad_magic_and_length_are_refused() {
        let mut batch = sample(1);
        batch[16] = 1;
        assert_eq!(validate(&batch), Err(BatchError::BadMagic(1)));
        let mut batch = sample(1);
        batch[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(validate(&batch), Err(BatchError::BadLength(-5)));
    }

    #[test]
    fn split_finds_each_batch_and_a_partial_tail() {
        let (a, b) = (sample(1), sample(4));
        let mut both = [a.clone(), b.clone()].concat();
        let ranges: Vec<_> = split_batches(&both).collect::<Result<_, _>>().unwrap();
        assert_eq!(ranges, vec![0..a.len(), a.len()..a.len() + b.len()]);
        both.truncate(both.len() - 3);
        let results: Vec<_> = split_batches(&both).collect();
        assert_eq!(results.len(), 2);
        assert!(results[1].is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = validate(&bytes);
            let _ = split_batches(&bytes).count();
        }
    }
}
