//! The ringmq broker: the Kafka wire protocol on thread-per-core shards.
//!
//! ```text
//!  server   executors, listeners, start-up and shutdown
//!  conn     one connection: framing, limits, pipelining, response order
//!  decode   frame → request (the fuzzed entry point)        alloc: the huge-allocation guard
//!  api      dispatch; produce / fetch / offsets / admin / groups: the handlers
//!  group    the consumer-group coordinator (one per core); groups routes requests to it
//!  core     one core's state; mesh: cross-core calls        metadata: topics, the one writer
//!  store    the engine shard (or an in-memory double)       config: flags, env, TOML
//!  sendfile responses holding file ranges, sent from the blocking-thread pool
//!  send_zc  the same pool's io_uring SEND_ZC sender (`--fetch-send zc`)
//! ```

pub mod admin;
pub mod alter_configs;
pub use ringmq_wire::alloc;
pub mod api;
pub mod config;
pub mod conn;
pub mod core;
pub mod decode;
pub mod delete_records;
pub mod errors;
pub mod fetch;
pub mod group;
pub mod groups;
mod iov;
pub mod iowq;
pub mod mesh;
pub mod metadata;
pub mod offsets;
pub mod produce;
pub mod send_zc;
pub mod sendfile;
pub mod server;
pub mod store;
pub mod topic_retention;
pub mod versions;
