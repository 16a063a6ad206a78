//! Consumer-group requests: routed to the core that owns the group (`group_core`) and handed
//! to that core's coordinator (`crate::group`, the groups engineer's module).
//!
//! - Single-group requests (JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit,
//!   OffsetFetch before v8) go whole to the owning core.
//! - Requests naming several groups (OffsetFetch v8+, DescribeGroups, DeleteGroups) are split per owning core
//!   and the answers merged back in request order.
//! - ListGroups asks every core and concatenates; FindCoordinator is answered here (one node).
//!
//! [`EngineGroupLog`] is the coordinator's durable log: an internal engine queue per core
//! ([`GROUP_QUEUE`]), appended with `Durability::Durable` and replayed from the queue's log
//! start at start-up before the core serves any request. The coordinator compacts it online
//! and moves that log start forward (`crate::group::compact`).

use crate::api::{one, ApiError, ConnInfo};
use crate::core::{current, futures_join_all, read_queue, Core};
use crate::decode::Request;
use crate::group::{group_core, GroupConfig, GroupCoordinator, GroupLog, GroupLogError};
use crate::metadata::GROUP_QUEUE;
use kafka_protocol::messages::*;
use ringmq_engine::{Durability, EngineError, Offset};
use ringmq_wire::fetch::Chunks;
use std::collections::HashMap;
use std::rc::Rc;

/// Groups one core may hold.
pub const MAX_GROUPS_PER_CORE: usize = 100_000;
/// Members one group may hold.
pub const MAX_MEMBERS_PER_GROUP: usize = 1000;

/// The coordinator type each core holds.
pub type Coordinator = GroupCoordinator<EngineGroupLog>;

/// The group log of the calling core: its engine shard's [`GROUP_QUEUE`].
pub struct EngineGroupLog;

impl GroupLog for EngineGroupLog {
    async fn append(&self, batch: bytes::Bytes) -> Result<u64, GroupLogError> {
        let core = current();
        core.store
            .append(GROUP_QUEUE, batch, Durability::Durable)
            .await
            .map(|a| a.base_offset.0)
            .map_err(log_error)
    }

    fn advance_start(&self, offset: u64) -> Result<u64, GroupLogError> {
        current()
            .store
            .advance_log_start(GROUP_QUEUE, Offset(offset))
            .map(|start| start.0)
            .map_err(log_error)
    }

    fn retained_bytes(&self) -> u64 {
        current().store.retained_log_bytes(GROUP_QUEUE)
    }
}

fn log_error(e: EngineError) -> GroupLogError {
    match e {
        EngineError::Poisoned { .. } => GroupLogError::Poisoned,
        EngineError::Closed => GroupLogError::Closed,
        e => GroupLogError::Io(std::io::Error::other(e.to_string())),
    }
}

/// Creates this core's coordinator and replays its group log (before any request).
pub async fn start(core: &Rc<Core>) -> Result<(), String> {
    let c = &core.config;
    let config = GroupConfig {
        group_min_session_timeout_ms: c.group_min_session_timeout_ms,
        group_max_session_timeout_ms: c.group_max_session_timeout_ms,
        group_initial_rebalance_delay_ms: c.group_initial_rebalance_delay_ms,
        max_groups: MAX_GROUPS_PER_CORE,
        max_members_per_group: MAX_MEMBERS_PER_GROUP,
        node_id: crate::admin::NODE_ID,
        host: core.advertised.0.clone(),
        port: core.advertised.1,
        compact_retained_bytes: crate::group::compact::retained_limit(c.segment_size_bytes),
    };
    let mut coordinator = GroupCoordinator::new(config, EngineGroupLog);
    let batches = read_queue(&core.store, GROUP_QUEUE)
        .await
        .map_err(|e| e.to_string())?;
    let n = batches.len();
    for batch in batches {
        coordinator.replay(&batch).map_err(|e| e.to_string())?;
    }
    let coordinator = Rc::new(coordinator);
    coordinator.start();
    tracing::info!(
        core = core.id,
        batches = n,
        groups = coordinator.group_count(),
        "group log replayed"
    );
    *core.groups.borrow_mut() = Some(coordinator);
    Ok(())
}

