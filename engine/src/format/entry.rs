//! Commit-log entry: a 64-byte header followed by the payload (one Kafka RecordBatch v2 with
//! its base offset assigned, or nothing for control entries).
//!
//! ```text
//!  0      4      5    6      8        12           16           24          32         40           48      56          60     64
//!  |magic |ver   |kind|rsvd  |queue_id|record_count|base_offset |log_pos    |max_ts    |append_ms   |epoch  |payload_len|crc   | payload..
//! ```
//!
//! Invariants the recovery scan relies on:
//! - the CRC covers header bytes [0, 60) and then the payload, so a torn write of either half is
//!   detected; padding entries are the exception: their CRC covers the header only, because
//!   their "payload" is the unwritten rest of the segment;
//! - `epoch` never decreases along the log. A shard bumps it (durably, in the checkpoint) each
//!   time it opens, so stale entries left beyond a truncated tail by an earlier run can never
//!   pass for new ones: they carry a smaller epoch than the entries written before them.
//! - `log_pos` is the log position the entry was written at. A segment file may be recycled
//!   (`log::recycle`): renamed to a later position and overwritten, so that until the new
//!   entries reach them its bytes are entries of an earlier lap, whole and CRC-valid. Read at a
//!   position other than their own, they are not part of the log.
//! - `payload_len` is at most [`MAX_PAYLOAD_BYTES`]; a larger value is garbage, not a batch.

use super::{le_i64, le_u16, le_u32, le_u64, put, FormatError};

/// Size of the entry header.
pub const HEADER_LEN: usize = 64;
/// "RMQE" as little-endian bytes.
pub const MAGIC: u32 = u32::from_le_bytes(*b"RMQE");
/// Current entry format version (1 had the batch's first timestamp where 2 has `log_pos`).
pub const VERSION: u8 = 2;
/// Largest payload any entry may carry (a batch limit in the config may only be lower).
pub const MAX_PAYLOAD_BYTES: u32 = 64 << 20;
/// Byte offset of the `log_pos` field.
pub const LOG_POS_OFFSET: usize = 24;
/// Byte offset of the CRC field; the CRC covers everything before it, then the payload.
pub const CRC_OFFSET: usize = 60;

const _: () = assert!(HEADER_LEN == 64 && CRC_OFFSET + 4 == HEADER_LEN);
const _: () = assert!((MAX_PAYLOAD_BYTES as usize) < (u32::MAX as usize) - HEADER_LEN);

/// What an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// One RecordBatch v2 of `queue_id`.
    Batch = 1,
    /// Control: `queue_id` was deleted; no payload.
    QueueDeleted = 2,
    /// Filler to the end of a segment; `payload_len` bytes follow that are not data.
    Padding = 3,
}

impl EntryKind {
    fn from_u8(v: u8) -> Result<EntryKind, FormatError> {
        match v {
            1 => Ok(EntryKind::Batch),
            2 => Ok(EntryKind::QueueDeleted),
            3 => Ok(EntryKind::Padding),
            other => Err(FormatError::BadKind(other)),
        }
    }
}

/// The decoded header of one commit-log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHeader {
    pub kind: EntryKind,
    pub queue_id: u32,
    pub record_count: u32,
    pub base_offset: u64,
    /// Log position of the entry's first byte.
    pub log_pos: u64,
    pub max_timestamp: i64,
    pub append_time_ms: i64,
    pub epoch: u64,
    pub payload_len: u32,
    /// Stored CRC (filled by [`EntryHeader::decode`]; ignored by `encode`).
    pub crc: u32,
}

