//! One Kafka connection: size-prefixed frames, version negotiation, request/response calls.
//!
//! ```text
//!  connect ─► ApiVersions (v3, falls back to the broker's ApiVersions max on error 35)
//!          ─► Versions: per API, the highest version both sides support
//!          ─► call::<R>() … sequential request/response (control plane)
//!          ─► split() ─► writer half (pipelined produce) + reader half (responses in order)
//! ```
//!
//! Every size read from the broker is checked against [`MAX_RESPONSE_BYTES`] before a buffer
//! is allocated for it.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::protocol::{Decodable, Request, StrBytes};
use ringmq_wire::frame::{self, FrameError, SIZE_PREFIX_LEN};
use thiserror::Error;

use crate::config::MAX_FETCH_BYTES;

/// Largest response frame accepted: the biggest fetch asked for plus room for its framing.
pub const MAX_RESPONSE_BYTES: usize = MAX_FETCH_BYTES + (1 << 20);
/// Client id sent in every request header.
pub const CLIENT_ID: &str = "ringmq-loadgen";
/// The ApiVersions version tried first.
const API_VERSIONS_FIRST_TRY: i16 = 3;
/// Kafka's UNSUPPORTED_VERSION error code.
const UNSUPPORTED_VERSION: i16 = 35;

/// The versions this client can speak, per API: the fields it fills are right for all of them.
/// Produce and Fetch stop at 12: from 13 on they name topics by id only.
const OUR_VERSIONS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 12),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 9),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::FindCoordinator, 1, 3),
    (ApiKey::JoinGroup, 2, 7),
    (ApiKey::SyncGroup, 1, 5),
    (ApiKey::Heartbeat, 1, 4),
    (ApiKey::LeaveGroup, 1, 2),
];

/// Why a client operation failed.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connection to {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("connection to {addr} closed")]
    Closed { addr: String },
    #[error("bad frame from {addr}: {source}")]
    Frame { addr: String, source: FrameError },
    #[error("encoding a {api:?} v{version} request: {source}")]
    Encode {
        api: ApiKey,
        version: i16,
        source: anyhow::Error,
    },
    #[error("{addr} does not support {api:?} in a version we speak ({ours}; broker: {theirs})")]
    Unsupported {
        addr: String,
        api: ApiKey,
        ours: String,
        theirs: String,
    },
    #[error("{addr}: response correlation id {got}, expected {want}")]
    Correlation { addr: String, got: i32, want: i32 },
    #[error("{what}: broker error {code} ({name})")]
    Broker {
        what: String,
        code: i16,
        name: String,
    },
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("metadata: {0}")]
    Metadata(String),
}

impl ClientError {
    pub fn broker(what: impl Into<String>, code: i16) -> ClientError {
        let name = kafka_protocol::ResponseError::try_from_code(code)
            .map(|e| format!("{e:?}"))
            .unwrap_or_else(|| "unknown".into());
        ClientError::Broker {
            what: what.into(),
            code,
            name,
        }
    }
}

/// Runs `fut`, failing with [`ClientError::Timeout`] if it takes longer than `after`.
pub async fn with_timeout<T>(
    after: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    let timer = async {
        glommio::timer::sleep(after).await;
        Err(ClientError::Timeout {
            what: what.to_owned(),
            after,
        })
    };
    futures_lite::future::or(fut, timer).await
}

/// The version negotiated for each API both sides know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Versions {
    chosen: BTreeMap<i16, i16>,
    /// The broker's advertised ranges, for error messages.
    theirs: BTreeMap<i16, (i16, i16)>,
}

impl Versions {
    /// Picks, per API, the highest version in both our range and the broker's.
    pub fn negotiate(broker: &ApiVersionsResponse) -> Versions {
        let mut v = Versions::default();
        for api in &broker.api_keys {
            v.theirs
                .insert(api.api_key, (api.min_version, api.max_version));
        }
        for &(key, our_min, our_max) in OUR_VERSIONS {
            if let Some(&(min, max)) = v.theirs.get(&(key as i16)) {
                let hi = our_max.min(max);
                if hi >= our_min.max(min) {
                    v.chosen.insert(key as i16, hi);
                }
            }
        }
        v
    }

