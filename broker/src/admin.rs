//! Metadata and admin APIs: Metadata (with topic auto-creation), CreateTopics, DeleteTopics,
//! CreatePartitions, DescribeConfigs, DescribeCluster, InitProducerId. AlterConfigs and
//! IncrementalAlterConfigs are in [`crate::alter_configs`].
//!
//! Every change goes to core 0, the single metadata writer ([`Core::change_metadata`]), which
//! logs it durably and installs the new snapshot on every core before answering, so a client
//! that created a topic can produce to it through any core at once.

use crate::alter_configs::ALTERABLE_TOPIC_CONFIGS;
use crate::core::{current, futures_join_all, Core, CoreError};
use crate::errors;
use crate::metadata::{
    default_topic_configs, new_topic_id, valid_topic_name, MetaEvent, Snapshot, TopicMeta,
    MAX_PARTITIONS_PER_TOPIC,
};
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

/// The single node's id.
pub const NODE_ID: i32 = 0;
/// "Authorized operations not requested" marker.
const OPERATIONS_OMITTED: i32 = i32::MIN;
/// Config resource types (DescribeConfigs, AlterConfigs, IncrementalAlterConfigs).
pub(crate) const RESOURCE_TOPIC: i8 = 2;
pub(crate) const RESOURCE_BROKER: i8 = 4;
/// DescribeConfigs config sources.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

/// A topic to create.
#[derive(Debug, Clone)]
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    pub configs: BTreeMap<String, String>,
}

/// Creates topics on core 0; one `(error_code, message, topic)` per spec, in order.
pub async fn create_topics(
    core: &Core,
    specs: Vec<NewTopic>,
    validate_only: bool,
) -> Vec<(i16, Option<String>, Option<Arc<TopicMeta>>)> {
    let n = specs.len();
    let result = core
        .mesh
        .call(0, move || async move {
            let core0 = current();
            let outcome = core0
                .change_metadata(|snap| plan_create(snap, &specs, validate_only))
                .await;
            match outcome {
                Ok((snap, results)) => results
                    .into_iter()
                    .map(|(code, msg, name)| {
                        (code, msg, name.and_then(|n| snap.topic(&n).cloned()))
                    })
                    .collect::<Vec<_>>(),
                Err(e) => {
                    tracing::error!("create topics failed: {e}");
                    specs
                        .iter()
                        .map(|_| (errors::UNKNOWN_SERVER_ERROR, Some(e.to_string()), None))
                        .collect()
                }
            }
        })
        .await;
    result.unwrap_or_else(|e| {
        (0..n)
            .map(|_| (errors::UNKNOWN_SERVER_ERROR, Some(e.to_string()), None))
            .collect()
    })
}

type Planned = Vec<(i16, Option<String>, Option<String>)>;

fn plan_create(
    snap: &Snapshot,
    specs: &[NewTopic],
    validate_only: bool,
) -> (Vec<MetaEvent>, Planned) {
    let mut scratch = snap.clone();
    let mut events = Vec::new();
    let mut results = Vec::new();
    for spec in specs {
        let refuse = |code: i16, msg: String| (code, Some(msg), None);
        if !valid_topic_name(&spec.name) {
            results.push(refuse(
                errors::INVALID_TOPIC_EXCEPTION,
                format!("invalid topic name {:?}", spec.name),
            ));
            continue;
        }
        if scratch.topic(&spec.name).is_some() {
            results.push(refuse(
                errors::TOPIC_ALREADY_EXISTS,
                format!("topic {} already exists", spec.name),
            ));
            continue;
        }
        if spec.partitions <= 0 || spec.partitions > MAX_PARTITIONS_PER_TOPIC {
            results.push(refuse(
                errors::INVALID_PARTITIONS,
                format!("partitions must be 1..={MAX_PARTITIONS_PER_TOPIC}"),
            ));
            continue;
        }
        if let Err(msg) = crate::alter_configs::validate_topic_configs(&spec.configs) {
            results.push(refuse(errors::INVALID_CONFIG, msg));
            continue;
        }
        let topic = TopicMeta {
            name: spec.name.clone(),
            id: new_topic_id(),
            partitions: scratch.assign(spec.partitions as usize),
            configs: spec.configs.clone(),
        };
        let ev = MetaEvent::TopicCreated { topic };
        if scratch.apply(&ev).is_err() {
            results.push(refuse(errors::TOPIC_ALREADY_EXISTS, "topic exists".into()));
            continue;
        }
        if !validate_only {
            events.push(ev);
        }
        results.push((errors::NONE, None, Some(spec.name.clone())));
    }
    (events, results)
}

