//! The glommio paths, on an executor pinned to the serving core: O_DIRECT reads through
//! `DmaFile::read_at_aligned` (several in flight, each its own task) sent through glommio's
//! io_uring TCP stream, and the same stream fed from one resident buffer as its reference.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::AsyncWriteExt;
use glommio::io::DmaFile;
use glommio::net::TcpStream;

use super::{cpu, io_err, source, FetchBenchError, RunContext, Served};
use crate::executor;

#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// One resident buffer, sent `file_bytes / fetch_bytes` times.
    Memory,
    /// The file, read with O_DIRECT `read_bytes` at a time (a multiple of the fetch size) and
    /// sent a fetch at a time.
    DirectFile { read_bytes: usize },
}

pub fn serve(
    source: Source,
    addr: SocketAddr,
    ctx: &RunContext,
) -> Result<Served, FetchBenchError> {
    let ctx = ctx.clone();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu::SERVER_CPU))
        .name("fetch-glommio")
        .io_memory(executor::io_memory_bytes())
        .spawn(move || async move { serve_on_executor(source, addr, &ctx).await })
        .map_err(|e| io_err("spawning the glommio executor")(e.into()))?
        .join()
        .map_err(|_| FetchBenchError::ThreadPanicked("glommio server"))?
}

async fn serve_on_executor(
    source: Source,
    addr: SocketAddr,
    ctx: &RunContext,
) -> Result<Served, FetchBenchError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| io_err("glommio connect")(e.into()))?;
    let fetch = ctx.fetch_bytes;
    let fetches = ctx.file_bytes / fetch as u64;
    let file = match source {
        Source::DirectFile { .. } => Some(Rc::new(
            DmaFile::open(&ctx.path)
                .await
                .map_err(|e| io_err("DmaFile::open")(e.into()))?,
        )),
        Source::Memory => None,
    };
    let chunk = source::baseline_chunk(fetch);
    let cpu_before = cpu::thread_cpu();
    let started = Instant::now();
    match file {
        None => {
            for _ in 0..fetches {
                stream
                    .write_all(&chunk)
                    .await
                    .map_err(io_err("glommio write"))?;
            }
        }
        Some(file) => {
            let read_bytes = match source {
                Source::DirectFile { read_bytes } => read_bytes,
                Source::Memory => fetch,
            };
            send_direct_reads(&mut stream, file, read_bytes, fetch, ctx).await?
        }
    }
    stream.flush().await.map_err(io_err("glommio flush"))?;
    // SAFETY: the stream's fd is open for the duration of the call.
    if unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) } != 0 {
        return Err(io_err("shutdown")(std::io::Error::last_os_error()));
    }
    Ok(Served {
        started,
        cpu: cpu::thread_cpu().saturating_sub(cpu_before),
        cpu_includes_consumer: false,
        zc: None,
    })
}

/// Keeps `ctx.direct_depth` aligned reads of `read_bytes` outstanding and sends them in
/// file order, one `fetch` per write.
async fn send_direct_reads(
    stream: &mut TcpStream,
    file: Rc<DmaFile>,
    read_bytes: usize,
    fetch: usize,
    ctx: &RunContext,
) -> Result<(), FetchBenchError> {
    let reads = ctx.file_bytes / read_bytes as u64;
    let depth = ctx.direct_depth;
    let mut in_flight = VecDeque::with_capacity(depth);
    let mut next = 0u64;
    for _ in 0..reads {
        while in_flight.len() < depth && next < reads {
            let pos = next * read_bytes as u64;
            let f = file.clone();
            in_flight.push_back((
                pos,
                glommio::spawn_local(async move { f.read_at_aligned(pos, read_bytes).await }),
            ));
            next += 1;
        }
        let Some((pos, task)) = in_flight.pop_front() else {
            break;
        };
        let read = task
            .await
            .map_err(|e| io_err("read_at_aligned")(e.into()))?;
        if read.len() != read_bytes {
            return Err(FetchBenchError::ShortRead {
                pos,
                got: read.len(),
                expected: read_bytes,
            });
        }
        for piece in read.chunks(fetch) {
            stream
                .write_all(piece)
                .await
                .map_err(io_err("glommio write"))?;
        }
    }
    Ok(())
}
