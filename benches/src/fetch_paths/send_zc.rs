//! io_uring `SEND_ZC` on a plain socket, driven with the `io-uring` crate directly.
//!
//! A zero-copy send completes twice: first the request CQE (bytes accepted by the socket,
//! flag `IORING_CQE_F_MORE` when a notification will follow), later the notification CQE
//! (`IORING_CQE_F_NOTIF`, same user_data) once the kernel no longer references the pages.
//! Only after the notification may the buffer be reused. With `IORING_SEND_ZC_REPORT_USAGE`
//! the notification's result carries `IORING_NOTIF_USAGE_ZC_COPIED` when the kernel copied
//! the data after all (always the case on loopback: see kernel-notes/send-zc.md).
//!
//! ```text
//!  tail:     resident bytes (registered) ──SEND_ZC──> socket
//!  backlog:  file ──O_DIRECT READ_FIXED──> slot buffer (registered) ──SEND_ZC──> socket
//!            slot lifecycle: Free → Reading → Ready → Sending → AwaitingNotif → Free
//! ```
//!
//! One send is in flight at a time so the stream stays in file order; reads run ahead.

use std::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::ptr::NonNull;
use std::time::Instant;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::{cpu, io_err, Case, FetchBenchError, RunContext, Served, DIRECT_READS_IN_FLIGHT};

/// Submission queue size: far more than the reads + one send ever outstanding.
const RING_ENTRIES: u32 = 64;
/// `IORING_SEND_ZC_REPORT_USAGE` (include/uapi/linux/io_uring.h, 6.2+).
const SEND_ZC_REPORT_USAGE: u16 = 1 << 3;
/// `IORING_NOTIF_USAGE_ZC_COPIED`: set in the notification's result when the data was copied.
const NOTIF_USAGE_ZC_COPIED: i32 = i32::MIN;
/// Resident memory is registered in pieces of this size (the kernel caps one at 1 GiB); fetch
/// sizes divide it, so no fetch straddles two registered buffers.
const REGISTER_PIECE_BYTES: usize = 64 << 20;
/// Fetches of resident memory queued for sending at once. Resident bytes are immutable and
/// the pump holds a reference to them until every notification is in, so a resident slot is
/// free again as soon as its send completes.
const RESIDENT_SLOTS: usize = 16;
/// Registered memory the backlog path may have pinned by sends awaiting their notification.
/// A notification comes only when TCP frees the skb, i.e. after the peer ACKs it, so this must
/// cover bandwidth x (RTT + delayed ACK), not just one fetch.
pub const ZC_BACKLOG_PINNED_BYTES: usize = 8 << 20;
/// Direct I/O alignment.
const ALIGN_BYTES: usize = 4096;

const KIND_READ: u64 = 1 << 32;
const KIND_SEND: u64 = 2 << 32;

/// What the notifications said about one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZcUsage {
    /// The send buffers were registered (`IORING_RECVSEND_FIXED_BUF`); otherwise the kernel
    /// pinned pages per request.
    pub registered: bool,
    pub sends: u64,
    pub notifs: u64,
    /// Notifications flagged `IORING_NOTIF_USAGE_ZC_COPIED`.
    pub copied: u64,
}

pub fn serve(case: Case, addr: SocketAddr, ctx: &RunContext) -> Result<Served, FetchBenchError> {
    let ctx = ctx.clone();
    std::thread::Builder::new()
        .name("fetch-send-zc".into())
        .spawn(move || {
            cpu::pin_current_thread(cpu::SERVER_CPU);
            serve_on_this_thread(case, addr, &ctx)
        })
        .map_err(io_err("spawning the send-zc thread"))?
        .join()
        .map_err(|_| FetchBenchError::ThreadPanicked("send-zc server"))?
}

