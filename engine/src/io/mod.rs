//! The I/O seam: the few file operations the engine uses, behind two object-safe traits, so
//! the same engine code runs on glommio DMA files ([`GlommioStorage`]) and on an in-memory
//! fault-injecting double ([`MemStorage`]) in tests.
//!
//! Contract every implementation keeps (the engine's crash reasoning depends on it):
//! - `write_at` on a [`FileKind::Direct`] file takes a buffer whose length and position are
//!   multiples of [`BLOCK_BYTES`]; the write is complete (all bytes) or an error.
//! - Written data is readable at once but may be lost on a crash until an `fdatasync` of that
//!   file completed after the write completed.
//! - Metadata operations (create, rename, remove, preallocate) are durable once `sync_dir` /
//!   `fdatasync` of the file completed.
//! - `close` releases the file's descriptors before it resolves; operations issued after it
//!   fail. Every file the engine opens is closed explicitly when the engine is done with it
//!   (see [`close_after`]): glommio closes a dropped file only on the executor's next I/O
//!   cycle, which never comes when the executor ends, so a dropped file could leak its
//!   descriptor (kernel-notes/o-direct-and-page-cache.md, "Descriptors").

pub(crate) mod glommio_impl;
mod mem;
mod owned;
mod priority;
pub(crate) mod slow;

pub use glommio_impl::{GlommioStorage, MAX_OWNED_READS_IN_FLIGHT};
pub use mem::{CrashMode, MemStorage};
pub use owned::{AlignedBuf, HUGE_PAGE_BYTES, MAX_OWNED_READ_BYTES};
pub use priority::{apply_read_priority, set_thread_read_priority, ReadPriority};

use bytes::Bytes;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;

/// Alignment (and granularity) of O_DIRECT positions and lengths.
pub const BLOCK_BYTES: u64 = 4096;

/// Says, before each piece of a [`StorageFile::read_shared`], the most bytes it may read;
/// called on the thread doing the read.
pub type Pace = std::sync::Arc<dyn Fn() -> usize + Send + Sync>;

/// A [`Pace`] that lets a read of `len` bytes go in one piece.
pub fn whole(len: usize) -> Pace {
    std::sync::Arc::new(move || len)
}

/// A boxed, `!Send` I/O future.
pub type IoFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + 'a>>;

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// O_DIRECT: aligned buffers, positions and lengths (commit-log segments).
    Direct,
    /// Page-cache I/O, any position and length (index files, checkpoint).
    Buffered,
}

/// A buffer suitable for the storage's writes: block-aligned memory for DMA, or a plain Vec.
pub enum IoBuf {
    Dma(glommio::io::DmaBuffer),
    Heap(Vec<u8>),
}

impl IoBuf {
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            IoBuf::Dma(b) => b.as_bytes(),
            IoBuf::Heap(v) => v,
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            IoBuf::Dma(b) => b.as_bytes_mut(),
            IoBuf::Heap(v) => v,
        }
    }

    /// Shrinks the buffer to `len` bytes (never grows it).
    pub fn trim_to(&mut self, len: usize) {
        assert!(
            len <= self.len(),
            "trim_to({len}) of a {}-byte buffer",
            self.len()
        );
        match self {
            IoBuf::Dma(b) => b.trim_to_size(len),
            IoBuf::Heap(v) => v.truncate(len),
        }
    }
}

/// Directory-level operations and buffer allocation.
pub trait Storage {
    /// A buffer of `len` bytes (a multiple of [`BLOCK_BYTES`]) usable by `write_at`. Its
    /// contents are unspecified (not necessarily zero).
    fn alloc(&self, len: usize) -> IoBuf;
    fn open(
        &self,
        path: PathBuf,
        kind: FileKind,
        create: bool,
    ) -> IoFuture<'_, Rc<dyn StorageFile>>;
    fn remove(&self, path: PathBuf) -> IoFuture<'_, ()>;
    fn rename(&self, from: PathBuf, to: PathBuf) -> IoFuture<'_, ()>;
    fn sync_dir(&self, dir: PathBuf) -> IoFuture<'_, ()>;
    fn create_dir_all(&self, dir: PathBuf) -> IoFuture<'_, ()>;
    /// Names of the regular files in `dir` (not sorted). A missing directory is an error.
    fn list_dir(&self, dir: PathBuf) -> IoFuture<'_, Vec<String>>;
    /// Milliseconds since the epoch of the file's last modification.
    fn modified_ms(&self, path: PathBuf) -> IoFuture<'_, i64>;
    /// Whether writes into already-written blocks are much cheaper than into fallocated ones,
    /// so that zero-filling the next segment ahead of time pays (ext4 + O_DIRECT: yes).
    fn prefers_written_extents(&self) -> bool {
        false
    }
}

