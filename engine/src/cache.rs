//! The tail cache: recent batches kept in memory as `Bytes`, so consumers following the tail
//! are served without I/O (O_DIRECT writes bypass the page cache). Bounded by bytes; the
//! oldest batches are evicted first. Holds no state that matters for durability.
//!
//! Batches are stored as the producer sent them (no copy at append); the assigned base offset
//! is written into a copy the first time a reader asks for the batch, and that copy replaces
//! the original. Batches nobody reads from the cache are never copied.

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};

#[derive(Debug)]
struct Cached {
    bytes: Bytes,
    /// The base offset field already holds the assigned offset.
    patched: bool,
}

/// Not durable: a cache of bytes that are in the commit log; lost at restart, by design.
#[derive(Debug, Default)]
pub(crate) struct TailCache {
    cap_bytes: u64,
    bytes: u64,
    order: VecDeque<(u32, u64)>,
    map: HashMap<(u32, u64), Cached>,
}

impl TailCache {
    pub fn new(cap_bytes: u64) -> TailCache {
        TailCache {
            cap_bytes,
            ..TailCache::default()
        }
    }

    pub fn enabled(&self) -> bool {
        self.cap_bytes > 0
    }

    /// Caches `batch` (as sent, any base offset) as the batch at `base_offset` of `queue`.
    pub fn insert(&mut self, queue: u32, base_offset: u64, batch: Bytes) {
        if batch.len() as u64 > self.cap_bytes {
            return;
        }
        self.bytes += batch.len() as u64;
        self.order.push_back((queue, base_offset));
        let c = Cached {
            bytes: batch,
            patched: false,
        };
        if let Some(old) = self.map.insert((queue, base_offset), c) {
            self.bytes -= old.bytes.len() as u64;
        }
        while self.bytes > self.cap_bytes {
            let Some(k) = self.order.pop_front() else {
                break;
            };
            if let Some(c) = self.map.remove(&k) {
                self.bytes -= c.bytes.len() as u64;
            }
        }
    }

    /// The batch at `base_offset` of `queue`, with its base offset assigned.
    pub fn get(&mut self, queue: u32, base_offset: u64) -> Option<Bytes> {
        let c = self.map.get_mut(&(queue, base_offset))?;
        if !c.patched {
            c.bytes = with_base_offset(std::mem::take(&mut c.bytes), base_offset);
            c.patched = true;
        }
        Some(c.bytes.clone())
    }

    pub fn remove_queue(&mut self, queue: u32) {
        self.order.retain(|(q, _)| *q != queue);
        let bytes = &mut self.bytes;
        self.map.retain(|(q, _), c| {
            if *q == queue {
                *bytes -= c.bytes.len() as u64;
            }
            *q != queue
        });
    }
}

/// The batch with its base offset set: in place when the buffer is unshared, else a copy.
fn with_base_offset(batch: Bytes, base: u64) -> Bytes {
    let mut m = match batch.try_into_mut() {
        Ok(m) => m,
        Err(shared) => BytesMut::from(&shared[..]),
    };
    // Only validated batches (61 bytes or more) are cached; the guard keeps this total.
    if m.len() >= 8 {
        ringmq_wire::record_batch::set_base_offset(&mut m, base as i64);
    }
    m.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_oldest_beyond_capacity() {
        let mut c = TailCache::new(20);
        c.insert(1, 0, Bytes::from_static(b"aaaaaaaa"));
        c.insert(1, 1, Bytes::from_static(b"bbbbbbbb"));
        c.insert(2, 0, Bytes::from_static(b"cccccccc"));
        assert!(c.get(1, 0).is_none());
        assert_eq!(c.get(1, 1).as_deref().map(|b| b.len()), Some(8));
        c.remove_queue(1);
        assert!(c.get(1, 1).is_none());
        c.insert(3, 0, Bytes::from_static(b"123456789012"));
        assert!(c.get(2, 0).is_some() && c.get(3, 0).is_some());
        c.insert(3, 1, Bytes::from(vec![0; 21]));
        assert!(c.get(3, 1).is_none(), "larger than the cache");
    }

    #[test]
    fn base_offset_is_patched_on_first_read_only() {
        let mut c = TailCache::new(100);
        let original = Bytes::from(vec![0u8; 20]);
        c.insert(1, 7, original.clone());
        let got = c.get(1, 7).unwrap();
        assert_eq!(&got[..8], &7i64.to_be_bytes());
        assert_eq!(
            &original[..8],
            &[0; 8],
            "the caller's bytes are not modified"
        );
        let again = c.get(1, 7).unwrap();
        assert_eq!(again.as_ptr(), got.as_ptr(), "patched once, then shared");
    }
}
