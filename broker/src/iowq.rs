//! Where the kernel runs the io_uring work an executor cannot finish inline: its io-wq workers.
//!
//! io_uring completes socket operations and most O_DIRECT writes inline, but every fdatasync
//! (and any write that would block) is handed to an io-wq worker, a kernel thread of the
//! *submitting thread*. By default the workers start with the executor's pinning, so they share
//! its core: each fdatasync wakes a worker there, which preempts the executor (context switches
//! and run-queue wait on the produce path; see kernel-notes/io-uring-iowq.md).
//!
//! `IORING_REGISTER_IOWQ_AFF` sets the CPUs of the calling thread's io-wq (one per submitting
//! thread, shared by all of its rings), `IORING_REGISTER_IOWQ_MAX_WORKERS` caps its workers.
//! glommio does not expose its rings, so [`apply`] finds io_uring descriptors of the process in
//! `/proc/self/fd` and registers through the first one that accepts: whichever ring it is, the
//! kernel applies the setting to the caller's io-wq. It must run on the executor thread, early
//! (only workers created afterwards get the new CPUs; idle ones exit within seconds).
//!
//! Trade-off: on this 2-core machine "other CPUs" is the load generator's core; on a many-core
//! host it is the other shards' cores, where a worker's wake-up preempts another executor
//! instead. A dedicated housekeeping CPU set (an explicit list) avoids both.

use std::io;

/// `IORING_REGISTER_IOWQ_AFF` (linux/io_uring.h, since 5.14).
const IORING_REGISTER_IOWQ_AFF: libc::c_uint = 17;
/// `IORING_REGISTER_IOWQ_MAX_WORKERS` (linux/io_uring.h, since 5.15).
const IORING_REGISTER_IOWQ_MAX_WORKERS: libc::c_uint = 19;
/// What `/proc/self/fd/N` links to for an io_uring instance.
const IO_URING_LINK: &str = "anon_inode:[io_uring]";
/// Highest CPU number a list may name (the size of `cpu_set_t`).
pub const MAX_CPU: usize = libc::CPU_SETSIZE as usize - 1;

/// Where an executor's io-wq workers may run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum IowqCpus {
    /// The kernel's default (the workers start with the executor's pinning).
    #[default]
    Inherit,
    /// Every online CPU except the executor's own.
    Others,
    /// These CPUs.
    List(Vec<usize>),
}

impl std::str::FromStr for IowqCpus {
    type Err = String;

    /// `inherit`, `others`, or a CPU list such as `1,3-5`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "inherit" => Ok(IowqCpus::Inherit),
            "others" => Ok(IowqCpus::Others),
            list => parse_cpu_list(list).map(IowqCpus::List),
        }
    }
}

impl<'de> serde::Deserialize<'de> for IowqCpus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses a kernel-style CPU list (`0,2-4`); every CPU at most [`MAX_CPU`], at least one.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |t: &str| {
            t.trim()
                .parse::<usize>()
                .ok()
                .filter(|&c| c <= MAX_CPU)
                .ok_or_else(|| format!("bad CPU `{t}` in `{s}` (0..={MAX_CPU})"))
        };
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(part)?, num(part)?),
        };
        if lo > hi {
            return Err(format!("bad CPU range `{part}` in `{s}`"));
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    if cpus.is_empty() {
        return Err(format!("no CPU in `{s}`"));
    }
    Ok(cpus)
}

/// What [`apply`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The workers' CPUs, if set.
    pub cpus: Option<Vec<usize>>,
    /// The cap on file-I/O workers, if set.
    pub max_workers: Option<u32>,
}

