//! The engine's error type: one enum, with the file, offset and operation as context.

use crate::{Offset, QueueId};
use std::path::PathBuf;
use thiserror::Error;

/// Every way an engine call can fail.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The batch failed `ringmq_wire::record_batch::validate`; nothing was written.
    #[error("corrupt record batch: {0}")]
    CorruptBatch(ringmq_wire::record_batch::BatchError),
    /// The batch is larger than `ShardConfig::max_batch_bytes`; nothing was written.
    #[error("record batch of {len} bytes exceeds the limit of {max} bytes")]
    BatchTooLarge { len: usize, max: u32 },
    #[error("offset {requested:?} of queue {queue:?} is outside [{log_start:?}, {end:?}]")]
    OffsetOutOfRange {
        queue: QueueId,
        requested: Offset,
        log_start: Offset,
        end: Offset,
    },
    #[error("queue {0:?} was deleted")]
    QueueDeleted(QueueId),
    /// A write or fdatasync failed earlier; the shard refuses appends until reopened.
    #[error("shard is poisoned by an earlier I/O failure ({cause}); reopen it")]
    Poisoned { cause: String },
    #[error("{op} failed on {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Bad bytes on disk that recovery or a read cannot skip.
    #[error("corrupt data in {} at byte {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: &'static str,
    },
    /// The directory was written by an on-disk format version this build does not read (see
    /// `engine/FORMAT.md`, "Versioning"); nothing was changed.
    #[error("{} has format version {found}; this build reads version {supported} only", path.display())]
    UnsupportedFormat {
        path: PathBuf,
        found: u16,
        supported: u16,
    },
    /// Another shard (this process or another) holds the directory's lock.
    #[error("shard directory is in use: {} is locked by another opener", path.display())]
    Locked { path: PathBuf },
    #[error("shard is closed")]
    Closed,
    /// The configuration cannot work (e.g. a batch limit larger than a segment).
    #[error("invalid shard configuration: {0}")]
    Config(&'static str),
}

impl EngineError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EngineError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
