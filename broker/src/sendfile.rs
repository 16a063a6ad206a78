//! Writing a response that holds file ranges (`--fetch-backlog-read sendfile`): the bytes
//! parts with `sendmsg`, the file ranges with `sendfile(2)` from the page cache, in order, on
//! the executor's blocking-thread pool. With `--fetch-send zc` the pool thread sends with
//! io_uring SEND_ZC instead (`send_zc` module; it also takes large in-memory responses).
//!
//! ```text
//!  write loop (executor)            blocking pool thread (pinned to the same cpu)
//!   flush its buffer
//!   dup(socket) ─ take a send slot ──► sendmsg(header parts, MSG_MORE)
//!   await ◄────────────────────────┐   sendfile(segment fd, batch range)  ... in order
//!   next response                  └── Ok / Err (stall, peer gone): connection closed
//! ```
//!
//! Why a thread: sendfile blocks the caller while it reads pages that are not cached (only
//! the socket side can be non-blocking), and the executor thread must never block — it runs
//! the core's appends (kernel-notes/sendfile-and-splice.md).
//!
//! Invariants:
//! - The socket is a `dup` taken while the connection's write half is alive: if the
//!   connection is dropped meanwhile, the thread still writes to the same socket (and fails
//!   on it), never to a reused descriptor number.
//! - At most [`MAX_FILE_SENDS_PER_CORE`] sends run per core, one fewer than the pool's
//!   [`BLOCKING_THREADS_PER_CORE`] threads: glommio runs its own blocking file operations
//!   (the rename of a prepared segment at a roll, with the append lock held; unlinks) on the
//!   same pool, and they must always find a free thread.
//! - A send that makes no progress for [`FILE_SEND_STALL_TIMEOUT`] fails (the socket gets
//!   `SO_SNDTIMEO`, so even a blocking send returns): a consumer that stops reading frees
//!   its thread and loses its connection.
//! - Memory: the response's parts only (bytes refcounted, files `Arc`s); nothing is copied.
//! - Disk: a send keeps at most [`FILE_READ_AHEAD_BYTES`] of page-cache reads requested ahead
//!   of the range it sends (so the log's writes never queue behind a deep pile of reads), and
//!   never advises past the engine's tail margin.

use crate::config::FetchSend;
use crate::iov;
use glommio::sync::Semaphore;
use glommio::{CpuSet, PoolPlacement};
use ringmq_engine::{FileRange, Part, ReadPriority};
use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Threads in each executor's blocking pool, pinned to the executor's cpu.
pub const BLOCKING_THREADS_PER_CORE: usize = 4;
/// File-range responses being sent at once per core (see the module docs).
pub const MAX_FILE_SENDS_PER_CORE: usize = BLOCKING_THREADS_PER_CORE - 1;
/// A response send that makes no progress this long fails and the connection closes.
pub const FILE_SEND_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Page-cache reads a send keeps requested ahead of the end of the range it is sending.
/// Bounded so the log's writes never queue behind a deep pile of reads: advising a whole
/// response's span (16-32 MiB) at once read as fast but delayed appends on the same core by
/// 0.09-2.5 s at the median; 8 MiB ahead read at 0.8-1.0 GB/s with appends at p50 3.2 ms
/// (readahead mode: 5.4-6.4 ms), 4 MiB ahead a little slower (BENCHMARKS.md, Issue 5,
/// session 3). No more than the engine's tail margin, so an advice never reaches blocks the
/// appender still writes.
pub const FILE_READ_AHEAD_BYTES: u64 = 8 << 20;
/// Smallest advice issued (fewer, larger device requests; 4 MiB is the disk's largest here).
const MIN_ADVICE_BYTES: u64 = 2 << 20;
const _: () = assert!(FILE_READ_AHEAD_BYTES <= ringmq_engine::SENDFILE_TAIL_MARGIN_BYTES);

thread_local! {
    static SEND_SLOTS: Rc<Semaphore> = Rc::new(Semaphore::new(MAX_FILE_SENDS_PER_CORE as u64));
    /// I/O class of the page-cache reads this executor's pool sends cause (`--fetch-read-priority`).
    static READ_PRIORITY: Cell<ReadPriority> = const { Cell::new(ReadPriority::Idle) };
}

/// Sets the I/O class of the disk reads that this executor's sends of file ranges cause (a
/// cold page read by sendfile is read by the sending thread). Call on the executor thread.
pub fn set_read_priority(p: ReadPriority) {
    READ_PRIORITY.with(|c| c.set(p));
}

