//! [`Storage`] over glommio: `DmaFile` (O_DIRECT through io_uring) for segments, `BufferedFile`
//! for small files. Directory listing and mtimes use blocking `std::fs` metadata calls; they
//! run only at open and during retention.

use super::{FileKind, IoBuf, IoFuture, Storage, StorageFile};
use glommio::io::{BufferedFile, DmaFile, OpenOptions};
use std::cell::RefCell;
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

/// The production storage: real files on the executor's io_uring.
#[derive(Debug, Clone, Copy, Default)]
pub struct GlommioStorage;

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

struct GlommioFile {
    /// None once closed.
    handle: RefCell<Option<Handle>>,
    path: PathBuf,
}

impl GlommioFile {
    fn handle(&self) -> io::Result<Handle> {
        self.handle.borrow().clone().ok_or_else(closed)
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
