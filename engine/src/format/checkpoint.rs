//! Checkpoint file: the shard's state at one commit-log position, so recovery only has to
//! scan the log after it.
//!
//! ```text
//!  header (48 bytes) | queue records (40 bytes each) | producer records (176 bytes each) | crc u32
//! ```
//!
//! Durability contract: a checkpoint is only written after (1) the commit log is durable up to
//! its `log_pos` and (2) every index file holds, durably, the entries it counts. It is written
//! to a temporary name, fdatasync'd, renamed over the old one and the directory is synced, so
//! a crash leaves either the old or the new checkpoint, each complete (the CRC over the whole
//! file rejects anything else). `epoch` is the epoch the opening shard will stamp on its
//! entries; it is persisted before any entry carries it.

use super::{le_i64, le_u16, le_u32, le_u64, put, FormatError};

pub const MAGIC: u32 = u32::from_le_bytes(*b"RMQC");
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 48;
pub const QUEUE_RECORD_LEN: usize = 40;
/// Batches remembered per (queue, producer), as Kafka does for idempotence.
pub const PRODUCER_BATCHES: usize = 5;
pub const PRODUCER_BATCH_LEN: usize = 32;
pub const PRODUCER_RECORD_LEN: usize = 16 + PRODUCER_BATCHES * PRODUCER_BATCH_LEN;
/// Largest checkpoint file accepted (limits what a corrupt length field can make us allocate).
pub const MAX_CHECKPOINT_BYTES: u64 = 256 << 20;

const _: () = assert!(HEADER_LEN == 48 && QUEUE_RECORD_LEN == 40 && PRODUCER_RECORD_LEN == 176);

/// Persisted state of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueState {
    pub queue_id: u32,
    pub deleted: bool,
    pub end_offset: u64,
    pub log_start_offset: u64,
    /// Entries of the queue's index file covered by this checkpoint.
    pub index_entries: u64,
    /// CRC-32C of those `index_entries * 40` bytes.
    pub index_crc: u32,
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
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let body =
            self.queues.len() * QUEUE_RECORD_LEN + self.producers.len() * PRODUCER_RECORD_LEN;
        let mut b = vec![0u8; HEADER_LEN + body + 4];
        put(&mut b, 0, &MAGIC.to_le_bytes());
        put(&mut b, 4, &VERSION.to_le_bytes());
        put(&mut b, 8, &self.epoch.to_le_bytes());
        put(&mut b, 16, &self.log_pos.to_le_bytes());
        put(&mut b, 24, &self.max_producer_id.to_le_bytes());
        put(&mut b, 32, &(self.queues.len() as u32).to_le_bytes());
        put(&mut b, 36, &(self.producers.len() as u32).to_le_bytes());
        put(&mut b, 40, &(body as u32).to_le_bytes());
        let mut at = HEADER_LEN;
        for q in &self.queues {
            put(&mut b, at, &q.queue_id.to_le_bytes());
            put(&mut b, at + 4, &u32::from(q.deleted).to_le_bytes());
            put(&mut b, at + 8, &q.end_offset.to_le_bytes());
            put(&mut b, at + 16, &q.log_start_offset.to_le_bytes());
            put(&mut b, at + 24, &q.index_entries.to_le_bytes());
            put(&mut b, at + 32, &q.index_crc.to_le_bytes());
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
        // Widened arithmetic: the counts come from disk and may be anything.
        let expect = n_queues * QUEUE_RECORD_LEN as u64 + n_producers * PRODUCER_RECORD_LEN as u64;
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
                index_entries: le_u64(b, at + 24),
                index_crc: le_u32(b, at + 32),
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
        Ok(Checkpoint {
            epoch: le_u64(b, 8),
            log_pos: le_u64(b, 16),
            max_producer_id: le_i64(b, 24),
            queues,
            producers,
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
                    index_entries: 4,
                    index_crc: 0xdead_beef,
                },
                QueueState {
                    queue_id: 2,
                    deleted: true,
                    end_offset: 0,
                    log_start_offset: 0,
                    index_entries: 0,
                    index_crc: 0,
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
        }
    }

    #[test]
    fn round_trip() {
        let b = sample().encode();
        assert_eq!(
            b.len(),
            HEADER_LEN + 2 * QUEUE_RECORD_LEN + PRODUCER_RECORD_LEN + 4
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
        let pb = crate::format::format_md_fields("checkpoint-producer-batch");
        assert_eq!(
            pb.last().map(|r| r.0 + r.1),
            Some(PRODUCER_BATCH_LEN as u64)
        );
    }
}
