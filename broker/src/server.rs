//! Process start-up and shutdown: one pinned glommio executor per core, each with its own
//! SO_REUSEPORT listener, engine shard, group coordinator and mesh end.
//!
//! ```text
//!  main thread: block SIGINT/SIGTERM ─ bind listener 0 (learn the port) ─ bind 1..n to it
//!     ─ spawn executors ─ wait until every core is ready ─ print "ringmq listening on ADDR"
//!     ─ wait for a signal ─ set shutdown ─ join executors ─ exit 0
//!  executor: join mesh (peer id = core id) ─ open shard-<id> ─ core 0 replays metadata and
//!     publishes it ─ replay group log ─ ready ─ accept loop
//!     on shutdown: stop accepting, let connections finish in-flight requests, wait for every
//!     core to get there (they may still serve each other's calls), close the shard (flush).
//! ```

use crate::api::ConnInfo;
use crate::config::{Config, StorageKind};
use crate::core::{begin_stop, install, Core, Shared};
use crate::mesh::{Mesh, MeshMsg, MESH_CHANNEL_CAPACITY};
use crate::metadata::{GROUP_QUEUE, META_QUEUE};
use crate::store::{MemStore, Store};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use ringmq_engine::{Shard, ShardConfig};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// How often each core looks at the process-wide shutdown flag.
const SHUTDOWN_POLL_MS: u64 = 20;
/// Longest a core waits for its connections to finish at shutdown.
const DRAIN_TIMEOUT_MS: u64 = 10_000;
/// Registered I/O memory per executor below which start-up warns.
const MIN_IO_MEMORY_PER_CORE_BYTES: usize = 256 << 10;
/// Listen backlog per core.
const LISTEN_BACKLOG: i32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start executor {core}: {source}")]
    Executor {
        core: usize,
        source: glommio::GlommioError<()>,
    },
    #[error("core failed to start: {0}")]
    Startup(String),
    #[error("signal setup failed: {0}")]
    Signals(std::io::Error),
}

/// A running broker (used by `main` and by tests that run it in-process).
pub struct Running {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
}

impl Running {
    /// Asks every core to stop and waits for them.
    pub fn shutdown(self) -> bool {
        self.shared.shutdown.store(true, Ordering::Release);
        let mut clean = true;
        for h in self.handles {
            clean &= h.join().is_ok();
        }
        crate::send_zc::log_totals();
        clean && !self.shared.failed.load(Ordering::Acquire)
    }
}

/// Binds, starts every core, and returns once all of them serve.
pub fn start(config: Config) -> Result<Running, ServerError> {
    let config = Arc::new(config);
    let cores = config.cores;
    let listeners = bind_listeners(config.listen, cores)?;
    let addr = listeners[0]
        .local_addr()
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let advertised = (
        config.advertised_host(addr),
        i32::from(config.advertised_port.unwrap_or(addr.port())),
    );
    let shared = Arc::new(Shared::default());
    let mesh = MeshBuilder::<MeshMsg, _>::full(cores, MESH_CHANNEL_CAPACITY);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<usize, String>>();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let io_memory = io_memory_per_core(cores);
    let mut handles = Vec::with_capacity(cores);
    for (i, listener) in listeners.into_iter().enumerate() {
        let fd = listener.into_raw_fd();
        let (config, shared, mesh, ready, advertised) = (
            config.clone(),
            shared.clone(),
            mesh.clone(),
            ready_tx.clone(),
            advertised.clone(),
        );
        let builder = LocalExecutorBuilder::new(Placement::Fixed(i % cpus))
            .name(&format!("ringmq-core-{i}"))
            .io_memory(io_memory)
            .blocking_thread_pool_placement(crate::sendfile::blocking_pool_placement(i % cpus));
        let handle = builder
            .spawn(move || async move {
                place_io_workers(i, &config);
                // SAFETY: `fd` is a listening socket we own; ownership moves into the listener.
                let listener = unsafe { TcpListener::from_raw_fd(fd) };
                if let Err(e) = run_core(
                    config,
                    shared.clone(),
                    mesh,
                    listener,
                    advertised,
                    ready.clone(),
                )
                .await
                {
                    shared.failed.store(true, Ordering::Release);
                    let _ = ready.send(Err(e));
                }
            })
            .map_err(|source| ServerError::Executor { core: i, source })?;
        handles.push(handle);
    }
    drop(ready_tx);
    for _ in 0..cores {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                shared.shutdown.store(true, Ordering::Release);
                return Err(ServerError::Startup(e));
            }
            Err(_) => return Err(ServerError::Startup("a core exited during start-up".into())),
        }
    }
    Ok(Running {
        addr,
        shared,
        handles,
    })
}

