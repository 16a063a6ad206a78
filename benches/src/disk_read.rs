//! The disk's sequential read ceiling, the baseline a catch-up read is judged against beside
//! the loopback one: how fast can this guest read a cold file at all, and in which shape?
//!
//! Three ways, each after dropping the page cache (`echo 3 > /proc/sys/vm/drop_caches` as root;
//! otherwise `posix_fadvise(DONTNEED)` on every file, and said so):
//! - `direct`: O_DIRECT reads of `read` bytes, `depth` in flight, through a private io_uring
//!   (no glommio in between: the device's own ceiling), into aligned buffers of our own;
//! - `glommio`: the same through glommio's `DmaFile::read_at_aligned` (the engine's readahead
//!   path), `depth` tasks each keeping one read in flight;
//! - `buffered`: one thread `read(2)`ing `read` bytes at a time through the page cache, with the
//!   kernel's readahead (`read_ahead_kb` of the device) and `POSIX_FADV_SEQUENTIAL` or not.
//!
//! Each run reads the files in order from their start, up to `limit` bytes. Beside MB/s it
//! reports the device's view over the run (`/sys/dev/block/M:m/stat`): reads issued, their
//! average size, and the fraction of the run the device had a request in flight.

use std::cell::Cell;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

use crate::executor;

/// O_DIRECT alignment of buffers, positions and lengths here.
const ALIGN: usize = 4096;
/// Largest read size accepted (a buffer per read in flight).
pub const MAX_READ_BYTES: usize = 64 << 20;
/// Most reads in flight accepted.
pub const MAX_DEPTH: usize = 256;

/// How a run reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    Direct,
    /// As `Direct`, into buffers backed by transparent huge pages (the engine's
    /// `io::AlignedBuf`: fresh 2 MiB-aligned mappings advised `MADV_HUGEPAGE`): physically
    /// contiguous, so one read is one large device request.
    DirectThp,
    Glommio,
    Buffered {
        sequential: bool,
    },
}

impl Way {
    pub fn name(self) -> &'static str {
        match self {
            Way::Direct => "direct",
            Way::DirectThp => "direct+thp",
            Way::Glommio => "glommio",
            Way::Buffered { sequential: true } => "buffered+seq",
            Way::Buffered { sequential: false } => "buffered",
        }
    }
}

/// One run's shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub way: Way,
    /// Reads in flight (1 for buffered).
    pub depth: usize,
    pub read_bytes: usize,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub shape: Shape,
    pub bytes: u64,
    pub elapsed: Duration,
    /// How the page cache was emptied before the run.
    pub dropped: &'static str,
    pub device: Option<DeviceDelta>,
}

impl Outcome {
    pub fn mb_per_s(&self) -> f64 {
        crate::mb_per_s(self.bytes, self.elapsed)
    }

    /// One line: `direct 4 x 1M: 1234 MB/s (...)`.
    pub fn line(&self) -> String {
        let s = &self.shape;
        let dev = match &self.device {
            Some(d) => format!(
                "; device: {} reads, avg {:.0} KiB, busy {:.0}%, avg queue {:.1}",
                d.reads,
                d.avg_read_kib(),
                d.busy(self.elapsed) * 100.0,
                d.avg_queue(self.elapsed)
            ),
            None => String::new(),
        };
        format!(
            "{} {} x {}: {:.0} MB/s ({} MiB in {:.2} s, cache {}{dev})",
            s.way.name(),
            s.depth,
            crate::fetch_paths::format_size(s.read_bytes),
            self.mb_per_s(),
            self.bytes >> 20,
            self.elapsed.as_secs_f64(),
            self.dropped,
        )
    }
}

/// Differences of the device's read counters over a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeviceDelta {
    pub reads: u64,
    pub sectors: u64,
    /// Milliseconds reads spent queued or in service (summed over reads).
    pub read_ms: u64,
    /// Milliseconds the device had any request in flight.
    pub busy_ms: u64,
}

impl DeviceDelta {
    pub fn avg_read_kib(&self) -> f64 {
        if self.reads == 0 {
            return 0.0;
        }
        self.sectors as f64 * 512.0 / 1024.0 / self.reads as f64
    }

