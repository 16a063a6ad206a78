//! Zero-copy sending of fetch responses (`--fetch-send zc`) with io_uring `SEND_ZC`, from the
//! blocking-pool threads that already send file-range responses (`sendfile` module).
//!
//! ```text
//!  write loop (executor): hand_to_pool? (file ranges, or >= ZC_MIN_RESPONSE_BYTES in zc mode)
//!    flush ─ sendfile::send_parts ─► pool thread, its own io_uring (created on first use):
//!      bytes runs >= ZC_MIN_SEND_BYTES  SENDMSG_ZC of the `Bytes` (the kernel pins the pages)
//!      file ranges (+ small parts between) READ_FIXED / copied into 256 KiB registered
//!                                       slots, one SEND_ZC (fixed buffer) per slot
//!      small runs, no file range after  sendmsg: a plain copy
//!    one send in flight at a time: the socket sees the response's bytes in order
//!  each buffer (`Bytes` clones, a slot) is kept until its notification CQE (after the ACK)
//! ```
//!
//! Invariants:
//! - Order: a request completes (its first CQE: bytes accepted by the socket) before the next
//!   piece is sent, and `send_parts` returns only after the last one, so pieces never
//!   interleave with each other or with the executor's writes.
//! - Memory the kernel may still read is never freed or reused: a buffer leaves the
//!   [`Ledger`] only when its sending is over and every notification announced
//!   (`IORING_CQE_F_MORE`) has arrived. A thread pins at most
//!   [`ZC_PINNED_BYTES_PER_THREAD`]; a piece that finds no room within [`ZC_BUDGET_WAIT`]
//!   goes out as a plain copy (counted), so a consumer that stopped reading on one
//!   connection cannot hold up another connection's response on the same thread.
//!   Notifications that arrive after a response was sent are taken at the thread's next send
//!   (or budget wait): until then a thread keeps at most its budget of buffers alive.
//! - Registered memory counts against RLIMIT_MEMLOCK (kernel-notes/io-uring-memlock.md): if
//!   registering the slots fails, the thread reads into the same slots unregistered and says
//!   so once; if the ring cannot be created, the thread sends with copies and says so once.
//! - Kernel results are data: an unknown completion or an impossible length is an error of
//!   that response (its connection closes), never a panic. A send that makes no progress for
//!   the stall timeout fails as in sendfile mode, and the socket is set to reset on close so
//!   the kernel drops the unacknowledged data and the pinned pages come back.
//!
//! On loopback the kernel copies every zero-copy send anyway (`IORING_NOTIF_USAGE_ZC_COPIED`,
//! counted in [`ZcStats::copied`]): see kernel-notes/send-zc.md for what this mode costs here.

use crate::config::FetchSend;
use crate::iov;
use crate::sendfile::{self, ReadAhead, Run};
use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use ringmq_engine::{FileRange, Part};
use ringmq_wire::fetch::Chunks;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// In zc mode, a response of at least this many bytes goes to the pool to be sent zero-copy
/// (smaller ones are copied through the connection's write buffer, as in copy mode).
pub const ZC_MIN_RESPONSE_BYTES: usize = 64 << 10;
/// A run of in-memory parts, or a file range, smaller than this is sent with a plain copy:
/// pinning pages and a second completion cost more than copying ~10 KiB (the kernel's
/// msg_zerocopy documentation; kernel-notes/send-zc.md).
pub const ZC_MIN_SEND_BYTES: usize = 16 << 10;
/// Bytes one pool thread may have pinned by sends whose notification has not come (the
/// kernel releases them after the peer's ACK: bandwidth x (RTT + delayed ACK)).
pub const ZC_PINNED_BYTES_PER_THREAD: usize = 4 << 20;
/// Size of each registered slot for file responses (one SEND_ZC each).
pub const ZC_SLOT_BYTES: usize = 256 << 10;
/// Slots per thread: together they fill the pinned budget.
const ZC_SLOTS: usize = ZC_PINNED_BYTES_PER_THREAD / ZC_SLOT_BYTES;
/// Longest a piece waits for room in the pinned budget before it is sent as a copy.
pub const ZC_BUDGET_WAIT: Duration = Duration::from_millis(200);
/// Bytes one SENDMSG_ZC carries at most (larger `Bytes` are sliced).
const ZC_GROUP_BYTES: usize = 1 << 20;
/// Submission queue: one send or read (or cancel) at a time.
const RING_ENTRIES: u32 = 8;
/// Completion queue: room for the notifications of everything the budget can pin.
const RING_CQ_ENTRIES: u32 = 512;
/// `IORING_SEND_ZC_REPORT_USAGE` (include/uapi/linux/io_uring.h, 6.2+).
const SEND_ZC_REPORT_USAGE: u16 = 1 << 3;
/// `IORING_NOTIF_USAGE_ZC_COPIED`: set in a notification's result when the kernel copied.
const NOTIF_USAGE_ZC_COPIED: i32 = i32::MIN;
const KIND_READ: u64 = 1 << 32;
const KIND_SEND: u64 = 2 << 32;
const KIND_CANCEL: u64 = 3 << 32;
const ID_MASK: u64 = 0xffff_ffff;

