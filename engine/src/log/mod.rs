//! The commit log: one sequence of preallocated segment files per shard, shared by all its
//! queues, addressed by a global byte position ([`crate::LogPos`]).
//!
//! ```text
//!  00000000000000000000.log  00000001073741824.log  ...   (named by starting log position)
//!  | entry | entry | ... | padding |  | entry | entry | ...
//! ```
//!
//! Invariants: an entry never crosses a segment end (the rest of a segment is filled by a
//! padding entry, or left as fewer than 64 zero bytes); a segment's end is its start plus its
//! file size; the last segment is the only one appended to.
//! Crash: writes beyond the last fdatasync may be lost or torn in any order; [`recovery`] keeps
//! the longest prefix of valid entries and forgets the rest.

pub(crate) mod appender;
pub(crate) mod prepare;
pub(crate) mod readahead;
pub(crate) mod reader;
pub(crate) mod recovery;
pub(crate) mod recycle;
pub(crate) mod retention;
pub(crate) mod sendfile;
pub(crate) mod stream_copy;
pub(crate) mod zero_ahead;

use crate::io::StorageFile;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Suffix of segment file names.
pub(crate) const SEGMENT_SUFFIX: &str = ".log";

/// One open segment file.
///
/// Durability contract: its bytes are durable up to group commit's `synced` position; its
/// name (directory entry) is durable from the directory sync at creation, before any of its
/// data is acknowledged.
pub(crate) struct Segment {
    /// Log position of the segment's first byte.
    pub start: u64,
    /// Bytes the segment spans (its preallocated size).
    pub size: u64,
    pub file: Rc<dyn StorageFile>,
    pub path: PathBuf,
    /// Wall-clock time of the newest write into it (retention by age).
    pub modified_ms: Cell<i64>,
}

impl Segment {
    pub fn new(
        start: u64,
        size: u64,
        file: Rc<dyn StorageFile>,
        path: PathBuf,
        modified_ms: i64,
    ) -> Rc<Segment> {
        Rc::new(Segment {
            start,
            size,
            file,
            path,
            modified_ms: Cell::new(modified_ms),
        })
    }

    pub fn end(&self) -> u64 {
        self.start + self.size
    }

    /// Closes the file (its descriptors), logging a failure: closing an O_DIRECT file whose
    /// data durability group commit has already settled reports nothing worth acting on.
    pub async fn close_quietly(&self) {
        if let Err(e) = self.file.close().await {
            tracing::warn!(segment = %self.path.display(), error = %e, "closing a segment file failed");
        }
    }
}

/// The segments of a shard, by start position.
#[derive(Default)]
pub(crate) struct SegmentSet {
    pub map: BTreeMap<u64, Rc<Segment>>,
}

impl SegmentSet {
    /// The segment holding log position `pos`.
    pub fn find(&self, pos: u64) -> Option<&Rc<Segment>> {
        self.map
            .range(..=pos)
            .next_back()
            .map(|(_, s)| s)
            .filter(|s| pos < s.end())
    }

    pub fn total_bytes(&self) -> u64 {
        self.map.values().map(|s| s.size).sum()
    }
}

pub(crate) fn segment_path(dir: &Path, start: u64) -> PathBuf {
    positioned_path(dir, start, SEGMENT_SUFFIX)
}

/// The start position encoded in a segment file name, if it is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    parse_positioned_name(name, SEGMENT_SUFFIX)
}

/// `<dir>/<start as 20 digits><suffix>`: how files named by a log position are named.
pub(crate) fn positioned_path(dir: &Path, start: u64, suffix: &str) -> PathBuf {
    dir.join(format!("{start:020}{suffix}"))
}

/// The log position in a name made by [`positioned_path`] with `suffix`, if it is one.
pub(crate) fn parse_positioned_name(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A segment set over in-memory files, for unit tests: `(start, size, modified_ms)` each.
#[cfg(test)]
pub(crate) fn test_segment_set(segments: &[(u64, u64, i64)]) -> SegmentSet {
    use crate::io::{FileKind, MemStorage, Storage};
    let io = MemStorage::new();
    let mut set = SegmentSet::default();
    for &(start, size, modified) in segments {
        let path = PathBuf::from(format!("/test/{start}"));
        let file = futures_lite::future::block_on(io.open(path.clone(), FileKind::Direct, true))
            .expect("MemStorage opens any path");
        set.map
            .insert(start, Segment::new(start, size, file, path, modified));
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        let p = segment_path(Path::new("/d"), 1 << 30);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "00000000001073741824.log");
        assert_eq!(parse_segment_name(name), Some(1 << 30));
        assert_eq!(parse_segment_name("0000000000107374182.log"), None);
        assert_eq!(parse_segment_name("checkpoint"), None);
        assert_eq!(parse_segment_name("0000000000107374182x.log"), None);
    }
}