/// Topics a Metadata request names, by name or by id; `None` asks for every topic.
type WantedTopics = Option<Vec<(Option<String>, [u8; 16])>>;

pub async fn metadata(core: &Rc<Core>, req: MetadataRequest, version: i16) -> MetadataResponse {
    let mut meta = core.meta();
    let wanted: WantedTopics = req.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| {
                (
                    t.name.as_ref().map(|n| n.to_string()),
                    *t.topic_id.as_bytes(),
                )
            })
            .collect()
    });
    // Metadata v0 has no "all topics" null: an empty list means all.
    let wanted = match wanted {
        Some(w) if w.is_empty() && version == 0 => None,
        other => other,
    };
    let auto_create =
        core.config.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    if let (Some(list), true) = (&wanted, auto_create) {
        let missing: Vec<NewTopic> = list
            .iter()
            .filter_map(|(name, _)| name.clone())
            .filter(|n| meta.topic(n).is_none() && valid_topic_name(n))
            .map(|name| NewTopic {
                name,
                partitions: core.config.default_partitions,
                configs: BTreeMap::new(),
            })
            .collect();
        if !missing.is_empty() {
            for (code, msg, _) in create_topics(core, missing, false).await {
                if code != errors::NONE && code != errors::TOPIC_ALREADY_EXISTS {
                    tracing::warn!("auto-create failed: {code} {msg:?}");
                }
            }
            meta = core.meta();
        }
    }
    metadata_answer(&meta, &req, wanted, &core.advertised)
}

/// The Metadata response for the `wanted` topics of `meta` (auto-creation already done).
fn metadata_answer(
    meta: &Snapshot,
    req: &MetadataRequest,
    wanted: WantedTopics,
    (host, port): &(String, i32),
) -> MetadataResponse {
    let topic_operations =
        authorized_operations(AclResource::Topic, req.include_topic_authorized_operations);
    let topics: Vec<MetadataResponseTopic> = match wanted {
        None => meta
            .topics
            .values()
            .map(|t| topic_entry(t).with_topic_authorized_operations(topic_operations))
            .collect(),
        Some(list) => list
            .into_iter()
            .map(|(name, id)| {
                let found = match &name {
                    Some(n) => meta.topic(n),
                    None => meta.topic_by_id(&id),
                };
                let entry = match found {
                    Some(t) => topic_entry(t),
                    None => {
                        let code = match &name {
                            Some(n) if !valid_topic_name(n) => errors::INVALID_TOPIC_EXCEPTION,
                            Some(_) => errors::UNKNOWN_TOPIC_OR_PARTITION,
                            None => errors::UNKNOWN_TOPIC_ID,
                        };
                        MetadataResponseTopic::default()
                            .with_error_code(code)
                            .with_name(name.map(|n| TopicName(s(&n))))
                            .with_topic_id(uuid::Uuid::from_bytes(id))
                    }
                };
                entry.with_topic_authorized_operations(topic_operations)
            })
            .collect(),
    };
    MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(BrokerId(NODE_ID))
            .with_host(s(host))
            .with_port(*port)])
        .with_cluster_id(Some(s(&meta.cluster_id)))
        .with_controller_id(BrokerId(NODE_ID))
        .with_topics(topics)
        .with_cluster_authorized_operations(authorized_operations(
            AclResource::Cluster,
            req.include_cluster_authorized_operations,
        ))
}

