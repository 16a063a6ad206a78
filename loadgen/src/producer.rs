//! An open-loop producer: generates records on its [`Schedule`], batches them per partition
//! (batch size and linger, [`Accumulator`]), and pipelines produce requests, several in flight
//! per connection.
//!
//! ```text
//!  schedule ─► records due now (each with its intended time) ─► open batch per partition
//!     a batch full or its linger over ─► wait for an in-flight slot ─► records due by now join
//!     ─► one request: every ready batch of that leader ─► [write lock] ─► connection ─► broker
//!                                       │ pending queue (window: producers × --max-in-flight)
//!  reader task ◄──────────────────── responses in order: ack latency = now − intended
//! ```
//!
//! The producers of one core share one connection per broker ([`Pool`]). When the in-flight
//! window is full a producer waits, and the records that fall due in the meantime are
//! generated afterwards with their original intended times: the wait shows up as latency (no
//! coordinated omission). They go out in the next request together, as Kafka's producer sends
//! whatever its accumulator holds when a slot frees. Every record intended before the end of
//! the window is sent, however late; a record that fails (error code, timeout, disconnect) is
//! counted, never retried.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::io::{split, AsyncWriteExt, ReadHalf, WriteHalf};
use glommio::net::TcpStream;
use glommio::sync::{Semaphore, StaticPermit};
use glommio::Task;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse};

use crate::accumulator::{Accumulator, MAX_REQUEST_BYTES};
use crate::client::cluster::topic_name;
use crate::client::conn::{self, decode_response, with_timeout, ClientError, Conn, FrameReader};
use crate::client::records::{OpenBatch, Rng, ValueMaker};
use crate::clock::now_ns;
use crate::config::{Keys, MAX_RECORD_BYTES};
use crate::ctx::CoreCtx;
use crate::schedule::Schedule;
use crate::stats::{ErrorKind, Kind};

/// Least time between reconnection attempts to a broker that dropped us.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);
/// Most records generated in one go before the producer lets other tasks run.
const MAX_RECORDS_PER_STEP: u64 = 4096;

/// One producer's share of the workload.
#[derive(Debug, Clone, Copy)]
pub struct ProducerPlan {
    pub id: usize,
    pub schedule: Schedule,
}

/// Runs one producer until the end of the window, then drains its in-flight requests.
pub async fn run(ctx: Rc<CoreCtx>, pool: Rc<Pool>, plan: ProducerPlan) {
    let mut p = Producer::new(ctx.clone(), pool, plan);
    p.generate().await;
    p.flush_all().await;
    p.drain().await;
    ctx.shared.producers_running.fetch_sub(1, Ordering::AcqRel);
}

struct Producer {
    ctx: Rc<CoreCtx>,
    plan: ProducerPlan,
    /// This core's connections, shared with its other producers.
    pool: Rc<Pool>,
    /// Batches by partition, and what the next request carries.
    acc: Accumulator,
    /// Index of the next record on the schedule.
    next: u64,
    /// Set once the schedule has no more records for the window.
    over: bool,
    /// Partition for keyless records (moves on after each batch, like Kafka's sticky partitioner).
    sticky: i32,
    values: ValueMaker,
    rng: Rng,
    key_buf: Vec<u8>,
}

impl Producer {
    fn new(ctx: Rc<CoreCtx>, pool: Rc<Pool>, plan: ProducerPlan) -> Producer {
        let partitions = ctx.cluster.partitions();
        let linger_ns = (ctx.args.linger_ms * 1e6) as u64;
        Producer {
            acc: Accumulator::new(partitions, ctx.args.batch_bytes, linger_ns),
            next: 0,
            over: false,
            sticky: (plan.id as i32) % partitions,
            values: ValueMaker::new(plan.id as u64 + 1),
            rng: Rng::new(0xC0FFEE + plan.id as u64),
            key_buf: Vec::with_capacity(32),
            pool,
            ctx,
            plan,
        }
    }

