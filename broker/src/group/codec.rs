//! The records the coordinator stores in its group log (pure encode/decode, no I/O).
//!
//! Each write is one uncompressed RecordBatch v2 (built with `BatchBuilder`) holding one record
//! per key. Keys and values are ours, little-endian, versioned; modelled on Kafka's
//! `__consumer_offsets`, not compatible with it.
//!
//! ```text
//!  str  := len:u16 bytes (UTF-8)          nstr := len:i16 bytes, len -1 = null
//!
//!  offset key    := type:u16 = 1  group:str  topic:str  partition:i32
//!  offset value  := version:u16 = 1  offset:i64  leader_epoch:i32  commit_timestamp_ms:i64
//!                   expire_timestamp_ms:i64 (-1 = group retention)  metadata:nstr
//!  group key     := type:u16 = 2  group:str
//!  group value   := version:u16 = 1  generation:i32  protocol_type:str  protocol_name:nstr
//!                   leader:nstr  timestamp_ms:i64
//!  tombstone     := any key with a null value: the key is deleted
//! ```
//!
//! A compaction snapshot (`compact`) is made of these same records, one per live key, so
//! replay needs no special case; an empty snapshot is the tombstone of the empty group id.
//!
//! Replay applies records in log order; a later record for a key replaces an earlier one. A key
//! type or value version this build does not know is an error, never skipped: skipping could
//! resurrect an offset a newer build deleted. New versions get new numbers; old ones stay
//! readable.

use bytes::Bytes;
use ringmq_wire::record_batch::{BatchBuilder, ProducerStamp, Record};
use thiserror::Error;

pub const KEY_TYPE_OFFSET: u16 = 1;
pub const KEY_TYPE_GROUP: u16 = 2;
pub const OFFSET_VALUE_V1: u16 = 1;
pub const GROUP_VALUE_V1: u16 = 1;

/// Why a stored record cannot be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    #[error("record truncated while reading {what}")]
    Truncated { what: &'static str },
    #[error("unknown group-log key type {0}")]
    UnknownKeyType(u16),
    #[error("unknown {kind} value version {version}")]
    UnknownVersion { kind: &'static str, version: u16 },
    #[error("{what} is not UTF-8")]
    BadUtf8 { what: &'static str },
    #[error("{what} has {extra} bytes after its last field")]
    Trailing { what: &'static str, extra: usize },
}

/// A committed offset as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub commit_timestamp_ms: i64,
    /// Set when the commit asked for its own retention (OffsetCommit v2-v4), else -1.
    pub expire_timestamp_ms: i64,
    pub metadata: Option<String>,
}

/// Group metadata as stored (members are not stored, see the module contract in `group`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupValue {
    pub generation: i32,
    pub protocol_type: String,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    pub timestamp_ms: i64,
}

/// One decoded record; `None` values are tombstones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRecord {
    Offset {
        group: String,
        topic: String,
        partition: i32,
        value: Option<OffsetValue>,
    },
    Group {
        group: String,
        value: Option<GroupValue>,
    },
}

pub fn offset_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + group.len() + topic.len());
    out.extend_from_slice(&KEY_TYPE_OFFSET.to_le_bytes());
    put_str(&mut out, group);
    put_str(&mut out, topic);
    out.extend_from_slice(&partition.to_le_bytes());
    out
}

pub fn offset_value(v: &OffsetValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + v.metadata.as_ref().map_or(0, String::len));
    out.extend_from_slice(&OFFSET_VALUE_V1.to_le_bytes());
    out.extend_from_slice(&v.offset.to_le_bytes());
    out.extend_from_slice(&v.leader_epoch.to_le_bytes());
    out.extend_from_slice(&v.commit_timestamp_ms.to_le_bytes());
    out.extend_from_slice(&v.expire_timestamp_ms.to_le_bytes());
    put_nstr(&mut out, v.metadata.as_deref());
    out
}

pub fn group_key(group: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + group.len());
    out.extend_from_slice(&KEY_TYPE_GROUP.to_le_bytes());
    put_str(&mut out, group);
    out
}

