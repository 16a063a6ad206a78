//! Cluster discovery and topic administration: Metadata (brokers, leader per partition, topic
//! id), CreateTopics, and ListOffsets.

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, ListOffsetsRequest, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::{Request, StrBytes};
use uuid::Uuid;

use super::conn::{ClientError, Conn};
use crate::config::MAX_PARTITIONS;

/// Kafka error codes this module reacts to.
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const LEADER_NOT_AVAILABLE: i16 = 5;
const TOPIC_ALREADY_EXISTS: i16 = 36;
/// Pause between metadata polls while a new topic gets its leaders.
const METADATA_RETRY: Duration = Duration::from_millis(50);

/// What the run needs to know about the cluster and its topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// Broker node id → `host:port`.
    pub brokers: BTreeMap<i32, String>,
    pub topic: String,
    pub topic_id: Uuid,
    /// Leader node id of each partition, indexed by partition.
    pub leaders: Vec<i32>,
}

impl Cluster {
    pub fn partitions(&self) -> i32 {
        self.leaders.len() as i32
    }

    /// Address of the leader of `partition`.
    pub fn leader_addr(&self, partition: i32) -> Result<&str, ClientError> {
        let leader = self.leaders.get(partition as usize).copied().unwrap_or(-1);
        self.brokers
            .get(&leader)
            .map(String::as_str)
            .ok_or_else(|| {
                ClientError::Metadata(format!("no leader address for partition {partition}"))
            })
    }

    /// Partitions grouped by leader address.
    pub fn by_leader(&self, partitions: &[i32]) -> Result<BTreeMap<String, Vec<i32>>, ClientError> {
        let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for &p in partitions {
            out.entry(self.leader_addr(p)?.to_owned())
                .or_default()
                .push(p);
        }
        Ok(out)
    }
}

/// Connects to the first reachable bootstrap address, creates the topic if asked, and waits
/// (up to `timeout`) until every partition has a leader.
pub async fn discover(
    bootstrap: &str,
    topic: &str,
    create: Option<(i32, i16)>,
    timeout: Duration,
) -> Result<Cluster, ClientError> {
    let mut conn = connect_any(bootstrap, timeout).await?;
    if let Some((partitions, replication)) = create {
        create_topic(&mut conn, topic, partitions, replication, timeout).await?;
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match metadata(&mut conn, topic).await {
            Ok(cluster) => return Ok(cluster),
            Err(ClientError::Broker { code, .. })
                if (code == LEADER_NOT_AVAILABLE
                    || code == UNKNOWN_TOPIC_OR_PARTITION && create.is_some())
                    && std::time::Instant::now() < deadline =>
            {
                glommio::timer::sleep(METADATA_RETRY).await;
            }
            Err(ClientError::Broker {
                code: UNKNOWN_TOPIC_OR_PARTITION,
                ..
            }) => {
                return Err(ClientError::Metadata(format!(
                    "topic `{topic}` does not exist on {} (pass --create-topic to create it)",
                    conn.addr()
                )))
            }
            Err(e) => return Err(e),
        }
    }
}

/// Tries each comma-separated bootstrap address in turn.
pub async fn connect_any(bootstrap: &str, timeout: Duration) -> Result<Conn, ClientError> {
    let mut last = ClientError::Metadata(format!("no bootstrap address in `{bootstrap}`"));
    for addr in bootstrap
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        match Conn::connect(addr, timeout).await {
            Ok(conn) => return Ok(conn),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// One Metadata request for `topic`; fails on topic or partition errors.
pub async fn metadata<S>(conn: &mut Conn<S>, topic: &str) -> Result<Cluster, ClientError>
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    let req = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name(topic)))
        ]))
        .with_allow_auto_topic_creation(false);
    let resp = conn.call(&req).await?;
    cluster_from(resp, topic)
}

/// Reads a Metadata response into a [`Cluster`].
pub fn cluster_from(resp: MetadataResponse, topic: &str) -> Result<Cluster, ClientError> {
    let brokers = resp
        .brokers
        .iter()
        .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
        .collect();
    let t = resp
        .topics
        .iter()
        .find(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some(topic))
        .ok_or_else(|| {
            ClientError::Metadata(format!(
                "topic `{topic}` missing from the metadata response"
            ))
        })?;
    if t.error_code != 0 {
        return Err(ClientError::broker(
            format!("metadata for `{topic}`"),
            t.error_code,
        ));
    }
    if t.partitions.is_empty() || t.partitions.len() > MAX_PARTITIONS as usize {
        return Err(ClientError::Metadata(format!(
            "topic `{topic}` has {} partitions (expected 1..={MAX_PARTITIONS})",
            t.partitions.len()
        )));
    }
    let mut leaders = vec![-1; t.partitions.len()];
    for p in &t.partitions {
        let slot = usize::try_from(p.partition_index)
            .ok()
            .and_then(|i| leaders.get_mut(i))
            .ok_or_else(|| {
                ClientError::Metadata(format!(
                    "partition index {} out of range",
                    p.partition_index
                ))
            })?;
        if p.error_code != 0 {
            return Err(ClientError::broker(
                format!("metadata for {topic}/{}", p.partition_index),
                p.error_code,
            ));
        }
        *slot = p.leader_id.0;
    }
    if leaders.iter().any(|&l| l < 0) {
        return Err(ClientError::broker(
            format!("leaders of `{topic}`"),
            LEADER_NOT_AVAILABLE,
        ));
    }
    Ok(Cluster {
        brokers,
        topic: topic.to_owned(),
        topic_id: t.topic_id,
        leaders,
    })
}

