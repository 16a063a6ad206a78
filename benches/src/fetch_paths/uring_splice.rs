//! splice through io_uring (`IORING_OP_SPLICE`, file → pipe → socket): the same page-reference
//! path as splice(2), but issued asynchronously. io_uring cannot do a splice without possibly
//! blocking, so it hands every splice to its io-wq worker threads; the submitting thread only
//! waits for completions. That is what a thread-per-core broker needs for cold data (a plain
//! sendfile/splice would block the whole core on the disk), and its cost shows up on the
//! workers, so this path reports the whole process's CPU minus the consumer thread's.

use std::fs::File;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use io_uring::{opcode, types, IoUring};

use super::copy::Pipe;
use super::{cpu, io_err, FetchBenchError, RunContext, Served};

/// Only one splice is outstanding at a time.
const RING_ENTRIES: u32 = 8;

pub fn serve(addr: SocketAddr, ctx: &RunContext) -> Result<Served, FetchBenchError> {
    let ctx = ctx.clone();
    std::thread::Builder::new()
        .name("fetch-uring-splice".into())
        .spawn(move || {
            cpu::pin_current_thread(cpu::SERVER_CPU);
            serve_on_this_thread(addr, &ctx)
        })
        .map_err(io_err("spawning the uring-splice thread"))?
        .join()
        .map_err(|_| FetchBenchError::ThreadPanicked("uring-splice server"))?
}

fn serve_on_this_thread(addr: SocketAddr, ctx: &RunContext) -> Result<Served, FetchBenchError> {
    let file = File::open(&ctx.path).map_err(io_err("opening the served file"))?;
    let sock = TcpStream::connect(addr).map_err(io_err("connect"))?;
    let mut ring = IoUring::new(RING_ENTRIES).map_err(io_err("io_uring setup"))?;
    let pipe = Pipe::new(ctx.fetch_bytes)?;
    let fetch = ctx.fetch_bytes;
    let fetches = ctx.file_bytes / fetch as u64;
    let cpu_before = cpu::process_cpu();
    let started = Instant::now();
    for k in 0..fetches {
        let pos = k * fetch as u64;
        let mut done = 0usize;
        while done < fetch {
            let want = (fetch - done).min(pipe.capacity);
            let at = (pos + done as u64) as i64;
            let n = splice(
                &mut ring,
                file.as_raw_fd(),
                at,
                pipe.write.as_raw_fd(),
                want,
            )?;
            if n == 0 {
                return Err(FetchBenchError::ShortRead {
                    pos,
                    got: done,
                    expected: fetch,
                });
            }
            let mut in_pipe = n;
            while in_pipe > 0 {
                let m = splice(
                    &mut ring,
                    pipe.read.as_raw_fd(),
                    -1,
                    sock.as_raw_fd(),
                    in_pipe,
                )?;
                if m == 0 {
                    return Err(io_err("IORING_OP_SPLICE pipe->socket")(
                        io::ErrorKind::WriteZero.into(),
                    ));
                }
                in_pipe -= m;
            }
            done += n;
        }
    }
    sock.shutdown(Shutdown::Write).map_err(io_err("shutdown"))?;
    Ok(Served {
        started,
        cpu: cpu::process_cpu().saturating_sub(cpu_before),
        cpu_includes_consumer: true,
        zc: None,
    })
}

/// One `IORING_OP_SPLICE` of up to `len` bytes, waited for. `off_in` -1 means "no offset"
/// (a pipe).
fn splice(
    ring: &mut IoUring,
    from: RawFd,
    off_in: i64,
    to: RawFd,
    len: usize,
) -> Result<usize, FetchBenchError> {
    let sqe = opcode::Splice::new(types::Fd(from), off_in, types::Fd(to), -1, len as u32)
        .flags(libc::SPLICE_F_MOVE)
        .build();
    // SAFETY: the entry references only fds that outlive the wait below.
    unsafe { ring.submission().push(&sqe) }
        .map_err(|_| io_err("submission queue full")(io::ErrorKind::WouldBlock.into()))?;
    ring.submit_and_wait(1).map_err(io_err("io_uring_enter"))?;
    let res = ring
        .completion()
        .next()
        .map(|c| c.result())
        .ok_or_else(|| io_err("IORING_OP_SPLICE")(io::ErrorKind::UnexpectedEof.into()))?;
    if res < 0 {
        return Err(io_err("IORING_OP_SPLICE")(io::Error::from_raw_os_error(
            -res,
        )));
    }
    Ok(res as usize)
}
