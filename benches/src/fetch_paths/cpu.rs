//! Per-thread CPU time and core pinning: the serving side runs on core 0, the consumer on core
//! 1, so the CPU a mechanism saves shows on the serving thread's clock.

use std::time::Duration;

/// Core the serving thread (or glommio executor) is pinned to.
pub const SERVER_CPU: usize = 0;
/// Core the consumer thread is pinned to (when the machine has one).
pub const CONSUMER_CPU: usize = 1;

/// user + system CPU time consumed so far by the calling thread.
pub fn thread_cpu() -> Duration {
    rusage_cpu(libc::RUSAGE_THREAD)
}

/// user + system CPU time consumed so far by the whole process, including io_uring's worker
/// threads (they belong to the process).
pub fn process_cpu() -> Duration {
    rusage_cpu(libc::RUSAGE_SELF)
}

fn rusage_cpu(who: libc::c_int) -> Duration {
    // SAFETY: an all-zero rusage is a valid value; getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid `who` and out pointer.
    let rc = unsafe { libc::getrusage(who, &mut ru) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Pins the calling thread to `cpu` if the machine has it; best effort (a failure only makes
/// the figures noisier).
pub fn pin_current_thread(cpu: usize) {
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpu >= online {
        return;
    }
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
