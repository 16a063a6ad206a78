//! Recycling: a segment that retention removes is kept as a spare file and becomes a later
//! segment, instead of being deleted while a new one is fallocated.
//!
//! Why: on ext4 an O_DIRECT append into fallocated (unwritten) blocks converts extents, and
//! every fdatasync after it writes that metadata; overwrites of written blocks do neither
//! (`log::zero_ahead` has the figures). `log::zero_ahead` and `log::prepare` zero-fill ahead of
//! the log only while it is quiet, so a log under constant load appends to fallocated space
//! for ever. A retired segment is written block by block already: once retention deletes
//! segments (the steady state of a long-running broker), every segment after the first laps
//! can be one of them, and appends overwrite written blocks whatever the load.
//!
//! ```text
//!  retention:  <old>.log ──rename──► <old>.free     (at most MAX_SPARE_SEGMENTS; else deleted)
//!  prepare:    <old>.free ──rename──► <next>.log.prep   (instead of creating and fallocating)
//!  roll:       <next>.log.prep ──rename──► <next>.log   (as for any prepared segment)
//! ```
//!
//! Correctness: the old entries stay in the file until the new ones overwrite them, whole and
//! CRC-valid. Every entry names the log position it was written at (FORMAT.md, entry format
//! 2), and recovery ends the log at an entry that lies elsewhere, so an earlier lap's entries
//! are never taken for the new lap's (a torn tail stops at the first block the new lap did not
//! write). The blocks the file reports written (`StorageFile::unwritten_from`) were made
//! durable while they were part of the log (retention checkpoints past a segment, after the
//! log is durable up to there, before removing it; the reuse fdatasyncs the file once more
//! all the same), so appends into them need no extent conversion and group commit may treat
//! them as zero-filled blocks (commit.rs, "Exposed syncs"). A segment still read by someone (a reader holding it, or a `sendfile` range
//! handed out) is deleted, not recycled: its bytes must not change under the reader.
//!
//! Crash: a spare is not part of the log; recovery keeps spares of the configured segment size
//! (up to [`MAX_SPARE_SEGMENTS`]) and deletes any other. A crash during a rename leaves the
//! file under one of its names: a `.log` name is a segment again (before the checkpoint, so
//! retention simply removes it again), a `.prep` name is deleted by recovery.

use super::{parse_positioned_name, positioned_path, Segment};
use crate::io::{align_down, FileKind, Storage};
use crate::EngineError;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Suffix of spare segment files (named by the start they had in the log).
pub(crate) const SPARE_SUFFIX: &str = ".free";
/// Spare files kept at most: one per roll in flight is enough; more is disk for nothing.
pub(crate) const MAX_SPARE_SEGMENTS: usize = 2;

pub(crate) fn spare_path(dir: &Path, old_start: u64) -> PathBuf {
    positioned_path(dir, old_start, SPARE_SUFFIX)
}

pub(crate) fn parse_spare_name(name: &str) -> Option<u64> {
    parse_positioned_name(name, SPARE_SUFFIX)
}

/// Whether `seg`, which retention is removing, may become a spare: recycling is on, the
/// storage gains from written blocks, the file has the size new segments get, fewer than
/// [`MAX_SPARE_SEGMENTS`] are kept, and nobody but the caller holds the segment or a
/// `sendfile` descriptor of it.
pub(crate) fn may_keep(
    recycle: bool,
    io: &dyn Storage,
    seg: &Rc<Segment>,
    sendfile: Option<&std::sync::Arc<std::fs::File>>,
    segment_size: u64,
    spares: usize,
) -> bool {
    recycle
        && io.prefers_written_extents()
        && seg.size == segment_size
        && spares < MAX_SPARE_SEGMENTS
        && Rc::strong_count(seg) == 1
        && sendfile.is_none_or(|f| std::sync::Arc::strong_count(f) == 1)
}

