//! A consumer-group member: FindCoordinator, JoinGroup (with the member-id handshake of
//! JoinGroup v4+), SyncGroup with a range assignor run by the leader, Heartbeat, LeaveGroup.
//!
//! ```text
//!  FindCoordinator ─► JoinGroup ──(MEMBER_ID_REQUIRED: retry with the given id)──► JoinGroup
//!     leader: range-assign the topic's partitions over the members ─► SyncGroup(assignments)
//!     others: SyncGroup() ─► own assignment
//!  Heartbeat every few seconds; REBALANCE_IN_PROGRESS ─► join again
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, FindCoordinatorRequest, GroupId,
    HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::cluster::topic_name;
use super::conn::{with_timeout, ClientError, Conn};
use crate::config::MAX_PARTITIONS;

/// Session timeout asked for; heartbeats go at a third of it.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeat period.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// How long a JoinGroup may take (the coordinator holds it until the group is complete).
const REBALANCE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most members a leader accepts in a JoinGroup response.
const MAX_MEMBERS: usize = 4096;
const PROTOCOL_TYPE: &str = "consumer";
const ASSIGNOR: &str = "range";
/// Version of the embedded consumer protocol (subscription and assignment) we write.
const CONSUMER_PROTOCOL_VERSION: i16 = 0;

const MEMBER_ID_REQUIRED: i16 = 79;
const REBALANCE_IN_PROGRESS: i16 = 27;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const UNKNOWN_MEMBER_ID: i16 = 25;
const ILLEGAL_GENERATION: i16 = 22;
/// Pause before retrying a coordinator that is still loading.
const COORDINATOR_RETRY: Duration = Duration::from_millis(100);

/// What a heartbeat says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    Steady,
    /// The group is rebalancing (or forgot us): join again.
    Rejoin,
}

/// One member of a consumer group, connected to its coordinator.
pub struct Member {
    conn: Conn,
    group: String,
    topic: String,
    partitions: i32,
    member_id: String,
    generation: i32,
}

impl Member {
    /// Finds the coordinator via `bootstrap_conn` and joins; returns the member and its
    /// assigned partitions.
    pub async fn join(
        bootstrap_conn: &mut Conn,
        group: &str,
        topic: &str,
        partitions: i32,
        timeout: Duration,
    ) -> Result<(Member, Vec<i32>), ClientError> {
        let addr = find_coordinator(bootstrap_conn, group, timeout).await?;
        let conn = Conn::connect(&addr, timeout).await?;
        let mut m = Member {
            conn,
            group: group.to_owned(),
            topic: topic.to_owned(),
            partitions,
            member_id: String::new(),
            generation: -1,
        };
        let assigned = m.rejoin().await?;
        Ok((m, assigned))
    }

