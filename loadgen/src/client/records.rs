//! Record batches as the load generator writes and reads them.
//!
//! Every record value starts with a 16-byte stamp so a consumer can measure end-to-end latency:
//!
//! ```text
//!  off len
//!    0   8 intended send time, ns since the Unix epoch, big-endian
//!    8   8 b"ringmqLG", telling our records from anyone else's
//!   16   . filler (letters a-p: compresses about 2:1, like text)
//! ```
//!
//! Values shorter than 16 bytes carry no stamp (and give no end-to-end sample). The record's
//! CreateTime timestamp is the intended send time in milliseconds.

use bytes::{Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Decompressor, Gzip, Lz4, Snappy, Zstd};
use ringmq_wire::record_batch::{
    self, BatchBuilder, BatchError, BatchHeader, Compression, ProducerStamp, Record, HEADER_LEN,
    LOG_OVERHEAD,
};
use ringmq_wire::records::{records_in_body, RecordError};
use thiserror::Error;

use crate::config::CompressionArg;

/// Bytes of the stamp at the front of each value.
pub const STAMP_LEN: usize = 16;
/// Marks a value written by this tool.
pub const STAMP_MAGIC: &[u8; 8] = b"ringmqLG";
/// Largest decompressed batch accepted from a fetch.
pub const MAX_DECOMPRESSED_BYTES: usize = 256 << 20;
/// Filler pool size; values cycle through it.
const FILLER_BYTES: usize = 64 << 10;

/// Why fetched bytes could not be read.
#[derive(Debug, Error)]
pub enum RecordsError {
    #[error("bad record batch: {0}")]
    Batch(#[from] BatchError),
    #[error("batch at offset {base_offset}: {what}")]
    Record {
        base_offset: i64,
        what: &'static str,
    },
    #[error("batch at offset {base_offset}: {source}")]
    Body {
        base_offset: i64,
        source: RecordError,
    },
    #[error("batch at offset {base_offset}: compression codec {codec:?} not supported")]
    Codec {
        base_offset: i64,
        codec: Compression,
    },
    #[error("batch at offset {base_offset}: decompression failed: {source}")]
    Decompress {
        base_offset: i64,
        source: anyhow::Error,
    },
    #[error("compression failed: {0}")]
    Compress(anyhow::Error),
}

/// A small, fast pseudo-random generator (xorshift64*), one per producer.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Builds record values: stamp + filler.
#[derive(Debug)]
pub struct ValueMaker {
    filler: Vec<u8>,
    scratch: Vec<u8>,
}

impl ValueMaker {
    pub fn new(seed: u64) -> ValueMaker {
        let mut rng = Rng::new(seed);
        let filler = (0..FILLER_BYTES)
            .map(|_| b'a' + (rng.next_u64() % 16) as u8)
            .collect();
        ValueMaker {
            filler,
            scratch: Vec::new(),
        }
    }

    /// A value of `len` bytes stamped with `intended_ns`; `pos` picks where the filler starts.
    pub fn make(&mut self, len: usize, intended_ns: u64, pos: u64) -> &[u8] {
        let v = &mut self.scratch;
        v.clear();
        if len >= STAMP_LEN {
            v.extend_from_slice(&intended_ns.to_be_bytes());
            v.extend_from_slice(STAMP_MAGIC);
        }
        let mut at = (pos as usize) % FILLER_BYTES;
        while v.len() < len {
            let take = (len - v.len()).min(FILLER_BYTES - at);
            v.extend_from_slice(&self.filler[at..at + take]);
            at = 0;
        }
        v
    }
}

/// The intended send time stamped in a value, if it is one of ours.
pub fn stamp_of(value: &[u8]) -> Option<u64> {
    if value.len() < STAMP_LEN || &value[8..16] != STAMP_MAGIC {
        return None;
    }
    Some(u64::from_be_bytes(value[0..8].try_into().ok()?))
}

/// A batch being filled for one partition.
#[derive(Debug)]
pub struct OpenBatch {
    builder: BatchBuilder,
    /// Intended send time of each record, for the latency of its acknowledgement.
    pub intended_ns: Vec<u64>,
    pub value_bytes: u64,
    /// When the first record went in (the linger clock).
    pub opened_ns: u64,
}

impl OpenBatch {
    pub fn new(capacity_bytes: usize, now_ns: u64) -> OpenBatch {
        OpenBatch {
            builder: BatchBuilder::new(capacity_bytes + HEADER_LEN),
            intended_ns: Vec::new(),
            value_bytes: 0,
            opened_ns: now_ns,
        }
    }