/// Applies `cpus` and `max_bounded` (0: the kernel's default) to the calling thread's io-wq.
/// Returns `None` when both are the kernel's defaults. Call on the executor thread.
pub fn apply(cpus: &IowqCpus, max_bounded: u32) -> io::Result<Option<Applied>> {
    let mask = match cpus {
        IowqCpus::Inherit => None,
        IowqCpus::Others => {
            let mine = current_cpus()?;
            let others: Vec<usize> = online_cpus()?
                .into_iter()
                .filter(|c| !mine.contains(c))
                .collect();
            if others.is_empty() {
                return Err(io::Error::other(
                    "no CPU other than the executor's is online",
                ));
            }
            Some(others)
        }
        IowqCpus::List(list) => {
            // The kernel accepts CPUs it does not have (they are cut off, which may leave an
            // empty mask), so every one must be online here.
            let online = online_cpus()?;
            if let Some(c) = list.iter().find(|c| !online.contains(c)) {
                return Err(io::Error::other(format!("CPU {c} is not online")));
            }
            Some(list.clone())
        }
    };
    if mask.is_none() && max_bounded == 0 {
        return Ok(None);
    }
    let rings = io_uring_fds()?;
    if rings.is_empty() {
        return Err(io::Error::other(
            "no io_uring descriptor found in /proc/self/fd",
        ));
    }
    let mut last_err = None;
    for fd in rings {
        match register(fd, mask.as_deref(), max_bounded) {
            Ok(()) => {
                return Ok(Some(Applied {
                    cpus: mask,
                    max_workers: (max_bounded > 0).then_some(max_bounded),
                }))
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("no io_uring accepted the registration")))
}

fn register(fd: libc::c_int, mask: Option<&[usize]>, max_bounded: u32) -> io::Result<()> {
    if let Some(cpus) = mask {
        // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET writes within it for CPUs
        // up to MAX_CPU, which the filter below guarantees.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &c in cpus.iter().filter(|&&c| c <= MAX_CPU) {
            unsafe { libc::CPU_SET(c, &mut set) };
        }
        // SAFETY: the kernel reads `size_of::<cpu_set_t>()` bytes from `set`, which lives
        // across the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                fd,
                IORING_REGISTER_IOWQ_AFF,
                &set as *const libc::cpu_set_t,
                std::mem::size_of::<libc::cpu_set_t>(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if max_bounded > 0 {
        // [bounded, unbounded]; 0 leaves a class as it is. File I/O is bounded work.
        let mut max = [max_bounded, 0u32];
        // SAFETY: the kernel reads and writes back two u32 in `max`, which outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                fd,
                IORING_REGISTER_IOWQ_MAX_WORKERS,
                max.as_mut_ptr(),
                2u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The io_uring descriptors of this process.
fn io_uring_fds() -> io::Result<Vec<libc::c_int>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::c_int>().ok())
        else {
            continue;
        };
        // A descriptor closed since the listing reads as an error: skip it.
        if std::fs::read_link(entry.path()).is_ok_and(|l| l.as_os_str() == IO_URING_LINK) {
            out.push(fd);
        }
    }
    Ok(out)
}

/// The CPUs the calling thread may run on.
fn current_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into `set`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET reads within `set` for c <= MAX_CPU.
    Ok((0..=MAX_CPU)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// The online CPUs (`/sys/devices/system/cpu/online`).
fn online_cpus() -> io::Result<Vec<usize>> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online")?;
    parse_cpu_list(&text).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_like_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("0-2,5\n"), Ok(vec![0, 1, 2, 5]));
        assert_eq!(parse_cpu_list("3,1,3"), Ok(vec![1, 3]));
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("2-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list(&format!("{}", MAX_CPU + 1)).is_err());
        assert_eq!("others".parse(), Ok(IowqCpus::Others));
        assert_eq!("inherit".parse(), Ok(IowqCpus::Inherit));
        assert_eq!("1".parse(), Ok(IowqCpus::List(vec![1])));
    }

    #[test]
    fn cpus_that_are_not_online_are_refused() {
        let r = apply(&IowqCpus::List(vec![MAX_CPU]), 0);
        assert!(r.is_err(), "{r:?}");
    }

    /// Catches: a wrong opcode or argument layout (the kernel answers EINVAL/EFAULT), a
    /// descriptor search that finds no ring, and a registration that lands on another thread's
    /// io-wq (the worker that runs this executor's fdatasync must be on the CPU asked for).
    #[test]
    fn an_executors_fdatasync_worker_runs_on_the_cpus_registered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let (applied, allowed) = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .spawn(move || async move {
                let cpu = *online_cpus().unwrap().last().unwrap();
                let applied = apply(&IowqCpus::List(vec![cpu]), 2).unwrap();
                // fdatasync always runs on an io-wq worker, created now with the new CPUs.
                let f = glommio::io::BufferedFile::create(&path).await.unwrap();
                f.write_at(vec![1u8; 4096], 0).await.unwrap();
                f.fdatasync().await.unwrap();
                let me = unsafe { libc::gettid() };
                let worker = format!("iou-wrk-{me}");
                let mut allowed = Vec::new();
                for t in std::fs::read_dir("/proc/self/task").unwrap() {
                    let t = t.unwrap().path();
                    let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
                    if comm.trim() == worker {
                        let status = std::fs::read_to_string(t.join("status")).unwrap();
                        let list = status
                            .lines()
                            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                            .unwrap()
                            .trim()
                            .to_owned();
                        allowed.push(parse_cpu_list(&list).unwrap());
                    }
                }
                f.close().await.unwrap();
                (applied.map(|a| (a.cpus, a.max_workers, cpu)), allowed)
            })
            .unwrap()
            .join()
            .unwrap();
        let (cpus, max_workers, cpu) = applied.expect("settings applied");
        assert_eq!((cpus, max_workers), (Some(vec![cpu]), Some(2)));
        assert!(
            !allowed.is_empty(),
            "no io-wq worker of this executor found"
        );
        for a in allowed {
            assert_eq!(a, vec![cpu]);
        }
    }
}