    /// JoinGroup then SyncGroup; returns the partitions assigned to this member.
    pub async fn rejoin(&mut self) -> Result<Vec<i32>, ClientError> {
        let join_wait = REBALANCE_TIMEOUT + SESSION_TIMEOUT;
        loop {
            let req = JoinGroupRequest::default()
                .with_group_id(group_id(&self.group))
                .with_session_timeout_ms(SESSION_TIMEOUT.as_millis() as i32)
                .with_rebalance_timeout_ms(REBALANCE_TIMEOUT.as_millis() as i32)
                .with_member_id(StrBytes::from_string(self.member_id.clone()))
                .with_protocol_type(StrBytes::from_static_str(PROTOCOL_TYPE))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str(ASSIGNOR))
                    .with_metadata(subscription(&self.topic)?)]);
            let resp = with_timeout(join_wait, "JoinGroup", self.conn.call(&req)).await?;
            match resp.error_code {
                0 => {}
                MEMBER_ID_REQUIRED | UNKNOWN_MEMBER_ID | ILLEGAL_GENERATION => {
                    self.member_id = if resp.error_code == MEMBER_ID_REQUIRED {
                        resp.member_id.to_string()
                    } else {
                        String::new()
                    };
                    continue;
                }
                REBALANCE_IN_PROGRESS => continue,
                code => {
                    return Err(ClientError::broker(
                        format!("joining group `{}`", self.group),
                        code,
                    ))
                }
            }
            self.member_id = resp.member_id.to_string();
            self.generation = resp.generation_id;
            let assignments = if resp.leader == resp.member_id {
                if resp.members.len() > MAX_MEMBERS {
                    return Err(ClientError::Metadata(format!(
                        "{} group members (limit {MAX_MEMBERS})",
                        resp.members.len()
                    )));
                }
                let members: Vec<String> = resp
                    .members
                    .iter()
                    .map(|m| m.member_id.to_string())
                    .collect();
                range_assign(&members, self.partitions)
                    .into_iter()
                    .map(|(member, parts)| {
                        Ok(SyncGroupRequestAssignment::default()
                            .with_member_id(StrBytes::from_string(member))
                            .with_assignment(assignment(&self.topic, &parts)?))
                    })
                    .collect::<Result<Vec<_>, ClientError>>()?
            } else {
                Vec::new()
            };
            let sync = SyncGroupRequest::default()
                .with_group_id(group_id(&self.group))
                .with_generation_id(self.generation)
                .with_member_id(StrBytes::from_string(self.member_id.clone()))
                .with_protocol_type(Some(StrBytes::from_static_str(PROTOCOL_TYPE)))
                .with_protocol_name(Some(StrBytes::from_static_str(ASSIGNOR)))
                .with_assignments(assignments);
            let resp = with_timeout(join_wait, "SyncGroup", self.conn.call(&sync)).await?;
            match resp.error_code {
                0 => return decode_assignment(&resp.assignment, &self.topic),
                REBALANCE_IN_PROGRESS | ILLEGAL_GENERATION | UNKNOWN_MEMBER_ID => continue,
                code => {
                    return Err(ClientError::broker(
                        format!("syncing group `{}`", self.group),
                        code,
                    ))
                }
            }
        }
    }

    pub async fn heartbeat(&mut self, timeout: Duration) -> Result<Beat, ClientError> {
        let req = HeartbeatRequest::default()
            .with_group_id(group_id(&self.group))
            .with_generation_id(self.generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()));
        let resp = with_timeout(timeout, "Heartbeat", self.conn.call(&req)).await?;
        match resp.error_code {
            0 => Ok(Beat::Steady),
            REBALANCE_IN_PROGRESS | ILLEGAL_GENERATION | UNKNOWN_MEMBER_ID => Ok(Beat::Rejoin),
            code => Err(ClientError::broker(
                format!("heartbeat in group `{}`", self.group),
                code,
            )),
        }
    }

    pub async fn leave(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let req = LeaveGroupRequest::default()
            .with_group_id(group_id(&self.group))
            .with_member_id(StrBytes::from_string(self.member_id.clone()));
        let resp = with_timeout(timeout, "LeaveGroup", self.conn.call(&req)).await?;
        match resp.error_code {
            0 | UNKNOWN_MEMBER_ID => Ok(()),
            code => Err(ClientError::broker(
                format!("leaving group `{}`", self.group),
                code,
            )),
        }
    }
}

async fn find_coordinator(
    conn: &mut Conn,
    group: &str,
    timeout: Duration,
) -> Result<String, ClientError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let req = FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(group.to_owned()))
            .with_key_type(0);
        let resp = conn.call(&req).await?;
        match resp.error_code {
            0 => return Ok(format!("{}:{}", resp.host.as_str(), resp.port)),
            COORDINATOR_NOT_AVAILABLE | COORDINATOR_LOAD_IN_PROGRESS
                if std::time::Instant::now() < deadline =>
            {
                glommio::timer::sleep(COORDINATOR_RETRY).await;
            }
            code => {
                return Err(ClientError::broker(
                    format!("finding the coordinator of `{group}`"),
                    code,
                ))
            }
        }
    }
}

