//! [`Storage`] over glommio: `DmaFile` (O_DIRECT through io_uring) for segments, `BufferedFile`
//! for small files. Directory listing and mtimes use blocking `std::fs` metadata calls; they
//! run only at open and during retention.

use super::{AlignedBuf, FileKind, IoBuf, IoFuture, Pace, Storage, StorageFile};
use bytes::Bytes;
use glommio::io::{BufferedFile, DmaFile, OpenOptions};
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

/// Owned-buffer reads ([`StorageFile::read_shared`]) running at once on one executor's
/// blocking pool: the readahead's 1 demand + 2 idle readahead reads. The pool is shared: the
/// broker gives each core 4 threads (`broker/src/sendfile.rs`, `BLOCKING_THREADS_PER_CORE`),
/// of which glommio needs one for its own blocking file operations (the rename of a prepared
/// segment at a roll, with the append lock held); sendfile responses use up to 3, but in
/// `sendfile` mode the readahead only reads near the log's tail. A read beyond this bound does
/// not wait for a thread: it goes through io_uring and is copied out of glommio's buffer.
pub const MAX_OWNED_READS_IN_FLIGHT: usize = 3;

thread_local! {
    /// Owned-buffer reads in flight on this thread's executor.
    static OWNED_READS: Cell<usize> = const { Cell::new(0) };
    /// Owned-buffer reads issued on this thread's executor (tests).
    static OWNED_READS_ISSUED: Cell<u64> = const { Cell::new(0) };
    /// Pieces (`AlignedBuf::fill_piece` calls) of those reads (tests).
    static OWNED_READ_PIECES: Cell<u64> = const { Cell::new(0) };
}

/// One of the [`MAX_OWNED_READS_IN_FLIGHT`] slots of this executor, given back when dropped.
struct OwnedReadSlot;

impl OwnedReadSlot {
    fn take() -> Option<OwnedReadSlot> {
        let slot = OWNED_READS.with(|n| {
            (n.get() < MAX_OWNED_READS_IN_FLIGHT).then(|| {
                n.set(n.get() + 1);
                OwnedReadSlot
            })
        });
        if slot.is_some() {
            OWNED_READS_ISSUED.with(|n| n.set(n.get() + 1));
        }
        slot
    }
}

impl Drop for OwnedReadSlot {
    fn drop(&mut self) {
        OWNED_READS.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// The production storage: real files on the executor's io_uring.
#[derive(Debug, Clone, Copy, Default)]
pub struct GlommioStorage {
    /// I/O scheduling class of the backlog reads issued from blocking-pool threads.
    read_priority: super::ReadPriority,
}

impl GlommioStorage {
    pub fn new(read_priority: super::ReadPriority) -> GlommioStorage {
        GlommioStorage { read_priority }
    }
}

/// An open file's glommio handles. Cloned (cheaply) by each operation for its duration, so
/// that [`StorageFile::close`] can take the handles away while an operation is in flight.
#[derive(Clone)]
enum Handle {
    /// Two descriptors: glommio 0.9 probes io_uring polling support per file and, for a
    /// read-write O_DIRECT descriptor on this virtio disk, ends up with one whose reads fail
    /// with EOPNOTSUPP (measured 2026-11-21). A write-only descriptor for writes and a
    /// read-only one for reads both work.
    Direct {
        w: Rc<Dma>,
        r: Rc<Dma>,
    },
    Buffered(Rc<BufferedFile>),
}

/// A `DmaFile` whose descriptor, if the file is dropped without [`Dma::close`], is closed at
/// once with close(2) rather than by glommio's drop, which only queues the close on the
/// executor's ring: when the executor ends (a crashed or short-lived shard) that queue is
/// never submitted and the descriptor leaks (measured: 10 descriptors per dropped small-segment
/// shard on a fresh executor, tests/descriptors.rs, kernel-notes/o-direct-and-page-cache.md).
/// Dropping is safe while no operation is in flight, which the `Rc` sharing guarantees: every
/// operation holds a clone until it completes (a queued, unsubmitted request is cancelled by
/// glommio when its future is dropped).
struct Dma(Option<DmaFile>);

impl Dma {
    fn file(&self) -> io::Result<&DmaFile> {
        self.0.as_ref().ok_or_else(closed)
    }

    async fn close(mut self) -> io::Result<()> {
        match self.0.take() {
            Some(f) => f.close().await.map_err(to_io),
            None => Ok(()),
        }
    }
}

impl Drop for Dma {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            // `OwnedDmaFile` closes its descriptor synchronously when dropped.
            drop(glommio::io::OwnedDmaFile::from(f));
        }
    }
}