fn coordinator() -> Rc<Coordinator> {
    current()
        .groups
        .borrow()
        .clone()
        .expect("the coordinator is created before the core serves")
}

pub async fn handle(
    core: &Rc<Core>,
    req: Request,
    cid: i32,
    v: i16,
    client_id: &str,
    conn: &ConnInfo,
) -> Result<Option<Chunks>, ApiError> {
    let cores = core.cores();
    let mesh = core.mesh.clone();
    let gone =
        |e: crate::mesh::MeshError| ApiError::Refused(format!("group core unreachable: {e}"));
    match req {
        Request::FindCoordinator(r) => one(
            cid,
            v,
            &coordinator().find_coordinator(r, v),
            "FindCoordinator",
        ),
        Request::JoinGroup(r) => {
            let owner = group_core(r.group_id.as_str(), cores);
            let (client_id, host) = (client_id.to_owned(), conn.peer.ip().to_string());
            let resp = mesh
                .call(owner, move || async move {
                    coordinator().join_group(r, v, &client_id, &host).await
                })
                .await
                .map_err(gone)?;
            one(cid, v, &resp, "JoinGroup")
        }
        Request::SyncGroup(r) => {
            let owner = group_core(r.group_id.as_str(), cores);
            let resp = mesh
                .call(owner, move || async move {
                    coordinator().sync_group(r, v).await
                })
                .await
                .map_err(gone)?;
            one(cid, v, &resp, "SyncGroup")
        }
        Request::Heartbeat(r) => {
            let owner = group_core(r.group_id.as_str(), cores);
            let resp = mesh
                .call(owner, move || async move { coordinator().heartbeat(r, v) })
                .await
                .map_err(gone)?;
            one(cid, v, &resp, "Heartbeat")
        }
        Request::LeaveGroup(r) => {
            let owner = group_core(r.group_id.as_str(), cores);
            let resp = mesh
                .call(owner, move || async move {
                    coordinator().leave_group(r, v).await
                })
                .await
                .map_err(gone)?;
            one(cid, v, &resp, "LeaveGroup")
        }
        Request::OffsetCommit(r) => {
            let owner = group_core(r.group_id.as_str(), cores);
            let resp = mesh
                .call(owner, move || async move {
                    let meta = current().meta();
                    let exists =
                        move |topic: &str, partition: i32| meta.place(topic, partition).is_some();
                    coordinator().offset_commit(r, v, &exists).await
                })
                .await
                .map_err(gone)?;
            one(cid, v, &resp, "OffsetCommit")
        }
        Request::OffsetFetch(r) => one(
            cid,
            v,
            &offset_fetch(core, r, v).await.map_err(gone)?,
            "OffsetFetch",
        ),
        Request::DescribeGroups(r) => one(
            cid,
            v,
            &describe_groups(core, r, v).await.map_err(gone)?,
            "DescribeGroups",
        ),
        Request::ListGroups(r) => {
            let calls = (0..cores).map(|c| {
                let r = r.clone();
                mesh.call(c, move || async move { coordinator().list_groups(r, v) })
            });
            let mut merged = ListGroupsResponse::default();
            for resp in futures_join_all(calls).await {
                let resp = resp.map_err(gone)?;
                if merged.error_code == 0 {
                    merged.error_code = resp.error_code;
                }
                merged.groups.extend(resp.groups);
            }
            one(cid, v, &merged, "ListGroups")
        }
        Request::DeleteGroups(r) => {
            let order = r.groups_names.clone();
            let mut per_core: HashMap<usize, Vec<GroupId>> = HashMap::new();
            for g in &r.groups_names {
                per_core
                    .entry(group_core(g.as_str(), cores))
                    .or_default()
                    .push(g.clone());
            }
            let calls = per_core.into_iter().map(|(owner, groups)| {
                let sub = r.clone().with_groups_names(groups);
                mesh.call(owner, move || async move {
                    coordinator().delete_groups(sub, v).await
                })
            });
            let mut by_id = HashMap::new();
            for resp in futures_join_all(calls).await {
                for g in resp.map_err(gone)?.results {
                    by_id.insert(g.group_id.clone(), g);
                }
            }
            let results = order.iter().filter_map(|id| by_id.remove(id)).collect();
            one(
                cid,
                v,
                &DeleteGroupsResponse::default().with_results(results),
                "DeleteGroups",
            )
        }
        other => Err(ApiError::Refused(format!("not a group request: {other:?}"))),
    }
}

