//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3), or the first offset whose
//! record has a timestamp at or after the one asked for (found through the engine's batch
//! time index, then inside the batch, decompressing it if needed).

use crate::core::{current, futures_join_all, Core};
use crate::errors;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use ringmq_engine::{Offset, QueueId};
use ringmq_wire::record_batch::{BatchHeader, Compression};
use std::rc::Rc;

pub const LATEST_TIMESTAMP: i64 = -1;
pub const EARLIEST_TIMESTAMP: i64 = -2;
pub const MAX_TIMESTAMP: i64 = -3;
/// "Earliest local" (tiered storage): the same as earliest here.
pub const EARLIEST_LOCAL_TIMESTAMP: i64 = -4;

/// The first ListOffsets version whose partition answer carries `leader_epoch`.
const LEADER_EPOCH_VERSION: i16 = 4;

pub async fn handle(core: &Rc<Core>, req: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    let meta = core.meta();
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let lookups = t.partitions.iter().map(|p| {
            let place = meta.place(t.name.as_str(), p.partition_index);
            let mesh = core.mesh.clone();
            let (index, ts) = (p.partition_index, p.timestamp);
            async move {
                let resp = ListOffsetsPartitionResponse::default().with_partition_index(index);
                let Some(place) = place else {
                    return resp.with_error_code(errors::UNKNOWN_TOPIC_OR_PARTITION);
                };
                let queue = place.queue_id();
                match mesh
                    .call(place.core as usize, move || lookup(queue, ts))
                    .await
                {
                    Ok(found) => answer(resp, found, version),
                    Err(_) => resp.with_error_code(errors::NOT_LEADER_OR_FOLLOWER),
                }
            }
        });
        let partitions = futures_join_all(lookups).await;
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// Fills a partition's answer with a lookup's (error, timestamp, offset). The leader epoch
/// (always 0: one node, never re-elected) exists from v4 on; the codec refuses to encode a
/// non-default value into an older version, which would close the connection of a client
/// asking with v1-v3 (librdkafka 2.0.2, the one Debian 12's kcat uses, asks with v2).
fn answer(
    resp: ListOffsetsPartitionResponse,
    (error, timestamp, offset): (i16, i64, i64),
    version: i16,
) -> ListOffsetsPartitionResponse {
    let resp = resp
        .with_error_code(error)
        .with_timestamp(timestamp)
        .with_offset(offset);
    if version >= LEADER_EPOCH_VERSION {
        resp.with_leader_epoch(0)
    } else {
        resp
    }
}

/// Runs on the owning core: (error, timestamp, offset).
async fn lookup(queue: QueueId, ts: i64) -> (i16, i64, i64) {
    let core = current();
    let end = core.store.end_offset(queue).0 as i64;
    let start = core.store.log_start_offset(queue).0 as i64;
    match ts {
        LATEST_TIMESTAMP => (errors::NONE, -1, end),
        EARLIEST_TIMESTAMP | EARLIEST_LOCAL_TIMESTAMP => (errors::NONE, -1, start),
        // The record with the largest timestamp (the first of equals), and that timestamp.
        MAX_TIMESTAMP => match core.store.max_timestamp(queue) {
            Ok(Some(max)) => at_or_after(&core, queue, max).await,
            Ok(None) => (errors::NONE, -1, -1),
            Err(e) => (errors::from_engine(&e), -1, -1),
        },
        ts if ts < 0 => (errors::INVALID_REQUEST, -1, -1),
        ts => at_or_after(&core, queue, ts).await,
    }
}

/// The first record whose timestamp is `>= ts`: (error, its timestamp, its offset), or
/// (NONE, -1, -1) when there is none.
async fn at_or_after(core: &Core, queue: QueueId, ts: i64) -> (i16, i64, i64) {
    match core.store.offset_for_timestamp(queue, ts).await {
        Ok(Some((base, max_ts))) => {
            let (offset, found_ts) = first_record_at(core, queue, base, ts)
                .await
                .unwrap_or((base.0 as i64, max_ts));
            (errors::NONE, found_ts, offset)
        }
        Ok(None) => (errors::NONE, -1, -1),
        Err(e) => (errors::from_engine(&e), -1, -1),
    }
}

/// Largest compressed batch decompressed to find a record by timestamp (the engine's batch
/// limit); larger ones answer the batch start.
const MAX_DECOMPRESS_BATCH_BYTES: usize = 8 << 20;

/// Within the batch starting at `base` (the first whose max timestamp is >= `ts`), the first
/// record with a timestamp >= `ts`: (offset, timestamp), as Kafka answers. None: unreadable,
/// and the caller answers the batch start.
async fn first_record_at(core: &Core, queue: QueueId, base: Offset, ts: i64) -> Option<(i64, i64)> {
    let read = core.store.read(queue, base, 1).await.ok()?;
    let batch = read.batches.into_iter().next()?;
    let header = BatchHeader::parse(&batch).ok()?;
    if header.compression() == Compression::None {
        for record in ringmq_wire::records::records(&batch).ok()? {
            let record = record.ok()?;
            let record_ts = header.base_timestamp + record.timestamp_delta;
            if record_ts >= ts {
                return Some((
                    header.base_offset + i64::from(record.offset_delta),
                    record_ts,
                ));
            }
        }
        return None;
    }
    if batch.len() > MAX_DECOMPRESS_BATCH_BYTES {
        return None;
    }
    let mut buf = batch.clone();
    let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).ok()?;
    set.records
        .iter()
        .find(|r| r.timestamp >= ts)
        .map(|r| (r.offset, r.timestamp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::versions::advertised;
    use kafka_protocol::messages::ApiKey;
    use kafka_protocol::protocol::{Decodable, Encodable};

    /// Catches an answer the codec cannot encode in some advertised version (the connection is
    /// then closed instead of answered): the leader epoch was set in every version, and kcat
    /// on librdkafka 2.0.2 (ListOffsets v2) lost its connection on every offset query.
    #[test]
    fn a_found_offset_encodes_in_every_advertised_version() {
        let (min, max) = advertised(ApiKey::ListOffsets).expect("ListOffsets is advertised");
        for version in min..=max {
            let partition = answer(
                ListOffsetsPartitionResponse::default().with_partition_index(2),
                (errors::NONE, 1_000, 42),
                version,
            );
            let response = ListOffsetsResponse::default().with_topics(vec![
                ListOffsetsTopicResponse::default().with_partitions(vec![partition]),
            ]);
            let mut buf = bytes::BytesMut::new();
            response
                .encode(&mut buf, version)
                .unwrap_or_else(|e| panic!("ListOffsets v{version} does not encode: {e}"));
            let decoded = ListOffsetsResponse::decode(&mut buf.freeze(), version)
                .unwrap_or_else(|e| panic!("ListOffsets v{version} does not decode: {e}"));
            let found = &decoded.topics[0].partitions[0];
            assert_eq!((found.partition_index, found.offset), (2, 42), "v{version}");
            let epoch = if version >= LEADER_EPOCH_VERSION {
                0
            } else {
                -1
            };
            assert_eq!(found.leader_epoch, epoch, "v{version}");
        }
    }
}
