//! Fuzzes the broker's request decoder: any byte string as a frame (size prefix stripped).
//! It must return a request or an error, never panic, abort or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmq_broker::alloc::LazyHugeAlloc;

// The same allocator as the broker binary: crafted array lengths make the codec ask for huge
// capacities, which the broker survives only because these are mapped lazily.
#[global_allocator]
static ALLOCATOR: LazyHugeAlloc = LazyHugeAlloc;

fuzz_target!(|data: &[u8]| {
    let _ = ringmq_broker::decode::decode_request(bytes::Bytes::copy_from_slice(data));
});
