//! One client connection, served on the core that accepted it.
//!
//! ```text
//!  reader: size prefix ─ check vs --max-frame-bytes ─ take in-flight byte budget ─ read body
//!          ─ decode ─ spawn handler task ─► [bounded queue: max in-flight requests]
//!  writer: take the oldest pending handler, await it, write its response chunks, release its
//!          budget                                   (responses leave in request order)
//!          a response holding file ranges (or, with `--fetch-send zc`, a large one): flush,
//!          then `sendfile::send_parts` on the blocking pool, awaited before the next response
//! ```
//!
//! Memory per connection is bounded by the in-flight byte budget (request frames held until
//! answered) and the in-flight request count times the largest response (fetch responses are
//! capped by the broker's fetch limit). A slow reader of responses stalls the writer, the queue
//! fills, and the reader stops reading requests: back-pressure reaches the client's socket.
//! Bad input ends the connection with a log line saying why; it never panics.

use crate::api::{handle, unsupported_api_versions, ApiError, ConnInfo};
use crate::config::FetchSend;
use crate::core::Core;
use crate::decode::{decode_request, DecodeError};
use crate::iov;
use bytes::Bytes;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use kafka_protocol::messages::ApiKey;
use ringmq_wire::fetch::Chunks;
use ringmq_wire::frame::{frame_len, SIZE_PREFIX_LEN};
use ringmq_wire::part::Part;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

/// Socket read buffer per connection.
const READ_BUFFER_BYTES: usize = 64 << 10;
/// Socket write buffer per connection (larger chunks bypass it).
const WRITE_BUFFER_BYTES: usize = 64 << 10;
/// Responses at least this large (catch-up fetches: up to tens of MiB of stored batches) are
/// written with gathered sends straight from their parts instead of being copied into the
/// write buffer: that copy was a third of the broker's memmove time in a catch-up.
const GATHER_MIN_BYTES: usize = WRITE_BUFFER_BYTES;

/// A response not yet written.
enum Pending {
    Task(
        glommio::task::JoinHandle<Result<Option<Chunks>, ApiError>>,
        glommio::sync::StaticPermit,
        Option<glommio::sync::StaticPermit>,
    ),
    Ready(Bytes),
}

/// Serves `stream` until the client closes it, sends bad input, or shutdown begins.
pub async fn serve(core: Rc<Core>, stream: TcpStream, conn: ConnInfo) {
    let _ = stream.set_nodelay(true);
    // For responses sent from the blocking pool; valid while the write half lives.
    let sock = stream.as_raw_fd();
    let (rd, wr) = futures_lite::io::split(stream);
    let (tx, rx) =
        local_channel::new_bounded::<Pending>(core.config.max_inflight_requests_per_connection);
    let budget = Rc::new(Semaphore::new(
        core.config.max_inflight_bytes_per_connection as u64,
    ));
    let writer = glommio::spawn_local(write_loop(
        rx,
        BufWriter::with_capacity(WRITE_BUFFER_BYTES, wr),
        sock,
        core.config.fetch_send,
        conn.clone(),
    ));
    let why = read_loop(
        &core,
        BufReader::with_capacity(READ_BUFFER_BYTES, rd),
        &tx,
        &budget,
        &conn,
    )
    .await;
    match &why {
        Ended::Closed | Ended::Shutdown => {
            tracing::debug!(conn = conn.id, peer = %conn.peer, "connection ended: {why:?}")
        }
        Ended::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            tracing::debug!(conn = conn.id, peer = %conn.peer, "connection ended: {why}")
        }
        _ => tracing::warn!(conn = conn.id, peer = %conn.peer, "closing connection: {why}"),
    }
    drop(tx);
    writer.await;
}

#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("client closed")]
    Closed,
    #[error("shutting down")]
    Shutdown,
    #[error("read failed: {0}")]
    Io(std::io::Error),
    #[error("bad frame: {0}")]
    BadFrame(ringmq_wire::frame::FrameError),
    #[error("bad request: {0}")]
    BadRequest(DecodeError),
    #[error("writer gone")]
    WriterGone,
}