pub fn group_value(v: &GroupValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + v.protocol_type.len());
    out.extend_from_slice(&GROUP_VALUE_V1.to_le_bytes());
    out.extend_from_slice(&v.generation.to_le_bytes());
    put_str(&mut out, &v.protocol_type);
    put_nstr(&mut out, v.protocol_name.as_deref());
    put_nstr(&mut out, v.leader.as_deref());
    out.extend_from_slice(&v.timestamp_ms.to_le_bytes());
    out
}

/// Builds the batch for one write: `(key, value)` pairs, `None` value = tombstone.
pub fn build_batch(records: &[(Vec<u8>, Option<Vec<u8>>)], timestamp_ms: i64) -> Bytes {
    assert!(
        !records.is_empty(),
        "a group log write needs at least one record"
    );
    let size: usize = records
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + 24)
        .sum();
    let mut builder = BatchBuilder::new(size + ringmq_wire::record_batch::HEADER_LEN);
    for (key, value) in records {
        builder.push(&Record {
            key: Some(key),
            value: value.as_deref(),
            headers: &[],
            timestamp_ms,
        });
    }
    Bytes::from(builder.build(ProducerStamp::NONE, 0))
}

/// Decodes one stored record.
pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<GroupRecord, CodecError> {
    let mut k = Reader {
        buf: key,
        what: "key",
    };
    match k.u16()? {
        KEY_TYPE_OFFSET => {
            let group = k.str("group id")?;
            let topic = k.str("topic")?;
            let partition = k.i32()?;
            k.finish()?;
            let value = value.map(decode_offset_value).transpose()?;
            Ok(GroupRecord::Offset {
                group,
                topic,
                partition,
                value,
            })
        }
        KEY_TYPE_GROUP => {
            let group = k.str("group id")?;
            k.finish()?;
            let value = value.map(decode_group_value).transpose()?;
            Ok(GroupRecord::Group { group, value })
        }
        other => Err(CodecError::UnknownKeyType(other)),
    }
}

fn decode_offset_value(buf: &[u8]) -> Result<OffsetValue, CodecError> {
    let mut r = Reader {
        buf,
        what: "offset value",
    };
    let version = r.u16()?;
    if version != OFFSET_VALUE_V1 {
        return Err(CodecError::UnknownVersion {
            kind: "offset",
            version,
        });
    }
    let value = OffsetValue {
        offset: r.i64()?,
        leader_epoch: r.i32()?,
        commit_timestamp_ms: r.i64()?,
        expire_timestamp_ms: r.i64()?,
        metadata: r.nstr("offset metadata")?,
    };
    r.finish()?;
    Ok(value)
}

fn decode_group_value(buf: &[u8]) -> Result<GroupValue, CodecError> {
    let mut r = Reader {
        buf,
        what: "group value",
    };
    let version = r.u16()?;
    if version != GROUP_VALUE_V1 {
        return Err(CodecError::UnknownVersion {
            kind: "group",
            version,
        });
    }
    let value = GroupValue {
        generation: r.i32()?,
        protocol_type: r.str("protocol type")?,
        protocol_name: r.nstr("protocol name")?,
        leader: r.nstr("leader")?,
        timestamp_ms: r.i64()?,
    };
    r.finish()?;
    Ok(value)
}

/// Strings longer than `u16::MAX` cannot be written; callers bound them far below
/// (`MAX_GROUP_ID_BYTES`, topic names, `MAX_OFFSET_METADATA_BYTES`).
fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("group-log strings are bounded below u16::MAX");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_nstr(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.extend_from_slice(&(-1i16).to_le_bytes()),
        Some(s) => {
            let len = i16::try_from(s.len()).expect("nullable group-log strings are bounded");
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
}

/// Reads fields from a stored key or value; every read checks what is left first.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(CodecError::Truncated { what });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, self.what)?);
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, CodecError> {
        self.array().map(u16::from_le_bytes)
    }

    fn i32(&mut self) -> Result<i32, CodecError> {
        self.array().map(i32::from_le_bytes)
    }

    fn i64(&mut self) -> Result<i64, CodecError> {
        self.array().map(i64::from_le_bytes)
    }

    fn str(&mut self, what: &'static str) -> Result<String, CodecError> {
        let len = usize::from(self.u16()?);
        utf8(self.take(len, what)?, what)
    }

    fn nstr(&mut self, what: &'static str) -> Result<Option<String>, CodecError> {
        let len = i16::from_le_bytes(self.array()?);
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| CodecError::Truncated { what })?;
        utf8(self.take(len, what)?, what).map(Some)
    }

    fn finish(&self) -> Result<(), CodecError> {
        match self.buf.len() {
            0 => Ok(()),
            extra => Err(CodecError::Trailing {
                what: self.what,
                extra,
            }),
        }
    }
}

