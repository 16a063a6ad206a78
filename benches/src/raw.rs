//! The raw O_DIRECT sequential-write loop: what the disk gives a program that does nothing but
//! write one preallocated file front to back, `in_flight` writes of `write_bytes` at a time,
//! through the same glommio `DmaFile` path the engine uses. Engine throughput is quoted as a
//! ratio to this loop measured in the same run, with the same write size.

use std::cell::Cell;
use std::io;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::io::DmaFile;

/// Most writes the raw loop keeps in flight (the fio sweet spot here is queue depth 8–16).
pub const MAX_IN_FLIGHT: usize = 64;

/// Overrides the executor's registered I/O memory, in KiB. Default: what the engine asks for,
/// `ringmq_engine::recommended_io_memory_bytes()`, as the broker's executors get it. A write
/// from a buffer outside the registered memory costs more than the same write from inside it
/// (kernel-notes/o-direct-and-page-cache.md), so every bench prints the size it ran with.
pub const IO_MEMORY_KIB_ENV: &str = "RINGMQ_BENCH_IO_MEMORY_KIB";

/// The io_memory a bench executor gets: [`IO_MEMORY_KIB_ENV`] if set, else the engine's
/// recommendation.
pub fn io_memory_from_env() -> usize {
    std::env::var(IO_MEMORY_KIB_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or_else(ringmq_engine::recommended_io_memory_bytes, |kib| {
            (kib << 10).max(crate::executor::IO_MEMORY_MIN_BYTES)
        })
}

/// One raw run: `total_bytes` written as `write_bytes` writes, `in_flight` at a time.
#[derive(Debug, Clone, Copy)]
pub struct RawWriteSpec {
    pub write_bytes: usize,
    pub total_bytes: u64,
    pub in_flight: usize,
    pub layout: FileLayout,
}

/// How the file's blocks exist before the timed writes; ext4 treats the three very differently
/// (kernel-notes/o-direct-and-page-cache.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileLayout {
    /// fallocate'd: blocks reserved but unwritten. Each write must convert extents, which ext4
    /// does under the exclusive inode lock, so concurrent writes serialise.
    Fallocated,
    /// Zero-filled and synced before timing: the timed writes are pure overwrites, which ext4
    /// runs under the shared inode lock, in parallel.
    Zeroed,
    /// Empty file: every write extends it (exclusive lock, size update).
    Growing,
}

impl FileLayout {
    pub const ALL: [FileLayout; 3] = [
        FileLayout::Fallocated,
        FileLayout::Zeroed,
        FileLayout::Growing,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FileLayout::Fallocated => "fallocated",
            FileLayout::Zeroed => "zeroed",
            FileLayout::Growing => "growing",
        }
    }
}

/// Bytes moved and the time it took.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Throughput {
    pub fn mb_per_s(&self) -> f64 {
        crate::mb_per_s(self.bytes, self.elapsed)
    }
}

/// Writes a fresh preallocated file in `dir` sequentially and returns the throughput. The file
/// is removed afterwards. Must run inside a glommio executor.
pub async fn sequential_write(dir: &Path, spec: RawWriteSpec) -> io::Result<Throughput> {
    assert!(
        spec.write_bytes / 4096 * 4096 == spec.write_bytes
            && spec.total_bytes / spec.write_bytes as u64 * spec.write_bytes as u64
                == spec.total_bytes,
        "raw write size {} must be 4 KiB-aligned and divide the total {}",
        spec.write_bytes,
        spec.total_bytes
    );
    assert!(
        (1..=MAX_IN_FLIGHT).contains(&spec.in_flight),
        "in_flight {} outside 1..={MAX_IN_FLIGHT}",
        spec.in_flight
    );
    let path = dir.join(format!(
        "raw-{}-{}.dat",
        spec.write_bytes,
        std::process::id()
    ));
    let file = Rc::new(DmaFile::create(&path).await?);
    prepare_layout(&file, spec.layout, spec.total_bytes).await?;

    let next_pos = Rc::new(Cell::new(0u64));
    let started = Instant::now();
    let writers: Vec<_> = (0..spec.in_flight)
        .map(|i| glommio::spawn_local(write_until_full(file.clone(), next_pos.clone(), spec, i)))
        .collect();
    let mut first_error = None;
    for w in writers {
        if let Err(e) = w.await {
            first_error.get_or_insert(e);
        }
    }
    let elapsed = started.elapsed();
    drop(Rc::try_unwrap(file).map(|f| f.close()));
    let _ = std::fs::remove_file(&path);
    match first_error {
        Some(e) => Err(e),
        None => Ok(Throughput {
            bytes: spec.total_bytes,
            elapsed,
        }),
    }
}

/// Brings the file to `layout` (untimed).
pub async fn prepare_layout(
    file: &DmaFile,
    layout: FileLayout,
    total_bytes: u64,
) -> io::Result<()> {
    const ZERO_CHUNK_BYTES: usize = 1 << 20;
    match layout {
        FileLayout::Growing => Ok(()),
        FileLayout::Fallocated => Ok(file.pre_allocate(total_bytes, false).await?),
        FileLayout::Zeroed => {
            file.pre_allocate(total_bytes, false).await?;
            let mut pos = 0;
            while pos < total_bytes {
                let len = ZERO_CHUNK_BYTES.min((total_bytes - pos) as usize);
                let mut zero = file.alloc_dma_buffer(len);
                zero.as_bytes_mut().fill(0);
                file.write_at(zero, pos).await?;
                pos += len as u64;
            }
            Ok(file.fdatasync().await?)
        }
    }
}

/// One of the `in_flight` writers: claims the next position, writes its buffer there, repeats.
/// Positions are claimed in order, so the device sees one sequential stream.
async fn write_until_full(
    file: Rc<DmaFile>,
    next_pos: Rc<Cell<u64>>,
    spec: RawWriteSpec,
    writer: usize,
) -> io::Result<()> {
    let mut buf = file.alloc_dma_buffer(spec.write_bytes);
    fill_pattern(buf.as_bytes_mut(), writer as u64);
    let buf = Rc::new(buf);
    loop {
        let pos = next_pos.get();
        if pos >= spec.total_bytes {
            return Ok(());
        }
        next_pos.set(pos + spec.write_bytes as u64);
        let written = file.write_rc_at(buf.clone(), pos).await?;
        if written != spec.write_bytes {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "short O_DIRECT write: {written} of {} at {pos}",
                    spec.write_bytes
                ),
            ));
        }
    }
}

/// Non-zero, non-repeating-per-page bytes, so no layer can shortcut zero pages.
pub fn fill_pattern(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}