    /// The generation loop: everything due is generated, a request goes out when a batch is
    /// ready (full, or its linger over), then the producer sleeps until the next record or
    /// linger deadline.
    async fn generate(&mut self) {
        let open_loop = self.plan.schedule.is_open_loop();
        loop {
            let capped = self.make_due(now_ns());
            if self.over {
                return;
            }
            if let Some(p) = self.acc.first_ready(now_ns(), false) {
                self.send_request(p, false).await;
                // Let the response reader and the consumers run between requests.
                futures_lite::future::yield_now().await;
            } else if open_loop && !capped {
                self.sleep_until_next().await;
            } else {
                // Closed loop: the in-flight window, not the clock, paces the producer.
                futures_lite::future::yield_now().await;
            }
        }
    }

    /// Makes the records due at `now`: open loop, every record intended by then, however late
    /// the producer is running; closed loop, records until a batch is full. At most
    /// [`MAX_RECORDS_PER_STEP`]; returns true when it stopped there with more due. Sets `over`
    /// at the first record intended at or after the window's end (open loop; closed loop:
    /// once the window is over): every record intended before the end is sent.
    fn make_due(&mut self, now: u64) -> bool {
        let schedule = self.plan.schedule;
        let end_ns = self.ctx.window.end_ns;
        if schedule
            .intended_ns(self.next)
            .is_some_and(|next| next >= end_ns)
        {
            // Over as soon as the next record falls past the end, not once it is due.
            self.over = true;
            return false;
        }
        let due = schedule
            .due_count(now)
            .min(self.next.saturating_add(MAX_RECORDS_PER_STEP));
        while self.next < due {
            let intended = schedule.intended_ns(self.next).unwrap_or_else(now_ns);
            if intended >= end_ns {
                self.over = true;
                return false;
            }
            self.next += 1;
            if self.append(intended, now) && !schedule.is_open_loop() {
                return false;
            }
        }
        self.next == due && schedule.due_count(now) > due
    }

    /// Adds one record; returns true if its batch is now full.
    fn append(&mut self, intended_ns: u64, now_ns: u64) -> bool {
        let size = self
            .ctx
            .args
            .record_size
            .sample(self.rng.next_u64())
            .min(MAX_RECORD_BYTES);
        let partitions = self.ctx.cluster.partitions();
        let key = self.next_key();
        let partition = match key {
            Some(_) => (fnv1a(&self.key_buf) % partitions as u64) as i32,
            None => self.sticky,
        };
        let pos = self.rng.next_u64();
        let value = self.values.make(size, intended_ns, pos);
        let key = key.map(|_| self.key_buf.as_slice());
        let full = self.acc.append(partition, key, value, intended_ns, now_ns);
        if full && partition == self.sticky {
            self.next_sticky();
        }
        full
    }

    fn next_sticky(&mut self) {
        if self.ctx.args.keys == Keys::None {
            self.sticky = (self.sticky + 1) % self.ctx.cluster.partitions();
        }
    }

    /// Fills `key_buf` with the next key, or returns `None` for keyless records.
    fn next_key(&mut self) -> Option<()> {
        let key_space = self.ctx.args.key_space;
        let n = match self.ctx.args.keys {
            Keys::None => return None,
            Keys::Random => self.rng.next_u64() % key_space,
            Keys::Hot(fraction) if self.rng.next_f64() < fraction => {
                self.key_buf.clear();
                self.key_buf.extend_from_slice(b"hot-key");
                return Some(());
            }
            Keys::Hot(_) => self.rng.next_u64() % key_space,
        };
        self.key_buf.clear();
        let _ = write!(self.key_buf, "key-{n:010}");
        Some(())
    }

