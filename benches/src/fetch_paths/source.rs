//! The served file: a deterministic pattern (every 8-byte word encodes its own position, so a
//! fetch sent from the wrong offset changes the consumer's crc), plus the page-cache controls
//! that make a run "tail" (fully cached) or "backlog" (not cached).
//!
//! Dropping the cache uses fdatasync + `posix_fadvise(POSIX_FADV_DONTNEED)` on this one file,
//! not `echo 3 > /proc/sys/vm/drop_caches`: the machine is shared, and dropping every cache
//! would slow everyone's builds and disturb their measurements. Residency is checked with
//! mincore(2) before each run and printed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{io_err, FetchBenchError};

/// Seed of the file pattern.
pub const PATTERN_SEED: u64 = 0x5249_4e47_4d51_0001;

/// Chunk used to write, read and checksum the file.
const CHUNK_BYTES: usize = 1 << 20;

const PAGE_BYTES: usize = 4096;

/// Residency at or under which the file counts as out of the page cache.
pub const COLD_RESIDENCY_MAX: f64 = 0.01;
/// Tries at dropping the file from the cache before the run goes on (and reports residency).
const DROP_ATTEMPTS: usize = 20;
const DROP_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

pub struct TestFile {
    pub path: PathBuf,
    pub bytes: u64,
    file: File,
}

impl TestFile {
    /// Writes `bytes` of the pattern to a new file in `dir` and syncs it.
    pub fn create(dir: &Path, bytes: u64) -> Result<TestFile, FetchBenchError> {
        let path = dir.join(format!("fetch-paths-{}.dat", std::process::id()));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("creating the served file"))?;
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut pos = 0u64;
        while pos < bytes {
            let len = CHUNK_BYTES.min((bytes - pos) as usize);
            fill_pattern(&mut buf[..len], pos);
            file.write_all(&buf[..len])
                .map_err(io_err("writing the served file"))?;
            pos += len as u64;
        }
        file.sync_all().map_err(io_err("syncing the served file"))?;
        Ok(TestFile { path, bytes, file })
    }

    /// Reads the whole file into one resident `Bytes` (the tail cache's copy).
    pub fn load(&self) -> Result<Bytes, FetchBenchError> {
        let len = usize::try_from(self.bytes).map_err(|_| {
            FetchBenchError::BadPlan(format!("{} B does not fit in memory", self.bytes))
        })?;
        let mut v = vec![0u8; len];
        self.file
            .read_exact_at(&mut v, 0)
            .map_err(io_err("loading the served file"))?;
        Ok(Bytes::from(v))
    }

    /// Brings every page of the file into the page cache.
    pub fn warm(&self) -> Result<(), FetchBenchError> {
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut pos = 0u64;
        while pos < self.bytes {
            let len = CHUNK_BYTES.min((self.bytes - pos) as usize);
            self.file
                .read_exact_at(&mut buf[..len], pos)
                .map_err(io_err("warming the served file"))?;
            pos += len as u64;
        }
        Ok(())
    }

    /// Drops the file's pages from the page cache and waits until mincore confirms it. Pages
    /// still referenced elsewhere cannot be dropped: sendfile/splice pages sit in the previous
    /// connection's TCP retransmit queue until its last ACK, so a few retries are normal.
    pub fn drop_from_page_cache(&self) -> Result<f64, FetchBenchError> {
        let mut residency = 1.0;
        for _ in 0..DROP_ATTEMPTS {
            self.fadvise_dontneed()?;
            residency = page_cache_residency(&self.path)?;
            if residency <= COLD_RESIDENCY_MAX {
                break;
            }
            std::thread::sleep(DROP_RETRY_PAUSE);
        }
        Ok(residency)
    }

    fn fadvise_dontneed(&self) -> Result<(), FetchBenchError> {
        self.file
            .sync_data()
            .map_err(io_err("fdatasync before dropping the cache"))?;
        // SAFETY: a valid fd; offset 0 / len 0 means the whole file.
        let rc =
            unsafe { libc::posix_fadvise(self.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(io_err("posix_fadvise(DONTNEED)")(
                std::io::Error::from_raw_os_error(rc),
            ));
        }
        Ok(())
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Fraction (0..=1) of the file's pages resident in the page cache, by mincore(2).
pub fn page_cache_residency(path: &Path) -> Result<f64, FetchBenchError> {
    let file = File::open(path).map_err(io_err("opening for mincore"))?;
    let len = file.metadata().map_err(io_err("stat for mincore"))?.len() as usize;
    if len == 0 {
        return Ok(0.0);
    }
    // SAFETY: a read-only shared mapping of a file we hold open, unmapped below; mincore only
    // writes one byte per page into `vec`, which has exactly that many.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        if addr == libc::MAP_FAILED {
            return Err(io_err("mmap for mincore")(std::io::Error::last_os_error()));
        }
        let pages = len.div_ceil(PAGE_BYTES);
        let mut vec = vec![0u8; pages];
        let rc = libc::mincore(addr, len, vec.as_mut_ptr());
        let err = std::io::Error::last_os_error();
        libc::munmap(addr, len);
        if rc != 0 {
            return Err(io_err("mincore")(err));
        }
        let resident = vec.iter().filter(|&&b| b & 1 == 1).count();
        Ok(resident as f64 / pages as f64)
    }
}

/// Writes the pattern for file offset `start` (a multiple of 8) into `buf`.
pub fn fill_pattern(buf: &mut [u8], start: u64) {
    assert!(
        start.is_multiple_of(8) && buf.len().is_multiple_of(8),
        "pattern is word-aligned"
    );
    for (i, word) in buf.chunks_exact_mut(8).enumerate() {
        let index = start / 8 + i as u64;
        let v = (index ^ PATTERN_SEED).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        word.copy_from_slice(&v.to_le_bytes());
    }
}

/// crc32c of a `bytes`-long file of the pattern, computed without reading the file.
pub fn pattern_crc(bytes: u64) -> u32 {
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut crc = 0;
    let mut pos = 0u64;
    while pos < bytes {
        let len = CHUNK_BYTES.min((bytes - pos) as usize);
        fill_pattern(&mut buf[..len], pos);
        crc = crc32c::crc32c_append(crc, &buf[..len]);
        pos += len as u64;
    }
    crc
}

/// The baselines' buffer: the first fetch of the pattern.
pub fn baseline_chunk(fetch_bytes: usize) -> Vec<u8> {
    let mut buf = vec![0u8; fetch_bytes];
    fill_pattern(&mut buf, 0);
    buf
}

/// crc32c of the baselines' stream: the first `fetch_bytes` of the pattern, repeated.
pub fn repeated_chunk_crc(fetch_bytes: usize, total: u64) -> u32 {
    let chunk = baseline_chunk(fetch_bytes);
    (0..total / fetch_bytes as u64).fold(0, |crc, _| crc32c::crc32c_append(crc, &chunk))
}
