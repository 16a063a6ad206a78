//! Pure encode/decode of every on-disk structure (no I/O), byte for byte as `engine/FORMAT.md`
//! describes them. All integers are little-endian with explicit widths.
//!
//! Decoders never trust a length: each is checked against a named limit before anything is
//! allocated, and every structure is covered by a CRC-32C (segment index records by the one
//! their checkpoint records) so a torn or bit-flipped copy is reported as a [`FormatError`],
//! never a panic. Crash behaviour lives in the callers: recovery treats
//! the first undecodable commit-log entry as the end of the log.

pub mod checkpoint;
pub mod entry;
pub mod index_entry;
pub mod segment_index;

use thiserror::Error;

/// Why bytes read from disk do not decode.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FormatError {
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported format version {0}")]
    BadVersion(u16),
    #[error("unknown entry kind {0}")]
    BadKind(u8),
    #[error("length {len} exceeds the limit {max}")]
    TooLong { len: u64, max: u64 },
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("inconsistent field: {0}")]
    Inconsistent(&'static str),
}

pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

pub(crate) fn le_i64(b: &[u8], at: usize) -> i64 {
    le_u64(b, at) as i64
}

pub(crate) fn put(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

/// Parses the `| off | len | ...` field tables of FORMAT.md: returns (table name, offset,
/// width, field) rows. Used by the tests that hold the document and the code together.
#[cfg(test)]
pub(crate) fn format_md_fields(table: &str) -> Vec<(u64, u64, String)> {
    let doc = include_str!("../../FORMAT.md");
    let marker = format!("<!-- table: {table} -->");
    let start = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("FORMAT.md lacks {marker}"));
    let mut rows = Vec::new();
    for line in doc[start + marker.len()..]
        .lines()
        .skip_while(|l| l.trim().is_empty())
    {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if let (Ok(off), Ok(len)) = (cells[1].parse::<u64>(), cells[2].parse::<u64>()) {
            rows.push((off, len, cells[3].to_string()));
        }
    }
    rows
}

/// The hex digits of the golden example `name` in FORMAT.md (the fenced block after its
/// `<!-- golden: name -->` marker), for tests that compare it with an encoder's output.
#[cfg(test)]
pub(crate) fn golden_hex(name: &str) -> String {
    let doc = include_str!("../../FORMAT.md");
    let marker = format!("<!-- golden: {name} -->");
    let start = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("FORMAT.md lacks {marker}"));
    let rest = &doc[start + marker.len()..];
    let body = rest
        .split("```")
        .nth(1)
        .expect("a fenced block after the golden marker");
    body.split_whitespace()
        .filter(|w| w.chars().all(|c| c.is_ascii_hexdigit()))
        .collect()
}

#[cfg(test)]
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::checkpoint::Checkpoint;
    use super::entry::{verify_crc, EntryHeader};
    use super::index_entry::IndexEntry;
    use super::segment_index::{decode_records, RecordBounds, SegmentIndexRecord};
    use proptest::prelude::*;

    proptest! {
        /// Garbage from disk is an error, never a panic or a huge allocation.
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), n in any::<u64>(), crc in any::<u32>()) {
            if let Ok(h) = EntryHeader::decode(&bytes) {
                let _ = verify_crc(&bytes, &h, &bytes[bytes.len().min(64)..]);
            }
            let _ = Checkpoint::decode(&bytes);
            let _ = IndexEntry::decode(&bytes);
            let _ = SegmentIndexRecord::decode(&bytes);
            let bounds = RecordBounds { start: n % 4096, end: n };
            let _ = decode_records(&bytes, n % 32, crc, bounds);
            let _ = decode_records(&bytes, n, crc, bounds);
            // A matching CRC gets past the checksum to the record checks.
            let whole = (bytes.len() / 48) as u64;
            let _ = decode_records(&bytes, whole, crc32c::crc32c(&bytes[..whole as usize * 48]), bounds);
        }

        /// A valid checkpoint with one flipped bit anywhere never decodes.
        #[test]
        fn checkpoint_detects_any_single_bit_flip(bit in 0usize..(52 * 8)) {
            let c = Checkpoint { epoch: 1, log_pos: 2, max_producer_id: -1, queues: vec![], producers: vec![], segments: vec![] };
            let mut b = c.encode();
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Checkpoint::decode(&b).is_err());
        }
    }
}
