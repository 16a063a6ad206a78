//! Runs a future on one glommio executor whose registered I/O memory fits under
//! `RLIMIT_MEMLOCK`. glommio's default (10 MiB) is more than this machine's 8 MiB limit; buffer
//! registration then fails and DMA reads return EOPNOTSUPP (kernel-notes/io-uring-memlock.md).

use std::future::Future;

/// Most I/O memory we ask glommio to register, even where memlock allows more.
pub const IO_MEMORY_MAX_BYTES: usize = 4 << 20;

/// Least I/O memory glommio accepts (it rounds smaller values up to this).
pub const IO_MEMORY_MIN_BYTES: usize = 64 << 10;

/// The soft `RLIMIT_MEMLOCK` in bytes; `None` when unlimited or unreadable.
pub fn memlock_limit_bytes() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if rc != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(lim.rlim_cur)
}

/// I/O memory that fits: half the memlock limit (glommio also locks ring memory), at most
/// [`IO_MEMORY_MAX_BYTES`].
pub fn io_memory_bytes() -> usize {
    match memlock_limit_bytes() {
        None => IO_MEMORY_MAX_BYTES,
        Some(limit) => {
            let half = usize::try_from(limit / 2).unwrap_or(IO_MEMORY_MAX_BYTES);
            half.clamp(IO_MEMORY_MIN_BYTES, IO_MEMORY_MAX_BYTES)
        }
    }
}

/// Runs `make()` on a fresh executor thread with the given I/O memory and returns its output.
pub fn run_with_io_memory<G, F, T>(io_memory: usize, make: G) -> T
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("ringmq-bench")
        .io_memory(io_memory)
        .spawn(make)
        .expect("spawning a glommio executor")
        .join()
        .expect("joining the glommio executor")
}

/// Runs `make()` on a fresh executor sized by [`io_memory_bytes`].
pub fn run<G, F, T>(make: G) -> T
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    run_with_io_memory(io_memory_bytes(), make)
}