async fn read_loop<R: futures_lite::AsyncBufRead + Unpin>(
    core: &Rc<Core>,
    mut rd: R,
    tx: &local_channel::LocalSender<Pending>,
    budget: &Rc<Semaphore>,
    conn: &ConnInfo,
) -> Ended {
    let max_frame = core.config.max_frame_bytes;
    let max_budget = core.config.max_inflight_bytes_per_connection;
    loop {
        let mut prefix = [0u8; SIZE_PREFIX_LEN];
        let read =
            futures_lite::future::or(async { Some(rd.read_exact(&mut prefix).await) }, async {
                core.stopped().await;
                None
            })
            .await;
        match read {
            None => return Ended::Shutdown,
            Some(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ended::Closed,
            Some(Err(e)) => return Ended::Io(e),
            Some(Ok(())) => {}
        }
        // The limit is checked before a single byte of the body is allocated.
        let len = match frame_len(prefix, max_frame) {
            Ok(len) => len,
            Err(e) => return Ended::BadFrame(e),
        };
        let permit = match budget
            .acquire_static_permit(len.clamp(1, max_budget) as u64)
            .await
        {
            Ok(p) => p,
            Err(_) => return Ended::WriterGone,
        };
        let body = match read_body(&mut rd, len).await {
            Ok(body) => body,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ended::Closed,
            Err(e) => return Ended::Io(e),
        };
        let pending = match decode_request(Bytes::from(body)) {
            Ok(mut req) => {
                // A fetch's response is reserved against the same budget, in request order
                // (so reservations never wait on later requests), and its size capped to it.
                let reserved = reserve_response(
                    core,
                    &mut req,
                    max_budget.saturating_sub(len.clamp(1, max_budget)),
                );
                let response_permit = if reserved > 0 {
                    match budget.acquire_static_permit(reserved as u64).await {
                        Ok(p) => Some(p),
                        Err(_) => return Ended::WriterGone,
                    }
                } else {
                    None
                };
                let api_key = req.api_key;
                let task = spawn_handler(core, api_key, handle(core.clone(), req, conn.clone()));
                Pending::Task(task, permit, response_permit)
            }
            Err(DecodeError::UnsupportedVersion {
                api_key: ApiKey::ApiVersions,
                correlation_id,
                ..
            }) => Pending::Ready(unsupported_api_versions(correlation_id)),
            Err(e) => return Ended::BadRequest(e),
        };
        if tx.send(pending).await.is_err() {
            return Ended::WriterGone;
        }
    }
}

/// Reads a request body of `len` bytes (already checked against the frame limit). A body that
/// fits the read buffer is copied out of it into an exactly sized Vec (no zero-fill first: at
/// a few KiB per request the memset was ~1% of the broker's CPU); a larger one is read
/// straight into a zeroed Vec, bypassing the buffer.
async fn read_body<R: futures_lite::AsyncBufRead + Unpin>(
    rd: &mut R,
    len: usize,
) -> std::io::Result<Vec<u8>> {
    use futures_lite::io::AsyncBufReadExt;
    if len > READ_BUFFER_BYTES {
        let mut body = vec![0u8; len];
        rd.read_exact(&mut body).await?;
        return Ok(body);
    }
    let mut body = Vec::with_capacity(len);
    while body.len() < len {
        let buf = rd.fill_buf().await?;
        if buf.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let n = buf.len().min(len - body.len());
        body.extend_from_slice(&buf[..n]);
        rd.consume(n);
    }
    Ok(body)
}

async fn write_loop<W: futures_lite::AsyncWrite + Unpin>(
    rx: local_channel::LocalReceiver<Pending>,
    mut wr: BufWriter<W>,
    sock: RawFd,
    send: FetchSend,
    conn: ConnInfo,
) {
    loop {
        // Flush only when no further response is queued, so pipelined responses share writes.
        let next = match futures_lite::future::poll_once(rx.recv()).await {
            Some(next) => next,
            None => {
                if let Err(e) = wr.flush().await {
                    tracing::debug!(conn = conn.id, "flush failed: {e}");
                    return;
                }
                rx.recv().await
            }
        };
        let Some(pending) = next else { break };
        let chunks = match pending {
            Pending::Ready(b) => Chunks::one(b),
            Pending::Task(task, permit, response_permit) => {
                let out = match await_flushing(task, &mut wr).await {
                    Ok(out) => out,
                    Err(e) => {
                        tracing::debug!(conn = conn.id, "flush failed: {e}");
                        return;
                    }
                };
                drop(permit);
                drop(response_permit);
                match out {
                    Some(Ok(Some(chunks))) => chunks,
                    Some(Ok(None)) => continue,
                    Some(Err(e)) => {
                        tracing::warn!(conn = conn.id, peer = %conn.peer, "closing connection: {e}");
                        break;
                    }
                    None => {
                        tracing::warn!(conn = conn.id, "request handler was cancelled");
                        break;
                    }
                }
            }
        };
        if let Err(e) = write_response(&mut wr, sock, send, chunks).await {
            tracing::debug!(conn = conn.id, "write failed: {e}");
            return;
        }
    }
    let _ = wr.flush().await;
    let _ = wr.close().await;
}

/// Writes one response: when it holds file ranges (or zero-copy sending wants it:
/// `send_zc::hand_to_pool`), after a flush from the blocking pool (`sendfile` module), which
/// this awaits so responses stay in order; when it is large, after a flush with gathered sends
/// from its parts' own memory; otherwise through the buffer.
async fn write_response<W: futures_lite::AsyncWrite + Unpin>(
    wr: &mut BufWriter<W>,
    sock: RawFd,
    send: FetchSend,
    chunks: Chunks,
) -> std::io::Result<()> {
    if crate::send_zc::hand_to_pool(&chunks, send) {
        wr.flush().await?;
        return crate::sendfile::send_parts(sock, chunks.parts, send).await;
    }
    if chunks.total_len() >= GATHER_MIN_BYTES {
        wr.flush().await?;
        return send_gathered(wr.get_mut(), sock, &chunks.parts).await;
    }
    for part in &chunks.parts {
        match part {
            Part::Bytes(b) => wr.write_all(b).await?,
            Part::File(_) => return Err(std::io::Error::other("file part in a buffered response")),
        }
    }
    Ok(())
}

/// Writes bytes parts in order with non-blocking `sendmsg` calls over up to
/// [`iov::MAX_IOVECS`] of them at a time, from the parts' own memory. When the socket is
/// full, the stream's own write (which waits for room) sends the next piece, then gathering
/// resumes. Between sends the task yields if the executor has other work due (this core's
/// appends): a 16 MiB response is ~250 sends.
async fn send_gathered<W: futures_lite::AsyncWrite + Unpin>(
    wr: &mut W,
    sock: RawFd,
    parts: &[Part],
) -> std::io::Result<()> {
    let mut bufs: Vec<&[u8]> = Vec::with_capacity(parts.len());
    for part in parts {
        match part {
            Part::Bytes(b) => bufs.push(b),
            Part::File(_) => return Err(std::io::Error::other("file part in a gathered response")),
        }
    }
    // Point into `parts`, alive and unchanged across every send below; `sock` is the
    // connection's socket, open while its write half (`wr`) lives.
    let all = iov::iovecs(bufs.iter().copied());
    let len = iov::total(&all);
    let mut sent = 0;
    while sent < len {
        let rest = iov::iovecs_from(&all, sent, iov::MAX_IOVECS);
        let n = match iov::sendmsg(sock, &rest, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) {
            Ok(n) => n,
            Err(e) => match e.kind() {
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock => {
                    use futures_lite::io::AsyncWriteExt;
                    match wr.write(iov::rest_of_slice(&bufs, sent)).await? {
                        0 => return Err(std::io::ErrorKind::WriteZero.into()),
                        n => n,
                    }
                }
                _ => return Err(e),
            },
        };
        sent += n;
        glommio::yield_if_needed().await;
    }
    Ok(())
}

/// Awaits a handler. If it is not done yet, the responses already buffered are flushed first:
/// a finished response must not wait in the buffer for a later request's handler (with
/// pipelined acks=all produces that added a whole group commit to almost every response).
async fn await_flushing<W: futures_lite::AsyncWrite + Unpin, T>(
    mut task: glommio::task::JoinHandle<T>,
    wr: &mut BufWriter<W>,
) -> std::io::Result<Option<T>> {
    if let Some(out) = futures_lite::future::poll_once(&mut task).await {
        return Ok(out);
    }
    wr.flush().await?;
    Ok(task.await)
}

/// Spawns a request's handler: fetches in the core's low-share fetch queue, the rest in the
/// default queue.
fn spawn_handler<T: 'static>(
    core: &Core,
    api_key: ApiKey,
    handler: impl std::future::Future<Output = T> + 'static,
) -> glommio::task::JoinHandle<T> {
    if api_key != ApiKey::Fetch {
        return glommio::spawn_local(handler).detach();
    }
    // Fails only for a queue unknown to this executor; the core created it on this executor
    // and never removes it.
    glommio::spawn_local_into(handler, core.fetch_queue)
        .expect("the fetch task queue belongs to this executor")
        .detach()
}

