//! Where a message's data is and what its first bytes are: the syscall's
//! buffer argument by layout ([`Op`]), and the first bytes read from user
//! memory into a stack buffer for `sonde_common::http::parse`.

use aya_ebpf::helpers::generated;
use sonde_common::http::parse::{HEAD_LEN, Head, classify_head};

use crate::{arch::MSGHDR_MSG_IOV, http::maps::HttpError};

/// How the data of a syscall is laid out.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Op {
    /// read/recvfrom: `buf` is the data.
    ReadBuf = 1,
    /// readv: `buf` is a `struct iovec *`.
    ReadIov = 2,
    /// recvmsg: `buf` is a `struct msghdr *`.
    ReadMsg = 3,
    WriteBuf = 4,
    WriteIov = 5,
    WriteMsg = 6,
    /// sendfile: no user buffer, only a byte count.
    SendFile = 7,
    /// connect: `fd` becomes a client connection on success.
    Connect = 8,
}

/// Which way a message goes, seen from the traced process.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    In,
    Out,
}

/// Where the data of a syscall starts, from its buffer argument: one user
/// read for readv/writev, two for recvmsg/sendmsg, none otherwise. Called
/// only once the message is known to matter (each read costs ~100-200 ns).
#[inline(always)]
pub(crate) fn data_ptr(op: Op, arg: u64) -> Result<u64, HttpError> {
    match op {
        Op::ReadBuf | Op::WriteBuf => Ok(arg),
        Op::ReadIov | Op::WriteIov => iov_base(arg),
        Op::ReadMsg | Op::WriteMsg => iov_base(msg_iov(arg)?),
        _ => Ok(0),
    }
}

/// `struct msghdr::msg_iov`.
#[inline(always)]
pub(crate) fn msg_iov(msg: u64) -> Result<u64, HttpError> {
    // SAFETY: reads 8 bytes of user memory through the helper, which
    // checks the address and fails (instead of faulting) when unmapped.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user((msg + MSGHDR_MSG_IOV) as *const u64) }
        .map_err(|_| HttpError::ReadFailed)
}

/// `iov[0].iov_base`: the first bytes of a vectored message are all the
/// state machine needs (nginx puts the whole header block in iov[0]).
#[inline(always)]
pub(crate) fn iov_base(iov: u64) -> Result<u64, HttpError> {
    // SAFETY: as in `msg_iov`: a checked helper read of user memory.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user(iov as *const u64) }
        .map_err(|_| HttpError::ReadFailed)
}

/// The first bytes of a message, on the stack. 8-byte aligned so that
/// zeroing it is two stores: unaligned, the compiler calls a byte-wise
/// `memset` subprogram.
#[repr(C, align(8))]
pub(crate) struct Head16(pub(crate) [u8; HEAD_LEN]);

const _: () = assert!(HEAD_LEN == 16);

impl Head16 {
    /// Zeroed in place with two volatile stores. Returned by value (as it
    /// once was), the move out of the `MaybeUninit` became a call to the
    /// byte-wise `memset` subprogram on every message (16 iterations); so
    /// did `[0; 16]`.
    #[inline(always)]
    pub(crate) fn zeroed_in(slot: &mut core::mem::MaybeUninit<Head16>) -> &mut Head16 {
        let p = slot.as_mut_ptr() as *mut u64;
        // SAFETY: `p` is the 8-aligned start of the slot; two aligned 8-byte
        // stores cover the 16-byte value, which is then fully initialized,
        // so the reference made from it is valid.
        unsafe {
            core::ptr::write_volatile(p, 0);
            core::ptr::write_volatile(p.add(1), 0);
            &mut *slot.as_mut_ptr()
        }
    }

    /// Reads the first `len` (at most 16; the rest stays zero) bytes at user
    /// address `buf`. Err when the helper fails (unmapped memory).
    #[inline(always)]
    pub(crate) fn read_user(&mut self, buf: u64, len: u32) -> Result<(), HttpError> {
        let len = if len > HEAD_LEN as u32 {
            HEAD_LEN as u32
        } else {
            len
        };
        // SAFETY: helper read of user memory into our 16-byte buffer; `len`
        // is at most 16, and the helper fails cleanly on a bad address.
        let r = unsafe {
            generated::bpf_probe_read_user(self.0.as_mut_ptr().cast(), len, buf as *const _)
        };
        if r != 0 {
            return Err(HttpError::ReadFailed);
        }
        Ok(())
    }

    /// What these bytes are.
    #[inline(always)]
    pub(crate) fn classify(&self) -> Head {
        classify_head(&self.0)
    }
}
