//! A consumer: fetch loops over assigned partitions, one per leader, counting records and
//! measuring end-to-end latency from the intended send time stamped in each value.
//!
//! When producers ran in the same run, a consumer keeps going after the window until it has
//! read up to the log end it finds once every producer is done (all acknowledged records), or
//! until the drain timeout, after which whatever it has not read counts as `not_consumed`.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, FetchResponse};
use ringmq_wire::record_batch;

use crate::client::cluster::connect_any;
use crate::client::cluster::{list_offsets, topic_name};
use crate::client::conn::{decode_response, encode, with_timeout, ClientError, Conn};
use crate::client::group::{Beat, Member, HEARTBEAT_INTERVAL};
use crate::client::records::{read_batches, stamp_of};
use crate::clock::now_ns;
use crate::ctx::CoreCtx;
use crate::stats::{ErrorKind, Kind};

/// Pause after a failed fetch before trying again.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Kafka's OFFSET_OUT_OF_RANGE error code.
const OFFSET_OUT_OF_RANGE: i16 = 1;
/// How often a draining consumer checks whether the producers are done.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// A partition and the offset to read next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

/// Runs one consumer over `positions` until the run is over for it.
pub async fn run(ctx: Rc<CoreCtx>, positions: Vec<Position>) {
    // Start with the producers, so a catch-up read is timed from the window's start.
    let now = now_ns();
    if now < ctx.window.start_ns {
        glommio::timer::sleep(Duration::from_nanos(ctx.window.start_ns - now)).await;
    }
    let by_leader = match ctx
        .cluster
        .by_leader(&positions.iter().map(|p| p.partition).collect::<Vec<_>>())
    {
        Ok(m) => m,
        Err(_) => {
            ctx.error(ErrorKind::Protocol);
            return;
        }
    };
    let loops = by_leader.into_iter().map(|(addr, parts)| {
        let mine = positions
            .iter()
            .filter(|p| parts.contains(&p.partition))
            .copied()
            .collect();
        glommio::spawn_local(fetch_loop(ctx.clone(), addr, mine))
    });
    for task in loops.collect::<Vec<_>>() {
        task.await;
    }
}

/// Runs one consumer-group member: joins, reads its assigned partitions from the shared
/// positions, heartbeats, and on a rebalance stops its fetch loops and joins again. Leaves
/// the group once every member of this run is done.
pub async fn run_member(ctx: Rc<CoreCtx>, group: String) {
    let timeout = ctx.args.request_timeout;
    let (topic, partitions) = (ctx.cluster.topic.clone(), ctx.cluster.partitions());
    let joined = async {
        let mut boot = connect_any(&ctx.args.bootstrap, timeout).await?;
        Member::join(&mut boot, &group, &topic, partitions, timeout).await
    };
    let (mut member, mut assigned) = match joined.await {
        Ok(j) => j,
        Err(e) => {
            ctx.error(classify(&e));
            ctx.shared.members_running.fetch_sub(1, Ordering::AcqRel);
            return;
        }
    };
    'generation: loop {
        let positions: Vec<Position> = assigned
            .iter()
            .map(|&p| Position {
                partition: p,
                offset: ctx.position(p),
            })
            .collect();
        let reader = glommio::spawn_local(run(ctx.clone(), positions));
        let finished = std::cell::Cell::new(false);
        let read = async {
            reader.await;
            finished.set(true);
        };
        let beat = async {
            loop {
                glommio::timer::sleep(HEARTBEAT_INTERVAL).await;
                match member.heartbeat(timeout).await {
                    Ok(Beat::Steady) => {}
                    Ok(Beat::Rejoin) => return,
                    Err(e) => ctx.error(classify(&e)),
                }
            }
        };
        // Whichever ends first: the reads (done) or a rebalance (the reads are cancelled).
        futures_lite::future::or(read, beat).await;
        if finished.get() {
            break 'generation;
        }
        match member.rejoin().await {
            Ok(a) => assigned = a,
            Err(e) => {
                ctx.error(classify(&e));
                break 'generation;
            }
        }
    }
    ctx.shared.members_running.fetch_sub(1, Ordering::AcqRel);
    while ctx.shared.members_running.load(Ordering::Acquire) > 0 {
        glommio::timer::sleep(DRAIN_POLL).await;
    }
    if let Err(e) = member.leave(timeout).await {
        ctx.error(classify(&e));
    }
}