    /// The version to use for `api`, or why there is none.
    pub fn get(&self, api: ApiKey, addr: &str) -> Result<i16, ClientError> {
        if let Some(&v) = self.chosen.get(&(api as i16)) {
            return Ok(v);
        }
        let ours = OUR_VERSIONS
            .iter()
            .find(|(k, _, _)| *k == api)
            .map(|(_, lo, hi)| format!("{lo}..={hi}"))
            .unwrap_or_else(|| "none".into());
        let theirs = self
            .theirs
            .get(&(api as i16))
            .map(|(lo, hi)| format!("{lo}..={hi}"))
            .unwrap_or_else(|| "not offered".into());
        Err(ClientError::Unsupported {
            addr: addr.to_owned(),
            api,
            ours,
            theirs,
        })
    }
}

/// Bytes offered to each read beyond the rest of the frame being read, so that one read also
/// takes the frames queued behind it (produce responses arrive several at a time).
const READ_AHEAD_BYTES: usize = 4 << 10;

/// Reads size-prefixed frames from a stream with as few reads as it can: each read takes
/// whatever has arrived (several small frames, or as much of a large one as is there), and
/// frames are split off the buffer without copying. A length prefix is checked against
/// [`MAX_RESPONSE_BYTES`] before room is made for its frame. Room is zeroed once, when the
/// buffer grows, not at every read (a large fetch response comes in many reads).
#[derive(Debug, Default)]
pub struct FrameReader {
    /// `buf[..filled]` holds bytes read and not yet handed out; the rest is room for reads.
    buf: BytesMut,
    filled: usize,
}

impl FrameReader {
    /// The next frame (without its prefix).
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        addr: &str,
    ) -> Result<Bytes, ClientError> {
        loop {
            let missing = match self.frame_len(addr)? {
                Some(len) if self.filled >= SIZE_PREFIX_LEN + len => {
                    self.buf.advance(SIZE_PREFIX_LEN);
                    self.filled -= SIZE_PREFIX_LEN + len;
                    return Ok(self.buf.split_to(len).freeze());
                }
                Some(len) => SIZE_PREFIX_LEN + len - self.filled,
                None => SIZE_PREFIX_LEN - self.filled,
            };
            let want = self.filled + missing + READ_AHEAD_BYTES;
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
            match r.read(&mut self.buf[self.filled..]).await {
                Ok(0) if self.filled == 0 => {
                    return Err(ClientError::Closed {
                        addr: addr.to_owned(),
                    })
                }
                Ok(0) => {
                    return Err(ClientError::Io {
                        addr: addr.to_owned(),
                        source: std::io::ErrorKind::UnexpectedEof.into(),
                    })
                }
                Ok(n) => self.filled += n,
                Err(source) => {
                    return Err(ClientError::Io {
                        addr: addr.to_owned(),
                        source,
                    })
                }
            }
        }
    }

    /// The length of the frame at the front of the buffer, once its prefix is there.
    fn frame_len(&self, addr: &str) -> Result<Option<usize>, ClientError> {
        let Some(prefix) = self.buf[..self.filled].get(..SIZE_PREFIX_LEN) else {
            return Ok(None);
        };
        let mut p = [0u8; SIZE_PREFIX_LEN];
        p.copy_from_slice(prefix);
        frame::frame_len(p, MAX_RESPONSE_BYTES)
            .map(Some)
            .map_err(|source| ClientError::Frame {
                addr: addr.to_owned(),
                source,
            })
    }
}

/// Decodes a response frame of request type `R` at `version`, checking its correlation id.
pub fn decode_response<R: Request>(
    mut frame: Bytes,
    version: i16,
    want_cid: i32,
    addr: &str,
) -> Result<R::Response, ClientError> {
    let key = api_key::<R>();
    let cid = frame::decode_response_header(&mut frame, key, version).map_err(|source| {
        ClientError::Frame {
            addr: addr.to_owned(),
            source,
        }
    })?;
    if cid != want_cid {
        return Err(ClientError::Correlation {
            addr: addr.to_owned(),
            got: cid,
            want: want_cid,
        });
    }
    frame::decode_body::<R::Response>(&mut frame, version).map_err(|source| ClientError::Frame {
        addr: addr.to_owned(),
        source,
    })
}