impl EntryHeader {
    /// Bytes the entry occupies in the log, header included.
    pub fn entry_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.payload_len)
    }

    /// Encodes the header with the CRC over it and `payload` (padding: header only).
    pub fn encode(&self, payload: &[u8]) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        put(&mut b, 0, &MAGIC.to_le_bytes());
        b[4] = VERSION;
        b[5] = self.kind as u8;
        put(&mut b, 8, &self.queue_id.to_le_bytes());
        put(&mut b, 12, &self.record_count.to_le_bytes());
        put(&mut b, 16, &self.base_offset.to_le_bytes());
        put(&mut b, LOG_POS_OFFSET, &self.log_pos.to_le_bytes());
        put(&mut b, 32, &self.max_timestamp.to_le_bytes());
        put(&mut b, 40, &self.append_time_ms.to_le_bytes());
        put(&mut b, 48, &self.epoch.to_le_bytes());
        put(&mut b, 56, &self.payload_len.to_le_bytes());
        let crc = entry_crc(&b, self.kind, payload);
        put(&mut b, CRC_OFFSET, &crc.to_le_bytes());
        b
    }

    /// Like [`EntryHeader::encode`] for a payload given in pieces (e.g. a rewritten base offset
    /// followed by the rest of the batch), so the payload need not be copied to be checksummed.
    pub fn encode_parts(&self, parts: &[&[u8]]) -> [u8; HEADER_LEN] {
        let mut b = self.encode(&[]);
        if self.kind != EntryKind::Padding {
            let crc = parts.iter().fold(crc32c::crc32c(&b[..CRC_OFFSET]), |c, p| {
                crc32c::crc32c_append(c, p)
            });
            put(&mut b, CRC_OFFSET, &crc.to_le_bytes());
        }
        b
    }

    /// [`EntryHeader::encode_parts`] for a batch entry whose payload is `base_be` followed by
    /// `batch[8..]`, without reading the payload again: `batch_crc` must be the batch's own
    /// CRC-32C of `batch[21..covered_end]`, already checked against those bytes (by
    /// `ringmq_wire::record_batch::validate`). Same CRC value, same bytes on disk.
    ///
    /// Why: the entry CRC and the batch CRC are the same function (CRC-32C) over overlapping
    /// bytes, and a CRC is linear, so the entry CRC of `prefix ++ covered ++ rest` is the
    /// prefix's CRC shifted over `covered`'s length, xor `crc(covered)`, then extended over
    /// `rest`. Computing it twice over a 256 KiB batch cost a third of the append CPU.
    pub fn encode_batch(
        &self,
        base_be: &[u8; 8],
        batch: &[u8],
        batch_crc: u32,
        covered_end: usize,
    ) -> [u8; HEADER_LEN] {
        if self.kind == EntryKind::Padding
            || covered_end < KAFKA_CRC_START
            || covered_end > batch.len()
        {
            // Not a shape the shortcut knows: the plain computation is always right.
            return self.encode_parts(&[base_be, batch.get(8..).unwrap_or_default()]);
        }
        let mut b = self.encode(&[]);
        let prefix = crc32c::crc32c_append(crc32c::crc32c(&b[..CRC_OFFSET]), base_be);
        let prefix = crc32c::crc32c_append(prefix, &batch[8..KAFKA_CRC_START]);
        let covered = crc32c_shift(prefix, covered_end - KAFKA_CRC_START) ^ batch_crc;
        let crc = crc32c::crc32c_append(covered, &batch[covered_end..]);
        debug_assert_eq!(
            crc,
            le_u32(&self.encode_parts(&[base_be, &batch[8..]]), CRC_OFFSET),
            "batch_crc must be the CRC-32C of batch[21..covered_end]"
        );
        put(&mut b, CRC_OFFSET, &crc.to_le_bytes());
        b
    }

    /// The `log_pos` field of an encoded header.
    pub fn encoded_log_pos(b: &[u8; HEADER_LEN]) -> u64 {
        le_u64(b, LOG_POS_OFFSET)
    }

    /// Decodes and sanity-checks a header (magic, version, kind, length limit). The CRC is
    /// checked separately by [`verify_crc`] once the payload is at hand.
    pub fn decode(b: &[u8]) -> Result<EntryHeader, FormatError> {
        if b.len() < HEADER_LEN {
            return Err(FormatError::Truncated {
                need: HEADER_LEN,
                have: b.len(),
            });
        }
        let magic = le_u32(b, 0);
        if magic != MAGIC {
            return Err(FormatError::BadMagic(magic));
        }
        if b[4] != VERSION {
            return Err(FormatError::BadVersion(u16::from(b[4])));
        }
        let kind = EntryKind::from_u8(b[5])?;
        if le_u16(b, 6) != 0 {
            return Err(FormatError::Inconsistent(
                "reserved entry bytes are not zero",
            ));
        }
        let payload_len = le_u32(b, 56);
        // Padding may span up to a whole segment; only real payloads obey the batch limit.
        if kind != EntryKind::Padding && payload_len > MAX_PAYLOAD_BYTES {
            return Err(FormatError::TooLong {
                len: u64::from(payload_len),
                max: u64::from(MAX_PAYLOAD_BYTES),
            });
        }
        if kind == EntryKind::QueueDeleted && payload_len != 0 {
            return Err(FormatError::Inconsistent(
                "queue-deleted entry with a payload",
            ));
        }
        Ok(EntryHeader {
            kind,
            queue_id: le_u32(b, 8),
            record_count: le_u32(b, 12),
            base_offset: le_u64(b, 16),
            log_pos: le_u64(b, LOG_POS_OFFSET),
            max_timestamp: le_i64(b, 32),
            append_time_ms: le_i64(b, 40),
            epoch: le_u64(b, 48),
            payload_len,
            crc: le_u32(b, CRC_OFFSET),
        })
    }
}