fn classify(e: &ClientError) -> ErrorKind {
    match e {
        ClientError::Timeout { .. } => ErrorKind::Timeout,
        ClientError::Broker { code, .. } => ErrorKind::from_code(*code),
        ClientError::Io { .. } | ClientError::Closed { .. } | ClientError::Connect { .. } => {
            ErrorKind::Disconnect
        }
        _ => ErrorKind::Protocol,
    }
}

/// One fetch loop against one leader.
pub async fn fetch_loop(ctx: Rc<CoreCtx>, addr: String, mut positions: Vec<Position>) {
    let mut conn: Option<Conn> = None;
    // Log end offsets to reach, known once the producers are done.
    let mut targets: Option<Vec<i64>> = None;
    let mut drain_deadline: Option<u64> = None;
    // The last response, positions advanced, records not yet counted (see `fetch_once`).
    let mut uncounted: Option<Received> = None;
    loop {
        if conn.is_none() {
            match Conn::connect(&addr, ctx.args.request_timeout).await {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    ctx.error(ErrorKind::Disconnect);
                    start_drain_clock(&ctx, &mut drain_deadline);
                    if past(&ctx, drain_deadline) {
                        break;
                    }
                    glommio::timer::sleep(RETRY_BACKOFF).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        if done(&ctx, c, &positions, &mut targets, &mut drain_deadline).await {
            break;
        }
        match fetch_once(&ctx, c, &mut positions, &mut uncounted).await {
            Ok(true) => {}
            Ok(false) => glommio::timer::sleep(RETRY_BACKOFF).await, // partition errors
            Err(e) => {
                ctx.error(classify(&e));
                conn = None;
                glommio::timer::sleep(RETRY_BACKOFF).await;
            }
        }
    }
    if let Some(last) = uncounted.take() {
        count(&ctx, last);
    }
    // `--until-end`: caught up once the last response is counted.
    if ctx.ends.is_some() {
        ctx.shared
            .caught_up_ns
            .fetch_max(now_ns(), Ordering::AcqRel);
    }
    if let (Some(targets), true) = (targets, drain_deadline.is_some()) {
        let missing: i64 = positions
            .iter()
            .zip(&targets)
            .map(|(p, t)| (t - p.offset).max(0))
            .sum();
        if missing > 0 {
            ctx.shared.error(ErrorKind::NotConsumed, missing as u64);
        }
    }
}

/// Once the producers are done, a consumer that cannot reach its broker gets the drain
/// timeout and no more: without this it would retry forever.
fn start_drain_clock(ctx: &CoreCtx, deadline: &mut Option<u64>) {
    if deadline.is_none() && ctx.shared.producers_running.load(Ordering::Acquire) == 0 {
        *deadline = Some(now_ns() + ctx.args.drain_timeout.as_nanos() as u64);
    }
}

fn past(ctx: &CoreCtx, deadline: Option<u64>) -> bool {
    let now = now_ns();
    match deadline {
        Some(d) => now >= d,
        None => !ctx.with_producers && now >= ctx.window.end_ns,
    }
}

/// Whether this loop is finished: consumers alone stop at the end of the window; with
/// producers, at the log end found once they are all done (or at the drain deadline).
async fn done(
    ctx: &CoreCtx,
    conn: &mut Conn,
    positions: &[Position],
    targets: &mut Option<Vec<i64>>,
    drain_deadline: &mut Option<u64>,
) -> bool {
    if let Some(ends) = &ctx.ends {
        return reached_ends(ctx, positions, ends, targets, drain_deadline);
    }
    if !ctx.with_producers {
        return now_ns() >= ctx.window.end_ns;
    }
    if targets.is_none() {
        if ctx.shared.producers_running.load(Ordering::Acquire) > 0 {
            return false;
        }
        let parts: Vec<i32> = positions.iter().map(|p| p.partition).collect();
        match list_offsets(conn, &ctx.cluster.topic, &parts, -1).await {
            Ok(ends) => {
                *targets = Some(ends);
                *drain_deadline = Some(now_ns() + ctx.args.drain_timeout.as_nanos() as u64);
            }
            Err(_) => {
                ctx.error(ErrorKind::Protocol);
                start_drain_clock(ctx, drain_deadline);
                if past(ctx, *drain_deadline) {
                    return true;
                }
                glommio::timer::sleep(DRAIN_POLL).await;
                return false;
            }
        }
    }
    let reached = targets
        .as_ref()
        .is_some_and(|t| positions.iter().zip(t).all(|(p, end)| p.offset >= *end));
    reached || past(ctx, *drain_deadline)
}

/// `--until-end`: done once every position reached the end offset found at setup, or at the
/// window's end (the rest then counts as unread).
fn reached_ends(
    ctx: &CoreCtx,
    positions: &[Position],
    ends: &[i64],
    targets: &mut Option<Vec<i64>>,
    drain_deadline: &mut Option<u64>,
) -> bool {
    let mine = targets.get_or_insert_with(|| {
        positions
            .iter()
            .map(|p| ends.get(p.partition as usize).copied().unwrap_or(0))
            .collect()
    });
    *drain_deadline = Some(ctx.window.end_ns);
    // The fetch loop notes the catch-up time once it has counted what it read.
    positions
        .iter()
        .zip(mine.iter())
        .all(|(p, end)| p.offset >= *end)
        || now_ns() >= ctx.window.end_ns
}

/// A fetch response whose positions have advanced (from its batch headers) but whose records
/// are not counted yet.
struct Received {
    /// When the response arrived: the end of the end-to-end latency of its records.
    at_ns: u64,
    /// Per partition: the fetch offset and the record bytes.
    parts: Vec<(i64, bytes::Bytes)>,
}

/// One fetch request and the bookkeeping of its response; `Ok(false)` when a partition
/// answered with an error or unreadable bytes (the caller backs off).
///
/// Pipelined (the default): the positions advance from the response's batch headers alone,
/// and its records are counted (CRC check, record walk, latencies) after the NEXT fetch is
/// sent, while the broker serves it, so a catch-up measures the broker rather than the
/// loadgen's per-record work added to it. `--serial-fetch` counts them before returning.
async fn fetch_once(
    ctx: &CoreCtx,
    conn: &mut Conn,
    positions: &mut [Position],
    uncounted: &mut Option<Received>,
) -> Result<bool, ClientError> {
    let args = &ctx.args;
    let partition_max = (args.fetch_max_bytes / positions.len().max(1))
        .max(1 << 20)
        .min(i32::MAX as usize);
    let parts = positions
        .iter()
        .map(|p| {
            FetchPartition::default()
                .with_partition(p.partition)
                .with_fetch_offset(p.offset)
                .with_current_leader_epoch(-1)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(partition_max as i32)
        })
        .collect();
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(args.fetch_max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(args.fetch_max_bytes.min(i32::MAX as usize) as i32)
        .with_isolation_level(0)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(&ctx.cluster.topic))
            .with_topic_id(ctx.cluster.topic_id)
            .with_partitions(parts)]);
    let version = conn.version(ApiKey::Fetch)?;
    let cid = conn.next_cid();
    let out = encode(cid, version, &req)?;
    let wait = args.request_timeout + Duration::from_millis(args.fetch_max_wait_ms.max(0) as u64);
    let mut clean = true;
    let exchange = async {
        conn.write(&out).await?;
        if let Some(prev) = uncounted.take() {
            clean &= count(ctx, prev);
        }
        conn.read_frame().await
    };
    let frame = with_timeout(wait, "a fetch response", exchange).await?;
    let resp: FetchResponse = decode_response::<FetchRequest>(frame, version, cid, conn.addr())?;
    if resp.throttle_time_ms > 0 {
        ctx.error(ErrorKind::Throttled);
    }
    if resp.error_code != 0 {
        return Err(ClientError::broker("fetch", resp.error_code));
    }
    let mut got = Received {
        at_ns: now_ns(),
        parts: Vec::new(),
    };
    for topic in resp.responses {
        if topic.topic.0.as_str() != ctx.cluster.topic && topic.topic_id != ctx.cluster.topic_id {
            continue;
        }
        for part in topic.partitions {
            let Some(pos) = positions
                .iter_mut()
                .find(|p| p.partition == part.partition_index)
            else {
                ctx.error(ErrorKind::Protocol);
                clean = false;
                continue;
            };
            if part.error_code != 0 {
                ctx.error(ErrorKind::from_code(part.error_code));
                clean = false;
                if part.error_code == OFFSET_OUT_OF_RANGE {
                    reset_offset(ctx, conn, pos).await?;
                }
                continue;
            }
            let Some(data) = part.records else {
                continue;
            };
            let from = pos.offset;
            match next_offset(&data) {
                Ok(Some(next)) => {
                    pos.offset = pos.offset.max(next);
                    ctx.set_position(pos.partition, pos.offset);
                }
                Ok(None) => {}
                Err(()) => {
                    ctx.error(ErrorKind::Protocol);
                    clean = false;
                    continue;
                }
            }
            got.parts.push((from, data));
        }
    }
    if args.serial_fetch {
        clean &= count(ctx, got);
    } else {
        *uncounted = Some(got);
    }
    Ok(clean)
}