/// Whether the file system of `fd` answers `lseek(SEEK_HOLE)` with its unwritten extents
/// (ext4, XFS, btrfs), rather than the kernel's generic "all data".
pub(crate) fn seek_hole_knows_unwritten(fd: std::os::fd::RawFd) -> bool {
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683E;
    // SAFETY: a zeroed statfs is a valid out-parameter; fstatfs only writes it.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::fstatfs(fd, &mut fs) } == 0;
    ok && [EXT4, XFS, BTRFS].contains(&(fs.f_type as i64))
}

struct GlommioFile {
    /// None once closed.
    handle: RefCell<Option<Handle>>,
    path: PathBuf,
    /// A duplicate of the read descriptor for blocking-pool reads ([`StorageFile::read_shared`]),
    /// made at the first one. Each read holds a clone until its thread is done with it, so
    /// the descriptor stays open (never a reused number) even when the reading future is
    /// dropped or the file closed meanwhile; the last clone closes it (close(2), at once).
    shared_fd: RefCell<Option<Arc<OwnedFd>>>,
    /// I/O scheduling class of its blocking-pool reads (the storage's).
    read_priority: super::ReadPriority,
}

impl GlommioFile {
    fn handle(&self) -> io::Result<Handle> {
        self.handle.borrow().clone().ok_or_else(closed)
    }

    /// The descriptor blocking-pool reads use (see `shared_fd`), made at the first call.
    fn shared_fd(&self, r: &Dma) -> io::Result<Arc<OwnedFd>> {
        if let Some(fd) = self.shared_fd.borrow().as_ref() {
            return Ok(fd.clone());
        }
        // SAFETY: duplicating a descriptor we hold open (`r`), with close-on-exec.
        let fd = unsafe { libc::fcntl(r.file()?.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by fcntl and is owned by nobody else.
        let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        *self.shared_fd.borrow_mut() = Some(fd.clone());
        Ok(fd)
    }
}

fn closed() -> io::Error {
    io::Error::other("file already closed")
}

fn to_io(e: glommio::GlommioError<()>) -> io::Error {
    io::Error::from(e)
}

impl Storage for GlommioStorage {
    fn prefers_written_extents(&self) -> bool {
        true
    }

    fn alloc(&self, len: usize) -> IoBuf {
        // Not zeroed (a 1 MiB memset per staging buffer showed up in profiles): the appender
        // zeroes the padding it writes after the data.
        IoBuf::Dma(glommio::allocate_dma_buffer(len))
    }

    fn open(
        &self,
        path: PathBuf,
        kind: FileKind,
        create: bool,
    ) -> IoFuture<'_, Rc<dyn StorageFile>> {
        let read_priority = self.read_priority;
        Box::pin(async move {
            let handle = match kind {
                FileKind::Direct => {
                    let w = OpenOptions::new()
                        .write(true)
                        .create(create)
                        .dma_open(&path)
                        .await
                        .map_err(to_io)?;
                    let r = OpenOptions::new()
                        .read(true)
                        .dma_open(&path)
                        .await
                        .map_err(to_io)?;
                    Handle::Direct {
                        w: Rc::new(Dma(Some(w))),
                        r: Rc::new(Dma(Some(r))),
                    }
                }
                FileKind::Buffered => Handle::Buffered(Rc::new(
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(create)
                        .buffered_open(&path)
                        .await
                        .map_err(to_io)?,
                )),
            };
            Ok(Rc::new(GlommioFile {
                handle: RefCell::new(Some(handle)),
                path,
                shared_fd: RefCell::new(None),
                read_priority,
            }) as Rc<dyn StorageFile>)
        })
    }

    fn remove(&self, path: PathBuf) -> IoFuture<'_, ()> {
        Box::pin(async move { glommio::io::remove(&path).await.map_err(to_io) })
    }

