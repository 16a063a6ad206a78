//! DeleteRecords (`kafka-delete-records`, AdminClient deleteRecords): moves partitions' log
//! start offsets forward. Records below the new start are no longer served (a fetch below it
//! gets OFFSET_OUT_OF_RANGE, ListOffsets earliest answers it); the engine removes a segment
//! once no partition of its core retains a batch in it (one commit log holds all of a core's
//! partitions), within its next retention pass.
//!
//! Per partition, as Kafka answers: an offset of -1 means the high watermark (delete
//! everything); any other negative offset, or one past the high watermark, is
//! OFFSET_OUT_OF_RANGE; an offset at or below the current start changes nothing; the answer's
//! low watermark is the start afterwards. An offset inside a batch is kept as is: a fetch from
//! there returns the whole batch and the client skips the records before it, as with Kafka.
//!
//! Durability: an answer without error means the new start is durable: each core makes its
//! partitions' moves durable with one engine checkpoint (`Shard::persist_log_starts`) before it
//! answers, so deleted records never come back after kill -9 or power loss (Kafka writes its
//! log-start-offset checkpoint periodically, and may bring them back). If that checkpoint
//! fails, the partitions get its error code (the moves may or may not survive a crash).

use crate::core::{call_owners, current, Core, Slot};
use crate::errors;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use ringmq_engine::{Offset, QueueId};
use std::collections::BTreeMap;
use std::rc::Rc;

/// One partition's part of a request: its queue, and the offset below which records go.
type Ask = (QueueId, i64);

/// The offset that asks for everything up to the high watermark to go.
pub const HIGH_WATERMARK: i64 = -1;

pub async fn handle(core: &Rc<Core>, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let meta = core.meta();
    // Answers in request order: (topic index, partition index) -> result; the partitions of
    // each core go to it in one call, which makes their new starts durable once.
    let mut results: Vec<Vec<DeleteRecordsPartitionResult>> = Vec::with_capacity(req.topics.len());
    let mut by_core: BTreeMap<usize, Vec<(Slot, Ask)>> = BTreeMap::new();
    for (t, topic) in req.topics.iter().enumerate() {
        let mut answers = Vec::with_capacity(topic.partitions.len());
        for (p, part) in topic.partitions.iter().enumerate() {
            answers.push(
                DeleteRecordsPartitionResult::default()
                    .with_partition_index(part.partition_index)
                    .with_low_watermark(-1)
                    .with_error_code(errors::UNKNOWN_TOPIC_OR_PARTITION),
            );
            if let Some(place) = meta.place(topic.name.as_str(), part.partition_index) {
                by_core
                    .entry(place.core as usize)
                    .or_default()
                    .push(((t, p), (place.queue_id(), part.offset)));
            }
        }
        results.push(answers);
    }
    let unreachable = (errors::NOT_LEADER_OR_FOLLOWER, -1);
    for ((t, p), (error, low)) in call_owners(
        &core.mesh,
        "DeleteRecords",
        by_core,
        unreachable,
        delete_before,
    )
    .await
    {
        let r = &mut results[t][p];
        r.error_code = error;
        r.low_watermark = low;
    }
    let topics = req
        .topics
        .into_iter()
        .zip(results)
        .map(|(topic, partitions)| {
            DeleteRecordsTopicResult::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}

/// Runs on the owning core: moves each queue's start, then makes the moves durable (one
/// checkpoint) before answering. Per queue: (error, low watermark afterwards, or -1).
async fn delete_before(asks: Vec<Ask>) -> Vec<(i16, i64)> {
    let core = current();
    let mut answers: Vec<(i16, i64)> = asks
        .iter()
        .map(|&(queue, offset)| {
            let end = core.store.end_offset(queue).0 as i64;
            match target(offset, end) {
                Ok(to) => match core.store.advance_log_start(queue, Offset(to)) {
                    Ok(start) => (errors::NONE, start.0 as i64),
                    Err(e) => (errors::from_engine(&e), -1),
                },
                Err(error) => (error, -1),
            }
        })
        .collect();
    if answers.iter().any(|(e, _)| *e == errors::NONE) {
        if let Err(e) = core.store.persist_log_starts().await {
            // The moves are made but not known durable: say so rather than succeed.
            tracing::warn!(error = %e, "persisting log starts after DeleteRecords failed");
            let code = errors::from_engine(&e);
            for a in answers.iter_mut().filter(|(e, _)| *e == errors::NONE) {
                *a = (code, -1);
            }
        }
    }
    answers
}

/// The new start a request for `offset` asks for on a partition whose high watermark is
/// `end`, or the error code.
fn target(offset: i64, end: i64) -> Result<u64, i16> {
    match offset {
        HIGH_WATERMARK => Ok(end as u64),
        o if o < 0 || o > end => Err(errors::OFFSET_OUT_OF_RANGE),
        o => Ok(o as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_as_kafka_maps_them() {
        assert_eq!(target(HIGH_WATERMARK, 40), Ok(40));
        assert_eq!(target(0, 40), Ok(0));
        assert_eq!(target(17, 40), Ok(17));
        assert_eq!(target(40, 40), Ok(40));
        assert_eq!(target(41, 40), Err(errors::OFFSET_OUT_OF_RANGE));
        assert_eq!(target(-2, 40), Err(errors::OFFSET_OUT_OF_RANGE));
    }
}