/// The offset after the last batch of one partition's fetched bytes, from the batch headers
/// alone (no CRC, no records: `count` checks those); None when they hold no whole batch.
/// Err when a batch header is unreadable.
fn next_offset(data: &[u8]) -> Result<Option<i64>, ()> {
    let mut next = None;
    for range in record_batch::split_batches(data) {
        // A trailing partial batch (cut by the fetch's byte limit) ends the whole ones.
        let Ok(range) = range else { break };
        let header = record_batch::BatchHeader::parse(&data[range]).map_err(|_| ())?;
        next = Some(header.last_offset() + 1);
    }
    Ok(next)
}

/// Counts the records of a response and records their end-to-end latency. Returns false when
/// a partition's bytes could not be read (checked by CRC and record walk here).
fn count(ctx: &CoreCtx, got: Received) -> bool {
    let mut clean = true;
    for (from, data) in &got.parts {
        clean &= consume(ctx, *from, data, got.at_ns);
    }
    clean
}

/// Counts the records of one partition's fetched bytes and records their end-to-end latency.
fn consume(ctx: &CoreCtx, from: i64, data: &[u8], now: u64) -> bool {
    // As for produce: latency by intended time, throughput by the time of reading.
    let summary = read_batches(data, from, |_, value| {
        if let Some(intended) = stamp_of(value) {
            let m = ctx.window.measures(intended);
            ctx.record(Kind::EndToEnd, now.saturating_sub(intended), m);
        }
    });
    match summary {
        Ok(s) => {
            ctx.shared.consumed.add(s.records, s.value_bytes);
            if ctx.window.measures(now) {
                ctx.shared.consumed_measured.add(s.records, s.value_bytes);
            }
            true
        }
        Err(_) => {
            ctx.error(ErrorKind::Protocol);
            false
        }
    }
}

/// Moves a partition whose offset the broker no longer has to where `--from` says.
async fn reset_offset(
    ctx: &CoreCtx,
    conn: &mut Conn,
    pos: &mut Position,
) -> Result<(), ClientError> {
    let ts = ctx.args.from.list_offsets_timestamp();
    let offsets = list_offsets(conn, &ctx.cluster.topic, &[pos.partition], ts).await?;
    if let Some(&o) = offsets.first() {
        pos.offset = o;
    }
    Ok(())
}
