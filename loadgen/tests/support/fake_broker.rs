//! A tiny in-memory Kafka broker for tests: ApiVersions, Metadata, CreateTopics, Produce,
//! Fetch and ListOffsets, enough for the load generator's counts to be checked end to end
//! while the real broker is unfinished. Plain threads, one per connection.
//!
//! Faults for tests: a stall before answering the first produce request, and an error code
//! returned for every produce to one partition.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use ringmq_wire::frame;
use ringmq_wire::record_batch;

/// Largest request the fake broker reads.
const MAX_REQUEST_BYTES: usize = 64 << 20;

#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Sleep this long before answering the first produce request.
    pub stall_first_produce: Duration,
    /// Answer every produce to this partition with this error code.
    pub fail_partition: Option<(i32, i16)>,
    /// Members a consumer group waits for before it completes a join (0 = 1).
    pub group_size: usize,
    /// After this many produce requests the broker goes away: the next one and every later
    /// request close their connection unanswered, and new connections are closed at once.
    pub die_after_produce_requests: Option<u64>,
}

/// One consumer group (all group ids share it: tests use one group).
#[derive(Default)]
struct Group {
    generation: i32,
    joining: Vec<(String, Bytes)>,
    members: Vec<(String, Bytes)>,
    leader: String,
    assignments: Option<HashMap<String, Bytes>>,
    next_member: u32,
}

#[derive(Default)]
struct Topic {
    id: uuid::Uuid,
    /// Per partition: (base offset, batch bytes with the offset assigned).
    logs: Vec<Vec<(i64, Bytes)>>,
}

#[derive(Default)]
struct Store {
    topics: HashMap<String, Topic>,
    produce_requests: u64,
    /// Most partitions one produce request carried.
    widest_produce: usize,
    group: Group,
}

struct State {
    dead: std::sync::atomic::AtomicBool,
    store: Mutex<Store>,
    appended: Condvar,
    faults: Faults,
    port: u16,
}

pub struct FakeBroker {
    pub addr: String,
    state: Arc<State>,
}

impl FakeBroker {
    pub fn start(faults: Faults) -> FakeBroker {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            dead: Default::default(),
            store: Mutex::default(),
            appended: Condvar::new(),
            faults,
            port: addr.port(),
        });
        let s = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                if s.dead.load(std::sync::atomic::Ordering::Acquire) {
                    continue; // dropped: closed at once
                }
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(&s, stream);
                });
            }
        });
        FakeBroker {
            addr: addr.to_string(),
            state,
        }
    }

    /// Most partitions (batches) one produce request carried so far.
    pub fn widest_produce_request(&self) -> usize {
        self.state.store.lock().unwrap().widest_produce
    }

    /// Records stored in `topic` (all partitions).
    pub fn records(&self, topic: &str) -> u64 {
        let store = self.state.store.lock().unwrap();
        store.topics.get(topic).map_or(0, |t| {
            t.logs
                .iter()
                .flatten()
                .map(|(_, b)| record_batch::BatchHeader::parse(b).unwrap().record_count as u64)
                .sum()
        })
    }
}

