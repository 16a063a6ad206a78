//! Committed offsets: OffsetCommit, OffsetFetch, deletions (topic deleted, DeleteGroups,
//! retention) and replay.
//!
//! Durability: a commit is validated, written as one batch, and applied to memory only after
//! the append resolved durable; the answer follows. Memory therefore never shows a commit the
//! log could lose. Each write takes a sequence number when issued; memory keeps, per partition,
//! the write with the highest number, which is the one replay would keep (later records win).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopics;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::codec::{self, GroupRecord, OffsetValue};
use super::membership::COORDINATOR_NOT_AVAILABLE;
use super::state::{
    CommittedOffset, Group, GroupState, FENCED_INSTANCE_ID, NONE, REBALANCE_IN_PROGRESS,
    UNKNOWN_MEMBER_ID,
};
use super::{
    GroupCoordinator, GroupLog, Inner, MAX_GROUP_ID_BYTES, MAX_OFFSET_METADATA_BYTES,
    MAX_TOPIC_NAME_BYTES, OFFSETS_RETENTION_MS,
};

const ILLEGAL_GENERATION: i16 = ResponseError::IllegalGeneration.code();
const INVALID_GROUP_ID: i16 = ResponseError::InvalidGroupId.code();
const GROUP_ID_NOT_FOUND: i16 = ResponseError::GroupIdNotFound.code();
const NON_EMPTY_GROUP: i16 = ResponseError::NonEmptyGroup.code();
const UNKNOWN_TOPIC_OR_PARTITION: i16 = ResponseError::UnknownTopicOrPartition.code();
const OFFSET_METADATA_TOO_LARGE: i16 = ResponseError::OffsetMetadataTooLarge.code();

/// OffsetCommit versions that carry `retention_time_ms`.
const RETENTION_FIELD_VERSIONS: std::ops::RangeInclusive<i16> = 2..=4;
/// From this OffsetCommit version an unknown group with a generation answers GROUP_ID_NOT_FOUND
/// (older clients only know ILLEGAL_GENERATION there).
const GROUP_ID_NOT_FOUND_MIN_COMMIT_VERSION: i16 = 9;

/// A (group, topic, partition) key with the write that last touched it.
type OffsetKey = (String, String, i32);

impl<L: GroupLog> GroupCoordinator<L> {
    /// Commits offsets; answers after the batch holding them is durable.
    pub async fn offset_commit(
        &self,
        req: OffsetCommitRequest,
        version: i16,
        partition_exists: &dyn Fn(&str, i32) -> bool,
    ) -> OffsetCommitResponse {
        let now = self.clock.now_ms();
        let group_code = self.commit_check(&req, version, now);
        let mut codes: Vec<Vec<i16>> = Vec::with_capacity(req.topics.len());
        let mut records = Vec::new();
        let mut accepted: Vec<(String, i32, CommittedOffset)> = Vec::new();
        for topic in &req.topics {
            let mut topic_codes = Vec::with_capacity(topic.partitions.len());
            for p in &topic.partitions {
                let metadata_len = p.committed_metadata.as_ref().map_or(0, |m| m.len());
                let code = if group_code != NONE {
                    group_code
                } else if topic.name.len() > MAX_TOPIC_NAME_BYTES
                    || !partition_exists(topic.name.as_str(), p.partition_index)
                {
                    UNKNOWN_TOPIC_OR_PARTITION
                } else if metadata_len > MAX_OFFSET_METADATA_BYTES {
                    OFFSET_METADATA_TOO_LARGE
                } else {
                    NONE
                };
                topic_codes.push(code);
                if code != NONE {
                    continue;
                }
                let retention = req.retention_time_ms;
                let expire = (RETENTION_FIELD_VERSIONS.contains(&version) && retention >= 0)
                    .then(|| now.saturating_add(retention as u64));
                let value = OffsetValue {
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    commit_timestamp_ms: now as i64,
                    expire_timestamp_ms: expire.map_or(-1, |e| e as i64),
                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                };
                let key = codec::offset_key(
                    req.group_id.as_str(),
                    topic.name.as_str(),
                    p.partition_index,
                );
                records.push((key, Some(codec::offset_value(&value))));
                accepted.push((
                    topic.name.to_string(),
                    p.partition_index,
                    CommittedOffset {
                        offset: value.offset,
                        leader_epoch: value.leader_epoch,
                        metadata: value.metadata,
                        commit_timestamp_ms: now,
                        expire_timestamp_ms: expire,
                        write_seq: 0,
                    },
                ));
            }
            codes.push(topic_codes);
        }
        if !records.is_empty() {
            let seq = self.next_write_seq();
            let stored = self
                .append(codec::build_batch(&records, now as i64), records.len())
                .await;
            match stored {
                Ok(_) => self.apply_commits(req.group_id.as_str(), accepted, seq),
                Err(e) => {
                    tracing::warn!(group = %req.group_id.as_str(), error = %e, "offset commit not stored");
                    for code in codes.iter_mut().flatten().filter(|c| **c == NONE) {
                        *code = COORDINATOR_NOT_AVAILABLE;
                    }
                }
            }
        }
        commit_response(&req, codes)
    }

