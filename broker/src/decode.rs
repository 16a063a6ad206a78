//! Turns one request frame (without its size prefix) into a decoded request.
//!
//! This is the function the fuzz target drives. Its defences, in order:
//! 1. the frame length was already checked against `--max-frame-bytes` before the frame was
//!    read (see `conn.rs`);
//! 2. the API key and version are checked against the advertised table before anything is
//!    decoded, so only code paths we serve see input;
//! 3. the body decode runs under `catch_unwind`: a panic inside the codec becomes a
//!    [`DecodeError::Panicked`], never a dead executor;
//! 4. kafka-protocol pre-allocates `Vec::with_capacity(n)` from untrusted array lengths; the
//!    binary installs [`crate::alloc::LazyHugeAlloc`] so such a request costs address space,
//!    not memory, and fails to decode instead of aborting the process;
//! 5. trailing bytes after the last known field are ignored, as Kafka does.

use crate::versions::{is_advertised, PRODUCE_MIN_ACCEPTED};
use bytes::{Buf, Bytes};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::Decodable;
use ringmq_wire::frame::{decode_request_header, FrameError, Preamble};
use std::panic::{catch_unwind, AssertUnwindSafe};
use thiserror::Error;

/// A decoded request: header fields and body.
#[derive(Debug)]
pub struct Decoded {
    pub api_key: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
    pub client_id: String,
    pub body: Request,
}

/// Every request body ringmq serves.
#[derive(Debug)]
pub enum Request {
    ApiVersions(ApiVersionsRequest),
    Metadata(MetadataRequest),
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    CreatePartitions(CreatePartitionsRequest),
    DescribeConfigs(DescribeConfigsRequest),
    AlterConfigs(AlterConfigsRequest),
    IncrementalAlterConfigs(IncrementalAlterConfigsRequest),
    DescribeCluster(DescribeClusterRequest),
    InitProducerId(InitProducerIdRequest),
    FindCoordinator(FindCoordinatorRequest),
    JoinGroup(JoinGroupRequest),
    SyncGroup(SyncGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    ListGroups(ListGroupsRequest),
    DescribeGroups(DescribeGroupsRequest),
    DeleteGroups(DeleteGroupsRequest),
    DeleteRecords(DeleteRecordsRequest),
}

/// Why a frame is not a request we serve.
#[derive(Debug, Error)]
pub enum DecodeError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A known API at a version outside the advertised range. For ApiVersions the broker
    /// answers error 35 with its ranges; for the others it closes the connection.
    #[error("unsupported version {version} of {api_key:?}")]
    UnsupportedVersion {
        api_key: ApiKey,
        version: i16,
        correlation_id: i32,
    },
    #[error("api {0:?} is not served")]
    UnsupportedApi(ApiKey),
    #[error("produce v{0} (message format < 2) is not supported")]
    ObsoleteProduce(i16),
    #[error("malformed {api_key:?} v{version} body: {source}")]
    Malformed {
        api_key: ApiKey,
        version: i16,
        #[source]
        source: anyhow::Error,
    },
    #[error("decoder panicked on {api_key:?} v{version}")]
    Panicked { api_key: ApiKey, version: i16 },
}

/// Decodes one frame (size prefix already stripped). Never panics.
pub fn decode_request(frame: Bytes) -> Result<Decoded, DecodeError> {
    let pre = Preamble::peek(&frame)?;
    let api_key =
        ApiKey::try_from(pre.api_key).map_err(|_| FrameError::UnknownApiKey(pre.api_key))?;
    let version = pre.api_version;
    if !is_advertised(api_key, version) {
        if crate::versions::advertised(api_key).is_none() {
            return Err(DecodeError::UnsupportedApi(api_key));
        }
        return Err(DecodeError::UnsupportedVersion {
            api_key,
            version,
            correlation_id: pre.correlation_id,
        });
    }
    if api_key == ApiKey::Produce && version < PRODUCE_MIN_ACCEPTED {
        return Err(DecodeError::ObsoleteProduce(version));
    }
    let mut frame = frame;
    let outcome = catch_unwind(AssertUnwindSafe(move || -> Result<Decoded, DecodeError> {
        let (_, header) = decode_request_header(&mut frame)?;
        let body =
            decode_body(api_key, version, &mut frame).map_err(|source| DecodeError::Malformed {
                api_key,
                version,
                source,
            })?;
        if frame.has_remaining() {
            // Kafka ignores bytes after the last field it knows (librdkafka 2.x sends some on
            // Metadata v12); so do we.
            tracing::debug!(
                ?api_key,
                version,
                trailing = frame.remaining(),
                "ignoring trailing bytes"
            );
        }
        let client_id = header.client_id.as_deref().unwrap_or("").to_owned();
        Ok(Decoded {
            api_key,
            version,
            correlation_id: header.correlation_id,
            client_id,
            body,
        })
    }));
    outcome.unwrap_or(Err(DecodeError::Panicked { api_key, version }))
}

