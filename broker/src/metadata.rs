//! Cluster metadata: topics, their partitions' places (owning core + engine queue id), topic
//! ids, configs, and producer-id allocation.
//!
//! Durability contract: every change is a [`MetaEvent`] appended (JSON, one record per event,
//! all events of one change in one RecordBatch) to the internal queue [`META_QUEUE`] of core 0
//! with `Durability::Durable` BEFORE it is installed or acknowledged. At startup core 0 replays
//! the queue from its start; a change whose batch was torn by a crash was never acknowledged
//! and is gone as a whole. Only core 0 writes; the other cores receive whole [`Snapshot`]s,
//! versioned, and install a snapshot only if it is newer than theirs, so reordering on the way
//! cannot move a core backwards.
//!
//! Queue ids are never reused: a deleted topic's queues stay deleted in the engine, and the
//! per-core counter is rebuilt from every `TopicCreated`/`PartitionsAdded` ever logged, or from
//! the last [`MetaEvent::SnapshotStart`].
//!
//! Compaction: once the queue holds more than [`META_COMPACT_EVENTS`] events beyond its last
//! snapshot (and [`META_COMPACT_LIVE_FACTOR`] times the snapshot's size), core 0 appends a snapshot — one batch: `SnapshotStart` (cluster id, shards, the
//! per-core queue-id counters and the next producer id, which history alone rebuilt) followed
//! by the events that recreate every topic and transactional id — then moves the queue's log
//! start to that batch. Replay accepts a snapshot anywhere: `SnapshotStart` resets the state, so
//! `old events + snapshot + later` and `snapshot + later` rebuild the same state, and a crash
//! between the append and the moved start (or before the engine's checkpoint made the start
//! durable) only leaves extra events before it. The batch is written under the same lock as
//! every change, so no change is in flight while it is captured or written. Core 0 also
//! compacts when the queue's first retained batch holds back more than
//! `COMPACT_RETAINED_SEGMENTS` segments of its commit log (the queue is pinned: retention
//! keeps every segment from its start on), checked every `META_RETENTION_CHECK_MS`.

use ringmq_engine::QueueId;
use ringmq_wire::record_batch::{validate, BatchBuilder, ProducerStamp, Record};
use ringmq_wire::varint::get_varint;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Partitions one topic may have (a named limit on CreateTopics / CreatePartitions).
pub const MAX_PARTITIONS_PER_TOPIC: i32 = 100_000;
/// Kafka's topic name limit.
pub const MAX_TOPIC_NAME_LEN: usize = 249;
/// Internal queue of core 0 holding the metadata events.
pub const META_QUEUE: QueueId = QueueId(u32::MAX - 1);
/// Internal queue of every core holding its consumer groups' log.
pub const GROUP_QUEUE: QueueId = QueueId(u32::MAX - 2);
/// User queue ids stay below this.
pub const MAX_USER_QUEUE_ID: u32 = u32::MAX - 16;
/// Events in the metadata queue beyond its last snapshot that make core 0 write a new one.
/// Changes are rare (topic admin, one `ProducerIdAllocated` per producer start), so a
/// thousand events replay in milliseconds and a snapshot is written at most every thousand
/// changes.
pub const META_COMPACT_EVENTS: u64 = 1000;
/// ... and more than this many times the events a snapshot writes (one per topic and
/// transactional id, plus one): each snapshot rewrites the whole state, so a large state is
/// rewritten at most once per twice its size in changes.
pub const META_COMPACT_LIVE_FACTOR: u64 = 2;
/// Largest metadata snapshot batch: half the engine's default batch limit (8 MiB). A state
/// larger than this (well over 100,000 partitions) is not compacted: the log keeps growing, as
/// before compaction existed, and a warning says so.
pub const META_SNAPSHOT_MAX_BYTES: usize = 4 << 20;

/// Where a partition lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    pub core: u32,
    pub queue: u32,
}

