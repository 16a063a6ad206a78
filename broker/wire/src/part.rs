//! A piece of a response as it will reach the socket: bytes in memory, or a range of an open
//! file that the writer hands to the kernel (`sendfile`) without reading it into user space.
//!
//! Nothing here reads the file: a [`FileRange`] only names it. The broker's connection writer
//! sends it; the engine creates it only for bytes that never change again (sealed commit-log
//! blocks), so the range's contents are fixed for as long as the `Arc<File>` lives.

use bytes::Bytes;
use std::sync::Arc;

/// `len` bytes of `file` from `pos`. `Send`: it crosses cores as a refcount.
#[derive(Debug, Clone)]
pub struct FileRange {
    pub file: Arc<std::fs::File>,
    pub pos: u64,
    pub len: usize,
}

/// One piece of a response or one stored batch.
#[derive(Debug, Clone)]
pub enum Part {
    Bytes(Bytes),
    File(FileRange),
}

impl Part {
    pub fn len(&self) -> usize {
        match self {
            Part::Bytes(b) => b.len(),
            Part::File(f) => f.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, if the part is in memory.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Part::Bytes(b) => Some(b),
            Part::File(_) => None,
        }
    }
}

impl From<Bytes> for Part {
    fn from(b: Bytes) -> Part {
        Part::Bytes(b)
    }
}
