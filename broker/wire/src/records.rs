//! The records inside an uncompressed RecordBatch v2, read in place.
//!
//! ```text
//!  record := length:varint  attributes:int8  timestamp_delta:varlong  offset_delta:varint
//!            key_len:varint key  value_len:varint value  header_count:varint headers
//!  header := name_len:varint name  value_len:varint value        (len -1 = null)
//! ```
//!
//! Nothing is copied and nothing is allocated: every item borrows from the batch. Every length
//! is checked against what is left of the record before slicing, and each record must fill
//! exactly the `length` it announces, so garbage yields an error, never a panic. Compressed
//! batches are refused: their records are only readable after decompression.

use crate::record_batch::{BatchError, BatchHeader, Compression, HEADER_LEN};
use crate::varint::{get_varint, VarintError};
use thiserror::Error;

/// Most headers one record may carry; a count above it is treated as garbage.
pub const MAX_HEADERS_PER_RECORD: i64 = 65_536;

/// Why the records of a batch cannot be read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RecordError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("compressed batch ({0:?}): records are not readable in place")]
    Compressed(Compression),
    #[error("record {index}: malformed varint")]
    Varint { index: i32 },
    #[error("record {index}: {what} length {len} is invalid ({left} bytes left)")]
    BadLength {
        index: i32,
        what: &'static str,
        len: i64,
        left: usize,
    },
    #[error("record {index}: announced {announced} bytes but its fields use {used}")]
    LengthMismatch {
        index: i32,
        announced: usize,
        used: usize,
    },
    #[error("batch announces {announced} records but its body holds {found}")]
    CountMismatch { announced: i32, found: i32 },
    #[error("batch body has {0} bytes after its last record")]
    TrailingBytes(usize),
}

/// One record, borrowed from its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub attributes: i8,
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    header_count: i64,
    headers: &'a [u8],
    index: i32,
}

impl<'a> RecordView<'a> {
    /// Number of headers the record carries.
    pub fn header_count(&self) -> i64 {
        self.header_count
    }

    /// The record's headers as (name, value) pairs. Already validated when the record was read,
    /// so the iterator only yields `Err` if that validation has a bug.
    pub fn headers(&self) -> Headers<'a> {
        Headers {
            cursor: Cursor {
                buf: self.headers,
                pos: 0,
                index: self.index,
            },
            left: self.header_count,
        }
    }
}

/// Reads the records of a whole uncompressed batch (header included, as stored). The header's
/// lengths are checked; the CRC is not (call `record_batch::validate` first where it matters).
pub fn records(batch: &[u8]) -> Result<Records<'_>, RecordError> {
    let header = BatchHeader::parse(batch)?;
    let compression = header.compression();
    if compression != Compression::None {
        return Err(RecordError::Compressed(compression));
    }
    Ok(records_in_body(
        &batch[HEADER_LEN..header.total_len()],
        header.record_count,
    ))
}

/// Reads `record_count` records from a batch body: the bytes after the 61-byte header, or
/// what a compressed batch's body decompresses to.
pub fn records_in_body(body: &[u8], record_count: i32) -> Records<'_> {
    Records {
        cursor: Cursor {
            buf: body,
            pos: 0,
            index: 0,
        },
        announced: record_count,
        read: 0,
        done: false,
    }
}

/// Iterator returned by [`records`]. After the first error it ends.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    cursor: Cursor<'a>,
    announced: i32,
    read: i32,
    done: bool,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<RecordView<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.step();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}

impl<'a> Records<'a> {
    fn step(&mut self) -> Option<Result<RecordView<'a>, RecordError>> {
        let left = self.cursor.left();
        if self.read == self.announced.max(0) {
            return (left > 0).then_some(Err(RecordError::TrailingBytes(left)));
        }
        if left == 0 {
            return Some(Err(RecordError::CountMismatch {
                announced: self.announced,
                found: self.read,
            }));
        }
        self.cursor.index = self.read;
        let record = read_record(&mut self.cursor);
        self.read += 1;
        Some(record)
    }
}