impl Place {
    pub fn queue_id(&self) -> QueueId {
        QueueId(self.queue)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    /// UUID v4, hyphenated in the log.
    #[serde(with = "uuid_text")]
    pub id: [u8; 16],
    pub partitions: Vec<Place>,
    pub configs: BTreeMap<String, String>,
}

/// One durable metadata change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum MetaEvent {
    /// First event of a new data directory.
    Init {
        cluster_id: String,
        shards: u32,
    },
    TopicCreated {
        topic: TopicMeta,
    },
    PartitionsAdded {
        name: String,
        added: Vec<Place>,
    },
    TopicDeleted {
        name: String,
    },
    /// A topic's explicit configs after AlterConfigs or IncrementalAlterConfigs: the whole set,
    /// replacing the one it had (a key not in `configs` takes the broker's default). A snapshot
    /// needs no event of its own for it: `TopicCreated` carries the topic's current configs.
    ///
    /// Added in session 8: an older binary cannot read this event (its replay fails with
    /// `BadRecord` and the broker does not start) while the metadata log holds one, that is
    /// until a snapshot written after the last such event (compaction) has become the log's
    /// durable start.
    TopicConfigsChanged {
        name: String,
        configs: BTreeMap<String, String>,
    },
    /// A producer id handed out by InitProducerId (never handed out again).
    ProducerIdAllocated {
        id: i64,
        epoch: i16,
        transactional_id: Option<String>,
    },
    /// First event of a snapshot batch: forget every topic and transactional id, take these
    /// counters; the rest of the batch recreates the state (see the module docs).
    SnapshotStart {
        cluster_id: String,
        shards: u32,
        next_queue: Vec<u32>,
        next_producer_id: i64,
    },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetaError {
    #[error("topic {0} already exists")]
    TopicExists(String),
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    #[error("metadata log record is not valid: {0}")]
    BadRecord(String),
    #[error("data directory has {stored} shards, configured {configured}")]
    ShardCount { stored: u32, configured: u32 },
}

/// The whole metadata at one version. Immutable once published; cores share it by `Arc`.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub version: u64,
    pub cluster_id: String,
    pub shards: u32,
    pub topics: BTreeMap<String, Arc<TopicMeta>>,
    pub by_id: HashMap<[u8; 16], String>,
    /// Next queue id to hand out, per core (never reused).
    pub next_queue: Vec<u32>,
    pub next_producer_id: i64,
    pub transactional: HashMap<String, (i64, i16)>,
}

impl Snapshot {
    pub fn new(shards: u32) -> Snapshot {
        Snapshot {
            shards,
            next_queue: vec![0; shards as usize],
            ..Default::default()
        }
    }

    pub fn topic(&self, name: &str) -> Option<&Arc<TopicMeta>> {
        self.topics.get(name)
    }

    pub fn topic_by_id(&self, id: &[u8; 16]) -> Option<&Arc<TopicMeta>> {
        self.by_id.get(id).and_then(|n| self.topics.get(n))
    }

    pub fn place(&self, topic: &str, partition: i32) -> Option<Place> {
        let t = self.topics.get(topic)?;
        usize::try_from(partition)
            .ok()
            .and_then(|p| t.partitions.get(p).copied())
    }

