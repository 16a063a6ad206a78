//! Copying into staging buffers with non-temporal (streaming) stores.
//!
//! A staging chunk is written by the CPU once and then read only by the device's DMA, so
//! bringing its cache lines in (a read for ownership per line) and evicting them later is pure
//! cost. With destinations rotating over 64 MiB (more than the cache), a plain `memcpy` of
//! 256 KiB took 25-36 us here and a streaming copy 9.4-12.5 us (2026-11-21, a throwaway
//! micro-benchmark, figures in benches/README.md), and the copy was three quarters of
//! `Shard::append`'s CPU samples in a 256 KiB Written run (perf). Small copies stay plain:
//! their bytes are often read again at once (a cut of the active chunk copies them out), which
//! a cached line makes cheap.

/// Copies at least this long use streaming stores.
pub(crate) const STREAM_MIN_BYTES: usize = 32 << 10;

/// Copies `src` into `dst` (equal lengths), with streaming stores when long enough.
pub(crate) fn copy(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "stream_copy::copy of unequal lengths");
    #[cfg(target_arch = "x86_64")]
    if src.len() >= STREAM_MIN_BYTES {
        // Streaming stores need 16-byte aligned destinations: plain copies for the edges.
        let head = dst.as_ptr().align_offset(16).min(dst.len());
        let body = (dst.len() - head) / 64 * 64;
        dst[..head].copy_from_slice(&src[..head]);
        let (d, s) = (&mut dst[head..head + body], &src[head..head + body]);
        // SAFETY: `d` and `s` are valid for `body` bytes, do not overlap (a `&mut` and a `&`),
        // and `d` is 16-byte aligned; SSE2 is part of the x86_64 baseline.
        unsafe { stream_sse2(d.as_mut_ptr(), s.as_ptr(), body) };
        dst[head + body..].copy_from_slice(&src[head + body..]);
        return;
    }
    dst.copy_from_slice(src);
}

/// Copies `len` (a multiple of 64) bytes with 16-byte streaming stores, then fences so that
/// the stores are globally visible before anything later (the write's submission).
///
/// # Safety
/// `dst` and `src` valid for `len` bytes, not overlapping; `dst` 16-byte aligned.
#[cfg(target_arch = "x86_64")]
unsafe fn stream_sse2(dst: *mut u8, src: *const u8, len: usize) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    let mut i = 0;
    while i < len {
        // SAFETY: i + 64 <= len, within both ranges (the caller's contract).
        unsafe {
            let s = src.add(i) as *const __m128i;
            let d = dst.add(i) as *mut __m128i;
            let (a, b) = (_mm_loadu_si128(s), _mm_loadu_si128(s.add(1)));
            let (c, e) = (_mm_loadu_si128(s.add(2)), _mm_loadu_si128(s.add(3)));
            _mm_stream_si128(d, a);
            _mm_stream_si128(d.add(1), b);
            _mm_stream_si128(d.add(2), c);
            _mm_stream_si128(d.add(3), e);
        }
        i += 64;
    }
    // SAFETY: SSE is part of the x86_64 baseline.
    unsafe { _mm_sfence() };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches: edges (unaligned head, tail shorter than 64 bytes) lost or shifted.
    #[test]
    fn copies_every_byte_at_any_alignment_and_length() {
        let src: Vec<u8> = (0..(STREAM_MIN_BYTES + 300))
            .map(|i| (i * 7 + 3) as u8)
            .collect();
        let mut dst = vec![0u8; src.len() + 64];
        for off in [0usize, 1, 15, 16, 33, 63] {
            for len in [
                0,
                10,
                STREAM_MIN_BYTES - 1,
                STREAM_MIN_BYTES,
                STREAM_MIN_BYTES + 77,
            ] {
                dst.fill(0xEE);
                copy(&mut dst[off..off + len], &src[..len]);
                assert_eq!(&dst[off..off + len], &src[..len], "off {off} len {len}");
                assert!(dst[..off].iter().all(|&b| b == 0xEE), "off {off} len {len}");
                assert!(
                    dst[off + len..].iter().all(|&b| b == 0xEE),
                    "off {off} len {len}"
                );
            }
        }
    }
}
