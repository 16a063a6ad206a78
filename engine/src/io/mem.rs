//! In-memory fault-injecting [`Storage`] double.
//!
//! Each file keeps two images: `current` (what reads see) and `durable` (what survives a
//! crash). A completed `fdatasync` copies `current` to `durable`. [`MemStorage::crash`] throws
//! away everything not synced, optionally keeping a torn prefix or an arbitrary subset of the
//! unsynced writes (writes in flight may land in any order), and invalidates every handle
//! opened before it, so a shard that "died" cannot write any more.
//!
//! Faults: [`MemStorage::fail_write_in`] / [`MemStorage::fail_fsync_in`] make the n-th next
//! write or fdatasync return EIO.
//!
//! Interleavings: by default a completed `fdatasync` makes everything written so far durable,
//! including writes that completed while it ran (generous, as a real disk often is).
//! [`MemStorage::set_strict_fsync`] narrows each fdatasync to the writes that completed before
//! it STARTED, the least the kernel promises; [`MemStorage::hold_fsyncs`] keeps every
//! fdatasync open after it started until the test finishes it
//! ([`MemStorage::finish_held_fsync`]), in any order, succeeding or failing, so tests can build
//! "two syncs in flight, writes completing between their starts".
//!
//! Directory operations (create, remove, rename) are durable immediately: a simplification
//! that errs towards the real filesystem's behaviour after a directory sync.

use super::{FileKind, IoBuf, IoFuture, Storage, StorageFile, BLOCK_BYTES};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::rc::Rc;

/// What a crash keeps of the writes issued since each file's last fdatasync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Only synced data survives.
    DropUnsynced,
    /// The first `bytes` bytes of the unsynced writes survive, in issue order (the last one
    /// kept may be torn).
    KeepPrefix { bytes: u64 },
    /// Unsynced write number `i` (in issue order, per file) survives iff bit `i % 64` is set:
    /// models writes in flight landing out of order.
    KeepWrites { mask: u64 },
}

#[derive(Default)]
struct MemFile {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// (position, bytes) of each write since the last fdatasync, in issue order.
    unsynced: Vec<(u64, Vec<u8>)>,
    /// Sequence number of `unsynced[0]` among all writes of this file; a strict fdatasync
    /// notes the sequence number reached when it starts and makes only the writes before it
    /// durable.
    unsynced_first_seq: u64,
    modified_ms: i64,
    /// Blocks some write reached, in `current` and in `durable`: what
    /// [`StorageFile::unwritten_from`] reports, as ext4 reports fallocated blocks that no write
    /// reached as holes.
    written: Vec<bool>,
    durable_written: Vec<bool>,
}

impl MemFile {
    fn write_seq_end(&self) -> u64 {
        self.unsynced_first_seq + self.unsynced.len() as u64
    }

    /// Makes durable the unsynced writes numbered below `upto` (all of them for `u64::MAX`).
    fn sync_upto(&mut self, upto: u64) {
        if upto >= self.write_seq_end() {
            self.durable = self.current.clone();
            self.durable_written = self.written.clone();
            self.unsynced_first_seq = self.write_seq_end();
            self.unsynced.clear();
            return;
        }
        let n = upto.saturating_sub(self.unsynced_first_seq) as usize;
        for (pos, data) in self.unsynced.drain(..n) {
            write_into(&mut self.durable, pos, &data);
            mark_written(&mut self.durable_written, pos, data.len());
        }
        self.unsynced_first_seq += n as u64;
    }
}

/// One fdatasync held open by [`MemStorage::hold_fsyncs`]: `Some(ok)` once the test finished it.
struct HeldFsync {
    path: PathBuf,
    outcome: std::cell::Cell<Option<bool>>,
    waker: RefCell<Option<std::task::Waker>>,
}

#[derive(Default)]
struct State {
    /// Directory entries: name -> file id (a handle follows its file across renames).
    names: HashMap<PathBuf, u64>,
    files: HashMap<u64, MemFile>,
    next_id: u64,
    generation: u64,
    fail_write_in: Option<u64>,
    fail_fsync_in: Option<u64>,
    writes: u64,
    fsyncs: u64,
    prefers_written_extents: bool,
    strict_fsync: bool,
    hold_fsyncs: bool,
    /// fdatasyncs held open, in start order (finished ones stay, so indexes are stable).
    held: Vec<Rc<HeldFsync>>,
    /// Handles dropped without `close` (on real files: descriptors a short-lived executor
    /// may leak).
    unclosed_drops: u64,
    /// While set, writes wait (in flight) before landing; `gate_writes(false)` lets them go.
    writes_gated: bool,
    gate_wakers: Vec<std::task::Waker>,
    /// (file, position, length) of every write started, in start order.
    write_log: Vec<(PathBuf, u64, usize)>,
}

