//! Kafka wire codec shared by the broker, `ringmq-loadgen` and the fuzzers.
//!
//! Nothing here does I/O: every function takes bytes and returns values or typed errors, so
//! the whole crate can be fuzzed and tested without a socket.
//!
//! - [`record_batch`]: the RecordBatch v2 header (parse, CRC-32C check, offset rewrite) and a
//!   builder for producers (loadgen, tests).
//! - [`records`]: the records inside an uncompressed batch, read in place.
//! - [`alloc`]: the global allocator that keeps kafka-protocol's decoders from aborting the
//!   process on a crafted array length (brokers and clients decode untrusted frames).
//! - [`frame`]: the 4-byte size prefix and request/response headers on both sides.
//! - [`fetch`]: the Fetch response encoded by hand around stored batches (no record copy).
//! - [`part`]: a response piece: bytes, or a file range the connection writer `sendfile`s.

pub mod alloc;
pub mod fetch;
pub mod frame;
pub mod part;
pub mod record_batch;
pub mod records;
pub mod varint;
