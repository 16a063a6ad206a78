//! The API versions ringmq advertises in ApiVersions, and the ones it can decode.
//!
//! The ranges are those the real clients negotiate to (librdkafka, kafka-python, franz-go, the
//! Java 4.x client) intersected with what kafka-protocol 0.18 decodes and what the handlers
//! implement. One trap: Produce is advertised from v0 (old clients refuse a broker whose
//! Produce range does not start at 0), but v0-v2 carry message formats 0/1 that ringmq does not
//! store, so those requests close the connection, as Kafka does for magic < 2.

use kafka_protocol::messages::ApiKey;

/// Advertised ranges, `(api, min, max)`.
pub const ADVERTISED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 11),
    (
        ApiKey::Fetch,
        ringmq_wire::fetch::FETCH_MIN_VERSION,
        ringmq_wire::fetch::FETCH_MAX_VERSION,
    ),
    (ApiKey::ListOffsets, 1, 8),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::DeleteRecords, 0, 2),
];

/// Produce versions below this are advertised but refused (message formats 0 and 1).
pub const PRODUCE_MIN_ACCEPTED: i16 = 3;

/// The advertised range of `key`, if it is served at all.
pub fn advertised(key: ApiKey) -> Option<(i16, i16)> {
    ADVERTISED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|&(_, min, max)| (min, max))
}

/// Whether `version` of `key` is within the advertised range.
pub fn is_advertised(key: ApiKey, version: i16) -> bool {
    advertised(key).is_some_and(|(min, max)| (min..=max).contains(&version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_advertised_range_is_decodable_by_the_codec() {
        for &(key, min, max) in ADVERTISED {
            let crate_range = key.valid_versions();
            let min = if key == ApiKey::Produce {
                PRODUCE_MIN_ACCEPTED
            } else {
                min
            };
            assert!(
                crate_range.min <= min && max <= crate_range.max,
                "{key:?} {min}..={max} vs codec {}..={}",
                crate_range.min,
                crate_range.max
            );
        }
    }
}
