//! The I/O scheduling class of backlog reads: the disk reads a catch-up consumer causes are
//! issued at a lower class than the log's writes, so that a read backlog queued in the block
//! layer does not delay appends.
//!
//! Linux takes a request's priority from the submitting thread's `ioprio_set(2)` setting (or
//! the io_uring SQE's, which glommio does not expose). The log's writes are submitted by the
//! executor thread with the default (best effort); backlog reads in `Readahead` mode, and the
//! page-cache reads of `Sendfile` mode's sends, run on glommio's blocking-pool threads, which
//! [`set_thread_read_priority`] moves to the idle class. The mq-deadline scheduler (this
//! machine's) dispatches idle-class requests only when no best-effort request waits, and
//! still within `prio_aging_expire` (10 s) of their arrival, so reads are never starved for
//! longer. Schedulers without priorities (`none`) ignore the class. Measured:
//! kernel-notes/the-disk.md and BENCHMARKS.md ("appends during a catch-up").

use std::cell::Cell;
use std::io;

/// Scheduling class of backlog reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ReadPriority {
    /// The idle class: served when no other request waits (the default).
    #[default]
    Idle,
    /// The thread's default (best effort, like the log's writes).
    Normal,
}

/// `ioprio_set(2)` "which": one thread (`who` 0 = the caller).
const IOPRIO_WHO_PROCESS: libc::c_int = 1;
/// Bit position of the class in an ioprio value.
const IOPRIO_CLASS_SHIFT: libc::c_int = 13;
/// "No class set": the thread's requests get the best-effort class from its CPU niceness.
const IOPRIO_CLASS_NONE: libc::c_int = 0;
const IOPRIO_CLASS_IDLE: libc::c_int = 3;

thread_local! {
    /// What this thread was last set to (a pool thread serves many reads: one syscall).
    static CURRENT: Cell<Option<ReadPriority>> = const { Cell::new(None) };
}

/// Sets the calling thread's I/O scheduling class for the reads it is about to issue, as
/// [`set_thread_read_priority`]; a failure is logged and the thread reads at its old class.
/// For the blocking-pool closures that read (engine) or send file ranges (broker).
pub fn apply_read_priority(p: ReadPriority) {
    if let Err(e) = set_thread_read_priority(p) {
        tracing::warn!(error = %e, priority = ?p, "setting a thread's I/O class failed");
    }
}

/// Sets the calling thread's I/O scheduling class for the reads it is about to issue. Tried
/// once per thread and class: after a failure (returned) the thread reads at its old class.
pub fn set_thread_read_priority(p: ReadPriority) -> io::Result<()> {
    if CURRENT.with(Cell::get) == Some(p) {
        return Ok(());
    }
    CURRENT.with(|c| c.set(Some(p)));
    let class = match p {
        ReadPriority::Idle => IOPRIO_CLASS_IDLE,
        ReadPriority::Normal => IOPRIO_CLASS_NONE,
    };
    // SAFETY: ioprio_set takes three integers and touches no memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0,
            class << IOPRIO_CLASS_SHIFT,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's I/O priority class as the kernel reports it (tests).
#[cfg(test)]
fn thread_class() -> io::Result<libc::c_int> {
    const IOPRIO_GET: libc::c_long = libc::SYS_ioprio_get;
    // SAFETY: as above.
    let r = unsafe { libc::syscall(IOPRIO_GET, IOPRIO_WHO_PROCESS, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((r as libc::c_int) >> IOPRIO_CLASS_SHIFT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_moves_to_the_idle_class_and_back() {
        std::thread::spawn(|| {
            set_thread_read_priority(ReadPriority::Idle).expect("idle");
            assert_eq!(thread_class().expect("get"), IOPRIO_CLASS_IDLE);
            set_thread_read_priority(ReadPriority::Normal).expect("normal");
            assert_ne!(thread_class().expect("get"), IOPRIO_CLASS_IDLE);
        })
        .join()
        .expect("thread");
    }
}