    pub fn push(&mut self, key: Option<&[u8]>, value: &[u8], intended_ns: u64) {
        self.builder.push(&Record {
            key,
            value: Some(value),
            headers: &[],
            timestamp_ms: (intended_ns / 1_000_000) as i64,
        });
        self.intended_ns.push(intended_ns);
        self.value_bytes += value.len() as u64;
    }

    pub fn records(&self) -> usize {
        self.intended_ns.len()
    }

    pub fn size_bytes(&self) -> usize {
        self.builder.size_bytes()
    }

    /// Finishes the batch (compressed if asked); returns the bytes and the intended times.
    pub fn finish(
        self,
        compression: CompressionArg,
    ) -> Result<(Bytes, Vec<u64>, u64), RecordsError> {
        let batch = self.builder.build(ProducerStamp::NONE, 0);
        let batch = compress_batch(batch, compression)?;
        Ok((Bytes::from(batch), self.intended_ns, self.value_bytes))
    }
}

/// Compresses the records section of an uncompressed batch and fixes its header (length,
/// codec bits, CRC).
pub fn compress_batch(
    batch: Vec<u8>,
    compression: CompressionArg,
) -> Result<Vec<u8>, RecordsError> {
    let codec_bits: i16 = match compression {
        CompressionArg::None => return Ok(batch),
        CompressionArg::Gzip => 1,
        CompressionArg::Snappy => 2,
        CompressionArg::Lz4 => 3,
        CompressionArg::Zstd => 4,
    };
    let records = &batch[HEADER_LEN..];
    let mut out = BytesMut::with_capacity(records.len() / 2 + 64);
    let copy = |b: &mut BytesMut| -> anyhow::Result<()> {
        b.extend_from_slice(records);
        Ok(())
    };
    match compression {
        CompressionArg::None => unreachable!("handled above"),
        CompressionArg::Gzip => Gzip::compress(&mut out, copy),
        CompressionArg::Snappy => Snappy::compress(&mut out, copy),
        CompressionArg::Lz4 => Lz4::compress(&mut out, copy),
        CompressionArg::Zstd => Zstd::compress(&mut out, copy),
    }
    .map_err(RecordsError::Compress)?;
    let mut b = Vec::with_capacity(HEADER_LEN + out.len());
    b.extend_from_slice(&batch[..HEADER_LEN]);
    b.extend_from_slice(&out);
    let batch_length = (b.len() - LOG_OVERHEAD) as i32;
    b[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let attributes = i16::from_be_bytes([b[21], b[22]]) & !0x7 | codec_bits;
    b[21..23].copy_from_slice(&attributes.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(b)
}

/// What a pass over fetched bytes found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadSummary {
    /// Offset to fetch next (past the last whole batch), if any whole batch was present.
    pub next_offset: Option<i64>,
    /// Data records at or after the starting offset.
    pub records: u64,
    /// Their value bytes.
    pub value_bytes: u64,
}

/// Walks the whole batches in a fetch response's `records` bytes, calling `on_value` for each
/// data record at or after `from_offset` with its offset and value. A partial batch at the end
/// (the broker cut the response at its byte limit) is not an error; it is fetched again.
pub fn read_batches(
    data: &[u8],
    from_offset: i64,
    mut on_value: impl FnMut(i64, &[u8]),
) -> Result<ReadSummary, RecordsError> {
    let mut summary = ReadSummary::default();
    for range in record_batch::split_batches(data) {
        let Ok(range) = range else { break };
        let batch = &data[range];
        let header = record_batch::validate(batch)?;
        summary.next_offset = Some(header.last_offset() + 1);
        if header.is_control() || header.last_offset() < from_offset {
            continue;
        }
        let body = &batch[HEADER_LEN..];
        let (n, bytes) = match header.compression() {
            Compression::None => read_records(&header, body, from_offset, &mut on_value)?,
            codec => {
                let plain = decompress(&header, codec, body)?;
                read_records(&header, &plain, from_offset, &mut on_value)?
            }
        };
        summary.records += n;
        summary.value_bytes += bytes;
    }
    Ok(summary)
}

fn decompress(
    header: &BatchHeader,
    codec: Compression,
    body: &[u8],
) -> Result<Bytes, RecordsError> {
    let base_offset = header.base_offset;
    let mut input = Bytes::copy_from_slice(body);
    let take = |b: &mut Bytes| -> anyhow::Result<Bytes> { Ok(std::mem::take(b)) };
    let plain = match codec {
        Compression::Gzip => Gzip::decompress(&mut input, take),
        Compression::Snappy => Snappy::decompress(&mut input, take),
        Compression::Lz4 => Lz4::decompress(&mut input, take),
        Compression::Zstd => Zstd::decompress(&mut input, take),
        Compression::None | Compression::Unknown(_) => {
            return Err(RecordsError::Codec { base_offset, codec })
        }
    }
    .map_err(|source| RecordsError::Decompress {
        base_offset,
        source,
    })?;
    if plain.len() > MAX_DECOMPRESSED_BYTES {
        return Err(RecordsError::Record {
            base_offset,
            what: "decompressed batch above the limit",
        });
    }
    Ok(plain)
}

/// Reads `header.record_count` records from `body`; returns (records counted, value bytes).
fn read_records(
    header: &BatchHeader,
    body: &[u8],
    from_offset: i64,
    on_value: &mut impl FnMut(i64, &[u8]),
) -> Result<(u64, u64), RecordsError> {
    let base_offset = header.base_offset;
    let (mut records, mut bytes) = (0u64, 0u64);
    for record in records_in_body(body, header.record_count) {
        let record = record.map_err(|source| RecordsError::Body {
            base_offset,
            source,
        })?;
        let offset = base_offset + i64::from(record.offset_delta);
        if offset >= from_offset {
            let value = record.value.unwrap_or(&[]);
            on_value(offset, value);
            records += 1;
            bytes += value.len() as u64;
        }
    }
    Ok((records, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: u64, size: usize, compression: CompressionArg) -> Bytes {
        let mut maker = ValueMaker::new(7);
        let mut b = OpenBatch::new(4096, 0);
        for i in 0..n {
            let v = maker.make(size, 1_000 + i, i * 31).to_vec();
            b.push(Some(b"k"), &v, 1_000 + i);
        }
        b.finish(compression).unwrap().0
    }

    #[test]
    fn stamps_round_trip_through_a_batch() {
        for compression in [
            CompressionArg::None,
            CompressionArg::Gzip,
            CompressionArg::Snappy,
            CompressionArg::Lz4,
            CompressionArg::Zstd,
        ] {
            let mut bytes = batch(5, 100, compression).to_vec();
            record_batch::set_base_offset(&mut bytes, 40);
            let mut seen = Vec::new();
            let s = read_batches(&bytes, 42, |off, v| seen.push((off, stamp_of(v)))).unwrap();
            assert_eq!(s.next_offset, Some(45), "{compression:?}");
            assert_eq!((s.records, s.value_bytes), (3, 300), "{compression:?}");
            assert_eq!(
                seen,
                vec![(42, Some(1_002)), (43, Some(1_003)), (44, Some(1_004))]
            );
        }
    }

    #[test]
    fn compression_shrinks_and_keeps_the_crc_valid() {
        let plain = batch(20, 500, CompressionArg::None);
        let zipped = batch(20, 500, CompressionArg::Zstd);
        assert!(
            zipped.len() < plain.len() * 2 / 3,
            "{} vs {}",
            zipped.len(),
            plain.len()
        );
        let h = record_batch::validate(&zipped).unwrap();
        assert_eq!((h.compression(), h.record_count), (Compression::Zstd, 20));
    }

    #[test]
    fn short_values_carry_no_stamp_and_foreign_values_are_ignored() {
        let mut maker = ValueMaker::new(1);
        assert_eq!(maker.make(8, 5, 0).len(), 8);
        assert_eq!(stamp_of(maker.make(8, 5, 0)), None);
        assert_eq!(stamp_of(maker.make(16, 5, 0)), Some(5));
        assert_eq!(stamp_of(&[0u8; 32]), None);
        let long = maker.make(200_000, 9, 3).to_vec();
        assert_eq!((long.len(), stamp_of(&long)), (200_000, Some(9)));
    }

    #[test]
    fn partial_tail_is_left_for_the_next_fetch_and_corruption_is_an_error() {
        let a = batch(2, 50, CompressionArg::None);
        let mut two = [a.to_vec(), a.to_vec()].concat();
        record_batch::set_base_offset(&mut two[a.len()..], 2);
        let cut = &two[..two.len() - 10];
        let s = read_batches(cut, 0, |_, _| {}).unwrap();
        assert_eq!((s.records, s.next_offset), (2, Some(2)));
        let mut bad = a.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(read_batches(&bad, 0, |_, _| {}).is_err());
    }

    #[test]
    fn malformed_records_inside_a_valid_crc_are_errors() {
        // A record length pointing past the batch: CRC recomputed so only the record is bad.
        let mut b = batch(1, 20, CompressionArg::None).to_vec();
        b[HEADER_LEN] = 0x7e; // varint 63 > remaining bytes
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            read_batches(&b, 0, |_, _| {}),
            Err(RecordsError::Body { .. })
        ));
    }
}