    pub fn offset_fetch(&self, req: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
        let inner = self.inner.borrow();
        if version >= 8 {
            let groups = req
                .groups
                .iter()
                .map(|g| {
                    let topics =
                        fetch_group(&inner, g.group_id.as_str(), g.topics.as_deref(), version);
                    OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id.clone())
                        .with_error_code(topics.as_ref().err().copied().unwrap_or(NONE))
                        .with_topics(topics.unwrap_or_default())
                })
                .collect();
            return OffsetFetchResponse::default().with_groups(groups);
        }
        let wanted: Option<Vec<OffsetFetchRequestTopics>> = req.topics.as_ref().map(|ts| {
            ts.iter()
                .map(|t| {
                    OffsetFetchRequestTopics::default()
                        .with_name(t.name.clone())
                        .with_partition_indexes(t.partition_indexes.clone())
                })
                .collect()
        });
        let found = fetch_group(&inner, req.group_id.as_str(), wanted.as_deref(), version);
        let error = found.as_ref().err().copied().unwrap_or(NONE);
        let topics = found
            .unwrap_or_default()
            .into_iter()
            .map(|t| {
                let partitions = t
                    .partitions
                    .into_iter()
                    .map(|p| {
                        let mut out = OffsetFetchResponsePartition::default()
                            .with_partition_index(p.partition_index)
                            .with_committed_offset(p.committed_offset)
                            .with_metadata(p.metadata)
                            .with_error_code(if version < 2 && error != NONE {
                                error
                            } else {
                                p.error_code
                            });
                        if version >= 5 {
                            out.committed_leader_epoch = p.committed_leader_epoch;
                        }
                        out
                    })
                    .collect();
                OffsetFetchResponseTopic::default()
                    .with_name(t.name)
                    .with_partitions(partitions)
            })
            .collect();
        let mut response = OffsetFetchResponse::default().with_topics(topics);
        if version >= 2 {
            response.error_code = error;
        }
        response
    }

    /// A topic was deleted: its committed offsets go, in every group (tombstones first, so a
    /// replay cannot bring them back; memory is cleared even if the tombstones fail, since a
    /// recreated topic must not inherit old positions).
    pub async fn topic_deleted(&self, topic: &str) {
        let keys: Vec<OffsetKey> = {
            let inner = self.inner.borrow();
            inner
                .groups
                .values()
                .flat_map(|g| {
                    g.offsets.get(topic).into_iter().flat_map(move |ps| {
                        ps.keys().map(move |p| (g.id.clone(), topic.to_owned(), *p))
                    })
                })
                .collect()
        };
        self.delete_offsets(keys, "topic deleted", true).await;
    }

    /// DeleteGroups: an Empty group's offsets and metadata are removed (tombstones, durable).
    pub async fn delete_groups(
        &self,
        req: DeleteGroupsRequest,
        _version: i16,
    ) -> DeleteGroupsResponse {
        let mut results = Vec::with_capacity(req.groups_names.len());
        for name in &req.groups_names {
            let code = self.delete_group(name.as_str()).await;
            results.push(
                DeletableGroupResult::default()
                    .with_group_id(name.clone())
                    .with_error_code(code),
            );
        }
        DeleteGroupsResponse::default().with_results(results)
    }

    /// Offset retention and group cleanup: expired offsets are tombstoned, then Empty groups
    /// with no offsets left are removed. The timer driver runs it every
    /// `OFFSETS_RETENTION_CHECK_INTERVAL_MS`.
    pub async fn expire_offsets(&self) {
        let now = self.clock.now_ms();
        let keys: Vec<OffsetKey> = {
            let inner = self.inner.borrow();
            inner
                .groups
                .values()
                .flat_map(|g| expired_offsets(g, now))
                .collect()
        };
        if !keys.is_empty() {
            tracing::info!(count = keys.len(), "expiring committed offsets");
            self.delete_offsets(keys, "offsets expired", false).await;
        }
        let idle: Vec<String> = {
            let inner = self.inner.borrow();
            inner
                .groups
                .values()
                .filter(|g| is_removable(g))
                .map(|g| g.id.clone())
                .collect()
        };
        if idle.is_empty() {
            return;
        }
        let records: Vec<_> = idle.iter().map(|id| (codec::group_key(id), None)).collect();
        if let Err(e) = self
            .append(codec::build_batch(&records, now as i64), records.len())
            .await
        {
            tracing::warn!(error = %e, "group tombstones not stored; groups kept");
            return;
        }
        let mut inner = self.inner.borrow_mut();
        for id in idle {
            if inner.groups.get(&id).is_some_and(is_removable) {
                inner.groups.remove(&id);
            }
        }
    }

    async fn delete_group(&self, group_id: &str) -> i16 {
        let keys: Vec<OffsetKey> = {
            let inner = self.inner.borrow();
            if group_id.is_empty() || group_id.len() > MAX_GROUP_ID_BYTES {
                return INVALID_GROUP_ID;
            }
            let Some(group) = inner.groups.get(group_id) else {
                return GROUP_ID_NOT_FOUND;
            };
            if group.state != GroupState::Empty || !group.members.is_empty() {
                return NON_EMPTY_GROUP;
            }
            group
                .offsets
                .iter()
                .flat_map(|(t, ps)| ps.keys().map(move |p| (group_id.to_owned(), t.clone(), *p)))
                .collect()
        };
        let now = self.clock.now_ms();
        let mut records: Vec<_> = keys
            .iter()
            .map(|(g, t, p)| (codec::offset_key(g, t, *p), None))
            .collect();
        records.push((codec::group_key(group_id), None));
        if let Err(e) = self
            .append(codec::build_batch(&records, now as i64), records.len())
            .await
        {
            tracing::warn!(group = %group_id, error = %e, "group deletion not stored");
            return COORDINATOR_NOT_AVAILABLE;
        }
        let mut inner = self.inner.borrow_mut();
        // A member may have joined while the tombstones were written: keep the group then.
        match inner.groups.get(group_id) {
            Some(g) if g.members.is_empty() => {
                inner.groups.remove(group_id);
                NONE
            }
            Some(_) => NON_EMPTY_GROUP,
            None => NONE,
        }
    }

    /// Tombstones `keys`, then removes them from memory unless a later commit replaced them.
    async fn delete_offsets(
        &self,
        keys: Vec<OffsetKey>,
        why: &'static str,
        clear_on_failure: bool,
    ) {
        if keys.is_empty() {
            return;
        }
        let now = self.clock.now_ms();
        let records: Vec<_> = keys
            .iter()
            .map(|(g, t, p)| (codec::offset_key(g, t, *p), None))
            .collect();
        let seq = self.next_write_seq();
        let stored = self
            .append(codec::build_batch(&records, now as i64), records.len())
            .await;
        if let Err(e) = &stored {
            tracing::warn!(reason = why, error = %e, "offset tombstones not stored");
            if !clear_on_failure {
                return;
            }
        }
        let mut inner = self.inner.borrow_mut();
        for (group_id, topic, partition) in keys {
            let Some(group) = inner.groups.get_mut(&group_id) else {
                continue;
            };
            remove_offset_before(group, &topic, partition, seq);
        }
    }

    fn next_write_seq(&self) -> u64 {
        let mut inner = self.inner.borrow_mut();
        inner.write_seq += 1;
        inner.write_seq
    }

    /// Group-level checks of a commit (Kafka's rules for classic groups). May create the group
    /// for a simple (generation -1) commit.
    fn commit_check(&self, req: &OffsetCommitRequest, version: i16, now: u64) -> i16 {
        let group_id = req.group_id.as_str();
        if group_id.is_empty() || group_id.len() > MAX_GROUP_ID_BYTES {
            return INVALID_GROUP_ID;
        }
        let generation = req.generation_id_or_member_epoch;
        let member_id = req.member_id.as_str();
        let instance_id = req.group_instance_id.as_deref();
        let mut inner = self.inner.borrow_mut();
        if !inner.groups.contains_key(group_id) {
            if generation >= 0 {
                return if version >= GROUP_ID_NOT_FOUND_MIN_COMMIT_VERSION {
                    GROUP_ID_NOT_FOUND
                } else {
                    ILLEGAL_GENERATION
                };
            }
            if inner.groups.len() >= self.config.max_groups {
                tracing::warn!(group = %group_id, "group limit reached; commit refused");
                return COORDINATOR_NOT_AVAILABLE;
            }
            let group = Group::new(group_id, now, self.config.group_initial_rebalance_delay_ms);
            inner.groups.insert(group_id.to_owned(), group);
        }
        let Some(group) = inner.groups.get(group_id) else {
            return COORDINATOR_NOT_AVAILABLE;
        };
        match group.state {
            GroupState::Dead => return COORDINATOR_NOT_AVAILABLE,
            GroupState::Empty if generation < 0 => return NONE,
            _ => {}
        }
        if generation >= 0 || !member_id.is_empty() || instance_id.is_some() {
            if group.is_fenced(member_id, instance_id) {
                return FENCED_INSTANCE_ID;
            }
            if !group.members.contains_key(member_id) {
                return UNKNOWN_MEMBER_ID;
            }
            if generation != group.generation {
                return ILLEGAL_GENERATION;
            }
        } else if group.state != GroupState::Empty {
            // No member id and no generation: only allowed while nobody manages the group.
            return UNKNOWN_MEMBER_ID;
        }
        if group.state == GroupState::CompletingRebalance {
            return REBALANCE_IN_PROGRESS;
        }
        NONE
    }

    fn apply_commits(
        &self,
        group_id: &str,
        accepted: Vec<(String, i32, CommittedOffset)>,
        seq: u64,
    ) {
        let mut inner = self.inner.borrow_mut();
        let Some(group) = inner.groups.get_mut(group_id) else {
            // The group was deleted while the commit was written; replay will show the commit
            // after the deletion, so memory must hold it too.
            drop(inner);
            self.recreate_for_commit(group_id, accepted, seq);
            return;
        };
        for (topic, partition, mut offset) in accepted {
            offset.write_seq = seq;
            let slot = group.offsets.entry(topic).or_default();
            if slot.get(&partition).is_none_or(|old| old.write_seq < seq) {
                slot.insert(partition, offset);
            }
        }
    }

    fn recreate_for_commit(
        &self,
        group_id: &str,
        accepted: Vec<(String, i32, CommittedOffset)>,
        seq: u64,
    ) {
        let now = self.clock.now_ms();
        let mut inner = self.inner.borrow_mut();
        let group = inner.groups.entry(group_id.to_owned()).or_insert_with(|| {
            Group::new(group_id, now, self.config.group_initial_rebalance_delay_ms)
        });
        for (topic, partition, mut offset) in accepted {
            offset.write_seq = seq;
            group
                .offsets
                .entry(topic)
                .or_default()
                .insert(partition, offset);
        }
    }
}