fn serve(state: &State, mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    loop {
        let mut prefix = [0u8; 4];
        stream.read_exact(&mut prefix)?;
        let len = frame::frame_len(prefix, MAX_REQUEST_BYTES).map_err(std::io::Error::other)?;
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body)?;
        let mut body = Bytes::from(body);
        let (key, header) =
            frame::decode_request_header(&mut body).map_err(std::io::Error::other)?;
        let (cid, v) = (header.correlation_id, header.request_api_version);
        if key == ApiKey::Produce {
            let store = state.store.lock().unwrap();
            let limit = state.faults.die_after_produce_requests.unwrap_or(u64::MAX);
            if store.produce_requests >= limit {
                state.dead.store(true, std::sync::atomic::Ordering::Release);
            }
        }
        if state.dead.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(()); // closes the connection, request unanswered
        }
        let out = match key {
            ApiKey::ApiVersions => respond(cid, v, &api_versions()),
            ApiKey::Metadata => respond(
                cid,
                v,
                &metadata(state, &decode::<MetadataRequest>(&mut body, v)?),
            ),
            ApiKey::CreateTopics => respond(
                cid,
                v,
                &create(state, &decode::<CreateTopicsRequest>(&mut body, v)?),
            ),
            ApiKey::ListOffsets => respond(
                cid,
                v,
                &list_offsets(state, &decode::<ListOffsetsRequest>(&mut body, v)?),
            ),
            ApiKey::Produce => {
                let req = decode::<ProduceRequest>(&mut body, v)?;
                let resp = produce(state, &req);
                if req.acks == 0 {
                    continue;
                }
                respond(cid, v, &resp)
            }
            ApiKey::Fetch => respond(
                cid,
                v,
                &fetch(state, &decode::<FetchRequest>(&mut body, v)?),
            ),
            ApiKey::FindCoordinator => respond(
                cid,
                v,
                &FindCoordinatorResponse::default()
                    .with_node_id(BrokerId(0))
                    .with_host(StrBytes::from_static_str("127.0.0.1"))
                    .with_port(i32::from(state.port)),
            ),
            ApiKey::JoinGroup => {
                let req = decode::<JoinGroupRequest>(&mut body, v)?;
                respond(cid, v, &join(state, v, &req))
            }
            ApiKey::SyncGroup => {
                let req = decode::<SyncGroupRequest>(&mut body, v)?;
                respond(cid, v, &sync(state, &req))
            }
            ApiKey::Heartbeat => respond(cid, v, &HeartbeatResponse::default()),
            ApiKey::LeaveGroup => respond(cid, v, &LeaveGroupResponse::default()),
            _ => {
                return Err(std::io::Error::other(format!(
                    "fake broker: unsupported api {key:?}"
                )))
            }
        };
        stream.write_all(&out)?;
    }
}

fn decode<R: Decodable>(body: &mut Bytes, v: i16) -> std::io::Result<R> {
    R::decode(body, v).map_err(|e| std::io::Error::other(e.to_string()))
}

fn respond<R: Encodable + HeaderVersion>(cid: i32, v: i16, body: &R) -> BytesMut {
    frame::encode_response(cid, v, body).expect("encode response")
}

fn api_versions() -> ApiVersionsResponse {
    let ranges = [
        (ApiKey::Produce, 3, 9),
        (ApiKey::Fetch, 4, 12),
        (ApiKey::ListOffsets, 1, 7),
        (ApiKey::Metadata, 1, 12),
        (ApiKey::ApiVersions, 0, 3),
        (ApiKey::CreateTopics, 2, 7),
        (ApiKey::FindCoordinator, 0, 3),
        (ApiKey::JoinGroup, 0, 7),
        (ApiKey::SyncGroup, 0, 5),
        (ApiKey::Heartbeat, 0, 4),
        (ApiKey::LeaveGroup, 0, 2),
    ];
    let keys = ranges
        .iter()
        .map(|&(k, lo, hi)| {
            ApiVersion::default()
                .with_api_key(k as i16)
                .with_min_version(lo)
                .with_max_version(hi)
        })
        .collect();
    ApiVersionsResponse::default().with_api_keys(keys)
}

fn metadata(state: &State, req: &MetadataRequest) -> MetadataResponse {
    let store = state.store.lock().unwrap();
    let topics = req
        .topics
        .iter()
        .flatten()
        .filter_map(|t| t.name.as_ref())
        .map(|n| match store.topics.get(n.0.as_str()) {
            Some(t) => MetadataResponseTopic::default()
                .with_name(Some(n.clone()))
                .with_topic_id(t.id)
                .with_partitions(
                    (0..t.logs.len() as i32)
                        .map(|p| {
                            MetadataResponsePartition::default()
                                .with_partition_index(p)
                                .with_leader_id(BrokerId(0))
                        })
                        .collect(),
                ),
            None => MetadataResponseTopic::default()
                .with_name(Some(n.clone()))
                .with_error_code(3),
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(BrokerId(0))
            .with_host(StrBytes::from_static_str("127.0.0.1"))
            .with_port(i32::from(state.port))])
        .with_topics(topics)
}