    async fn sleep_until_next(&self) {
        let end_ns = self.ctx.window.end_ns;
        let wake = [
            self.plan.schedule.intended_ns(self.next),
            self.acc.next_linger_deadline(),
            Some(end_ns),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(end_ns);
        let now = now_ns();
        if wake > now {
            glommio::timer::sleep(Duration::from_nanos(wake - now)).await;
        } else {
            futures_lite::future::yield_now().await;
        }
    }

    async fn flush_all(&mut self) {
        while let Some(p) = self.acc.first_ready(now_ns(), true) {
            self.send_request(p, true).await;
        }
    }

    /// Sends one produce request to the leader of `partition` (which has a batch ready): waits
    /// for an in-flight slot, makes the records that fell due meanwhile (they join the
    /// accumulator as they would have joined Kafka's while its sender waited; not with
    /// `flush`, at the end), then takes the first batch of each of that leader's partitions,
    /// up to [`MAX_REQUEST_BYTES`].
    async fn send_request(&mut self, partition: i32, flush: bool) {
        let cluster = self.ctx.cluster.clone();
        let Ok(addr) = cluster.leader_addr(partition) else {
            let lost = self.acc.take_all(|p| p == partition);
            fail_open(&self.ctx, lost, ErrorKind::Protocol);
            return;
        };
        let leader = cluster.leaders[partition as usize];
        let to_leader = |p: i32| cluster.leaders.get(p as usize) == Some(&leader);
        let ctx = self.ctx.clone();
        let Some(conn) = self.pool.get(&ctx, addr).await else {
            let lost = self.acc.take_all(to_leader);
            fail_open(&ctx, lost, ErrorKind::Disconnect);
            return;
        };
        let permit = match conn.slot(&ctx).await {
            Ok(permit) => permit,
            Err(e) => {
                let lost = self.acc.take_all(to_leader);
                fail_open(&ctx, lost, ErrorKind::Timeout);
                conn.fail_connection(&ctx, &e);
                return;
            }
        };
        if !flush && self.plan.schedule.is_open_loop() {
            self.make_due(now_ns());
        }
        let batches = self.acc.take_request(MAX_REQUEST_BYTES, to_leader);
        if !self.acc.has_open(self.sticky) && batches.iter().any(|(p, _)| *p == self.sticky) {
            self.next_sticky();
        }
        let mut sent = Vec::with_capacity(batches.len());
        for (p, b) in batches {
            let records = b.records() as u64;
            match b.finish(ctx.args.compression) {
                Ok((bytes, intended, value_bytes)) => sent.push(SentBatch {
                    partition: p,
                    bytes,
                    intended,
                    value_bytes,
                }),
                Err(_) => {
                    ctx.error(ErrorKind::Protocol);
                    ctx.shared.failed.fetch_add(records, Ordering::Relaxed);
                }
            }
        }
        if !sent.is_empty() {
            conn.send(&ctx, permit, sent).await;
        }
    }

    /// Waits for every in-flight request on this core's connections (up to the drain
    /// timeout); what is still pending then counts as timed out.
    async fn drain(&mut self) {
        let timeout = self.ctx.args.drain_timeout;
        let conns: Vec<Rc<ProducerConn>> = self.pool.conns.borrow().values().cloned().collect();
        for conn in conns {
            conn.drain(&self.ctx, timeout).await;
        }
    }
}

/// Counts batches that never made it into a request as failed.
fn fail_open(ctx: &CoreCtx, batches: Vec<OpenBatch>, kind: ErrorKind) {
    let records: u64 = batches.iter().map(|b| b.records() as u64).sum();
    if records > 0 {
        ctx.error(kind);
        ctx.shared.failed.fetch_add(records, Ordering::Relaxed);
    }
}

/// Kafka-style 32-bit FNV-1a over the key, for key → partition.
fn fnv1a(key: &[u8]) -> u64 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in key {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    u64::from(h)
}

/// A batch in a request: what the acknowledgement has to account for.
struct SentBatch {
    partition: i32,
    bytes: Bytes,
    intended: Vec<u64>,
    value_bytes: u64,
}

/// A request waiting for its response; holding the permit keeps its in-flight slot.
struct Pending {
    cid: i32,
    batches: Vec<SentBatch>,
    /// When its write began (for [`Kind::Request`]).
    sent_ns: u64,
    _permit: StaticPermit,
}

/// The producer connections of one core: one per broker, shared by the core's producers.
pub struct Pool {
    conns: RefCell<BTreeMap<String, Rc<ProducerConn>>>,
    /// Last failed connection attempt per broker, for the reconnection back-off.
    failed_at_ns: RefCell<BTreeMap<String, u64>>,
    /// Held while connecting, so producers on the core do not connect twice.
    connecting: Semaphore,
    /// Requests in flight per connection: `--max-in-flight` for each producer sharing it.
    window: u64,
}

impl Pool {
    pub fn new(producers: usize, max_in_flight_each: usize) -> Pool {
        Pool {
            conns: RefCell::default(),
            failed_at_ns: RefCell::default(),
            connecting: Semaphore::new(1),
            window: (producers.max(1) * max_in_flight_each) as u64,
        }
    }

