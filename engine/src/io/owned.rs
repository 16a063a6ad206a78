//! Read buffers the engine owns, so that bytes read from a file become [`Bytes`] without a
//! copy and may travel to other cores.
//!
//! glommio's read buffers (`ReadResult`, `DmaBuffer`) come from the executor's registered
//! `io_memory` and are `!Send`: a batch handed to a connection on another core cannot hold
//! one. Before this module every readahead chunk (1 MiB) was copied out of glommio's buffer
//! into a `Vec` (`read_at`'s `to_vec`), about a quarter of a catch-up's broker CPU (memmove
//! 26% of the samples, BENCHMARKS.md, Issue 5, session 4). An [`AlignedBuf`] is plain heap
//! memory, aligned for O_DIRECT, filled by `pread(2)` (on a blocking-pool thread, see
//! `glommio_impl.rs`), then wrapped with [`Bytes::from_owner`]: the slices handed out keep
//! it alive, whichever thread drops the last one frees it.
//!
//! Buffers of whole [`HUGE_PAGE_BYTES`] are mapped 2 MiB aligned and advised
//! `MADV_HUGEPAGE` (transparent huge pages, "madvise" mode here): physically contiguous, so
//! an O_DIRECT read into one reaches the disk as one large request instead of 512 KiB pieces.
//! That is the disk's ceiling here: 1 MiB direct reads into ordinary (4 KiB-page) buffers
//! became ~510 KiB device requests and read at 1.0-1.3 GB/s whatever the depth; into huge
//! pages, 2 and 4 MiB reads became 2 and 4 MiB requests and read at 2.0-3.5 GB/s
//! (kernel-notes/o-direct-reads.md, "The disk's read ceiling"). Without huge pages (THP off,
//! none free) the buffer still works, as ordinary pages.
//!
//! A fresh huge page costs the kernel a 2 MiB clear on its first touch (`clear_page_erms` took
//! the place of the copy in the profile, 16% of a catch-up's samples): dropped huge-page
//! buffers go to a small process-wide pool (at most [`MAX_POOLED_HUGE_BUFFERS`]) and are
//! handed out again, already faulted in.

use bytes::Bytes;
use std::alloc::Layout;
use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::Mutex;

use super::BLOCK_BYTES;

/// Largest owned read buffer: the engine's reads are chunks of 1 MiB
/// (`log::readahead::CHUNK_BYTES`); anything far larger is a bug, not a read.
pub const MAX_OWNED_READ_BYTES: usize = 64 << 20;

/// Size and alignment of a transparent huge page (x86-64).
pub const HUGE_PAGE_BYTES: usize = 2 << 20;
/// Idle huge-page buffers kept for reuse, process-wide (at most 32 MiB of 2 MiB buffers). A
/// catch-up frees a chunk for each one it reads, so a few suffice; more are unmapped.
pub const MAX_POOLED_HUGE_BUFFERS: usize = 16;

/// Idle huge-page mappings: (address, length).
static HUGE_POOL: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

/// An idle mapping of exactly `len` bytes from the pool, if any.
fn pooled(len: usize) -> Option<NonNull<u8>> {
    let mut pool = HUGE_POOL.lock().unwrap_or_else(|p| p.into_inner());
    let i = pool.iter().position(|&(_, l)| l == len)?;
    let (addr, _) = pool.swap_remove(i);
    NonNull::new(addr as *mut u8)
}

/// Takes back a mapping of `len` bytes; false if the pool is full (the caller unmaps it).
fn pool_back(ptr: NonNull<u8>, len: usize) -> bool {
    let mut pool = HUGE_POOL.lock().unwrap_or_else(|p| p.into_inner());
    if pool.len() >= MAX_POOLED_HUGE_BUFFERS {
        return false;
    }
    pool.push((ptr.as_ptr() as usize, len));
    true
}

/// Idle huge-page buffers in the pool now (tests).
#[cfg(test)]
pub(crate) fn pooled_huge_buffers() -> usize {
    HUGE_POOL.lock().unwrap_or_else(|p| p.into_inner()).len()
}