fn serve_on_this_thread(
    case: Case,
    addr: SocketAddr,
    ctx: &RunContext,
) -> Result<Served, FetchBenchError> {
    let sock = TcpStream::connect(addr).map_err(io_err("connect"))?;
    let ring = IoUring::new(RING_ENTRIES).map_err(io_err("io_uring setup"))?;
    let fetch = ctx.fetch_bytes;
    let (source, registered) = match case {
        Case::Backlog => {
            let file = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(&ctx.path)
                .map_err(io_err("opening the served file O_DIRECT"))?;
            let slots = (ZC_BACKLOG_PINNED_BYTES / fetch).max(DIRECT_READS_IN_FLIGHT);
            let bufs: Vec<AlignedBuf> = (0..slots).map(|_| AlignedBuf::new(fetch)).collect();
            let iovecs: Vec<libc::iovec> = bufs.iter().map(|b| b.iovec()).collect();
            // READ_FIXED needs registered buffers, so this one must succeed.
            // SAFETY: the buffers outlive the ring (they are leaked on error, dropped after it).
            unsafe { ring.submitter().register_buffers(&iovecs) }
                .map_err(io_err("registering read buffers"))?;
            (Source::Direct { file, bufs }, true)
        }
        Case::Tail | Case::Memory => {
            let iovecs: Vec<libc::iovec> = ctx
                .tail
                .chunks(REGISTER_PIECE_BYTES)
                .map(|piece| libc::iovec {
                    iov_base: piece.as_ptr() as *mut libc::c_void,
                    iov_len: piece.len(),
                })
                .collect();
            // Registration pins the resident bytes; without CAP_IPC_LOCK it is charged to
            // RLIMIT_MEMLOCK and may fail, and then the kernel pins per send instead.
            // SAFETY: `ctx.tail` outlives the ring; the kernel only reads through it.
            let registered = unsafe { ring.submitter().register_buffers(&iovecs) }.is_ok();
            (Source::Resident(ctx.tail.clone()), registered)
        }
    };
    let mut pump = Pump::new(ring, sock.as_raw_fd(), source, registered, ctx);
    let cpu_before = cpu::thread_cpu();
    let started = Instant::now();
    if let Err(e) = pump.run() {
        // Requests may still reference the buffers; a bench error path leaks them rather than
        // free memory the kernel could still write.
        std::mem::forget(pump);
        return Err(e);
    }
    sock.shutdown(Shutdown::Write).map_err(io_err("shutdown"))?;
    Ok(Served {
        started,
        cpu: cpu::thread_cpu().saturating_sub(cpu_before),
        cpu_includes_consumer: false,
        zc: Some(pump.usage),
    })
}

enum Source {
    Resident(bytes::Bytes),
    Direct {
        file: std::fs::File,
        bufs: Vec<AlignedBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    Reading,
    Ready,
    Sending,
    AwaitingNotif,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    state: SlotState,
    pos: u64,
    ptr: *const u8,
    buf_index: Option<u16>,
    /// Notifications announced (`F_MORE`) minus received; signed because the order of the two
    /// CQEs is not something to bet a buffer on.
    notifs_pending: i64,
}

struct Pump {
    ring: IoUring,
    sock: RawFd,
    source: Source,
    registered: bool,
    slots: Vec<Slot>,
    /// Slots in file order, waiting to be (or being) sent.
    order: VecDeque<usize>,
    /// (slot, bytes of it already sent) of the one send in flight.
    sending: Option<(usize, usize)>,
    next_fetch: u64,
    fetches: u64,
    /// O_DIRECT reads in flight (at most `DIRECT_READS_IN_FLIGHT`, as the glommio path).
    reading: usize,
    /// Notifications announced by `F_MORE` and not yet received, over all slots.
    notifs_outstanding: i64,
    fetch: usize,
    usage: ZcUsage,
}

impl Pump {
    fn new(ring: IoUring, sock: RawFd, source: Source, registered: bool, ctx: &RunContext) -> Pump {
        let slots = match &source {
            Source::Resident(_) => RESIDENT_SLOTS,
            Source::Direct { bufs, .. } => bufs.len(),
        };
        let free = Slot {
            state: SlotState::Free,
            pos: 0,
            ptr: std::ptr::null(),
            buf_index: None,
            notifs_pending: 0,
        };
        Pump {
            ring,
            sock,
            source,
            registered,
            slots: vec![free; slots],
            order: VecDeque::with_capacity(slots),
            sending: None,
            next_fetch: 0,
            reading: 0,
            notifs_outstanding: 0,
            fetches: ctx.file_bytes / ctx.fetch_bytes as u64,
            fetch: ctx.fetch_bytes,
            usage: ZcUsage {
                registered,
                ..ZcUsage::default()
            },
        }
    }

