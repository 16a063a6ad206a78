//! The synchronous paths, each on a plain thread pinned to the serving core with a blocking
//! socket: memory baseline, buffered pread + write, sendfile, splice, resident `Bytes`.

use std::fs::File;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::time::Instant;

use super::{cpu, io_err, source, FetchBenchError, RunContext, Served};

#[derive(Debug, Clone, Copy)]
pub enum SyncPath {
    Memory,
    Pread,
    Sendfile,
    Splice,
    TailBytes,
}

/// Runs one path on a fresh thread pinned to the serving core.
pub fn serve(
    path: SyncPath,
    addr: SocketAddr,
    ctx: &RunContext,
) -> Result<Served, FetchBenchError> {
    let ctx = ctx.clone();
    std::thread::Builder::new()
        .name("fetch-server".into())
        .spawn(move || {
            cpu::pin_current_thread(cpu::SERVER_CPU);
            serve_on_this_thread(path, addr, &ctx)
        })
        .map_err(io_err("spawning the server thread"))?
        .join()
        .map_err(|_| FetchBenchError::ThreadPanicked("server"))?
}

fn serve_on_this_thread(
    path: SyncPath,
    addr: SocketAddr,
    ctx: &RunContext,
) -> Result<Served, FetchBenchError> {
    let file = File::open(&ctx.path).map_err(io_err("opening the served file"))?;
    let mut sock = TcpStream::connect(addr).map_err(io_err("connect"))?;
    let chunk = source::baseline_chunk(ctx.fetch_bytes);
    let fetches = ctx.file_bytes / ctx.fetch_bytes as u64;
    let fetch = ctx.fetch_bytes;
    let cpu_before = cpu::thread_cpu();
    let started = Instant::now();
    match path {
        SyncPath::Memory => {
            for _ in 0..fetches {
                sock.write_all(&chunk).map_err(io_err("write"))?;
            }
        }
        SyncPath::TailBytes => {
            for k in 0..fetches as usize {
                // What the tail cache hands out: a refcounted slice, no copy.
                let batch = ctx.tail.slice(k * fetch..(k + 1) * fetch);
                sock.write_all(&batch).map_err(io_err("write"))?;
            }
        }
        SyncPath::Pread => {
            let mut buf = vec![0u8; fetch];
            for k in 0..fetches {
                let pos = k * fetch as u64;
                file.read_exact_at(&mut buf, pos).map_err(io_err("pread"))?;
                sock.write_all(&buf).map_err(io_err("write"))?;
            }
        }
        SyncPath::Sendfile => {
            for k in 0..fetches {
                sendfile_all(sock.as_raw_fd(), file.as_raw_fd(), k * fetch as u64, fetch)?;
            }
        }
        SyncPath::Splice => {
            let pipe = Pipe::new(fetch)?;
            for k in 0..fetches {
                pipe.splice_all(file.as_raw_fd(), sock.as_raw_fd(), k * fetch as u64, fetch)?;
            }
        }
    }
    sock.shutdown(Shutdown::Write).map_err(io_err("shutdown"))?;
    Ok(Served {
        started,
        cpu: cpu::thread_cpu().saturating_sub(cpu_before),
        cpu_includes_consumer: false,
        zc: None,
    })
}

/// One fetch by sendfile(2): `len` bytes of `file` from `pos`, looping over partial sends.
fn sendfile_all(sock: RawFd, file: RawFd, pos: u64, len: usize) -> Result<(), FetchBenchError> {
    let mut off = pos as libc::off_t;
    let mut left = len;
    while left > 0 {
        // SAFETY: valid fds; `off` is ours and updated by the kernel.
        let n = unsafe { libc::sendfile(sock, file, &mut off, left) };
        match n {
            n if n > 0 => left -= n as usize,
            0 => return Err(short_read(pos, len - left, len)),
            _ => retry_or_fail("sendfile")?,
        }
    }
    Ok(())
}

/// A pipe sized to hold a whole fetch (pipe-max-size is 1 MiB here, the largest fetch).
pub(crate) struct Pipe {
    pub read: OwnedFd,
    pub write: OwnedFd,
    pub capacity: usize,
}

impl Pipe {
    pub fn new(fetch: usize) -> Result<Pipe, FetchBenchError> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io_err("pipe2")(io::Error::last_os_error()));
        }
        // SAFETY: the fds were just created and are owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_SETPIPE_SZ on a pipe fd we own; returns the new capacity or -1.
        let cap =
            unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, fetch as libc::c_int) };
        let capacity = if cap > 0 { cap as usize } else { 64 << 10 };
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }

    /// One fetch by splice(2): file → pipe (page references, no copy) → socket.
    fn splice_all(
        &self,
        file: RawFd,
        sock: RawFd,
        pos: u64,
        len: usize,
    ) -> Result<(), FetchBenchError> {
        let mut off = pos as libc::loff_t;
        let mut left = len;
        while left > 0 {
            // SAFETY: valid fds; `off` is ours.
            let n = unsafe {
                libc::splice(
                    file,
                    &mut off,
                    self.write.as_raw_fd(),
                    std::ptr::null_mut(),
                    left.min(self.capacity),
                    libc::SPLICE_F_MOVE,
                )
            };
            let mut in_pipe = match n {
                n if n > 0 => n as usize,
                0 => return Err(short_read(pos, len - left, len)),
                _ => {
                    retry_or_fail("splice file->pipe")?;
                    continue;
                }
            };
            left -= in_pipe;
            while in_pipe > 0 {
                // SAFETY: valid fds, no offsets (pipe and socket).
                let m = unsafe {
                    libc::splice(
                        self.read.as_raw_fd(),
                        std::ptr::null_mut(),
                        sock,
                        std::ptr::null_mut(),
                        in_pipe,
                        libc::SPLICE_F_MOVE,
                    )
                };
                match m {
                    m if m > 0 => in_pipe -= m as usize,
                    0 => {
                        return Err(io_err("splice pipe->socket")(
                            io::ErrorKind::WriteZero.into(),
                        ))
                    }
                    _ => retry_or_fail("splice pipe->socket")?,
                }
            }
        }
        Ok(())
    }
}

fn retry_or_fail(op: &'static str) -> Result<(), FetchBenchError> {
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::Interrupted {
        Ok(())
    } else {
        Err(io_err(op)(e))
    }
}

fn short_read(pos: u64, got: usize, expected: usize) -> FetchBenchError {
    FetchBenchError::ShortRead { pos, got, expected }
}