/// Creates `topic`; an existing topic is not an error.
pub async fn create_topic<S>(
    conn: &mut Conn<S>,
    topic: &str,
    partitions: i32,
    replication_factor: i16,
    timeout: Duration,
) -> Result<(), ClientError>
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    let req = CreateTopicsRequest::default()
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name(topic))
            .with_num_partitions(partitions)
            .with_replication_factor(replication_factor)])
        .with_timeout_ms(timeout.as_millis().min(i32::MAX as u128) as i32);
    let resp = conn.call(&req).await?;
    for t in &resp.topics {
        if t.error_code != 0 && t.error_code != TOPIC_ALREADY_EXISTS {
            return Err(ClientError::broker(
                format!("creating topic `{topic}`"),
                t.error_code,
            ));
        }
    }
    Ok(())
}

/// The offset at `timestamp` (-1 latest, -2 earliest) of each partition, in the given order.
pub async fn list_offsets<S>(
    conn: &mut Conn<S>,
    topic: &str,
    partitions: &[i32],
    timestamp: i64,
) -> Result<Vec<i64>, ClientError>
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    let parts = partitions
        .iter()
        .map(|&p| {
            ListOffsetsPartition::default()
                .with_partition_index(p)
                .with_timestamp(timestamp)
        })
        .collect();
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(parts)]);
    let resp = conn.call(&req).await?;
    let mut found: BTreeMap<i32, i64> = BTreeMap::new();
    for t in resp.topics.iter().filter(|t| t.name.0.as_str() == topic) {
        for p in &t.partitions {
            if p.error_code != 0 {
                return Err(ClientError::broker(
                    format!("list offsets {topic}/{}", p.partition_index),
                    p.error_code,
                ));
            }
            found.insert(p.partition_index, p.offset);
        }
    }
    partitions
        .iter()
        .map(|p| {
            found
                .get(p)
                .copied()
                .ok_or_else(|| ClientError::Metadata(format!("no offset returned for {topic}/{p}")))
        })
        .collect()
}

pub fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_owned()))
}

/// Asserts at compile time that the request types used here are requests.
const _: fn() = || {
    fn is_request<R: Request>() {}
    is_request::<MetadataRequest>();
    is_request::<CreateTopicsRequest>();
    is_request::<ListOffsetsRequest>();
};

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };

    fn response(partitions: &[(i32, i32, i16)]) -> MetadataResponse {
        let parts = partitions
            .iter()
            .map(|&(idx, leader, err)| {
                MetadataResponsePartition::default()
                    .with_partition_index(idx)
                    .with_leader_id(BrokerId(leader))
                    .with_error_code(err)
            })
            .collect();
        MetadataResponse::default()
            .with_brokers(vec![MetadataResponseBroker::default()
                .with_node_id(BrokerId(1))
                .with_host(StrBytes::from_static_str("127.0.0.1"))
                .with_port(9092)])
            .with_topics(vec![MetadataResponseTopic::default()
                .with_name(Some(topic_name("t")))
                .with_partitions(parts)])
    }

    #[test]
    fn leaders_are_indexed_by_partition() {
        let c = cluster_from(response(&[(1, 1, 0), (0, 1, 0)]), "t").unwrap();
        assert_eq!(c.leaders, vec![1, 1]);
        assert_eq!(c.leader_addr(1).unwrap(), "127.0.0.1:9092");
        assert_eq!(c.by_leader(&[0, 1]).unwrap().len(), 1);
    }

    #[test]
    fn bad_metadata_is_an_error_not_a_panic() {
        assert!(cluster_from(response(&[(5, 1, 0)]), "t").is_err()); // index out of range
        assert!(cluster_from(response(&[(0, -1, 0)]), "t").is_err()); // no leader
        assert!(matches!(
            cluster_from(response(&[(0, 1, LEADER_NOT_AVAILABLE)]), "t"),
            Err(ClientError::Broker {
                code: LEADER_NOT_AVAILABLE,
                ..
            })
        ));
        assert!(cluster_from(response(&[(0, 1, 0)]), "other").is_err());
    }
}