fn topic_entry(t: &TopicMeta) -> MetadataResponseTopic {
    let partitions = (0..t.partitions.len() as i32)
        .map(|i| {
            MetadataResponsePartition::default()
                .with_partition_index(i)
                .with_leader_id(BrokerId(NODE_ID))
                .with_leader_epoch(0)
                .with_replica_nodes(vec![BrokerId(NODE_ID)])
                .with_isr_nodes(vec![BrokerId(NODE_ID)])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(s(&t.name))))
        .with_topic_id(uuid::Uuid::from_bytes(t.id))
        .with_partitions(partitions)
}

/// Resource types whose authorized operations a client can ask for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AclResource {
    Cluster,
    Topic,
    Group,
}

/// Kafka's ACL operation codes (`AclOperation`): bit numbers in an authorized-operations field.
mod acl_operation {
    pub const READ: u32 = 3;
    pub const WRITE: u32 = 4;
    pub const CREATE: u32 = 5;
    pub const DELETE: u32 = 6;
    pub const ALTER: u32 = 7;
    pub const DESCRIBE: u32 = 8;
    pub const CLUSTER_ACTION: u32 = 9;
    pub const DESCRIBE_CONFIGS: u32 = 10;
    pub const ALTER_CONFIGS: u32 = 11;
    pub const IDEMPOTENT_WRITE: u32 = 12;
}

/// The authorized-operations field of a resource: if the client asked for it, every operation
/// the resource type supports (ringmq has no authorizer, and Kafka without one answers just
/// that); if not, the "not requested" marker `i32::MIN`.
///
/// kafka-python 2.x always asks (Metadata v8+, DescribeGroups v3+) and turns every set bit into
/// an operation: answering the marker regardless gave it bit 31, no operation at all, and its
/// admin client failed on every topic listing and group description.
pub(crate) fn authorized_operations(resource: AclResource, requested: bool) -> i32 {
    use acl_operation::*;
    if !requested {
        return OPERATIONS_OMITTED;
    }
    let operations: &[u32] = match resource {
        AclResource::Cluster => &[
            CREATE,
            CLUSTER_ACTION,
            DESCRIBE_CONFIGS,
            ALTER_CONFIGS,
            IDEMPOTENT_WRITE,
            ALTER,
            DESCRIBE,
        ],
        AclResource::Topic => &[
            READ,
            WRITE,
            CREATE,
            DESCRIBE,
            DELETE,
            ALTER,
            DESCRIBE_CONFIGS,
            ALTER_CONFIGS,
        ],
        AclResource::Group => &[READ, DESCRIBE, DELETE],
    };
    operations.iter().fold(0, |bits, op| bits | 1 << op)
}

