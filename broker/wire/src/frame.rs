//! Kafka framing: every request and response is a big-endian `i32` size followed by that many
//! bytes. Requests start with a header (api key, version, correlation id, client id, and tagged
//! fields in flexible versions); responses start with the correlation id (plus tagged fields in
//! flexible versions).
//!
//! Sizes come from the network, so [`frame_len`] checks them against the caller's named limit
//! before anything is allocated.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use thiserror::Error;

/// Bytes of the size prefix.
pub const SIZE_PREFIX_LEN: usize = 4;

/// Why a frame or header could not be decoded.
#[derive(Debug, Error)]
pub enum FrameError {
    #[error("frame size {len} is negative or above the limit of {max} bytes")]
    BadSize { len: i64, max: usize },
    #[error("frame of {0} bytes is too short for a request header")]
    ShortHeader(usize),
    #[error("unknown api key {0}")]
    UnknownApiKey(i16),
    #[error("malformed {what}: {source}")]
    Malformed {
        what: &'static str,
        #[source]
        source: anyhow::Error,
    },
}

/// Reads the size prefix and checks it against `max_frame_bytes`.
pub fn frame_len(
    prefix: [u8; SIZE_PREFIX_LEN],
    max_frame_bytes: usize,
) -> Result<usize, FrameError> {
    let len = i32::from_be_bytes(prefix);
    if len < 0 || len as usize > max_frame_bytes {
        return Err(FrameError::BadSize {
            len: i64::from(len),
            max: max_frame_bytes,
        });
    }
    Ok(len as usize)
}

/// The first eight bytes of every request, readable before the header's version is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

impl Preamble {
    pub fn peek(frame: &[u8]) -> Result<Preamble, FrameError> {
        if frame.len() < 8 {
            return Err(FrameError::ShortHeader(frame.len()));
        }
        Ok(Preamble {
            api_key: i16::from_be_bytes([frame[0], frame[1]]),
            api_version: i16::from_be_bytes([frame[2], frame[3]]),
            correlation_id: i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]),
        })
    }
}

/// Decodes the request header at the front of `frame`, leaving `frame` at the request body.
pub fn decode_request_header(frame: &mut Bytes) -> Result<(ApiKey, RequestHeader), FrameError> {
    let pre = Preamble::peek(frame)?;
    let key = ApiKey::try_from(pre.api_key).map_err(|_| FrameError::UnknownApiKey(pre.api_key))?;
    let header_version = key.request_header_version(pre.api_version);
    let header =
        RequestHeader::decode(frame, header_version).map_err(|source| FrameError::Malformed {
            what: "request header",
            source,
        })?;
    Ok((key, header))
}

/// Encodes a whole response frame: size prefix, response header, body.
pub fn encode_response<R: Encodable + HeaderVersion>(
    correlation_id: i32,
    api_version: i16,
    body: &R,
) -> anyhow::Result<BytesMut> {
    let mut out = BytesMut::with_capacity(64);
    out.put_i32(0); // size, patched below
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header.encode(&mut out, R::header_version(api_version))?;
    body.encode(&mut out, api_version)?;
    patch_size(&mut out);
    Ok(out)
}

/// Encodes a whole request frame: size prefix, request header, body.
pub fn encode_request<R: Request>(
    correlation_id: i32,
    client_id: &str,
    api_version: i16,
    body: &R,
) -> anyhow::Result<BytesMut> {
    let mut out = BytesMut::with_capacity(64);
    out.put_i32(0);
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(api_version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_string(client_id.to_owned())));
    header.encode(&mut out, R::header_version(api_version))?;
    body.encode(&mut out, api_version)?;
    patch_size(&mut out);
    Ok(out)
}

/// Decodes the response header at the front of `frame` (without its size prefix), leaving
/// `frame` at the body; returns the correlation id.
pub fn decode_response_header(
    frame: &mut Bytes,
    key: ApiKey,
    api_version: i16,
) -> Result<i32, FrameError> {
    let header = ResponseHeader::decode(frame, key.response_header_version(api_version)).map_err(
        |source| FrameError::Malformed {
            what: "response header",
            source,
        },
    )?;
    Ok(header.correlation_id)
}

/// Decodes a response body of type `R` (after [`decode_response_header`]).
pub fn decode_body<R: Decodable>(frame: &mut Bytes, api_version: i16) -> Result<R, FrameError> {
    let body = R::decode(frame, api_version).map_err(|source| FrameError::Malformed {
        what: "message body",
        source,
    })?;
    Ok(body)
}

/// Fills the size prefix of a frame built with a zero placeholder at its front.
pub fn patch_size(frame: &mut BytesMut) {
    let len = (frame.len() - SIZE_PREFIX_LEN) as i32;
    frame[..SIZE_PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
}

/// Skips the size prefix of a whole frame.
pub fn strip_size(frame: &mut Bytes) {
    frame.advance(SIZE_PREFIX_LEN);
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest, MetadataResponse};

    #[test]
    fn size_prefix_is_checked_against_the_limit() {
        assert_eq!(frame_len(100i32.to_be_bytes(), 100).unwrap(), 100);
        assert!(frame_len(101i32.to_be_bytes(), 100).is_err());
        assert!(frame_len((-1i32).to_be_bytes(), 100).is_err());
    }

    #[test]
    fn request_round_trips_through_header_decode() {
        for version in [0i16, 3, 4] {
            let req = ApiVersionsRequest::default();
            let mut frame = encode_request(7, "test", version, &req).unwrap().freeze();
            strip_size(&mut frame);
            let (key, header) = decode_request_header(&mut frame).unwrap();
            assert_eq!(key, ApiKey::ApiVersions);
            assert_eq!(
                (header.correlation_id, header.request_api_version),
                (7, version)
            );
            assert_eq!(header.client_id.as_deref(), Some("test"));
            let body = ApiVersionsRequest::decode(&mut frame, version).unwrap();
            assert_eq!(body, req);
        }
    }

    #[test]
    fn response_round_trips() {
        let resp = MetadataResponse::default().with_throttle_time_ms(5);
        let mut frame = encode_response(9, 12, &resp).unwrap().freeze();
        strip_size(&mut frame);
        let cid = decode_response_header(&mut frame, ApiKey::Metadata, 12).unwrap();
        assert_eq!(cid, 9);
        let body: MetadataResponse = decode_body(&mut frame, 12).unwrap();
        assert_eq!(body.throttle_time_ms, 5);
        let _ = MetadataRequest::default();
    }

    #[test]
    fn short_and_unknown_headers_are_errors() {
        let mut short = Bytes::from_static(&[0, 18, 0]);
        assert!(matches!(
            decode_request_header(&mut short),
            Err(FrameError::ShortHeader(3))
        ));
        let mut unknown = Bytes::from_static(&[0x7f, 0, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert!(matches!(
            decode_request_header(&mut unknown),
            Err(FrameError::UnknownApiKey(_))
        ));
    }
}
