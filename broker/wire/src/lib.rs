//! Kafka wire codec shared by the broker, `ringmq-loadgen` and the fuzzers.
//!
//! Nothing here does I/O: every function takes bytes and returns values or typed errors, so
//! the whole crate can be fuzzed and tested without a socket.
//!
//! - [`record_batch`]: the RecordBatch v2 header (parse, CRC-32C check, offset rewrite) and a
//!   builder for producers (loadgen, tests).
//! - [`frame`]: the 4-byte size prefix and request/response headers on both sides.

pub mod frame;
pub mod record_batch;
pub mod varint;