/// The [`ApiKey`] of request type `R` (every generated request type has a valid key).
pub fn api_key<R: Request>() -> ApiKey {
    ApiKey::try_from(R::KEY).expect("kafka-protocol request types carry valid api keys")
}

/// One negotiated connection.
pub struct Conn<S = TcpStream> {
    stream: S,
    frames: FrameReader,
    addr: String,
    versions: Versions,
    next_cid: i32,
}

impl Conn<TcpStream> {
    /// Connects to `addr` and negotiates API versions, all within `timeout`.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Conn<TcpStream>, ClientError> {
        with_timeout(timeout, &format!("connecting to {addr}"), async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| ClientError::Connect {
                    addr: addr.to_owned(),
                    source: e.into(),
                })?;
            let _ = stream.set_nodelay(true);
            Conn::negotiate(stream, addr).await
        })
        .await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Sends ApiVersions over a fresh stream and records the negotiated versions.
    pub async fn negotiate(stream: S, addr: &str) -> Result<Conn<S>, ClientError> {
        let mut conn = Conn {
            stream,
            frames: FrameReader::default(),
            addr: addr.to_owned(),
            versions: Versions::default(),
            next_cid: 0,
        };
        let mut version = API_VERSIONS_FIRST_TRY;
        for _ in 0..2 {
            let resp = conn.api_versions(version).await?;
            if resp.error_code == UNSUPPORTED_VERSION {
                // The broker answers in v0 with its own ApiVersions range; retry at its max.
                let max = resp
                    .api_keys
                    .iter()
                    .find(|a| a.api_key == ApiKey::ApiVersions as i16);
                version = max
                    .map(|a| a.max_version.min(API_VERSIONS_FIRST_TRY))
                    .unwrap_or(0);
                continue;
            }
            if resp.error_code != 0 {
                return Err(ClientError::broker("ApiVersions", resp.error_code));
            }
            conn.versions = Versions::negotiate(&resp);
            return Ok(conn);
        }
        Err(ClientError::broker("ApiVersions", UNSUPPORTED_VERSION))
    }

    async fn api_versions(&mut self, version: i16) -> Result<ApiVersionsResponse, ClientError> {
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str(CLIENT_ID))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let cid = self.next_cid();
        let out = encode::<ApiVersionsRequest>(cid, version, &req)?;
        self.write(&out).await?;
        let mut frame = self.read_frame().await?;
        let cid_got = frame::decode_response_header(&mut frame, ApiKey::ApiVersions, version)
            .map_err(|source| ClientError::Frame {
                addr: self.addr.clone(),
                source,
            })?;
        if cid_got != cid {
            return Err(ClientError::Correlation {
                addr: self.addr.clone(),
                got: cid_got,
                want: cid,
            });
        }
        // An error-35 answer is in v0 whatever we asked; try our version, then v0.
        match ApiVersionsResponse::decode(&mut frame.clone(), version) {
            Ok(resp) if resp.error_code != UNSUPPORTED_VERSION => Ok(resp),
            _ => ApiVersionsResponse::decode(&mut frame, 0).map_err(|source| ClientError::Frame {
                addr: self.addr.clone(),
                source: FrameError::Malformed {
                    what: "ApiVersions response",
                    source,
                },
            }),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn versions(&self) -> &Versions {
        &self.versions
    }

    pub fn version(&self, api: ApiKey) -> Result<i16, ClientError> {
        self.versions.get(api, &self.addr)
    }

    pub fn next_cid(&mut self) -> i32 {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        cid
    }

    /// Sends `req` at the negotiated version and waits for its response.
    pub async fn call<R: Request>(&mut self, req: &R) -> Result<R::Response, ClientError> {
        let version = self.version(api_key::<R>())?;
        let cid = self.next_cid();
        let out = encode::<R>(cid, version, req)?;
        self.write(&out).await?;
        let frame = self.read_frame().await?;
        decode_response::<R>(frame, version, cid, &self.addr)
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|source| ClientError::Io {
                addr: self.addr.clone(),
                source,
            })
    }

    pub async fn read_frame(&mut self) -> Result<Bytes, ClientError> {
        self.frames.next(&mut self.stream, &self.addr).await
    }

    /// Gives up the stream with its frame reader (and what it has buffered), negotiated
    /// versions and next correlation id.
    pub fn into_parts(self) -> (S, FrameReader, Versions, i32) {
        (self.stream, self.frames, self.versions, self.next_cid)
    }
}

