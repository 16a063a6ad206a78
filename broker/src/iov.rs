//! Byte slices sent in order by calls that each may take only a prefix (`sendmsg`, and its
//! io_uring form `SENDMSG_ZC`): the iovecs of what is left after `sent` bytes.
//!
//! Used by the connection's gathered sends (`conn`), the pool's copying sends (`sendfile`)
//! and the zero-copy sends (`send_zc`). The iovecs point into the caller's slices: they are
//! valid only while those stay alive and unchanged, which each caller states where it sends.

use std::io;
use std::os::fd::RawFd;

/// iovecs per `sendmsg` at most (the kernel takes up to 1024; a larger response is sent in
/// several calls).
pub(crate) const MAX_IOVECS: usize = 64;

/// The iovecs of `bufs`, empty slices left out.
pub(crate) fn iovecs<'a>(bufs: impl IntoIterator<Item = &'a [u8]>) -> Vec<libc::iovec> {
    bufs.into_iter()
        .filter(|b| !b.is_empty())
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect()
}

/// Total bytes of `all`.
pub(crate) fn total(all: &[libc::iovec]) -> usize {
    all.iter().map(|v| v.iov_len).sum()
}

/// At most `max` iovecs of `all` after skipping its first `sent` bytes.
pub(crate) fn iovecs_from(all: &[libc::iovec], mut sent: usize, max: usize) -> Vec<libc::iovec> {
    let mut out = Vec::with_capacity(all.len().min(max));
    for v in all {
        if out.len() == max {
            break;
        }
        if sent >= v.iov_len {
            sent -= v.iov_len;
            continue;
        }
        out.push(libc::iovec {
            // SAFETY (pointer arithmetic): sent < iov_len, inside the buffer.
            iov_base: unsafe { (v.iov_base as *mut u8).add(sent) } as *mut libc::c_void,
            iov_len: v.iov_len - sent,
        });
        sent = 0;
    }
    out
}

/// What is left of the slice of `bufs` holding byte `sent` of their concatenation (empty at
/// the end).
pub(crate) fn rest_of_slice<'a>(bufs: &[&'a [u8]], mut sent: usize) -> &'a [u8] {
    for b in bufs {
        if sent < b.len() {
            return &b[sent..];
        }
        sent -= b.len();
    }
    &[]
}

/// One `sendmsg(fd, iov, flags)`: the bytes the socket took, or the OS error.
///
/// The caller guarantees that `iov`'s entries point at memory alive and unchanged across the
/// call, and that `fd` is open.
pub(crate) fn sendmsg(fd: RawFd, iov: &[libc::iovec], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: a zeroed msghdr is valid (no name, no control data); msg_iov points at `iov`,
    // alive across the call, whose entries the caller keeps valid (see above).
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len();
        libc::sendmsg(fd, &msg, flags)
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches: a resumed partial send re-sending or skipping bytes across iovec borders, and
    /// a resume that ignores the per-call limit.
    #[test]
    fn iovecs_resume_after_a_partial_send() {
        let (a, b, c) = ([1u8; 10], [2u8; 5], [3u8; 4]);
        let all = iovecs([&a[..], &[][..], &b[..], &c[..]]);
        assert_eq!(all.len(), 3, "empty slices are left out");
        assert_eq!(total(&all), 19);
        let rest = iovecs_from(&all, 12, MAX_IOVECS);
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[0].iov_len, 3);
        assert_eq!(rest[0].iov_base as usize, b.as_ptr() as usize + 2);
        let rest = iovecs_from(&all, 3, MAX_IOVECS);
        assert_eq!(rest.len(), 3);
        assert_eq!(rest[0].iov_len, 7);
        assert_eq!(iovecs_from(&all, 3, 2).len(), 2);
        assert!(iovecs_from(&all, 19, MAX_IOVECS).is_empty());
        let bufs = [&a[..], &[][..], &b[..]];
        assert_eq!(rest_of_slice(&bufs, 3), &a[3..]);
        assert_eq!(rest_of_slice(&bufs, 10), &b[..]);
        assert_eq!(rest_of_slice(&bufs, 14), &b[4..]);
        assert!(rest_of_slice(&bufs, 15).is_empty());
    }
}