    /// Applies one event (validated against the current state).
    pub fn apply(&mut self, ev: &MetaEvent) -> Result<(), MetaError> {
        match ev {
            MetaEvent::Init { cluster_id, shards } => {
                if *shards != self.shards {
                    return Err(MetaError::ShardCount {
                        stored: *shards,
                        configured: self.shards,
                    });
                }
                self.cluster_id = cluster_id.clone();
            }
            MetaEvent::TopicCreated { topic } => {
                if self.topics.contains_key(&topic.name) {
                    return Err(MetaError::TopicExists(topic.name.clone()));
                }
                self.note_places(&topic.partitions)?;
                self.by_id.insert(topic.id, topic.name.clone());
                self.topics
                    .insert(topic.name.clone(), Arc::new(topic.clone()));
            }
            MetaEvent::PartitionsAdded { name, added } => {
                self.note_places(added)?;
                let t = self
                    .topics
                    .get_mut(name)
                    .ok_or_else(|| MetaError::UnknownTopic(name.clone()))?;
                Arc::make_mut(t).partitions.extend_from_slice(added);
            }
            MetaEvent::TopicDeleted { name } => {
                let t = self
                    .topics
                    .remove(name)
                    .ok_or_else(|| MetaError::UnknownTopic(name.clone()))?;
                self.by_id.remove(&t.id);
            }
            MetaEvent::TopicConfigsChanged { name, configs } => {
                let t = self
                    .topics
                    .get_mut(name)
                    .ok_or_else(|| MetaError::UnknownTopic(name.clone()))?;
                Arc::make_mut(t).configs = configs.clone();
            }
            MetaEvent::ProducerIdAllocated {
                id,
                epoch,
                transactional_id,
            } => {
                self.next_producer_id = self.next_producer_id.max(id + 1);
                if let Some(tid) = transactional_id {
                    self.transactional.insert(tid.clone(), (*id, *epoch));
                }
            }
            MetaEvent::SnapshotStart {
                cluster_id,
                shards,
                next_queue,
                next_producer_id,
            } => {
                if *shards != self.shards {
                    return Err(MetaError::ShardCount {
                        stored: *shards,
                        configured: self.shards,
                    });
                }
                if next_queue.len() != self.shards as usize {
                    return Err(MetaError::BadRecord(format!(
                        "snapshot has {} queue counters for {} shards",
                        next_queue.len(),
                        self.shards
                    )));
                }
                self.cluster_id = cluster_id.clone();
                self.topics.clear();
                self.by_id.clear();
                self.transactional.clear();
                self.next_queue = next_queue.clone();
                self.next_producer_id = *next_producer_id;
            }
        }
        self.version += 1;
        Ok(())
    }

    /// The events of a snapshot of this state: replayed from any state with the same shard
    /// count, they rebuild this one (topics, ids, places, configs, queue-id counters, producer
    /// ids; `version` aside, which only orders installs within one process).
    pub fn snapshot_events(&self) -> Vec<MetaEvent> {
        let mut events = Vec::with_capacity(1 + self.topics.len() + self.transactional.len());
        events.push(MetaEvent::SnapshotStart {
            cluster_id: self.cluster_id.clone(),
            shards: self.shards,
            next_queue: self.next_queue.clone(),
            next_producer_id: self.next_producer_id,
        });
        events.extend(self.topics.values().map(|t| MetaEvent::TopicCreated {
            topic: TopicMeta::clone(t),
        }));
        let mut transactional: Vec<_> = self.transactional.iter().collect();
        transactional.sort();
        events.extend(transactional.into_iter().map(|(tid, (id, epoch))| {
            MetaEvent::ProducerIdAllocated {
                id: *id,
                epoch: *epoch,
                transactional_id: Some(tid.clone()),
            }
        }));
        events
    }

    fn note_places(&mut self, places: &[Place]) -> Result<(), MetaError> {
        for p in places {
            let next = self
                .next_queue
                .get_mut(p.core as usize)
                .ok_or_else(|| MetaError::BadRecord(format!("core {} out of range", p.core)))?;
            *next = (*next).max(p.queue + 1);
        }
        Ok(())
    }

    /// Places for `n` new partitions, each on the core that owns the fewest partitions now
    /// (ties to the lowest core), with fresh queue ids.
    pub fn assign(&self, n: usize) -> Vec<Place> {
        let shards = self.shards.max(1) as usize;
        let mut load = vec![0usize; shards];
        for t in self.topics.values() {
            for p in &t.partitions {
                if let Some(l) = load.get_mut(p.core as usize) {
                    *l += 1;
                }
            }
        }
        let mut next = self.next_queue.clone();
        next.resize(shards, 0);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let core = (0..shards).min_by_key(|&c| (load[c], c)).unwrap_or(0);
            load[core] += 1;
            out.push(Place {
                core: core as u32,
                queue: next[core],
            });
            next[core] += 1;
        }
        out
    }

    /// Partition count per core (for logs and tests).
    pub fn load(&self) -> Vec<usize> {
        let mut load = vec![0usize; self.shards as usize];
        for p in self.topics.values().flat_map(|t| t.partitions.iter()) {
            if let Some(l) = load.get_mut(p.core as usize) {
                *l += 1;
            }
        }
        load
    }
}