/// Encodes a request frame, mapping the codec's error.
pub fn encode<R: Request>(cid: i32, version: i16, req: &R) -> Result<BytesMut, ClientError> {
    frame::encode_request(cid, CLIENT_ID, version, req).map_err(|source| ClientError::Encode {
        api: api_key::<R>(),
        version,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;

    fn broker(ranges: &[(ApiKey, i16, i16)]) -> ApiVersionsResponse {
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

    #[test]
    fn negotiation_picks_the_highest_common_version() {
        let v = Versions::negotiate(&broker(&[
            (ApiKey::Produce, 0, 11),   // below our max: theirs
            (ApiKey::Fetch, 4, 17),     // above our max: ours
            (ApiKey::Metadata, 13, 13), // no overlap
        ]));
        assert_eq!(v.get(ApiKey::Produce, "b").unwrap(), 11);
        assert_eq!(v.get(ApiKey::Fetch, "b").unwrap(), 12);
        let err = v.get(ApiKey::Metadata, "b").unwrap_err().to_string();
        assert!(err.contains("13..=13") && err.contains("1..=12"), "{err}");
        let err = v.get(ApiKey::ListOffsets, "b").unwrap_err().to_string();
        assert!(err.contains("not offered"), "{err}");
    }

    #[test]
    fn oversized_frame_is_refused_before_allocation() {
        let read = |mut bytes: &[u8]| {
            futures_lite::future::block_on(FrameReader::default().next(&mut bytes, "b"))
        };
        let r = read(&[0x7f, 0xff, 0xff, 0xff, 0, 0]);
        assert!(matches!(r, Err(ClientError::Frame { .. })), "{r:?}");
        let r = read(&[0, 0, 0, 9, 1, 2]);
        assert!(matches!(r, Err(ClientError::Io { .. })), "{r:?}");
        let r = read(&[]);
        assert!(matches!(r, Err(ClientError::Closed { .. })), "{r:?}");
    }

    /// A stream that hands out its bytes in the given pieces, one piece per read at most,
    /// counting reads.
    struct Pieces {
        pieces: std::collections::VecDeque<Vec<u8>>,
        reads: usize,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.reads += 1;
            let Some(mut piece) = self.pieces.pop_front() else {
                return std::task::Poll::Ready(Ok(0));
            };
            let n = piece.len().min(buf.len());
            buf[..n].copy_from_slice(&piece[..n]);
            if n < piece.len() {
                self.pieces.push_front(piece.split_off(n));
            }
            std::task::Poll::Ready(Ok(n))
        }
    }

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn frames_arriving_together_take_one_read_and_split_ones_are_joined() {
        // Catches: a read per prefix and per body again (two syscalls per response), frames
        // lost or cut when several arrive in one read, and a frame split across reads (or
        // with its prefix split) coming out wrong.
        let big = vec![7u8; 3 * READ_AHEAD_BYTES];
        let together = [framed(b"one"), framed(b"two"), framed(b"three")].concat();
        let split = framed(&big);
        let (head, tail) = split.split_at(READ_AHEAD_BYTES / 2);
        let mut pieces = vec![together, framed(b"x")[..2].to_vec()];
        pieces.push([&framed(b"x")[2..], head].concat());
        pieces.push(tail.to_vec());
        let mut stream = Pieces {
            pieces: pieces.into(),
            reads: 0,
        };
        let mut frames = FrameReader::default();
        let mut next =
            || futures_lite::future::block_on(frames.next(&mut stream, "b")).map(|f| f.to_vec());
        let got: Vec<_> = (0..6).map(|_| next()).collect();
        for (got, want) in got.iter().zip([&b"one"[..], b"two", b"three", b"x", &big]) {
            assert_eq!(got.as_ref().unwrap(), want);
        }
        assert!(matches!(got[5], Err(ClientError::Closed { .. })));
        // One read for the three frames, one per later piece, one for the end.
        assert_eq!(stream.reads, 5);
    }
}
