//! Queue-index entry: 40 fixed bytes per stored batch: where it lies in the commit log. Kept in
//! memory per queue, and stored on disk inside segment-index records (`segment_index`).
//!
//! ```text
//!  0            8            16        24         28        32             40
//!  | base_offset | last_offset | log_pos | entry_len | tag_hash | max_timestamp |
//! ```
//!
//! The entry carries no CRC: the segment index file that stores it is checked as a whole
//! against the count and CRC its checkpoint recorded (see `segment_index`).

use super::{le_i64, le_u32, le_u64, put, FormatError};

/// Size of one index entry.
pub const INDEX_ENTRY_LEN: usize = 40;
const _: () = assert!(INDEX_ENTRY_LEN == 40);

/// Where one batch of a queue lives in the commit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub base_offset: u64,
    pub last_offset: u64,
    /// Log position of the entry header (not the batch).
    pub log_pos: u64,
    /// Entry length in the log, header included.
    pub entry_len: u32,
    /// Reserved for broker-side tag filtering; 0 today.
    pub tag_hash: u32,
    pub max_timestamp: i64,
}

impl IndexEntry {
    pub fn encode(&self) -> [u8; INDEX_ENTRY_LEN] {
        let mut b = [0u8; INDEX_ENTRY_LEN];
        put(&mut b, 0, &self.base_offset.to_le_bytes());
        put(&mut b, 8, &self.last_offset.to_le_bytes());
        put(&mut b, 16, &self.log_pos.to_le_bytes());
        put(&mut b, 24, &self.entry_len.to_le_bytes());
        put(&mut b, 28, &self.tag_hash.to_le_bytes());
        put(&mut b, 32, &self.max_timestamp.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<IndexEntry, FormatError> {
        if b.len() < INDEX_ENTRY_LEN {
            return Err(FormatError::Truncated {
                need: INDEX_ENTRY_LEN,
                have: b.len(),
            });
        }
        let e = IndexEntry {
            base_offset: le_u64(b, 0),
            last_offset: le_u64(b, 8),
            log_pos: le_u64(b, 16),
            entry_len: le_u32(b, 24),
            tag_hash: le_u32(b, 28),
            max_timestamp: le_i64(b, 32),
        };
        if e.last_offset < e.base_offset {
            return Err(FormatError::Inconsistent(
                "index entry last_offset < base_offset",
            ));
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: u64) -> IndexEntry {
        IndexEntry {
            base_offset: i * 10,
            last_offset: i * 10 + 9,
            log_pos: 4096 * i,
            entry_len: 200,
            tag_hash: 0,
            max_timestamp: 1_700_000_000_000 + i as i64,
        }
    }

    #[test]
    fn round_trip() {
        assert_eq!(IndexEntry::decode(&sample(3).encode()).unwrap(), sample(3));
    }

    #[test]
    fn truncated_is_refused() {
        let b = sample(1).encode();
        for cut in 0..INDEX_ENTRY_LEN {
            assert!(matches!(
                IndexEntry::decode(&b[..cut]),
                Err(FormatError::Truncated { .. })
            ));
        }
    }

    #[test]
    fn last_offset_before_base_is_refused() {
        let mut e = sample(1);
        e.last_offset = e.base_offset - 1;
        assert!(matches!(
            IndexEntry::decode(&e.encode()),
            Err(FormatError::Inconsistent(_))
        ));
    }

    #[test]
    fn format_md_matches_index_layout() {
        let rows = crate::format::format_md_fields("index-entry");
        let got: Vec<(u64, u64, &str)> = rows
            .iter()
            .map(|(o, l, n)| (*o, *l, n.trim_matches('`')))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 8, "base_offset"),
                (8, 8, "last_offset"),
                (16, 8, "log_pos"),
                (24, 4, "entry_len"),
                (28, 4, "tag_hash"),
                (32, 8, "max_timestamp"),
            ]
        );
    }
}