/// Encodes a change as one RecordBatch: one record per event, the event's JSON as the value.
pub fn encode_events(events: &[MetaEvent]) -> Vec<u8> {
    let values: Vec<Vec<u8>> = events
        .iter()
        .map(|e| serde_json::to_vec(e).expect("metadata events always serialize"))
        .collect();
    let mut b = BatchBuilder::new(values.iter().map(Vec::len).sum::<usize>() + 128);
    let now = crate::store::now_ms();
    for v in &values {
        b.push(&Record {
            key: None,
            value: Some(v),
            headers: &[],
            timestamp_ms: now,
        });
    }
    b.build(ProducerStamp::NONE, 0)
}

/// Decodes the events of one stored batch.
pub fn decode_events(batch: &[u8]) -> Result<Vec<MetaEvent>, MetaError> {
    record_values(batch)?
        .into_iter()
        .map(|v| serde_json::from_slice(v).map_err(|e| MetaError::BadRecord(e.to_string())))
        .collect()
}

/// The values of the records of an uncompressed batch (internal queues are never compressed).
pub fn record_values(batch: &[u8]) -> Result<Vec<&[u8]>, MetaError> {
    let bad = |why: &str| MetaError::BadRecord(why.to_owned());
    let header = validate(batch).map_err(|e| MetaError::BadRecord(e.to_string()))?;
    if header.attributes & 0x7 != 0 {
        return Err(bad("internal batch is compressed"));
    }
    let mut pos = ringmq_wire::record_batch::HEADER_LEN;
    let end = header.total_len();
    let mut out = Vec::new();
    for _ in 0..header.record_count {
        let take_varint = |pos: &mut usize| -> Result<i64, MetaError> {
            let (v, n) = get_varint(
                batch
                    .get(*pos..end)
                    .ok_or_else(|| bad("record past batch end"))?,
            )
            .map_err(|_| bad("bad varint"))?;
            *pos += n;
            Ok(v)
        };
        let len = take_varint(&mut pos)?;
        let record_end = pos
            .checked_add(usize::try_from(len).map_err(|_| bad("negative record length"))?)
            .filter(|&e| e <= end)
            .ok_or_else(|| bad("record past batch end"))?;
        pos += 1; // attributes
        take_varint(&mut pos)?; // timestamp delta
        take_varint(&mut pos)?; // offset delta
        let key_len = take_varint(&mut pos)?;
        if key_len > 0 {
            pos = pos
                .checked_add(key_len as usize)
                .filter(|&p| p <= record_end)
                .ok_or_else(|| bad("key past record end"))?;
        }
        let value_len = take_varint(&mut pos)?;
        let value_len = usize::try_from(value_len).map_err(|_| bad("null value"))?;
        let value_end = pos.checked_add(value_len).filter(|&e| e <= record_end);
        let value = value_end
            .and_then(|e| batch.get(pos..e))
            .ok_or_else(|| bad("value past record end"))?;
        out.push(value);
        pos = record_end;
    }
    Ok(out)
}

/// A topic name Kafka would accept.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-')
}

pub fn new_topic_id() -> [u8; 16] {
    *uuid::Uuid::new_v4().as_bytes()
}