/// Bytes of response to reserve for `req` (fetch only), at most `room`; caps the fetch's
/// `max_bytes` to what was reserved.
fn reserve_response(core: &Core, req: &mut crate::decode::Decoded, room: usize) -> usize {
    let crate::decode::Request::Fetch(fetch) = &mut req.body else {
        return 0;
    };
    let asked = usize::try_from(fetch.max_bytes)
        .ok()
        .filter(|&n| n > 0)
        .unwrap_or(usize::MAX);
    let limit = asked
        .min(core.config.max_fetch_response_bytes)
        .min(core.config.max_inflight_bytes_per_connection / 2)
        .min(room)
        .max(1);
    fetch.max_bytes = limit as i32;
    // With no room left (the request frame itself filled the budget) nothing is reserved: the
    // fetch still returns its first batch, but reserving would wait on this very request.
    if room == 0 {
        0
    } else {
        limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::io::{AsyncRead, BufReader};
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Hands out its bytes `step` at a time, as a socket delivering a frame in pieces.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.step).min(self.data.len() - self.pos);
            let pos = self.pos;
            buf[..n].copy_from_slice(&self.data[pos..pos + n]);
            self.pos += n;
            Poll::Ready(Ok(n))
        }
    }

    fn reader(data: Vec<u8>, step: usize) -> BufReader<Trickle> {
        BufReader::with_capacity(READ_BUFFER_BYTES, Trickle { data, pos: 0, step })
    }

    /// Catches: a gathered response losing, repeating or reordering bytes when the socket
    /// takes part of a send (partial sends end inside a part) or none of it (the socket is
    /// full and the stream's write must wait), and empty parts breaking the walk.
    #[test]
    fn gathered_sends_deliver_every_byte_in_order_through_a_full_socket() {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(256 << 10)
            .spawn(|| async {
                let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let reader = glommio::spawn_local(async move {
                    let mut s = listener.accept().await.unwrap();
                    let mut got = Vec::new();
                    let mut buf = vec![0u8; 7_001];
                    loop {
                        // Slow, small reads: the sender finds the socket full again and again.
                        glommio::timer::sleep(std::time::Duration::from_micros(50)).await;
                        let n = s.read(&mut buf).await.unwrap();
                        if n == 0 {
                            return got;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                });
                let stream = glommio::net::TcpStream::connect(addr).await.unwrap();
                let sock = stream.as_raw_fd();
                let small: libc::c_int = 4096;
                // SAFETY: setsockopt on a socket this test owns, with a valid c_int.
                let rc = unsafe {
                    libc::setsockopt(
                        sock,
                        libc::SOL_SOCKET,
                        libc::SO_SNDBUF,
                        &small as *const libc::c_int as *const libc::c_void,
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                assert_eq!(rc, 0);
                // 300 parts (more than one send's worth), sizes 0..~40 KiB, distinct bytes.
                let parts: Vec<Part> = (0..300usize)
                    .map(|i| {
                        let len = if i % 17 == 0 { 0 } else { (i * 7_919) % 40_000 };
                        Part::Bytes(Bytes::from(
                            (0..len)
                                .map(|k| (i * 31 + k * 7) as u8)
                                .collect::<Vec<u8>>(),
                        ))
                    })
                    .collect();
                let want: Vec<u8> = parts
                    .iter()
                    .flat_map(|p| p.as_bytes().unwrap().to_vec())
                    .collect();
                let mut wr = stream;
                send_gathered(&mut wr, sock, &parts).await.unwrap();
                drop(wr);
                let got = reader.await;
                assert_eq!(got.len(), want.len());
                assert!(got == want, "bytes differ");
            })
            .unwrap()
            .join()
            .unwrap();
    }

    /// Catches: a body assembled from several buffer fills losing or repeating bytes, reading
    /// past the body into the next frame, and a body cut short not reported as EOF.
    #[test]
    fn bodies_are_read_exactly_across_pieces_and_sizes() {
        futures_lite::future::block_on(async {
            let small: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
            let large: Vec<u8> = (0..(READ_BUFFER_BYTES as u32 + 5000))
                .map(|i| (i * 7) as u8)
                .collect();
            for body in [small, large] {
                let mut data = body.clone();
                data.extend_from_slice(b"next");
                let mut rd = reader(data, 1000);
                assert_eq!(read_body(&mut rd, body.len()).await.unwrap(), body);
                let mut rest = [0u8; 4];
                rd.read_exact(&mut rest).await.unwrap();
                assert_eq!(&rest, b"next");
                let mut short = reader(body[..body.len() - 1].to_vec(), 1000);
                let e = read_body(&mut short, body.len()).await.unwrap_err();
                assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
            }
        });
    }
}