/// Iterator over one record's headers.
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    cursor: Cursor<'a>,
    left: i64,
}

impl<'a> Iterator for Headers<'a> {
    type Item = Result<(&'a [u8], Option<&'a [u8]>), RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left <= 0 {
            return None;
        }
        self.left -= 1;
        let header = read_header(&mut self.cursor);
        if header.is_err() {
            self.left = 0;
        }
        Some(header)
    }
}

fn read_record<'a>(cursor: &mut Cursor<'a>) -> Result<RecordView<'a>, RecordError> {
    let length = cursor.varint()?;
    let announced = cursor.checked_len(length, "record")?;
    let mut body = Cursor {
        buf: cursor.take(announced),
        pos: 0,
        index: cursor.index,
    };
    let attributes = body.byte()? as i8;
    let timestamp_delta = body.varint()?;
    let offset_delta = body.varint()?;
    let offset_delta = i32::try_from(offset_delta).map_err(|_| RecordError::BadLength {
        index: body.index,
        what: "offset delta",
        len: offset_delta,
        left: body.left(),
    })?;
    let key = body.nullable_bytes("key")?;
    let value = body.nullable_bytes("value")?;
    let header_count = body.varint()?;
    // Each header takes at least two bytes (two empty lengths): a larger count is garbage.
    if !(0..=MAX_HEADERS_PER_RECORD).contains(&header_count)
        || header_count as usize > body.left() / 2
    {
        return Err(RecordError::BadLength {
            index: body.index,
            what: "header count",
            len: header_count,
            left: body.left(),
        });
    }
    let headers_start = body.pos;
    for _ in 0..header_count {
        read_header(&mut body)?;
    }
    let headers = &body.buf[headers_start..body.pos];
    if body.left() != 0 {
        return Err(RecordError::LengthMismatch {
            index: body.index,
            announced,
            used: body.pos,
        });
    }
    Ok(RecordView {
        attributes,
        timestamp_delta,
        offset_delta,
        key,
        value,
        header_count,
        headers,
        index: body.index,
    })
}

fn read_header<'a>(cursor: &mut Cursor<'a>) -> Result<(&'a [u8], Option<&'a [u8]>), RecordError> {
    let name = cursor.nullable_bytes("header name")?.unwrap_or_default();
    let value = cursor.nullable_bytes("header value")?;
    Ok((name, value))
}