const _: () = assert!(ZC_SLOTS > 0 && ZC_SLOTS <= u16::MAX as usize);
/// One SEND_ZC's length is a u32 (a group, at most twice ZC_GROUP_BYTES, goes by msghdr).
const _: () = assert!(ZC_SLOT_BYTES <= u32::MAX as usize);
/// A group (up to twice ZC_GROUP_BYTES: pieces are added until it reaches it) must fit.
const _: () = assert!(2 * ZC_GROUP_BYTES <= ZC_PINNED_BYTES_PER_THREAD);

/// Whether the write loop hands `chunks` to the blocking pool: always for file ranges (only
/// the pool sends them), and in zc mode for responses of at least [`ZC_MIN_RESPONSE_BYTES`].
pub fn hand_to_pool(chunks: &Chunks, send: FetchSend) -> bool {
    chunks.has_file_parts()
        || (send == FetchSend::Zc && chunks.total_len() >= ZC_MIN_RESPONSE_BYTES)
}

/// Process-wide counts of the zero-copy sender, all threads together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZcStats {
    /// SEND_ZC / SENDMSG_ZC requests completed.
    pub sends: u64,
    /// Bytes they sent.
    pub bytes: u64,
    /// Notification CQEs received.
    pub notifs: u64,
    /// Notifications saying the kernel copied after all (`IORING_NOTIF_USAGE_ZC_COPIED`).
    pub copied: u64,
    /// Pieces sent as plain copies because the pinned budget stayed full.
    pub budget_copies: u64,
    /// Threads whose slot registration failed (they read into unregistered slots).
    pub unregistered_threads: u64,
}

static SENDS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static NOTIFS: AtomicU64 = AtomicU64::new(0);
static COPIED: AtomicU64 = AtomicU64::new(0);
static BUDGET_COPIES: AtomicU64 = AtomicU64::new(0);
static UNREGISTERED: AtomicU64 = AtomicU64::new(0);
static RING_FAILURE_SAID: AtomicBool = AtomicBool::new(false);
static REGISTER_FAILURE_SAID: AtomicBool = AtomicBool::new(false);

/// The counts so far.
pub fn stats() -> ZcStats {
    ZcStats {
        sends: SENDS.load(Ordering::Relaxed),
        bytes: BYTES.load(Ordering::Relaxed),
        notifs: NOTIFS.load(Ordering::Relaxed),
        copied: COPIED.load(Ordering::Relaxed),
        budget_copies: BUDGET_COPIES.load(Ordering::Relaxed),
        unregistered_threads: UNREGISTERED.load(Ordering::Relaxed),
    }
}

/// One log line with the counts (at shutdown), if anything was sent zero-copy.
pub fn log_totals() {
    let s = stats();
    if s.sends > 0 || s.budget_copies > 0 {
        tracing::info!(
            sends = s.sends,
            bytes = s.bytes,
            notifications = s.notifs,
            copied_by_kernel = s.copied,
            budget_copies = s.budget_copies,
            unregistered_threads = s.unregistered_threads,
            "zero-copy sends"
        );
    }
}

/// Sends `parts` in order on `sock` (non-blocking) from this pool thread's ring; the
/// contract of `sendfile::send_parts`. Without a ring, sends them as copies.
pub(crate) fn send_blocking(sock: &OwnedFd, parts: &[Part], stall: Duration) -> io::Result<()> {
    thread_local! {
        /// None: not tried yet; Some(None): the ring could not be created.
        static SENDER: RefCell<Option<Option<Sender>>> = const { RefCell::new(None) };
    }
    SENDER.with(|cell| {
        let mut cell = cell.borrow_mut();
        let sender = cell.get_or_insert_with(|| match Sender::new() {
            Ok(s) => Some(s),
            Err(e) => {
                if !RING_FAILURE_SAID.swap(true, Ordering::Relaxed) {
                    tracing::warn!("no io_uring for zero-copy sends ({e}); sending copies");
                }
                None
            }
        });
        match sender {
            Some(s) => s.send(sock, parts, stall),
            None => sendfile::send_blocking(sock, parts, stall),
        }
    })
}

/// What a completion says, read from its raw fields without trusting them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Completion {
    /// A read into slot `slot`: bytes read, or errno.
    Read {
        slot: u32,
        result: Result<usize, i32>,
    },
    /// A send's request completion: bytes the socket took, or errno; `notif_follows` when
    /// the kernel announced a notification (`IORING_CQE_F_MORE`).
    Send {
        id: u32,
        result: Result<usize, i32>,
        notif_follows: bool,
    },
    /// A send's notification: the kernel no longer references the buffer.
    Notif { id: u32, copied: bool },
    /// An `ASYNC_CANCEL`'s own completion.
    Cancel,
}

fn user_data(kind: u64, id: u32) -> u64 {
    kind | u64::from(id)
}