    fn rename(&self, from: PathBuf, to: PathBuf) -> IoFuture<'_, ()> {
        Box::pin(async move { glommio::io::rename(&from, &to).await.map_err(to_io) })
    }

    fn sync_dir(&self, dir: PathBuf) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let d = glommio::io::Directory::open(&dir).await.map_err(to_io)?;
            let synced = d.sync().await.map_err(to_io);
            let closed = d.close().await.map_err(to_io);
            synced.and(closed)
        })
    }

    fn create_dir_all(&self, dir: PathBuf) -> IoFuture<'_, ()> {
        Box::pin(async move { std::fs::create_dir_all(&dir) })
    }

    fn list_dir(&self, dir: PathBuf) -> IoFuture<'_, Vec<String>> {
        Box::pin(async move {
            let mut names = Vec::new();
            for e in std::fs::read_dir(&dir)? {
                let e = e?;
                if e.file_type()?.is_file() {
                    if let Some(n) = e.file_name().to_str() {
                        names.push(n.to_string());
                    }
                }
            }
            Ok(names)
        })
    }

    fn modified_ms(&self, path: PathBuf) -> IoFuture<'_, i64> {
        Box::pin(async move {
            let m = std::fs::metadata(&path)?.modified()?;
            Ok(m.duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0))
        })
    }
}