/// Checks the stored CRC of an entry whose header bytes are `header` (at least
/// [`HEADER_LEN`]) and whose payload is `payload` (ignored for padding).
pub fn verify_crc(header: &[u8], decoded: &EntryHeader, payload: &[u8]) -> Result<(), FormatError> {
    if header.len() < HEADER_LEN {
        return Err(FormatError::Truncated {
            need: HEADER_LEN,
            have: header.len(),
        });
    }
    if decoded.kind != EntryKind::Padding && payload.len() != decoded.payload_len as usize {
        return Err(FormatError::Truncated {
            need: decoded.payload_len as usize,
            have: payload.len(),
        });
    }
    let computed = entry_crc(&header[..HEADER_LEN], decoded.kind, payload);
    if computed != decoded.crc {
        return Err(FormatError::CrcMismatch {
            stored: decoded.crc,
            computed,
        });
    }
    Ok(())
}

/// Where a Kafka RecordBatch v2's own CRC-32C coverage starts (its `attributes` field, right
/// after the 4-byte CRC at offset 17); the coverage runs to the batch end.
pub const KAFKA_CRC_START: usize = 21;

/// CRC-32C polynomial, bit-reflected (bit 31 is the coefficient of x^0, as in the CRC value).
const CRC32C_POLY_REFLECTED: u32 = 0x82F6_3B78;

/// `a * b mod P` over GF(2), both operands and the result bit-reflected like a CRC value.
const fn gf2_mul_mod(a: u32, mut b: u32) -> u32 {
    let mut p = 0;
    let mut i = 0;
    while i < 32 {
        if a & (0x8000_0000 >> i) != 0 {
            p ^= b;
        }
        // b = b * x mod P: one step right in the reflected form, reduced when x^31 falls out.
        b = if b & 1 != 0 {
            (b >> 1) ^ CRC32C_POLY_REFLECTED
        } else {
            b >> 1
        };
        i += 1;
    }
    p
}

/// `X8_POW2[k]` = x^(8 * 2^k) mod P: appending 2^k bytes multiplies a CRC by it.
const X8_POW2: [u32; 64] = {
    let mut t = [0u32; 64];
    t[0] = 0x8000_0000 >> 8; // x^8
    let mut k = 1;
    while k < 64 {
        t[k] = gf2_mul_mod(t[k - 1], t[k - 1]);
        k += 1;
    }
    t
};

/// The CRC of `A ++ B` from `crc(A)` when `crc(B)` is xored in afterwards: `crc(A)` moved
/// over `len_b` bytes (`crc(A ++ B) == crc32c_shift(crc(A), len(B)) ^ crc(B)`).
fn crc32c_shift(mut crc: u32, len_b: usize) -> u32 {
    let mut n = len_b as u64;
    let mut k = 0;
    while n != 0 {
        if n & 1 != 0 {
            crc = gf2_mul_mod(X8_POW2[k], crc);
        }
        n >>= 1;
        k += 1;
    }
    crc
}

