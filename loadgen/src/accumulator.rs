//! A producer's record accumulator: the batch being filled for each partition, the full
//! batches waiting for a request, and the choice of what one produce request carries.
//!
//! ```text
//!  append ─► open batch of the partition ──(batch full)──► full queue (oldest first)
//!  a batch ready (full, or its linger over) ─► request to its leader ◄── take_request: per
//!      partition of that leader at most one batch, the oldest full one, else the open one;
//!      <= max request bytes
//! ```
//!
//! This is what Kafka's producer does (`RecordAccumulator.ready` and `drain`): once one batch
//! for a broker is ready and the connection has room for another request, the first batch of
//! every partition on that broker goes into it, up to `max.request.size`, so records that
//! queued while the in-flight window was full leave together in the next request instead of
//! one batch per request behind each other.

use std::collections::VecDeque;

use crate::client::records::OpenBatch;

/// Most batch bytes one produce request carries (Kafka's `max.request.size` default); a single
/// batch larger than this still goes, alone.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// The batches of one producer, by partition.
#[derive(Debug)]
pub struct Accumulator {
    batch_bytes: usize,
    linger_ns: u64,
    /// The batch being filled, per partition.
    open: Vec<Option<OpenBatch>>,
    /// The partitions with an open batch, so that per-request work does not scan every
    /// partition (10,000 of them made loadgen, not the broker, the bottleneck).
    open_parts: Vec<i32>,
    /// Full batches not yet in a request, oldest first.
    full: VecDeque<(i32, OpenBatch)>,
    /// `taken[p] == round`: partition `p` already has a batch in the request being built.
    taken: Vec<u64>,
    round: u64,
}

impl Accumulator {
    pub fn new(partitions: i32, batch_bytes: usize, linger_ns: u64) -> Accumulator {
        let n = partitions.max(0) as usize;
        Accumulator {
            batch_bytes,
            linger_ns,
            open: (0..n).map(|_| None).collect(),
            open_parts: Vec::new(),
            full: VecDeque::new(),
            taken: vec![0; n],
            round: 0,
        }
    }

    /// Appends a record to `partition`'s open batch (opening one at `now_ns` if needed);
    /// returns true when that made the batch full (it then waits in the full queue).
    pub fn append(
        &mut self,
        partition: i32,
        key: Option<&[u8]>,
        value: &[u8],
        intended_ns: u64,
        now_ns: u64,
    ) -> bool {
        let p = partition as usize;
        let slot = &mut self.open[p];
        if slot.is_none() {
            self.open_parts.push(partition);
        }
        let batch = slot.get_or_insert_with(|| OpenBatch::new(self.batch_bytes, now_ns));
        batch.push(key, value, intended_ns);
        if batch.size_bytes() < self.batch_bytes {
            return false;
        }
        if let Some(b) = self.open[p].take() {
            self.open_parts.retain(|&q| q != partition);
            self.full.push_back((partition, b));
        }
        true
    }