impl StorageFile for GlommioFile {
    fn write_at(&self, buf: IoBuf, pos: u64) -> IoFuture<'_, Option<IoBuf>> {
        Box::pin(async move {
            let want = buf.len();
            let (n, back) = match (self.handle()?, buf) {
                (Handle::Direct { w, .. }, IoBuf::Dma(b)) => {
                    // Shared with the reactor only while in flight, then handed back for reuse.
                    let rc = Rc::new(b);
                    let n = w
                        .file()?
                        .write_rc_at(rc.clone(), pos)
                        .await
                        .map_err(to_io)?;
                    (n, Rc::try_unwrap(rc).ok().map(IoBuf::Dma))
                }
                (Handle::Direct { w, .. }, IoBuf::Heap(v)) => {
                    let w = w.file()?;
                    let mut b = w.alloc_dma_buffer(v.len());
                    b.as_bytes_mut().copy_from_slice(&v);
                    (
                        w.write_at(b, pos).await.map_err(to_io)?,
                        Some(IoBuf::Heap(v)),
                    )
                }
                (Handle::Buffered(f), IoBuf::Heap(v)) => {
                    (f.write_at(v, pos).await.map_err(to_io)?, None)
                }
                (Handle::Buffered(f), IoBuf::Dma(b)) => (
                    f.write_at(b.as_bytes().to_vec(), pos)
                        .await
                        .map_err(to_io)?,
                    Some(IoBuf::Dma(b)),
                ),
            };
            // A short write leaves the tail unwritten: the caller must treat it as a failure.
            if n != want {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write: {n} of {want} bytes"),
                ));
            }
            Ok(back)
        })
    }

    fn read_at(&self, pos: u64, len: usize) -> IoFuture<'_, Vec<u8>> {
        Box::pin(async move {
            let r = match self.handle()? {
                Handle::Direct { r, .. } => {
                    r.file()?.read_at_aligned(pos, len).await.map_err(to_io)?
                }
                Handle::Buffered(f) => f.read_at(pos, len).await.map_err(to_io)?,
            };
            Ok(r.to_vec())
        })
    }

    fn read_shared(&self, pos: u64, len: usize, pace: Pace) -> IoFuture<'_, Bytes> {
        Box::pin(async move {
            let Handle::Direct { r, .. } = self.handle()? else {
                return self.read_at(pos, len).await.map(Bytes::from);
            };
            // Sizes an owned buffer cannot take (none of the readahead's) read as before.
            let fits = len > 0
                && len <= super::MAX_OWNED_READ_BYTES
                && len % super::BLOCK_BYTES as usize == 0;
            let slot = if fits { OwnedReadSlot::take() } else { None };
            let Some(slot) = slot else {
                return self.read_at(pos, len).await.map(Bytes::from);
            };
            let fd = self.shared_fd(&r)?;
            let priority = self.read_priority;
            // Each piece is one pread (one device request into the contiguous buffer), issued
            // by the pool thread right after the previous one: no trip through the executor
            // between them (the disk idled half the time when there was one). If this future
            // is dropped meanwhile (a stopped shard), the thread still finishes its read and
            // frees the buffer, but the slot is given back at once: the bound is on reads this
            // executor waits for, not on pool threads.
            let (buf, pieces) = glommio::executor()
                .spawn_blocking(move || {
                    super::apply_read_priority(priority);
                    let mut buf = AlignedBuf::new(len)?;
                    let mut pieces = 1;
                    while buf.fill_piece(fd.as_raw_fd(), pos, pace())? {
                        pieces += 1;
                    }
                    Ok::<_, io::Error>((buf, pieces))
                })
                .await?;
            OWNED_READ_PIECES.with(|n| n.set(n.get() + pieces));
            drop(slot);
            Ok(buf.into_bytes())
        })
    }

    fn fdatasync(&self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            match self.handle()? {
                Handle::Direct { w, .. } => w.file()?.fdatasync().await.map_err(to_io),
                Handle::Buffered(f) => f.fdatasync().await.map_err(to_io),
            }
        })
    }

    fn preallocate(&self, len: u64) -> IoFuture<'_, ()> {
        Box::pin(async move {
            match self.handle()? {
                Handle::Direct { w, .. } => w.file()?.pre_allocate(len, false).await.map_err(to_io),
                Handle::Buffered(f) => f.pre_allocate(len, false).await.map_err(to_io),
            }
        })
    }

    fn truncate(&self, len: u64) -> IoFuture<'_, ()> {
        Box::pin(async move {
            match self.handle()? {
                Handle::Direct { w, .. } => w.file()?.truncate(len).await.map_err(to_io),
                Handle::Buffered(f) => f.truncate(len).await.map_err(to_io),
            }
        })
    }

    /// `lseek(SEEK_HOLE)`: ext4, XFS and btrfs report preallocated (unwritten) extents with
    /// no cached pages as holes, and written ones, zeros included, as data (one extent
    /// lookup). Elsewhere the kernel's generic answer calls the whole file data, which would
    /// be wrong here: no hint.
    fn unwritten_from(&self, pos: u64) -> Option<u64> {
        let fd = match self.handle().ok()? {
            Handle::Direct { w, .. } => w.file().ok()?.as_raw_fd(),
            Handle::Buffered(f) => f.as_raw_fd(),
        };
        if !seek_hole_knows_unwritten(fd) {
            return None;
        }
        let pos = libc::off_t::try_from(pos).ok()?;
        // SAFETY: lseek on a descriptor this file holds open; it reads no memory of ours.
        let at = unsafe { libc::lseek(fd, pos, libc::SEEK_HOLE) };
        // The descriptors are only used with positioned I/O: moving their offset is harmless.
        u64::try_from(at).ok()
    }

    fn size(&self) -> IoFuture<'_, u64> {
        Box::pin(async move {
            match self.handle()? {
                Handle::Direct { r, .. } => r.file()?.file_size().await.map_err(to_io),
                Handle::Buffered(f) => f.file_size().await.map_err(to_io),
            }
        })
    }

    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    fn close(&self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            // Reads in flight keep their own clones of the duplicate.
            drop(self.shared_fd.borrow_mut().take());
            let Some(handle) = self.handle.borrow_mut().take() else {
                return Ok(());
            };
            // A handle still shared is in use by an operation in flight: its descriptor closes
            // when that operation completes (synchronously for `Dma`, see there).
            match handle {
                Handle::Direct { w, r } => {
                    let w = match Rc::try_unwrap(w) {
                        Ok(d) => d.close().await,
                        Err(_) => Ok(()),
                    };
                    let r = match Rc::try_unwrap(r) {
                        Ok(d) => d.close().await,
                        Err(_) => Ok(()),
                    };
                    w.and(r)
                }
                Handle::Buffered(f) => match Rc::try_unwrap(f) {
                    Ok(f) => f.close().await.map_err(to_io),
                    Err(_) => Ok(()),
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{whole, BLOCK_BYTES};

    fn run<F, Fut>(f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(256 << 10)
            .spawn(f)
            .expect("executor starts")
            .join()
            .expect("test body does not panic");
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 253) as u8).collect()
    }

    /// Runs `body` on an executor with a direct file of `len` bytes (a multiple of the block
    /// size) holding [`pattern`], and that pattern.
    fn with_direct_file<F, Fut>(len: usize, body: F)
    where
        F: FnOnce(Rc<dyn StorageFile>, Vec<u8>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().to_path_buf();
        run(move || async move {
            let f = direct_file(&path, len).await;
            body(f, pattern(len)).await
        });
    }

    /// A direct file of `len` bytes (a multiple of the block size) holding [`pattern`].
    async fn direct_file(dir: &std::path::Path, len: usize) -> Rc<dyn StorageFile> {
        let io = GlommioStorage::new(crate::io::ReadPriority::Idle);
        let f = io
            .open(dir.join("seg.log"), FileKind::Direct, true)
            .await
            .expect("open");
        let mut buf = io.alloc(len);
        buf.as_mut_slice().copy_from_slice(&pattern(len));
        f.write_at(buf, 0).await.expect("write");
        f
    }

    #[test]
    fn shared_reads_match_copying_reads_and_outlive_the_file_on_other_threads() {
        // Catches: an owned read at the wrong position or of the wrong length, one that
        // exposes bytes past the end of the file, memory freed while a slice still refers to
        // it (the file closed, the chunk evicted), a slice invalid on another thread, and a
        // read that silently took the copying path.
        with_direct_file(3 << 20, |f, want| async move {
            let issued = OWNED_READS_ISSUED.with(Cell::get);
            let a = f
                .read_shared(1 << 20, 1 << 20, whole(1 << 20))
                .await
                .expect("read");
            assert_eq!(
                OWNED_READS_ISSUED.with(Cell::get),
                issued + 1,
                "not an owned read"
            );
            assert_eq!(a.as_ptr() as usize % BLOCK_BYTES as usize, 0);
            assert_eq!(
                &a[..],
                &f.read_at(1 << 20, 1 << 20).await.expect("read")[..]
            );
            assert_eq!(&a[..], &want[1 << 20..2 << 20]);
            // Past the end: what is there.
            let end = f
                .read_shared(2 << 20, 2 << 20, whole(2 << 20))
                .await
                .expect("read");
            assert_eq!(&end[..], &want[2 << 20..]);
            let slice = a.slice(4000..900_000);
            drop(a);
            f.close().await.expect("close");
            drop(f);
            let got = std::thread::spawn(move || slice.to_vec())
                .join()
                .expect("thread");
            assert_eq!(got, &want[(1 << 20) + 4000..(1 << 20) + 900_000]);
            assert_eq!(OWNED_READS.with(Cell::get), 0, "a slot not given back");
        });
    }

    #[test]
    fn a_read_in_pieces_returns_the_bytes_of_one_read() {
        // Catches: a backend that ignores the pieces (the disk queue unbounded while the log
        // writes), pieces at the wrong position or buffer offset, a read that does not stop
        // at the end of the file, and a piece size that is not asked again before each piece
        // (the rest read in one go once the caller allows it).
        use std::sync::atomic::{AtomicUsize, Ordering};
        with_direct_file(3 << 20, |f, want| async move {
            let len = want.len();
            let piece = 256 << 10;
            // 2 MiB at 2 MiB: 1 MiB there (a short read at the end of the file).
            for (pos, n) in [(0, 2 << 20), (1 << 20, 2 << 20), (2 << 20, 2 << 20)] {
                let one = f.read_shared(pos as u64, n, whole(n)).await.expect("read");
                let before = OWNED_READ_PIECES.with(Cell::get);
                let got = f
                    .read_shared(pos as u64, n, Arc::new(move || piece))
                    .await
                    .expect("read");
                let pieces = OWNED_READ_PIECES.with(Cell::get) - before;
                assert!(got == one, "pos {pos}: pieces differ from one read");
                assert_eq!(&got[..], &want[pos..(pos + n).min(len)]);
                let at_least = ((len - pos).min(n) / piece) as u64;
                assert!(pieces >= at_least, "pos {pos}: {pieces} pieces");
            }
            // Small pieces first, then the rest at once.
            let asked = Arc::new(AtomicUsize::new(0));
            let counter = asked.clone();
            let pace: Pace = Arc::new(move || {
                if counter.fetch_add(1, Ordering::Relaxed) < 2 {
                    piece
                } else {
                    usize::MAX
                }
            });
            let before = OWNED_READ_PIECES.with(Cell::get);
            let got = f.read_shared(0, 2 << 20, pace).await.expect("read");
            assert_eq!(OWNED_READ_PIECES.with(Cell::get) - before, 3);
            assert_eq!(asked.load(Ordering::Relaxed), 3);
            assert_eq!(&got[..], &want[..2 << 20]);
            assert_eq!(OWNED_READS.with(Cell::get), 0, "a slot not given back");
            f.close().await.expect("close");
        });
    }

    #[test]
    fn reads_beyond_the_owned_slots_take_the_copying_path_and_are_exact() {
        // Catches: reads past MAX_OWNED_READS_IN_FLIGHT waiting for a pool thread (or failing)
        // instead of going through io_uring, wrong bytes on either path, leaked slots.
        let n = MAX_OWNED_READS_IN_FLIGHT + 3;
        let chunk = 256 << 10;
        with_direct_file(n * chunk, move |f, want| async move {
            let issued = OWNED_READS_ISSUED.with(Cell::get);
            // All started (polled once) before any is awaited to the end.
            let mut reads: Vec<_> = (0..n)
                .map(|i| Some(f.read_shared((i * chunk) as u64, chunk, whole(chunk))))
                .collect();
            let mut results: Vec<Option<io::Result<Bytes>>> = (0..n).map(|_| None).collect();
            std::future::poll_fn(|cx| {
                for (r, out) in reads.iter_mut().zip(results.iter_mut()) {
                    if let Some(fut) = r {
                        if let std::task::Poll::Ready(v) = fut.as_mut().poll(cx) {
                            *out = Some(v);
                            *r = None;
                        }
                    }
                }
                if reads.iter().all(Option::is_none) {
                    std::task::Poll::Ready(())
                } else {
                    std::task::Poll::Pending
                }
            })
            .await;
            for (i, r) in results.into_iter().enumerate() {
                let b = r.expect("polled to the end").expect("read");
                assert_eq!(&b[..], &want[i * chunk..(i + 1) * chunk], "read {i}");
            }
            let owned = OWNED_READS_ISSUED.with(Cell::get) - issued;
            assert_eq!(owned, MAX_OWNED_READS_IN_FLIGHT as u64, "owned reads");
            assert_eq!(OWNED_READS.with(Cell::get), 0, "a slot not given back");
            f.close().await.expect("close");
        });
    }
}
