//! A global allocator that serves huge allocations lazily, so that a crafted request cannot
//! abort the process.
//!
//! Why: kafka-protocol's decoders call `Vec::with_capacity(n)` with `n` read from the request
//! (an array length) before they find out the frame is far too short to hold `n` elements. A
//! 20-byte frame can ask for tens of GiB. glibc would then fail the allocation (or the kernel's
//! overcommit heuristic would), and Rust aborts on allocation failure: one packet would kill
//! every connection of every core.
//!
//! The defence: allocations of at least [`LAZY_THRESHOLD_BYTES`] are served by `mmap` with
//! `MAP_NORESERVE`. The kernel reserves address space only; pages cost memory when touched.
//! The decoder touches only the elements it actually decodes (bounded by the frame, itself
//! bounded by `--max-frame-bytes`), fails on the short frame, and the mapping is unmapped.
//! Address space is plentiful (47 bits); the largest request a `u32` array length can make
//! is about 2^32 times a few hundred bytes, well inside it. `MAP_NORESERVE` mappings are not
//! counted by the default overcommit heuristic (`vm.overcommit_memory = 0`).
//!
//! Everything smaller goes to the system allocator unchanged. Alignments above a page also go
//! to the system allocator (none of our types need them).

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations of this size or more are mapped lazily.
pub const LAZY_THRESHOLD_BYTES: usize = 64 << 20;
const PAGE_BYTES: usize = 4096;

/// The allocator; install with `#[global_allocator]` in the binary.
pub struct LazyHugeAlloc;

fn is_lazy(layout: &Layout) -> bool {
    layout.size() >= LAZY_THRESHOLD_BYTES && layout.align() <= PAGE_BYTES
}

// SAFETY: every method upholds GlobalAlloc's contract: lazy blocks are page-aligned mappings of
// at least `layout.size()` bytes, released with the same size (a block's path is decided by its
// layout alone, which the caller passes back unchanged).
unsafe impl GlobalAlloc for LazyHugeAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_lazy(&layout) {
            map(layout.size())
        } else {
            // SAFETY: forwarded with the caller's valid layout.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_lazy(&layout) {
            map(layout.size()) // anonymous mappings are zero-filled
        } else {
            // SAFETY: forwarded with the caller's valid layout.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_lazy(&layout) {
            // SAFETY: `ptr` came from `map(layout.size())`.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            // SAFETY: `ptr` came from System with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = match Layout::from_size_align(new_size, layout.align()) {
            Ok(l) => l,
            Err(_) => return std::ptr::null_mut(),
        };
        match (is_lazy(&layout), is_lazy(&new_layout)) {
            // SAFETY: both small: System owns the block.
            (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
            (true, true) => {
                // SAFETY: `ptr` is a mapping of `layout.size()` bytes; MREMAP_MAYMOVE keeps data.
                let p = unsafe {
                    libc::mremap(ptr.cast(), layout.size(), new_size, libc::MREMAP_MAYMOVE)
                };
                if p == libc::MAP_FAILED {
                    std::ptr::null_mut()
                } else {
                    p.cast()
                }
            }
            _ => {
                // Crossing the threshold: move the bytes between the two kinds of block.
                // SAFETY: new block from our own alloc; copy the smaller size; free the old.
                unsafe {
                    let new = self.alloc(new_layout);
                    if !new.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    new
                }
            }
        }
    }
}

fn map(len: usize) -> *mut u8 {
    // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_allocation_is_lazy_and_usable() {
        let a = LazyHugeAlloc;
        // 64 GiB: more than this machine's RAM; only the touched pages cost memory.
        let layout = Layout::from_size_align(64 << 30, 8).unwrap();
        // SAFETY: valid layout; freed with the same layout below.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            *p = 7;
            *p.add((64 << 30) - 1) = 9;
            assert_eq!(*p, 7);
            a.dealloc(p, layout);
        }
    }

    #[test]
    fn realloc_across_the_threshold_keeps_bytes() {
        let a = LazyHugeAlloc;
        let small = Layout::from_size_align(1024, 8).unwrap();
        // SAFETY: valid layouts, each block freed once with its final layout.
        unsafe {
            let p = a.alloc(small);
            std::ptr::write_bytes(p, 0xab, 1024);
            let big = a.realloc(p, small, LAZY_THRESHOLD_BYTES * 2);
            assert_eq!(*big.add(1023), 0xab);
            let big_layout = Layout::from_size_align(LAZY_THRESHOLD_BYTES * 2, 8).unwrap();
            let bigger = a.realloc(big, big_layout, LAZY_THRESHOLD_BYTES * 4);
            assert_eq!(*bigger, 0xab);
            let bigger_layout = Layout::from_size_align(LAZY_THRESHOLD_BYTES * 4, 8).unwrap();
            let back = a.realloc(bigger, bigger_layout, 16);
            assert_eq!(*back.add(15), 0xab);
            a.dealloc(back, Layout::from_size_align(16, 8).unwrap());
        }
    }
}
