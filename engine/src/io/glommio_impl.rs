//! [`Storage`] over glommio: `DmaFile` (O_DIRECT through io_uring) for segments, `BufferedFile`
//! for small files. Directory listing and mtimes use blocking `std::fs` metadata calls; they
//! run only at open and during retention.

use super::{FileKind, IoBuf, IoFuture, Storage, StorageFile};
use glommio::io::{BufferedFile, DmaFile, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

/// The production storage: real files on the executor's io_uring.
#[derive(Debug, Clone, Copy, Default)]
pub struct GlommioStorage;

enum Handle {
    /// Two descriptors: glommio 0.9 probes io_uring polling support per file and, for a
    /// read-write O_DIRECT descriptor on this virtio disk, ends up with one whose reads fail
    /// with EOPNOTSUPP (measured 2026-11-21). A write-only descriptor for writes and a
    /// read-only one for reads both work.
    Direct {
        w: DmaFile,
        r: DmaFile,
    },
    Buffered(BufferedFile),
}

struct GlommioFile {
    handle: Handle,
    path: PathBuf,
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
                    Handle::Direct { w, r }
                }
                FileKind::Buffered => Handle::Buffered(
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(create)
                        .buffered_open(&path)
                        .await
                        .map_err(to_io)?,
                ),
            };
            Ok(Rc::new(GlommioFile { handle, path }) as Rc<dyn StorageFile>)
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
            d.sync().await.map_err(to_io)?;
            d.close().await.map_err(to_io)
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
            let (n, back) = match (&self.handle, buf) {
                (Handle::Direct { w, .. }, IoBuf::Dma(b)) => {
                    // Shared with the reactor only while in flight, then handed back for reuse.
                    let rc = Rc::new(b);
                    let n = w.write_rc_at(rc.clone(), pos).await.map_err(to_io)?;
                    (n, Rc::try_unwrap(rc).ok().map(IoBuf::Dma))
                }
                (Handle::Direct { w, .. }, IoBuf::Heap(v)) => {
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
            let r = match &self.handle {
                Handle::Direct { r, .. } => r.read_at_aligned(pos, len).await.map_err(to_io)?,
                Handle::Buffered(f) => f.read_at(pos, len).await.map_err(to_io)?,
            };
            Ok(r.to_vec())
        })
    }

    fn fdatasync(&self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            match &self.handle {
                Handle::Direct { w: f, .. } => f.fdatasync().await.map_err(to_io),
                Handle::Buffered(f) => f.fdatasync().await.map_err(to_io),
            }
        })
    }

    fn preallocate(&self, len: u64) -> IoFuture<'_, ()> {
        Box::pin(async move {
            match &self.handle {
                Handle::Direct { w: f, .. } => f.pre_allocate(len, false).await.map_err(to_io),
                Handle::Buffered(f) => f.pre_allocate(len, false).await.map_err(to_io),
            }
        })
    }

    fn truncate(&self, len: u64) -> IoFuture<'_, ()> {
        Box::pin(async move {
            match &self.handle {
                Handle::Direct { w: f, .. } => f.truncate(len).await.map_err(to_io),
                Handle::Buffered(f) => f.truncate(len).await.map_err(to_io),
            }
        })
    }

    fn size(&self) -> IoFuture<'_, u64> {
        Box::pin(async move {
            match &self.handle {
                Handle::Direct { r: f, .. } => f.file_size().await.map_err(to_io),
                Handle::Buffered(f) => f.file_size().await.map_err(to_io),
            }
        })
    }

    fn path(&self) -> PathBuf {
        self.path.clone()
    }
}