    pub fn busy(&self, over: Duration) -> f64 {
        self.busy_ms as f64 / (over.as_secs_f64() * 1000.0).max(1e-9)
    }

    pub fn avg_queue(&self, over: Duration) -> f64 {
        self.read_ms as f64 / (over.as_secs_f64() * 1000.0).max(1e-9)
    }
}

/// The block device counters of the device holding `path` (`/sys/dev/block/M:m/stat`).
#[derive(Debug, Clone)]
pub struct DeviceStat {
    stat_path: PathBuf,
}

impl DeviceStat {
    pub fn of(path: &Path) -> Option<DeviceStat> {
        let dev = std::fs::metadata(path).ok()?.dev();
        let stat_path = PathBuf::from(format!(
            "/sys/dev/block/{}:{}/stat",
            libc::major(dev),
            libc::minor(dev)
        ));
        stat_path.exists().then_some(DeviceStat { stat_path })
    }

    fn sample(&self) -> Option<[u64; 11]> {
        let text = std::fs::read_to_string(&self.stat_path).ok()?;
        let mut v = [0u64; 11];
        let mut fields = text.split_whitespace();
        for slot in &mut v {
            *slot = fields.next()?.parse().ok()?;
        }
        Some(v)
    }
}

fn delta(a: Option<[u64; 11]>, b: Option<[u64; 11]>) -> Option<DeviceDelta> {
    let (a, b) = (a?, b?);
    let d = |i: usize| b[i].saturating_sub(a[i]);
    Some(DeviceDelta {
        reads: d(0),
        sectors: d(2),
        read_ms: d(3),
        busy_ms: d(9),
    })
}

/// How the page cache is emptied before a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cold {
    /// `sync`, then `echo 3 > /proc/sys/vm/drop_caches` (as root; else as [`Cold::Files`]).
    DropCaches,
    /// `posix_fadvise(DONTNEED)` on the files read (tests: leaves the machine's cache alone).
    Files,
}

/// Empties the page cache of `files` (all of it with [`Cold::DropCaches`] as root).
pub fn drop_cache(files: &[PathBuf], cold: Cold) -> io::Result<&'static str> {
    if cold == Cold::DropCaches {
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        if std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok() {
            return Ok("dropped");
        }
    }
    for p in files {
        let f = File::open(p)?;
        // SAFETY: fadvise on a descriptor we own; the range 0..0 means the whole file.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
    }
    Ok(if cold == Cold::DropCaches {
        "fadvise-dontneed (not root)"
    } else {
        "fadvise-dontneed"
    })
}

/// The next reads of a sequential walk over several files.
struct Cursor {
    files: Vec<(File, u64)>,
    file: usize,
    pos: u64,
    left: u64,
}

impl Cursor {
    fn new(paths: &[PathBuf], direct: bool, limit: u64) -> io::Result<Cursor> {
        let mut files = Vec::with_capacity(paths.len());
        for p in paths {
            let mut o = std::fs::OpenOptions::new();
            o.read(true);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            let f = o.open(p)?;
            let len = f.metadata()?.len();
            files.push((f, len));
        }
        Ok(Cursor {
            files,
            file: 0,
            pos: 0,
            left: limit,
        })
    }

    /// (file index, position, length) of the next read of at most `max` bytes; lengths are
    /// rounded up to the alignment (a direct read past the end returns short).
    fn next(&mut self, max: usize) -> Option<(usize, u64, usize)> {
        while self.left > 0 {
            let (_, len) = self.files.get(self.file)?;
            if self.pos >= *len {
                self.file += 1;
                self.pos = 0;
                continue;
            }
            let n = (max as u64).min(len - self.pos).min(self.left);
            let n = n.div_ceil(ALIGN as u64) * ALIGN as u64;
            let at = (self.file, self.pos, n as usize);
            self.pos += n;
            self.left = self.left.saturating_sub(n);
            return Some(at);
        }
        None
    }
}

/// A heap buffer aligned for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> io::Result<Aligned> {
        let layout = std::alloc::Layout::from_size_align(len.max(ALIGN), ALIGN)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "aligned buffer"));
        }
        Ok(Aligned { ptr, layout })
    }
}

/// A read buffer of either kind.
enum Buffer {
    Heap(Aligned),
    Huge(ringmq_engine::io::AlignedBuf),
}

