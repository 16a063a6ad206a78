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
//! Durability: as `Shard::advance_log_start`: the new start is recorded by the engine's next
//! checkpoint (at most a few seconds away, and at a clean shutdown); after a crash before it
//! the start may be back where it was (the deleted records readable again), never anywhere
//! else. Kafka's log-start-offset checkpoint has the same kind of window.

use crate::core::{current, futures_join_all, Core};
use crate::errors;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use ringmq_engine::{Offset, QueueId};
use std::rc::Rc;

/// The offset that asks for everything up to the high watermark to go.
pub const HIGH_WATERMARK: i64 = -1;

pub async fn handle(core: &Rc<Core>, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let meta = core.meta();
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let deletions = t.partitions.iter().map(|p| {
            let place = meta.place(t.name.as_str(), p.partition_index);
            let mesh = core.mesh.clone();
            let (index, offset) = (p.partition_index, p.offset);
            async move {
                let result = DeleteRecordsPartitionResult::default()
                    .with_partition_index(index)
                    .with_low_watermark(-1);
                let Some(place) = place else {
                    return result.with_error_code(errors::UNKNOWN_TOPIC_OR_PARTITION);
                };
                let queue = place.queue_id();
                match mesh
                    .call(place.core as usize, move || delete_before(queue, offset))
                    .await
                {
                    Ok((error, low)) => result.with_error_code(error).with_low_watermark(low),
                    Err(_) => result.with_error_code(errors::NOT_LEADER_OR_FOLLOWER),
                }
            }
        });
        let partitions = futures_join_all(deletions).await;
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name.clone())
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}

/// Runs on the owning core: (error, low watermark afterwards, or -1 on error).
async fn delete_before(queue: QueueId, offset: i64) -> (i16, i64) {
    let core = current();
    let end = core.store.end_offset(queue).0 as i64;
    match target(offset, end) {
        Ok(to) => match core.store.advance_log_start(queue, Offset(to)) {
            Ok(start) => (errors::NONE, start.0 as i64),
            Err(e) => (errors::from_engine(&e), -1),
        },
        Err(error) => (error, -1),
    }
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