impl Inner {
    /// Applies one record read back from the log (startup).
    pub(super) fn apply_replayed(&mut self, record: GroupRecord, now: u64, initial_delay_ms: u64) {
        let seq = self.write_seq;
        match record {
            GroupRecord::Offset {
                group,
                topic,
                partition,
                value: Some(v),
            } => {
                let g = self
                    .groups
                    .entry(group.clone())
                    .or_insert_with(|| Group::new(&group, now, initial_delay_ms));
                let offset = CommittedOffset {
                    offset: v.offset,
                    leader_epoch: v.leader_epoch,
                    metadata: v.metadata,
                    commit_timestamp_ms: u64::try_from(v.commit_timestamp_ms).unwrap_or(0),
                    expire_timestamp_ms: u64::try_from(v.expire_timestamp_ms).ok(),
                    write_seq: seq,
                };
                g.offsets
                    .entry(topic)
                    .or_default()
                    .insert(partition, offset);
            }
            GroupRecord::Offset {
                group,
                topic,
                partition,
                value: None,
            } => {
                if let Some(g) = self.groups.get_mut(&group) {
                    remove_offset_before(g, &topic, partition, u64::MAX);
                }
            }
            GroupRecord::Group {
                group,
                value: Some(v),
            } => {
                let g = self
                    .groups
                    .entry(group.clone())
                    .or_insert_with(|| Group::new(&group, now, initial_delay_ms));
                g.generation = v.generation;
                g.protocol_type = Some(v.protocol_type.clone());
                g.stored = Some(v);
            }
            GroupRecord::Group { group, value: None } => {
                if self
                    .groups
                    .get(&group)
                    .is_some_and(|g| g.offsets.is_empty())
                {
                    self.groups.remove(&group);
                }
            }
        }
    }
}

