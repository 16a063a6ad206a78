//! The loopback consumer: accepts one connection, drains it until the server shuts down its
//! write side, and reports the byte count, the time the stream ended and (optionally) the
//! crc32c of everything received.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{cpu, io_err, FetchBenchError};

/// The consumer's read buffer: large, so the consumer is never the bottleneck.
const CONSUMER_READ_BYTES: usize = 256 << 10;

pub struct Received {
    pub bytes: u64,
    pub crc: Option<u32>,
    pub done_at: Instant,
    pub cpu: Duration,
}

pub struct Consumer {
    pub addr: SocketAddr,
    handle: JoinHandle<Result<Received, FetchBenchError>>,
}

impl Consumer {
    /// Listens on 127.0.0.1:0 and starts the draining thread (pinned to the consumer core).
    pub fn spawn(verify: bool) -> Result<Consumer, FetchBenchError> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("consumer bind"))?;
        let addr = listener
            .local_addr()
            .map_err(io_err("consumer local_addr"))?;
        let handle = std::thread::Builder::new()
            .name("fetch-consumer".into())
            .spawn(move || drain(listener, verify))
            .map_err(io_err("spawning the consumer thread"))?;
        Ok(Consumer { addr, handle })
    }

    pub fn join(self) -> Result<Received, FetchBenchError> {
        self.handle
            .join()
            .map_err(|_| FetchBenchError::ThreadPanicked("consumer"))?
    }
}

fn drain(listener: TcpListener, verify: bool) -> Result<Received, FetchBenchError> {
    cpu::pin_current_thread(cpu::CONSUMER_CPU);
    let (mut stream, _) = listener.accept().map_err(io_err("consumer accept"))?;
    let cpu_before = cpu::thread_cpu();
    let mut buf = vec![0u8; CONSUMER_READ_BYTES];
    let mut bytes = 0u64;
    let mut crc = 0u32;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("consumer read")(e)),
        };
        if verify {
            crc = crc32c::crc32c_append(crc, &buf[..n]);
        }
        bytes += n as u64;
    }
    let done_at = Instant::now();
    Ok(Received {
        bytes,
        crc: verify.then_some(crc),
        done_at,
        cpu: cpu::thread_cpu().saturating_sub(cpu_before),
    })
}
