//! The producer table: the last few batches each idempotent producer appended to each queue,
//! recorded from batch headers (`producer_id >= 0`). The broker applies Kafka's idempotence
//! rules with it; the engine only records.
//!
//! Durability: the table is a function of the log. It is stored in each checkpoint and the
//! recovery scan re-records every batch after the checkpoint, so after a crash it holds exactly
//! the batches that survived.

use crate::format::checkpoint::{ProducerState, StoredProducerBatch, PRODUCER_BATCHES};
use crate::{Offset, ProducerBatch, QueueId};
use ringmq_wire::record_batch::BatchHeader;
use std::collections::{HashMap, VecDeque};

#[derive(Debug, Default)]
pub(crate) struct ProducerTable {
    map: HashMap<(u32, i64), VecDeque<ProducerBatch>>,
    max_producer_id: Option<i64>,
}

impl ProducerTable {
    pub fn record(&mut self, queue: QueueId, h: &BatchHeader, base: u64, last: u64) {
        if h.producer_id < 0 {
            return;
        }
        self.max_producer_id = Some(
            self.max_producer_id
                .map_or(h.producer_id, |m| m.max(h.producer_id)),
        );
        let batches = self.map.entry((queue.0, h.producer_id)).or_default();
        batches.push_back(ProducerBatch {
            epoch: h.producer_epoch,
            first_seq: h.base_sequence,
            last_seq: wrap_seq(h.base_sequence, h.last_offset_delta),
            base_offset: Offset(base),
            last_offset: Offset(last),
        });
        while batches.len() > PRODUCER_BATCHES {
            batches.pop_front();
        }
    }

    pub fn get(&self, queue: QueueId, producer_id: i64) -> Vec<ProducerBatch> {
        self.map
            .get(&(queue.0, producer_id))
            .map(|b| b.iter().copied().collect())
            .unwrap_or_default()
    }

    pub fn max_producer_id(&self) -> Option<i64> {
        self.max_producer_id
    }

    pub fn remove_queue(&mut self, queue: QueueId) {
        self.map.retain(|(q, _), _| *q != queue.0);
    }

    pub fn to_states(&self) -> Vec<ProducerState> {
        let mut v: Vec<ProducerState> = self
            .map
            .iter()
            .map(|(&(queue_id, producer_id), b)| ProducerState {
                queue_id,
                producer_id,
                batches: b
                    .iter()
                    .map(|p| StoredProducerBatch {
                        epoch: p.epoch,
                        first_seq: p.first_seq,
                        last_seq: p.last_seq,
                        base_offset: p.base_offset.0,
                        last_offset: p.last_offset.0,
                    })
                    .collect(),
            })
            .collect();
        v.sort_by_key(|p| (p.queue_id, p.producer_id));
        v
    }

    pub fn from_states(states: &[ProducerState], max_producer_id: i64) -> ProducerTable {
        let map = states
            .iter()
            .map(|s| {
                let b = s
                    .batches
                    .iter()
                    .map(|p| ProducerBatch {
                        epoch: p.epoch,
                        first_seq: p.first_seq,
                        last_seq: p.last_seq,
                        base_offset: Offset(p.base_offset),
                        last_offset: Offset(p.last_offset),
                    })
                    .collect();
                ((s.queue_id, s.producer_id), b)
            })
            .collect();
        ProducerTable {
            map,
            max_producer_id: (max_producer_id >= 0).then_some(max_producer_id),
        }
    }
}

/// Kafka sequence numbers wrap from i32::MAX to 0.
fn wrap_seq(first: i32, delta: i32) -> i32 {
    ((i64::from(first) + i64::from(delta)) % (i64::from(i32::MAX) + 1)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, seq: i32, n: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 49,
            partition_leader_epoch: -1,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: n - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: 3,
            base_sequence: seq,
            record_count: n,
        }
    }

    #[test]
    fn keeps_last_five_and_round_trips() {
        let mut t = ProducerTable::default();
        for i in 0..7 {
            t.record(
                QueueId(1),
                &header(9, i * 2, 2),
                i as u64 * 2,
                i as u64 * 2 + 1,
            );
        }
        t.record(QueueId(1), &header(-1, 0, 1), 0, 0);
        let b = t.get(QueueId(1), 9);
        assert_eq!(b.len(), 5);
        assert_eq!(
            (b[0].first_seq, b[4].last_seq, b[4].base_offset),
            (4, 13, Offset(12))
        );
        assert_eq!(t.max_producer_id(), Some(9));
        let back = ProducerTable::from_states(&t.to_states(), 9);
        assert_eq!(back.get(QueueId(1), 9), b);
        assert!(t.get(QueueId(2), 9).is_empty());
    }

    #[test]
    fn sequence_wraps() {
        assert_eq!(wrap_seq(i32::MAX, 1), 0);
        assert_eq!(wrap_seq(i32::MAX - 1, 3), 1);
    }
}