    /// The live connection to `addr`, connecting (or reconnecting, after the back-off) if
    /// needed.
    async fn get(&self, ctx: &Rc<CoreCtx>, addr: &str) -> Option<Rc<ProducerConn>> {
        if let Some(c) = self.live(addr) {
            return Some(c);
        }
        let _guard = self.connecting.acquire_permit(1).await.ok()?;
        if let Some(c) = self.live(addr) {
            return Some(c); // another producer connected while we waited
        }
        let now = now_ns();
        let last_failure = self.failed_at_ns.borrow().get(addr).copied();
        if last_failure.is_some_and(|t| now < t + RECONNECT_BACKOFF.as_nanos() as u64) {
            return None;
        }
        match ProducerConn::connect(ctx, addr, self.window).await {
            Ok(c) => {
                let c = Rc::new(c);
                self.conns.borrow_mut().insert(addr.to_owned(), c.clone());
                Some(c)
            }
            Err(_) => {
                ctx.error(ErrorKind::Disconnect);
                self.failed_at_ns.borrow_mut().insert(addr.to_owned(), now);
                None
            }
        }
    }

    fn live(&self, addr: &str) -> Option<Rc<ProducerConn>> {
        self.conns
            .borrow()
            .get(addr)
            .filter(|c| !c.dead.get())
            .cloned()
    }
}

/// One connection to a broker, shared by a core's producers: requests are written under a
/// write lock (so correlation ids, the pending queue and the bytes on the wire keep one
/// order), and a reader task matches responses to the pending queue in order.
struct ProducerConn {
    writer: RefCell<Option<WriteHalf<TcpStream>>>,
    /// Serialises writers; the writer is taken out of its cell while the lock is held.
    write_lock: Semaphore,
    addr: String,
    version: i16,
    next_cid: Cell<i32>,
    in_flight: Rc<Semaphore>,
    max_in_flight: u64,
    pending: Rc<RefCell<VecDeque<Pending>>>,
    dead: Rc<Cell<bool>>,
    reader: RefCell<Option<Task<()>>>,
}

impl ProducerConn {
    async fn connect(
        ctx: &Rc<CoreCtx>,
        addr: &str,
        max_in_flight: u64,
    ) -> Result<ProducerConn, ClientError> {
        let conn = Conn::connect(addr, ctx.args.request_timeout).await?;
        let version = conn.version(ApiKey::Produce)?;
        let (stream, frames, _, next_cid) = conn.into_parts();
        let (reader, writer) = split(stream);
        let pending: Rc<RefCell<VecDeque<Pending>>> = Rc::default();
        let dead = Rc::new(Cell::new(false));
        let reader_task = (ctx.args.acks != 0).then(|| {
            glommio::spawn_local(read_responses(
                ctx.clone(),
                reader,
                frames,
                addr.to_owned(),
                version,
                pending.clone(),
                dead.clone(),
            ))
        });
        Ok(ProducerConn {
            writer: RefCell::new(Some(writer)),
            write_lock: Semaphore::new(1),
            addr: addr.to_owned(),
            version,
            next_cid: Cell::new(next_cid),
            in_flight: Rc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            pending,
            dead,
            reader: RefCell::new(reader_task),
        })
    }

    /// An in-flight slot for one request (none with acks=0: nothing is waited for); waits at
    /// most the request timeout (a broker that stops answering fails the connection).
    async fn slot(&self, ctx: &CoreCtx) -> Result<Option<StaticPermit>, ClientError> {
        if ctx.args.acks == 0 {
            return Ok(None);
        }
        let acquire = async {
            self.in_flight
                .acquire_static_permit(1)
                .await
                .map_err(|_| ClientError::Closed {
                    addr: self.addr.clone(),
                })
        };
        with_timeout(ctx.args.request_timeout, "an in-flight slot", acquire)
            .await
            .map(Some)
    }