/// Shared handle on an in-memory filesystem; clones see the same files.
#[derive(Clone, Default)]
pub struct MemStorage {
    state: Rc<RefCell<State>>,
    /// Set on a [`MemStorage::process_view`]: the crash generation of the process it belongs
    /// to. After a later crash its directory operations fail too, as a dead process makes none.
    process: Option<u64>,
}

struct MemHandle {
    state: Rc<RefCell<State>>,
    id: u64,
    path: PathBuf,
    kind: FileKind,
    generation: u64,
    closed: std::cell::Cell<bool>,
}

impl Drop for MemHandle {
    fn drop(&mut self) {
        if !self.closed.get() {
            self.state.borrow_mut().unclosed_drops += 1;
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("injected fault: {what}"))
}

/// Marks the blocks of `[pos, pos + len)` written.
fn mark_written(blocks: &mut Vec<bool>, pos: u64, len: usize) {
    if len == 0 {
        return;
    }
    let (first, end) = (pos / BLOCK_BYTES, (pos + len as u64).div_ceil(BLOCK_BYTES));
    if blocks.len() < end as usize {
        blocks.resize(end as usize, false);
    }
    blocks[first as usize..end as usize].fill(true);
}

fn write_into(buf: &mut Vec<u8>, pos: u64, data: &[u8]) {
    let end = pos as usize + data.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[pos as usize..end].copy_from_slice(data);
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// The same files as seen by one process (give one to each shard opened): after the next
    /// [`MemStorage::crash`] every operation through it fails, directory operations included,
    /// so a shard that "died" cannot rename or remove files under its successor (its detached
    /// tasks may still run on the test's executor; a killed process's cannot). Plain clones
    /// keep working across crashes, for the test's own inspection and setup.
    pub fn process_view(&self) -> MemStorage {
        MemStorage {
            state: self.state.clone(),
            process: Some(self.state.borrow().generation),
        }
    }

    /// Fails when this is the view of a process that a crash has ended.
    fn check_process(&self) -> io::Result<()> {
        match self.process {
            Some(g) if g != self.state.borrow().generation => {
                Err(eio("a directory operation of a process that crashed"))
            }
            _ => Ok(()),
        }
    }

    /// The `n`-th next write (0 = the very next one) fails with an I/O error.
    pub fn fail_write_in(&self, n: u64) {
        self.state.borrow_mut().fail_write_in = Some(n);
    }

    /// The `n`-th next fdatasync (0 = the very next one) fails with an I/O error.
    pub fn fail_fsync_in(&self, n: u64) {
        self.state.borrow_mut().fail_fsync_in = Some(n);
    }

    /// Strict fdatasyncs cover only the writes of their file that completed before they started
    /// (see the module docs).
    pub fn set_strict_fsync(&self, yes: bool) {
        self.state.borrow_mut().strict_fsync = yes;
    }

    /// Every fdatasync started from now on (while `yes`) waits, after noting what it covers,
    /// until [`MemStorage::finish_held_fsync`] finishes it.
    pub fn hold_fsyncs(&self, yes: bool) {
        self.state.borrow_mut().hold_fsyncs = yes;
    }

    /// The files of the fdatasyncs held so far (finished or not), in start order.
    pub fn held_fsyncs(&self) -> Vec<PathBuf> {
        self.state
            .borrow()
            .held
            .iter()
            .map(|h| h.path.clone())
            .collect()
    }

    /// Finishes held fdatasync number `i` (start order): `ok` lets it complete as usual,
    /// otherwise it fails with EIO and makes nothing durable. False if there is no such held
    /// fdatasync or it was finished already.
    pub fn finish_held_fsync(&self, i: usize, ok: bool) -> bool {
        let h = self.state.borrow().held.get(i).cloned();
        match h {
            Some(h) if h.outcome.get().is_none() => {
                h.outcome.set(Some(ok));
                if let Some(w) = h.waker.borrow_mut().take() {
                    w.wake();
                }
                true
            }
            _ => false,
        }
    }

    /// Makes the shard zero-fill its next segment ahead of time, as on ext4.
    pub fn set_prefers_written_extents(&self, yes: bool) {
        self.state.borrow_mut().prefers_written_extents = yes;
    }

    /// Writes completed so far (all files).
    pub fn write_count(&self) -> u64 {
        self.state.borrow().writes
    }

    /// fdatasyncs completed so far (all files).
    /// While `yes`, writes started from now on stay in flight until `gate_writes(false)`.
    pub fn gate_writes(&self, yes: bool) {
        let mut st = self.state.borrow_mut();
        st.writes_gated = yes;
        if !yes {
            for w in st.gate_wakers.drain(..) {
                w.wake();
            }
        }
    }

    /// (file, position, length) of every write started so far, in start order.
    pub fn write_log(&self) -> Vec<(PathBuf, u64, usize)> {
        self.state.borrow().write_log.clone()
    }

    /// File handles dropped without being closed, so far.
    pub fn unclosed_drops(&self) -> u64 {
        self.state.borrow().unclosed_drops
    }

    pub fn fsync_count(&self) -> u64 {
        self.state.borrow().fsyncs
    }

    /// Simulates power loss: every file reverts to its durable image plus what `mode` keeps of
    /// its unsynced writes, and every handle opened before the crash fails from now on.
    pub fn crash(&self, mode: CrashMode) {
        let mut st = self.state.borrow_mut();
        st.generation += 1;
        st.fail_write_in = None;
        st.fail_fsync_in = None;
        for f in st.files.values_mut() {
            let mut img = f.durable.clone();
            let mut img_written = f.durable_written.clone();
            let mut budget = match mode {
                CrashMode::KeepPrefix { bytes } => bytes,
                _ => 0,
            };
            for (i, (pos, data)) in f.unsynced.iter().enumerate() {
                match mode {
                    CrashMode::DropUnsynced => {}
                    CrashMode::KeepPrefix { .. } => {
                        let n = (data.len() as u64).min(budget);
                        write_into(&mut img, *pos, &data[..n as usize]);
                        mark_written(&mut img_written, *pos, n as usize);
                        budget -= n;
                    }
                    CrashMode::KeepWrites { mask } => {
                        if mask & (1 << (i % 64)) != 0 {
                            write_into(&mut img, *pos, data);
                            mark_written(&mut img_written, *pos, data.len());
                        }
                    }
                }
            }
            // A preallocated size survives even if the data did not.
            if img.len() < f.current.len() {
                img.resize(f.current.len(), 0);
            }
            f.current = img.clone();
            f.durable = img;
            f.written = img_written.clone();
            f.durable_written = img_written;
            f.unsynced_first_seq = f.write_seq_end();
            f.unsynced.clear();
        }
    }

    /// Flips one bit of a file's current and durable images (corruption tests).
    pub fn flip_bit(&self, path: &std::path::Path, byte: u64, bit: u8) -> bool {
        let mut st = self.state.borrow_mut();
        let id = st.names.get(path).copied();
        match id.and_then(|id| st.files.get_mut(&id)) {
            Some(f) if (byte as usize) < f.current.len() => {
                f.current[byte as usize] ^= 1 << (bit % 8);
                if (byte as usize) < f.durable.len() {
                    f.durable[byte as usize] ^= 1 << (bit % 8);
                }
                true
            }
            _ => false,
        }
    }

    /// Sets a file's modification time (retention-by-age tests).
    pub fn set_modified_ms(&self, path: &std::path::Path, ms: i64) {
        let mut st = self.state.borrow_mut();
        if let Some(id) = st.names.get(path).copied() {
            if let Some(f) = st.files.get_mut(&id) {
                f.modified_ms = ms;
            }
        }
    }

    /// Paths of all files, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.state.borrow().names.keys().cloned().collect();
        v.sort();
        v
    }