/// Decodes a CQE; None for a `user_data` this module never submits.
pub(crate) fn decode(user_data: u64, res: i32, flags: u32) -> Option<Completion> {
    let id = (user_data & ID_MASK) as u32;
    let result = match usize::try_from(res) {
        Ok(n) => Ok(n),
        Err(_) => Err(res.checked_neg().unwrap_or(libc::EINVAL)),
    };
    match user_data & !ID_MASK {
        KIND_READ => Some(Completion::Read { slot: id, result }),
        KIND_SEND if cqueue::notif(flags) => Some(Completion::Notif {
            id,
            copied: res & NOTIF_USAGE_ZC_COPIED != 0,
        }),
        KIND_SEND => Some(Completion::Send {
            id,
            result,
            notif_follows: cqueue::more(flags),
        }),
        KIND_CANCEL => Some(Completion::Cancel),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum LedgerError {
    #[error("completion for unknown zero-copy buffer {0}")]
    Unknown(u32),
    #[error("{0} bytes do not fit the pinned budget")]
    NoRoom(usize),
}

impl From<LedgerError> for io::Error {
    fn from(e: LedgerError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Buffers the kernel may still read, and the pinned-byte budget they use.
///
/// A buffer is pinned once (charged its bytes), may be sent several times (partial sends:
/// every request completion with `F_MORE` announces one notification), is marked done when
/// its last send completed, and is released (its holder handed back, its bytes uncharged)
/// once it is done and every announced notification has arrived. The count is signed: a
/// notification processed before its request completion must not release the buffer early.
pub(crate) struct Ledger<H> {
    limit: usize,
    used: usize,
    pinned: HashMap<u32, Pinned<H>>,
    next_id: u32,
}

struct Pinned<H> {
    bytes: usize,
    holder: H,
    notifs_due: i64,
    done: bool,
}

impl<H> Ledger<H> {
    pub(crate) fn new(limit: usize) -> Ledger<H> {
        Ledger {
            limit,
            used: 0,
            pinned: HashMap::new(),
            next_id: 0,
        }
    }

    pub(crate) fn fits(&self, bytes: usize) -> bool {
        bytes <= self.limit - self.used
    }

    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pinned.is_empty()
    }

    /// Charges `bytes` (at least 1) for `holder`; returns its id.
    pub(crate) fn pin(&mut self, bytes: usize, holder: H) -> Result<u32, LedgerError> {
        if bytes == 0 || !self.fits(bytes) {
            return Err(LedgerError::NoRoom(bytes));
        }
        // Ids in use are at most `limit` (each holds a byte), far fewer than 2^32.
        while self.pinned.contains_key(&self.next_id) {
            self.next_id = self.next_id.wrapping_add(1);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.used += bytes;
        self.pinned.insert(
            id,
            Pinned {
                bytes,
                holder,
                notifs_due: 0,
                done: false,
            },
        );
        Ok(id)
    }

    /// A request completion for `id`.
    pub(crate) fn sent(&mut self, id: u32, notif_follows: bool) -> Result<(), LedgerError> {
        let p = self.pinned.get_mut(&id).ok_or(LedgerError::Unknown(id))?;
        if notif_follows {
            p.notifs_due += 1;
        }
        Ok(())
    }

    /// No more sends of `id`; its holder if it can be released now.
    pub(crate) fn done(&mut self, id: u32) -> Result<Option<H>, LedgerError> {
        self.pinned
            .get_mut(&id)
            .ok_or(LedgerError::Unknown(id))?
            .done = true;
        Ok(self.release_if_free(id))
    }

    /// A notification for `id`; its holder if it can be released now.
    pub(crate) fn notified(&mut self, id: u32) -> Result<Option<H>, LedgerError> {
        self.pinned
            .get_mut(&id)
            .ok_or(LedgerError::Unknown(id))?
            .notifs_due -= 1;
        Ok(self.release_if_free(id))
    }

    fn release_if_free(&mut self, id: u32) -> Option<H> {
        let p = self.pinned.get(&id)?;
        if !p.done || p.notifs_due > 0 {
            return None;
        }
        let p = self.pinned.remove(&id)?;
        self.used -= p.bytes;
        Some(p.holder)
    }

    /// Every holder still pinned (to be leaked, never freed, by a sender going away).
    fn into_holders(self) -> Vec<H> {
        self.pinned.into_values().map(|p| p.holder).collect()
    }
}

/// What keeps a pinned buffer alive.
enum Held {
    /// Clones (refcounts) of the `Bytes` a SENDMSG_ZC points into.
    Bytes(Vec<Bytes>),
    /// A read slot, back to the free list on release.
    Slot(usize),
}

/// Slots for file responses, registered with the ring when the memlock limit allows: raw
/// allocations of [`ZC_SLOT_BYTES`], written by the kernel (reads) and by copies of small
/// parts at disjoint offsets, then read by the kernel (one send per slot).
struct Slots {
    bases: Vec<*mut u8>,
    free: Vec<usize>,
    registered: bool,
}

impl Slots {
    fn new() -> Slots {
        let bases = (0..ZC_SLOTS)
            .map(|_| Box::into_raw(vec![0u8; ZC_SLOT_BYTES].into_boxed_slice()).cast::<u8>())
            .collect();
        Slots {
            bases,
            free: (0..ZC_SLOTS).rev().collect(),
            registered: false,
        }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        for &base in &self.bases {
            // SAFETY: allocated in `new` as a boxed slice of ZC_SLOT_BYTES, freed once here
            // (a sender whose slots the kernel may still use leaks them instead).
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(base, ZC_SLOT_BYTES)) });
        }
    }
}

/// The slot being filled with the current file response's bytes.
struct Fill<'p> {
    slot: usize,
    len: usize,
    /// Reads into it not yet awaited.
    reads: Vec<SlotRead<'p>>,
}

#[derive(Clone, Copy)]
struct SlotRead<'p> {
    ud: u64,
    file: &'p FileRange,
    pos: u64,
    /// Offset in the slot.
    at: usize,
    len: usize,
}

/// Bytes of a response on their way into a slot.
#[derive(Clone, Copy)]
enum Piece<'p> {
    Bytes(&'p [u8]),
    File {
        f: &'p FileRange,
        pos: u64,
        len: usize,
    },
}