    /// Sends one produce request in the in-flight slot `permit` (from [`Self::slot`]).
    async fn send(&self, ctx: &Rc<CoreCtx>, permit: Option<StaticPermit>, batches: Vec<SentBatch>) {
        let closed = || ClientError::Closed {
            addr: self.addr.clone(),
        };
        let timeout = ctx.args.request_timeout;
        let lock = async {
            self.write_lock
                .acquire_permit(1)
                .await
                .map_err(|_| closed())
        };
        let _write_guard = match with_timeout(timeout, "the connection's write lock", lock).await {
            Ok(g) => g,
            Err(_) => {
                fail_batches(ctx, &batches, ErrorKind::Timeout);
                return;
            }
        };
        let taken = self.writer.borrow_mut().take();
        let (Some(mut writer), false) = (taken, self.dead.get()) else {
            fail_batches(ctx, &batches, ErrorKind::Disconnect);
            return;
        };
        let cid = self.next_cid.get();
        self.next_cid.set(cid.wrapping_add(1));
        let request = produce_request(ctx, &batches);
        let Ok(frame) = conn::encode::<ProduceRequest>(cid, self.version, &request) else {
            *self.writer.borrow_mut() = Some(writer);
            fail_batches(ctx, &batches, ErrorKind::Protocol);
            return;
        };
        let records: u64 = batches.iter().map(|b| b.intended.len() as u64).sum();
        let bytes: u64 = batches.iter().map(|b| b.value_bytes).sum();
        // Queue the request before writing it: its response can only follow the write.
        let unacked = match permit {
            Some(permit) => {
                self.pending.borrow_mut().push_back(Pending {
                    cid,
                    batches,
                    sent_ns: now_ns(),
                    _permit: permit,
                });
                None
            }
            None => Some(batches),
        };
        let write = async {
            writer
                .write_all(&frame)
                .await
                .map_err(|source| ClientError::Io {
                    addr: self.addr.clone(),
                    source,
                })
        };
        match with_timeout(timeout, "a produce write", write).await {
            Ok(()) => {
                *self.writer.borrow_mut() = Some(writer);
                ctx.shared.sent.add(records, bytes);
                if let Some(batches) = unacked {
                    // acks=0: the write is all the acknowledgement there will be.
                    acknowledge(ctx, &batches, now_ns());
                }
            }
            Err(e) => {
                // The request may be half written: the connection is unusable (the writer
                // is dropped here, closing our half).
                if let Some(batches) = unacked {
                    fail_batches(ctx, &batches, ErrorKind::Disconnect);
                }
                self.fail_connection(ctx, &e);
            }
        }
    }

    /// Marks the connection dead and fails everything pending on it.
    fn fail_connection(&self, ctx: &Rc<CoreCtx>, err: &ClientError) {
        let kind = match err {
            ClientError::Timeout { .. } => ErrorKind::Timeout,
            _ => ErrorKind::Disconnect,
        };
        self.dead.set(true);
        drop(self.reader.borrow_mut().take()); // cancels the reader task
        drop(self.writer.borrow_mut().take());
        let pending: Vec<Pending> = self.pending.borrow_mut().drain(..).collect();
        for p in pending {
            fail_batches(ctx, &p.batches, kind.clone());
        }
    }

    /// Waits until nothing is in flight (taking every slot, then handing them back at once).
    async fn drain(&self, ctx: &Rc<CoreCtx>, timeout: Duration) {
        if self.dead.get() || ctx.args.acks == 0 {
            return;
        }
        let closed = || ClientError::Closed {
            addr: self.addr.clone(),
        };
        let all = async {
            self.in_flight
                .acquire_permit(self.max_in_flight)
                .await
                .map(drop)
                .map_err(|_| closed())
        };
        if let Err(e) = with_timeout(timeout, "outstanding acknowledgements", all).await {
            self.fail_connection(ctx, &e);
        }
    }
}

fn produce_request(ctx: &CoreCtx, batches: &[SentBatch]) -> ProduceRequest {
    let parts = batches
        .iter()
        .map(|b| {
            PartitionProduceData::default()
                .with_index(b.partition)
                .with_records(Some(b.bytes.clone()))
        })
        .collect();
    ProduceRequest::default()
        .with_acks(ctx.args.acks)
        .with_timeout_ms(ctx.args.request_timeout.as_millis().min(i32::MAX as u128) as i32)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(&ctx.cluster.topic))
            .with_topic_id(ctx.cluster.topic_id)
            .with_partition_data(parts)])
}

