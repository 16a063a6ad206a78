//! Segment-index record: one per batch stored in a commit-log segment, appended in log order to
//! that segment's index file `<start:020>.idx` at each checkpoint (format: `engine/FORMAT.md`).
//!
//! ```text
//!  0          4          8                                                   48
//!  | queue_id | reserved | queue-index entry (40 bytes, see `index_entry`)     |
//! ```
//!
//! Durability contract: records carry no CRC of their own. The checkpoint records, per segment,
//! how many leading records of its index file are persisted and the CRC-32C of exactly those
//! bytes (a chained CRC: each checkpoint extends it over the records it appends), so a torn,
//! short, stale or bit-flipped file is detected as a whole, and that segment's records are
//! rebuilt by scanning that one segment. Bytes after the counted prefix are leftovers of an
//! interrupted checkpoint and are overwritten by the next one.

use super::entry::HEADER_LEN as ENTRY_HEADER_LEN;
use super::index_entry::{IndexEntry, INDEX_ENTRY_LEN};
use super::{le_u32, put, FormatError};

/// Size of one segment-index record.
pub const SEGMENT_INDEX_RECORD_LEN: usize = 8 + INDEX_ENTRY_LEN;
const _: () = assert!(SEGMENT_INDEX_RECORD_LEN == 48);

/// Smallest commit-log entry a record can describe: an entry header and a RecordBatch header.
/// A segment of `n` bytes therefore holds at most `n / MIN_BATCH_ENTRY_LEN` records, which
/// bounds what a corrupt count can make recovery read.
pub const MIN_BATCH_ENTRY_LEN: u64 =
    (ENTRY_HEADER_LEN + ringmq_wire::record_batch::HEADER_LEN) as u64;

/// One batch of one queue, as its segment's index file stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentIndexRecord {
    pub queue_id: u32,
    pub entry: IndexEntry,
}

impl SegmentIndexRecord {
    pub fn encode(&self) -> [u8; SEGMENT_INDEX_RECORD_LEN] {
        let mut b = [0u8; SEGMENT_INDEX_RECORD_LEN];
        put(&mut b, 0, &self.queue_id.to_le_bytes());
        put(&mut b, 8, &self.entry.encode());
        b
    }

    pub fn decode(b: &[u8]) -> Result<SegmentIndexRecord, FormatError> {
        if b.len() < SEGMENT_INDEX_RECORD_LEN {
            return Err(FormatError::Truncated {
                need: SEGMENT_INDEX_RECORD_LEN,
                have: b.len(),
            });
        }
        if le_u32(b, 4) != 0 {
            return Err(FormatError::Inconsistent(
                "segment-index record reserved field is not zero",
            ));
        }
        Ok(SegmentIndexRecord {
            queue_id: le_u32(b, 0),
            entry: IndexEntry::decode(&b[8..SEGMENT_INDEX_RECORD_LEN])?,
        })
    }
}

/// Encodes records for appending to a segment's index file; returns the bytes and the chained
/// CRC-32C of the file's prefix ending with them (`crc_before` covers the prefix before them).
pub fn encode_records(records: &[SegmentIndexRecord], crc_before: u32) -> (Vec<u8>, u32) {
    let mut out = Vec::with_capacity(records.len() * SEGMENT_INDEX_RECORD_LEN);
    for r in records {
        out.extend_from_slice(&r.encode());
    }
    let crc = crc32c::crc32c_append(crc_before, &out);
    (out, crc)
}

/// The log range a segment's records must lie in: `[start, end)`, where `end` is the smaller of
/// the segment's end and the checkpoint's log position (records describe checkpointed batches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordBounds {
    pub start: u64,
    pub end: u64,
}