    /// Whether `partition` has a batch being filled.
    pub fn has_open(&self, partition: i32) -> bool {
        self.open
            .get(partition as usize)
            .is_some_and(|b| b.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.full.is_empty() && self.open_parts.is_empty()
    }

    fn lingered(&self, batch: &OpenBatch, now_ns: u64) -> bool {
        batch.opened_ns.saturating_add(self.linger_ns) <= now_ns
    }

    /// A partition with a batch ready to go at `now_ns` (a full batch, or an open one whose
    /// linger is over; with `flush`, any batch), the oldest full batch first.
    pub fn first_ready(&self, now_ns: u64, flush: bool) -> Option<i32> {
        if let Some((p, _)) = self.full.front() {
            return Some(*p);
        }
        self.open_parts.iter().copied().find(|&p| {
            self.open[p as usize]
                .as_ref()
                .is_some_and(|b| flush || self.lingered(b, now_ns))
        })
    }

    /// When the first open batch's linger runs out.
    pub fn next_linger_deadline(&self) -> Option<u64> {
        self.open_parts
            .iter()
            .filter_map(|&p| self.open[p as usize].as_ref())
            .map(|b| b.opened_ns.saturating_add(self.linger_ns))
            .min()
    }

    /// Takes the batches of one produce request to the leader of the partitions for which
    /// `to_leader` holds (call it once [`Self::first_ready`] named one of them): per partition
    /// at most one batch, its oldest full one, else its open one whatever its linger, oldest
    /// full batches first, then open ones in the order they were opened, until the next would
    /// take the request past `max_bytes` (the first always goes). Returns them in partition
    /// order.
    pub fn take_request(
        &mut self,
        max_bytes: usize,
        to_leader: impl Fn(i32) -> bool,
    ) -> Vec<(i32, OpenBatch)> {
        self.round += 1;
        let round = self.round;
        let mut out: Vec<(i32, OpenBatch)> = Vec::new();
        let mut bytes = 0usize;
        let mut room = true;
        // A partition's open batch may only follow its full ones: one left behind (the
        // request was full) keeps the open batch out too.
        let mut kept = VecDeque::with_capacity(self.full.len());
        for (p, b) in std::mem::take(&mut self.full) {
            let fits = out.is_empty() || bytes + b.size_bytes() <= max_bytes;
            let wanted = to_leader(p) && self.taken[p as usize] != round;
            if room && wanted && fits {
                bytes += b.size_bytes();
                out.push((p, b));
            } else {
                if wanted && !fits {
                    room = false;
                }
                kept.push_back((p, b));
            }
            // Taken now or waiting: either way this partition is done for this request.
            if to_leader(p) {
                self.taken[p as usize] = round;
            }
        }
        self.full = kept;
        if room {
            // Oldest opened first (the order they were opened in), so a full request leaves
            // the youngest behind.
            let mut parts = std::mem::take(&mut self.open_parts);
            parts.retain(|&p| {
                let i = p as usize;
                if !room || !to_leader(p) || self.taken[i] == round {
                    return true;
                }
                let size = self.open[i].as_ref().map_or(0, OpenBatch::size_bytes);
                if !out.is_empty() && bytes + size > max_bytes {
                    room = false;
                    return true;
                }
                match self.open[i].take() {
                    Some(b) => {
                        bytes += size;
                        self.taken[i] = round;
                        out.push((p, b));
                        false
                    }
                    None => true,
                }
            });
            self.open_parts = parts;
        }
        out.sort_unstable_by_key(|(p, _)| *p);
        out
    }

    /// Takes every batch, ready or not, of the partitions for which `of` holds (to fail them).
    pub fn take_all(&mut self, of: impl Fn(i32) -> bool) -> Vec<OpenBatch> {
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(self.full.len());
        for (p, b) in std::mem::take(&mut self.full) {
            if of(p) {
                out.push(b);
            } else {
                kept.push_back((p, b));
            }
        }
        self.full = kept;
        let open = &mut self.open;
        self.open_parts.retain(|&p| {
            if !of(p) {
                return true;
            }
            if let Some(b) = open[p as usize].take() {
                out.push(b);
            }
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUE: [u8; 100] = [b'x'; 100];

    /// An accumulator of 4 partitions whose batches fill at the third 100-byte record.
    fn acc(linger_ns: u64) -> Accumulator {
        Accumulator::new(4, 300, linger_ns)
    }

    fn fill(a: &mut Accumulator, partition: i32, records: usize, t: u64) -> bool {
        let mut full = false;
        for _ in 0..records {
            full = a.append(partition, None, &VALUE, t, t);
        }
        full
    }

    fn summary(batches: &[(i32, OpenBatch)]) -> Vec<(i32, usize)> {
        batches.iter().map(|(p, b)| (*p, b.records())).collect()
    }

    #[test]
    fn a_request_takes_every_ready_partition_once() {
        // Catches: one batch per request while others wait (the backlog after a full window
        // leaving one batch at a time), and two batches of one partition in one request
        // (the response has one entry per partition: acknowledgements would be misattributed).
        let mut a = acc(0);
        assert!(fill(&mut a, 2, 3, 10)); // full
        assert!(fill(&mut a, 2, 3, 11)); // a second full batch of partition 2
        assert!(!fill(&mut a, 0, 1, 12)); // open, linger 0: ready
        assert!(fill(&mut a, 1, 3, 13));
        assert!(!fill(&mut a, 2, 1, 14)); // open behind two full ones
        assert_eq!(a.first_ready(20, false), Some(2));
        let got = a.take_request(MAX_REQUEST_BYTES, |_| true);
        assert_eq!(summary(&got), vec![(0, 1), (1, 3), (2, 3)]);
        // Partition 2's second full batch, then its open one, in the next requests.
        let got = a.take_request(MAX_REQUEST_BYTES, |_| true);
        assert_eq!(summary(&got), vec![(2, 3)]);
        let got = a.take_request(MAX_REQUEST_BYTES, |_| true);
        assert_eq!(summary(&got), vec![(2, 1)]);
        assert!(a.is_empty());
        assert_eq!(a.first_ready(20, true), None);
    }

    #[test]
    fn linger_decides_when_a_request_goes_not_what_it_carries() {
        // Catches: linger ignored (a batch leaves as soon as it opens) or never honoured, and a
        // request leaving the broker's other open batches behind (Kafka's drain takes the
        // first batch of every partition of a ready broker, lingered or not).
        let mut a = acc(1_000);
        fill(&mut a, 3, 1, 100);
        fill(&mut a, 1, 1, 600);
        assert_eq!(a.first_ready(1_099, false), None);
        assert_eq!(a.next_linger_deadline(), Some(1_100));
        assert_eq!(a.first_ready(1_099, true), Some(3));
        assert_eq!(a.first_ready(1_100, false), Some(3));
        let got = a.take_request(MAX_REQUEST_BYTES, |_| true);
        assert_eq!(summary(&got), vec![(1, 1), (3, 1)]);
        assert!(a.is_empty());
        assert_eq!(a.next_linger_deadline(), None);
    }

    #[test]
    fn the_request_size_limit_holds_and_keeps_partition_order() {
        // Catches: requests past max.request.size, a request with nothing in it, and an open
        // batch overtaking a full batch of its own partition that did not fit.
        let mut a = acc(0);
        fill(&mut a, 0, 3, 1);
        fill(&mut a, 1, 3, 2);
        fill(&mut a, 1, 1, 3); // open, behind partition 1's full batch
        let one = a.take_request(400, |_| true);
        assert_eq!(summary(&one), vec![(0, 3)]);
        // A limit below one batch still sends that batch alone.
        let next = a.take_request(10, |_| true);
        assert_eq!(summary(&next), vec![(1, 3)]);
        let last = a.take_request(10, |_| true);
        assert_eq!(summary(&last), vec![(1, 1)]);
    }

    #[test]
    fn other_leaders_batches_stay_and_can_be_failed() {
        // Catches: a request to one broker carrying another broker's partitions, and batches
        // left behind when a leader is unreachable (the producer would spin on them).
        let mut a = acc(0);
        fill(&mut a, 0, 3, 1);
        fill(&mut a, 1, 1, 1);
        fill(&mut a, 2, 3, 1);
        fill(&mut a, 3, 1, 1);
        let even = a.take_request(MAX_REQUEST_BYTES, |p| p % 2 == 0);
        assert_eq!(summary(&even), vec![(0, 3), (2, 3)]);
        assert_eq!(a.first_ready(5, false), Some(1));
        let failed = a.take_all(|p| p == 1 || p == 3);
        assert_eq!(failed.iter().map(OpenBatch::records).sum::<usize>(), 2);
        assert!(a.is_empty());
        assert!(!a.has_open(1));
    }
}