/// Counts the batches' records as acknowledged at `now`, with their latencies.
///
/// Latency samples count toward the totals when the record was *intended* inside the measured
/// window (however late it was acknowledged); throughput counts records acknowledged while the
/// window is open, so a broker that falls behind shows a lower rate as well as the latency.
fn acknowledge(ctx: &CoreCtx, batches: &[SentBatch], now: u64) {
    let in_window = ctx.window.measures(now);
    for b in batches {
        for &intended in &b.intended {
            let m = ctx.window.measures(intended);
            ctx.record(Kind::Produce, now.saturating_sub(intended), m);
        }
        let n = b.intended.len() as u64;
        ctx.shared.acked.add(n, b.value_bytes);
        if in_window {
            ctx.shared.acked_measured.add(n, b.value_bytes);
        }
    }
}

fn fail_batches(ctx: &CoreCtx, batches: &[SentBatch], kind: ErrorKind) {
    let records: u64 = batches.iter().map(|b| b.intended.len() as u64).sum();
    if records > 0 {
        ctx.error(kind);
        ctx.shared.failed.fetch_add(records, Ordering::Relaxed);
    }
}

/// The reader half: takes responses in order, matches each to the front of the pending queue.
async fn read_responses(
    ctx: Rc<CoreCtx>,
    mut reader: ReadHalf<TcpStream>,
    mut frames: FrameReader,
    addr: String,
    version: i16,
    pending: Rc<RefCell<VecDeque<Pending>>>,
    dead: Rc<Cell<bool>>,
) {
    let failure = loop {
        let frame = match frames.next(&mut reader, &addr).await {
            Ok(f) => f,
            Err(_) => break ErrorKind::Disconnect,
        };
        let now = now_ns();
        let Some(p) = pending.borrow_mut().pop_front() else {
            break ErrorKind::Protocol;
        };
        match decode_response::<ProduceRequest>(frame, version, p.cid, &addr) {
            Ok(resp) => {
                let measured = ctx.window.measures(p.sent_ns);
                ctx.record(Kind::Request, now.saturating_sub(p.sent_ns), measured);
                settle(&ctx, &p.batches, &resp, now)
            }
            Err(_) => {
                fail_batches(&ctx, &p.batches, ErrorKind::Protocol);
                break ErrorKind::Protocol;
            }
        }
    };
    dead.set(true);
    let left: Vec<Pending> = pending.borrow_mut().drain(..).collect();
    if left.is_empty() && failure == ErrorKind::Disconnect {
        return; // closed with nothing outstanding
    }
    for p in left {
        fail_batches(&ctx, &p.batches, failure.clone());
    }
}

/// Applies a produce response: acknowledged batches record latency, failed ones count errors.
fn settle(ctx: &CoreCtx, batches: &[SentBatch], resp: &ProduceResponse, now: u64) {
    if resp.throttle_time_ms > 0 {
        ctx.error(ErrorKind::Throttled);
    }
    for b in batches {
        let code = resp
            .responses
            .iter()
            .filter(|t| {
                t.name.0.as_str() == ctx.cluster.topic || t.topic_id == ctx.cluster.topic_id
            })
            .flat_map(|t| t.partition_responses.iter())
            .find(|r| r.index == b.partition)
            .map(|r| r.error_code);
        match code {
            Some(0) => acknowledge(ctx, std::slice::from_ref(b), now),
            Some(code) => fail_batches(ctx, std::slice::from_ref(b), ErrorKind::from_code(code)),
            None => fail_batches(ctx, std::slice::from_ref(b), ErrorKind::Protocol),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_spreads_keys() {
        let mut counts = [0u32; 8];
        for n in 0..8000 {
            counts[(fnv1a(format!("key-{n:010}").as_bytes()) % 8) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (700..1300).contains(&c)),
            "{counts:?}"
        );
    }
}