/// Binds one SO_REUSEPORT listener per core; the first learns the port (for `:0`).
fn bind_listeners(
    addr: SocketAddr,
    cores: usize,
) -> Result<Vec<std::net::TcpListener>, ServerError> {
    use socket2::{Domain, Socket, Type};
    let mut out = Vec::with_capacity(cores);
    let mut target = addr;
    for _ in 0..cores {
        let bind = |target: SocketAddr| -> std::io::Result<std::net::TcpListener> {
            let s = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            s.bind(&target.into())?;
            s.listen(LISTEN_BACKLOG)?;
            Ok(s.into())
        };
        let l = bind(target).map_err(|source| ServerError::Bind {
            addr: target,
            source,
        })?;
        if target.port() == 0 {
            target = l
                .local_addr()
                .map_err(|source| ServerError::Bind { addr, source })?;
        }
        out.push(l);
    }
    Ok(out)
}

/// Applies the io-wq settings to this executor thread's io_uring workers (a failure is logged
/// and the broker goes on with the kernel's placement).
fn place_io_workers(core: usize, config: &Config) {
    match crate::iowq::apply(&config.iowq_cpus, config.iowq_max_workers) {
        Ok(None) => {}
        Ok(Some(applied)) => tracing::info!(
            core,
            cpus = ?applied.cpus,
            max_workers = ?applied.max_workers,
            "io_uring workers placed"
        ),
        Err(e) => tracing::warn!(
            core,
            cpus = ?config.iowq_cpus,
            max_workers = config.iowq_max_workers,
            "cannot place io_uring workers, keeping the kernel's placement: {e}"
        ),
    }
}

/// Registered-buffer memory of each executor: the engine's recommendation for `cores`
/// executors in one process (split under RLIMIT_MEMLOCK, which is per process: going over it
/// makes every DMA read fail with EOPNOTSUPP; kernel-notes/io-uring-memlock.md).
fn io_memory_per_core(cores: usize) -> usize {
    let share = ringmq_engine::io_memory_per_executor(cores);
    if share < MIN_IO_MEMORY_PER_CORE_BYTES {
        tracing::warn!(
            share,
            cores,
            "RLIMIT_MEMLOCK leaves little registered I/O memory per core; raise `ulimit -l`"
        );
    }
    share.max(4096)
}

async fn run_core(
    config: Arc<Config>,
    shared: Arc<Shared>,
    mesh: MeshBuilder<MeshMsg, glommio::channels::channel_mesh::Full>,
    listener: TcpListener,
    advertised: (String, i32),
    ready: mpsc::Sender<Result<usize, String>>,
) -> Result<(), String> {
    let (senders, receivers) = mesh
        .join()
        .await
        .map_err(|_| "mesh join failed".to_owned())?;
    let mesh = Mesh::new(senders);
    let id = mesh.me();
    let store = open_store(&config, id).await?;
    crate::sendfile::set_read_priority(config.fetch_read_priority.into());
    let core = Rc::new(Core::new(
        id,
        config.clone(),
        store,
        mesh.clone(),
        shared.clone(),
        advertised,
    ));
    install(core.clone());
    mesh.start(receivers);
    crate::groups::start(&core)
        .await
        .map_err(|e| format!("core {id}: group log: {e}"))?;
    if id == 0 {
        core.load_metadata()
            .await
            .map_err(|e| format!("metadata: {e}"))?;
    }
    core.wait_for_metadata().await;
    glommio::spawn_local(watch_shutdown(core.clone())).detach();
    glommio::spawn_local(crate::topic_retention::run(core.clone())).detach();
    let _ = ready.send(Ok(id));
    tracing::info!(core = id, "core serving");
    accept_loop(&core, listener).await;
    drain(&core).await;
    // A connection closed mid-response may have left its send on a pool thread.
    crate::sendfile::pool_sends_settled(
        crate::sendfile::FILE_SEND_STALL_TIMEOUT + Duration::from_secs(1),
    )
    .await;
    shared.drained.fetch_add(1, Ordering::AcqRel);
    while shared.drained.load(Ordering::Acquire) < core.cores() {
        glommio::timer::sleep(Duration::from_millis(SHUTDOWN_POLL_MS)).await;
    }
    if let Err(e) = core.store.close().await {
        tracing::error!(core = id, "shard close failed: {e}");
        shared.failed.store(true, Ordering::Release);
    }
    tracing::info!(core = id, "core stopped");
    Ok(())
}