    fn run(&mut self) -> Result<(), FetchBenchError> {
        loop {
            self.fill_free_slots()?;
            self.start_next_send()?;
            let outstanding = self.slots.iter().any(|s| s.state != SlotState::Free);
            if self.next_fetch == self.fetches && !outstanding && self.notifs_outstanding <= 0 {
                return Ok(());
            }
            self.ring
                .submit_and_wait(1)
                .map_err(io_err("io_uring_enter"))?;
            let cqes: Vec<(u64, i32, u32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags()))
                .collect();
            for (data, res, flags) in cqes {
                self.complete(data, res, flags)?;
            }
        }
    }

    /// Gives every free slot the next fetch: resident bytes are ready at once, file bytes get
    /// an O_DIRECT read into the slot's registered buffer.
    fn fill_free_slots(&mut self) -> Result<(), FetchBenchError> {
        while self.next_fetch < self.fetches && self.reading < DIRECT_READS_IN_FLIGHT {
            let Some(i) = self.slots.iter().position(|s| s.state == SlotState::Free) else {
                return Ok(());
            };
            let pos = self.next_fetch * self.fetch as u64;
            let slot = &mut self.slots[i];
            slot.pos = pos;
            slot.notifs_pending = 0;
            match &self.source {
                Source::Resident(bytes) => {
                    slot.ptr = bytes[pos as usize..].as_ptr();
                    slot.buf_index = self
                        .registered
                        .then_some((pos as usize / REGISTER_PIECE_BYTES) as u16);
                    slot.state = SlotState::Ready;
                }
                Source::Direct { file, bufs } => {
                    slot.ptr = bufs[i].ptr.as_ptr();
                    slot.buf_index = Some(i as u16);
                    slot.state = SlotState::Reading;
                    self.reading += 1;
                    let read = opcode::ReadFixed::new(
                        types::Fd(file.as_raw_fd()),
                        bufs[i].ptr.as_ptr(),
                        self.fetch as u32,
                        i as u16,
                    )
                    .offset(pos)
                    .build()
                    .user_data(KIND_READ | i as u64);
                    push(&mut self.ring, &read)?;
                }
            }
            self.order.push_back(i);
            self.next_fetch += 1;
        }
        Ok(())
    }

    /// Starts sending the oldest fetch if it is ready and no send is in flight.
    fn start_next_send(&mut self) -> Result<(), FetchBenchError> {
        if self.sending.is_some() {
            return Ok(());
        }
        let Some(&i) = self.order.front() else {
            return Ok(());
        };
        if self.slots[i].state != SlotState::Ready {
            return Ok(());
        }
        self.slots[i].state = SlotState::Sending;
        self.sending = Some((i, 0));
        self.submit_send(i, 0)
    }

    fn submit_send(&mut self, i: usize, sent: usize) -> Result<(), FetchBenchError> {
        let slot = self.slots[i];
        // SAFETY (pointer arithmetic): sent < fetch, inside the slot's buffer.
        let ptr = unsafe { slot.ptr.add(sent) };
        let send = opcode::SendZc::new(types::Fd(self.sock), ptr, (self.fetch - sent) as u32)
            .buf_index(slot.buf_index)
            .flags(libc::MSG_WAITALL)
            .zc_flags(SEND_ZC_REPORT_USAGE)
            .build()
            .user_data(KIND_SEND | i as u64);
        push(&mut self.ring, &send)
    }