/// Default configs reported for every topic (DescribeConfigs).
pub fn default_topic_configs() -> BTreeMap<String, String> {
    [
        ("cleanup.policy", "delete"),
        ("compression.type", "producer"),
        ("message.timestamp.type", "CreateTime"),
        ("retention.ms", "-1"),
        ("retention.bytes", "-1"),
        ("max.message.bytes", "8388608"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

mod uuid_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&uuid::Uuid::from_bytes(*id).hyphenated().to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 16], D::Error> {
        let text = String::deserialize(d)?;
        uuid::Uuid::parse_str(&text)
            .map(|u| *u.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str, places: Vec<Place>) -> MetaEvent {
        MetaEvent::TopicCreated {
            topic: TopicMeta {
                name: name.into(),
                id: new_topic_id(),
                partitions: places,
                configs: BTreeMap::new(),
            },
        }
    }

    #[test]
    fn events_round_trip_through_a_batch() {
        let evs = vec![
            MetaEvent::Init {
                cluster_id: "c".into(),
                shards: 2,
            },
            topic("a", vec![Place { core: 1, queue: 0 }]),
            MetaEvent::ProducerIdAllocated {
                id: 7,
                epoch: 0,
                transactional_id: None,
            },
        ];
        let batch = encode_events(&evs);
        assert_eq!(decode_events(&batch).unwrap(), evs);
        let mut bad = batch.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(decode_events(&bad).is_err());
        for cut in [0, 30, batch.len() - 1] {
            assert!(decode_events(&batch[..cut]).is_err());
        }
    }

    #[test]
    fn assignment_balances_and_never_reuses_queue_ids() {
        let mut s = Snapshot::new(2);
        let places = s.assign(3);
        assert_eq!(
            places,
            vec![
                Place { core: 0, queue: 0 },
                Place { core: 1, queue: 0 },
                Place { core: 0, queue: 1 }
            ]
        );
        s.apply(&topic("a", places)).unwrap();
        let more = s.assign(1);
        assert_eq!(more, vec![Place { core: 1, queue: 1 }]);
        s.apply(&MetaEvent::TopicDeleted { name: "a".into() })
            .unwrap();
        let after_delete = s.assign(2);
        assert_eq!(
            after_delete,
            vec![Place { core: 0, queue: 2 }, Place { core: 1, queue: 1 }]
        );
        assert_eq!(s.load(), vec![0, 0]);
    }

    #[test]
    fn replay_rejects_duplicates_and_shard_mismatch() {
        let mut s = Snapshot::new(2);
        s.apply(&topic("a", vec![])).unwrap();
        assert_eq!(
            s.apply(&topic("a", vec![])),
            Err(MetaError::TopicExists("a".into()))
        );
        assert!(matches!(
            s.apply(&MetaEvent::Init {
                cluster_id: "x".into(),
                shards: 3
            }),
            Err(MetaError::ShardCount {
                stored: 3,
                configured: 2
            })
        ));
    }

    /// A history with every kind of event: creations, added partitions, a deletion (its queue
    /// ids must never come back), plain and transactional producer ids.
    fn history() -> Vec<MetaEvent> {
        let mut s = Snapshot::new(2);
        let mut events = Vec::new();
        let mut push = |s: &mut Snapshot, ev: MetaEvent| {
            s.apply(&ev).unwrap();
            events.push(ev);
        };
        push(
            &mut s,
            MetaEvent::Init {
                cluster_id: "cluster".into(),
                shards: 2,
            },
        );
        for name in ["a", "b", "c"] {
            let places = s.assign(3);
            push(&mut s, topic(name, places));
        }
        let added = s.assign(2);
        push(
            &mut s,
            MetaEvent::PartitionsAdded {
                name: "b".into(),
                added,
            },
        );
        push(&mut s, configs_changed("a", &[("retention.ms", "60000")]));
        push(&mut s, configs_changed("b", &[("retention.bytes", "1000")]));
        push(&mut s, configs_changed("b", &[("retention.ms", "5")]));
        push(&mut s, configs_changed("c", &[("retention.ms", "7")]));
        push(&mut s, MetaEvent::TopicDeleted { name: "c".into() });
        for id in 0..5 {
            push(
                &mut s,
                MetaEvent::ProducerIdAllocated {
                    id,
                    epoch: 0,
                    transactional_id: None,
                },
            );
        }
        push(
            &mut s,
            MetaEvent::ProducerIdAllocated {
                id: 5,
                epoch: 3,
                transactional_id: Some("tx".into()),
            },
        );
        events
    }

    fn configs_changed(name: &str, configs: &[(&str, &str)]) -> MetaEvent {
        MetaEvent::TopicConfigsChanged {
            name: name.into(),
            configs: configs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn replay(events: &[MetaEvent]) -> Snapshot {
        let mut s = Snapshot::new(2);
        for ev in events {
            s.apply(ev).unwrap();
        }
        s
    }

    fn assert_same_state(a: &Snapshot, b: &Snapshot) {
        assert_eq!(a.cluster_id, b.cluster_id);
        assert_eq!(a.topics, b.topics, "topics, ids, places, configs");
        assert_eq!(a.by_id, b.by_id);
        assert_eq!(a.next_queue, b.next_queue, "queue-id counters");
        assert_eq!(a.next_producer_id, b.next_producer_id);
        assert_eq!(a.transactional, b.transactional);
    }

    #[test]
    fn a_snapshot_replays_to_the_same_state_alone_or_after_the_old_events() {
        let history = history();
        let full = replay(&history);
        assert_eq!(
            full.next_queue,
            vec![6, 5],
            "c's queues counted though c is gone"
        );
        let snapshot = full.snapshot_events();
        let batch = encode_events(&snapshot);
        let stored = decode_events(&batch).unwrap();
        assert_eq!(stored, snapshot);
        assert_same_state(&replay(&stored), &full);
        let mut old_then_snapshot = history.clone();
        old_then_snapshot.extend(stored.iter().cloned());
        assert_same_state(&replay(&old_then_snapshot), &full);
        // A snapshot of a replayed snapshot is the same snapshot.
        assert_eq!(replay(&stored).snapshot_events(), snapshot);
    }

    #[test]
    fn after_a_snapshot_new_queue_ids_stay_fresh_and_later_events_apply() {
        let full = replay(&history());
        let mut s = replay(&full.snapshot_events());
        let places = s.assign(2);
        for p in &places {
            let used = history().iter().any(|ev| match ev {
                MetaEvent::TopicCreated { topic } => topic.partitions.contains(p),
                MetaEvent::PartitionsAdded { added, .. } => added.contains(p),
                _ => false,
            });
            assert!(!used, "queue id {p:?} reused after a snapshot");
        }
        s.apply(&topic("d", places)).unwrap();
        s.apply(&MetaEvent::TopicDeleted { name: "a".into() })
            .unwrap();
        assert_eq!(s.topics.keys().collect::<Vec<_>>(), vec!["b", "d"]);
        s.apply(&MetaEvent::ProducerIdAllocated {
            id: 6,
            epoch: 0,
            transactional_id: None,
        })
        .unwrap();
        assert_eq!(s.next_producer_id, 7);
    }

    /// Catches a replay that merges the new set into the old one (an AlterConfigs that drops
    /// a key would bring it back after a restart), a change that leaks to another topic, and
    /// a snapshot that loses altered configs (TopicCreated written from the configs given at
    /// creation).
    #[test]
    fn config_changes_replace_the_set_replay_and_survive_a_snapshot() {
        let full = replay(&history());
        let configs = |s: &Snapshot, t: &str| s.topic(t).unwrap().configs.clone();
        let expected: BTreeMap<String, String> = [("retention.ms".to_string(), "5".to_string())]
            .into_iter()
            .collect();
        assert_eq!(
            configs(&full, "b"),
            expected,
            "the last set replaces the first"
        );
        assert_eq!(configs(&full, "a").get("retention.ms").unwrap(), "60000");
        assert!(full.topic("c").is_none());

        let batch = encode_events(&full.snapshot_events());
        let from_snapshot = replay(&decode_events(&batch).unwrap());
        assert_eq!(configs(&from_snapshot, "b"), expected);
        assert_eq!(configs(&from_snapshot, "a"), configs(&full, "a"));

        // A change to a topic that is not there is an error on replay, not a new topic.
        let mut s = from_snapshot;
        assert_eq!(
            s.apply(&configs_changed("c", &[])),
            Err(MetaError::UnknownTopic("c".into()))
        );
        // Back to no explicit configs at all.
        s.apply(&configs_changed("b", &[])).unwrap();
        assert!(configs(&s, "b").is_empty());
        assert_eq!(configs(&s, "a").get("retention.ms").unwrap(), "60000");
    }

    #[test]
    fn a_snapshot_is_checked_against_the_shard_count() {
        let full = replay(&history());
        let mut other = Snapshot::new(3);
        assert!(matches!(
            other.apply(&full.snapshot_events()[0]),
            Err(MetaError::ShardCount {
                stored: 2,
                configured: 3
            })
        ));
        let mut s = Snapshot::new(2);
        let bad = MetaEvent::SnapshotStart {
            cluster_id: "c".into(),
            shards: 2,
            next_queue: vec![1],
            next_producer_id: 0,
        };
        assert!(matches!(s.apply(&bad), Err(MetaError::BadRecord(_))));
    }

    #[test]
    fn topic_names() {
        assert!(valid_topic_name("orders.v1_x-y"));
        for bad in ["", ".", "..", "a b", "a/b", &"x".repeat(250)] {
            assert!(!valid_topic_name(bad), "{bad}");
        }
    }
}