    /// A copy of a file's current contents.
    pub fn contents(&self, path: &std::path::Path) -> Option<Vec<u8>> {
        let st = self.state.borrow();
        st.names
            .get(path)
            .and_then(|id| st.files.get(id))
            .map(|f| f.current.clone())
    }
}

impl Storage for MemStorage {
    fn prefers_written_extents(&self) -> bool {
        self.state.borrow().prefers_written_extents
    }

    fn alloc(&self, len: usize) -> IoBuf {
        IoBuf::Heap(vec![0; len])
    }

    fn open(
        &self,
        path: PathBuf,
        kind: FileKind,
        create: bool,
    ) -> IoFuture<'_, Rc<dyn StorageFile>> {
        Box::pin(async move {
            self.check_process()?;
            let mut st = self.state.borrow_mut();
            let id = match st.names.get(&path).copied() {
                Some(id) => id,
                None if create => {
                    let id = st.next_id;
                    st.next_id += 1;
                    st.names.insert(path.clone(), id);
                    st.files.insert(
                        id,
                        MemFile {
                            modified_ms: now_ms(),
                            ..MemFile::default()
                        },
                    );
                    id
                }
                None => return Err(io::Error::new(io::ErrorKind::NotFound, "no such file")),
            };
            let generation = st.generation;
            Ok(Rc::new(MemHandle {
                state: self.state.clone(),
                id,
                path,
                kind,
                generation,
                closed: std::cell::Cell::new(false),
            }) as Rc<dyn StorageFile>)
        })
    }

    fn remove(&self, path: PathBuf) -> IoFuture<'_, ()> {
        Box::pin(async move {
            self.check_process()?;
            let mut st = self.state.borrow_mut();
            match st.names.remove(&path) {
                Some(id) => {
                    st.files.remove(&id);
                    Ok(())
                }
                None => Err(io::Error::new(io::ErrorKind::NotFound, "no such file")),
            }
        })
    }

    fn rename(&self, from: PathBuf, to: PathBuf) -> IoFuture<'_, ()> {
        Box::pin(async move {
            self.check_process()?;
            let mut st = self.state.borrow_mut();
            let id = st
                .names
                .remove(&from)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
            if let Some(old) = st.names.insert(to, id) {
                st.files.remove(&old);
            }
            Ok(())
        })
    }

    fn sync_dir(&self, _dir: PathBuf) -> IoFuture<'_, ()> {
        let alive = self.check_process();
        Box::pin(async move { alive })
    }

    fn create_dir_all(&self, _dir: PathBuf) -> IoFuture<'_, ()> {
        let alive = self.check_process();
        Box::pin(async move { alive })
    }

    fn list_dir(&self, dir: PathBuf) -> IoFuture<'_, Vec<String>> {
        Box::pin(async move {
            self.check_process()?;
            let st = self.state.borrow();
            Ok(st
                .names
                .keys()
                .filter(|p| p.parent() == Some(dir.as_path()))
                .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
                .collect())
        })
    }

    fn modified_ms(&self, path: PathBuf) -> IoFuture<'_, i64> {
        Box::pin(async move {
            self.check_process()?;
            let st = self.state.borrow();
            st.names
                .get(&path)
                .and_then(|id| st.files.get(id))
                .map(|f| f.modified_ms)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
        })
    }
}