fn utf8(bytes: &[u8], what: &'static str) -> Result<String, CodecError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| CodecError::BadUtf8 { what })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset(metadata: Option<&str>) -> OffsetValue {
        OffsetValue {
            offset: 42,
            leader_epoch: 3,
            commit_timestamp_ms: 1_700_000_000_000,
            expire_timestamp_ms: -1,
            metadata: metadata.map(str::to_owned),
        }
    }

    #[test]
    fn offset_record_round_trips() {
        for metadata in [None, Some(""), Some("meta")] {
            let v = offset(metadata);
            let rec = decode(&offset_key("g", "t", 7), Some(&offset_value(&v))).unwrap();
            let want = GroupRecord::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 7,
                value: Some(v),
            };
            assert_eq!(rec, want);
        }
    }

    #[test]
    fn group_record_and_tombstones_round_trip() {
        let v = GroupValue {
            generation: 9,
            protocol_type: "consumer".into(),
            protocol_name: Some("range".into()),
            leader: None,
            timestamp_ms: 5,
        };
        let rec = decode(&group_key("g"), Some(&group_value(&v))).unwrap();
        assert_eq!(
            rec,
            GroupRecord::Group {
                group: "g".into(),
                value: Some(v)
            }
        );
        assert_eq!(
            decode(&group_key("g"), None).unwrap(),
            GroupRecord::Group {
                group: "g".into(),
                value: None
            }
        );
        assert!(matches!(
            decode(&offset_key("g", "t", 0), None).unwrap(),
            GroupRecord::Offset { value: None, .. }
        ));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let key = offset_key("group", "topic", 1);
        let value = offset_value(&offset(Some("m")));
        for cut in 0..key.len() {
            assert!(
                decode(&key[..cut], Some(&value)).is_err(),
                "key cut at {cut}"
            );
        }
        for cut in 0..value.len() {
            assert!(
                decode(&key, Some(&value[..cut])).is_err(),
                "value cut at {cut}"
            );
        }
    }

    #[test]
    fn unknown_versions_and_garbage_are_errors() {
        let mut key = group_key("g");
        key[0] = 9;
        assert_eq!(decode(&key, None), Err(CodecError::UnknownKeyType(9)));
        let mut value = offset_value(&offset(None));
        value[0] = 2;
        assert_eq!(
            decode(&offset_key("g", "t", 0), Some(&value)),
            Err(CodecError::UnknownVersion {
                kind: "offset",
                version: 2
            })
        );
        let mut long = offset_key("g", "t", 0);
        long.push(0);
        assert!(matches!(
            decode(&long, None),
            Err(CodecError::Trailing { .. })
        ));
        let bad_utf8 = [1, 0, 1, 0, 0xff, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            decode(&bad_utf8, None),
            Err(CodecError::BadUtf8 { what: "group id" })
        );
        for len in [-2i16, i16::MIN] {
            let mut value = offset_value(&offset(None));
            let at = value.len() - 2;
            value[at..].copy_from_slice(&len.to_le_bytes());
            assert!(decode(&offset_key("g", "t", 0), Some(&value)).is_err());
        }
    }

    #[test]
    fn built_batch_is_valid_and_carries_the_records() {
        let records = vec![
            (offset_key("g", "t", 0), Some(offset_value(&offset(None)))),
            (group_key("g"), None),
        ];
        let batch = build_batch(&records, 77);
        ringmq_wire::record_batch::validate(&batch).unwrap();
        let read: Vec<_> = ringmq_wire::records::records(&batch)
            .unwrap()
            .map(|r| {
                let r = r.unwrap();
                (r.key.unwrap().to_vec(), r.value.map(<[u8]>::to_vec))
            })
            .collect();
        assert_eq!(read, records);
    }
}
