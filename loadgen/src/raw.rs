//! The raw baseline: bytes blasted over loopback TCP to a built-in sink, no protocol. Broker
//! throughput is quoted against this figure, measured on the same machine in the same run.
//!
//! ```text
//!  sender executors (all cores but the last) ──64 KiB writes──► sink executor (last core)
//!  bytes counted at the sink while the clock is inside the measured window
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::Context as _;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};

use crate::clock::now_ns;
use crate::config::CoreList;
use crate::ctx::Window;
use crate::run::IO_MEMORY_BYTES;

/// Bytes per write from a sender.
pub const RAW_WRITE_BYTES: usize = 64 << 10;
/// Bytes per read at the sink.
const RAW_READ_BYTES: usize = 256 << 10;
/// How long senders wait for the sink's address.
const SINK_START_TIMEOUT: Duration = Duration::from_secs(10);

/// The raw baseline's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawResult {
    pub mb_per_s: f64,
    pub bytes: u64,
    pub connections: usize,
}

/// Runs the baseline with `connections` senders for `warmup` + `duration`.
pub fn run_raw(
    cores: &CoreList,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<RawResult> {
    let connections = connections.max(1);
    let sink_core = *cores.0.last().context("no cores given")?;
    let sender_cores: Vec<usize> = if cores.0.len() > 1 {
        cores.0[..cores.0.len() - 1].to_vec()
    } else {
        cores.0.clone()
    };
    let start_ns = now_ns() + 100_000_000;
    let measure_from_ns = start_ns + warmup.as_nanos() as u64;
    let window = Window {
        start_ns,
        measure_from_ns,
        end_ns: measure_from_ns + duration.as_nanos() as u64,
    };
    let measured = Arc::new(AtomicU64::new(0));

    let (addr_tx, addr_rx) = mpsc::sync_channel(1);
    let sink = {
        let measured = measured.clone();
        LocalExecutorBuilder::new(Placement::Fixed(sink_core))
            .name("raw-sink")
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || async move { sink(addr_tx, connections, window, measured).await })
            .map_err(|e| anyhow::anyhow!("starting the raw sink executor: {e}"))?
    };
    let addr = addr_rx
        .recv_timeout(SINK_START_TIMEOUT)
        .context("the raw sink did not start")??;

    let mut senders = Vec::new();
    for (slot, &cpu) in sender_cores.iter().enumerate() {
        let mine = (0..connections)
            .filter(|c| c % sender_cores.len() == slot)
            .count();
        if mine == 0 {
            continue;
        }
        let addr = addr.clone();
        let h = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name("raw-send")
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || async move {
                let tasks: Vec<_> = (0..mine)
                    .map(|_| glommio::spawn_local(send(addr.clone(), window.end_ns)))
                    .collect();
                let mut first_err = None;
                for t in tasks {
                    if let Err(e) = t.await {
                        first_err.get_or_insert(e);
                    }
                }
                first_err.map_or(Ok(()), Err)
            })
            .map_err(|e| anyhow::anyhow!("starting a raw sender executor: {e}"))?;
        senders.push(h);
    }
    for h in senders {
        h.join()
            .map_err(|e| anyhow::anyhow!("raw sender executor: {e}"))?
            .context("raw sender")?;
    }
    sink.join()
        .map_err(|e| anyhow::anyhow!("raw sink executor: {e}"))?
        .context("raw sink")?;
    let bytes = measured.load(Ordering::Relaxed);
    Ok(RawResult {
        mb_per_s: bytes as f64 / window.measured_secs() / 1e6,
        bytes,
        connections,
    })
}

async fn sink(
    addr_tx: mpsc::SyncSender<anyhow::Result<String>>,
    connections: usize,
    window: Window,
    measured: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let listener = match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => {
            let _ = addr_tx.send(Err(anyhow::anyhow!("binding the raw sink: {e}")));
            return Ok(());
        }
    };
    let addr = listener
        .local_addr()
        .map_err(|e| anyhow::anyhow!("raw sink address: {e}"))?;
    let _ = addr_tx.send(Ok(addr.to_string()));
    let counted = measured;
    let mut readers = Vec::new();
    for _ in 0..connections {
        let stream = listener
            .accept()
            .await
            .map_err(|e| anyhow::anyhow!("accepting a raw sender: {e}"))?;
        readers.push(glommio::spawn_local(drain(stream, window, counted.clone())));
    }
    for r in readers {
        r.await?;
    }
    Ok(())
}

async fn drain(
    mut stream: TcpStream,
    window: Window,
    measured: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; RAW_READ_BYTES];
    loop {
        let n = stream.read(&mut buf).await.context("raw sink read")?;
        if n == 0 {
            return Ok(());
        }
        let now = now_ns();
        if now >= window.measure_from_ns && now < window.end_ns {
            measured.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

async fn send(addr: String, end_ns: u64) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(addr.as_str())
        .await
        .map_err(|e| anyhow::anyhow!("raw connect: {e}"))?;
    let buf = vec![0x5au8; RAW_WRITE_BYTES];
    while now_ns() < end_ns {
        stream.write_all(&buf).await.context("raw send")?;
    }
    stream.close().await.context("raw close")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_baseline_moves_bytes() {
        let r = run_raw(
            &CoreList(vec![0]),
            1,
            Duration::from_millis(50),
            Duration::from_millis(200),
        )
        .unwrap();
        // Loopback moves far more than 1 MB/s; zero would mean the sink counted nothing.
        assert!(r.mb_per_s > 1.0 && r.bytes > 0, "{r:?}");
    }
}