fn create(state: &State, req: &CreateTopicsRequest) -> CreateTopicsResponse {
    let mut store = state.store.lock().unwrap();
    let results = req
        .topics
        .iter()
        .map(|t| {
            let exists = store.topics.contains_key(t.name.0.as_str());
            if !exists {
                let topic = Topic {
                    id: uuid::Uuid::new_v4(),
                    logs: (0..t.num_partitions.max(1)).map(|_| Vec::new()).collect(),
                };
                store.topics.insert(t.name.0.to_string(), topic);
            }
            CreatableTopicResult::default()
                .with_name(t.name.clone())
                .with_error_code(if exists { 36 } else { 0 })
        })
        .collect();
    CreateTopicsResponse::default().with_topics(results)
}

fn produce(state: &State, req: &ProduceRequest) -> ProduceResponse {
    let first = {
        let mut store = state.store.lock().unwrap();
        store.produce_requests += 1;
        let width = req.topic_data.iter().map(|t| t.partition_data.len()).sum();
        store.widest_produce = store.widest_produce.max(width);
        store.produce_requests == 1
    };
    if first && !state.faults.stall_first_produce.is_zero() {
        std::thread::sleep(state.faults.stall_first_produce);
    }
    let mut store = state.store.lock().unwrap();
    let mut responses = Vec::new();
    for t in &req.topic_data {
        let mut parts = Vec::new();
        for p in &t.partition_data {
            let mut resp = PartitionProduceResponse::default().with_index(p.index);
            let fail = state
                .faults
                .fail_partition
                .filter(|(fp, _)| *fp == p.index)
                .map(|(_, c)| c);
            let log = store
                .topics
                .get_mut(t.name.0.as_str())
                .and_then(|t| t.logs.get_mut(p.index as usize));
            match (fail, log, p.records.as_ref()) {
                (Some(code), _, _) => resp = resp.with_error_code(code),
                (None, Some(log), Some(records)) => {
                    let mut next = log.last().map_or(0, |(_, b)| {
                        record_batch::BatchHeader::parse(b).unwrap().last_offset() + 1
                    });
                    resp = resp.with_base_offset(next);
                    for range in record_batch::split_batches(records) {
                        let Ok(range) = range else {
                            resp = resp.with_error_code(87);
                            break;
                        };
                        let mut batch = records[range].to_vec();
                        let h = match record_batch::validate(&batch) {
                            Ok(h) => h,
                            Err(_) => {
                                resp = resp.with_error_code(2); // CORRUPT_MESSAGE
                                break;
                            }
                        };
                        record_batch::set_base_offset(&mut batch, next);
                        log.push((next, Bytes::from(batch)));
                        next += i64::from(h.record_count);
                    }
                }
                _ => resp = resp.with_error_code(3),
            }
            parts.push(resp);
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(t.name.clone())
                .with_partition_responses(parts),
        );
    }
    state.appended.notify_all();
    ProduceResponse::default().with_responses(responses)
}

fn fetch(state: &State, req: &FetchRequest) -> FetchResponse {
    let deadline = Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64);
    let mut store = state.store.lock().unwrap();
    loop {
        let resp = fetch_now(&store, req);
        let any = resp
            .responses
            .iter()
            .flat_map(|t| &t.partitions)
            .any(|p| p.records.as_ref().is_some_and(|r| !r.is_empty()));
        let now = Instant::now();
        if any || now >= deadline {
            return resp;
        }
        store = state
            .appended
            .wait_timeout(store, deadline - now)
            .unwrap()
            .0;
    }
}