fn decode_body(key: ApiKey, v: i16, b: &mut Bytes) -> anyhow::Result<Request> {
    Ok(match key {
        ApiKey::ApiVersions => Request::ApiVersions(ApiVersionsRequest::decode(b, v)?),
        ApiKey::Metadata => Request::Metadata(MetadataRequest::decode(b, v)?),
        ApiKey::Produce => Request::Produce(ProduceRequest::decode(b, v)?),
        ApiKey::Fetch => Request::Fetch(FetchRequest::decode(b, v)?),
        ApiKey::ListOffsets => Request::ListOffsets(ListOffsetsRequest::decode(b, v)?),
        ApiKey::CreateTopics => Request::CreateTopics(CreateTopicsRequest::decode(b, v)?),
        ApiKey::DeleteTopics => Request::DeleteTopics(DeleteTopicsRequest::decode(b, v)?),
        ApiKey::CreatePartitions => {
            Request::CreatePartitions(CreatePartitionsRequest::decode(b, v)?)
        }
        ApiKey::DescribeConfigs => Request::DescribeConfigs(DescribeConfigsRequest::decode(b, v)?),
        ApiKey::AlterConfigs => Request::AlterConfigs(AlterConfigsRequest::decode(b, v)?),
        ApiKey::IncrementalAlterConfigs => {
            Request::IncrementalAlterConfigs(IncrementalAlterConfigsRequest::decode(b, v)?)
        }
        ApiKey::DescribeCluster => Request::DescribeCluster(DescribeClusterRequest::decode(b, v)?),
        ApiKey::InitProducerId => Request::InitProducerId(InitProducerIdRequest::decode(b, v)?),
        ApiKey::FindCoordinator => Request::FindCoordinator(FindCoordinatorRequest::decode(b, v)?),
        ApiKey::JoinGroup => Request::JoinGroup(JoinGroupRequest::decode(b, v)?),
        ApiKey::SyncGroup => Request::SyncGroup(SyncGroupRequest::decode(b, v)?),
        ApiKey::Heartbeat => Request::Heartbeat(HeartbeatRequest::decode(b, v)?),
        ApiKey::LeaveGroup => Request::LeaveGroup(LeaveGroupRequest::decode(b, v)?),
        ApiKey::OffsetCommit => Request::OffsetCommit(OffsetCommitRequest::decode(b, v)?),
        ApiKey::OffsetFetch => Request::OffsetFetch(OffsetFetchRequest::decode(b, v)?),
        ApiKey::ListGroups => Request::ListGroups(ListGroupsRequest::decode(b, v)?),
        ApiKey::DescribeGroups => Request::DescribeGroups(DescribeGroupsRequest::decode(b, v)?),
        ApiKey::DeleteGroups => Request::DeleteGroups(DeleteGroupsRequest::decode(b, v)?),
        ApiKey::DeleteRecords => Request::DeleteRecords(DeleteRecordsRequest::decode(b, v)?),
        other => anyhow::bail!("api {other:?} is not served"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_wire::frame::{encode_request, strip_size};

    fn frame_of<R: kafka_protocol::protocol::Request>(version: i16, body: &R) -> Bytes {
        let mut f = encode_request(5, "tester", version, body).unwrap().freeze();
        strip_size(&mut f);
        f
    }

    #[test]
    fn decodes_a_metadata_request() {
        let d = decode_request(frame_of(9, &MetadataRequest::default())).unwrap();
        assert_eq!(
            (d.api_key, d.version, d.correlation_id),
            (ApiKey::Metadata, 9, 5)
        );
        assert_eq!(d.client_id, "tester");
        assert!(matches!(d.body, Request::Metadata(_)));
    }

    #[test]
    fn every_truncation_of_a_valid_request_is_an_error() {
        let f = frame_of(
            9,
            &MetadataRequest::default().with_topics(Some(vec![
                metadata_request::MetadataRequestTopic::default().with_name(Some(TopicName(
                    kafka_protocol::protocol::StrBytes::from_static_str("t"),
                ))),
            ])),
        );
        for cut in 0..f.len() {
            assert!(decode_request(f.slice(..cut)).is_err(), "cut {cut}");
        }
        let mut longer = f.to_vec();
        longer.extend_from_slice(&[0, 0, 0]);
        assert!(
            decode_request(Bytes::from(longer)).is_ok(),
            "trailing bytes are ignored, as Kafka does"
        );
    }

    #[test]
    fn versions_outside_the_table_are_refused_before_decoding() {
        let f = frame_of(3, &ApiVersionsRequest::default());
        let mut raw = f.to_vec();
        raw[2..4].copy_from_slice(&99i16.to_be_bytes());
        assert!(matches!(
            decode_request(Bytes::from(raw)),
            Err(DecodeError::UnsupportedVersion {
                api_key: ApiKey::ApiVersions,
                version: 99,
                correlation_id: 5
            })
        ));
        let mut produce_v2 = vec![0, 0, 0, 2, 0, 0, 0, 1];
        produce_v2.extend_from_slice(&[0xff, 0xff]);
        assert!(matches!(
            decode_request(Bytes::from(produce_v2)),
            Err(DecodeError::ObsoleteProduce(2))
        ));
        let sasl = vec![0, 17, 0, 1, 0, 0, 0, 1, 0, 0];
        assert!(matches!(
            decode_request(Bytes::from(sasl)),
            Err(DecodeError::UnsupportedApi(_))
        ));
    }
}