impl<'p> Piece<'p> {
    fn len(&self) -> usize {
        match self {
            Piece::Bytes(b) => b.len(),
            Piece::File { len, .. } => *len,
        }
    }

    /// The first `n` bytes (at most its length) and the rest.
    fn split(self, n: usize) -> (Piece<'p>, Piece<'p>) {
        match self {
            Piece::Bytes(b) => {
                let (head, rest) = b.split_at(n.min(b.len()));
                (Piece::Bytes(head), Piece::Bytes(rest))
            }
            Piece::File { f, pos, len } => {
                let n = n.min(len);
                (
                    Piece::File { f, pos, len: n },
                    Piece::File {
                        f,
                        pos: pos + n as u64,
                        len: len - n,
                    },
                )
            }
        }
    }
}

/// Where a send's bytes are.
#[derive(Clone, Copy)]
enum Target<'a> {
    Slot {
        ptr: *const u8,
        buf_index: Option<u16>,
    },
    Iovecs(&'a [libc::iovec]),
}

/// One pool thread's zero-copy sender.
struct Sender {
    ring: IoUring,
    ledger: Ledger<Held>,
    slots: Option<Slots>,
    /// Results of reads and sends reaped but not yet claimed by their waiter (emptied after
    /// every response).
    results: HashMap<u64, Result<usize, i32>>,
    next_read: u32,
}

impl Sender {
    fn new() -> io::Result<Sender> {
        let ring = IoUring::builder()
            .setup_cqsize(RING_CQ_ENTRIES)
            .build(RING_ENTRIES)?;
        Ok(Sender {
            ring,
            ledger: Ledger::new(ZC_PINNED_BYTES_PER_THREAD),
            slots: None,
            results: HashMap::new(),
            next_read: 0,
        })
    }

    fn send(&mut self, sock: &OwnedFd, parts: &[Part], stall: Duration) -> io::Result<()> {
        self.reap()?;
        let mut fill = None;
        let out = self.send_all(sock, parts, stall, &mut fill);
        if let Some(open) = fill {
            self.drop_fill(open, stall);
        }
        self.results.clear();
        out
    }