/// OffsetFetch: whole to the owner before v8; v8+ batches groups, split per owning core.
async fn offset_fetch(
    core: &Rc<Core>,
    r: OffsetFetchRequest,
    v: i16,
) -> Result<OffsetFetchResponse, crate::mesh::MeshError> {
    let cores = core.cores();
    if v < 8 {
        let owner = group_core(r.group_id.as_str(), cores);
        return core
            .mesh
            .call(
                owner,
                move || async move { coordinator().offset_fetch(r, v) },
            )
            .await;
    }
    let order: Vec<GroupId> = r.groups.iter().map(|g| g.group_id.clone()).collect();
    let mut per_core: HashMap<usize, Vec<offset_fetch_request::OffsetFetchRequestGroup>> =
        HashMap::new();
    for g in r.groups.iter().cloned() {
        per_core
            .entry(group_core(g.group_id.as_str(), cores))
            .or_default()
            .push(g);
    }
    let calls = per_core.into_iter().map(|(owner, groups)| {
        let sub = r.clone().with_groups(groups);
        core.mesh.call(
            owner,
            move || async move { coordinator().offset_fetch(sub, v) },
        )
    });
    let mut by_id: HashMap<GroupId, offset_fetch_response::OffsetFetchResponseGroup> =
        HashMap::new();
    for resp in futures_join_all(calls).await {
        for g in resp?.groups {
            by_id.insert(g.group_id.clone(), g);
        }
    }
    let groups = order
        .into_iter()
        .filter_map(|id| by_id.remove(&id))
        .collect();
    Ok(OffsetFetchResponse::default().with_groups(groups))
}

/// DescribeGroups: split per owning core, answers merged in request order.
async fn describe_groups(
    core: &Rc<Core>,
    r: DescribeGroupsRequest,
    v: i16,
) -> Result<DescribeGroupsResponse, crate::mesh::MeshError> {
    let cores = core.cores();
    let mut per_core: HashMap<usize, Vec<GroupId>> = HashMap::new();
    for g in &r.groups {
        per_core
            .entry(group_core(g.as_str(), cores))
            .or_default()
            .push(g.clone());
    }
    let calls = per_core.into_iter().map(|(owner, groups)| {
        let sub = r.clone().with_groups(groups);
        core.mesh.call(owner, move || async move {
            coordinator().describe_groups(sub, v)
        })
    });
    let mut by_id: HashMap<GroupId, describe_groups_response::DescribedGroup> = HashMap::new();
    for resp in futures_join_all(calls).await {
        for g in resp?.groups {
            by_id.insert(g.group_id.clone(), g);
        }
    }
    let groups = r.groups.iter().filter_map(|id| by_id.remove(id)).collect();
    Ok(DescribeGroupsResponse::default().with_groups(groups))
}

/// Tells every core's coordinator that topics are gone (their committed offsets go too).
pub async fn topics_deleted(core: &Rc<Core>, names: Vec<String>) {
    if names.is_empty() {
        return;
    }
    let calls = (0..core.cores()).map(|c| {
        let names = names.clone();
        core.mesh.call(c, move || async move {
            let coord = coordinator();
            for n in &names {
                coord.topic_deleted(n).await;
            }
        })
    });
    for r in futures_join_all(calls).await {
        if let Err(e) = r {
            tracing::warn!("topic deletion not delivered to a group coordinator: {e}");
        }
    }
}