impl Buffer {
    fn ptr(&mut self) -> *mut u8 {
        match self {
            Buffer::Heap(a) => a.ptr,
            Buffer::Huge(b) => b.as_mut_ptr(),
        }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

fn check(shape: &Shape) -> io::Result<()> {
    let ok = shape.depth >= 1
        && shape.depth <= MAX_DEPTH
        && shape.read_bytes >= ALIGN
        && shape.read_bytes <= MAX_READ_BYTES
        && shape.read_bytes.is_multiple_of(ALIGN);
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad shape {shape:?} (depth 1..={MAX_DEPTH}, read a multiple of 4 KiB up to {MAX_READ_BYTES})"),
        ))
    }
}

/// One run: empty the cache, read up to `limit` bytes of `files` in order the given way.
pub fn run(files: &[PathBuf], shape: Shape, limit: u64, cold: Cold) -> io::Result<Outcome> {
    check(&shape)?;
    let dev = files.first().and_then(|p| DeviceStat::of(p));
    let dropped = drop_cache(files, cold)?;
    let before = dev.as_ref().and_then(DeviceStat::sample);
    let t0 = Instant::now();
    let bytes = match shape.way {
        Way::Direct => read_direct(files, shape, limit, false)?,
        Way::DirectThp => read_direct(files, shape, limit, true)?,
        Way::Glommio => {
            let files = files.to_vec();
            executor::run(move || async move { read_glommio(&files, shape, limit).await })?
        }
        Way::Buffered { sequential } => read_buffered(files, shape, limit, sequential)?,
    };
    let elapsed = t0.elapsed();
    let after = dev.as_ref().and_then(DeviceStat::sample);
    Ok(Outcome {
        shape,
        bytes,
        elapsed,
        dropped,
        device: delta(before, after),
    })
}

fn read_direct(files: &[PathBuf], shape: Shape, limit: u64, thp: bool) -> io::Result<u64> {
    let mut cur = Cursor::new(files, true, limit)?;
    let entries = (shape.depth as u32).next_power_of_two().max(2);
    let mut ring = IoUring::new(entries)?;
    let mut bufs = (0..shape.depth)
        .map(|_| {
            if thp {
                let huge = shape
                    .read_bytes
                    .next_multiple_of(ringmq_engine::io::HUGE_PAGE_BYTES);
                ringmq_engine::io::AlignedBuf::new(huge).map(Buffer::Huge)
            } else {
                Aligned::new(shape.read_bytes).map(Buffer::Heap)
            }
        })
        .collect::<io::Result<Vec<_>>>()?;
    let mut in_flight = 0usize;
    let mut total = 0u64;
    // Buffer `i` is free when it has no read in flight.
    let mut free: Vec<usize> = (0..shape.depth).collect();
    loop {
        while let Some(i) = free.pop() {
            let Some((f, pos, len)) = cur.next(shape.read_bytes) else {
                break;
            };
            let fd = cur.files[f].0.as_raw_fd();
            let sqe = opcode::Read::new(types::Fd(fd), bufs[i].ptr(), len as u32)
                .offset(pos)
                .build()
                .user_data(i as u64);
            // SAFETY: the buffer stays allocated and unused until its completion is reaped
            // (it is not in `free` meanwhile); `bufs` outlives the ring's use of it.
            unsafe { ring.submission().push(&sqe) }
                .map_err(|_| io::Error::other("submission queue full"))?;
            in_flight += 1;
        }
        if in_flight == 0 {
            return Ok(total);
        }
        ring.submit_and_wait(1)?;
        for cqe in ring.completion() {
            in_flight -= 1;
            if cqe.result() < 0 {
                return Err(io::Error::from_raw_os_error(-cqe.result()));
            }
            total += cqe.result() as u64;
            free.push(cqe.user_data() as usize);
        }
    }
}