/// Decodes the first `count` records of a segment's index file, checking them against the CRC
/// the checkpoint recorded, and that each lies inside `bounds` after the previous one (log
/// order). `bytes` may be longer (leftovers of an interrupted checkpoint).
pub fn decode_records(
    bytes: &[u8],
    count: u64,
    crc: u32,
    bounds: RecordBounds,
) -> Result<Vec<SegmentIndexRecord>, FormatError> {
    let need = count
        .checked_mul(SEGMENT_INDEX_RECORD_LEN as u64)
        .ok_or(FormatError::TooLong {
            len: count,
            max: u64::MAX / SEGMENT_INDEX_RECORD_LEN as u64,
        })?;
    if (bytes.len() as u64) < need {
        return Err(FormatError::Truncated {
            need: usize::try_from(need).unwrap_or(usize::MAX),
            have: bytes.len(),
        });
    }
    let body = &bytes[..need as usize];
    let computed = crc32c::crc32c(body);
    if computed != crc {
        return Err(FormatError::CrcMismatch {
            stored: crc,
            computed,
        });
    }
    let mut next_pos = bounds.start;
    let mut out = Vec::with_capacity(count as usize);
    for chunk in body.chunks_exact(SEGMENT_INDEX_RECORD_LEN) {
        let r = SegmentIndexRecord::decode(chunk)?;
        let e = &r.entry;
        // Widened: log positions and lengths come from disk.
        let end = e.log_pos as u128 + u128::from(e.entry_len);
        if e.log_pos < next_pos
            || end > u128::from(bounds.end)
            || u64::from(e.entry_len) < MIN_BATCH_ENTRY_LEN
        {
            return Err(FormatError::Inconsistent(
                "segment-index record outside its segment or out of log order",
            ));
        }
        next_pos = end as u64;
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{golden_hex, hex};

    fn sample(i: u64) -> SegmentIndexRecord {
        SegmentIndexRecord {
            queue_id: 7 + i as u32,
            entry: IndexEntry {
                base_offset: i * 10,
                last_offset: i * 10 + 9,
                log_pos: 4096 + 200 * i,
                entry_len: 200,
                tag_hash: 0,
                max_timestamp: 1_700_000_000_000 + i as i64,
            },
        }
    }

    const BOUNDS: RecordBounds = RecordBounds {
        start: 4096,
        end: 8192,
    };

    fn file(n: u64) -> (Vec<u8>, u32) {
        let rs: Vec<_> = (0..n).map(sample).collect();
        encode_records(&rs, 0)
    }

    #[test]
    fn round_trip() {
        let r = sample(3);
        assert_eq!(SegmentIndexRecord::decode(&r.encode()).unwrap(), r);
        let (b, crc) = file(3);
        assert_eq!(
            decode_records(&b, 3, crc, BOUNDS).unwrap(),
            (0..3).map(sample).collect::<Vec<_>>()
        );
    }

    #[test]
    fn chained_crc_equals_whole_prefix_crc() {
        let rs: Vec<_> = (0..5).map(sample).collect();
        let (a, crc_a) = encode_records(&rs[..2], 0);
        let (b, crc_b) = encode_records(&rs[2..], crc_a);
        let all = [a, b].concat();
        assert_eq!(crc_b, crc32c::crc32c(&all));
        assert_eq!(decode_records(&all, 5, crc_b, BOUNDS).unwrap(), rs);
        // The first checkpoint's count and CRC still verify the longer file.
        assert_eq!(decode_records(&all, 2, crc_a, BOUNDS).unwrap(), rs[..2]);
    }

    #[test]
    fn truncated_is_refused() {
        let b = sample(1).encode();
        for cut in 0..SEGMENT_INDEX_RECORD_LEN {
            assert!(matches!(
                SegmentIndexRecord::decode(&b[..cut]),
                Err(FormatError::Truncated { .. })
            ));
        }
        let (f, crc) = file(3);
        for cut in 0..f.len() {
            assert!(matches!(
                decode_records(&f[..cut], 3, crc, BOUNDS),
                Err(FormatError::Truncated { .. })
            ));
        }
        assert!(decode_records(&f, u64::MAX, crc, BOUNDS).is_err());
    }

    #[test]
    fn bad_checksum_is_refused() {
        let (mut f, crc) = file(3);
        // Bytes past the counted prefix are not checked.
        f.extend_from_slice(&[0xff; 11]);
        assert_eq!(decode_records(&f, 3, crc, BOUNDS).unwrap().len(), 3);
        for bit in 0..3 * SEGMENT_INDEX_RECORD_LEN * 8 {
            let mut c = f.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(
                    decode_records(&c, 3, crc, BOUNDS),
                    Err(FormatError::CrcMismatch { .. })
                ),
                "flip of bit {bit} accepted"
            );
        }
    }

    #[test]
    fn records_outside_the_segment_or_out_of_order_are_refused() {
        let mut rs: Vec<_> = (0..3).map(sample).collect();
        let (b, crc) = encode_records(&rs, 0);
        let short = RecordBounds {
            start: 4096,
            end: 4096 + 400,
        };
        assert!(decode_records(&b, 3, crc, short).is_err());
        assert!(decode_records(&b, 2, crc32c::crc32c(&b[..96]), short).is_ok());
        let late = RecordBounds {
            start: 4097,
            end: 8192,
        };
        assert!(decode_records(&b, 3, crc, late).is_err());
        rs.swap(0, 1);
        let (b, crc) = encode_records(&rs, 0);
        assert!(decode_records(&b, 3, crc, BOUNDS).is_err());
        let mut r = sample(0);
        r.entry.entry_len = 64;
        let (b, crc) = encode_records(&[r], 0);
        assert!(decode_records(&b, 1, crc, BOUNDS).is_err());
    }

    #[test]
    fn nonzero_reserved_is_refused() {
        let mut b = sample(0).encode();
        b[5] = 1;
        assert!(matches!(
            SegmentIndexRecord::decode(&b),
            Err(FormatError::Inconsistent(_))
        ));
    }

    #[test]
    fn format_md_matches_segment_index_layout() {
        let rows = crate::format::format_md_fields("segment-index-record");
        let got: Vec<(u64, u64, &str)> = rows
            .iter()
            .map(|(o, l, n)| (*o, *l, n.trim_matches('`')))
            .collect();
        assert_eq!(
            got,
            vec![(0, 4, "queue_id"), (4, 4, "reserved"), (8, 40, "entry")]
        );
        assert_eq!(
            rows.last().map(|r| r.0 + r.1),
            Some(SEGMENT_INDEX_RECORD_LEN as u64)
        );
    }

    fn golden() -> SegmentIndexRecord {
        SegmentIndexRecord {
            queue_id: 7,
            entry: IndexEntry {
                base_offset: 0x0102_0304_0506_0708,
                last_offset: 0x0102_0304_0506_070a,
                log_pos: 4096,
                entry_len: 133,
                tag_hash: 0,
                max_timestamp: 1_700_000_000_005,
            },
        }
    }

    #[test]
    fn golden_bytes_match_format_md() {
        assert_eq!(hex(&golden().encode()), golden_hex("segment-index-golden"));
    }

    #[test]
    #[ignore = "prints the golden hex for FORMAT.md"]
    fn print_golden() {
        for row in golden().encode().chunks(16) {
            let words: Vec<String> = row.iter().map(|x| format!("{x:02x}")).collect();
            println!("{}", words.join(" "));
        }
    }
}