    /// In-memory runs of at least [`ZC_MIN_SEND_BYTES`]: SENDMSG_ZC of the `Bytes`. File
    /// ranges, and the small runs between them (headers): packed into slots, one SEND_ZC per
    /// slot. A small run with no slot open and no file range after it: a plain `sendmsg`.
    fn send_all<'p>(
        &mut self,
        sock: &OwnedFd,
        parts: &'p [Part],
        stall: Duration,
        fill: &mut Option<Fill<'p>>,
    ) -> io::Result<()> {
        let mut ahead = ReadAhead::default();
        for (run, more) in sendfile::runs(parts) {
            match run {
                Run::File(f) => {
                    ahead.before(f);
                    let piece = Piece::File {
                        f,
                        pos: f.pos,
                        len: f.len,
                    };
                    self.put(sock, fill, piece, more, stall)?;
                }
                Run::Bytes(run) => {
                    let total: usize = run.iter().map(|b| b.len()).sum();
                    if total >= ZC_MIN_SEND_BYTES {
                        self.flush(sock, fill, true, stall)?;
                        self.send_run(sock, &run, more, stall)?;
                    } else if more || fill.is_some() {
                        for (k, b) in run.iter().enumerate() {
                            let piece = Piece::Bytes(&b[..]);
                            self.put(sock, fill, piece, more || k + 1 < run.len(), stall)?;
                        }
                    } else {
                        let slices: Vec<&[u8]> = run.iter().map(|b| &b[..]).collect();
                        sendfile::send_bytes(sock, &slices, false, stall)?;
                    }
                }
            }
        }
        self.flush(sock, fill, false, stall)
    }

    /// Adds `piece` to the open slot (opening one if needed; reads are submitted, not awaited)
    /// and sends each slot that fills up. Without room in the budget, sends the piece as a
    /// plain copy instead (no slot is open then, so the order holds).
    fn put<'p>(
        &mut self,
        sock: &OwnedFd,
        fill: &mut Option<Fill<'p>>,
        mut piece: Piece<'p>,
        more_after: bool,
        stall: Duration,
    ) -> io::Result<()> {
        while piece.len() > 0 {
            if fill.is_none() {
                let Some(slot) = self.take_slot()? else {
                    BUDGET_COPIES.fetch_add(1, Ordering::Relaxed);
                    return match piece {
                        Piece::Bytes(b) => sendfile::send_bytes(sock, &[b], more_after, stall),
                        Piece::File { f, pos, len } => {
                            let range = FileRange {
                                file: f.file.clone(),
                                pos,
                                len,
                            };
                            sendfile::send_file(sock, &range, stall)
                        }
                    };
                };
                *fill = Some(Fill {
                    slot,
                    len: 0,
                    reads: Vec::new(),
                });
            }
            let open = fill.as_mut().ok_or_else(no_slots)?;
            let (head, rest) = piece.split(ZC_SLOT_BYTES - open.len);
            let n = head.len();
            let base = self.slot_base(open.slot)?;
            match head {
                Piece::Bytes(b) => {
                    // SAFETY: [len, len + n) lies inside the slot (n <= its room) and no
                    // request uses it: pending reads target other offsets, the slot is not
                    // being sent.
                    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), base.add(open.len), n) };
                }
                Piece::File { f, pos, len } => {
                    let read = SlotRead {
                        ud: self.next_read_ud(),
                        file: f,
                        pos,
                        at: open.len,
                        len,
                    };
                    self.submit_read(open.slot, read)?;
                    open.reads.push(read);
                }
            }
            open.len += n;
            piece = rest;
            if open.len == ZC_SLOT_BYTES {
                self.flush(sock, fill, more_after || piece.len() > 0, stall)?;
            }
        }
        Ok(())
    }

    /// Waits for the open slot's reads and sends it (SEND_ZC, fixed buffer if registered).
    fn flush(
        &mut self,
        sock: &OwnedFd,
        fill: &mut Option<Fill<'_>>,
        more: bool,
        stall: Duration,
    ) -> io::Result<()> {
        let Some(open) = fill.as_mut() else {
            return Ok(());
        };
        while let Some(&r) = open.reads.last() {
            // On failure `r` stays listed: `drop_fill` cancels it before the slot is reused.
            let result = self.wait_for(r.ud, stall)?;
            open.reads.pop();
            let again = |done: usize, ud: u64| SlotRead {
                ud,
                pos: r.pos + done as u64,
                at: r.at + done,
                len: r.len - done,
                ..r
            };
            let retry = match result {
                Ok(n) if n == r.len => None,
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "segment shorter than the indexed batch",
                    ))
                }
                Ok(n) if n < r.len => Some(again(n, self.next_read_ud())),
                Ok(_) => return Err(io::Error::other("read completion longer than asked")),
                Err(libc::EINTR | libc::EAGAIN) => Some(again(0, self.next_read_ud())),
                Err(errno) => return Err(io::Error::from_raw_os_error(errno)),
            };
            if let Some(next) = retry {
                self.submit_read(open.slot, next)?;
                open.reads.push(next);
            }
        }
        let Some(open) = fill.take() else {
            return Ok(());
        };
        if open.len == 0 {
            self.release(Held::Slot(open.slot));
            return Ok(());
        }
        let target = Target::Slot {
            ptr: self.slot_base(open.slot)?,
            buf_index: self
                .slots
                .as_ref()
                .is_some_and(|s| s.registered)
                .then_some(open.slot as u16),
        };
        let id = match self.ledger.pin(open.len, Held::Slot(open.slot)) {
            Ok(id) => id,
            Err(e) => {
                self.release(Held::Slot(open.slot));
                return Err(e.into());
            }
        };
        self.send_pinned(sock, id, target, open.len, more, stall)
    }

    /// After a failed response: cancels the open slot's reads; the slot is reused only if
    /// every one of them is known to be over.
    fn drop_fill(&mut self, open: Fill<'_>, stall: Duration) {
        for r in &open.reads {
            if !self.cancel(r.ud, stall) {
                return;
            }
        }
        self.release(Held::Slot(open.slot));
    }

    fn next_read_ud(&mut self) -> u64 {
        self.next_read = self.next_read.wrapping_add(1);
        user_data(KIND_READ, self.next_read)
    }

    fn slot_base(&self, slot: usize) -> io::Result<*mut u8> {
        self.slots
            .as_ref()
            .and_then(|s| s.bases.get(slot).copied())
            .ok_or_else(no_slots)
    }

    fn submit_read(&mut self, slot: usize, r: SlotRead<'_>) -> io::Result<()> {
        let registered = self.slots.as_ref().is_some_and(|s| s.registered);
        // SAFETY (pointer arithmetic): r.at + r.len <= ZC_SLOT_BYTES, inside the slot.
        let ptr = unsafe { self.slot_base(slot)?.add(r.at) };
        let fd = types::Fd(r.file.file.as_raw_fd());
        // r.len <= ZC_SLOT_BYTES, which fits a u32.
        let entry = if registered {
            opcode::ReadFixed::new(fd, ptr, r.len as u32, slot as u16)
                .offset(r.pos)
                .build()
        } else {
            opcode::Read::new(fd, ptr, r.len as u32)
                .offset(r.pos)
                .build()
        };
        self.push(&entry.user_data(r.ud))
    }

    /// Sends a run of in-memory parts in groups of at most [`ZC_GROUP_BYTES`] and
    /// [`iov::MAX_IOVECS`] pieces, one SENDMSG_ZC per group.
    fn send_run(
        &mut self,
        sock: &OwnedFd,
        run: &[&Bytes],
        more: bool,
        stall: Duration,
    ) -> io::Result<()> {
        let mut pieces = run
            .iter()
            .flat_map(|b| {
                (0..b.len())
                    .step_by(ZC_GROUP_BYTES)
                    .map(move |at| b.slice(at..(at + ZC_GROUP_BYTES).min(b.len())))
            })
            .peekable();
        let mut group = Vec::new();
        let mut bytes = 0;
        while let Some(piece) = pieces.next() {
            bytes += piece.len();
            group.push(piece);
            let last = pieces.peek().is_none();
            if last || bytes >= ZC_GROUP_BYTES || group.len() == iov::MAX_IOVECS {
                self.send_group(
                    sock,
                    std::mem::take(&mut group),
                    bytes,
                    more || !last,
                    stall,
                )?;
                bytes = 0;
            }
        }
        Ok(())
    }

    fn send_group(
        &mut self,
        sock: &OwnedFd,
        group: Vec<Bytes>,
        bytes: usize,
        more: bool,
        stall: Duration,
    ) -> io::Result<()> {
        if !self.wait_for_room(bytes, false)? {
            BUDGET_COPIES.fetch_add(1, Ordering::Relaxed);
            let slices: Vec<&[u8]> = group.iter().map(|b| &b[..]).collect();
            return sendfile::send_bytes(sock, &slices, more, stall);
        }
        // The iovecs point at the Bytes' heap memory, which stays where it is while the
        // ledger holds the clones.
        let iovecs = iov::iovecs(group.iter().map(|b| &b[..]));
        let id = self.ledger.pin(bytes, Held::Bytes(group))?;
        self.send_pinned(sock, id, Target::Iovecs(&iovecs), bytes, more, stall)
    }

    /// A free slot with a slot's worth of budget, waiting up to [`ZC_BUDGET_WAIT`]; None if
    /// there is none by then.
    fn take_slot(&mut self) -> io::Result<Option<usize>> {
        if self.slots.is_none() {
            self.slots = Some(self.new_slots());
        }
        if !self.wait_for_room(ZC_SLOT_BYTES, true)? {
            return Ok(None);
        }
        Ok(self.slots.as_mut().and_then(|s| s.free.pop()))
    }

    fn new_slots(&mut self) -> Slots {
        let mut slots = Slots::new();
        let iovecs: Vec<libc::iovec> = slots
            .bases
            .iter()
            .map(|&b| libc::iovec {
                iov_base: b.cast::<libc::c_void>(),
                iov_len: ZC_SLOT_BYTES,
            })
            .collect();
        // SAFETY: the slots stay allocated as long as the ring (the sender owns both and
        // leaks the slots if requests may still use them when it goes away).
        slots.registered = match unsafe { self.ring.submitter().register_buffers(&iovecs) } {
            Ok(()) => true,
            Err(e) => {
                UNREGISTERED.fetch_add(1, Ordering::Relaxed);
                if !REGISTER_FAILURE_SAID.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "registering {} KiB of zero-copy read buffers failed ({e}; \
                         RLIMIT_MEMLOCK?): reading into unregistered buffers, the kernel \
                         pins their pages per send",
                        ZC_PINNED_BYTES_PER_THREAD >> 10
                    );
                }
                false
            }
        };
        slots
    }

    /// Sends pinned buffer `id` (`len` bytes at `target`) until the socket took all of it;
    /// marks it done whatever happens (its notifications release it later).
    fn send_pinned(
        &mut self,
        sock: &OwnedFd,
        id: u32,
        target: Target<'_>,
        len: usize,
        more: bool,
        stall: Duration,
    ) -> io::Result<()> {
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
        let ud = user_data(KIND_SEND, id);
        let fd = types::Fd(sock.as_raw_fd());
        let mut sent = 0;
        let mut progress = Instant::now();
        let out = loop {
            if sent == len {
                break Ok(());
            }
            // Both live until this request's completion (awaited below in this iteration).
            let mut iov: Vec<libc::iovec> = Vec::new();
            // SAFETY: a zeroed msghdr is valid (no name, no control data).
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            let entry = match target {
                Target::Slot { ptr, buf_index } => {
                    // SAFETY (pointer arithmetic): sent < len <= the slot's length.
                    let at = unsafe { ptr.add(sent) };
                    opcode::SendZc::new(fd, at, (len - sent) as u32)
                        .buf_index(buf_index)
                        .flags(flags)
                        .zc_flags(SEND_ZC_REPORT_USAGE)
                        .build()
                }
                Target::Iovecs(all) => {
                    iov = iov::iovecs_from(all, sent, iov::MAX_IOVECS);
                    msg.msg_iov = iov.as_mut_ptr();
                    msg.msg_iovlen = iov.len();
                    opcode::SendMsgZc::new(fd, &msg)
                        .ioprio(SEND_ZC_REPORT_USAGE)
                        .flags(flags as u32)
                        .build()
                }
            };
            if let Err(e) = self.push(&entry.user_data(ud)) {
                break Err(e);
            }
            let result = match self.wait_for(ud, stall) {
                Ok(r) => r,
                Err(e) => {
                    abort_on_close(sock);
                    if !self.cancel(ud, stall) {
                        // The request may still be in the kernel: the buffer stays pinned
                        // (never released) rather than freed under it.
                        return Err(e);
                    }
                    break Err(e);
                }
            };
            drop((iov, msg));
            SENDS.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) if n <= len - sent => {
                    sent += n;
                    BYTES.fetch_add(n as u64, Ordering::Relaxed);
                    progress = Instant::now();
                }
                Ok(_) => break Err(io::Error::other("send completion longer than asked")),
                Err(errno) => {
                    let e = io::Error::from_raw_os_error(errno);
                    if let Err(e) = sendfile::retry_or_fail_on(sock, e, &mut progress, stall) {
                        if e.kind() == io::ErrorKind::TimedOut {
                            abort_on_close(sock);
                        }
                        break Err(e);
                    }
                }
            }
        };
        if let Some(h) = self.ledger.done(id)? {
            self.release(h);
        }
        out
    }

    /// Waits up to [`ZC_BUDGET_WAIT`] for `bytes` of budget (and a free slot if `slot`).
    fn wait_for_room(&mut self, bytes: usize, slot: bool) -> io::Result<bool> {
        let deadline = Instant::now() + ZC_BUDGET_WAIT;
        loop {
            self.reap()?;
            let slot_free = !slot || self.slots.as_ref().is_some_and(|s| !s.free.is_empty());
            if self.ledger.fits(bytes) && slot_free {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            self.wait_some(left)?;
        }
    }

    /// Waits up to `stall` for the completion of request `ud`.
    fn wait_for(&mut self, ud: u64, stall: Duration) -> io::Result<Result<usize, i32>> {
        let deadline = Instant::now() + stall;
        loop {
            self.reap()?;
            if let Some(r) = self.results.remove(&ud) {
                return Ok(r);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(sendfile::stalled());
            }
            self.wait_some(left)?;
        }
    }

    /// Asks the kernel to cancel request `ud` and waits for its completion; false if it did
    /// not come (the request's buffer must then stay untouched).
    fn cancel(&mut self, ud: u64, stall: Duration) -> bool {
        let entry = opcode::AsyncCancel::new(ud).build().user_data(KIND_CANCEL);
        self.push(&entry).is_ok() && self.wait_for(ud, stall).is_ok()
    }

    /// Submits what is queued and waits for one completion or `timeout`.
    fn wait_some(&mut self, timeout: Duration) -> io::Result<()> {
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        // SAFETY: what the entry points at (a pinned buffer, a slot, an msghdr) stays valid
        // until its completion: the callers wait for it, and leak what may still be in use.
        if unsafe { self.ring.submission().push(entry) }.is_ok() {
            return Ok(());
        }
        self.ring.submit()?;
        // SAFETY: as above.
        unsafe { self.ring.submission().push(entry) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))
    }

    /// Takes every completion in the queue: notifications release their buffers; request
    /// completions are counted in the ledger (sends) and kept for their waiter. Every
    /// completion is processed even if one of them is bad (then that is the error).
    fn reap(&mut self) -> io::Result<()> {
        let cqes: Vec<(u64, i32, u32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result(), c.flags()))
            .collect();
        let mut bad: Option<io::Error> = None;
        for (ud, res, flags) in cqes {
            let step = match decode(ud, res, flags) {
                None => Err(io::Error::other("unknown io_uring completion")),
                Some(Completion::Notif { id, copied }) => {
                    NOTIFS.fetch_add(1, Ordering::Relaxed);
                    if copied {
                        COPIED.fetch_add(1, Ordering::Relaxed);
                    }
                    match self.ledger.notified(id) {
                        Ok(Some(h)) => {
                            self.release(h);
                            Ok(())
                        }
                        Ok(None) => Ok(()),
                        Err(e) => Err(e.into()),
                    }
                }
                Some(Completion::Send {
                    id,
                    result,
                    notif_follows,
                }) => {
                    self.results.insert(ud, result);
                    self.ledger.sent(id, notif_follows).map_err(io::Error::from)
                }
                Some(Completion::Read { result, .. }) => {
                    self.results.insert(ud, result);
                    Ok(())
                }
                Some(Completion::Cancel) => Ok(()),
            };
            if let (Err(e), None) = (step, &bad) {
                bad = Some(e);
            }
        }
        match bad {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn release(&mut self, h: Held) {
        match h {
            Held::Bytes(b) => drop(b),
            Held::Slot(i) => {
                if let Some(s) = self.slots.as_mut() {
                    s.free.push(i);
                }
            }
        }
    }
}