fn remove_offset_before(group: &mut Group, topic: &str, partition: i32, seq: u64) {
    let Some(partitions) = group.offsets.get_mut(topic) else {
        return;
    };
    if partitions
        .get(&partition)
        .is_some_and(|o| o.write_seq < seq)
    {
        partitions.remove(&partition);
    }
    if partitions.is_empty() {
        group.offsets.remove(topic);
    }
}

/// Offsets past their retention at `now`: per-commit expiry if the commit set one; else, for a
/// group that uses group management, only while Empty, counted from when it became Empty; for a
/// group that never did (simple commits), counted from the commit.
fn expired_offsets(group: &Group, now: u64) -> Vec<OffsetKey> {
    let managed = group.protocol_type.is_some();
    let empty = group.state == GroupState::Empty;
    let mut out = Vec::new();
    for (topic, partitions) in &group.offsets {
        for (partition, o) in partitions {
            let expired = match o.expire_timestamp_ms {
                Some(at) => now >= at,
                None if !managed => {
                    now >= o.commit_timestamp_ms.saturating_add(OFFSETS_RETENTION_MS)
                }
                None => empty && now >= group.empty_since_ms.saturating_add(OFFSETS_RETENTION_MS),
            };
            if expired {
                out.push((group.id.clone(), topic.clone(), *partition));
            }
        }
    }
    out
}