fn fetch_now(store: &Store, req: &FetchRequest) -> FetchResponse {
    let mut topics = Vec::new();
    for t in &req.topics {
        let topic = store.topics.get(t.topic.0.as_str());
        let mut parts = Vec::new();
        for p in &t.partitions {
            let mut data = PartitionData::default().with_partition_index(p.partition);
            match topic.and_then(|tp| tp.logs.get(p.partition as usize)) {
                None => data = data.with_error_code(3),
                Some(log) => {
                    let hw = log.last().map_or(0, |(_, b)| {
                        record_batch::BatchHeader::parse(b).unwrap().last_offset() + 1
                    });
                    let mut out = BytesMut::new();
                    for (_, b) in log {
                        let h = record_batch::BatchHeader::parse(b).unwrap();
                        if h.last_offset() >= p.fetch_offset
                            && (out.is_empty()
                                || out.len() + b.len() <= p.partition_max_bytes as usize)
                        {
                            out.extend_from_slice(b);
                        }
                    }
                    data = data
                        .with_high_watermark(hw)
                        .with_records(Some(out.freeze()));
                }
            }
            parts.push(data);
        }
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(t.topic.clone())
                .with_partitions(parts),
        );
    }
    FetchResponse::default().with_responses(topics)
}

fn list_offsets(state: &State, req: &ListOffsetsRequest) -> ListOffsetsResponse {
    let store = state.store.lock().unwrap();
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let topic = store.topics.get(t.name.0.as_str());
            let parts = t
                .partitions
                .iter()
                .map(|p| {
                    let resp = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index);
                    match topic.and_then(|tp| tp.logs.get(p.partition_index as usize)) {
                        None => resp.with_error_code(3),
                        Some(log) => {
                            let end = log.last().map_or(0, |(_, b)| {
                                record_batch::BatchHeader::parse(b).unwrap().last_offset() + 1
                            });
                            resp.with_offset(if p.timestamp == -2 { 0 } else { end })
                        }
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(parts)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

/// JoinGroup: the member-id handshake (v4+), then wait until `group_size` members joined.
fn join(state: &State, v: i16, req: &JoinGroupRequest) -> JoinGroupResponse {
    let mut store = state.store.lock().unwrap();
    if req.member_id.is_empty() && v >= 4 {
        store.group.next_member += 1;
        let id = format!("member-{}", store.group.next_member);
        return JoinGroupResponse::default()
            .with_error_code(79)
            .with_member_id(StrBytes::from_string(id));
    }
    let me = if req.member_id.is_empty() {
        store.group.next_member += 1;
        format!("member-{}", store.group.next_member)
    } else {
        req.member_id.to_string()
    };
    let metadata = req
        .protocols
        .first()
        .map(|p| p.metadata.clone())
        .unwrap_or_default();
    let generation = store.group.generation;
    store.group.joining.push((me.clone(), metadata));
    if store.group.joining.len() >= state.faults.group_size.max(1) {
        let g = &mut store.group;
        g.generation += 1;
        g.members = std::mem::take(&mut g.joining);
        g.members.sort();
        g.leader = g.members[0].0.clone();
        g.assignments = None;
        state.appended.notify_all();
    }
    while store.group.generation == generation {
        store = state.appended.wait(store).unwrap();
    }
    let g = &store.group;
    let members = if g.leader == me {
        g.members
            .iter()
            .map(|(id, md)| {
                join_group_response::JoinGroupResponseMember::default()
                    .with_member_id(StrBytes::from_string(id.clone()))
                    .with_metadata(md.clone())
            })
            .collect()
    } else {
        Vec::new()
    };
    JoinGroupResponse::default()
        .with_generation_id(g.generation)
        .with_protocol_name(Some(StrBytes::from_static_str("range")))
        .with_leader(StrBytes::from_string(g.leader.clone()))
        .with_member_id(StrBytes::from_string(me))
        .with_members(members)
}

/// SyncGroup: the leader's assignments are handed to every member.
fn sync(state: &State, req: &SyncGroupRequest) -> SyncGroupResponse {
    let mut store = state.store.lock().unwrap();
    if req.member_id.as_str() == store.group.leader {
        let map = req
            .assignments
            .iter()
            .map(|a| (a.member_id.to_string(), a.assignment.clone()))
            .collect();
        store.group.assignments = Some(map);
        state.appended.notify_all();
    }
    while store.group.assignments.is_none() {
        store = state.appended.wait(store).unwrap();
    }
    let mine = store
        .group
        .assignments
        .as_ref()
        .and_then(|a| a.get(req.member_id.as_str()))
        .cloned();
    SyncGroupResponse::default().with_assignment(mine.unwrap_or_default())
}
