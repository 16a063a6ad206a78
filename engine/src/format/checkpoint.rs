//! Checkpoint file: the shard's state at one commit-log position, so recovery only has to
//! scan the log after it.
//!
//! ```text
//!  header (48 bytes) | queue records (24 bytes each) | producer records (176 bytes each)
//!                    | segment records (24 bytes each) | crc u32
//! ```
//!
//! Durability contract: a checkpoint is only written after (1) the commit log is durable up to
//! its `log_pos` and (2) every segment's index file holds, durably, the records it counts. It is written
//! to a temporary name, fdatasync'd, renamed over the old one and the directory is synced, so
//! a crash leaves either the old or the new checkpoint, each complete (the CRC over the whole
//! file rejects anything else). `epoch` is the epoch the opening shard will stamp on its
//! entries; it is persisted before any entry carries it.

use super::{le_i64, le_u16, le_u32, le_u64, put, FormatError};

pub const MAGIC: u32 = u32::from_le_bytes(*b"RMQC");
/// Version 3: the layout of version 2 (one index file per segment), over a log of entry
/// format 2 (entries name their log position, so segment files can be recycled). Versions 1
/// and 2 are refused, see FORMAT.md.
pub const VERSION: u16 = 3;
pub const HEADER_LEN: usize = 48;
pub const QUEUE_RECORD_LEN: usize = 24;
pub const SEGMENT_RECORD_LEN: usize = 24;
/// Batches remembered per (queue, producer), as Kafka does for idempotence.
pub const PRODUCER_BATCHES: usize = 5;
pub const PRODUCER_BATCH_LEN: usize = 32;
pub const PRODUCER_RECORD_LEN: usize = 16 + PRODUCER_BATCHES * PRODUCER_BATCH_LEN;
/// Largest checkpoint file accepted (limits what a corrupt length field can make us allocate).
pub const MAX_CHECKPOINT_BYTES: u64 = 256 << 20;

const _: () = assert!(
    HEADER_LEN == 48
        && QUEUE_RECORD_LEN == 24
        && PRODUCER_RECORD_LEN == 176
        && SEGMENT_RECORD_LEN == 24
);

/// Persisted state of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueState {
    pub queue_id: u32,
    pub deleted: bool,
    pub end_offset: u64,
    pub log_start_offset: u64,
}

/// How much of one segment's index file (`<start:020>.idx`) this checkpoint covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentIndexState {
    /// Start (log position) of the segment, which names both its `.log` and `.idx` files.
    pub segment_start: u64,
    /// Leading records of the index file that are valid.
    pub records: u64,
    /// Chained CRC-32C of those `records * 48` bytes.
    pub crc: u32,
}

/// One remembered batch of an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredProducerBatch {
    pub epoch: i16,
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: u64,
    pub last_offset: u64,
}

/// The last (at most 5) batches of one producer on one queue, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerState {
    pub queue_id: u32,
    pub producer_id: i64,
    pub batches: Vec<StoredProducerBatch>,
}