fn is_removable(group: &Group) -> bool {
    group.state == GroupState::Empty
        && group.members.is_empty()
        && group.pending_members.is_empty()
        && group.offsets.is_empty()
}

/// The committed offsets of one group for OffsetFetch (any version; the caller reshapes).
/// `topics` None = every committed partition.
fn fetch_group(
    inner: &Inner,
    group_id: &str,
    topics: Option<&[OffsetFetchRequestTopics]>,
    version: i16,
) -> Result<Vec<OffsetFetchResponseTopics>, i16> {
    if group_id.is_empty() || group_id.len() > MAX_GROUP_ID_BYTES {
        return Err(INVALID_GROUP_ID);
    }
    let group = inner.groups.get(group_id);
    let partition = |topic: &str, index: i32| {
        let found = group
            .and_then(|g| g.offsets.get(topic))
            .and_then(|ps| ps.get(&index));
        let mut p = OffsetFetchResponsePartitions::default()
            .with_partition_index(index)
            .with_committed_offset(found.map_or(-1, |o| o.offset))
            .with_metadata(Some(StrBytes::from_string(
                found.and_then(|o| o.metadata.clone()).unwrap_or_default(),
            )));
        if version >= 5 {
            p.committed_leader_epoch = found.map_or(-1, |o| o.leader_epoch);
        }
        p
    };
    let out = match topics {
        Some(wanted) => wanted
            .iter()
            .map(|t| {
                let ps = t
                    .partition_indexes
                    .iter()
                    .map(|i| partition(t.name.as_str(), *i))
                    .collect();
                OffsetFetchResponseTopics::default()
                    .with_name(t.name.clone())
                    .with_partitions(ps)
            })
            .collect(),
        None => group
            .map(|g| {
                g.offsets
                    .iter()
                    .map(|(topic, ps)| {
                        let ps = ps.keys().map(|i| partition(topic, *i)).collect();
                        OffsetFetchResponseTopics::default()
                            .with_name(TopicName(StrBytes::from_string(topic.clone())))
                            .with_partitions(ps)
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    Ok(out)
}

fn commit_response(req: &OffsetCommitRequest, codes: Vec<Vec<i16>>) -> OffsetCommitResponse {
    let topics = req
        .topics
        .iter()
        .zip(codes)
        .map(|(t, codes)| {
            let partitions = t
                .partitions
                .iter()
                .zip(codes)
                .map(|(p, code)| {
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}