async fn open_store(config: &Config, id: usize) -> Result<Store, String> {
    match config.storage {
        StorageKind::Memory => Ok(Store::Memory(Rc::new(MemStore::default()))),
        StorageKind::Engine => {
            // The engine is given an absolute path: a relative one fails its directory fsync
            // (glommio opens the directory through io_uring; seen as EBADF on 2026-11-21).
            let dir = config.data_dir.join(format!("shard-{id}"));
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let dir = std::fs::canonicalize(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let shard_config = ShardConfig {
                dir,
                segment_size_bytes: config.segment_size_bytes,
                zero_ahead: config.zero_ahead,
                recycle_segments: config.recycle_segments,
                flush_interval_ms: config.flush_interval_ms,
                retention_ms: config.retention_ms,
                retention_bytes: config.retention_bytes,
                // Topic metadata and consumer groups live in these queues: retention keeps
                // them from their log start on, which their compaction moves forward.
                pinned_queues: vec![META_QUEUE, GROUP_QUEUE],
                io_memory_bytes: io_memory_per_core(config.cores),
                backlog_read: config.fetch_backlog_read.into(),
                backlog_read_priority: config.fetch_read_priority.into(),
                ..ShardConfig::default()
            };
            Shard::open(shard_config)
                .await
                .map(Store::Engine)
                .map_err(|e| format!("core {id}: open shard: {e}"))
        }
    }
}

async fn watch_shutdown(core: Rc<Core>) {
    while !core.shared.shutdown.load(Ordering::Acquire) {
        glommio::timer::sleep(Duration::from_millis(SHUTDOWN_POLL_MS)).await;
    }
    tracing::info!(core = core.id, "shutdown requested");
    begin_stop(&core);
}

async fn accept_loop(core: &Rc<Core>, listener: TcpListener) {
    let mut next_conn = (core.id as u64) << 48;
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            core.stopped().await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                tracing::warn!(core = core.id, "accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let peer = match stream.peer_addr() {
            Ok(p) => p,
            Err(_) => continue,
        };
        let open = core.shared.connections.fetch_add(1, Ordering::AcqRel);
        if open >= core.config.max_connections {
            core.shared.connections.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(%peer, limit = core.config.max_connections, "connection refused: too many connections");
            continue;
        }
        next_conn += 1;
        let info = ConnInfo {
            id: next_conn,
            peer,
        };
        core.open_connections.set(core.open_connections.get() + 1);
        let core2 = core.clone();
        glommio::spawn_local(async move {
            crate::conn::serve(core2.clone(), stream, info).await;
            core2.shared.connections.fetch_sub(1, Ordering::AcqRel);
            core2.open_connections.set(core2.open_connections.get() - 1);
            core2.connections_changed.notify_all();
        })
        .detach();
    }
}

async fn drain(core: &Rc<Core>) {
    let deadline = std::time::Instant::now() + Duration::from_millis(DRAIN_TIMEOUT_MS);
    while core.open_connections.get() > 0 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            tracing::warn!(
                core = core.id,
                open = core.open_connections.get(),
                "connections still open at shutdown"
            );
            return;
        }
        let changed = core.connections_changed.notified();
        futures_lite::future::or(changed, glommio::timer::sleep(left)).await;
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread (and threads it spawns later), so that
/// [`wait_for_signal`] can take them synchronously.
pub fn block_signals() -> Result<(), ServerError> {
    // SAFETY: sigset operations on a local set; pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(ServerError::Signals(std::io::Error::from_raw_os_error(rc)));
        }
    }
    Ok(())
}

/// Waits for SIGINT/SIGTERM, or for a core to fail. Returns the signal number (0: failure).
pub fn wait_for_signal(shared: &Shared) -> i32 {
    loop {
        if shared.failed.load(Ordering::Acquire) {
            return 0;
        }
        // SAFETY: as in block_signals; sigtimedwait writes only into `info`.
        let sig = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            let timeout = libc::timespec {
                tv_sec: 0,
                tv_nsec: 100_000_000,
            };
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::sigtimedwait(&set, &mut info, &timeout)
        };
        if sig > 0 {
            return sig;
        }
    }
}
