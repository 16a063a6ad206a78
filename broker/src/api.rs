//! Request dispatch: one decoded request in, one encoded response frame (or none) out.

use crate::core::Core;
use crate::decode::{Decoded, Request};
use crate::errors;
use crate::versions::ADVERTISED;
use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::ApiVersionsResponse;
use kafka_protocol::protocol::{Encodable, HeaderVersion};
use ringmq_wire::fetch::{encode_fetch_response, Chunks};
use ringmq_wire::frame::encode_response;
use std::rc::Rc;

/// Who sent the request (for the group coordinator and logs).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub id: u64,
    pub peer: std::net::SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot encode {api}: {source}")]
    Encode {
        api: &'static str,
        source: anyhow::Error,
    },
    #[error("{0}")]
    Refused(String),
}

/// Handles one request. `Ok(None)`: no response is due (Produce with acks=0).
pub async fn handle(
    core: Rc<Core>,
    req: Decoded,
    conn: ConnInfo,
) -> Result<Option<Chunks>, ApiError> {
    let (cid, v) = (req.correlation_id, req.version);
    let span = tracing::debug_span!("request", conn = conn.id, api = ?req.api_key, v, cid);
    let _enter = span.enter();
    match req.body {
        Request::ApiVersions(_) => one(cid, v, &api_versions_response(errors::NONE), "ApiVersions"),
        Request::Metadata(r) => one(
            cid,
            v,
            &crate::admin::metadata(&core, r, v).await,
            "Metadata",
        ),
        Request::Produce(r) => match crate::produce::handle(&core, r, v).await {
            Some(resp) => one(cid, v, &resp, "Produce"),
            None => Ok(None),
        },
        Request::Fetch(r) => {
            let body = crate::fetch::handle(&core, r, v).await;
            Ok(Some(encode_fetch_response(cid, v, &body)))
        }
        Request::ListOffsets(r) => one(
            cid,
            v,
            &crate::offsets::handle(&core, r, v).await,
            "ListOffsets",
        ),
        Request::CreateTopics(r) => one(
            cid,
            v,
            &crate::admin::create_topics_api(&core, r, v).await,
            "CreateTopics",
        ),
        Request::DeleteTopics(r) => one(
            cid,
            v,
            &crate::admin::delete_topics(&core, r, v).await,
            "DeleteTopics",
        ),
        Request::CreatePartitions(r) => one(
            cid,
            v,
            &crate::admin::create_partitions(&core, r, v).await,
            "CreatePartitions",
        ),
        Request::DescribeConfigs(r) => one(
            cid,
            v,
            &crate::admin::describe_configs(&core, r, v),
            "DescribeConfigs",
        ),
        Request::AlterConfigs(r) => one(
            cid,
            v,
            &crate::alter_configs::alter_configs(&core, r, v).await,
            "AlterConfigs",
        ),
        Request::IncrementalAlterConfigs(r) => one(
            cid,
            v,
            &crate::alter_configs::incremental_alter_configs(&core, r, v).await,
            "IncrementalAlterConfigs",
        ),
        Request::DescribeCluster(r) => one(
            cid,
            v,
            &crate::admin::describe_cluster(&core, r, v),
            "DescribeCluster",
        ),
        Request::DeleteRecords(r) => one(
            cid,
            v,
            &crate::delete_records::handle(&core, r).await,
            "DeleteRecords",
        ),
        Request::InitProducerId(r) => one(
            cid,
            v,
            &crate::admin::init_producer_id(&core, r, v).await,
            "InitProducerId",
        ),
        group_request => {
            crate::groups::handle(&core, group_request, cid, v, &req.client_id, &conn).await
        }
    }
}

/// Encodes a single-buffer response frame.
pub fn one<R: Encodable + HeaderVersion>(
    correlation_id: i32,
    version: i16,
    body: &R,
    api: &'static str,
) -> Result<Option<Chunks>, ApiError> {
    let frame = encode_response(correlation_id, version, body)
        .map_err(|source| ApiError::Encode { api, source })?;
    Ok(Some(Chunks::one(frame.freeze())))
}

/// The ApiVersions body: every advertised API with its range.
pub fn api_versions_response(error_code: i16) -> ApiVersionsResponse {
    let keys = ADVERTISED
        .iter()
        .map(|&(key, min, max)| {
            ApiVersion::default()
                .with_api_key(key as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect();
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(keys)
}

/// The answer to an ApiVersions request of a version we do not know: error 35 and our ranges,
/// encoded as v0 so any client can read it (Kafka's KIP-511 behaviour).
pub fn unsupported_api_versions(correlation_id: i32) -> Bytes {
    let body = api_versions_response(errors::UNSUPPORTED_VERSION);
    encode_response(correlation_id, 0, &body)
        .map(|b| b.freeze())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::ApiKey;
    use ringmq_wire::frame::{decode_body, decode_response_header, strip_size};

    #[test]
    fn api_versions_v3_response_has_no_tagged_fields_and_a_v0_header() {
        let frame = one(11, 3, &api_versions_response(0), "ApiVersions")
            .unwrap()
            .unwrap()
            .to_vec()
            .map(Bytes::from)
            .unwrap();
        let mut f = frame.clone();
        strip_size(&mut f);
        // Header v0: correlation id only, then error_code straight away.
        assert_eq!(&f[..6], &[0, 0, 0, 11, 0, 0]);
        // The body ends with throttle_time_ms and an empty tagged-field section.
        assert_eq!(f[f.len() - 1], 0);
        let cid = decode_response_header(&mut f, ApiKey::ApiVersions, 3).unwrap();
        assert_eq!(cid, 11);
        let body: ApiVersionsResponse = decode_body(&mut f, 3).unwrap();
        let produce = body
            .api_keys
            .iter()
            .find(|k| k.api_key == ApiKey::Produce as i16)
            .unwrap();
        assert_eq!((produce.min_version, produce.max_version), (0, 11));
    }

    #[test]
    fn unknown_version_answer_is_v0_with_error_35() {
        let mut f = unsupported_api_versions(3);
        strip_size(&mut f);
        let cid = decode_response_header(&mut f, ApiKey::ApiVersions, 0).unwrap();
        let body: ApiVersionsResponse = decode_body(&mut f, 0).unwrap();
        assert_eq!((cid, body.error_code), (3, 35));
        assert_eq!(body.api_keys.len(), ADVERTISED.len());
    }
}