impl MemHandle {
    fn with_file<T>(&self, f: impl FnOnce(&mut State) -> io::Result<T>) -> io::Result<T> {
        if self.closed.get() {
            return Err(io::Error::other("file already closed"));
        }
        let mut st = self.state.borrow_mut();
        if st.generation != self.generation {
            return Err(eio("handle opened before a crash"));
        }
        if !st.files.contains_key(&self.id) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "file was removed"));
        }
        f(&mut st)
    }

    fn check_aligned(&self, pos: u64, len: usize) -> io::Result<()> {
        if self.kind == FileKind::Direct
            && (pos % BLOCK_BYTES != 0 || len as u64 % BLOCK_BYTES != 0)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unaligned direct I/O: pos {pos}, len {len}"),
            ));
        }
        Ok(())
    }
}

/// Counts down an injected fault; true when this operation must fail.
fn take_fault(slot: &mut Option<u64>) -> bool {
    match slot {
        Some(0) => {
            *slot = None;
            true
        }
        Some(n) => {
            *n -= 1;
            false
        }
        None => false,
    }
}

impl StorageFile for MemHandle {
    fn write_at(&self, buf: IoBuf, pos: u64) -> IoFuture<'_, Option<IoBuf>> {
        Box::pin(async move {
            self.check_aligned(pos, buf.len())?;
            self.state
                .borrow_mut()
                .write_log
                .push((self.path.clone(), pos, buf.len()));
            // Yield once so writes really are "in flight" together, as on io_uring.
            futures_lite::future::yield_now().await;
            futures_lite::future::poll_fn(|cx| {
                let mut st = self.state.borrow_mut();
                if st.writes_gated {
                    st.gate_wakers.push(cx.waker().clone());
                    std::task::Poll::Pending
                } else {
                    std::task::Poll::Ready(())
                }
            })
            .await;
            self.with_file(|st| {
                if take_fault(&mut st.fail_write_in) {
                    return Err(eio("write"));
                }
                st.writes += 1;
                let f = st.files.get_mut(&self.id).expect("checked by with_file");
                write_into(&mut f.current, pos, buf.as_slice());
                mark_written(&mut f.written, pos, buf.len());
                f.unsynced.push((pos, buf.as_slice().to_vec()));
                f.modified_ms = now_ms();
                Ok(())
            })?;
            Ok(Some(buf))
        })
    }

    fn read_at(&self, pos: u64, len: usize) -> IoFuture<'_, Vec<u8>> {
        Box::pin(async move {
            self.check_aligned(pos, len)?;
            self.with_file(|st| {
                let f = &st.files[&self.id];
                let start = (pos as usize).min(f.current.len());
                let end = (pos as usize).saturating_add(len).min(f.current.len());
                Ok(f.current[start..end].to_vec())
            })
        })
    }

    fn fdatasync(&self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            // What a strict fdatasync covers is fixed when it starts.
            let (upto, held) = self.with_file(|st| {
                let upto = match st.strict_fsync {
                    true => st.files[&self.id].write_seq_end(),
                    false => u64::MAX,
                };
                let held = st.hold_fsyncs.then(|| {
                    let h = Rc::new(HeldFsync {
                        path: self.path.clone(),
                        outcome: Default::default(),
                        waker: Default::default(),
                    });
                    st.held.push(h.clone());
                    h
                });
                Ok((upto, held))
            })?;
            match held {
                Some(h) => {
                    let ok = futures_lite::future::poll_fn(|cx| match h.outcome.get() {
                        Some(ok) => std::task::Poll::Ready(ok),
                        None => {
                            *h.waker.borrow_mut() = Some(cx.waker().clone());
                            std::task::Poll::Pending
                        }
                    })
                    .await;
                    if !ok {
                        return Err(eio("fdatasync (held, failed by the test)"));
                    }
                }
                None => futures_lite::future::yield_now().await,
            }
            self.with_file(|st| {
                if take_fault(&mut st.fail_fsync_in) {
                    return Err(eio("fdatasync"));
                }
                st.fsyncs += 1;
                let f = st.files.get_mut(&self.id).expect("checked by with_file");
                f.sync_upto(upto);
                Ok(())
            })
        })
    }

    fn preallocate(&self, len: u64) -> IoFuture<'_, ()> {
        Box::pin(async move {
            self.with_file(|st| {
                let f = st.files.get_mut(&self.id).expect("checked by with_file");
                if (f.current.len() as u64) < len {
                    f.current.resize(len as usize, 0);
                    f.durable.resize(len as usize, 0);
                }
                Ok(())
            })
        })
    }

    fn truncate(&self, len: u64) -> IoFuture<'_, ()> {
        Box::pin(async move {
            self.with_file(|st| {
                let f = st.files.get_mut(&self.id).expect("checked by with_file");
                f.current.resize(len as usize, 0);
                f.durable.resize(len as usize, 0);
                let blocks = len.div_ceil(BLOCK_BYTES) as usize;
                f.written.truncate(blocks);
                f.durable_written.truncate(blocks);
                Ok(())
            })
        })
    }

    fn size(&self) -> IoFuture<'_, u64> {
        Box::pin(async move { self.with_file(|st| Ok(st.files[&self.id].current.len() as u64)) })
    }

    /// Modelled only where the storage prefers written extents (the ext4 case); elsewhere no
    /// hint, as on file systems without unwritten extents.
    fn unwritten_from(&self, pos: u64) -> Option<u64> {
        self.with_file(|st| {
            if !st.prefers_written_extents {
                return Ok(None);
            }
            let f = &st.files[&self.id];
            let len = f.current.len() as u64;
            let first = (pos / BLOCK_BYTES) as usize;
            let hole = (first..)
                .find(|&b| !f.written.get(b).copied().unwrap_or(false))
                .map_or(len, |b| b as u64 * BLOCK_BYTES);
            Ok(Some(hole.max(pos).min(len)))
        })
        .ok()
        .flatten()
    }

    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    fn close(&self) -> IoFuture<'_, ()> {
        self.closed.set(true);
        Box::pin(async { Ok(()) })
    }
}