pub async fn create_topics_api(
    core: &Rc<Core>,
    req: CreateTopicsRequest,
    _version: i16,
) -> CreateTopicsResponse {
    let mut specs = Vec::with_capacity(req.topics.len());
    let mut early: Vec<Option<(i16, String)>> = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let partitions = if t.num_partitions == -1 {
            core.config.default_partitions
        } else {
            t.num_partitions
        };
        let configs: BTreeMap<String, String> = t
            .configs
            .iter()
            .filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.to_string(), v.to_string()))
            })
            .collect();
        if t.replication_factor != -1 && t.replication_factor != 1 {
            early.push(Some((
                errors::INVALID_REPLICATION_FACTOR,
                "single node: replication factor must be 1".into(),
            )));
        } else if !t.assignments.is_empty() {
            early.push(Some((
                errors::INVALID_REQUEST,
                "manual replica assignment is not supported".into(),
            )));
        } else {
            early.push(None);
        }
        specs.push(NewTopic {
            name: t.name.to_string(),
            partitions,
            configs,
        });
    }
    let to_create: Vec<NewTopic> = specs
        .iter()
        .zip(&early)
        .filter(|(_, e)| e.is_none())
        .map(|(s, _)| s.clone())
        .collect();
    let mut created = create_topics(core, to_create, req.validate_only)
        .await
        .into_iter();
    let topics = specs
        .iter()
        .zip(early)
        .map(|(spec, early)| {
            let (code, msg, topic) = match early {
                Some((code, msg)) => (code, Some(msg), None),
                None => created
                    .next()
                    .unwrap_or((errors::UNKNOWN_SERVER_ERROR, None, None)),
            };
            let mut r = CreatableTopicResult::default()
                .with_name(TopicName(s(&spec.name)))
                .with_error_code(code)
                .with_error_message(msg.map(|m| s(&m)));
            if code == errors::NONE {
                let configs = merged_configs(&spec.configs, &core.config)
                    .into_iter()
                    .map(|(k, v, explicit)| {
                        CreatableTopicConfigs::default()
                            .with_name(s(&k))
                            .with_value(Some(s(&v)))
                            .with_config_source(if explicit {
                                SOURCE_TOPIC
                            } else {
                                SOURCE_DEFAULT
                            })
                    })
                    .collect();
                r = r
                    .with_num_partitions(spec.partitions)
                    .with_replication_factor(1)
                    .with_configs(Some(configs));
                if let Some(t) = topic {
                    r = r.with_topic_id(uuid::Uuid::from_bytes(t.id));
                }
            } else {
                r = r.with_num_partitions(-1).with_replication_factor(-1);
            }
            r
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}

/// Defaults overlaid with explicit configs: (name, value, explicitly set). A topic's default
/// `retention.ms` is the broker's (enforced per core, on whole segments); `retention.bytes`
/// stays -1, the broker's size limit being per core, not per partition.
fn merged_configs(
    explicit: &BTreeMap<String, String>,
    config: &crate::config::Config,
) -> Vec<(String, String, bool)> {
    let mut all: BTreeMap<String, (String, bool)> = default_topic_configs()
        .into_iter()
        .map(|(k, v)| (k, (v, false)))
        .collect();
    all.insert(
        "retention.ms".to_string(),
        (kafka_limit(config.retention_ms), false),
    );
    for (k, v) in explicit {
        all.insert(k.clone(), (v.clone(), true));
    }
    all.into_iter().map(|(k, (v, e))| (k, v, e)).collect()
}

pub async fn delete_topics(
    core: &Rc<Core>,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let meta = core.meta();
    // v6+ names topics by name or id in `topics`; older versions list names.
    let asked: Vec<(Option<String>, [u8; 16])> = if version >= 6 {
        req.topics
            .iter()
            .map(|t| {
                (
                    t.name.as_ref().map(|n| n.to_string()),
                    *t.topic_id.as_bytes(),
                )
            })
            .collect()
    } else {
        req.topic_names
            .iter()
            .map(|n| (Some(n.to_string()), [0; 16]))
            .collect()
    };
    let resolved: Vec<Option<Arc<TopicMeta>>> = asked
        .iter()
        .map(|(name, id)| match name {
            Some(n) => meta.topic(n).cloned(),
            None => meta.topic_by_id(id).cloned(),
        })
        .collect();
    let names: Vec<String> = resolved.iter().flatten().map(|t| t.name.clone()).collect();
    let deleted = core
        .mesh
        .call(0, move || async move {
            let core0 = current();
            let out = core0
                .change_metadata(|snap| {
                    let evs: Vec<MetaEvent> = names
                        .iter()
                        .filter(|n| snap.topic(n).is_some())
                        .map(|n| MetaEvent::TopicDeleted { name: n.clone() })
                        .collect();
                    (evs, ())
                })
                .await;
            out.map(|_| ()).map_err(|e| e.to_string())
        })
        .await;
    let ok = matches!(deleted, Ok(Ok(())));
    if !ok {
        tracing::error!("delete topics failed: {deleted:?}");
    }
    let mut cleanups = Vec::new();
    for t in resolved.iter().flatten() {
        for place in &t.partitions {
            let queue = place.queue_id();
            let mesh = core.mesh.clone();
            let owner = place.core as usize;
            cleanups.push(async move {
                let r = mesh
                    .call(owner, move || async move {
                        current().store.delete_queue(queue).await
                    })
                    .await;
                if !matches!(r, Ok(Ok(()))) {
                    tracing::warn!(queue = queue.0, "queue delete failed: {r:?}");
                }
            });
        }
    }
    if ok {
        futures_join_all(cleanups).await;
        crate::groups::topics_deleted(
            core,
            resolved.iter().flatten().map(|t| t.name.clone()).collect(),
        )
        .await;
    }
    let responses = asked
        .into_iter()
        .zip(resolved)
        .map(|((name, id), t)| {
            let code = match (&t, ok) {
                (None, _) if name.is_none() => errors::UNKNOWN_TOPIC_ID,
                (None, _) => errors::UNKNOWN_TOPIC_OR_PARTITION,
                (Some(_), true) => errors::NONE,
                (Some(_), false) => errors::UNKNOWN_SERVER_ERROR,
            };
            let name = name.or_else(|| t.as_ref().map(|t| t.name.clone()));
            DeletableTopicResult::default()
                .with_name(name.map(|n| TopicName(s(&n))))
                .with_topic_id(uuid::Uuid::from_bytes(t.map(|t| t.id).unwrap_or(id)))
                .with_error_code(code)
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}

pub async fn create_partitions(
    core: &Rc<Core>,
    req: CreatePartitionsRequest,
    _version: i16,
) -> CreatePartitionsResponse {
    let asks: Vec<(String, i32, bool)> = req
        .topics
        .iter()
        .map(|t| (t.name.to_string(), t.count, t.assignments.is_some()))
        .collect();
    let validate_only = req.validate_only;
    let asks2 = asks.clone();
    let outcome = core
        .mesh
        .call(0, move || async move {
            let core0 = current();
            core0
                .change_metadata(|snap| {
                    let mut scratch = snap.clone();
                    let mut events = Vec::new();
                    let mut codes = Vec::new();
                    for (name, count, manual) in &asks2 {
                        let Some(t) = scratch.topic(name).cloned() else {
                            codes.push((errors::UNKNOWN_TOPIC_OR_PARTITION, None));
                            continue;
                        };
                        let have = t.partitions.len() as i32;
                        if *manual {
                            codes.push((
                                errors::INVALID_REQUEST,
                                Some("manual assignment is not supported".to_owned()),
                            ));
                        } else if *count <= have || *count > MAX_PARTITIONS_PER_TOPIC {
                            codes.push((
                                errors::INVALID_PARTITIONS,
                                Some(format!("topic has {have} partitions; asked for {count}")),
                            ));
                        } else {
                            let added = scratch.assign((*count - have) as usize);
                            let ev = MetaEvent::PartitionsAdded {
                                name: name.clone(),
                                added,
                            };
                            let _ = scratch.apply(&ev);
                            if !validate_only {
                                events.push(ev);
                            }
                            codes.push((errors::NONE, None));
                        }
                    }
                    (events, codes)
                })
                .await
                .map(|(_, codes)| codes)
                .map_err(|e: CoreError| e.to_string())
        })
        .await;
    let codes = match outcome {
        Ok(Ok(codes)) => codes,
        other => {
            tracing::error!("create partitions failed: {other:?}");
            asks.iter()
                .map(|_| (errors::UNKNOWN_SERVER_ERROR, None))
                .collect()
        }
    };
    let results = asks
        .into_iter()
        .zip(codes)
        .map(|((name, _, _), (code, msg))| {
            CreatePartitionsTopicResult::default()
                .with_name(TopicName(s(&name)))
                .with_error_code(code)
                .with_error_message(msg.map(|m| s(&m)))
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}

pub fn describe_configs(
    core: &Rc<Core>,
    req: DescribeConfigsRequest,
    _version: i16,
) -> DescribeConfigsResponse {
    let meta = core.meta();
    let results = req
        .resources
        .iter()
        .map(|r| {
            let base = DescribeConfigsResult::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            let entries: Vec<(String, String, bool)> = match r.resource_type {
                RESOURCE_TOPIC => match meta.topic(r.resource_name.as_str()) {
                    Some(t) => merged_configs(&t.configs, &core.config),
                    None => return base.with_error_code(errors::UNKNOWN_TOPIC_OR_PARTITION),
                },
                RESOURCE_BROKER => broker_configs(core),
                _ => return base.with_error_code(errors::INVALID_REQUEST),
            };
            let keys: Option<Vec<String>> = r
                .configuration_keys
                .as_ref()
                .map(|ks| ks.iter().map(|k| k.to_string()).collect());
            let configs = entries
                .into_iter()
                .filter(|(k, _, _)| keys.as_ref().is_none_or(|ks| ks.contains(k)))
                .map(|(k, v, explicit)| {
                    DescribeConfigsResourceResult::default()
                        .with_name(s(&k))
                        .with_value(Some(s(&v)))
                        .with_read_only(
                            r.resource_type == RESOURCE_BROKER
                                || !ALTERABLE_TOPIC_CONFIGS.contains(&k.as_str()),
                        )
                        .with_config_source(if explicit {
                            SOURCE_TOPIC
                        } else {
                            SOURCE_DEFAULT
                        })
                })
                .collect();
            base.with_configs(configs)
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// A limit as Kafka reports it: -1 for none.
fn kafka_limit(v: Option<u64>) -> String {
    v.map_or("-1".to_string(), |v| v.to_string())
}

fn broker_configs(core: &Core) -> Vec<(String, String, bool)> {
    let c = &core.config;
    [
        (
            "auto.create.topics.enable",
            c.auto_create_topics.to_string(),
        ),
        ("num.partitions", c.default_partitions.to_string()),
        ("socket.request.max.bytes", c.max_frame_bytes.to_string()),
        ("log.segment.bytes", c.segment_size_bytes.to_string()),
        ("log.retention.ms", kafka_limit(c.retention_ms)),
        ("log.retention.bytes", kafka_limit(c.retention_bytes)),
        (
            "group.initial.rebalance.delay.ms",
            c.group_initial_rebalance_delay_ms.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v, false))
    .collect()
}

pub fn describe_cluster(
    core: &Rc<Core>,
    req: DescribeClusterRequest,
    _version: i16,
) -> DescribeClusterResponse {
    let meta = core.meta();
    let (host, port) = core.advertised.clone();
    DescribeClusterResponse::default()
        .with_cluster_id(s(&meta.cluster_id))
        .with_controller_id(BrokerId(NODE_ID))
        .with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(BrokerId(NODE_ID))
            .with_host(s(&host))
            .with_port(port)])
        .with_cluster_authorized_operations(authorized_operations(
            AclResource::Cluster,
            req.include_cluster_authorized_operations,
        ))
}

/// InitProducerId: a new producer id (never reused: logged durably on core 0 and started above
/// every id any shard has stored), or for a transactional id its id with the epoch bumped.
pub async fn init_producer_id(
    core: &Rc<Core>,
    req: InitProducerIdRequest,
    _version: i16,
) -> InitProducerIdResponse {
    // An empty transactional id means none (Kafka treats null and "" alike).
    let tid = req
        .transactional_id
        .as_ref()
        .map(|t| t.to_string())
        .filter(|t| !t.is_empty());
    let outcome = core
        .mesh
        .call(0, move || async move {
            let core0 = current();
            core0
                .change_metadata(|snap| {
                    let (id, epoch) = match tid.as_ref().and_then(|t| snap.transactional.get(t)) {
                        Some(&(id, epoch)) if epoch < i16::MAX - 1 => (id, epoch + 1),
                        _ => (snap.next_producer_id, 0),
                    };
                    (
                        vec![MetaEvent::ProducerIdAllocated {
                            id,
                            epoch,
                            transactional_id: tid.clone(),
                        }],
                        (id, epoch),
                    )
                })
                .await
                .map(|(_, out)| out)
                .map_err(|e| e.to_string())
        })
        .await;
    match outcome {
        Ok(Ok((id, epoch))) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch),
        other => {
            tracing::error!("InitProducerId failed: {other:?}");
            InitProducerIdResponse::default()
                .with_error_code(errors::COORDINATOR_NOT_AVAILABLE)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::Place;
    use crate::versions::advertised;
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::protocol::{Decodable, Encodable};

    /// Every bit a supported operation may use: READ (3) to IDEMPOTENT_WRITE (12).
    const KNOWN_OPERATION_BITS: i32 = 0b1_1111_1111_1000;

    fn snapshot_with(topic: &str) -> Snapshot {
        let mut snap = Snapshot::new(1);
        snap.apply(&MetaEvent::TopicCreated {
            topic: TopicMeta {
                name: topic.into(),
                id: new_topic_id(),
                partitions: vec![Place { core: 0, queue: 0 }; 3],
                configs: BTreeMap::new(),
            },
        })
        .unwrap();
        snap
    }

    fn request(topics: &[&str], asks_for_operations: bool, version: i16) -> MetadataRequest {
        let topics = topics
            .iter()
            .map(|t| MetadataRequestTopic::default().with_name(Some(TopicName(s(t)))))
            .collect();
        MetadataRequest::default()
            .with_topics(Some(topics))
            .with_include_topic_authorized_operations(asks_for_operations && version >= 8)
            .with_include_cluster_authorized_operations(
                asks_for_operations && (8..=10).contains(&version),
            )
    }

    /// The answer as a client reads it: encoded and decoded in `version`.
    fn round_trip(req: &MetadataRequest, snap: &Snapshot, version: i16) -> MetadataResponse {
        let wanted = req.topics.as_ref().map(|ts| {
            ts.iter()
                .map(|t| (t.name.as_ref().map(|n| n.to_string()), [0; 16]))
                .collect()
        });
        let answer = metadata_answer(snap, req, wanted, &("127.0.0.1".into(), 9092));
        let mut buf = bytes::BytesMut::new();
        answer
            .encode(&mut buf, version)
            .unwrap_or_else(|e| panic!("Metadata v{version} does not encode: {e}"));
        MetadataResponse::decode(&mut buf.freeze(), version)
            .unwrap_or_else(|e| panic!("Metadata v{version} does not decode: {e}"))
    }

    /// Catches the "not requested" marker (i32::MIN, bit 31) answered to a client that asked:
    /// kafka-python's admin client asks in every Metadata v8 request and failed to decode bit
    /// 31 as an operation. Asked for, the fields hold known operations only (READ and WRITE on
    /// topics, existing or not); not asked for, the marker.
    #[test]
    fn authorized_operations_are_answered_when_asked_for_and_only_then() {
        let snap = snapshot_with("known");
        let asked = round_trip(&request(&["known", "unknown"], true, 8), &snap, 8);
        let cluster = asked.cluster_authorized_operations;
        assert!(
            cluster != 0 && cluster & !KNOWN_OPERATION_BITS == 0,
            "{cluster:#b}"
        );
        assert_eq!(asked.topics.len(), 2);
        for topic in &asked.topics {
            let ops = topic.topic_authorized_operations;
            assert_eq!(ops & !KNOWN_OPERATION_BITS, 0, "{:?}: {ops:#b}", topic.name);
            let read_write = 1 << acl_operation::READ | 1 << acl_operation::WRITE;
            assert_eq!(ops & read_write, read_write, "{:?}: {ops:#b}", topic.name);
        }

        let not_asked = round_trip(&request(&["known", "unknown"], false, 8), &snap, 8);
        assert_eq!(not_asked.cluster_authorized_operations, OPERATIONS_OMITTED);
        for topic in &not_asked.topics {
            assert_eq!(topic.topic_authorized_operations, OPERATIONS_OMITTED);
        }
    }

    /// Catches a field set in a version that lacks it (the codec then refuses to encode and the
    /// connection is closed), for every advertised Metadata version, asked for operations or not.
    #[test]
    fn metadata_answers_encode_in_every_advertised_version() {
        let snap = snapshot_with("known");
        let (min, max) = advertised(ApiKey::Metadata).expect("Metadata is advertised");
        for version in min..=max {
            for asks in [false, true] {
                let answer = round_trip(
                    &request(&["known", "unknown"], asks, version),
                    &snap,
                    version,
                );
                assert_eq!(answer.topics.len(), 2, "v{version}");
                assert_eq!(answer.topics[0].partitions.len(), 3, "v{version}");
            }
        }
    }

    #[test]
    fn groups_allow_read_describe_and_delete() {
        use acl_operation::*;
        assert_eq!(
            authorized_operations(AclResource::Group, true),
            1 << READ | 1 << DESCRIBE | 1 << DELETE
        );
        assert_eq!(authorized_operations(AclResource::Group, false), i32::MIN);
    }
}