/// The range assignor: members sorted by id; each gets a contiguous run of partitions, the
/// first `partitions % members` one more than the rest.
pub fn range_assign(members: &[String], partitions: i32) -> BTreeMap<String, Vec<i32>> {
    let mut sorted: Vec<&String> = members.iter().collect();
    sorted.sort();
    sorted.dedup();
    let n = sorted.len().max(1) as i32;
    let (per, extra) = (partitions / n, partitions % n);
    let mut next = 0;
    sorted
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let count = per + i32::from((i as i32) < extra);
            let parts: Vec<i32> = (next..next + count).collect();
            next += count;
            (m.clone(), parts)
        })
        .collect()
}

fn group_id(group: &str) -> GroupId {
    GroupId(StrBytes::from_string(group.to_owned()))
}

/// The embedded protocol bytes: a version prefix, then the message at that version.
fn versioned<M: Encodable>(msg: &M) -> Result<Bytes, ClientError> {
    let mut out = BytesMut::new();
    out.put_i16(CONSUMER_PROTOCOL_VERSION);
    msg.encode(&mut out, CONSUMER_PROTOCOL_VERSION)
        .map_err(|e| ClientError::Metadata(format!("encoding consumer protocol: {e}")))?;
    Ok(out.freeze())
}

fn subscription(topic: &str) -> Result<Bytes, ClientError> {
    versioned(
        &ConsumerProtocolSubscription::default()
            .with_topics(vec![StrBytes::from_string(topic.to_owned())]),
    )
}

fn assignment(topic: &str, partitions: &[i32]) -> Result<Bytes, ClientError> {
    versioned(
        &ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
            TopicPartition::default()
                .with_topic(topic_name(topic))
                .with_partitions(partitions.to_vec()),
        ]),
    )
}

/// This member's partitions of `topic` from a SyncGroup assignment (empty bytes: none).
pub fn decode_assignment(bytes: &Bytes, topic: &str) -> Result<Vec<i32>, ClientError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let bad = |why: String| ClientError::Metadata(format!("bad group assignment: {why}"));
    if bytes.len() < 2 {
        return Err(bad("shorter than its version".into()));
    }
    let version = i16::from_be_bytes([bytes[0], bytes[1]]).clamp(0, 3);
    let mut body = bytes.slice(2..);
    let a =
        ConsumerProtocolAssignment::decode(&mut body, version).map_err(|e| bad(e.to_string()))?;
    let mut parts: Vec<i32> = a
        .assigned_partitions
        .iter()
        .filter(|t| t.topic.0.as_str() == topic)
        .flat_map(|t| t.partitions.iter().copied())
        .filter(|p| (0..MAX_PARTITIONS).contains(p))
        .collect();
    parts.sort_unstable();
    parts.dedup();
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_assignor_splits_contiguously() {
        let members: Vec<String> = ["c", "a", "b"].iter().map(|s| s.to_string()).collect();
        let a = range_assign(&members, 7);
        assert_eq!(a["a"], vec![0, 1, 2]);
        assert_eq!(a["b"], vec![3, 4]);
        assert_eq!(a["c"], vec![5, 6]);
        let a = range_assign(&members, 2);
        assert_eq!((a["a"].len(), a["b"].len(), a["c"].len()), (1, 1, 0));
    }

    #[test]
    fn assignment_round_trips_and_garbage_is_an_error() {
        let bytes = assignment("t", &[3, 1]).unwrap();
        assert_eq!(decode_assignment(&bytes, "t").unwrap(), vec![1, 3]);
        assert_eq!(
            decode_assignment(&bytes, "other").unwrap(),
            Vec::<i32>::new()
        );
        assert!(
            decode_assignment(&Bytes::from_static(&[0, 0, 0xff, 0xff, 0xff, 0x7f]), "t").is_err()
        );
        assert!(decode_assignment(&Bytes::from_static(&[0]), "t").is_err());
        let sub = subscription("t").unwrap();
        assert_eq!(&sub[..2], &[0, 0]);
    }
}