/// The shard's state at `log_pos`. Durability contract: see the module docs (written only
/// after the log and the index files it counts are durable; replaced atomically).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub epoch: u64,
    /// Recovery resumes the log scan here; every entry before it is reflected in this file.
    pub log_pos: u64,
    /// Highest producer id seen, or -1.
    pub max_producer_id: i64,
    pub queues: Vec<QueueState>,
    pub producers: Vec<ProducerState>,
    /// Segments before `log_pos`, by ascending start.
    pub segments: Vec<SegmentIndexState>,
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let body = self.queues.len() * QUEUE_RECORD_LEN
            + self.producers.len() * PRODUCER_RECORD_LEN
            + self.segments.len() * SEGMENT_RECORD_LEN;
        let mut b = vec![0u8; HEADER_LEN + body + 4];
        put(&mut b, 0, &MAGIC.to_le_bytes());
        put(&mut b, 4, &VERSION.to_le_bytes());
        put(&mut b, 8, &self.epoch.to_le_bytes());
        put(&mut b, 16, &self.log_pos.to_le_bytes());
        put(&mut b, 24, &self.max_producer_id.to_le_bytes());
        put(&mut b, 32, &(self.queues.len() as u32).to_le_bytes());
        put(&mut b, 36, &(self.producers.len() as u32).to_le_bytes());
        put(&mut b, 40, &(body as u32).to_le_bytes());
        put(&mut b, 44, &(self.segments.len() as u32).to_le_bytes());
        let mut at = HEADER_LEN;
        for q in &self.queues {
            put(&mut b, at, &q.queue_id.to_le_bytes());
            put(&mut b, at + 4, &u32::from(q.deleted).to_le_bytes());
            put(&mut b, at + 8, &q.end_offset.to_le_bytes());
            put(&mut b, at + 16, &q.log_start_offset.to_le_bytes());
            at += QUEUE_RECORD_LEN;
        }
        for p in &self.producers {
            assert!(
                p.batches.len() <= PRODUCER_BATCHES,
                "{} producer batches",
                p.batches.len()
            );
            put(&mut b, at, &p.queue_id.to_le_bytes());
            b[at + 4] = p.batches.len() as u8;
            put(&mut b, at + 8, &p.producer_id.to_le_bytes());
            for (i, pb) in p.batches.iter().enumerate() {
                let o = at + 16 + i * PRODUCER_BATCH_LEN;
                put(&mut b, o, &pb.epoch.to_le_bytes());
                put(&mut b, o + 4, &pb.first_seq.to_le_bytes());
                put(&mut b, o + 8, &pb.last_seq.to_le_bytes());
                put(&mut b, o + 16, &pb.base_offset.to_le_bytes());
                put(&mut b, o + 24, &pb.last_offset.to_le_bytes());
            }
            at += PRODUCER_RECORD_LEN;
        }
        for sg in &self.segments {
            put(&mut b, at, &sg.segment_start.to_le_bytes());
            put(&mut b, at + 8, &sg.records.to_le_bytes());
            put(&mut b, at + 16, &sg.crc.to_le_bytes());
            at += SEGMENT_RECORD_LEN;
        }
        let crc = crc32c::crc32c(&b[..at]);
        put(&mut b, at, &crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Checkpoint, FormatError> {
        if b.len() as u64 > MAX_CHECKPOINT_BYTES {
            return Err(FormatError::TooLong {
                len: b.len() as u64,
                max: MAX_CHECKPOINT_BYTES,
            });
        }
        if b.len() < HEADER_LEN + 4 {
            return Err(FormatError::Truncated {
                need: HEADER_LEN + 4,
                have: b.len(),
            });
        }
        let magic = le_u32(b, 0);
        if magic != MAGIC {
            return Err(FormatError::BadMagic(magic));
        }
        let version = le_u16(b, 4);
        if version != VERSION {
            return Err(FormatError::BadVersion(version));
        }
        let n_queues = le_u32(b, 32) as u64;
        let n_producers = le_u32(b, 36) as u64;
        let body = le_u32(b, 40) as u64;
        let n_segments = le_u32(b, 44) as u64;
        // Widened arithmetic: the counts come from disk and may be anything.
        let expect = n_queues * QUEUE_RECORD_LEN as u64
            + n_producers * PRODUCER_RECORD_LEN as u64
            + n_segments * SEGMENT_RECORD_LEN as u64;
        if expect != body {
            return Err(FormatError::Inconsistent(
                "checkpoint body length disagrees with counts",
            ));
        }
        let total = HEADER_LEN as u64 + body + 4;
        if (b.len() as u64) < total {
            return Err(FormatError::Truncated {
                need: total as usize,
                have: b.len(),
            });
        }
        let end = total as usize - 4;
        let stored = le_u32(b, end);
        let computed = crc32c::crc32c(&b[..end]);
        if stored != computed {
            return Err(FormatError::CrcMismatch { stored, computed });
        }
        let mut at = HEADER_LEN;
        let mut queues = Vec::with_capacity(n_queues as usize);
        for _ in 0..n_queues {
            let flags = le_u32(b, at + 4);
            if flags > 1 {
                return Err(FormatError::Inconsistent("unknown queue flags"));
            }
            queues.push(QueueState {
                queue_id: le_u32(b, at),
                deleted: flags == 1,
                end_offset: le_u64(b, at + 8),
                log_start_offset: le_u64(b, at + 16),
            });
            at += QUEUE_RECORD_LEN;
        }
        let mut producers = Vec::with_capacity(n_producers as usize);
        for _ in 0..n_producers {
            let count = b[at + 4] as usize;
            if count == 0 || count > PRODUCER_BATCHES {
                return Err(FormatError::Inconsistent(
                    "producer batch count out of range",
                ));
            }
            let batches = (0..count)
                .map(|i| {
                    let o = at + 16 + i * PRODUCER_BATCH_LEN;
                    StoredProducerBatch {
                        epoch: le_u16(b, o) as i16,
                        first_seq: le_u32(b, o + 4) as i32,
                        last_seq: le_u32(b, o + 8) as i32,
                        base_offset: le_u64(b, o + 16),
                        last_offset: le_u64(b, o + 24),
                    }
                })
                .collect();
            producers.push(ProducerState {
                queue_id: le_u32(b, at),
                producer_id: le_i64(b, at + 8),
                batches,
            });
            at += PRODUCER_RECORD_LEN;
        }
        let mut segments: Vec<SegmentIndexState> = Vec::with_capacity(n_segments as usize);
        for _ in 0..n_segments {
            if le_u32(b, at + 20) != 0 {
                return Err(FormatError::Inconsistent(
                    "segment record reserved field is not zero",
                ));
            }
            let sg = SegmentIndexState {
                segment_start: le_u64(b, at),
                records: le_u64(b, at + 8),
                crc: le_u32(b, at + 16),
            };
            if segments
                .last()
                .is_some_and(|p| p.segment_start >= sg.segment_start)
            {
                return Err(FormatError::Inconsistent(
                    "segment records not in ascending order",
                ));
            }
            segments.push(sg);
            at += SEGMENT_RECORD_LEN;
        }
        Ok(Checkpoint {
            epoch: le_u64(b, 8),
            log_pos: le_u64(b, 16),
            max_producer_id: le_i64(b, 24),
            queues,
            producers,
            segments,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            epoch: 3,
            log_pos: 8192,
            max_producer_id: 42,
            queues: vec![
                QueueState {
                    queue_id: 1,
                    deleted: false,
                    end_offset: 10,
                    log_start_offset: 0,
                },
                QueueState {
                    queue_id: 2,
                    deleted: true,
                    end_offset: 0,
                    log_start_offset: 0,
                },
            ],
            producers: vec![ProducerState {
                queue_id: 1,
                producer_id: 42,
                batches: vec![StoredProducerBatch {
                    epoch: 0,
                    first_seq: 0,
                    last_seq: 4,
                    base_offset: 5,
                    last_offset: 9,
                }],
            }],
            segments: vec![
                SegmentIndexState {
                    segment_start: 0,
                    records: 4,
                    crc: 0xdead_beef,
                },
                SegmentIndexState {
                    segment_start: 4096,
                    records: 0,
                    crc: 0,
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let b = sample().encode();
        assert_eq!(
            b.len(),
            HEADER_LEN + 2 * QUEUE_RECORD_LEN + PRODUCER_RECORD_LEN + 2 * SEGMENT_RECORD_LEN + 4
        );
        assert_eq!(Checkpoint::decode(&b).unwrap(), sample());
    }

    #[test]
    fn truncated_is_refused() {
        let b = sample().encode();
        for cut in 0..b.len() {
            assert!(Checkpoint::decode(&b[..cut]).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn bad_checksum_is_refused() {
        let b = sample().encode();
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x40;
            assert!(Checkpoint::decode(&c).is_err(), "flip at {i} accepted");
        }
        let mut c = b.clone();
        c[70] ^= 1;
        assert!(matches!(
            Checkpoint::decode(&c),
            Err(FormatError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn huge_counts_do_not_allocate() {
        let mut b = sample().encode();
        b[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        b[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Checkpoint::decode(&b).is_err());
        let mut b = sample().encode();
        b[44..48].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Checkpoint::decode(&b).is_err());
    }

    /// Re-seals a modified checkpoint with a valid CRC, so only the check under test can fail.
    fn reseal(mut b: Vec<u8>) -> Vec<u8> {
        let end = b.len() - 4;
        let crc = crc32c::crc32c(&b[..end]);
        b[end..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn version_1_is_refused_as_a_version() {
        let mut b = sample().encode();
        b[4..6].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(
            Checkpoint::decode(&reseal(b)),
            Err(FormatError::BadVersion(1))
        );
    }

    #[test]
    fn bad_segment_records_are_refused() {
        let seg_at = HEADER_LEN + 2 * QUEUE_RECORD_LEN + PRODUCER_RECORD_LEN;
        let mut b = sample().encode();
        b[seg_at + 20] = 1;
        assert!(matches!(
            Checkpoint::decode(&reseal(b)),
            Err(FormatError::Inconsistent(_))
        ));
        let mut b = sample().encode();
        // Second segment starts where the first does: not ascending.
        b[seg_at + SEGMENT_RECORD_LEN..seg_at + SEGMENT_RECORD_LEN + 8].fill(0);
        assert!(matches!(
            Checkpoint::decode(&reseal(b)),
            Err(FormatError::Inconsistent(_))
        ));
        assert_eq!(Checkpoint::decode(&reseal(sample().encode())), Ok(sample()));
    }

    #[test]
    fn format_md_matches_checkpoint_layout() {
        let header: Vec<(u64, u64)> = crate::format::format_md_fields("checkpoint-header")
            .iter()
            .map(|r| (r.0, r.1))
            .collect();
        assert_eq!(
            header,
            vec![
                (0, 4),
                (4, 2),
                (6, 2),
                (8, 8),
                (16, 8),
                (24, 8),
                (32, 4),
                (36, 4),
                (40, 4),
                (44, 4)
            ]
        );
        let q = crate::format::format_md_fields("checkpoint-queue");
        assert_eq!(q.last().map(|r| r.0 + r.1), Some(QUEUE_RECORD_LEN as u64));
        let p = crate::format::format_md_fields("checkpoint-producer");
        assert_eq!(
            p.last().map(|r| r.0 + r.1),
            Some(PRODUCER_RECORD_LEN as u64)
        );
        let sg = crate::format::format_md_fields("checkpoint-segment");
        assert_eq!(
            sg.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(),
            vec![(0, 8), (8, 8), (16, 4), (20, 4)]
        );
        assert_eq!(
            q.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(),
            vec![(0, 4), (4, 4), (8, 8), (16, 8)]
        );
        let pb = crate::format::format_md_fields("checkpoint-producer-batch");
        assert_eq!(
            pb.last().map(|r| r.0 + r.1),
            Some(PRODUCER_BATCH_LEN as u64)
        );
    }
}
