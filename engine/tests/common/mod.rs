//! Helpers shared by the engine's integration tests: an executor sized for this machine,
//! deterministic record batches, and the byte-level comparison of stored against sent batches.
#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;

use bytes::Bytes;
use ringmq_engine::{Offset, ShardConfig};
use ringmq_wire::record_batch::{BatchBuilder, BatchHeader, ProducerStamp, Record};

/// Registered I/O memory of a test executor, at most: tests need no throughput, and
/// corruption.rs bounds every single allocation (the executor's pool is one).
const TEST_IO_MEMORY_MAX_BYTES: usize = 4 << 20;

/// Runs `make()` on a fresh glommio executor thread whose registered I/O memory fits under
/// `RLIMIT_MEMLOCK` (kernel-notes/io-uring-memlock.md) and returns its output.
pub fn run_glommio<G, F, T>(make: G) -> T
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("engine-test")
        .io_memory(ringmq_engine::recommended_io_memory_bytes().min(TEST_IO_MEMORY_MAX_BYTES))
        .spawn(make)
        .expect("spawning a glommio executor")
        .join()
        .expect("the test body panicked on the executor thread")
}

/// A small-segment configuration so rolls happen within a handful of appends.
pub fn small_config(
    dir: std::path::PathBuf,
    segment_size_bytes: u64,
    max_batch_bytes: u32,
) -> ShardConfig {
    ShardConfig {
        dir,
        segment_size_bytes,
        tail_cache_bytes: 256 << 10,
        flush_interval_ms: None,
        retention_ms: None,
        retention_bytes: None,
        max_batch_bytes,
        ..ShardConfig::default()
    }
}

/// Deterministic pseudo-random bytes (xorshift), so every batch is distinct and reproducible.
pub fn pattern_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// An uncompressed RecordBatch v2 of `records` records with `value_len`-byte values, base
/// offset 0 as a producer sends it. `seed` makes the contents unique.
pub fn make_batch(seed: u64, records: usize, value_len: usize) -> Bytes {
    make_batch_stamped(seed, records, value_len, ProducerStamp::NONE)
}

/// [`make_batch`] with a producer stamp (idempotent producer id, epoch, base sequence).
pub fn make_batch_stamped(
    seed: u64,
    records: usize,
    value_len: usize,
    stamp: ProducerStamp,
) -> Bytes {
    let values: Vec<Vec<u8>> = (0..records)
        .map(|i| pattern_bytes(seed ^ ((i as u64) << 32), value_len))
        .collect();
    let key = seed.to_be_bytes();
    let mut b = BatchBuilder::new(records * (value_len + 32) + 128);
    for (i, v) in values.iter().enumerate() {
        b.push(&Record {
            key: Some(&key),
            value: Some(v),
            headers: &[],
            // Scrambled per batch: producers' CreateTime need not follow offset order.
            timestamp_ms: 1_700_000_000_000
                + (seed.wrapping_mul(2_654_435_761) % 100_000) as i64
                + i as i64,
        });
    }
    Bytes::from(b.build(stamp, 0))
}

/// Number of records in a batch built by [`make_batch`] (from its header).
pub fn record_count(batch: &[u8]) -> u64 {
    let h = BatchHeader::parse(batch).expect("test batches are well formed");
    h.last_offset_delta as u64 + 1
}

/// Why a stored batch differs from the one sent, or None when it is the same batch stored at
/// `base`: identical bytes except the 8-byte base offset, which must equal `base`.
pub fn stored_mismatch(stored: &[u8], sent: &[u8], base: Offset) -> Option<String> {
    if stored.len() != sent.len() {
        return Some(format!("length {} != sent {}", stored.len(), sent.len()));
    }
    if stored.len() < 8 {
        return Some(format!(
            "stored batch of {} bytes is shorter than a base offset",
            stored.len()
        ));
    }
    let stored_base = i64::from_be_bytes(stored[..8].try_into().expect("8 bytes"));
    if stored_base != base.0 as i64 {
        return Some(format!("base offset {stored_base} != assigned {}", base.0));
    }
    if stored[8..] != sent[8..] {
        let at = stored[8..]
            .iter()
            .zip(&sent[8..])
            .position(|(a, b)| a != b)
            .unwrap_or(0)
            + 8;
        return Some(format!("bytes differ from byte {at}"));
    }
    None
}

/// CRC-32C of the batch with its base offset zeroed: a fingerprint of what the producer sent.
pub fn sent_checksum(batch: &[u8]) -> u32 {
    let mut v = batch.to_vec();
    if v.len() >= 8 {
        v[..8].fill(0);
    }
    crc32c::crc32c(&v)
}