fn entry_crc(header: &[u8], kind: EntryKind, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&header[..CRC_OFFSET]);
    if kind == EntryKind::Padding {
        crc
    } else {
        crc32c::crc32c_append(crc, payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{golden_hex, hex};

    fn sample() -> EntryHeader {
        EntryHeader {
            kind: EntryKind::Batch,
            queue_id: 7,
            record_count: 3,
            base_offset: 0x0102_0304_0506_0708,
            log_pos: 4096,
            max_timestamp: 1_700_000_000_002,
            append_time_ms: 1_700_000_000_005,
            epoch: 2,
            payload_len: 5,
            crc: 0,
        }
    }

    #[test]
    fn round_trip_and_crc() {
        let payload = b"hello";
        let bytes = sample().encode(payload);
        let h = EntryHeader::decode(&bytes).unwrap();
        assert_eq!(EntryHeader { crc: 0, ..h }, sample());
        verify_crc(&bytes, &h, payload).unwrap();
        assert_eq!(h.entry_len(), 69);
    }

    #[test]
    fn parts_encode_like_whole() {
        assert_eq!(
            sample().encode_parts(&[b"he", b"llo"]),
            sample().encode(b"hello")
        );
    }

    /// The shortcut gives the very CRC the plain computation gives, for every batch length
    /// (around the 21-byte prefix, powers of two, odd sizes) and with bytes past the coverage.
    #[test]
    fn batch_crc_shortcut_matches_the_plain_crc() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut data = vec![0u8; 300_000];
        for d in data.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *d = state as u8;
        }
        let base = 42u64.to_be_bytes();
        for len in [
            21usize, 22, 29, 61, 64, 100, 4096, 4117, 16_384, 65_557, 262_165, 300_000,
        ] {
            for trailing in [0usize, 1, 7] {
                let batch = &data[..len];
                let covered_end = len - trailing.min(len - 21);
                let batch_crc = crc32c::crc32c(&batch[KAFKA_CRC_START..covered_end]);
                let h = EntryHeader {
                    payload_len: len as u32,
                    ..sample()
                };
                assert_eq!(
                    h.encode_batch(&base, batch, batch_crc, covered_end),
                    h.encode_parts(&[&base, &batch[8..]]),
                    "len {len}, covered to {covered_end}"
                );
            }
        }
        for (a, b) in [(0usize, 5usize), (3, 1000), (777, 65_536), (1, 299_999)] {
            let (x, y) = data[..a + b].split_at(a);
            assert_eq!(
                crc32c_shift(crc32c::crc32c(x), y.len()) ^ crc32c::crc32c(y),
                crc32c::crc32c(&data[..a + b])
            );
        }
    }

    #[test]
    fn truncated_header_is_refused() {
        let bytes = sample().encode(b"hello");
        for cut in 0..HEADER_LEN {
            assert!(matches!(
                EntryHeader::decode(&bytes[..cut]),
                Err(FormatError::Truncated { .. })
            ));
        }
        let h = EntryHeader::decode(&bytes).unwrap();
        assert!(matches!(
            verify_crc(&bytes, &h, b"hell"),
            Err(FormatError::Truncated { .. })
        ));
    }

    #[test]
    fn flipped_bits_fail_the_crc() {
        let payload = b"hello".to_vec();
        let bytes = sample().encode(&payload);
        // Every bit of the header before the CRC, and of the payload, is covered.
        for bit in 0..(CRC_OFFSET * 8) {
            let mut b = bytes;
            b[bit / 8] ^= 1 << (bit % 8);
            if let Ok(h) = EntryHeader::decode(&b) {
                assert!(
                    verify_crc(&b, &h, &payload).is_err(),
                    "bit {bit} not covered"
                );
            }
        }
        let h = EntryHeader::decode(&bytes).unwrap();
        let mut p = payload.clone();
        p[4] ^= 0x10;
        assert!(matches!(
            verify_crc(&bytes, &h, &p),
            Err(FormatError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn garbage_lengths_and_kinds_are_refused() {
        let mut b = sample().encode(b"hello");
        b[56..60].copy_from_slice(&(MAX_PAYLOAD_BYTES + 1).to_le_bytes());
        assert!(matches!(
            EntryHeader::decode(&b),
            Err(FormatError::TooLong { .. })
        ));
        let mut b = sample().encode(b"hello");
        b[5] = 9;
        assert_eq!(EntryHeader::decode(&b), Err(FormatError::BadKind(9)));
        assert_eq!(
            EntryHeader::decode(&[0u8; 64]),
            Err(FormatError::BadMagic(0))
        );
    }

    #[test]
    fn padding_crc_covers_header_only() {
        let pad = EntryHeader {
            kind: EntryKind::Padding,
            payload_len: 1 << 30,
            ..sample()
        };
        let b = pad.encode(&[]);
        let h = EntryHeader::decode(&b).unwrap();
        verify_crc(&b, &h, &[]).unwrap();
    }

    /// FORMAT.md's entry table names the same offsets and widths as the encoder writes.
    #[test]
    fn format_md_matches_entry_layout() {
        let rows = crate::format::format_md_fields("entry-header");
        let expect: &[(u64, u64, &str)] = &[
            (0, 4, "magic"),
            (4, 1, "version"),
            (5, 1, "kind"),
            (6, 2, "reserved"),
            (8, 4, "queue_id"),
            (12, 4, "record_count"),
            (16, 8, "base_offset"),
            (24, 8, "log_pos"),
            (32, 8, "max_timestamp"),
            (40, 8, "append_time_ms"),
            (48, 8, "epoch"),
            (56, 4, "payload_len"),
            (60, 4, "crc"),
        ];
        let got: Vec<(u64, u64, &str)> = rows
            .iter()
            .map(|(o, l, n)| (*o, *l, n.trim_matches('`')))
            .collect();
        assert_eq!(got, expect);
        let end = rows.last().map(|(o, l, _)| o + l).unwrap();
        assert_eq!(end, HEADER_LEN as u64);
        // The golden example in FORMAT.md is what the encoder produces.
        let golden = golden_hex("entry-golden");
        assert_eq!(hex(&sample().encode(b"hello")), golden);
    }

    #[test]
    #[ignore = "prints the golden hex for FORMAT.md"]
    fn print_golden() {
        let b = sample().encode(b"hello");
        for row in b.chunks(16) {
            println!(
                "{}",
                row.iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
    }
}