impl Drop for Sender {
    /// Waits briefly for outstanding notifications; whatever the kernel may still reference
    /// is leaked, never freed under it.
    fn drop(&mut self) {
        let deadline = Instant::now() + ZC_BUDGET_WAIT;
        while !self.ledger.is_empty() && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.reap().is_err() || self.wait_some(left).is_err() {
                break;
            }
        }
        let slots_out = self
            .slots
            .as_ref()
            .is_some_and(|s| s.free.len() != s.bases.len());
        if !self.ledger.is_empty() || slots_out {
            let ledger = std::mem::replace(&mut self.ledger, Ledger::new(0));
            for h in ledger.into_holders() {
                std::mem::forget(h);
            }
            std::mem::forget(self.slots.take());
        }
    }
}

fn no_slots() -> io::Error {
    io::Error::other("zero-copy read slots missing")
}

/// Makes the connection's final close reset it (`SO_LINGER` 0): the kernel then drops the
/// unacknowledged data, and with it its references to pinned pages, instead of retrying it
/// for minutes to a peer that stopped reading. Best effort.
fn abort_on_close(sock: &OwnedFd) {
    let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches: a buffer released before its notification (reuse under the kernel), a
    /// budget that is never given back, and partial sends announcing several notifications
    /// being counted as one.
    #[test]
    fn a_buffer_is_released_only_after_it_is_done_and_every_notification_came() {
        let mut l: Ledger<&str> = Ledger::new(100);
        let a = l.pin(60, "a").unwrap();
        assert!(!l.fits(41));
        assert!(l.fits(40));
        // Two partial sends, each announcing a notification.
        l.sent(a, true).unwrap();
        l.sent(a, true).unwrap();
        assert_eq!(l.done(a).unwrap(), None);
        assert_eq!(l.notified(a).unwrap(), None);
        assert_eq!(l.used(), 60);
        assert_eq!(l.notified(a).unwrap(), Some("a"));
        assert_eq!(l.used(), 0);
        assert!(l.is_empty());
        assert!(l.fits(100));
    }

    /// Catches: a notification handled before its request completion releasing the buffer
    /// while a send is still being completed, or leaving it pinned forever.
    #[test]
    fn a_notification_before_its_request_completion_is_counted() {
        let mut l: Ledger<u8> = Ledger::new(10);
        let a = l.pin(10, 1).unwrap();
        assert_eq!(l.notified(a).unwrap(), None);
        l.sent(a, true).unwrap();
        assert_eq!(l.used(), 10);
        assert_eq!(l.done(a).unwrap(), Some(1));
        assert_eq!(l.used(), 0);
    }

    /// Catches: a failed send without a notification (no `F_MORE`) keeping its buffer, the
    /// budget overcommitted, empty pins, and unknown ids panicking instead of erring.
    #[test]
    fn budget_limits_and_unknown_ids_are_errors_not_panics() {
        let mut l: Ledger<u8> = Ledger::new(10);
        let a = l.pin(4, 1).unwrap();
        assert_eq!(l.pin(7, 2), Err(LedgerError::NoRoom(7)));
        assert_eq!(l.pin(0, 2), Err(LedgerError::NoRoom(0)));
        let b = l.pin(6, 2).unwrap();
        assert_ne!(a, b);
        l.sent(a, false).unwrap();
        assert_eq!(l.done(a).unwrap(), Some(1));
        assert_eq!(l.notified(999), Err(LedgerError::Unknown(999)));
        assert_eq!(l.sent(999, true), Err(LedgerError::Unknown(999)));
        assert_eq!(l.done(999), Err(LedgerError::Unknown(999)));
        assert_eq!(l.used(), 6);
    }

    /// Catches: a notification read as a request completion (or the reverse), the copied
    /// bit missed, negative results turned into huge lengths, and foreign user_data accepted.
    #[test]
    fn completions_decode_by_kind_and_flags() {
        // include/uapi/linux/io_uring.h: IORING_CQE_F_MORE, IORING_CQE_F_NOTIF.
        let (more, notif) = (1u32 << 1, 1u32 << 3);
        assert_eq!(
            decode(user_data(KIND_SEND, 7), 4096, more),
            Some(Completion::Send {
                id: 7,
                result: Ok(4096),
                notif_follows: true
            })
        );
        assert_eq!(
            decode(user_data(KIND_SEND, 7), -libc::EAGAIN, 0),
            Some(Completion::Send {
                id: 7,
                result: Err(libc::EAGAIN),
                notif_follows: false
            })
        );
        assert_eq!(
            decode(user_data(KIND_SEND, 7), NOTIF_USAGE_ZC_COPIED, notif),
            Some(Completion::Notif {
                id: 7,
                copied: true
            })
        );
        assert_eq!(
            decode(user_data(KIND_SEND, 3), 0, notif),
            Some(Completion::Notif {
                id: 3,
                copied: false
            })
        );
        assert_eq!(
            decode(user_data(KIND_READ, 2), -libc::EIO, 0),
            Some(Completion::Read {
                slot: 2,
                result: Err(libc::EIO)
            })
        );
        assert_eq!(
            decode(user_data(KIND_READ, 2), i32::MIN, 0),
            Some(Completion::Read {
                slot: 2,
                result: Err(libc::EINVAL)
            })
        );
        assert_eq!(
            decode(KIND_CANCEL, -libc::ENOENT, 0),
            Some(Completion::Cancel)
        );
        assert_eq!(decode(9 << 32, 0, 0), None);
    }

    /// Catches: a piece split at a slot border losing, repeating or misplacing bytes (file
    /// positions must advance by exactly what went into the slot).
    #[test]
    fn pieces_split_at_slot_borders_without_gaps() {
        let data = [7u8; 10];
        let (a, b) = Piece::Bytes(&data).split(4);
        assert_eq!((a.len(), b.len()), (4, 6));
        let (a, b) = Piece::Bytes(&data).split(99);
        assert_eq!((a.len(), b.len()), (10, 0));
        let f = FileRange {
            file: std::sync::Arc::new(tempfile::tempfile().unwrap()),
            pos: 100,
            len: 50,
        };
        let whole = Piece::File {
            f: &f,
            pos: f.pos,
            len: f.len,
        };
        let (
            Piece::File {
                pos: p1, len: l1, ..
            },
            Piece::File {
                pos: p2, len: l2, ..
            },
        ) = whole.split(20)
        else {
            panic!("a file piece splits into file pieces");
        };
        assert_eq!((p1, l1, p2, l2), (100, 20, 120, 30));
    }

    /// Catches: zc mode not taking large in-memory responses, copy mode taking them, and
    /// file responses not going to the pool in either mode.
    #[test]
    fn the_hand_off_takes_file_responses_always_and_large_ones_in_zc_mode() {
        let big = Chunks::one(Bytes::from(vec![0u8; ZC_MIN_RESPONSE_BYTES]));
        let small = Chunks::one(Bytes::from(vec![0u8; ZC_MIN_RESPONSE_BYTES - 1]));
        assert!(hand_to_pool(&big, FetchSend::Zc));
        assert!(!hand_to_pool(&big, FetchSend::Copy));
        assert!(!hand_to_pool(&small, FetchSend::Zc));
        let file = tempfile::tempfile().unwrap();
        let with_file = Chunks {
            parts: vec![Part::File(FileRange {
                file: std::sync::Arc::new(file),
                pos: 0,
                len: 1,
            })],
        };
        assert!(hand_to_pool(&with_file, FetchSend::Copy));
        assert!(hand_to_pool(&with_file, FetchSend::Zc));
    }
}