/// The blocking-pool placement for the executor on `cpu`: [`BLOCKING_THREADS_PER_CORE`]
/// threads on that cpu (so a broker given one core stays on it).
pub fn blocking_pool_placement(cpu: usize) -> PoolPlacement {
    match CpuSet::online() {
        Ok(set) => {
            let one = set.filter(|l| l.cpu == cpu);
            PoolPlacement::Custom(vec![one; BLOCKING_THREADS_PER_CORE])
        }
        Err(_) => PoolPlacement::Unbound(BLOCKING_THREADS_PER_CORE),
    }
}

/// Sends `parts` in order on socket `sock` from a blocking-pool thread and waits for it, with
/// sendmsg/sendfile (`FetchSend::Copy`) or SEND_ZC (`FetchSend::Zc`). The caller must have
/// written (flushed) everything that goes before, and must write nothing else on the socket
/// until this returns.
pub async fn send_parts(sock: RawFd, parts: Vec<Part>, send: FetchSend) -> io::Result<()> {
    let slots = SEND_SLOTS.with(Rc::clone);
    let _slot = slots
        .acquire_permit(1)
        .await
        .map_err(|_| io::Error::other("send slots closed"))?;
    // SAFETY: `sock` is the connection's socket, open while the caller's write half lives
    // (it does: the caller awaits this); dup gives the thread a descriptor of its own.
    let fd = unsafe { libc::dup(sock) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by dup and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // Bounds a blocking send (glommio's own sends never block, so only ours see it).
    socket2::SockRef::from(&sock).set_write_timeout(Some(FILE_SEND_STALL_TIMEOUT))?;
    // Counted until the closure is gone (run, or dropped unrun), even if this future is dropped
    // meanwhile (the connection closed): shutdown waits for it (`pool_sends_settled`).
    let counted = PoolSend::start();
    let priority = READ_PRIORITY.with(Cell::get);
    glommio::executor()
        .spawn_blocking(move || {
            let _counted = counted;
            ringmq_engine::io::apply_read_priority(priority);
            match send {
                FetchSend::Copy => send_blocking(&sock, &parts, FILE_SEND_STALL_TIMEOUT),
                FetchSend::Zc => {
                    crate::send_zc::send_blocking(&sock, &parts, FILE_SEND_STALL_TIMEOUT)
                }
            }
        })
        .await
}

/// Sends running on blocking-pool threads, in the whole process.
static POOL_SENDS: AtomicUsize = AtomicUsize::new(0);

/// One pool send counted in [`POOL_SENDS`] for as long as it lives.
struct PoolSend;

impl PoolSend {
    fn start() -> PoolSend {
        POOL_SENDS.fetch_add(1, Ordering::AcqRel);
        PoolSend
    }
}

impl Drop for PoolSend {
    fn drop(&mut self) {
        POOL_SENDS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Waits until no blocking-pool send is running, at most `limit`. An executor must not end
/// while its pool thread still sends: the thread's answer then has nowhere to go (glommio's
/// pool thread panics). Each send ends within its stall timeout.
pub async fn pool_sends_settled(limit: Duration) {
    let deadline = Instant::now() + limit;
    while POOL_SENDS.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

/// Writes the parts in order: runs of bytes parts with one `sendmsg` each (`MSG_MORE` when
/// more follows), file ranges with `sendfile`.
pub(crate) fn send_blocking(sock: &OwnedFd, parts: &[Part], stall: Duration) -> io::Result<()> {
    let mut ahead = ReadAhead::default();
    for (run, more) in runs(parts) {
        match run {
            Run::File(f) => {
                ahead.before(f);
                send_file(sock, f, stall)?;
            }
            Run::Bytes(bytes) => {
                let slices: Vec<&[u8]> = bytes.iter().map(|b| &b[..]).collect();
                send_bytes(sock, &slices, more, stall)?;
            }
        }
    }
    Ok(())
}

/// A response's parts as the senders take them: each file range alone, each run of
/// consecutive bytes parts together.
pub(crate) enum Run<'p> {
    File(&'p FileRange),
    Bytes(Vec<&'p bytes::Bytes>),
}

/// The runs of `parts` in order, each with whether anything follows it.
pub(crate) fn runs(parts: &[Part]) -> impl Iterator<Item = (Run<'_>, bool)> {
    let mut i = 0;
    std::iter::from_fn(move || {
        let run = match parts.get(i)? {
            Part::File(f) => {
                i += 1;
                Run::File(f)
            }
            Part::Bytes(_) => {
                let end = parts[i..]
                    .iter()
                    .position(|p| matches!(p, Part::File(_)))
                    .map_or(parts.len(), |k| i + k);
                let run = parts[i..end].iter().filter_map(Part::as_bytes).collect();
                i = end;
                Run::Bytes(run)
            }
        };
        Some((run, i < parts.len()))
    })
}

/// Keeps page-cache reads requested ([`FILE_READ_AHEAD_BYTES`] ahead) for the file ranges a
/// send goes through (`POSIX_FADV_WILLNEED`: reads are queued, not waited for). Why: one
/// partition's batches are small ranges far apart in the shared log; sent one by one from a
/// cold file they often missed the kernel's sequential-readahead detection and became
/// ~0.4 MiB device reads, with the disk idle between them. A failed advice only costs speed.
#[derive(Default)]
pub(crate) struct ReadAhead<'a> {
    /// Per file of the response: the position up to which reads were requested.
    advised: Vec<(&'a std::fs::File, u64)>,
}

impl<'a> ReadAhead<'a> {
    pub(crate) fn before(&mut self, f: &'a FileRange) {
        let end = f.pos + f.len as u64;
        let want = end + FILE_READ_AHEAD_BYTES;
        let k = match self
            .advised
            .iter()
            .position(|a| std::ptr::eq(a.0, &*f.file))
        {
            Some(k) => k,
            None => {
                self.advised.push((&f.file, f.pos));
                self.advised.len() - 1
            }
        };
        let from = self.advised[k].1.max(f.pos);
        if end <= self.advised[k].1 && want < from + MIN_ADVICE_BYTES {
            return;
        }
        self.advised[k].1 = want;
        let (Ok(at), Ok(len)) = (
            libc::off_t::try_from(from),
            libc::off_t::try_from(want - from),
        ) else {
            return;
        };
        // SAFETY: advice on a descriptor the range keeps open; no memory is passed.
        let _ =
            unsafe { libc::posix_fadvise(f.file.as_raw_fd(), at, len, libc::POSIX_FADV_WILLNEED) };
    }
}

/// Writes `bufs` in order with `sendmsg` (`MSG_MORE` when `more`): the kernel copies them.
pub(crate) fn send_bytes(
    sock: &OwnedFd,
    bufs: &[&[u8]],
    more: bool,
    stall: Duration,
) -> io::Result<()> {
    let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    // Point into `bufs`, alive and unchanged across every call below.
    let all = iov::iovecs(bufs.iter().copied());
    let len = iov::total(&all);
    let mut sent = 0;
    let mut progress = Instant::now();
    while sent < len {
        let rest = iov::iovecs_from(&all, sent, iov::MAX_IOVECS);
        match iov::sendmsg(sock.as_raw_fd(), &rest, flags) {
            Ok(n) => {
                sent += n;
                progress = Instant::now();
            }
            Err(e) => retry_or_fail_on(sock, e, &mut progress, stall)?,
        }
    }
    Ok(())
}

/// Writes the file range with `sendfile(2)` (page cache to socket).
pub(crate) fn send_file(sock: &OwnedFd, f: &FileRange, stall: Duration) -> io::Result<()> {
    let mut off = libc::off_t::try_from(f.pos).map_err(|_| io::Error::other("file position"))?;
    let mut left = f.len;
    let mut progress = Instant::now();
    while left > 0 {
        // SAFETY: both descriptors are open for the call (the socket is ours, the file is
        // held by `f`); `off` is a valid pointer the kernel advances.
        let n = unsafe { libc::sendfile(sock.as_raw_fd(), f.file.as_raw_fd(), &mut off, left) };
        if n < 0 {
            retry_or_fail(sock, &mut progress, stall)?;
            continue;
        }
        if n == 0 {
            // The file ends before the range: the index promised bytes that are not there.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "segment shorter than the indexed batch",
            ));
        }
        progress = Instant::now();
        left -= n as usize;
    }
    Ok(())
}

/// After a failed send call: EINTR retries; EAGAIN waits for the socket to take more, up to
/// the stall timeout since the last progress; anything else (EPIPE, ECONNRESET) fails.
fn retry_or_fail(sock: &OwnedFd, progress: &mut Instant, stall: Duration) -> io::Result<()> {
    retry_or_fail_on(sock, io::Error::last_os_error(), progress, stall)
}

/// [`retry_or_fail`] for an error the caller already has (an io_uring completion's `-errno`).
pub(crate) fn retry_or_fail_on(
    sock: &OwnedFd,
    e: io::Error,
    progress: &mut Instant,
    stall: Duration,
) -> io::Result<()> {
    match e.raw_os_error() {
        Some(libc::EINTR) => Ok(()),
        Some(libc::EAGAIN) => {
            let left = stall.saturating_sub(progress.elapsed());
            if left.is_zero() {
                return Err(stalled());
            }
            let mut pfd = libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
            // SAFETY: one pollfd we own.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            match rc {
                0 => Err(stalled()),
                n if n < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) => {
                    Err(io::Error::last_os_error())
                }
                _ => Ok(()),
            }
        }
        _ => Err(e),
    }
}

pub(crate) fn stalled() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no send progress for {FILE_SEND_STALL_TIMEOUT:?}"),
    )
}