/// The spares recovery keeps, by old start: those of `segment_size` bytes, at most
/// [`MAX_SPARE_SEGMENTS`] (the rest are deleted; with `keep` false, all are).
pub(crate) async fn recover_spares(
    io: &dyn Storage,
    dir: &Path,
    names: &[String],
    segment_size: u64,
    keep: bool,
) -> Result<Vec<u64>, EngineError> {
    let mut starts: Vec<u64> = names.iter().filter_map(|n| parse_spare_name(n)).collect();
    starts.sort_unstable();
    let mut kept = Vec::new();
    for start in starts {
        let path = spare_path(dir, start);
        let usable = keep
            && kept.len() < MAX_SPARE_SEGMENTS
            && file_size(io, &path).await.ok() == Some(segment_size);
        if usable {
            kept.push(start);
        } else {
            io.remove(path.clone())
                .await
                .map_err(|e| EngineError::io("remove spare segment", &path, e))?;
        }
    }
    Ok(kept)
}

async fn file_size(io: &dyn Storage, path: &Path) -> io::Result<u64> {
    let f = io.open(path.to_path_buf(), FileKind::Direct, false).await?;
    let size = f.size().await;
    crate::io::close_after(&*f, size).await
}

/// Renames the spare that started at `old_start` to `to` and opens it as the segment that
/// will start at log position `start`. Returns it and how many bytes from its beginning are
/// known written (0 where the file cannot tell). On failure the caller removes both names.
pub(crate) async fn reuse_spare(
    io: &dyn Storage,
    dir: &Path,
    old_start: u64,
    to: PathBuf,
    start: u64,
    size: u64,
) -> io::Result<(Rc<Segment>, u64)> {
    io.rename(spare_path(dir, old_start), to.clone()).await?;
    let file = io.open(to.clone(), FileKind::Direct, false).await?;
    let found = file.size().await;
    if found.as_ref().ok() != Some(&size) {
        let _ = file.close().await;
        return Err(found.err().unwrap_or_else(|| {
            io::Error::other(format!("spare segment is not {size} bytes long"))
        }));
    }
    let written = align_down(file.unwritten_from(0).unwrap_or(0).min(size));
    // The extents were made durable while the file was part of the log; a sync makes that a
    // fact here rather than an argument (nothing is dirty: a device flush at most).
    if written > 0 {
        if let Err(e) = file.fdatasync().await {
            let _ = file.close().await;
            return Err(e);
        }
    }
    Ok((
        Segment::new(start, size, file, to, super::recovery::now_ms()),
        written,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemStorage;
    use crate::log::test_segment_set;

    /// Only an idle segment of the configured size becomes a spare, and only while fewer than
    /// the maximum are kept. Catches: recycling a file a reader or a `sendfile` range still
    /// reads (its bytes would change under it).
    #[test]
    fn only_idle_segments_of_the_right_size_are_kept() {
        let io = MemStorage::new();
        io.set_prefers_written_extents(true);
        let set = test_segment_set(&[(0, 4096, 0), (4096, 8192, 0)]);
        let seg = set.map[&0].clone();
        drop(set);
        let file = std::sync::Arc::new(tempfile::tempfile().unwrap());
        assert!(may_keep(true, &io, &seg, None, 4096, 0));
        assert!(may_keep(true, &io, &seg, Some(&file), 4096, 1));
        assert!(!may_keep(false, &io, &seg, None, 4096, 0), "recycling off");
        assert!(!may_keep(true, &io, &seg, None, 8192, 0), "another size");
        assert!(
            !may_keep(true, &io, &seg, None, 4096, MAX_SPARE_SEGMENTS),
            "enough spares"
        );
        let range = file.clone();
        assert!(
            !may_keep(true, &io, &seg, Some(&file), 4096, 0),
            "a range is out"
        );
        drop(range);
        let reader = seg.clone();
        assert!(
            !may_keep(true, &io, &seg, None, 4096, 0),
            "a reader holds it"
        );
        drop(reader);
        io.set_prefers_written_extents(false);
        assert!(!may_keep(true, &io, &seg, None, 4096, 0), "nothing to gain");
    }
}
