//! A lean Kafka client: just what a load generator needs, on the shared wire codec.
//!
//! - [`conn`]: one TCP connection: framing, ApiVersions negotiation, request/response calls,
//!   and a split into a pipelined writer and reader for produce.
//! - [`cluster`]: Metadata (leaders, topic id), CreateTopics, ListOffsets.
//! - [`records`]: building (and compressing) record batches with the send time inside each
//!   record, and reading fetched batches back to count records and extract those times.
//! - [`group`]: a consumer-group member (FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//!   LeaveGroup) with a range assignor.

pub mod cluster;
pub mod conn;
pub mod group;
pub mod records;

pub use conn::{ClientError, Conn, Versions};
