//! One core's state: its storage, its mesh end, its copy of the metadata, and (on core 0) the
//! single metadata writer.
//!
//! Every executor thread holds exactly one [`Core`], reachable from any task or cross-core job
//! on that thread through [`current`].

use crate::config::Config;
use crate::group::compact::{holds_back_retention, retained_limit};
use crate::mesh::{Mesh, Notify};
use crate::metadata::{
    decode_events, encode_events, MetaError, MetaEvent, Snapshot, META_COMPACT_EVENTS,
    META_COMPACT_LIVE_FACTOR, META_QUEUE, META_SNAPSHOT_MAX_BYTES,
};
use crate::produce::ProducerTable;
use crate::store::Store;
use ringmq_engine::{Durability, EngineError, Offset};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes read per step when replaying an internal queue.
const REPLAY_READ_BYTES: usize = 1 << 20;

/// State shared by every core (atomics only: no lock on the data path).
#[derive(Debug, Default)]
pub struct Shared {
    pub shutdown: AtomicBool,
    pub connections: AtomicUsize,
    pub drained: AtomicUsize,
    pub failed: AtomicBool,
}

pub struct Core {
    pub id: usize,
    pub config: Arc<Config>,
    pub store: Store,
    pub mesh: Rc<Mesh>,
    pub shared: Arc<Shared>,
    /// Host and port given to clients.
    pub advertised: (String, i32),
    meta: RefCell<Arc<Snapshot>>,
    /// Woken when a newer snapshot is installed.
    pub meta_changed: Notify,
    /// Woken after every successful append on this core (fetch long polling).
    pub appended: Notify,
    /// Per queue, the end of the appends this process saw resolve (readable data). A queue not
    /// here has had no append since start-up, so the engine's end offset is all readable.
    visible_end: RefCell<std::collections::HashMap<ringmq_engine::QueueId, u64>>,
    /// Core 0 only: serialises metadata changes and the metadata log's compaction.
    meta_lock: glommio::sync::Semaphore,
    /// Core 0 only: events in the metadata queue beyond its last snapshot.
    meta_events_since_snapshot: Cell<u64>,
    /// Core 0 only: a compaction task is queued or running.
    meta_compacting: Cell<bool>,
    /// Core 0 only: bytes of the last metadata snapshot this process wrote.
    meta_snapshot_bytes: Cell<u64>,
    /// Idempotent producer state per (queue, producer id).
    pub producers: ProducerTable,
    pub stopping: Cell<bool>,
    pub stop: Notify,
    pub open_connections: Cell<usize>,
    pub connections_changed: Notify,
    pub groups: RefCell<Option<Rc<crate::groups::Coordinator>>>,
    /// Task queue of fetch handlers, below the default queue of everything else
    /// ([`FETCH_SHARES`]).
    pub fetch_queue: glommio::TaskQueueHandle,
}

/// CPU shares of the task queue fetch handlers run in, against glommio's default queue (1000)
/// where produce, group and admin requests run. A catch-up fetch reads and CRC-checks up to
/// tens of MiB per request; with lower shares, appends on the same core run first whenever
/// both are ready (the read path yields between batches, `yield_if_needed`).
pub const FETCH_SHARES: usize = 100;
/// Longest a fetch task runs before the executor may switch to other work (glommio's preempt
/// timer is the smallest `Latency::Matters` of the active queues, else 100 ms): shares only
/// order queues when a task yields, and a catch-up fetch CRC-checks and sends 16 MiB (~10 ms
/// of CPU) with `yield_if_needed` points that a 100 ms timer never fires at. While a fetch is
/// active every queue is preempted after this long, so appends of this core wait at most about
/// this long behind fetch work.
pub const FETCH_PREEMPT: std::time::Duration = std::time::Duration::from_micros(500);

thread_local! {
    static CURRENT: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
}

/// The core of the calling executor thread.
///
/// Panics if called off a broker executor: every caller is a task or a mesh job that only
/// exists on broker executors, so this is our own invariant, not input.
pub fn current() -> Rc<Core> {
    CURRENT
        .with(|c| c.borrow().clone())
        .expect("called on a broker executor thread")
}