/// A buffer aligned to [`BLOCK_BYTES`] (to [`HUGE_PAGE_BYTES`] when its size is a multiple of
/// it), of which the first `filled` bytes were read. Only those are visible (the rest is
/// uninitialised, or zero, and never exposed).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
    /// Whether `ptr` is an anonymous mapping of `layout.size()` bytes (else a heap allocation).
    mapped: bool,
    filled: usize,
}

// SAFETY: the buffer is uniquely owned heap memory (no thread-local allocator, no shared
// state); it is only written through `&mut self` and read through `&self`.
unsafe impl Send for AlignedBuf {}
// SAFETY: as above; `&AlignedBuf` only gives shared reads of initialised bytes.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A buffer of `cap` bytes (a non-zero multiple of [`BLOCK_BYTES`], at most
    /// [`MAX_OWNED_READ_BYTES`]), nothing filled yet.
    pub fn new(cap: usize) -> io::Result<AlignedBuf> {
        if cap == 0 || cap % BLOCK_BYTES as usize != 0 || cap > MAX_OWNED_READ_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("owned read buffer of {cap} bytes (a multiple of {BLOCK_BYTES} up to {MAX_OWNED_READ_BYTES})"),
            ));
        }
        let layout = Layout::from_size_align(cap, BLOCK_BYTES as usize)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if cap % HUGE_PAGE_BYTES == 0 {
            return Self::map_huge(layout);
        }
        // SAFETY: the layout's size is non-zero (checked above).
        let ptr = unsafe { std::alloc::alloc(layout) };
        let ptr = NonNull::new(ptr)
            .ok_or_else(|| io::Error::new(io::ErrorKind::OutOfMemory, "owned read buffer"))?;
        Ok(AlignedBuf {
            ptr,
            layout,
            mapped: false,
            filled: 0,
        })
    }

    /// A fresh anonymous mapping of `layout.size()` bytes at a [`HUGE_PAGE_BYTES`] boundary,
    /// advised `MADV_HUGEPAGE` before its first touch. A fresh mapping (not reused heap
    /// memory already faulted in small pages) is what lets the kernel back it with huge pages.
    fn map_huge(layout: Layout) -> io::Result<AlignedBuf> {
        let len = layout.size();
        if let Some(ptr) = pooled(len) {
            return Ok(AlignedBuf {
                ptr,
                layout,
                mapped: true,
                filled: 0,
            });
        }
        let over = len + HUGE_PAGE_BYTES;
        // SAFETY: a new private anonymous mapping; no existing memory is affected.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                over,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = raw as usize;
        let start = base.next_multiple_of(HUGE_PAGE_BYTES);
        // SAFETY: both ranges lie inside the mapping just made, outside [start, start + len),
        // and are page aligned (mmap returns page-aligned memory; start and len are multiples
        // of 2 MiB). Failures would only leave the slack mapped.
        unsafe {
            if start > base {
                libc::munmap(raw, start - base);
            }
            let tail = base + over - (start + len);
            if tail > 0 {
                libc::munmap((start + len) as *mut libc::c_void, tail);
            }
            // Advice only: without huge pages the buffer is still usable.
            libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
        let ptr = NonNull::new(start as *mut u8)
            .ok_or_else(|| io::Error::new(io::ErrorKind::OutOfMemory, "owned read buffer"))?;
        Ok(AlignedBuf {
            ptr,
            layout,
            mapped: true,
            filled: 0,
        })
    }

    pub fn capacity(&self) -> usize {
        self.layout.size()
    }

    /// The buffer's start, for a caller that fills it by other means (the disk-read bench's
    /// io_uring reads). Nothing counts as filled then: [`AsRef`] still shows no bytes.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Fills the buffer from `fd` at `pos` with `pread(2)` (blocking): until it is full or
    /// the file ends. Works on O_DIRECT descriptors when `pos` is aligned (the buffer is).
    /// Returns the bytes now filled.
    pub fn fill_from(&mut self, fd: RawFd, pos: u64) -> io::Result<usize> {
        while self.fill_piece(fd, pos, self.capacity())? {}
        Ok(self.filled)
    }

    /// Reads the next at most `max` bytes of the buffer (its filled part continues at
    /// `pos + filled` in the file) with `pread(2)` (blocking), rounded up to [`BLOCK_BYTES`]:
    /// one device request for a direct read into contiguous memory. Returns whether more may
    /// follow: false once the buffer is full or the file ended (a short or empty read).
    /// A buffer filled piece by piece holds exactly the bytes one [`AlignedBuf::fill_from`]
    /// would have read.
    pub fn fill_piece(&mut self, fd: RawFd, pos: u64, max: usize) -> io::Result<bool> {
        let cap = self.capacity();
        let want = super::align_up(max.clamp(1, cap) as u64) as usize;
        let end = cap.min(self.filled.saturating_add(want));
        while self.filled < end {
            let at = i64::try_from(pos + self.filled as u64)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "read position"))?;
            // SAFETY: the destination is inside our allocation: `filled < end <= cap` bytes
            // in, and `end - filled` bytes long.
            let n = unsafe {
                libc::pread(
                    fd,
                    self.ptr.as_ptr().add(self.filled).cast(),
                    end - self.filled,
                    at,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Ok(false);
            }
            self.filled += n as usize;
            // A direct read ends short only at the end of the file; the next one would be
            // unaligned (EINVAL), and there is nothing more to read anyway.
            if self.filled % BLOCK_BYTES as usize != 0 {
                return Ok(false);
            }
        }
        Ok(self.filled < cap)
    }

    /// The buffer as `Bytes` (its filled part), without a copy.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the first `filled` bytes were written by pread and are inside the
        // allocation, which lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.filled) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.mapped {
            if pool_back(self.ptr, self.layout.size()) {
                return;
            }
            // SAFETY: mapped in `map_huge` with this length, unmapped once (a pooled mapping
            // belongs to the pool, not to this buffer any more).
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.layout.size()) };
        } else {
            // SAFETY: allocated in `new` with this layout, freed once.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;

    fn open_direct(path: &std::path::Path) -> std::fs::File {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .expect("open direct")
    }

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(bytes))
            .expect("write");
        (dir, path)
    }

    #[test]
    fn a_direct_fill_reads_the_file_and_stops_at_its_end() {
        // Catches: a fill that exposes uninitialised bytes past the end of the file, that
        // loops on the short read at the end, or reads at the wrong position.
        let data: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8).collect();
        let (_dir, path) = file_with(&data);
        let f = open_direct(&path);
        let mut b = AlignedBuf::new(8 * 4096).expect("buf");
        assert_eq!(
            b.fill_from(f.as_raw_fd(), 4096).expect("fill"),
            data.len() - 4096
        );
        assert_eq!(b.as_ref(), &data[4096..]);
        let mut b = AlignedBuf::new(4096).expect("buf");
        assert_eq!(b.fill_from(f.as_raw_fd(), 0).expect("fill"), 4096);
        assert_eq!(b.as_ref(), &data[..4096]);
    }

    #[test]
    fn a_fill_in_pieces_reads_the_same_bytes_as_one_fill() {
        // Catches: a piece read at the wrong file position or buffer offset, a piece that
        // reads past its bound (or past the buffer), one that does not stop at the end of the
        // file (short or exactly at a piece boundary), and a wrong "more may follow".
        let data: Vec<u8> = (0..10 * 4096 + 300).map(|i| (i * 13 % 251) as u8).collect();
        let (_dir, path) = file_with(&data);
        let f = open_direct(&path);
        for (cap, pos) in [(16 * 4096, 4096), (4 * 4096, 0), (8 * 4096, 3 * 4096)] {
            let mut one = AlignedBuf::new(cap).expect("buf");
            one.fill_from(f.as_raw_fd(), pos).expect("fill");
            for piece in [1, 4096, 3 * 4096, 5000, cap] {
                let mut b = AlignedBuf::new(cap).expect("buf");
                let mut calls = 0;
                while b.fill_piece(f.as_raw_fd(), pos, piece).expect("piece") {
                    calls += 1;
                    let bound = calls * crate::io::align_up(piece as u64) as usize;
                    assert!(
                        b.as_ref().len() <= bound,
                        "piece {piece} read past its bound"
                    );
                    assert!(calls <= cap / 4096, "pieces never end");
                }
                assert_eq!(
                    b.as_ref(),
                    one.as_ref(),
                    "cap {cap} pos {pos} piece {piece}"
                );
            }
            let end = (data.len() as u64 - pos).min(cap as u64) as usize;
            assert_eq!(one.as_ref(), &data[pos as usize..pos as usize + end]);
        }
        // The file ending exactly where a piece does: one more (empty) read says so.
        let (_dir2, path2) = file_with(&data[..2 * 4096]);
        let f2 = open_direct(&path2);
        let mut b = AlignedBuf::new(4 * 4096).expect("buf");
        assert!(b.fill_piece(f2.as_raw_fd(), 0, 2 * 4096).expect("piece"));
        assert!(!b.fill_piece(f2.as_raw_fd(), 0, 2 * 4096).expect("piece"));
        assert_eq!(b.as_ref(), &data[..2 * 4096]);
    }

    #[test]
    fn a_huge_page_buffer_is_aligned_and_reads_like_any_other() {
        // Catches: a huge-page mapping that is not 2 MiB aligned (no huge page can back it),
        // or unmapped slack that cuts into the buffer (reads fault or corrupt).
        let data: Vec<u8> = (0..HUGE_PAGE_BYTES + 8192)
            .map(|i| (i % 241) as u8)
            .collect();
        let (_dir, path) = file_with(&data);
        let f = open_direct(&path);
        let mut b = AlignedBuf::new(2 * HUGE_PAGE_BYTES).expect("buf");
        assert_eq!(b.as_ref().as_ptr() as usize % HUGE_PAGE_BYTES, 0);
        assert_eq!(b.fill_from(f.as_raw_fd(), 0).expect("fill"), data.len());
        let bytes = b.into_bytes();
        assert_eq!(&bytes[..], &data[..]);
        let tail = bytes.slice(HUGE_PAGE_BYTES..);
        drop(bytes);
        assert_eq!(&tail[..], &data[HUGE_PAGE_BYTES..]);
    }

    #[test]
    fn huge_buffers_are_reused_up_to_the_pool_bound() {
        // Catches: a pool that never hands a buffer out again (every read pays a fresh huge
        // page), or one that grows without bound. Other tests may use the pool meanwhile, so
        // only the bound and a reuse of our own size are checked.
        let len = 3 * HUGE_PAGE_BYTES; // a size no other test uses
        let bufs: Vec<_> = (0..MAX_POOLED_HUGE_BUFFERS + 4)
            .map(|_| AlignedBuf::new(len).expect("buf"))
            .collect();
        let addrs: Vec<usize> = bufs.iter().map(|b| b.ptr.as_ptr() as usize).collect();
        drop(bufs);
        assert!(pooled_huge_buffers() <= MAX_POOLED_HUGE_BUFFERS);
        let again = AlignedBuf::new(len).expect("buf");
        assert!(
            addrs.contains(&(again.ptr.as_ptr() as usize)),
            "a dropped buffer was not reused"
        );
    }

    #[test]
    fn bad_sizes_are_refused() {
        // Catches: an unbounded or unaligned allocation.
        for cap in [0, 100, MAX_OWNED_READ_BYTES + 4096] {
            assert!(AlignedBuf::new(cap).is_err(), "{cap}");
        }
    }

    #[test]
    fn slices_outlive_the_first_handle_and_cross_threads() {
        // Catches: memory freed while a slice still refers to it (the chunk leaving the
        // cache before its batches are sent), or a slice that is not valid on another thread.
        let data: Vec<u8> = (0..2 * 4096).map(|i| (i % 199) as u8).collect();
        let (_dir, path) = file_with(&data);
        let f = std::fs::File::open(&path).expect("open");
        let mut b = AlignedBuf::new(2 * 4096).expect("buf");
        b.fill_from(f.as_raw_fd(), 0).expect("fill");
        let whole = b.into_bytes();
        let part = whole.slice(100..5000);
        drop(whole);
        let got = std::thread::spawn(move || part.to_vec())
            .join()
            .expect("thread");
        assert_eq!(got, &data[100..5000]);
    }
}