    fn complete(&mut self, data: u64, res: i32, flags: u32) -> Result<(), FetchBenchError> {
        let i = (data & 0xffff_ffff) as usize;
        if i >= self.slots.len() {
            return Err(io_err("unknown completion")(
                io::ErrorKind::InvalidData.into(),
            ));
        }
        match data & !0xffff_ffff {
            KIND_READ => {
                if res < 0 {
                    return Err(io_err("O_DIRECT READ_FIXED")(io::Error::from_raw_os_error(
                        -res,
                    )));
                }
                if res as usize != self.fetch {
                    return Err(FetchBenchError::ShortRead {
                        pos: self.slots[i].pos,
                        got: res as usize,
                        expected: self.fetch,
                    });
                }
                self.reading -= 1;
                self.slots[i].state = SlotState::Ready;
                Ok(())
            }
            KIND_SEND if cqueue::notif(flags) => {
                self.usage.notifs += 1;
                if res & NOTIF_USAGE_ZC_COPIED != 0 {
                    self.usage.copied += 1;
                }
                self.notifs_outstanding -= 1;
                let slot = &mut self.slots[i];
                slot.notifs_pending -= 1;
                if slot.state == SlotState::AwaitingNotif && slot.notifs_pending <= 0 {
                    slot.state = SlotState::Free;
                }
                Ok(())
            }
            KIND_SEND => self.send_completed(i, res, flags),
            _ => Err(io_err("unknown completion")(
                io::ErrorKind::InvalidData.into(),
            )),
        }
    }

    fn send_completed(&mut self, i: usize, res: i32, flags: u32) -> Result<(), FetchBenchError> {
        self.usage.sends += 1;
        if cqueue::more(flags) {
            self.slots[i].notifs_pending += 1;
            self.notifs_outstanding += 1;
        }
        if res < 0 {
            return Err(io_err("SEND_ZC")(io::Error::from_raw_os_error(-res)));
        }
        if res == 0 {
            return Err(io_err("SEND_ZC")(io::ErrorKind::WriteZero.into()));
        }
        let Some((sending, sent)) = self.sending else {
            return Err(io_err("SEND_ZC completion without a send")(
                io::ErrorKind::InvalidData.into(),
            ));
        };
        let sent = sent + res as usize;
        if sending != i || sent > self.fetch {
            return Err(io_err("SEND_ZC completion out of order")(
                io::ErrorKind::InvalidData.into(),
            ));
        }
        if sent < self.fetch {
            self.sending = Some((i, sent));
            return self.submit_send(i, sent);
        }
        self.sending = None;
        self.order.pop_front();
        let slot = &mut self.slots[i];
        let reused_buffer = matches!(self.source, Source::Direct { .. });
        slot.state = if reused_buffer && slot.notifs_pending > 0 {
            SlotState::AwaitingNotif
        } else {
            SlotState::Free
        };
        Ok(())
    }
}

fn push(ring: &mut IoUring, entry: &squeue::Entry) -> Result<(), FetchBenchError> {
    // SAFETY: every buffer an entry points at lives in the Pump, which outlives the ring's
    // requests (or is leaked on error).
    if unsafe { ring.submission().push(entry) }.is_ok() {
        return Ok(());
    }
    ring.submit().map_err(io_err("io_uring_enter"))?;
    // SAFETY: as above.
    unsafe { ring.submission().push(entry) }
        .map_err(|_| io_err("submission queue full")(io::ErrorKind::WouldBlock.into()))
}

/// A 4096-byte-aligned heap buffer for O_DIRECT.
struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let layout = Layout::from_size_align(len.max(ALIGN_BYTES), ALIGN_BYTES)
            .unwrap_or_else(|_| panic!("fetch size {len} is not a valid layout"));
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| handle_alloc_error(layout));
        AlignedBuf { ptr, layout }
    }

    fn iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.ptr.as_ptr() as *mut libc::c_void,
            iov_len: self.layout.size(),
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}