/// Makes `core` the calling thread's core.
pub fn install(core: Rc<Core>) {
    CURRENT.with(|c| *c.borrow_mut() = Some(core));
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Mesh(#[from] crate::mesh::MeshError),
}

impl Core {
    pub fn new(
        id: usize,
        config: Arc<Config>,
        store: Store,
        mesh: Rc<Mesh>,
        shared: Arc<Shared>,
        advertised: (String, i32),
    ) -> Core {
        let shards = config.cores as u32;
        let fetch_queue = glommio::executor().create_task_queue(
            glommio::Shares::Static(FETCH_SHARES),
            glommio::Latency::Matters(FETCH_PREEMPT),
            "fetch",
        );
        Core {
            id,
            config,
            store,
            mesh,
            shared,
            advertised,
            meta: RefCell::new(Arc::new(Snapshot::new(shards))),
            meta_changed: Notify::default(),
            appended: Notify::default(),
            visible_end: RefCell::new(std::collections::HashMap::new()),
            meta_lock: glommio::sync::Semaphore::new(1),
            meta_events_since_snapshot: Cell::new(0),
            meta_compacting: Cell::new(false),
            meta_snapshot_bytes: Cell::new(0),
            producers: ProducerTable::default(),
            stopping: Cell::new(false),
            stop: Notify::default(),
            open_connections: Cell::new(0),
            connections_changed: Notify::default(),
            groups: RefCell::new(None),
            fetch_queue,
        }
    }

    pub fn cores(&self) -> usize {
        self.mesh.cores()
    }

    /// This core's current metadata.
    pub fn meta(&self) -> Arc<Snapshot> {
        self.meta.borrow().clone()
    }

    /// Installs `snap` if it is newer than ours.
    pub fn install_snapshot(&self, snap: Arc<Snapshot>) {
        let newer = snap.version > self.meta.borrow().version;
        if newer {
            *self.meta.borrow_mut() = snap;
            self.meta_changed.notify_all();
        }
    }

    /// Core 0 at startup: replays the metadata queue, writes `Init` on a fresh directory, and
    /// raises the producer-id counter above every id any shard has seen.
    pub async fn load_metadata(&self) -> Result<(), CoreError> {
        assert_eq!(self.id, 0, "metadata is loaded by core 0 only");
        let mut snap = Snapshot::new(self.config.cores as u32);
        let mut fresh = true;
        let mut since_snapshot = 0;
        for batch in read_queue(&self.store, META_QUEUE).await? {
            let events = decode_events(&batch)?;
            // A snapshot is a batch of its own: the events after it are what it leaves to replay.
            if events
                .iter()
                .any(|ev| matches!(ev, MetaEvent::SnapshotStart { .. }))
            {
                since_snapshot = 0;
            } else {
                since_snapshot += events.len() as u64;
            }
            for ev in events {
                fresh = false;
                snap.apply(&ev)?;
            }
        }
        self.meta_events_since_snapshot.set(since_snapshot);
        if fresh {
            let init = MetaEvent::Init {
                cluster_id: uuid::Uuid::new_v4().simple().to_string(),
                shards: self.config.cores as u32,
            };
            self.store
                .append(
                    META_QUEUE,
                    encode_events(std::slice::from_ref(&init)).into(),
                    Durability::Durable,
                )
                .await?;
            snap.apply(&init)?;
        }
        let mut max_seen = snap.next_producer_id - 1;
        for core in 0..self.cores() {
            let seen = self
                .mesh
                .call(core, || async { current().store.max_producer_id() })
                .await?;
            max_seen = max_seen.max(seen.unwrap_or(-1));
        }
        snap.next_producer_id = max_seen + 1;
        snap.version += 1;
        tracing::info!(
            topics = snap.topics.len(),
            version = snap.version,
            "metadata loaded"
        );
        self.publish(Arc::new(snap)).await;
        if self.meta_compaction_due() {
            self.compact_metadata_in_background();
        }
        glommio::spawn_local(watch_meta_retention()).detach();
        Ok(())
    }

    /// Core 0 only: computes the events of one change from the current snapshot, logs them
    /// durably, then installs the new snapshot on every core before returning it.
    /// `plan` returns the events and a value for the caller; an empty event list logs nothing.
    pub async fn change_metadata<T>(
        &self,
        plan: impl FnOnce(&Snapshot) -> (Vec<MetaEvent>, T),
    ) -> Result<(Arc<Snapshot>, T), CoreError> {
        assert_eq!(self.id, 0, "metadata has one writer: core 0");
        // The semaphore is never closed, so acquire only fails if it were.
        let _guard = self.meta_lock.acquire_permit(1).await.ok();
        let current_snap = self.meta();
        let (events, out) = plan(&current_snap);
        if events.is_empty() {
            return Ok((current_snap, out));
        }
        let mut next = (*current_snap).clone();
        for ev in &events {
            next.apply(ev)?;
        }
        self.store
            .append(
                META_QUEUE,
                encode_events(&events).into(),
                Durability::Durable,
            )
            .await?;
        let next = Arc::new(next);
        self.publish(next.clone()).await;
        let since = self.meta_events_since_snapshot.get() + events.len() as u64;
        self.meta_events_since_snapshot.set(since);
        if self.meta_compaction_due() {
            self.compact_metadata_in_background();
        }
        Ok((next, out))
    }

    /// Core 0 only: whether the metadata queue holds more than `META_COMPACT_EVENTS` events
    /// beyond its last snapshot, and more than `META_COMPACT_LIVE_FACTOR` times the events a
    /// snapshot would write now (so a large state is not rewritten at every change).
    fn meta_compaction_due(&self) -> bool {
        let since = self.meta_events_since_snapshot.get();
        if since <= META_COMPACT_EVENTS {
            return false;
        }
        let meta = self.meta();
        let live = 1 + meta.topics.len() as u64 + meta.transactional.len() as u64;
        since > META_COMPACT_LIVE_FACTOR.saturating_mul(live)
    }

    /// Core 0 only: starts [`Core::compact_metadata`] as its own task unless one is queued or
    /// running. Off the request's path: the task waits for the current change's lock.
    fn compact_metadata_in_background(&self) {
        if self.meta_compacting.replace(true) {
            return;
        }
        glommio::spawn_local(async {
            let core = current();
            if let Err(e) = core.compact_metadata().await {
                tracing::warn!(error = %e, "metadata log not compacted");
            }
            core.meta_compacting.set(false);
        })
        .detach();
    }

    /// Core 0 only: whether the metadata queue's first retained batch holds back more of the
    /// core's commit log from retention than the group logs may (the same limit:
    /// `COMPACT_RETAINED_SEGMENTS` segments, or twice the last snapshot if that is larger).
    fn meta_holds_back_retention(&self) -> bool {
        holds_back_retention(
            self.store.retained_log_bytes(META_QUEUE),
            retained_limit(self.config.segment_size_bytes),
            self.meta_snapshot_bytes.get(),
        )
    }

    /// Core 0 only: appends a snapshot of the current metadata to the metadata queue and moves
    /// the queue's log start to it (see the `metadata` module docs). Holds the change lock
    /// throughout, so the snapshot is exactly the state of every change logged before it.
    /// Returns the new log start, or `None` when the snapshot is too large to write.
    pub async fn compact_metadata(&self) -> Result<Option<Offset>, CoreError> {
        assert_eq!(self.id, 0, "metadata has one writer: core 0");
        let _guard = self.meta_lock.acquire_permit(1).await.ok();
        let snap = self.meta();
        let batch = encode_events(&snap.snapshot_events());
        let bytes = batch.len();
        if bytes > META_SNAPSHOT_MAX_BYTES {
            tracing::warn!(
                bytes,
                max = META_SNAPSHOT_MAX_BYTES,
                "metadata snapshot too large; metadata log not compacted"
            );
            self.meta_events_since_snapshot.set(0);
            return Ok(None);
        }
        let appended = self
            .store
            .append(META_QUEUE, batch.into(), Durability::Durable)
            .await?;
        self.meta_events_since_snapshot.set(0);
        self.meta_snapshot_bytes.set(bytes as u64);
        let start = self
            .store
            .advance_log_start(META_QUEUE, appended.base_offset)?;
        tracing::info!(
            topics = snap.topics.len(),
            log_start = start.0,
            "metadata log compacted"
        );
        Ok(Some(start))
    }

    /// Installs `snap` here and on every other core, waiting for all of them.
    async fn publish(&self, snap: Arc<Snapshot>) {
        self.install_snapshot(snap.clone());
        let calls = (0..self.cores()).filter(|&c| c != self.id).map(|core| {
            let s = snap.clone();
            self.mesh
                .call(core, move || async move { current().install_snapshot(s) })
        });
        for result in futures_join_all(calls).await {
            if let Err(e) = result {
                tracing::warn!("metadata not delivered: {e}");
            }
        }
    }

    /// Records that an append ending at `end` (exclusive) resolved.
    pub fn note_appended(&self, queue: ringmq_engine::QueueId, end: u64) {
        let mut map = self.visible_end.borrow_mut();
        let e = map.entry(queue).or_insert(0);
        *e = (*e).max(end);
    }

    /// The end of the readable data of `queue` (appends assigned but still in flight are not
    /// readable yet, so long polls must not wake for them).
    pub fn readable_end(&self, queue: ringmq_engine::QueueId) -> u64 {
        match self.visible_end.borrow().get(&queue) {
            Some(&end) => end,
            None => self.store.end_offset(queue).0,
        }
    }

    /// Waits until this core has received its first metadata snapshot.
    pub async fn wait_for_metadata(&self) {
        while self.meta().version == 0 {
            self.meta_changed.notified().await;
        }
    }

    /// Resolves when shutdown has begun.
    pub async fn stopped(&self) {
        while !self.stopping.get() {
            self.stop.notified().await;
        }
    }
}

/// How often core 0 checks whether the metadata queue's start holds back retention (changes
/// are rare, so nothing else would move it while other queues fill the log). The check
/// compares two numbers; retention waits on at most a second of the core's traffic.
pub const META_RETENTION_CHECK_MS: u64 = 1_000;

/// Core 0's task: compacts the metadata log whenever its start holds back retention.
async fn watch_meta_retention() {
    loop {
        glommio::timer::sleep(std::time::Duration::from_millis(META_RETENTION_CHECK_MS)).await;
        let core = current();
        if core.stopping.get() {
            return;
        }
        if core.meta_holds_back_retention() {
            core.compact_metadata_in_background();
        }
    }
}

/// Every stored batch of an internal queue, in order.
pub async fn read_queue(
    store: &Store,
    queue: ringmq_engine::QueueId,
) -> Result<Vec<bytes::Bytes>, EngineError> {
    let mut out = Vec::new();
    let mut from = store.log_start_offset(queue);
    let end = store.end_offset(queue);
    while from < end {
        let r = store.read(queue, from, REPLAY_READ_BYTES).await?;
        let Some(last) = r.batches.last() else { break };
        let h = ringmq_wire::record_batch::BatchHeader::parse(last)
            .map_err(EngineError::CorruptBatch)?;
        from = Offset(h.last_offset() as u64 + 1);
        out.extend(r.batches);
    }
    Ok(out)
}

/// Where a partition's answer goes in a response: (topic index, partition index) in request
/// order.
pub type Slot = (usize, usize);

/// Sends each owning core its part of a request in one call, every core at once. `parts`:
/// per core, its items as (where the answer goes, the work); `on_owner` runs on that core with
/// the works in order and answers one per work. Returns (slot, answer) pairs; the items of a
/// core that cannot be reached answer `unreachable` (logged with `what`).
pub async fn call_owners<S, W, A, F, Fut>(
    mesh: &Rc<Mesh>,
    what: &'static str,
    parts: impl IntoIterator<Item = (usize, Vec<(S, W)>)>,
    unreachable: A,
    on_owner: F,
) -> Vec<(S, A)>
where
    W: Send + 'static,
    A: Clone + Send + 'static,
    F: FnOnce(Vec<W>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Vec<A>> + 'static,
{
    let calls = parts.into_iter().map(|(owner, items)| {
        let (slots, works): (Vec<S>, Vec<W>) = items.into_iter().unzip();
        let (on_owner, unreachable) = (on_owner.clone(), unreachable.clone());
        async move {
            let answers = match mesh.call(owner, move || on_owner(works)).await {
                Ok(answers) => answers,
                Err(e) => {
                    tracing::warn!("{what} on core {owner} failed: {e}");
                    vec![unreachable; slots.len()]
                }
            };
            slots.into_iter().zip(answers).collect::<Vec<_>>()
        }
    });
    futures_join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Polls all futures concurrently and returns their outputs in order.
pub async fn futures_join_all<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let tasks: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = tasks.iter().map(|_| None).collect();
    let mut tasks: Vec<Option<_>> = tasks.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, out) in tasks.iter_mut().zip(outputs.iter_mut()) {
            if let Some(fut) = slot {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}

/// Marks shutdown as started on this core.
pub fn begin_stop(core: &Core) {
    core.stopping.set(true);
    core.stop.notify_all();
    // Long polls waiting for data re-check `stopping` and answer now.
    core.appended.notify_all();
}

pub fn shared_shutdown_requested(shared: &Shared) -> bool {
    shared.shutdown.load(Ordering::Acquire)
}
