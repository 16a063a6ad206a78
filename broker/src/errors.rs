//! Kafka error codes ringmq returns (names as in Kafka's protocol guide), and the mapping from
//! engine errors.

use ringmq_engine::EngineError;

pub const NONE: i16 = 0;
pub const UNKNOWN_SERVER_ERROR: i16 = -1;
pub const OFFSET_OUT_OF_RANGE: i16 = 1;
pub const CORRUPT_MESSAGE: i16 = 2;
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
pub const MESSAGE_TOO_LARGE: i16 = 10;
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
pub const INVALID_REQUIRED_ACKS: i16 = 21;
pub const UNSUPPORTED_VERSION: i16 = 35;
pub const TOPIC_ALREADY_EXISTS: i16 = 36;
pub const INVALID_PARTITIONS: i16 = 37;
pub const INVALID_REPLICATION_FACTOR: i16 = 38;
pub const INVALID_CONFIG: i16 = 40;
pub const INVALID_REQUEST: i16 = 42;
pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
pub const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
pub const INVALID_PRODUCER_EPOCH: i16 = 47;
pub const KAFKA_STORAGE_ERROR: i16 = 56;
pub const UNKNOWN_TOPIC_ID: i16 = 100;

/// The Kafka error code for an engine error on a partition.
pub fn from_engine(e: &EngineError) -> i16 {
    match e {
        EngineError::CorruptBatch(_) => CORRUPT_MESSAGE,
        EngineError::BatchTooLarge { .. } => MESSAGE_TOO_LARGE,
        EngineError::OffsetOutOfRange { .. } => OFFSET_OUT_OF_RANGE,
        EngineError::QueueDeleted(_) => UNKNOWN_TOPIC_OR_PARTITION,
        EngineError::Closed => NOT_LEADER_OR_FOLLOWER,
        EngineError::Poisoned { .. } | EngineError::Io { .. } | EngineError::Corrupt { .. } => {
            KAFKA_STORAGE_ERROR
        }
        #[allow(unreachable_patterns)]
        _ => UNKNOWN_SERVER_ERROR,
    }
}
