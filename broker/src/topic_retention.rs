//! A topic's own retention (`retention.ms` / `retention.bytes` given at CreateTopics): each
//! core moves the log start of its partitions of such topics forward, as Kafka deletes a
//! partition's old segments. Records below a partition's new earliest offset are unreadable
//! (OFFSET_OUT_OF_RANGE; consumers reset as `auto.offset.reset` says).
//!
//! ```text
//!  every TOPIC_RETENTION_CHECK_MS, on each core:
//!    for each topic with a limit, for each partition this core owns:
//!      Store::expire(queue, now - retention.ms, retention.bytes)   (whole batches only)
//! ```
//!
//! The bytes themselves go when no partition of the core needs them: one commit log holds
//! every partition of a core, so the engine removes its oldest whole segments once they hold
//! no retained batch of any partition (or by the core's own `--retention-ms` /
//! `--retention-bytes`). A busy partition with a short retention next to a quiet one with a
//! long one keeps the quiet one's segments, and everything written after them, on disk. Time
//! limits use each batch's max timestamp (CreateTime as the producer set it, or the broker's
//! clock for LogAppendTime topics), like Kafka's time index; the newest batch of a partition
//! always stays under a size limit, as Kafka keeps the active segment. The moved starts are
//! durable with the engine's next checkpoint (`Shard::advance_log_start`): after a crash a
//! start may be back where it was, until the next check moves it again.

use crate::core::Core;
use std::collections::BTreeMap;
use std::rc::Rc;

/// Topic config: keep records this many milliseconds (-1: no limit of the topic's own).
pub const RETENTION_MS_CONFIG: &str = "retention.ms";
/// Topic config: keep at most this many bytes per partition (-1: no limit).
pub const RETENTION_BYTES_CONFIG: &str = "retention.bytes";
/// How often each core applies the topics' limits (Kafka checks every 5 minutes; a check here
/// is one binary search per partition with a limit).
pub const TOPIC_RETENTION_CHECK_MS: u64 = 1_000;

/// A topic's own limits: (retention.ms, retention.bytes), None for absent or -1. An invalid
/// value is an error (CreateTopics answers INVALID_CONFIG).
pub fn topic_limits(
    configs: &BTreeMap<String, String>,
) -> Result<(Option<u64>, Option<u64>), String> {
    let limit = |name: &str| -> Result<Option<u64>, String> {
        match configs.get(name) {
            None => Ok(None),
            Some(v) => match v.trim().parse::<i64>() {
                Ok(-1) => Ok(None),
                Ok(n) if n >= 0 => Ok(Some(n as u64)),
                _ => Err(format!(
                    "{name} must be -1 or a non-negative integer, got {v:?}"
                )),
            },
        }
    };
    Ok((limit(RETENTION_MS_CONFIG)?, limit(RETENTION_BYTES_CONFIG)?))
}

/// The core's task: applies the topics' limits until the broker stops.
pub async fn run(core: Rc<Core>) {
    loop {
        glommio::timer::sleep(std::time::Duration::from_millis(TOPIC_RETENTION_CHECK_MS)).await;
        if core.stopping.get() {
            return;
        }
        enforce(&core, crate::store::now_ms());
    }
}

/// One pass over the topics with limits, for the partitions this core owns.
fn enforce(core: &Core, now_ms: i64) {
    let meta = core.meta();
    for topic in meta.topics.values() {
        let Ok((ms, bytes)) = topic_limits(&topic.configs) else {
            continue;
        };
        if ms.is_none() && bytes.is_none() {
            continue;
        }
        let keep_from = ms.map(|ms| now_ms.saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX)));
        for (partition, place) in topic.partitions.iter().enumerate() {
            if place.core as usize != core.id {
                continue;
            }
            let queue = ringmq_engine::QueueId(place.queue);
            if let Err(e) = core.store.expire(queue, keep_from, bytes) {
                tracing::warn!(topic = %topic.name, partition, error = %e, "topic retention failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_like_kafka() {
        let c = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(topic_limits(&c(&[])), Ok((None, None)));
        assert_eq!(
            topic_limits(&c(&[
                ("retention.ms", "3600000"),
                ("retention.bytes", "-1")
            ])),
            Ok((Some(3_600_000), None))
        );
        assert_eq!(
            topic_limits(&c(&[("retention.bytes", "0")])),
            Ok((None, Some(0)))
        );
        for bad in ["-2", "soon", "1.5", ""] {
            assert!(
                topic_limits(&c(&[("retention.ms", bad)])).is_err(),
                "{bad:?}"
            );
        }
    }
}