/// Operations on one open file.
pub trait StorageFile {
    /// Writes all of `buf` at `pos` (see the module contract for alignment). Returns the
    /// buffer when it can be reused.
    fn write_at(&self, buf: IoBuf, pos: u64) -> IoFuture<'_, Option<IoBuf>>;
    /// Reads up to `len` bytes at `pos`; fewer only at end of file. Direct files: aligned.
    fn read_at(&self, pos: u64, len: usize) -> IoFuture<'_, Vec<u8>>;
    /// As [`StorageFile::read_at`], as `Bytes` that may be sliced and sent to other threads,
    /// read without a copy where the backend can (glommio: into an [`AlignedBuf`] on a
    /// blocking-pool thread, see `glommio_impl.rs`), and as a sequence of smaller reads into
    /// the same buffer: before each one, `pace()` says how many bytes it may read at most
    /// (rounded up to [`BLOCK_BYTES`]; the rest in one go when it is `len` or more; [`whole`]
    /// reads it all at once). `pace` is called on the reading thread, so it reads shared
    /// state (an atomic the caller updates), not the executor's. So a caller can keep few
    /// bytes in the disk's queue while something more urgent shares it, and read the rest in
    /// one request once it is gone. The result is the same bytes as one read. The default
    /// wraps `read_at`'s `Vec` (no copy either) and ignores `pace` (an in-memory backend has
    /// no queue).
    fn read_shared(&self, pos: u64, len: usize, pace: Pace) -> IoFuture<'_, Bytes> {
        let _ = pace;
        Box::pin(async move { self.read_at(pos, len).await.map(Bytes::from) })
    }
    fn fdatasync(&self) -> IoFuture<'_, ()>;
    /// The first position at or after `pos` (block aligned) from which the file's blocks were
    /// never written (preallocated but unwritten, or a hole), or its size when every block
    /// from `pos` on was written; `None` when the backend cannot tell cheaply. The kernel's
    /// view, not the disk's: a caller that relies on those blocks being durably written
    /// fdatasyncs the file after asking (`log::zero_ahead`, `log::recycle`).
    fn unwritten_from(&self, pos: u64) -> Option<u64> {
        let _ = pos;
        None
    }
    /// Allocates the file's blocks up to `len` bytes and sets its size to at least `len`.
    fn preallocate(&self, len: u64) -> IoFuture<'_, ()>;
    fn truncate(&self, len: u64) -> IoFuture<'_, ()>;
    fn size(&self) -> IoFuture<'_, u64>;
    fn path(&self) -> PathBuf;
    /// Closes the file's descriptors (an operation still in flight keeps its descriptor until
    /// it completes). Later operations fail; closing again is a no-op.
    fn close(&self) -> IoFuture<'_, ()>;
}

/// Closes `file`, then returns `r`, or the close's error if `r` was a success: the way to end
/// every use of a file the engine opened, whatever that use returned.
pub async fn close_after<T>(file: &dyn StorageFile, r: io::Result<T>) -> io::Result<T> {
    let closed = file.close().await;
    let v = r?;
    closed.map(|()| v)
}

/// Rounds `v` up to a multiple of [`BLOCK_BYTES`].
pub fn align_up(v: u64) -> u64 {
    v.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

/// Rounds `v` down to a multiple of [`BLOCK_BYTES`].
pub fn align_down(v: u64) -> u64 {
    v / BLOCK_BYTES * BLOCK_BYTES
}