async fn read_glommio(files: &[PathBuf], shape: Shape, limit: u64) -> io::Result<u64> {
    let mut dma = Vec::with_capacity(files.len());
    for p in files {
        let f = glommio::io::DmaFile::open(p)
            .await
            .map_err(io::Error::from)?;
        let len = f.file_size().await.map_err(io::Error::from)?;
        dma.push((Rc::new(f), len));
    }
    // The walk is shared by the tasks: each takes the next read when its last one ends.
    let plain = Cursor::new(files, false, limit)?;
    let cur = Rc::new(std::cell::RefCell::new(plain));
    let total = Rc::new(Cell::new(0u64));
    let dma = Rc::new(dma);
    let tasks: Vec<_> = (0..shape.depth)
        .map(|_| {
            let (cur, total, dma) = (cur.clone(), total.clone(), dma.clone());
            glommio::spawn_local(async move {
                loop {
                    let next = cur.borrow_mut().next(shape.read_bytes);
                    let Some((f, pos, len)) = next else {
                        return Ok::<(), io::Error>(());
                    };
                    let r = dma[f]
                        .0
                        .read_at_aligned(pos, len)
                        .await
                        .map_err(io::Error::from)?;
                    total.set(total.get() + r.len() as u64);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    // The tasks are done: the files are ours alone again.
    if let Ok(dma) = Rc::try_unwrap(dma) {
        for (f, _) in dma {
            f.close_rc().await.map_err(io::Error::from)?;
        }
    }
    Ok(total.get())
}

fn read_buffered(files: &[PathBuf], shape: Shape, limit: u64, sequential: bool) -> io::Result<u64> {
    let mut cur = Cursor::new(files, false, limit)?;
    if sequential {
        for (f, _) in &cur.files {
            // SAFETY: fadvise on a descriptor we own; the range 0..0 means the whole file.
            let rc =
                unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
        }
    }
    let mut buf = vec![0u8; shape.read_bytes];
    let mut total = 0u64;
    while let Some((f, pos, len)) = cur.next(shape.read_bytes) {
        total += cur.files[f].0.read_at(&mut buf[..len], pos)? as u64;
    }
    Ok(total)
}

/// Writes a file of `bytes` (a multiple of 4 MiB, rounded up) of non-repeating data with
/// O_DIRECT and syncs it: the cold file the runs read when no files are given.
pub fn create_file(path: &Path, bytes: u64) -> io::Result<()> {
    const W: usize = 4 << 20;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let buf = Aligned::new(W)?;
    // SAFETY: `buf` owns W bytes; nothing else refers to them.
    let data = unsafe { std::slice::from_raw_parts_mut(buf.ptr, W) };
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut pos = 0u64;
    while pos < bytes {
        for w in data.chunks_exact_mut(8) {
            // xorshift: cheap bytes a host cannot deduplicate or compress away.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all_at(data, pos)?;
        pos += W as u64;
    }
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_way_reads_every_byte_of_the_files_once() {
        // Catches: a walk that skips or repeats reads across files, a limit not applied, a
        // read size rounded wrongly, a way that counts bytes it did not read.
        let dir = tempfile::tempdir().expect("temp dir");
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        create_file(&a, 4 << 20).expect("create a");
        create_file(&b, 8 << 20).expect("create b");
        let files = vec![a, b];
        for way in [
            Way::Direct,
            Way::DirectThp,
            Way::Glommio,
            Way::Buffered { sequential: true },
        ] {
            for (depth, read) in [(1, 1 << 20), (3, 768 << 10)] {
                let shape = Shape {
                    way,
                    depth: if matches!(way, Way::Buffered { .. }) {
                        1
                    } else {
                        depth
                    },
                    read_bytes: read,
                };
                let all = run(&files, shape, u64::MAX, Cold::Files).expect("run");
                assert_eq!(all.bytes, 12 << 20, "{shape:?}");
                let part = run(&files, shape, 5 << 20, Cold::Files).expect("run");
                assert!(
                    (5 << 20..(5 << 20) + read as u64).contains(&part.bytes),
                    "{shape:?}: {}",
                    part.bytes
                );
            }
        }
    }

    #[test]
    fn bad_shapes_are_refused() {
        // Catches: an unbounded depth or read size allocating without limit.
        for (depth, read) in [
            (0, 1 << 20),
            (MAX_DEPTH + 1, 1 << 20),
            (1, 1000),
            (1, MAX_READ_BYTES * 2),
        ] {
            let shape = Shape {
                way: Way::Direct,
                depth,
                read_bytes: read,
            };
            assert!(run(&[], shape, 1, Cold::Files).is_err(), "{shape:?}");
        }
    }
}
