//! `ringmq-loadgen`: an open-loop load generator for any Kafka-compatible broker, free of
//! coordinated omission, with HDR latency histograms.
//!
//! - [`config`]: the command line.
//! - [`schedule`]: intended send times (the open-loop rate).
//! - [`client`]: a lean Kafka client on the shared wire codec.
//! - [`producer`], [`consumer`]: the workload tasks; [`accumulator`]: a producer's batches
//!   per partition and what one produce request carries.
//! - [`run`]: one run on pinned executors, progress lines; [`report`]: table, JSON, HDR log.
//! - [`raw`]: the loopback TCP baseline; [`embedded`]: a broker started for the run.

pub mod accumulator;
pub mod client;
pub mod clock;
pub mod config;
pub mod consumer;
pub mod ctx;
pub mod embedded;
pub mod producer;
pub mod raw;
pub mod report;
pub mod run;
pub mod schedule;
pub mod stats;