/// A read position in a slice that never reads past its end.
#[derive(Debug, Clone)]
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Which record is being read, for error messages.
    index: i32,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn byte(&mut self) -> Result<u8, RecordError> {
        let b = *self.buf.get(self.pos).ok_or(RecordError::BadLength {
            index: self.index,
            what: "attributes",
            len: 1,
            left: 0,
        })?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<i64, RecordError> {
        let (v, n) = get_varint(&self.buf[self.pos..])
            .map_err(|VarintError| RecordError::Varint { index: self.index })?;
        self.pos += n;
        Ok(v)
    }

    /// Checks a length read from the input against what is left; returns it as `usize`.
    fn checked_len(&self, len: i64, what: &'static str) -> Result<usize, RecordError> {
        match usize::try_from(len) {
            Ok(n) if n <= self.left() => Ok(n),
            _ => Err(RecordError::BadLength {
                index: self.index,
                what,
                len,
                left: self.left(),
            }),
        }
    }

    /// Takes `n` bytes; `n` must have been checked with `checked_len`.
    fn take(&mut self, n: usize) -> &'a [u8] {
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        out
    }

    fn nullable_bytes(&mut self, what: &'static str) -> Result<Option<&'a [u8]>, RecordError> {
        let len = self.varint()?;
        if len == -1 {
            return Ok(None);
        }
        let n = self.checked_len(len, what)?;
        Ok(Some(self.take(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record_batch::{BatchBuilder, ProducerStamp, Record};
    use proptest::prelude::*;

    fn sample() -> Vec<u8> {
        let mut b = BatchBuilder::new(256);
        b.push(&Record {
            key: Some(b"k0"),
            value: Some(b"v0"),
            headers: &[],
            timestamp_ms: 1000,
        });
        b.push(&Record {
            key: None,
            value: Some(b"value-1"),
            headers: &[("h1", Some(b"x")), ("h2", None)],
            timestamp_ms: 1005,
        });
        b.push(&Record {
            key: Some(b""),
            value: None,
            headers: &[],
            timestamp_ms: 999,
        });
        b.build(ProducerStamp::NONE, 0)
    }

    #[test]
    fn reads_back_what_the_builder_wrote() {
        let batch = sample();
        let recs: Vec<_> = records(&batch).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(
            (recs[0].key, recs[0].value, recs[0].offset_delta),
            (Some(&b"k0"[..]), Some(&b"v0"[..]), 0)
        );
        assert_eq!(
            (recs[1].key, recs[1].timestamp_delta, recs[1].offset_delta),
            (None, 5, 1)
        );
        let headers: Vec<_> = recs[1].headers().collect::<Result<_, _>>().unwrap();
        assert_eq!(
            headers,
            vec![(&b"h1"[..], Some(&b"x"[..])), (&b"h2"[..], None)]
        );
        assert_eq!(
            (recs[2].key, recs[2].value, recs[2].timestamp_delta),
            (Some(&b""[..]), None, -1)
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let batch = sample();
        for cut in 0..batch.len() {
            let mut short = batch[..cut].to_vec();
            if cut >= HEADER_LEN {
                // Keep the header consistent with the shorter body, so the record reader (not
                // the header check) meets the cut.
                let len = (cut - 12) as i32;
                short[8..12].copy_from_slice(&len.to_be_bytes());
            }
            let result: Result<Vec<_>, _> = records(&short).and_then(|r| r.collect());
            assert!(result.is_err(), "cut at {cut} was accepted");
        }
    }

    #[test]
    fn record_count_must_match_the_body() {
        let mut batch = sample();
        batch[57..61].copy_from_slice(&2i32.to_be_bytes());
        let result: Result<Vec<_>, _> = records(&batch).unwrap().collect();
        assert!(
            matches!(result, Err(RecordError::TrailingBytes(_))),
            "{result:?}"
        );
        batch[57..61].copy_from_slice(&4i32.to_be_bytes());
        let result: Result<Vec<_>, _> = records(&batch).unwrap().collect();
        assert_eq!(
            result,
            Err(RecordError::CountMismatch {
                announced: 4,
                found: 3
            })
        );
    }

    #[test]
    fn lengths_beyond_the_record_are_refused() {
        let mut batch = sample();
        // First record: length varint at 61, attributes, ts delta, offset delta, then key_len.
        // Make the key length (zig-zag 2 = 4) claim 60 bytes.
        assert_eq!(batch[HEADER_LEN + 4], 4, "layout assumption");
        batch[HEADER_LEN + 4] = 120;
        let result: Result<Vec<_>, _> = records(&batch).unwrap().collect();
        assert!(
            matches!(result, Err(RecordError::BadLength { what: "key", .. })),
            "{result:?}"
        );
    }

    #[test]
    fn compressed_batches_are_refused() {
        let mut batch = sample();
        batch[22] |= 1;
        assert_eq!(
            records(&batch).err(),
            Some(RecordError::Compressed(Compression::Gzip))
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300), count in -2i32..8) {
            let mut batch = sample()[..HEADER_LEN].to_vec();
            batch.extend_from_slice(&body);
            let len = (batch.len() - 12) as i32;
            batch[8..12].copy_from_slice(&len.to_be_bytes());
            batch[57..61].copy_from_slice(&count.to_be_bytes());
            if let Ok(recs) = records(&batch) {
                for r in recs.flatten() {
                    let _ = r.headers().count();
                }
            }
        }
    }
}
